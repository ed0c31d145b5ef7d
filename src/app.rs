//! Wiring: builds the components `orderflow run` asks for, runs them until
//! shutdown, and stops them in order (consumers finish their batch and commit,
//! then the relay drains, then HTTP stops).

use std::net::SocketAddr;
use std::sync::Arc;

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
use crate::workers::consumer::{self, LoopDeps};
use crate::workers::emit::Emitter;
use crate::workers::lifecycle::{Lifecycle, LifecycleHandler};
use crate::workers::relay::Relay;

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
    /// The HTTP API, health and metrics.
    Http,
}

impl Component {
    pub const ALL: [Component; 5] = [
        Component::Checkouts,
        Component::PaymentConfirmations,
        Component::Cancellations,
        Component::Relay,
        Component::Http,
    ];
}

/// A started service. Dropping it does not stop it; call [`Running::stop`].
pub struct Running {
    pub http_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
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
    let codec = match &settings.schema_registry_url {
        Some(url) => Codec::with_registry(settings.max_message_bytes, url)?,
        None => Codec::new(settings.max_message_bytes),
    };
    let wakeup = Arc::new(Notify::new());
    let consumers_stop = CancellationToken::new();
    let rest_stop = CancellationToken::new();
    let consumers = TaskTracker::new();
    let rest = TaskTracker::new();

    let deps = LoopDeps {
        settings: settings.clone(),
        pool: pool.clone(),
        codec: codec.clone(),
        metrics: metrics.clone(),
        outbox_wakeup: wakeup.clone(),
    };
    let mut expected_consumers = Vec::new();

    let emitter = Emitter::new(codec.clone(), settings.topics.order_events.clone());
    let lifecycle = Arc::new(Lifecycle::new(emitter.clone()));
    let loops = LoopSpawner {
        deps: &deps,
        tracker: &consumers,
        stop: &consumers_stop,
        fail: &rest_stop,
    };
    if components.contains(&Component::Checkouts) {
        let handler = CheckoutHandler::new(
            emitter.clone(),
            lifecycle.clone(),
            settings.default_tax_rate_ppm,
        );
        expected_consumers.push(loops.spawn(
            "checkouts consumer",
            &settings.topics.checkouts,
            handler,
        ));
    }
    if components.contains(&Component::PaymentConfirmations) {
        let handler = LifecycleHandler::payments(lifecycle.clone());
        expected_consumers.push(loops.spawn(
            "payments consumer",
            &settings.topics.payment_confirmations,
            handler,
        ));
    }
    if components.contains(&Component::Cancellations) {
        let handler = LifecycleHandler::cancellations(lifecycle.clone());
        expected_consumers.push(loops.spawn(
            "cancellations consumer",
            &settings.topics.cancellations,
            handler,
        ));
    }

    if components.contains(&Component::Relay) {
        let relay = Relay {
            settings: settings.clone(),
            codec: codec.clone(),
            pool: pool.clone(),
            metrics: metrics.clone(),
            wakeup: wakeup.clone(),
        };
        rest.spawn(supervise(
            "outbox relay",
            rest_stop.clone(),
            relay.run(rest_stop.clone()),
        ));
    }

    let mut http_addr = None;
    if components.contains(&Component::Http) {
        let state = crate::http::AppState {
            pool: pool.clone(),
            metrics: metrics.clone(),
            expected_consumers: Arc::new(expected_consumers),
        };
        let listener = tokio::net::TcpListener::bind(settings.http_addr)
            .await
            .with_context(|| format!("failed to bind HTTP_ADDR={}", settings.http_addr))?;
        let addr = listener
            .local_addr()
            .context("failed to read the bound address")?;
        http_addr = Some(addr);
        rest.spawn(supervise(
            "housekeeping",
            rest_stop.clone(),
            crate::workers::housekeeping::run(
                pool.clone(),
                metrics.clone(),
                settings.parked_max_age,
                std::time::Duration::from_secs(5),
                rest_stop.clone(),
            ),
        ));
        let stop = rest_stop.clone();
        let server = async move {
            axum::serve(listener, crate::http::router(state))
                .with_graceful_shutdown(stop.cancelled_owned())
                .await
                .context("HTTP server failed")
        };
        rest.spawn(supervise("http server", rest_stop.clone(), server));
        info!(%addr, "HTTP listening");
    }

    Ok(Running {
        http_addr,
        metrics,
        pool,
        consumers_stop,
        consumers,
        rest_stop,
        rest,
    })
}

/// Starts consumer loops on the consumers' tracker and stop token.
struct LoopSpawner<'a> {
    deps: &'a LoopDeps,
    tracker: &'a TaskTracker,
    stop: &'a CancellationToken,
    /// Cancelled when a loop fails, to stop the whole process.
    fail: &'a CancellationToken,
}

impl LoopSpawner<'_> {
    /// Spawns the loop of `topic`; returns the topic for `/readyz`.
    fn spawn<H: crate::workers::Handler>(
        &self,
        name: &'static str,
        topic: &str,
        handler: H,
    ) -> String {
        let run = consumer::run(
            self.deps.clone(),
            Arc::new(handler),
            topic.to_owned(),
            self.stop.clone(),
        );
        self.tracker.spawn(supervise(name, self.fail.clone(), run));
        topic.to_owned()
    }
}

/// Runs a component; if it fails, logs why and asks the whole process to
/// stop, so a supervisor (systemd, Kubernetes) restarts it cleanly.
async fn supervise(
    name: &'static str,
    stop_all: CancellationToken,
    task: impl std::future::Future<Output = anyhow::Result<()>>,
) {
    if let Err(e) = task.await {
        error!(
            component = name,
            error = format!("{e:#}"),
            "component failed; shutting down"
        );
        stop_all.cancel();
    }
}
