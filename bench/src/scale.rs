//! The scale-out phase: N full workers (`orderflow run`, separate OS
//! processes, one consumer group) over the same topics and database.
//!
//! - **Rounds** (`--instances 1,2,3`): per round, fresh topics hold a mix of
//!   `--instance-checkouts` checkouts with their payments and
//!   cancellations (one record per batch); then N workers start together and
//!   are timed from their start to the last input committed. Reported: events/s over the whole round and
//!   between 10 % and 90 % committed (start-up and tail left out), each
//!   worker's share of the input partitions, and CPU per 1,000 events.
//! - **Churn** (first; when the largest N is at least 2): N − 1 workers consume
//!   checkouts produced at `--churn-rate` per second for `--churn-secs`; a
//!   worker joins at a third of the time and one of the first is SIGKILLed at
//!   two thirds, on the worker's own producer settings (checkouts the broker
//!   skips are counted, not waited for). Latency is produce → order row written (the row's
//!   `created_at` against the `occurred_at` the benchmark stamped at send;
//!   the commit follows within the batch), read from the database so the
//!   killed worker's events count too. The pause of a join or a kill is the
//!   time until every checkouts partition has written an event produced
//!   after it: a partition that kept flowing does so within a few ms.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures::future::try_join_all;
use orderflow::domain::OrderId;
use orderflow::produce::enqueue;
use orderflow_testkit::{prom, Worker};
use rand::SeedableRng;
use rdkafka::producer::future_producer::DeliveryFuture;

use crate::cpu;
use crate::harness::Bench;
use crate::load::checkout;
use crate::report::{percentile, Churn, Pause, ScaleRound, Window};
use crate::{progress, Options};

impl Bench {
    /// Every round of `--instances`, then the churn phase.
    pub async fn scale_out(
        &mut self,
        o: &Options,
    ) -> anyhow::Result<(Vec<ScaleRound>, Option<Churn>)> {
        if let Some(mut worker) = self.worker.take() {
            worker.kill().await.context("failed to stop the worker")?;
        }
        // The churn first: Tansu's produce rate falls as it fills
        // (docs/tansu.md), and one record per batch at a steady rate needs
        // it most.
        let most = o.instances.iter().copied().max().unwrap_or(0);
        let churn = if most >= 2 && o.churn_secs >= 6 {
            Some(self.churn(most - 1, o.churn_rate, o.churn_secs).await?)
        } else {
            None
        };
        let mut rounds = Vec::new();
        for (i, &n) in o.instances.iter().enumerate() {
            if o.instance_checkouts > 0 {
                rounds.push(
                    self.scale_round(
                        n,
                        o.instance_checkouts,
                        i,
                        Tally::Inbox,
                        Batching::OneRecord,
                    )
                    .await?,
                );
            }
        }
        Ok((rounds, churn))
    }

