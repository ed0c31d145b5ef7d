//! orderflow: checkouts, payments and cancellations in; orders, in PostgreSQL
//! and on `order-events`, out.
//!
//! Component map:
//! - [`config`]: settings from the environment, checked at start;
//!   [`clock`]: the instant a batch stamps on what it writes and announces.
//! - [`domain`]: pure rules — ids, money, currencies, pricing, statuses, the
//!   order state machine.
//! - [`events`]: wire types, Avro schemas, the dead-letter format and the
//!   codec seam (JSON and Confluent Avro, detected per message).
//! - [`store`]: PostgreSQL, and the only module that speaks SQL — orders,
//!   inbox (dedupe), outbox, read queries, and the one value a batch writes
//!   ([`store::changes::Changes`]).
//! - [`kafka`]: client configuration, topic definitions.
//! - [`telemetry`]: logging and metric definitions (a leaf: imports nothing
//!   of orderflow).
//! - [`workers`]: handlers that decide (pure of Kafka, inbox and outbox), the
//!   batch applier that owns the transaction protocol, the generic consumer
//!   loop, the outbox relay, housekeeping.
//! - [`analytics`]: rollups of `order-events` by a consumer loop of their
//!   own, their figures, and their rebuild from the tables.
//! - [`http`]: the read API (orders, live streams, analytics), health and
//!   metrics.
//! - [`app`]: wiring and graceful shutdown.
//! - [`produce`]: sample traffic.
//! - [`dlq`]: `dlq list` / `dlq replay`, dead letters read and sent back.
//! - [`schemas`]: `schemas register` / `schemas check` against a registry.
//!
//! Layers, each importing only from those before it: `config`, `clock` and
//! `domain` → `events` → `store` → `kafka`, `telemetry` → `workers`,
//! `realtime` → `analytics` → `http`, `produce` → `dlq`, `schemas` → `app` →
//! `main`.
//! The benchmark is a separate crate (`bench/`) and shares the "fresh world"
//! kit (`testkit/`) with the tests.

pub mod analytics;
pub mod app;
pub mod clock;
pub mod config;
pub mod dlq;
pub mod domain;
pub mod events;
pub mod http;
pub mod kafka;
pub mod produce;
pub mod realtime;
pub mod schemas;
pub mod store;
pub mod telemetry;
pub mod workers;
