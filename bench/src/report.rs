//! The result of a run and of each phase: one table, and JSON with `--json`.

use serde::Serialize;

use crate::cpu::CpuTimes;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checkouts: u64,
    pub total_events: u64,
    pub throughput_events_per_s: f64,
    pub throughput_checkouts_per_s: f64,
    pub outbox_drained_s: f64,
    pub db_ceiling_checkouts_per_s: f64,
    /// The same mix of events as the throughput phase.
    pub db_ceiling_events_per_s: f64,
    pub naive_checkouts_per_s: f64,
    pub ratio_to_db_ceiling: f64,
    pub ratio_to_naive: f64,
    pub latency_rate_per_s: u64,
    pub latency_events: u64,
    pub latency_p50_ms: f64,
    pub latency_p95_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_p999_ms: f64,
    /// The upper bound of the highest bucket the histogram filled.
    pub latency_max_ms: f64,
    /// The latency phase's batches, as the worker timed them (apply and
    /// commit, from its `orderflow_batch_duration_seconds`): how many, and
    /// their p50 and p99. What the produce → commit time holds besides is
    /// the broker, the fetch and the wait for a turn.
    pub latency_batches: u64,
    pub latency_batch_p50_ms: f64,
    pub latency_batch_p99_ms: f64,
    /// How long each batch's oldest message waited in the worker's loop for
    /// the batch to start (`orderflow_batch_wait_seconds`): p50, p99.
    pub latency_wait_p50_ms: f64,
    pub latency_wait_p99_ms: f64,
    /// Produce → consume through the broker alone at the same rate.
    pub broker_floor_p50_ms: f64,
    pub broker_floor_p99_ms: f64,
    /// The same on a topic defined like the checkouts topic.
    pub broker_floor6_p50_ms: f64,
    pub broker_floor6_p99_ms: f64,
    /// Produce → consume of the latency phase's own checkouts by a plain
    /// consumer beside the worker: the broker under the phase's load.
    pub broker_loaded_p50_ms: f64,
    pub broker_loaded_p99_ms: f64,
    /// Each route at each concurrency level.
    pub http: Vec<HttpRun>,
    pub worker_peak_rss_mb: f64,
    pub worker_rss_after_throughput_mb: f64,
    pub worker_rss_end_mb: f64,
    /// Messages per committed transaction in the throughput phase, by topic.
    pub mean_batch_size: Vec<(String, f64)>,
    /// The streams phase (none when `--sse-subscribers 0`).
    pub sse_subscribers: u64,
    pub sse_rss_before_mb: f64,
    pub sse_rss_idle_mb: f64,
    pub sse_kb_per_connection: f64,
    pub sse_events_sent: u64,
    pub sse_events_received: u64,
    pub sse_snapshots_received: u64,
    /// The event's `occurred_at` (set while its batch is applied) → parsed
    /// by a client of the benchmark.
    pub sse_latency_p50_ms: f64,
    pub sse_latency_p99_ms: f64,
    pub sse_latency_max_ms: f64,
    /// The worker's feed write → send histogram over the same events.
    pub sse_server_p50_ms: f64,
    pub sse_server_p99_ms: f64,
    pub sse_throughput_without: f64,
    pub sse_throughput_with: f64,
    pub sse_throughput_ratio: f64,
    pub sse_streams_dropped: u64,
    /// Outbox drained → the analytics loop has counted every order event
    /// (`None`: not within 120 s).
    pub analytics_caught_up_s: Option<f64>,
    pub analytics_throughput_without: f64,
    pub analytics_throughput_with: f64,
    pub analytics_rounds: u64,
    /// CPU ms per 1,000 input events in those bursts (means).
    pub analytics_cpu_without: Option<CpuTimes>,
    pub analytics_cpu_with: Option<CpuTimes>,
    /// The longest a burst's last order events were counted after its
    /// inputs were committed.
    pub analytics_burst_trailing_s: f64,
    /// The throughput phase's order events replayed by an analytics-only
    /// worker into empty rollups.
    pub analytics_replay_events: i64,
    pub analytics_events_per_s: f64,
    pub analytics_orders: i64,
    pub analytics_rebuild_s: f64,
    /// Rows, WAL and CPU per 1,000 events of each kind.
    pub cost: Vec<EventCost>,
    /// The relay phase: 1, 2, 3… relays publishing a backlog.
    pub relay: Vec<RelayRound>,
    /// The scale-out phase: 1, 2, 3… workers through one mix.
    pub scale: Vec<ScaleRound>,
    /// A worker joins, one is killed, under a steady rate.
    pub churn: Option<Churn>,
    /// The same round before and after millions of orders are loaded.
    pub size: Option<SizeRun>,
}

