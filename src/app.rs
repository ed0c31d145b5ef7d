//! Wiring: builds the components `orderflow run` asks for, runs them until
//! shutdown, and stops them in order (consumers finish their batch and commit,
//! then the relay drains, then HTTP and housekeeping stop).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info};

use crate::config::Settings;
use crate::events::Codec;
use crate::telemetry::Metrics;
use crate::workers::checkout::CheckoutHandler;
use crate::workers::consumer::{self, Apply, LoopDeps};
use crate::workers::housekeeping::{Duties, Housekeeping};
use crate::workers::lifecycle::LifecycleHandler;
use crate::workers::relay::Relay;
use crate::workers::{Applier, Handler};

/// A part of the service that can be deployed alone (`run --only ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum Component {
    /// The consumer loop of the checkouts topic.
    Checkouts,
    /// The consumer loop of the payment-confirmations topic.
    PaymentConfirmations,
    /// The consumer loop of the cancellations topic.
    Cancellations,
    /// The outbox relay (publishes order events and dead letters).
    Relay,
    /// The analytics loop: rollups of order-events (group
    /// `<KAFKA_GROUP_ID>.analytics`).
    Analytics,
    /// The HTTP API, health and metrics.
    Http,
}

impl Component {
    pub const ALL: [Component; 6] = [
        Component::Checkouts,
        Component::PaymentConfirmations,
        Component::Cancellations,
        Component::Relay,
        Component::Analytics,
        Component::Http,
    ];

    /// Whether it writes the database (and so wants it vacuumed).
    fn writes(self) -> bool {
        self != Component::Http
    }
}

/// A started service. Dropping it does not stop it; call [`Running::stop`].
pub struct Running {
    pub http_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    /// The live streams' subscribers, where HTTP runs.
    pub hub: Option<Arc<crate::realtime::Hub>>,
    pub pool: PgPool,
    consumers_stop: CancellationToken,
    consumers: TaskTracker,
    rest_stop: CancellationToken,
    rest: TaskTracker,
}

impl Running {
    /// Graceful stop: consumers finish their batches in hand and commit their
    /// offsets, then the relay publishes what they committed, then HTTP stops.
    pub async fn stop(self) {
        self.consumers_stop.cancel();
        self.consumers.close();
        self.consumers.wait().await;
        self.rest_stop.cancel();
        self.rest.close();
        self.rest.wait().await;
        self.pool.close().await;
    }

    /// Resolves when shutdown was requested from inside (a component failed).
    pub async fn stopped(&self) {
        self.rest_stop.cancelled().await;
    }
}

/// Starts `components`. HTTP binds before this returns, so the address is
/// known (use port 0 in tests).
pub async fn start(settings: Settings, components: &[Component]) -> anyhow::Result<Running> {
    let pool = crate::store::pool(&settings.database_url, settings.database_max_connections)?;
    let metrics = Arc::new(Metrics::new());
    if let (Some(keep), Some(topics)) = (
        settings.dedupe_retention,
        crate::kafka::topics::input_retention(),
    ) {
        if keep <= topics {
            tracing::warn!(
                dedupe_retention_secs = keep.as_secs(),
                topic_retention_secs = topics.as_secs(),
                "DEDUPE_RETENTION does not exceed the input topics' retention: \
                 a redelivery of an event the inbox has forgotten would be applied again"
            );
        }
    }
    let codec = match &settings.schema_registry_url {
        Some(url) => Codec::with_registry(settings.max_message_bytes, url)?,
        None => Codec::new(settings.max_message_bytes),
    };
    let wakeup = Arc::new(Notify::new());
    let feed_wakeup = Arc::new(Notify::new());
    let mut running = Running {
        http_addr: None,
        metrics: metrics.clone(),
        hub: None,
        pool: pool.clone(),
        consumers_stop: CancellationToken::new(),
        consumers: TaskTracker::new(),
        rest_stop: CancellationToken::new(),
        rest: TaskTracker::new(),
    };
    let loops = Loops {
        deps: LoopDeps {
            settings: settings.clone(),
            pool: pool.clone(),
            metrics: metrics.clone(),
            outbox_wakeup: wakeup.clone(),
            feed_wakeup: feed_wakeup.clone(),
        },
        codec: codec.clone(),
        running: &running,
        wanted: components,
        started: Vec::new(),
    };
    let topics = &settings.topics;
    let started = loops
        .spawn(
            Component::Checkouts,
            &topics.checkouts,
            CheckoutHandler::new(settings.default_tax_rate_ppm),
        )
        .spawn(
            Component::PaymentConfirmations,
            &topics.payment_confirmations,
            LifecycleHandler::payments(),
        )
        .spawn(
            Component::Cancellations,
            &topics.cancellations,
            LifecycleHandler::cancellations(),
        )
        .spawn_loop(
            Component::Analytics,
            crate::analytics::Analytics::new(&settings, codec.clone()),
        )
        .started;

    if components.contains(&Component::Analytics) {
        let (pool, retention) = (pool.clone(), settings.analytics.dedupe_retention);
        running.spawn_rest("analytics dedupe purge", move |stop| {
            crate::analytics::consumer::purge_seen(pool, retention, stop)
        });
    }
    let input_loops = started
        .iter()
        .any(|topic| topic != &settings.topics.order_events);
    if input_loops {
        let (pool, id) = (pool.clone(), settings.instance_id.clone());
        running.spawn_rest("feed notifier", |stop| {
            crate::realtime::notifier(pool, feed_wakeup, id, stop)
        });
    }
    if components.contains(&Component::Relay) {
        let relay = Relay {
            settings: settings.clone(),
            codec,
            pool: pool.clone(),
            metrics: metrics.clone(),
            wakeup,
        };
        running.spawn_rest("outbox relay", |stop| relay.run(stop));
    }
    spawn_housekeeping(&running, &settings, components);
    if components.contains(&Component::Http) {
        let streams = settings.streams.clone();
        let hub = Arc::new(crate::realtime::Hub::new(
            streams.max_connections,
            streams.buffer,
            metrics.clone(),
            running.rest_stop.child_token(),
        ));
        running.hub = Some(hub.clone());
        let (tail_pool, tail_hub) = (pool.clone(), hub.clone());
        running.spawn_rest("order feed tailer", |stop| {
            crate::realtime::tailer(tail_pool, tail_hub, stop)
        });
        let replica = match &settings.database_read_url {
            Some(url) => Some(crate::store::read_pool(
                url,
                settings.database_max_connections,
            )?),
            None => None,
        };
        let reads = crate::http::Reads::new(
            pool.clone(),
            replica.clone(),
            settings.read_min_lsn_wait,
            metrics.clone(),
        );
        if let Some(replica) = replica {
            let (primary, metrics, up) = (pool.clone(), metrics.clone(), reads.replica_up());
            running.spawn_rest("replica lag", |stop| {
                replica_lag(primary, replica, metrics, up, stop)
            });
        }
        let state = crate::http::AppState {
            reads,
            pool,
            metrics,
            expected_consumers: Arc::new(started),
            hub,
            stream_settings: streams,
        };
        running.http_addr = Some(serve_http(&running, settings.http_addr, state).await?);
    }
    Ok(running)
}

