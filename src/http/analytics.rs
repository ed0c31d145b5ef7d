//! The analytics routes: figures of a range of UTC days, read from the
//! rollups (never from the order tables), so they answer in milliseconds
//! whatever the number of orders.
//!
//! - `GET /analytics/summary?from=&to=&currency=`: the figures of the range;
//! - `GET /analytics/daily?from=&to=&currency=`: one entry per day, days
//!   without events included with zeros;
//! - `GET /analytics/top-products?from=&to=&currency=&by=units|revenue&limit=`.
//!
//! `from` and `to` are ISO dates, inclusive (default: the 30 days ending
//! today, UTC); at most 366 days. `currency` may be left out when the range
//! holds at most one. Anything else is a 400 with a message.

use std::collections::BTreeMap;

use axum::extract::{RawQuery, State};
use axum::Json;
use chrono::{NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState};
use crate::analytics::report::Figures;
use crate::store::analytics::{self, Counts, ProductSums, Rank};

const MAX_DAYS: i64 = 366;
const DEFAULT_DAYS: i64 = 30;
const DEFAULT_LIMIT: i64 = 10;
const MAX_LIMIT: i64 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    from: Option<String>,
    to: Option<String>,
    currency: Option<String>,
    by: Option<String>,
    limit: Option<String>,
}

/// A checked range and currency (`None`: the range holds no figures at all).
struct Scope {
    from: NaiveDate,
    to: NaiveDate,
    currency: Option<String>,
}

fn params(query: Option<&str>) -> Result<Params, ApiError> {
    serde_urlencoded::from_str(query.unwrap_or_default()).map_err(|e| {
        ApiError::BadRequest(format!(
            "bad query: {e} (expected from, to, currency, by, limit)"
        ))
    })
}

fn date(name: &str, raw: &str) -> Result<NaiveDate, ApiError> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|_| ApiError::BadRequest(format!("{name}={raw:?} is not a date (YYYY-MM-DD)")))
}

async fn scope(state: &AppState, p: &Params) -> Result<Scope, ApiError> {
    let to = match &p.to {
        Some(raw) => date("to", raw)?,
        None => Utc::now().date_naive(),
    };
    let from = match &p.from {
        Some(raw) => date("from", raw)?,
        None => to - TimeDelta::days(DEFAULT_DAYS - 1),
    };
    if from > to {
        return Err(ApiError::BadRequest(format!(
            "from {from} is after to {to}"
        )));
    }
    let days = (to - from).num_days() + 1;
    if days > MAX_DAYS {
        return Err(ApiError::BadRequest(format!(
            "the range holds {days} days; at most {MAX_DAYS} are allowed"
        )));
    }
    let currency = match &p.currency {
        Some(c)
            if c.is_empty() || c.len() > 16 || !c.chars().all(|c| c.is_ascii_alphanumeric()) =>
        {
            return Err(ApiError::BadRequest(format!(
                "currency={c:?} is not a currency code (e.g. USD)"
            )))
        }
        Some(c) => Some(c.clone()),
        None => {
            let mut found = analytics::currencies(state.reads.any(), from, to).await?;
            if found.len() > 1 {
                return Err(ApiError::BadRequest(format!(
                    "the range holds figures in {} currencies ({}); pass currency=",
                    found.len(),
                    found.join(", ")
                )));
            }
            found.pop()
        }
    };
    Ok(Scope { from, to, currency })
}

fn no_ranking_params(p: &Params) -> Result<(), ApiError> {
    if p.by.is_some() || p.limit.is_some() {
        return Err(ApiError::BadRequest(
            "by and limit belong to /analytics/top-products".into(),
        ));
    }
    Ok(())
}

/// Per day: the summed counters and the time-to-pay histogram.
async fn per_day(
    state: &AppState,
    scope: &Scope,
) -> Result<BTreeMap<NaiveDate, (Counts, Vec<(i32, i64)>)>, ApiError> {
    let mut days = BTreeMap::new();
    let Some(currency) = &scope.currency else {
        return Ok(days);
    };
    let (counts, time_to_pay) = tokio::try_join!(
        analytics::daily(state.reads.any(), scope.from, scope.to, currency),
        analytics::time_to_pay(state.reads.any(), scope.from, scope.to, currency),
    )?;
    for (day, c) in counts {
        days.entry(day)
            .or_insert_with(|| (Counts::default(), Vec::new()))
            .0 = c;
    }
    for (day, le, n) in time_to_pay {
        days.entry(day)
            .or_insert_with(|| (Counts::default(), Vec::new()))
            .1
            .push((le, n));
    }
    Ok(days)
}

#[derive(Serialize)]
pub struct Summary {
    from: NaiveDate,
    to: NaiveDate,
    currency: Option<String>,
    #[serde(flatten)]
    figures: Figures,
}

pub async fn summary(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Summary>, ApiError> {
    let p = params(query.as_deref())?;
    no_ranking_params(&p)?;
    let scope = scope(&state, &p).await?;
    let mut total = Counts::default();
    let mut histogram: BTreeMap<i32, i64> = BTreeMap::new();
    for (counts, time_to_pay) in per_day(&state, &scope).await?.into_values() {
        total += counts;
        for (le, n) in time_to_pay {
            *histogram.entry(le).or_default() += n;
        }
    }
    let histogram: Vec<(i32, i64)> = histogram.into_iter().collect();
    Ok(Json(Summary {
        from: scope.from,
        to: scope.to,
        currency: scope.currency,
        figures: Figures::new(&total, &histogram),
    }))
}

#[derive(Serialize)]
pub struct Daily {
    from: NaiveDate,
    to: NaiveDate,
    currency: Option<String>,
    days: Vec<Day>,
}

#[derive(Serialize)]
struct Day {
    date: NaiveDate,
    #[serde(flatten)]
    figures: Figures,
}

pub async fn daily(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<Daily>, ApiError> {
    let p = params(query.as_deref())?;
    no_ranking_params(&p)?;
    let scope = scope(&state, &p).await?;
    let mut known = per_day(&state, &scope).await?;
    let days = scope
        .from
        .iter_days()
        .take_while(|d| *d <= scope.to)
        .map(|date| {
            let (counts, time_to_pay) = known.remove(&date).unwrap_or_default();
            Day {
                date,
                figures: Figures::new(&counts, &time_to_pay),
            }
        })
        .collect();
    Ok(Json(Daily {
        from: scope.from,
        to: scope.to,
        currency: scope.currency,
        days,
    }))
}

#[derive(Serialize)]
pub struct TopProducts {
    from: NaiveDate,
    to: NaiveDate,
    currency: Option<String>,
    by: &'static str,
    products: Vec<ProductSums>,
}

pub async fn top_products(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
) -> Result<Json<TopProducts>, ApiError> {
    let p = params(query.as_deref())?;
    let (by, rank) = match p.by.as_deref() {
        None | Some("revenue") => ("revenue", Rank::Revenue),
        Some("units") => ("units", Rank::Units),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "by={other:?}: expected units or revenue"
            )))
        }
    };
    let limit = match p.limit.as_deref() {
        None => DEFAULT_LIMIT,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit={raw:?}: expected 1 to {MAX_LIMIT}"))
            })?,
    };
    let scope = scope(&state, &p).await?;
    let products = match &scope.currency {
        Some(currency) => {
            analytics::top_products(
                state.reads.any(),
                scope.from,
                scope.to,
                currency,
                rank,
                limit,
            )
            .await?
        }
        None => Vec::new(),
    };
    Ok(Json(TopProducts {
        from: scope.from,
        to: scope.to,
        currency: scope.currency,
        by,
        products,
    }))
}