/// One route under closed-loop load: `connections` clients, each sending its
/// next request as soon as the last is answered.
#[derive(Debug, Default, Serialize)]
pub struct HttpRun {
    pub route: String,
    pub connections: usize,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
}

/// The value at fraction `p` of an ascending sample (0 when it is empty).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// `bench-<id>-checkouts` → `checkouts`.
pub fn short_topic(topic: &str) -> &str {
    topic
        .strip_prefix("bench-")
        .and_then(|t| t.split_once('-'))
        .map_or(topic, |(_, name)| name)
}

impl Report {
    pub fn print_table(&self) {
        let mut rows = self.throughput_rows();
        rows.extend(self.latency_and_memory_rows());
        if self.sse_subscribers > 0 {
            rows.extend(self.stream_rows());
        }
        rows.extend(self.analytics_rows());
        rows.extend(self.cost.iter().map(|c| {
            (
                format!("cost per 1,000 events: {}", c.kind),
                format!(
                    "rows +{:.0} ~{:.0} (HOT {:.0}) -{:.0}, WAL {:.0} kB, CPU ms: worker {:.0}, PostgreSQL {:.0}, broker {:.0}, machine {:.0}",
                    c.rows_inserted,
                    c.rows_updated,
                    c.rows_hot_updated,
                    c.rows_deleted,
                    c.wal_kb,
                    c.cpu.worker,
                    c.cpu.postgres,
                    c.cpu.broker,
                    c.cpu.machine
                ),
            )
        }));
        rows.extend(self.relay.iter().map(|r| {
            (
                format!("relay: {} instance(s), {} rows", r.instances, r.rows),
                format!(
                    "{:.0} rows/s; per instance (rows, shards) {:?}; CPU ms per 1,000 rows: relays {:.0}, PostgreSQL {:.0}, broker {:.0}, machine {:.0}",
                    r.rows_per_s, r.per_instance, r.cpu.worker, r.cpu.postgres, r.cpu.broker, r.cpu.machine
                ),
            )
        }));
        rows.extend(self.scale.iter().map(|r| {
            (
                format!("scale-out: {} worker(s), {} events", r.instances, r.events),
                format!(
                    "{:.0} events/s ({:.0} between 10 % and 90 %); partition shares {:?} %; CPU ms per 1,000: workers {:.0}, PostgreSQL {:.0}, broker {:.0}, machine {:.0}",
                    r.events_per_s, r.steady_events_per_s, r.partition_shares, r.cpu.worker, r.cpu.postgres, r.cpu.broker, r.cpu.machine
                ),
            )
        }));
        if let Some(churn) = &self.churn {
            rows.extend(churn.windows.iter().map(|w| {
                (
                    format!(
                        "churn at {}/s ({} → {} → {} workers): {}",
                        churn.rate,
                        churn.workers_before,
                        churn.workers_before + 1,
                        churn.workers_before,
                        w.name
                    ),
                    format!(
                        "{} checkouts, produce → written p50 {:.1} ms, p99 {:.1} ms, max {:.0} ms",
                        w.events, w.p50_ms, w.p99_ms, w.max_ms
                    ),
                )
            }));
            if churn.lost > 0 {
                rows.push((
                    "churn: checkouts never written".to_owned(),
                    format!("{} (skipped by the broker, docs/tansu.md)", churn.lost),
                ));
            }
            rows.extend(churn.pauses.iter().map(|p| {
                (
                    format!("churn: pause after the {}", p.what),
                    format!(
                        "longest stall {:.2} s; every partition flowing again {:.2} s after the {} ({} stalled over 1 s)",
                        p.longest_stall_s, p.all_flowing_after_s, p.what, p.partitions_stalled
                    ),
                )
            }));
        }
        if let Some(size) = &self.size {
            for (orders, round, reads, work) in [
                (
                    size.orders_before,
                    &size.before,
                    &size.status_reads_before,
                    &size.work_before,
                ),
                (
                    size.orders_after,
                    &size.after,
                    &size.status_reads_after,
                    &size.work_after,
                ),
            ] {
                rows.push((
                    format!("size: 1 worker, {} events, {orders} orders in the database", round.events),
                    format!(
                        "{:.0} events/s ({:.0} between 10 % and 90 %); status reads (8 connections) {:.0} req/s, p99 {:.2} ms",
                        round.events_per_s, round.steady_events_per_s, reads.requests_per_s, reads.p99_ms
                    ),
                ));
                let most_read: Vec<String> = work
                    .most_read
                    .iter()
                    .map(|(table, blocks)| format!("{table} {blocks:.0}"))
                    .collect();
                rows.push((
                    format!("size: database work per 1,000 events, {orders} orders"),
                    format!(
                        "WAL {:.0} kB ({:.0} full-page images); PostgreSQL CPU {:.0} ms; {:.0} blocks read ({})",
                        work.wal_kb,
                        work.full_page_images,
                        round.cpu.postgres,
                        work.blocks_read,
                        most_read.join(", ")
                    ),
                ));
            }
            rows.push((
                "size: after the preload / before".to_owned(),
                format!(
                    "{:.0} % ({:.0} MB database, loaded in {:.0} s)",
                    size.ratio * 100.0,
                    size.database_mb,
                    size.preload_s
                ),
            ));
        }
        rows.extend(self.http.iter().map(|run| {
            let errors = match run.errors {
                0 => String::new(),
                n => format!(", {n} errors"),
            };
            (
                format!("{}, {} connections", run.route, run.connections),
                format!(
                    "{:.0} req/s, p50 {:.2} ms, p99 {:.2} ms{errors}",
                    run.requests_per_s, run.p50_ms, run.p99_ms
                ),
            )
        }));
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        println!();
        for (k, v) in rows {
            println!("{k:<width$}  {v}");
        }
    }