/// Housekeeping, with the duties the components need: gauges wherever
/// `/metrics` is served, VACUUM (where autovacuum is off) wherever a
/// component writes.
fn spawn_housekeeping(running: &Running, settings: &Settings, components: &[Component]) {
    let duties = Duties {
        gauges: components.contains(&Component::Http),
        vacuum: components.iter().any(|c| c.writes()),
    };
    if duties.gauges || duties.vacuum {
        let housekeeping = Housekeeping {
            pool: running.pool.clone(),
            metrics: running.metrics.clone(),
            parked_max_age: settings.parked_max_age,
            gauge_interval: Duration::from_secs(5),
            duties,
        };
        running.spawn_rest("housekeeping", |stop| housekeeping.run(stop));
    }
}

/// Keeps `orderflow_replica_lag_seconds` and `_bytes` current (every 2 s).
/// An unreachable replica reads as infinitely behind (its reads go to the
/// primary meanwhile).
async fn replica_lag(
    primary: PgPool,
    replica: PgPool,
    metrics: Arc<Metrics>,
    up: Arc<std::sync::atomic::AtomicBool>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    use std::sync::atomic::Ordering;
    loop {
        match crate::store::replica::lag(&primary, &replica).await {
            Ok((seconds, bytes)) => {
                metrics.replica_lag(seconds, bytes);
                if !up.swap(true, Ordering::Relaxed) {
                    info!("the read replica answers again");
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "replica lag unknown");
                metrics.replica_lag(f64::INFINITY, 0);
                up.store(false, Ordering::Relaxed);
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
}

/// Binds `addr` and serves the API until the rest of the service stops.
async fn serve_http(
    running: &Running,
    addr: SocketAddr,
    state: crate::http::AppState,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind HTTP_ADDR={addr}"))?;
    let bound = listener
        .local_addr()
        .context("failed to read the bound address")?;
    running.spawn_rest("http server", move |stop| async move {
        crate::http::serve(listener, crate::http::router(state), stop).await;
        Ok(())
    });
    info!(addr = %bound, "HTTP listening");
    Ok(bound)
}

impl Running {
    /// Spawns a component that stops with the relay and HTTP.
    fn spawn_rest<F, Fut>(&self, name: &'static str, task: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let run = task(self.rest_stop.clone());
        self.rest
            .spawn(supervise(name, self.rest_stop.clone(), run));
    }
}

/// Starts the consumer loops that were asked for.
struct Loops<'a> {
    deps: LoopDeps,
    codec: Codec,
    running: &'a Running,
    wanted: &'a [Component],
    /// Topics of the loops started, for `/readyz`.
    started: Vec<String>,
}

impl Loops<'_> {
    /// Spawns the loop of input `topic` with `handler` if `component` was
    /// asked for.
    fn spawn<H: Handler>(self, component: Component, topic: &str, handler: H) -> Self {
        if !self.wanted.contains(&component) {
            return self;
        }
        let order_events = &self.deps.settings.topics.order_events;
        let applier = Applier::new(handler, self.codec.clone(), topic, order_events)
            .with_clock(self.deps.settings.clock.clone());
        self.spawn_loop(component, applier)
    }

    /// Spawns a consumer loop driving `applier` if `component` was asked for.
    fn spawn_loop<A: Apply>(mut self, component: Component, applier: A) -> Self {
        if self.wanted.contains(&component) {
            let topic = applier.topic().to_owned();
            let run = consumer::run(
                self.deps.clone(),
                Arc::new(applier),
                self.running.consumers_stop.clone(),
            );
            let name = format!("{component:?} consumer ({topic})");
            self.running
                .consumers
                .spawn(supervise(name, self.running.rest_stop.clone(), run));
            self.started.push(topic);
        }
        self
    }
}

/// Runs a component; if it fails, logs why and asks the whole process to
/// stop, so a supervisor (systemd, Kubernetes) restarts it cleanly.
async fn supervise(
    name: impl std::fmt::Display,
    stop_all: CancellationToken,
    task: impl std::future::Future<Output = anyhow::Result<()>>,
) {
    if let Err(e) = task.await {
        error!(
            component = %name,
            error = format!("{e:#}"),
            "component failed; shutting down"
        );
        stop_all.cancel();
    }
}
