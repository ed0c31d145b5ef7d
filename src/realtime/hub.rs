//! The subscribers of one instance, by order and by user, and the limit on
//! open streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::store::feed::{FeedKey, FeedRow, Target};
use crate::telemetry::Metrics;

pub struct Hub {
    subscribers: Mutex<HashMap<Target, Vec<Subscriber>>>,
    next_id: AtomicU64,
    /// Subscriptions ever made (the tailer's idle shortcut checks it).
    registrations: AtomicU64,
    open: AtomicUsize,
    max_open: usize,
    buffer: usize,
    metrics: Arc<Metrics>,
    /// Cancelled at shutdown: every stream ends.
    pub shutdown: CancellationToken,
}

struct Subscriber {
    id: u64,
    tx: mpsc::Sender<Arc<FeedRow>>,
    overflowed: Arc<AtomicBool>,
}

impl Hub {
    /// Streams end when `shutdown` is cancelled.
    pub fn new(
        max_open: usize,
        buffer: usize,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Hub {
        Hub {
            subscribers: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(0),
            registrations: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            max_open,
            buffer,
            metrics,
            shutdown,
        }
    }

    /// A place for one more stream on `route`, or `None` at the limit.
    pub fn open(self: &Arc<Self>, route: &'static str) -> Option<Slot> {
        let taken = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_open).then_some(n + 1)
            });
        taken.ok()?;
        self.metrics.sse_connections(route, 1);
        Some(Slot {
            hub: self.clone(),
            route,
            reason: Some("client"),
        })
    }

    /// Live rows of `target` from now on, until the subscription is dropped
    /// or falls `buffer` rows behind.
    pub fn subscribe(self: &Arc<Self>, target: Target) -> Subscription {
        let (tx, rx) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        self.lock()
            .entry(target.clone())
            .or_default()
            .push(Subscriber {
                id,
                tx,
                overflowed: overflowed.clone(),
            });
        Subscription {
            rx,
            overflowed,
            hub: self.clone(),
            target,
            id,
        }
    }

    /// The keys whose order or user has a subscriber now. One who
    /// subscribes later reads the database after subscribing, which holds
    /// every key already tailed.
    pub fn followed<'k>(&self, keys: &'k [FeedKey]) -> Vec<&'k FeedKey> {
        let subscribers = self.lock();
        if subscribers.is_empty() {
            return Vec::new();
        }
        keys.iter()
            .filter(|k| {
                subscribers.contains_key(&Target::User(k.user_id))
                    || subscribers.contains_key(&Target::Order(k.order_id.clone()))
            })
            .collect()
    }

    /// Hands each row to the subscribers of its order and of its user.
    pub fn dispatch(&self, rows: Vec<FeedRow>) {
        if rows.is_empty() {
            return;
        }
        let mut subscribers = self.lock();
        if subscribers.is_empty() {
            return;
        }
        for row in rows {
            let row = Arc::new(row);
            for target in [
                Target::Order(row.order_id.clone()),
                Target::User(row.user_id),
            ] {
                let Some(list) = subscribers.get_mut(&target) else {
                    continue;
                };
                list.retain(|s| match s.tx.try_send(row.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        // Counted now: a client that stopped reading may
                        // not let its stream run again for a long time.
                        s.overflowed.store(true, Ordering::Release);
                        self.metrics.sse_disconnect("slow");
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                });
                if list.is_empty() {
                    subscribers.remove(&target);
                }
            }
        }
    }

    /// Subscriptions made so far.
    pub fn registrations(&self) -> u64 {
        self.registrations.load(Ordering::SeqCst)
    }

    /// Counts a read of the feed.
    pub fn metrics_read(&self) {
        self.metrics.feed_read();
    }

    /// Whether anyone is subscribed (the tailer asks on every read, so not
    /// by counting).
    pub fn has_subscribers(&self) -> bool {
        !self.lock().is_empty()
    }

    /// Subscriptions currently registered (for tests and the benchmark).
    pub fn subscribers(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    fn unsubscribe(&self, target: &Target, id: u64) {
        let mut subscribers = self.lock();
        if let Some(list) = subscribers.get_mut(target) {
            list.retain(|s| s.id != id);
            if list.is_empty() {
                subscribers.remove(target);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Target, Vec<Subscriber>>> {
        // A panic while holding the lock leaves the map consistent (every
        // change is a single insert or retain), so poisoning is ignored.
        self.subscribers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One open stream's place under `SSE_MAX_CONNECTIONS`; released, with the
/// reason the stream ended, when dropped.
pub struct Slot {
    hub: Arc<Hub>,
    route: &'static str,
    /// `None` once counted elsewhere (a slow subscriber, by the hub).
    reason: Option<&'static str>,
}

impl Slot {
    /// Why the stream ends, if not because the client went away; `None`
    /// when the reason was already counted.
    pub fn ending(&mut self, reason: Option<&'static str>) {
        self.reason = reason;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.hub.open.fetch_sub(1, Ordering::AcqRel);
        self.hub.metrics.sse_connections(self.route, -1);
        if let Some(reason) = self.reason {
            self.hub.metrics.sse_disconnect(reason);
        }
    }
}

/// Live rows of one target; unregisters when dropped.
pub struct Subscription {
    pub rx: mpsc::Receiver<Arc<FeedRow>>,
    overflowed: Arc<AtomicBool>,
    hub: Arc<Hub>,
    target: Target,
    id: u64,
}

impl Subscription {
    /// Whether it was cut off for falling behind (rather than closed).
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Acquire)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(&self.target, self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(order: &str, user: i64, seq: i64) -> FeedRow {
        FeedRow {
            user_id: user,
            seq,
            order_id: order.into(),
            event_type: "OrderPaid".into(),
            body: "{}".into(),
            created_at: chrono::Utc::now(),
        }
    }

    #[tokio::test]
    async fn fans_out_by_order_and_user_and_cuts_off_the_slow() {
        let hub = Arc::new(Hub::new(
            10,
            2,
            Arc::new(Metrics::new()),
            CancellationToken::new(),
        ));
        let mut by_order = hub.subscribe(Target::Order("o1".into()));
        let mut by_user = hub.subscribe(Target::User(7));
        let other = hub.subscribe(Target::User(8));
        hub.dispatch(vec![row("o1", 7, 1), row("o2", 7, 2)]);
        assert_eq!(by_order.rx.recv().await.unwrap().seq, 1);
        assert_eq!(by_user.rx.recv().await.unwrap().seq, 1);
        assert_eq!(by_user.rx.recv().await.unwrap().seq, 2);
        assert!(by_order.rx.try_recv().is_err());
        // `other` never reads: the third row overflows its buffer of 2.
        hub.dispatch(vec![row("o3", 8, 1), row("o3", 8, 2), row("o3", 8, 3)]);
        assert!(other.overflowed());
        assert!(!by_user.overflowed());
        assert_eq!(hub.subscribers(), 2);
        drop(by_order);
        assert_eq!(hub.subscribers(), 1);
    }

    #[test]
    fn refuses_streams_over_the_limit_and_frees_their_slots() {
        let hub = Arc::new(Hub::new(
            2,
            4,
            Arc::new(Metrics::new()),
            CancellationToken::new(),
        ));
        let a = hub.open("r").unwrap();
        let _b = hub.open("r").unwrap();
        assert!(hub.open("r").is_none());
        drop(a);
        assert!(hub.open("r").is_some());
    }
}