    fn throughput_rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "throughput (all events, to committed effect)".into(),
                format!("{:.0} events/s", self.throughput_events_per_s),
            ),
            (
                "throughput (checkouts)".into(),
                format!(
                    "{:.0} checkouts/s ({} checkouts, {} events)",
                    self.throughput_checkouts_per_s, self.checkouts, self.total_events
                ),
            ),
            (
                "outbox drained after".into(),
                format!("{:.1} s", self.outbox_drained_s),
            ),
            (
                "baseline: database ceiling (same mix, no Kafka)".into(),
                format!(
                    "{:.0} events/s ({:.0} checkouts/s)",
                    self.db_ceiling_events_per_s, self.db_ceiling_checkouts_per_s
                ),
            ),
            (
                "baseline: naive (tx + sync produce per message)".into(),
                format!("{:.0} checkouts/s", self.naive_checkouts_per_s),
            ),
            (
                "ratio to database ceiling (events/s)".into(),
                format!("{:.0} %", self.ratio_to_db_ceiling * 100.0),
            ),
            (
                "ratio to naive".into(),
                format!("{:.1}×", self.ratio_to_naive),
            ),
            (
                "mean batch size (messages per transaction)".into(),
                self.mean_batch_size
                    .iter()
                    .map(|(t, n)| format!("{} {n}", short_topic(t)))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
        ]
    }

    fn analytics_rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![(
            "analytics: caught up after the outbox drained".into(),
            match self.analytics_caught_up_s {
                Some(s) => format!("{s:.1} s"),
                None => "not within 120 s".into(),
            },
        )];
        if self.analytics_throughput_without > 0.0 {
            rows.push((
                "analytics: throughput without → with the loop".into(),
                format!(
                    "{:.0} → {:.0} events/s ({:+.1} %, mean of {} bursts each, alternated)",
                    self.analytics_throughput_without,
                    self.analytics_throughput_with,
                    (self.analytics_throughput_with / self.analytics_throughput_without - 1.0)
                        * 100.0,
                    self.analytics_rounds
                ),
            ));
        }
        if let (Some(a), Some(b)) = (self.analytics_cpu_without, self.analytics_cpu_with) {
            rows.push((
                "analytics: CPU ms per 1,000 events without → with".into(),
                format!(
                    "worker {:.0} → {:.0}, PostgreSQL {:.0} → {:.0}, broker {:.0} → {:.0}, machine {:.0} → {:.0} (until the burst's order events were published, and counted: at most {:.1} s after its inputs)",
                    a.worker, b.worker, a.postgres, b.postgres, a.broker, b.broker, a.machine, b.machine, self.analytics_burst_trailing_s
                ),
            ));
        }
        if self.analytics_replay_events > 0 {
            rows.push((
                "analytics: the loop's own rate (replay, empty rollups)".into(),
                format!(
                    "{:.0} events/s ({} events)",
                    self.analytics_events_per_s, self.analytics_replay_events
                ),
            ));
        }
        if self.analytics_orders > 0 {
            rows.push((
                format!("analytics: rebuild with {} orders", self.analytics_orders),
                format!("{:.1} s", self.analytics_rebuild_s),
            ));
        }
        rows
    }

    fn stream_rows(&self) -> Vec<(String, String)> {
        let n = self.sse_subscribers;
        vec![
            (
                format!("SSE: worker RSS, 0 → {n} idle streams"),
                format!(
                    "{:.1} MB → {:.1} MB ({:.1} KB per stream)",
                    self.sse_rss_before_mb, self.sse_rss_idle_mb, self.sse_kb_per_connection
                ),
            ),
            (
                format!("SSE: applied → received by {n} subscribers"),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} events received of {} produced{})",
                    self.sse_latency_p50_ms,
                    self.sse_latency_p99_ms,
                    self.sse_latency_max_ms,
                    self.sse_events_received,
                    self.sse_events_sent,
                    match self.sse_streams_dropped {
                        0 => String::new(),
                        d => format!(", {d} streams dropped"),
                    }
                ),
            ),
            (
                "SSE: feed write → send (worker's histogram)".into(),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    self.sse_server_p50_ms, self.sse_server_p99_ms
                ),
            ),
            (
                format!("SSE: throughput without → with {n} streams attached"),
                format!(
                    "{:.0} → {:.0} events/s ({:+.1} %)",
                    self.sse_throughput_without,
                    self.sse_throughput_with,
                    (self.sse_throughput_ratio - 1.0) * 100.0
                ),
            ),
        ]
    }

    fn latency_and_memory_rows(&self) -> Vec<(String, String)> {
        vec![
            (
                "latency produce → commit".into(),
                format!(
                    "p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max ≤ {:.1} ms ({} events at {}/s)",
                    self.latency_p50_ms,
                    self.latency_p95_ms,
                    self.latency_p99_ms,
                    self.latency_p999_ms,
                    self.latency_max_ms,
                    self.latency_events,
                    self.latency_rate_per_s
                ),
            ),
            (
                "latency phase: each batch's apply + commit".into(),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms ({} batches, {:.1} checkouts each)",
                    self.latency_batch_p50_ms,
                    self.latency_batch_p99_ms,
                    self.latency_batches,
                    self.latency_events as f64 / self.latency_batches.max(1) as f64
                ),
            ),
            (
                "latency phase: a batch's wait in the loop to start".into(),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    self.latency_wait_p50_ms, self.latency_wait_p99_ms
                ),
            ),
            (
                "latency phase: a plain consumer of the same checkouts".into(),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms (the broker under the phase's load)",
                    self.broker_loaded_p50_ms, self.broker_loaded_p99_ms
                ),
            ),
            (
                "latency floor: broker alone, produce → consume".into(),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    self.broker_floor_p50_ms, self.broker_floor_p99_ms
                ),
            ),
            (
                "latency floor on a topic shaped like checkouts".into(),
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms",
                    self.broker_floor6_p50_ms, self.broker_floor6_p99_ms
                ),
            ),
            (
                "worker RSS".into(),
                format!(
                    "peak {:.0} MB, after throughput {:.0} MB, end of run (second worker) {:.0} MB",
                    self.worker_peak_rss_mb,
                    self.worker_rss_after_throughput_mb,
                    self.worker_rss_end_mb
                ),
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_short_topic_names() {
        assert_eq!(percentile(&[], 0.5), 0.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 0.5), 3.0);
        assert_eq!(percentile(&[1.0, 2.0, 3.0, 4.0], 1.0), 4.0);
        assert_eq!(short_topic("bench-0123abcd-checkouts"), "checkouts");
        assert_eq!(short_topic("checkouts"), "checkouts");
    }
}

