//! Live streams (server-sent events): `GET /orders/{order_id}/events` and
//! `GET /users/{user_id}/orders/events`.
//!
//! A stream starts from a snapshot (`event: snapshot`, the state and the
//! cursor it is current to) or, when the client sends a cursor
//! (`Last-Event-ID` or `?after=`), from the feed's events after it; then it
//! sends each order event as it commits (`event:` its type, `data:` its
//! JSON as on order-events, `id:` its cursor). The subscription is made
//! before the snapshot or replay is read, and live rows at or below the
//! cursor sent last are dropped, so the switch from the database to the
//! live feed has neither a gap nor a duplicate. Cursors are per-user feed
//! seqs (`store::feed`): monotone per user and so per order.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::Stream;

use super::{ApiError, AppState};
use crate::domain::OrderId;
use crate::realtime::{Hub, Slot, Subscription};
use crate::store::feed::{self, FeedRow, Target};

/// The `retry:` hint sent on connect: how long a browser waits to reconnect.
const RETRY: Duration = Duration::from_secs(2);
/// Replayed events read per query.
const REPLAY_PAGE: i64 = 500;
/// Orders in a user stream's snapshot.
const USER_SNAPSHOT_ORDERS: i64 = 20;
/// Told to clients refused at `SSE_MAX_CONNECTIONS`.
const RETRY_AFTER_SECS: u64 = 5;

const ORDER_ROUTE: &str = "/orders/{order_id}/events";
const USER_ROUTE: &str = "/users/{user_id}/orders/events";

struct Params {
    cursor: Option<i64>,
    wait: bool,
}

fn params(headers: &HeaderMap, query: Option<&str>) -> Result<Params, ApiError> {
    let mut cursor = None;
    let mut wait = false;
    let parse_cursor = |raw: &str| {
        raw.trim()
            .parse::<i64>()
            .ok()
            .filter(|c| *c >= 0)
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "cursor {:?} is not an event id from this stream",
                    super::clip(raw)
                ))
            })
    };
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    for (key, value) in pairs {
        match key.as_str() {
            "after" => cursor = Some(parse_cursor(&value)?),
            "wait" => {
                wait = match value.as_str() {
                    "true" | "1" | "" => true,
                    "false" | "0" => false,
                    _ => return Err(ApiError::BadRequest("wait must be true or false".into())),
                }
            }
            _ => {}
        }
    }
    // The header wins: a browser's EventSource sends it on every reconnect,
    // while `?after=` stays whatever the page first asked for.
    if let Some(raw) = headers.get("last-event-id") {
        let raw = raw
            .to_str()
            .map_err(|_| ApiError::BadRequest("Last-Event-ID is not text".into()))?;
        if !raw.trim().is_empty() {
            cursor = Some(parse_cursor(raw)?);
        }
    }
    Ok(Params { cursor, wait })
}

fn too_many() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
        axum::Json(
            serde_json::json!({"error": "too many live streams on this instance; retry later"}),
        ),
    )
        .into_response()
}

pub async fn order_events(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let order_id = OrderId::parse(&order_id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let params = params(&headers, query.as_deref())?;
    let Some(slot) = state.hub.open(ORDER_ROUTE) else {
        return Ok(too_many());
    };
    let target = Target::Order(order_id.as_str().to_owned());
    let mut stream = Live::new(&state, slot, target, false);
    let started = match params.cursor {
        Some(cursor) => stream.resume(cursor).await?,
        None => stream.start_from_snapshot().await?,
    };
    if !started {
        if !params.wait {
            stream.slot.ending(None); // never streamed: not a disconnect
            return Err(ApiError::NotFound(format!("order {order_id} not found")));
        }
        stream.waiting = true;
    }
    Ok(stream.into_response(&state))
}

pub async fn user_events(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let user_id: i64 = user_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("user_id {user_id:?} is not an integer")))?;
    let params = params(&headers, query.as_deref())?;
    let Some(slot) = state.hub.open(USER_ROUTE) else {
        return Ok(too_many());
    };
    // A user's seqs have no holes, so a live row past the next one means a
    // row was missed: the stream reads the gap from the database.
    let mut stream = Live::new(&state, slot, Target::User(user_id), true);
    match params.cursor {
        Some(cursor) => {
            stream.resume(cursor).await?;
        }
        None => {
            stream.start_from_snapshot().await?;
        }
    }
    Ok(stream.into_response(&state))
}

/// One open stream.
struct Live {
    pool: sqlx::PgPool,
    hub: Arc<Hub>,
    metrics: Arc<crate::telemetry::Metrics>,
    slot: Slot,
    target: Target,
    subscription: Subscription,
    /// Events ready to send.
    queue: VecDeque<Event>,
    /// The cursor of the last event queued.
    last: i64,
    /// More replay to read after `last` before the live rows.
    replaying: bool,
    /// The order does not exist yet (`?wait=true`): the snapshot comes with
    /// its first event.
    waiting: bool,
    /// Seqs are consecutive on this target (a user's).
    consecutive: bool,
}

impl Live {
    fn new(state: &AppState, slot: Slot, target: Target, consecutive: bool) -> Live {
        // Subscribe before any read: what commits from here on arrives live.
        let subscription = state.hub.subscribe(target.clone());
        Live {
            pool: state.pool.clone(),
            hub: state.hub.clone(),
            metrics: state.metrics.clone(),
            slot,
            target,
            subscription,
            queue: VecDeque::from([Event::default().retry(RETRY)]),
            last: 0,
            replaying: false,
            waiting: false,
            consecutive,
        }
    }

