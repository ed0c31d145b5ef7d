//! One instance's reader of the order feed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::Hub;
use crate::store::feed::{self, Horizon};

/// How often the feed is read when no notification comes: the bound on how
/// late a change can be when a notification is lost (listener reconnecting,
/// a writer that died between its commit and its NOTIFY).
const FALLBACK_READ: Duration = Duration::from_secs(1);

/// Reads the feed on every notification (and every [`FALLBACK_READ`]) and
/// dispatches what committed since the last read, until `shutdown`. Never
/// fails: a database that is down is retried, and the first read after it
/// returns delivers what committed meanwhile.
pub async fn tailer(
    pool: PgPool,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut listener: Option<PgListener> = None;
    let mut horizon: Option<Horizon> = None;
    let mut retry = Duration::from_millis(100);
    loop {
        if shutdown.is_cancelled() {
            return Ok(());
        }
        if listener.is_none() {
            listener = listen(&pool).await;
        }
        let Some(since) = &horizon else {
            match feed::horizon(&pool).await {
                Ok(h) => {
                    horizon = Some(h);
                    retry = Duration::from_millis(100);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "order feed: cannot read the database; retrying");
                    if !back_off(&shutdown, &mut retry).await {
                        return Ok(());
                    }
                }
            }
            continue;
        };
        // With no subscriber, only the horizon moves: whoever subscribes
        // later reads the database after subscribing, which covers what
        // this read skipped. One who subscribes during it makes it count
        // for nothing, and the rows are read again.
        let registrations = hub.registrations();
        let idle = hub.subscribers() == 0;
        let read = if idle {
            feed::horizon(&pool).await.map(|h| (Vec::new(), h))
        } else {
            feed::tail(&pool, since).await
        };
        match read {
            Ok(_) if idle && hub.registrations() != registrations => continue,
            Ok((rows, next)) => {
                hub.metrics_read();
                horizon = Some(next);
                hub.dispatch(rows);
            }
            Err(e) => {
                tracing::warn!(error = %e, "order feed: read failed; retrying");
                if !back_off(&shutdown, &mut retry).await {
                    return Ok(());
                }
                continue;
            }
        }
        retry = Duration::from_millis(100);
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.try_recv().await.map(|_| ()),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FALLBACK_READ) => {}
            received = notified => {
                // Ok(None) means the connection dropped and will reconnect:
                // read anyway, something may have been missed.
                if let Err(e) = received {
                    tracing::debug!(error = %e, "order feed: listener failed; reconnecting");
                    listener = None;
                }
            }
        }
    }
}

/// Waits `retry` (doubling it, up to 5 s); `false` when shut down meanwhile.
async fn back_off(shutdown: &CancellationToken, retry: &mut Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => return false,
        _ = tokio::time::sleep(*retry) => {}
    }
    *retry = (*retry * 2).min(Duration::from_secs(5));
    true
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool)
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "order feed: cannot listen"))
        .ok()?;
    listener
        .listen(feed::CHANNEL)
        .await
        .inspect_err(|e| tracing::debug!(error = %e, "order feed: cannot listen"))
        .ok()?;
    Some(listener)
}
