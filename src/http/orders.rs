//! Order and order-history handlers.

use std::future::Future;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};

use sqlx::PgPool;

use super::reads::{self, Read};
use super::{ApiError, AppState, RawJson};
use crate::domain::OrderId;
use crate::store::feed::Target;
use crate::store::queries::{self, Cursor};

const DEFAULT_LIMIT: i64 = 20;
const MAX_LIMIT: i64 = 100;

fn parse_order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

pub async fn detail(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    order_document(&state, &order_id, query.as_deref(), |pool, id| async move {
        queries::order_detail(&pool, id.as_str()).await
    })
    .await
}

pub async fn status(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    order_document(&state, &order_id, query.as_deref(), |pool, id| async move {
        queries::order_status(&pool, id.as_str()).await
    })
    .await
}

/// One order's document, read where the client's `?min_lsn=` or
/// `?min_event=` allows (`reads`).
async fn order_document<F, Fut>(
    state: &AppState,
    raw_id: &str,
    query: Option<&str>,
    read: F,
) -> Result<Response, ApiError>
where
    F: Fn(PgPool, OrderId) -> Fut,
    Fut: Future<Output = sqlx::Result<Option<String>>>,
{
    let order_id = parse_order_id(raw_id)?;
    let seen = reads::seen(query, Target::Order(order_id.as_str().to_owned()))?;
    let document = state
        .reads
        .read(seen, |pool| read(pool, order_id.clone()))
        .await?;
    Ok(found(document, &order_id))
}

/// The document, or a 404; either with the read's position headers (a 404
/// from a replica may only mean it has not replayed the order yet).
fn found(read: Read<Option<String>>, order_id: &OrderId) -> Response {
    read.respond(|value| match value {
        Some(json) => RawJson(json).into_response(),
        None => ApiError::NotFound(format!("order {order_id} not found")).into_response(),
    })
}

/// `?limit=` (1..=100, default 20) and `?before=` (the `next_before` of the
/// previous page, or an RFC 3339 timestamp). Parsed by hand so each bad value
/// gets its own message.
pub async fn user_history(
    State(state): State<AppState>,
    Path(user_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let user_id: i64 = user_id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("user_id {user_id:?} is not an integer")))?;
    let mut limit = DEFAULT_LIMIT;
    let mut before = None;
    for (key, value) in form_pairs(query.as_deref().unwrap_or_default()) {
        match key.as_str() {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|l| (1..=MAX_LIMIT).contains(l))
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "limit must be an integer from 1 to {MAX_LIMIT}"
                        ))
                    })?;
            }
            "before" => {
                before = Some(Cursor::parse(&value).ok_or_else(|| {
                    ApiError::BadRequest(
                        "before must be a next_before cursor or an RFC 3339 timestamp".into(),
                    )
                })?);
            }
            _ => {}
        }
    }
    let seen = reads::seen(query.as_deref(), Target::User(user_id))?;
    let read = state
        .reads
        .read(seen, |pool| {
            let before = before.clone();
            async move { queries::user_orders(&pool, user_id, limit, before.as_ref()).await }
        })
        .await?;
    Ok(read.respond(|page| {
        let next = match page.next {
            Some(c) => serde_json::Value::String(c.encode()).to_string(),
            None => "null".to_owned(),
        };
        RawJson(format!(
            "{{\"user_id\":{user_id},\"orders\":[{}],\"next_before\":{next}}}",
            page.orders_json.join(",")
        ))
    }))
}

/// Parked payments and cancellations, oldest first (`?limit=`, default 100).
pub async fn parked(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<RawJson, ApiError> {
    let mut limit = 100;
    for (key, value) in form_pairs(query.as_deref().unwrap_or_default()) {
        if key == "limit" {
            limit = value
                .parse()
                .ok()
                .filter(|l| (1..=1000).contains(l))
                .ok_or_else(|| {
                    ApiError::BadRequest("limit must be an integer from 1 to 1000".into())
                })?;
        }
    }
    Ok(RawJson(
        crate::store::parked::list(&state.pool, limit).await?,
    ))
}

fn form_pairs(query: &str) -> Vec<(String, String)> {
    serde_urlencoded::from_str(query).unwrap_or_default()
}