    /// Queues the snapshot; `false` when the order does not exist.
    async fn start_from_snapshot(&mut self) -> Result<bool, ApiError> {
        let snapshot = match &self.target {
            Target::Order(order_id) => feed::order_snapshot(&self.pool, order_id).await?,
            Target::User(user_id) => {
                Some(feed::user_snapshot(&self.pool, *user_id, USER_SNAPSHOT_ORDERS).await?)
            }
        };
        let Some((json, cursor)) = snapshot else {
            return Ok(false);
        };
        self.push_snapshot(json, cursor);
        Ok(true)
    }

    fn push_snapshot(&mut self, json: String, cursor: i64) {
        self.last = cursor;
        self.queue.push_back(
            Event::default()
                .event("snapshot")
                .id(cursor.to_string())
                .data(json),
        );
        self.metrics.sse_event_sent(None);
    }

    /// Queues the events after `cursor`, or a snapshot when the feed no
    /// longer holds them all; `false` when the order does not exist.
    async fn resume(&mut self, cursor: i64) -> Result<bool, ApiError> {
        let (rows, complete) = feed::after(&self.pool, &self.target, cursor, REPLAY_PAGE).await?;
        if !complete {
            return self.start_from_snapshot().await;
        }
        if rows.is_empty() {
            if let Target::Order(order_id) = &self.target {
                if feed::order_snapshot(&self.pool, order_id).await?.is_none() {
                    return Ok(false);
                }
            }
        }
        self.last = cursor;
        self.replaying = rows.len() as i64 == REPLAY_PAGE;
        for row in rows {
            self.push_row(&row, false);
        }
        Ok(true)
    }

    fn push_row(&mut self, row: &FeedRow, live: bool) {
        self.last = row.seq;
        self.queue.push_back(
            Event::default()
                .event(&row.event_type)
                .id(row.seq.to_string())
                .data(&row.body),
        );
        let since_commit = live.then(|| {
            (chrono::Utc::now() - row.created_at)
                .to_std()
                .unwrap_or_default()
        });
        self.metrics.sse_event_sent(since_commit);
    }

    /// The next event to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.subscription.overflowed() {
                // Fell a buffer behind: end now (the hub counted it); the
                // client resumes from the last cursor it got.
                self.slot.ending(None);
                return None;
            }
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            // Database calls are boxed: an idle stream's future stays as
            // small as its wait on the subscription (memory per stream).
            if self.replaying {
                if let Err(e) = Box::pin(self.replay_page()).await {
                    tracing::warn!(error = %e, "live stream: replay failed; closing it");
                    self.slot.ending(Some("error"));
                    return None;
                }
                continue;
            }
            let row = tokio::select! {
                biased;
                _ = self.hub.shutdown.cancelled() => {
                    self.slot.ending(Some("shutdown"));
                    return None;
                }
                row = self.subscription.rx.recv() => row,
            };
            let Some(row) = row else {
                self.slot.ending(if self.subscription.overflowed() {
                    None
                } else {
                    Some("closed")
                });
                return None;
            };
            if let Err(e) = Box::pin(self.live_row(&row)).await {
                tracing::warn!(error = %e, "live stream: read failed; closing it");
                self.slot.ending(Some("error"));
                return None;
            }
        }
    }

    async fn live_row(&mut self, row: &FeedRow) -> Result<(), sqlx::Error> {
        if self.waiting {
            // The order's first event: start from its snapshot, which
            // includes this row and any other already committed.
            if let Target::Order(order_id) = &self.target {
                if let Some((json, cursor)) = feed::order_snapshot(&self.pool, order_id).await? {
                    self.waiting = false;
                    self.push_snapshot(json, cursor);
                }
            }
            return Ok(());
        }
        if row.seq <= self.last {
            return Ok(());
        }
        if self.consecutive && row.seq > self.last + 1 {
            // A row this stream never got: read the gap.
            let (rows, _) =
                feed::after(&self.pool, &self.target, self.last, row.seq - self.last - 1).await?;
            for missed in rows.iter().filter(|r| r.seq < row.seq) {
                self.push_row(missed, true);
            }
        }
        self.push_row(row, true);
        Ok(())
    }

    async fn replay_page(&mut self) -> Result<(), sqlx::Error> {
        let (rows, _) = feed::after(&self.pool, &self.target, self.last, REPLAY_PAGE).await?;
        self.replaying = rows.len() as i64 == REPLAY_PAGE;
        for row in rows {
            self.push_row(&row, false);
        }
        Ok(())
    }

    fn into_response(self, state: &AppState) -> Response {
        let heartbeat = state.stream_settings.heartbeat;
        let events = futures::stream::unfold(self, |mut live| async move {
            let event = live.next().await?;
            Some((Ok::<_, Infallible>(event), live))
        });
        sse(events, heartbeat)
    }
}

fn sse(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    heartbeat: Duration,
) -> Response {
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(heartbeat).text("heartbeat"))
        .into_response();
    // Proxies (nginx) must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", header::HeaderValue::from_static("no"));
    response
}
