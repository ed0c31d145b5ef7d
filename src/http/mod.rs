//! The HTTP API: reads the store, never writes it.
//!
//! Routes: `GET /orders/{order_id}`, `GET /orders/{order_id}/status`,
//! `GET /users/{user_id}/orders?limit=&before=`, the live streams
//! `GET /orders/{order_id}/events` and `GET /users/{user_id}/orders/events`
//! (`streams`), the tracking page `GET /track/{order_id}`,
//! `GET /parked-events`, the analytics figures `GET /analytics/summary`,
//! `GET /analytics/daily` and `GET /analytics/top-products` (`analytics`),
//! `GET /healthz`,
//! `GET /readyz`, `GET /metrics`. Errors are JSON `{"error": "..."}` with a
//! 4xx for bad requests and unknown ids, 503 when the database is down.

mod analytics;
mod event_stream;
mod orders;
mod reads;
mod serve;
mod streams;

pub use reads::Reads;
pub use serve::serve;

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use sqlx::PgPool;
use tower_http::trace::{DefaultOnFailure, TraceLayer};

use crate::telemetry::Metrics;

#[derive(Clone)]
pub struct AppState {
    /// The primary: live streams, readiness, parked events.
    pub pool: PgPool,
    /// The read routes' database: a replica when one is configured.
    pub reads: Reads,
    pub metrics: Arc<Metrics>,
    /// Consumer loops this process runs; `/readyz` needs each of them up.
    pub expected_consumers: Arc<Vec<String>>,
    /// Subscribers of the live streams.
    pub hub: Arc<crate::realtime::Hub>,
    pub stream_settings: crate::config::StreamSettings,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/orders/{order_id}", get(orders::detail))
        .route("/orders/{order_id}/status", get(orders::status))
        .route("/orders/{order_id}/events", get(streams::order_events))
        .route("/users/{user_id}/orders", get(orders::user_history))
        .route("/users/{user_id}/orders/events", get(streams::user_events))
        .route("/track/{order_id}", get(track_page))
        .route("/parked-events", get(orders::parked))
        .route("/analytics/summary", get(analytics::summary))
        .route("/analytics/daily", get(analytics::daily))
        .route("/analytics/top-products", get(analytics::top_products))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        // A span per request (method, URI, version); its events log at
        // debug level: RUST_LOG=tower_http=debug shows every request. Its
        // failures too: a failed query is logged where it fails (ApiError),
        // and a 503 from /readyz while starting is an answer, not an error
        // (at the default ERROR, every readiness probe logged one).
        .layer(
            TraceLayer::new_for_http()
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state)
}

/// Counts and times every request by its route template (never the raw
/// path, which would put order ids into labels).
async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

/// The tracking page: static HTML whose script follows the order's stream.
async fn track_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("track.html"),
    )
        .into_response()
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Response {
    let database = crate::store::maintenance::ping(&state.pool).await;
    let consumers: serde_json::Map<String, serde_json::Value> = state
        .expected_consumers
        .iter()
        .map(|topic| {
            let running = state.metrics.consumer_is_up(topic);
            (topic.clone(), serde_json::Value::Bool(running))
        })
        .collect();
    let ready = database
        && consumers
            .values()
            .all(|v| v == &serde_json::Value::Bool(true));
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({"ready": ready, "database": database, "consumers": consumers});
    (status, Json(body)).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Every error the API returns.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("database unavailable")]
    Database(#[from] sqlx::Error),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Database(e) => {
                tracing::error!(error = %e, "query failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        (status, Json(serde_json::json!({"error": self.to_string()}))).into_response()
    }
}

/// At most 40 characters of client input, for an error message.
pub(crate) fn clip(raw: &str) -> String {
    raw.chars().take(40).collect()
}

/// A JSON document built by PostgreSQL, passed through as is.
pub(crate) struct RawJson(pub String);

impl IntoResponse for RawJson {
    fn into_response(self) -> Response {
        ([(header::CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}