    /// N workers through `checkouts` checkouts of the mix on fresh topics
    /// (`round` names them and the orders), produced as `batching` says,
    /// timed to the last input committed as `tally` counts it.
    pub(crate) async fn scale_round(
        &mut self,
        n: usize,
        checkouts: u64,
        round: usize,
        tally: Tally,
        batching: Batching,
    ) -> anyhow::Result<ScaleRound> {
        self.world
            .fresh_topics("bench", &format!("scale{round}"))
            .await?;
        progress(format!(
            "scale-out: {n} worker(s), {checkouts} checkouts of the mix"
        ));
        // Produced before the workers start. Several workers' start-up
        // rebalances move partitions, whose new owners read from committed
        // offsets, and Tansu skips the rest of a batch read from inside
        // (docs/tansu.md; Kafka does not): their input goes one record per
        // batch.
        let producer = match batching {
            Batching::OneRecord => single_record_producer(self.settings())?,
            Batching::Bulk => self.producer.clone(),
        };
        let cart_base = 5_000_000_000_000 + round as i64 * 1_000_000_000;
        let events = self
            .produce_mix_with(&producer, checkouts, &format!("s{round}"), cart_base)
            .await?;
        let already = match tally {
            Tally::Inbox => self.processed().await?,
            Tally::WorkerMetrics => 0,
        };
        let before = cpu::now(None);
        let started = Instant::now();
        let workers = self.spawn_workers(n).await?;
        let pids: Vec<i32> = workers.iter().filter_map(Worker::pid).collect();
        // Their CPU from their start (a process's counters start at 0).
        let cpu_before = 0.0;
        let (mut at_10, mut at_90) = (None, None);
        let mut last_report = Instant::now();
        let (mut last_done, mut last_progress) = (0, Instant::now());
        loop {
            let done = match tally {
                Tally::Inbox => (self.processed().await? - already) as u64,
                Tally::WorkerMetrics => self.inputs_handled(&workers).await as u64,
            };
            let t = started.elapsed().as_secs_f64();
            if done != last_done {
                (last_done, last_progress) = (done, Instant::now());
            } else if last_progress.elapsed() > Duration::from_secs(60) {
                bail!(
                    "scale-out: {done} of {events} committed and no progress for 60 s \
                     (records skipped by the broker? see docs/tansu.md)"
                );
            }
            if at_10.is_none() && done * 10 >= events {
                at_10 = Some((t, done));
            }
            if at_90.is_none() && done * 10 >= events * 9 {
                at_90 = Some((t, done));
            }
            if done >= events {
                break;
            }
            if last_report.elapsed() > Duration::from_secs(5) {
                progress(format!("  {done} / {events} committed"));
                last_report = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seconds = started.elapsed().as_secs_f64();
        let mut spent = cpu::now(None) - before;
        spent.worker = cpu::processes(&pids) - cpu_before;
        let steady = match (at_10, at_90) {
            (Some((t1, d1)), Some((t2, d2))) if t2 > t1 => (d2 - d1) as f64 / (t2 - t1),
            _ => events as f64 / seconds,
        };
        let held = self.inputs_held(&workers).await;
        let total: f64 = held.iter().sum();
        let done = ScaleRound {
            instances: n,
            events,
            seconds,
            events_per_s: events as f64 / seconds,
            steady_events_per_s: steady,
            partition_shares: held
                .iter()
                .map(|h| (h / total.max(1.0) * 1000.0).round() / 10.0)
                .collect(),
            cpu: spent.per_thousand(events),
        };
        progress(format!(
            "  {:.0} events/s ({:.0} steady); partition shares {:?} %; CPU ms per 1,000: workers {:.0}, PostgreSQL {:.0}, broker {:.0}",
            done.events_per_s,
            done.steady_events_per_s,
            done.partition_shares,
            done.cpu.worker,
            done.cpu.postgres,
            done.cpu.broker
        ));
        self.stop_workers(workers).await?;
        Ok(done)
    }

    /// N workers started together; returns once all answer `/readyz`.
    async fn spawn_workers(&self, n: usize) -> anyhow::Result<Vec<Worker>> {
        try_join_all((0..n).map(|_| Worker::spawn(&self.binary, self.settings(), &[]))).await
    }

    /// Waits for the outbox to drain, then kills the workers
    /// ([`Bench::kill_workers`]).
    async fn stop_workers(&self, workers: Vec<Worker>) -> anyhow::Result<()> {
        let started = Instant::now();
        while orderflow::store::outbox::backlog(&self.pool).await?.0 > 0
            && started.elapsed() < Duration::from_secs(120)
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.kill_workers(workers).await
    }

    async fn churn(&mut self, first: usize, rate: u64, secs: u64) -> anyhow::Result<Churn> {
        self.world.fresh_topics("bench", "churn").await?;
        progress(format!(
            "scale-out churn: {first} worker(s), {rate} checkouts/s for {secs} s; one joins at {} s, one is killed at {} s",
            secs / 3,
            secs * 2 / 3
        ));
        let mut workers = self.spawn_workers(first).await?;
        self.wait_assigned(&workers).await?;
        // The worker's own producer settings (5 ms linger), as in the
        // latency phase: at this rate a batch mostly holds one record per
        // partition. One record per batch always would rule out Tansu's
        // mid-batch skip, but Tansu takes those at a few thousand per second
        // and the producer's queue, not orderflow, set the latency (p99 1.2 s
        // before any fault, 30 Nov). A checkout lost to the skip is counted
        // and left out of the figures.
        let producer = self.latency_producer.clone();
        let topic = self.settings().topics.checkouts.clone();
        let users = self.users;
        let started = Instant::now();
        let sender = tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::from_entropy();
            let mut sent: Vec<(String, DeliveryFuture)> = Vec::new();
            crate::load::at_rate(rate, secs, |n| {
                let order_id = OrderId::parse(&format!("churn-{n}"))?;
                let mut ev = checkout(&mut rng, &order_id, 800_000_000_000 + n as i64, users);
                ev.occurred_at = chrono::Utc::now();
                let delivery = enqueue(
                    &producer,
                    &topic,
                    order_id.as_str(),
                    &serde_json::to_vec(&ev)?,
                )?;
                sent.push((order_id.to_string(), delivery));
                Ok(())
            })
            .await?;
            let mut partitions = BTreeMap::new();
            for (order_id, delivery) in sent {
                match delivery.await {
                    Ok(Ok(d)) => {
                        partitions.insert(order_id, d.partition);
                    }
                    Ok(Err((e, _))) => bail!("churn checkout {order_id} was not delivered: {e}"),
                    Err(_) => bail!("churn checkout {order_id}: the producer went away"),
                }
            }
            Ok(partitions)
        });
        tokio::time::sleep_until((started + Duration::from_secs(secs / 3)).into()).await;
        let joined_at = chrono::Utc::now();
        progress("  a worker joins");
        workers.push(Worker::spawn(&self.binary, self.settings(), &[]).await?);
        tokio::time::sleep_until((started + Duration::from_secs(secs * 2 / 3)).into()).await;
        let killed_at = chrono::Utc::now();
        progress("  a worker is killed (SIGKILL)");
        workers[0].kill().await?;
        let partitions = sender.await.context("the churn sender panicked")??;
        let total = partitions.len() as i64;
        let waited = Instant::now();
        let rows: Vec<(String, f64, f64)> = loop {
            let rows: Vec<(String, f64, f64)> = sqlx::query_as(
                "SELECT order_id,
                        extract(epoch FROM checkout_occurred_at)::float8,
                        extract(epoch FROM created_at)::float8
                 FROM orders WHERE order_id LIKE 'churn-%'",
            )
            .fetch_all(&self.pool)
            .await?;
            if rows.len() as i64 >= total {
                break rows;
            }
            if waited.elapsed() > Duration::from_secs(120) {
                progress(format!(
                    "  {} of {total} checkouts written 120 s after the last was sent: the rest \
                     were skipped by the broker (docs/tansu.md) and are left out",
                    rows.len()
                ));
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        self.stop_workers(workers.into_iter().skip(1).collect())
            .await?;
        let events: Vec<Event> = rows
            .into_iter()
            .filter_map(|(id, occurred, written)| {
                Some(Event {
                    partition: *partitions.get(&id)?,
                    occurred,
                    written,
                })
            })
            .collect();
        let epoch = |t: chrono::DateTime<chrono::Utc>| t.timestamp_micros() as f64 / 1e6;
        let (join, kill) = (epoch(joined_at), epoch(killed_at));
        let begin = events.iter().map(|e| e.occurred).fold(f64::MAX, f64::min);
        let end = events.iter().map(|e| e.occurred).fold(f64::MIN, f64::max);
        let churn = Churn {
            rate,
            seconds: secs,
            workers_before: first,
            lost: total as u64 - events.len() as u64,
            windows: vec![
                window("steady (before the join)", &events, begin + 2.0, join),
                window("join → +10 s", &events, join, join + 10.0),
                window("kill → end", &events, kill, end + 1.0),
                window("whole phase", &events, begin, end + 1.0),
            ],
            pauses: vec![
                pause("join", &events, join, kill.min(join + 30.0)),
                pause("kill", &events, kill, kill + 30.0),
            ],
        };
        for w in &churn.windows {
            progress(format!(
                "  {}: {} events, p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
                w.name, w.events, w.p50_ms, w.p99_ms, w.max_ms
            ));
        }
        for p in &churn.pauses {
            progress(format!(
                "  {}: longest stall {:.2} s; every partition flowing again {:.2} s after it ({} stalled over 1 s)",
                p.what, p.longest_stall_s, p.all_flowing_after_s, p.partitions_stalled
            ));
        }
        Ok(churn)
    }

    /// Input messages the workers have handled (their
    /// `orderflow_messages_total` over the three input topics; a worker's
    /// counters start at 0).
    async fn inputs_handled(&self, workers: &[Worker]) -> f64 {
        self.per_worker_over_inputs(workers, "orderflow_messages_total")
            .await
            .iter()
            .sum()
    }

    /// Partitions of the three input topics each worker holds.
    async fn inputs_held(&self, workers: &[Worker]) -> Vec<f64> {
        self.per_worker_over_inputs(workers, "orderflow_consumer_assigned_partitions")
            .await
    }

    /// Per worker, `metric` summed over the three input topics (0 for a
    /// worker whose metrics cannot be read).
    async fn per_worker_over_inputs(&self, workers: &[Worker], metric: &str) -> Vec<f64> {
        let t = &self.settings().topics;
        let inputs = [&t.checkouts, &t.payment_confirmations, &t.cancellations];
        let mut sums = Vec::with_capacity(workers.len());
        for worker in workers {
            let page = worker.metrics_page().await.unwrap_or_default();
            sums.push(
                inputs
                    .iter()
                    .map(|topic| prom::sum(&page, metric, &[("topic", topic.as_str())]))
                    .sum::<f64>(),
            );
        }
        sums
    }

    /// Waits until the workers hold every partition of the three input
    /// topics between them, each worker some.
    async fn wait_assigned(&self, workers: &[Worker]) -> anyhow::Result<()> {
        let specs = orderflow::kafka::topics::load_specs(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topics"),
        )?;
        let partitions: f64 = ["checkouts", "payment-confirmations", "cancellations"]
            .iter()
            .filter_map(|role| specs.iter().find(|s| s.role == *role))
            .map(|s| f64::from(s.partitions))
            .sum();
        let started = Instant::now();
        loop {
            let held = self.inputs_held(workers).await;
            if held.iter().sum::<f64>() >= partitions && held.iter().all(|&h| h > 0.0) {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(90) {
                bail!("the workers held {held:?} of {partitions} input partitions after 90 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// How a round counts the inputs committed.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Tally {
    /// Rows of the inbox: exact whatever the workers do, but a count over
    /// the whole table.
    Inbox,
    /// The workers' own counters: costs the database nothing, however big
    /// it is; exact while no worker dies or hands partitions over.
    WorkerMetrics,
}

/// How a round's input is produced.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Batching {
    /// One record per batch: several workers' start-up rebalances hand
    /// partitions over mid-topic, and Tansu skips the rest of a batch read
    /// from inside (docs/tansu.md). Tansu takes these at a few thousand per
    /// second.
    OneRecord,
    /// The bulk loader's batches: for one worker, which hands nothing over.
    Bulk,
}

/// A producer that sends one record per batch, so that every offset
/// starts a batch (docs/tansu.md).
fn single_record_producer(
    settings: &orderflow::config::Settings,
) -> anyhow::Result<rdkafka::producer::FutureProducer> {
    orderflow::kafka::producer_config(settings)
        .set("batch.num.messages", "1")
        .set("queue.buffering.max.messages", "1000000")
        // No delivery deadline: at the end of a full run Tansu takes these
        // at a few hundred per second, and a round's 39,000 records outlived
        // the default 300 s in the queue (the run failed, twice, 30 Nov).
        .set("message.timeout.ms", "0")
        .create()
        .context("failed to create a one-record-per-batch producer")
}

/// One checkout of the churn phase: its partition, when it was sent and
/// when its order row was written (seconds since the epoch).
#[derive(Debug, Clone, Copy)]
struct Event {
    partition: i32,
    occurred: f64,
    written: f64,
}

fn window(name: &str, events: &[Event], from: f64, to: f64) -> Window {
    let mut ms: Vec<f64> = events
        .iter()
        .filter(|e| e.occurred >= from && e.occurred < to)
        .map(|e| (e.written - e.occurred) * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    Window {
        name: name.to_owned(),
        events: ms.len(),
        p50_ms: percentile(&ms, 0.5),
        p99_ms: percentile(&ms, 0.99),
        max_ms: ms.last().copied().unwrap_or(0.0),
    }
}

/// How long writes stopped around a fault at `at`: per partition, the
/// longest gap between consecutive order rows written (in write order) that
/// ends after `at` and starts before `until` (the next fault, or 30 s). A partition that kept
/// flowing shows gaps of a few ms (500 checkouts/s over 6 partitions); one
/// that was revoked and reassigned shows the whole pause, from its last
/// write before the fault to its first after.
fn pause(what: &str, events: &[Event], at: f64, until: f64) -> Pause {
    let mut by_partition: BTreeMap<i32, Vec<f64>> = BTreeMap::new();
    for e in events {
        by_partition.entry(e.partition).or_default().push(e.written);
    }
    let mut stalls = Vec::new();
    for writes in by_partition.values_mut() {
        writes.sort_by(f64::total_cmp);
        let longest = writes
            .windows(2)
            .filter(|w| w[1] > at && w[0] < until)
            .map(|w| (w[1] - w[0], w[1]))
            .fold((0.0, at), |a, b| if b.0 > a.0 { b } else { a });
        stalls.push(longest);
    }
    Pause {
        what: what.to_owned(),
        longest_stall_s: stalls.iter().map(|s| s.0).fold(0.0, f64::max),
        all_flowing_after_s: stalls
            .iter()
            .filter(|s| s.0 > 0.5)
            .map(|s| s.1 - at)
            .fold(0.0, f64::max),
        partitions_stalled: stalls.iter().filter(|s| s.0 > 1.0).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(partition: i32, occurred: f64, written: f64) -> Event {
        Event {
            partition,
            occurred,
            written,
        }
    }

    #[test]
    fn a_pause_is_the_longest_write_gap_of_any_partition_around_the_fault() {
        let mut events = Vec::new();
        // Partition 0 flows: a write every 10 ms from t = 0 to 20.
        // Partition 1 stops at 11.0 (after the fault at 10) and resumes at
        // 14.0. Partition 2 has an old gap, before the window.
        for i in 0..2000 {
            let t = f64::from(i) * 0.01;
            events.push(ev(0, t, t + 0.005));
            let w = if (11.0..14.0).contains(&t) {
                14.0
            } else {
                t + 0.005
            };
            events.push(ev(1, t, w));
            if !(2.0..4.0).contains(&t) {
                events.push(ev(2, t, t + 0.005));
            }
        }
        let p = pause("join", &events, 10.0, 40.0);
        assert!((p.longest_stall_s - 3.0).abs() < 0.02, "{p:?}");
        assert!((p.all_flowing_after_s - 4.0).abs() < 0.02, "{p:?}");
        assert_eq!(p.partitions_stalled, 1);
        let calm = pause("calm", &events, 16.0, 46.0);
        assert!(calm.longest_stall_s < 0.02, "{calm:?}");
        // A stall that starts after `until` belongs to the next fault.
        let before = pause("before", &events, 5.0, 10.5);
        assert!(before.longest_stall_s < 0.02, "{before:?}");
        assert_eq!(calm.all_flowing_after_s, 0.0);
    }

    #[test]
    fn a_window_counts_only_events_produced_within_it() {
        let events = [ev(0, 1.0, 1.01), ev(0, 2.0, 2.5), ev(0, 3.0, 3.02)];
        let w = window("w", &events, 1.5, 2.5);
        assert_eq!(w.events, 1);
        assert!((w.max_ms - 500.0).abs() < 1e-6);
    }
}
