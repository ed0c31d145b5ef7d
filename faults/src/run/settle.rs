//! Waiting for a scenario's world to be quiet: input paused and resumed,
//! how far the groups are behind, recovery after a fault, quiescence, and
//! the oracle at the end.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::bail;
use orderflow_testkit::mix::Input;
use orderflow_testkit::oracle;
use rdkafka::consumer::Consumer;
use rdkafka::{Offset, TopicPartitionList};

use super::Run;
use crate::report::Outcome;

impl Run {
    /// Every message this run produces, held-back ones included.
    pub fn total_messages(&self) -> usize {
        self.messages.len() + self.held.as_ref().map_or(0, |(h, _)| h.len())
    }

    /// Events in the inbox now (`None` while the database does not answer).
    pub async fn processed(&self) -> Option<i64> {
        sqlx::query_scalar("SELECT count(*) FROM processed_events")
            .fetch_one(&self.pool)
            .await
            .ok()
    }

    /// Stops the input once what is in flight is delivered (a no-op when
    /// nothing is being produced).
    pub async fn pause_input(&mut self) -> anyhow::Result<()> {
        self.progress.paused.store(true, Ordering::SeqCst);
        while self.producing.is_some() && !self.progress.idle.load(Ordering::SeqCst) {
            self.check_producer().await?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    pub fn resume_input(&self) {
        self.progress.paused.store(false, Ordering::SeqCst);
    }

    /// Messages the groups have not consumed (committed) of those delivered
    /// up to `ends`; `None` while the broker does not answer.
    pub async fn group_lag(&self, ends: &HashMap<(Input, i32), i64>) -> Option<i64> {
        let observers = self.observers.clone();
        let ends = ends.clone();
        tokio::task::spawn_blocking(move || {
            let mut lag = 0;
            for (input, topic, consumer) in observers.iter() {
                let mut tpl = TopicPartitionList::new();
                for (_, partition) in ends.keys().filter(|(i, _)| i == input) {
                    tpl.add_partition(topic, *partition);
                }
                if tpl.count() == 0 {
                    continue;
                }
                let committed = consumer
                    .committed_offsets(tpl, Duration::from_secs(5))
                    .ok()?;
                for e in committed.elements() {
                    let at = match e.offset() {
                        Offset::Offset(at) => at,
                        _ => 0,
                    };
                    lag += (ends[&(*input, e.partition())] - at).max(0);
                }
            }
            Some(lag)
        })
        .await
        .ok()
        .flatten()
    }

    /// Call when a fault is cleared: waits until the groups' committed
    /// offsets are past everything delivered before it (lag 0: every such
    /// message applied, parked or dead-lettered, durably), and records how
    /// long that took.
    pub async fn recovered(&mut self) -> anyhow::Result<Duration> {
        let cleared = Instant::now();
        let ends = self.progress.ends();
        let mut told = Instant::now();
        loop {
            let lag = self.group_lag(&ends).await;
            if lag == Some(0) {
                break;
            }
            if told.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "[faults] {}: recovering for {:.0} s: group lag {lag:?}, {:?} events applied",
                    self.name,
                    cleared.elapsed().as_secs_f64(),
                    self.processed().await
                );
                told = Instant::now();
            }
            if cleared.elapsed() > Duration::from_secs(900) {
                bail!("no recovery within 15 minutes of clearing the fault");
            }
            self.check_producer().await?;
            self.scrape().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let took = cleared.elapsed();
        self.recoveries.push(took);
        Ok(took)
    }

    /// Waits until every message is produced and applied, the outbox
    /// published and nothing parked.
    pub async fn settle(&mut self) -> anyhow::Result<()> {
        self.produced().await?;
        let want = self.mix.distinct_events.len() as i64;
        let since = Instant::now();
        let mut told = Instant::now();
        // When the groups have consumed everything and nothing has changed
        // for a minute, waiting longer cannot help: the oracle says what
        // is missing.
        let mut last = None;
        let mut unchanged_since = Instant::now();
        loop {
            self.scrape().await;
            let quiet: Option<(i64, i64, i64)> = sqlx::query_as(
                "SELECT (SELECT count(*) FROM processed_events),
                        (SELECT count(*) FROM outbox),
                        (SELECT count(*) FROM parked_events)",
            )
            .fetch_one(&self.pool)
            .await
            .ok();
            if quiet != last {
                last = quiet;
                unchanged_since = Instant::now();
            }
            let lag = self.group_lag(&self.progress.ends()).await;
            if told.elapsed() > Duration::from_secs(30) {
                eprintln!(
                    "[faults] {}: settling: (applied, unpublished, parked) {quiet:?} of {want}, group lag {lag:?}",
                    self.name
                );
                told = Instant::now();
            }
            if let Some((done, unsent, parked)) = quiet {
                if lag == Some(0) && unsent == 0 {
                    if done >= want && parked == 0 {
                        return Ok(());
                    }
                    if unchanged_since.elapsed() > Duration::from_secs(60) {
                        eprintln!(
                            "[faults] {}: everything consumed, yet {done}/{want} applied and {parked} parked, unchanged for a minute",
                            self.name
                        );
                        return Ok(());
                    }
                }
                if since.elapsed() > Duration::from_secs(1200) {
                    bail!("not quiet after 20 minutes: {done}/{want} applied, {unsent} unpublished, {parked} parked, group lag {lag:?}");
                }
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Settles, stops the workers, runs the oracle.
    pub async fn finish(mut self) -> anyhow::Result<Outcome> {
        self.settle().await?;
        for slot in 0..self.workers.len() {
            if self.workers[slot].worker.is_some() {
                self.stop(slot).await?;
            }
        }
        let findings = oracle::check(&self.pool, self.settings(), &self.mix, &self.poison).await?;
        let handled: u64 = self.workers.iter().map(|s| s.earlier + s.current).sum();
        let redeliveries = handled.saturating_sub(self.progress.sent() as u64);
        let mut outcome = Outcome {
            name: self.name,
            events: self.progress.sent(),
            faults: self.faults,
            redeliveries,
            mismatches: findings.mismatches.len(),
            recovery: self.recoveries.iter().max().copied(),
            duration: self.started.elapsed(),
            notes: std::mem::take(&mut self.notes),
            examples: findings.mismatches.iter().take(5).cloned().collect(),
            failed: None,
        };
        if self.expect_redeliveries && redeliveries == 0 {
            outcome.failed = Some("no redelivery seen: the fault did not bite".into());
        }
        outcome.notes.push(format!(
            "{} orders, {} order events ({} republished), {} dead letters",
            findings.orders, findings.order_events, findings.republished, findings.dead_letters
        ));
        self.pool.close().await;
        if outcome.passed() {
            // Keep the logs; the broker's storage of a passing run is only bulk.
            self.broker.stop().await?;
            for entry in std::fs::read_dir(&self.dir)?.flatten() {
                if entry.file_name().to_string_lossy().starts_with("tansu.db") {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(outcome)
    }
}
