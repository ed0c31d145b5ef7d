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
///
/// It reads on its listening connection, never waiting for the pool that
/// batches and HTTP share; first the keys of what committed, then the
/// bodies of only the rows someone here follows. With no subscriber, only
/// the horizon moves. Skipping is safe because a subscriber subscribes
/// first and reads the database after, and that read holds everything
/// committed before the tail read that skipped it.
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
        let Some(conn) = listener.as_mut() else {
            match listen(&pool).await {
                Ok(l) => listener = Some(l),
                Err(e) => {
                    tracing::warn!(error = %e, "order feed: cannot listen; retrying");
                    if !back_off(&shutdown, &mut retry).await {
                        return Ok(());
                    }
                }
            }
            continue;
        };
        let read = match &horizon {
            None => feed::horizon(&mut *conn)
                .await
                .map(|h| Some((Vec::new(), h))),
            Some(since) => read_once(conn, &hub, since).await,
        };
        match read {
            Ok(None) => continue, // someone subscribed during the read: again
            Ok(Some((rows, next))) => {
                hub.metrics_read();
                horizon = Some(next);
                hub.dispatch(rows);
                retry = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(error = %e, "order feed: read failed; reconnecting");
                listener = None;
                if !back_off(&shutdown, &mut retry).await {
                    return Ok(());
                }
                continue;
            }
        }
        let Some(conn) = listener.as_mut() else {
            continue;
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(FALLBACK_READ) => {}
            received = conn.try_recv() => {
                // Ok(None): the connection dropped and reconnects; read
                // anyway, something may have been missed.
                if let Err(e) = received {
                    tracing::debug!(error = %e, "order feed: listener failed; reconnecting");
                    listener = None;
                }
            }
        }
    }
}

/// One read: what committed since `since`, with bodies for the followed
/// rows; `None` when a subscription arrived during an idle read (whose rows
/// were not fetched), so the caller reads again from the same horizon.
async fn read_once(
    conn: &mut PgListener,
    hub: &Hub,
    since: &Horizon,
) -> sqlx::Result<Option<(Vec<feed::FeedRow>, Horizon)>> {
    let registrations = hub.registrations();
    if !hub.has_subscribers() {
        let next = feed::horizon(&mut *conn).await?;
        return Ok((hub.registrations() == registrations).then(|| (Vec::new(), next)));
    }
    let (keys, next) = feed::tail(&mut *conn, since).await?;
    let followed = hub.followed(&keys);
    let rows = feed::rows(&mut *conn, &followed).await?;
    Ok(Some((rows, next)))
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

async fn listen(pool: &PgPool) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(feed::CHANNEL).await?;
    Ok(listener)
}
