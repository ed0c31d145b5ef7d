//! Where the HTTP read routes read: the primary, or a streaming replica
//! (`DATABASE_READ_URL`) that never shows a client something older than
//! what it has already seen.
//!
//! With a replica, a read route's response carries `X-Orderflow-Lsn`: a WAL
//! position its data is at least as new as (read after the query), and
//! `X-Orderflow-Read-From: replica|primary`. A client says what it has seen
//! in one of two ways: `?min_lsn=` (a position from an earlier response) or
//! `?min_event=` (the `id:` of a live stream's event: the per-user cursor,
//! which commits with the change it numbers). The read is served by the
//! replica once the replica shows that much (waiting up to
//! `READ_MIN_LSN_WAIT_MS`), else by the primary: never older. A read the
//! replica fails (down, or a query cancelled by a conflict with recovery)
//! goes to the primary, and so do all reads until the replica answers again
//! (the lag task asks every 2 s). Without a replica every read is the
//! primary's, no header is added and both parameters are accepted and have
//! nothing to wait for.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use sqlx::PgPool;

use super::ApiError;
use crate::store::feed::{self, Target};
use crate::store::replica::{self, Lsn};
use crate::telemetry::Metrics;

/// How often a read waiting for the replica asks how far it has got.
const POLL: Duration = Duration::from_millis(5);

#[derive(Clone)]
pub struct Reads {
    primary: PgPool,
    replica: Option<PgPool>,
    /// Cleared when a read from the replica fails, set again when the
    /// replica answers (the lag task asks every 2 s): while it is down,
    /// reads go straight to the primary instead of waiting to connect.
    replica_up: Arc<AtomicBool>,
    wait: Duration,
    metrics: Arc<Metrics>,
}

/// What a client has already seen; its reads must not go back before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// `?min_lsn=`: a WAL position.
    Position(Lsn),
    /// `?min_event=`: a live stream's event id (the user's cursor), for the
    /// order or user the route reads.
    Event(Target, i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Primary,
    Replica,
}

/// A value read, and from where.
pub struct Read<T> {
    value: T,
    source: Source,
    /// Set when a replica is configured.
    position: Option<Lsn>,
}

impl Reads {
    pub fn new(
        primary: PgPool,
        replica: Option<PgPool>,
        wait: Duration,
        metrics: Arc<Metrics>,
    ) -> Reads {
        Reads {
            primary,
            replica,
            replica_up: Arc::new(AtomicBool::new(true)),
            wait,
            metrics,
        }
    }

    /// The flag the replica lag task keeps: whether the replica answers.
    pub fn replica_up(&self) -> Arc<AtomicBool> {
        self.replica_up.clone()
    }

    /// The replica if there is one, else the primary: for reads that need
    /// no position (the analytics figures).
    pub fn any(&self) -> &PgPool {
        self.replica.as_ref().unwrap_or(&self.primary)
    }

    /// Runs `query` where a client that has seen `seen` may read.
    pub async fn read<T, F, Fut>(&self, seen: Option<Seen>, query: F) -> Result<Read<T>, ApiError>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<T, sqlx::Error>>,
    {
        let replica = self.replica.as_ref();
        if let Some(replica) = replica.filter(|_| self.replica_up.load(Ordering::Relaxed)) {
            if self.replica_has(replica, seen.as_ref()).await {
                let read = async {
                    let value = query(replica.clone()).await?;
                    let position = replica::position(replica).await?;
                    Ok::<_, sqlx::Error>((value, position))
                };
                match read.await {
                    Ok((value, position)) => {
                        self.metrics.http_read("replica");
                        return Ok(Read {
                            value,
                            source: Source::Replica,
                            position: Some(position),
                        });
                    }
                    Err(e) => self.replica_failed(&e),
                }
            }
        }
        let value = query(self.primary.clone()).await?;
        let position = match replica {
            None => None,
            Some(_) => {
                self.metrics.http_read("primary");
                Some(replica::position(&self.primary).await?)
            }
        };
        Ok(Read {
            value,
            source: Source::Primary,
            position,
        })
    }

    fn replica_failed(&self, e: &sqlx::Error) {
        // Logged once per outage: the flag is set again when it answers.
        if self.replica_up.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %e, "read from the replica failed; reading the primary until it answers again");
        }
    }

    /// Whether `replica` shows what the client has seen, waiting up to the
    /// configured time for it.
    async fn replica_has(&self, replica: &PgPool, seen: Option<&Seen>) -> bool {
        let Some(seen) = seen else { return true };
        let deadline = Instant::now() + self.wait;
        loop {
            let reached = match seen {
                Seen::Position(min) => replica::position(replica).await.map(|at| at >= *min),
                Seen::Event(target, seq) => feed::head(replica, target).await.map(|h| h >= *seq),
            };
            match reached {
                Ok(true) => return true,
                Ok(false) => {}
                Err(e) => {
                    self.replica_failed(&e);
                    return false;
                }
            }
            if Instant::now() + POLL > deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl<T> Read<T> {
    /// The response `f` makes of the value, with the position headers.
    pub fn respond<R: IntoResponse>(self, f: impl FnOnce(T) -> R) -> Response {
        let mut response = f(self.value).into_response();
        if let Some(position) = self.position {
            let headers = response.headers_mut();
            if let Ok(value) = HeaderValue::from_str(&position.to_string()) {
                headers.insert("x-orderflow-lsn", value);
            }
            headers.insert(
                "x-orderflow-read-from",
                HeaderValue::from_static(match self.source {
                    Source::Primary => "primary",
                    Source::Replica => "replica",
                }),
            );
        }
        response
    }
}

/// What the client says it has seen: `?min_lsn=` or `?min_event=` of a
/// read route's query string, about `target` (the order or user read).
pub fn seen(query: Option<&str>, target: Target) -> Result<Option<Seen>, ApiError> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or_default()).unwrap_or_default();
    let value = |key: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    if let Some(raw) = value("min_lsn") {
        return Lsn::parse(raw).map(|l| Some(Seen::Position(l))).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "min_lsn {:?} is not a WAL position like 16/B374D848 (send back an X-Orderflow-Lsn header)",
                super::clip(raw)
            ))
        });
    }
    if let Some(raw) = value("min_event") {
        return raw
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(|n| Some(Seen::Event(target, n)))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "min_event {:?} is not an event id from a live stream",
                    super::clip(raw)
                ))
            });
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_says_what_its_client_has_seen() {
        let order = || Target::Order("o-1".into());
        assert_eq!(seen(None, order()).unwrap(), None);
        assert_eq!(seen(Some("limit=5"), order()).unwrap(), None);
        assert_eq!(
            seen(Some("min_lsn=16/B374D848"), order()).unwrap(),
            Some(Seen::Position(Lsn(0x16_B374_D848)))
        );
        assert_eq!(
            seen(Some("min_event=17"), Target::User(4)).unwrap(),
            Some(Seen::Event(Target::User(4), 17))
        );
        for bad in [
            "min_lsn=nope",
            "min_event=-1",
            "min_event=x",
            "min_lsn=%C3%A9%C3%A9",
        ] {
            assert!(seen(Some(bad), order()).is_err(), "{bad}");
        }
    }
}
