//! The fifteen scenarios. Each builds its own world (`run::Run`), breaks it
//! while the mix is produced, and ends with the oracle (`Run::finish`).

mod infrastructure;
mod input;
mod processes;

use std::future::Future;
use std::pin::Pin;

use crate::report::Outcome;
use crate::run::Options;

type Scenario =
    for<'a> fn(&'a Options) -> Pin<Box<dyn Future<Output = anyhow::Result<Outcome>> + 'a>>;

/// (name, what it does, how to run it) in the order.
pub const ALL: &[(&str, &str, Scenario)] = &[
    ("kill", "SIGKILL of a worker mid-batch, three times", |o| {
        Box::pin(processes::kill(o))
    }),
    (
        "postgres-restart",
        "PostgreSQL stopped for 10 s mid-stream, then started",
        |o| Box::pin(infrastructure::postgres_restart(o)),
    ),
    (
        "broker-restart",
        "the broker stopped and started on the same port and storage",
        |o| Box::pin(infrastructure::broker_restart(o)),
    ),
    (
        "rebalance",
        "3 instances, default settings: a 4th joins, one is SIGKILLed, one stops",
        |o| Box::pin(processes::rebalance(o)),
    ),
    (
        "relay-kill",
        "the relay holding the most outbox shards SIGKILLed mid-publish",
        |o| Box::pin(processes::relay_kill(o)),
    ),
    (
        "relay-freeze",
        "3 relays share the shards; the busiest frozen (SIGSTOP) for 40 s, then woken",
        |o| Box::pin(processes::relay_freeze(o)),
    ),
    (
        "consumer-freeze",
        "a consumer frozen past its session timeout, then woken",
        |o| Box::pin(processes::consumer_freeze(o)),
    ),
    (
        "network",
        "latency, cut connections and a 30 s black-hole, to the broker then to PostgreSQL",
        |o| Box::pin(infrastructure::network(o)),
    ),
    (
        "poison",
        "a tenth of the input poison, 10 MB payloads among it",
        |o| Box::pin(input::poison(o)),
    ),
    (
        "registry-down",
        "the schema registry down for 60 s with Avro in flight",
        |o| Box::pin(infrastructure::registry_down(o)),
    ),
    (
        "connections",
        "every PostgreSQL connection taken by another client for 30 s",
        |o| Box::pin(infrastructure::connections(o)),
    ),
    (
        "overload",
        "input at three times the sustainable rate",
        |o| Box::pin(input::overload(o)),
    ),
    (
        "duplicate-storm",
        "the whole input replayed twice more (offsets reset)",
        |o| Box::pin(input::duplicate_storm(o)),
    ),
    (
        "clock-skew",
        "occurred_at from -1 week to +1 hour; checkouts held back 10 min",
        |o| Box::pin(input::clock_skew(o)),
    ),
    (
        "soak",
        "30 min at 1,000 events/s, a worker SIGKILLed every 5 min",
        |o| Box::pin(input::soak(o)),
    ),
];