/// What 1,000 input events of one kind cost.
#[derive(Debug, Clone, Default, Serialize)]
pub struct EventCost {
    pub kind: String,
    pub events: u64,
    pub rows_inserted: f64,
    pub rows_updated: f64,
    pub rows_deleted: f64,
    /// Of the updated rows, those updated in place (HOT: no index entries).
    pub rows_hot_updated: f64,
    pub wal_kb: f64,
    /// The WAL per 1,000 events by relation, largest first (empty when
    /// pg_waldump could not read the server's WAL).
    pub wal_by_relation: Vec<crate::waldump::WalShare>,
    /// CPU ms.
    pub cpu: CpuTimes,
    /// (table, inserted, updated, deleted) per 1,000 events, the tables
    /// written.
    pub by_table: Vec<(String, f64, f64, f64)>,
}

/// One round of the relay phase.
#[derive(Debug, Default, Serialize)]
pub struct RelayRound {
    pub instances: usize,
    pub rows: u64,
    pub seconds: f64,
    pub rows_per_s: f64,
    /// Rows each instance published (`orderflow_outbox_published_total`),
    /// and the shards it held when the rows were committed.
    pub per_instance: Vec<(u64, u32)>,
    /// CPU ms per 1,000 rows: every relay process together (`worker`),
    /// PostgreSQL, the broker, the machine.
    pub cpu: CpuTimes,
}

