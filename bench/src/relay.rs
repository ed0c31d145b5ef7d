//! The relay phase: how fast 1, 2, 3… relays publish an outbox that holds
//! a backlog, and what it costs each of them. Per round: N `orderflow run
//! --only relay,http` processes start and share the shards; then `rows`
//! order events (bodies and keys copied from the throughput phase's feed,
//! made unique) are committed to the outbox in one transaction, and the
//! round lasts until the outbox is empty. The records go to topics of the
//! phase's own, so nothing downstream of `order-events` sees them.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderflow_testkit::Worker;

use crate::cpu;
use crate::harness::Bench;
use crate::progress;
use crate::report::RelayRound;

impl Bench {
    /// The relay phase, for each instance count in `instances`.
    pub async fn relay_scaling(
        &mut self,
        rows: u64,
        instances: &[usize],
    ) -> anyhow::Result<Vec<RelayRound>> {
        // The main worker's relay would take shards too.
        if let Some(mut worker) = self.worker.take() {
            worker.kill().await.context("failed to stop the worker")?;
        }
        let mut own = self.settings().clone();
        own.topics =
            orderflow::config::Topics::prefixed(&format!("bench-{}-relay-", self.world.id));
        orderflow_testkit::create_topics(&own).await?;
        let mut rounds = Vec::new();
        for (round, &n) in instances.iter().enumerate() {
            progress(format!("relay: {n} instance(s), {rows} outbox rows"));
            let mut relays = Vec::with_capacity(n);
            for _ in 0..n {
                relays.push(
                    Worker::spawn_with_args(
                        &self.binary,
                        &own,
                        &[],
                        &["--only", "relay,http"],
                        Stdio::inherit(),
                    )
                    .await?,
                );
            }
            let shards = wait_balanced(&relays, own.outbox_shards as u32).await?;
            let pids: Vec<i32> = relays.iter().filter_map(Worker::pid).collect();
            let before = (cpu::now(None), cpu::processes(&pids));
            let started = Instant::now();
            self.load_outbox(&own.topics.order_events, rows, round)
                .await?;
            loop {
                let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                    .fetch_one(&self.pool)
                    .await?;
                if left == 0 {
                    break;
                }
                if started.elapsed() > Duration::from_secs(600) {
                    bail!("{left} outbox rows left after 10 minutes");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let seconds = started.elapsed().as_secs_f64();
            let mut spent = cpu::now(None) - before.0;
            spent.worker = cpu::processes(&pids) - before.1;
            let mut per_instance = Vec::with_capacity(n);
            for (relay, held) in relays.iter().zip(&shards) {
                let page = relay.metrics_page().await.unwrap_or_default();
                let published =
                    orderflow_testkit::prom::sum(&page, "orderflow_outbox_published_total", &[]);
                per_instance.push((published as u64, *held));
            }
            let done = RelayRound {
                instances: n,
                rows,
                seconds,
                rows_per_s: rows as f64 / seconds,
                per_instance,
                cpu: spent.per_thousand(rows),
            };
            progress(format!(
                "  {:.0} rows/s; per instance (rows, shards): {:?}; CPU ms per 1,000 rows: relays {:.0}, PostgreSQL {:.0}, broker {:.0}",
                done.rows_per_s, done.per_instance, done.cpu.worker, done.cpu.postgres, done.cpu.broker
            ));
            rounds.push(done);
            self.kill_workers(relays).await?;
        }
        Ok(rounds)
    }

    /// Commits `rows` order events to the outbox in one transaction, cycling
    /// through up to 1,000 events of the feed, each under a key of its own.
    async fn load_outbox(&self, topic: &str, rows: u64, round: usize) -> anyhow::Result<()> {
        sqlx::query(
            "WITH sample AS (
                 SELECT row_number() OVER () - 1 AS n, order_id, event_type, body
                 FROM (SELECT order_id, event_type, body FROM order_feed LIMIT 1000) f),
             size AS (SELECT count(*) AS c FROM sample)
             INSERT INTO outbox (kind, topic, key, payload, headers)
             SELECT 'order_event', $1,
                    convert_to(s.order_id || '-r' || $3 || '-' || g, 'UTF8'),
                    convert_to(s.body::text, 'UTF8'),
                    jsonb_build_array(jsonb_build_array('event_type', s.event_type))
             FROM generate_series(0, $2 - 1) AS g
             JOIN size ON true
             JOIN sample s ON s.n = g % size.c
             ORDER BY g",
        )
        .bind(topic)
        .bind(rows as i64)
        .bind(round as i64)
        .execute(&self.pool)
        .await
        .context("failed to load the outbox")?;
        Ok(())
    }
}

/// Waits until the relays hold every shard between them, each at least
/// one; returns how many each holds.
async fn wait_balanced(relays: &[Worker], shards: u32) -> anyhow::Result<Vec<u32>> {
    let started = Instant::now();
    loop {
        let mut held = Vec::with_capacity(relays.len());
        for relay in relays {
            held.push(relay.relay_shards().await.unwrap_or(0));
        }
        if held.iter().sum::<u32>() == shards && held.iter().all(|&h| h > 0) {
            return Ok(held);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("the relays held {held:?} of {shards} shards after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