/// One round: N workers through one mix.
#[derive(Debug, Default, Serialize)]
pub struct ScaleRound {
    pub instances: usize,
    pub events: u64,
    /// Workers' start → last input committed.
    pub seconds: f64,
    pub events_per_s: f64,
    /// Between 10 % and 90 % of the inputs committed.
    pub steady_events_per_s: f64,
    /// Each worker's share of the input topics' partitions at the end, %.
    pub partition_shares: Vec<f64>,
    /// CPU ms per 1,000 events: every worker together (`worker`),
    /// PostgreSQL, the broker, the machine.
    pub cpu: CpuTimes,
}

/// Latency of the checkouts produced in one window of the churn phase.
#[derive(Debug, Default, Serialize)]
pub struct Window {
    pub name: String,
    pub events: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// A join or a kill during the churn phase.
#[derive(Debug, Default, Serialize)]
pub struct Pause {
    pub what: String,
    /// The longest any partition wrote nothing around the fault.
    pub longest_stall_s: f64,
    /// The fault → the end of the last stall over 0.5 s (0 if none).
    pub all_flowing_after_s: f64,
    /// Partitions that stopped for more than a second.
    pub partitions_stalled: usize,
}

#[derive(Debug, Default, Serialize)]
pub struct Churn {
    pub rate: u64,
    pub seconds: u64,
    pub workers_before: usize,
    /// Checkouts sent and never written (skipped by Tansu; 0 on Kafka).
    pub lost: u64,
    pub windows: Vec<Window>,
    pub pauses: Vec<Pause>,
}

/// What the size phase measured.
#[derive(Debug, Default, Serialize)]
pub struct SizeRun {
    pub orders_before: i64,
    pub orders_after: i64,
    /// Size of the database after the preload, MB.
    pub database_mb: f64,
    pub preload_s: f64,
    pub before: ScaleRound,
    pub after: ScaleRound,
    /// `after` over `before`, events/s between 10 % and 90 % committed.
    pub ratio: f64,
    pub status_reads_before: HttpRun,
    pub status_reads_after: HttpRun,
    /// What the database did during each round.
    pub work_before: DbWork,
    pub work_after: DbWork,
}

/// PostgreSQL's work during a round, per 1,000 input events: WAL, full-page
/// images in it (`pg_stat_wal`), and 8 kB blocks read from outside shared
/// buffers, the tables with the most first (`pg_statio_user_tables`,
/// indexes and TOAST included).
#[derive(Debug, Default, Serialize)]
pub struct DbWork {
    pub wal_kb: f64,
    pub full_page_images: f64,
    pub blocks_read: f64,
    pub most_read: Vec<(String, f64)>,
}
