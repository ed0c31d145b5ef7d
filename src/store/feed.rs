//! The order feed (`order_feed`): every order event, numbered per user in
//! commit order, for the live streams to replay and tail.
//!
//! Writers append in the batch transaction, as its last statement
//! ([`append`]): the user's `feed_heads` row is locked from there to the
//! commit, so a user's `seq`s commit in order with no holes. The same
//! statement enqueues each event for publication: its outbox row points at
//! the feed row instead of holding a second copy of the body. Readers:
//! [`tail`] returns what committed since the previous call (by transaction
//! snapshot, not by a serial id: ids are taken at insert, not at commit),
//! [`after`] replays one order's or one user's events after a cursor, and
//! [`order_snapshot`] / [`user_snapshot`] give the state a stream starts from
//! together with the cursor it is current to.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgExecutor, PgPool};

use super::outbox::NewRecord;

/// The channel writers `NOTIFY` after a commit that appended to the feed.
pub const CHANNEL: &str = "orderflow_feed";

/// One feed row.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FeedRow {
    pub user_id: i64,
    pub seq: i64,
    pub order_id: String,
    pub event_type: String,
    /// The event's JSON, as published on order-events.
    pub body: String,
    /// When the batch wrote it (just before its commit).
    pub created_at: DateTime<Utc>,
}

/// Whether [`append`] takes `record`: an order event with its key (the
/// order id) whose only header is its `event_type`. The others go to the
/// outbox as they are (`outbox::enqueue_many`).
pub fn carries(record: &NewRecord) -> bool {
    carried(record).is_some()
}

/// The key and event type of a record [`append`] takes: an order event
/// whose only header is its `event_type`, which the relay reads back from
/// the feed row (the outbox row stores no headers).
fn carried(record: &NewRecord) -> Option<(&[u8], &str)> {
    if !record.is_order_event() || record.headers.len() != 1 {
        return None;
    }
    Some((record.key.as_deref()?, record.header("event_type")?))
}

/// Appends the order events among `records` (those it [`carries`], in slice
/// order) for their orders' users, and enqueues each for publication: its
/// outbox row holds no payload but points at the feed row, so an event's
/// body is written once. The caller's transaction holds the orders' locks,
/// and the orders exist (written earlier in the transaction or before); an
/// event whose order does not is an error, never dropped.
pub async fn append(conn: &mut PgConnection, records: &[NewRecord]) -> sqlx::Result<()> {
    let mut order_ids = Vec::new();
    let mut types = Vec::new();
    let mut bodies = Vec::new();
    let mut topics = Vec::new();
    for r in records {
        let Some((key, event_type)) = carried(r) else {
            continue;
        };
        order_ids.push(String::from_utf8_lossy(key).into_owned());
        types.push(event_type.to_owned());
        bodies.push(String::from_utf8_lossy(&r.payload).into_owned());
        topics.push(r.topic.as_str());
    }
    if order_ids.is_empty() {
        return Ok(());
    }
    // Heads are upserted in user order, so two batches never wait on each
    // other in a cycle; nothing runs after this statement but the commit.
    // Outbox ids follow the slice order, as `outbox::enqueue_many`'s do.
    let queued: i64 = sqlx::query_scalar(
        "WITH ev AS (
             SELECT u.order_id, u.event_type, u.body, u.topic, u.n, o.user_id
             FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
                  WITH ORDINALITY AS u(order_id, event_type, body, topic, n)
             JOIN orders o USING (order_id)
         ), counts AS (
             SELECT user_id, count(*) AS c FROM ev GROUP BY user_id
         ), heads AS (
             INSERT INTO feed_heads AS h (user_id, seq)
             SELECT user_id, c FROM counts ORDER BY user_id
             ON CONFLICT (user_id) DO UPDATE SET seq = h.seq + EXCLUDED.seq
             RETURNING user_id, seq
         ), numbered AS (
             SELECT ev.*,
                    heads.seq - counts.c + row_number() OVER (PARTITION BY ev.user_id ORDER BY ev.n) AS seq
             FROM ev JOIN counts USING (user_id) JOIN heads USING (user_id)
         ), feed AS (
             INSERT INTO order_feed (user_id, seq, order_id, event_type, body)
             SELECT user_id, seq, order_id, event_type, body::json FROM numbered
         ), queued AS (
             INSERT INTO outbox (kind, topic, key, headers, feed_user_id, feed_seq)
             SELECT 'order_event', topic, convert_to(order_id, 'UTF8'), NULL::jsonb, user_id, seq
             FROM numbered ORDER BY n
             RETURNING 1
         )
         SELECT count(*) FROM queued",
    )
    .bind(&order_ids)
    .bind(&types)
    .bind(&bodies)
    .bind(&topics)
    .fetch_one(conn)
    .await?;
    if queued != order_ids.len() as i64 {
        return Err(sqlx::Error::Protocol(format!(
            "{} of {} order events are for orders that do not exist",
            order_ids.len() as i64 - queued,
            order_ids.len()
        )));
    }
    Ok(())
}

/// Where a tailer stands: every transaction below `xmax` and not in `xip`
/// had finished when it last read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Horizon {
    xmax: String,
    xip: Vec<String>,
}

impl Horizon {
    /// Parses PostgreSQL's `pg_snapshot` text form, `xmin:xmax:xip,...`.
    fn parse(snapshot: &str) -> Option<Horizon> {
        let mut parts = snapshot.split(':');
        let _xmin = parts.next()?;
        let xmax = parts.next()?;
        let xip = parts.next()?;
        let valid = |x: &str| !x.is_empty() && x.bytes().all(|b| b.is_ascii_digit());
        let xip: Vec<String> = xip
            .split(',')
            .filter(|x| !x.is_empty())
            .map(str::to_owned)
            .collect();
        (valid(xmax) && xip.iter().all(|x| valid(x))).then(|| Horizon {
            xmax: xmax.to_owned(),
            xip,
        })
    }
}

/// Now: a tailer starting here sees what commits from now on.
pub async fn horizon<'e>(db: impl PgExecutor<'e>) -> sqlx::Result<Horizon> {
    let text: String = sqlx::query_scalar("SELECT pg_current_snapshot()::text")
        .fetch_one(db)
        .await?;
    Horizon::parse(&text).ok_or_else(|| sqlx::Error::Protocol(format!("bad snapshot {text:?}")))
}

/// Where a feed row is, and whose it is: what the tailer reads first, to
/// fetch bodies only of the rows someone on this instance follows.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FeedKey {
    pub user_id: i64,
    pub seq: i64,
    pub order_id: String,
}

/// The rows that committed since `since`, and the new horizon. Rows and
/// horizon come from one statement, so one snapshot: a transaction still
/// running now is in the new horizon's `xip` (or at or above its `xmax`)
/// and is read next time, and nothing is read twice.
pub async fn tail<'e>(
    db: impl PgExecutor<'e>,
    since: &Horizon,
) -> sqlx::Result<(Vec<FeedKey>, Horizon)> {
    #[derive(sqlx::FromRow)]
    struct Tailed {
        snapshot: String,
        user_id: Option<i64>,
        seq: Option<i64>,
        order_id: Option<String>,
    }
    let tailed: Vec<Tailed> = sqlx::query_as(
        "WITH s AS (SELECT pg_current_snapshot()::text AS snapshot)
         SELECT s.snapshot, f.user_id, f.seq, f.order_id
         FROM s LEFT JOIN order_feed f
           ON f.xid >= $1::text::xid8 OR f.xid = ANY($2::text[]::xid8[])
         ORDER BY f.user_id, f.seq",
    )
    .bind(&since.xmax)
    .bind(&since.xip)
    .fetch_all(db)
    .await?;
    let snapshot = tailed.first().map(|t| t.snapshot.as_str()).unwrap_or("");
    let horizon = Horizon::parse(snapshot)
        .ok_or_else(|| sqlx::Error::Protocol(format!("bad snapshot {snapshot:?}")))?;
    let keys = tailed
        .into_iter()
        .filter_map(|t| {
            Some(FeedKey {
                user_id: t.user_id?,
                seq: t.seq?,
                order_id: t.order_id?,
            })
        })
        .collect();
    Ok((keys, horizon))
}

/// The rows at `keys`, in (user, seq) order.
pub async fn rows<'e>(db: impl PgExecutor<'e>, keys: &[&FeedKey]) -> sqlx::Result<Vec<FeedRow>> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let users: Vec<i64> = keys.iter().map(|k| k.user_id).collect();
    let seqs: Vec<i64> = keys.iter().map(|k| k.seq).collect();
    sqlx::query_as(
        "SELECT f.user_id, f.seq, f.order_id, f.event_type, f.body::text AS body, f.created_at
         FROM unnest($1::bigint[], $2::bigint[]) AS k(user_id, seq)
         JOIN order_feed f USING (user_id, seq)
         ORDER BY f.user_id, f.seq",
    )
    .bind(&users)
    .bind(&seqs)
    .fetch_all(db)
    .await
}

/// What a stream follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    Order(String),
    User(i64),
}

/// Events of `target` after `cursor`, in seq order, at most `limit`; and
/// whether the feed still held everything after the cursor (`false` when
/// retention already purged some of it: the caller resends a snapshot).
pub async fn after(
    pool: &PgPool,
    target: &Target,
    cursor: i64,
    limit: i64,
) -> sqlx::Result<(Vec<FeedRow>, bool)> {
    const COLUMNS: &str = "user_id, seq, order_id, event_type, body::text AS body, created_at";
    let (rows, user_id): (Vec<FeedRow>, Option<i64>) = match target {
        Target::Order(order_id) => {
            let rows: Vec<FeedRow> = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM order_feed
                 WHERE user_id = (SELECT user_id FROM orders WHERE order_id = $1)
                   AND order_id = $1 AND seq > $2
                 ORDER BY seq LIMIT $3"
            ))
            .bind(order_id)
            .bind(cursor)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let user_id = match rows.first() {
                Some(r) => Some(r.user_id),
                None => {
                    sqlx::query_scalar("SELECT user_id FROM orders WHERE order_id = $1")
                        .bind(order_id)
                        .fetch_optional(pool)
                        .await?
                }
            };
            (rows, user_id)
        }
        Target::User(user_id) => {
            let rows = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM order_feed WHERE user_id = $1 AND seq > $2 ORDER BY seq LIMIT $3"
            ))
            .bind(user_id)
            .bind(cursor)
            .bind(limit)
            .fetch_all(pool)
            .await?;
            (rows, Some(*user_id))
        }
    };
    let complete = match user_id {
        Some(user_id) => covers(pool, user_id, cursor).await?,
        None => true,
    };
    Ok((rows, complete))
}

/// Whether the feed holds every event of `user_id` after `cursor`: the
/// oldest row kept is at most `cursor + 1` and the cursor is not ahead of
/// the head (a cursor from another database).
async fn covers(pool: &PgPool, user_id: i64, cursor: i64) -> sqlx::Result<bool> {
    let (oldest, head): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT min(seq) FROM order_feed WHERE user_id = $1),
                (SELECT seq FROM feed_heads WHERE user_id = $1)",
    )
    .bind(user_id)
    .fetch_one(pool)
    .await?;
    let head = head.unwrap_or(0);
    Ok(cursor == head || (cursor < head && oldest.is_some_and(|o| o <= cursor + 1)))
}

/// An order's state as a stream starts from it: the status document plus
/// totals and lines, and the cursor it is current to (its user's head).
pub async fn order_snapshot<'e>(
    db: impl PgExecutor<'e>,
    order_id: &str,
) -> sqlx::Result<Option<(String, i64)>> {
    sqlx::query_as(
        "SELECT json_build_object('order_id', o.order_id, 'status', o.status, 'updated_at', o.updated_at,
                    'user_id', o.user_id, 'currency', o.currency, 'subtotal_minor', o.subtotal_minor,
                    'tax_minor', o.tax_minor, 'shipping_minor', o.shipping_minor,
                    'total_minor', o.total_minor, 'item_count', o.item_count,
                    'rejection_reason', o.rejection_reason, 'items', o.items,
                    'created_at', o.created_at)::text,
                COALESCE((SELECT seq FROM feed_heads h WHERE h.user_id = o.user_id), 0)
         FROM orders o WHERE o.order_id = $1",
    )
    .bind(order_id)
    .fetch_optional(db)
    .await
}

/// The last cursor issued to `target`'s user (0 when none): a server that
/// shows it has every change up to that event (each is committed with the
/// head it raised). For an order the server does not have yet: 0.
pub async fn head(pool: &PgPool, target: &Target) -> sqlx::Result<i64> {
    let head: Option<i64> = match target {
        Target::Order(order_id) => {
            sqlx::query_scalar(
                "SELECT h.seq FROM orders o JOIN feed_heads h ON h.user_id = o.user_id
                 WHERE o.order_id = $1",
            )
            .bind(order_id)
            .fetch_optional(pool)
            .await?
        }
        Target::User(user_id) => {
            sqlx::query_scalar("SELECT seq FROM feed_heads WHERE user_id = $1")
                .bind(user_id)
                .fetch_optional(pool)
                .await?
        }
    };
    Ok(head.unwrap_or(0))
}

/// A user's most recent `limit` orders as a stream starts from them, and the
/// cursor they are current to.
pub async fn user_snapshot(pool: &PgPool, user_id: i64, limit: i64) -> sqlx::Result<(String, i64)> {
    sqlx::query_as(
        "SELECT json_build_object('user_id', $1::bigint, 'orders', COALESCE((
                    SELECT json_agg(json_build_object('order_id', o.order_id, 'status', o.status,
                        'updated_at', o.updated_at, 'currency', o.currency, 'total_minor', o.total_minor,
                        'item_count', o.item_count, 'created_at', o.created_at)
                        ORDER BY o.created_at DESC, o.order_id DESC)
                    FROM (SELECT * FROM orders WHERE user_id = $1
                          ORDER BY created_at DESC, order_id DESC LIMIT $2) o), '[]'::json))::text,
                COALESCE((SELECT seq FROM feed_heads WHERE user_id = $1), 0)",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_one(pool)
    .await
}

/// Deletes feed rows older than `retention`, at most `limit` at a time.
pub async fn purge(pool: &PgPool, retention: Duration, limit: i64) -> sqlx::Result<u64> {
    let cutoff = super::older_than(retention);
    // Rows the outbox still points at stay until they are published.
    Ok(sqlx::query(
        "DELETE FROM order_feed WHERE (user_id, seq) IN (
             SELECT f.user_id, f.seq FROM order_feed f
             WHERE f.created_at < $1
               AND NOT EXISTS (SELECT 1 FROM outbox o
                               WHERE o.feed_user_id = f.user_id AND o.feed_seq = f.seq)
             LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Tells every listening instance that the feed grew.
pub async fn notify<'e>(db: impl PgExecutor<'e>, from: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(from)
        .execute(db)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snapshots() {
        assert_eq!(
            Horizon::parse("10:20:10,14"),
            Some(Horizon {
                xmax: "20".into(),
                xip: vec!["10".into(), "14".into()]
            })
        );
        assert_eq!(
            Horizon::parse("10:10:"),
            Some(Horizon {
                xmax: "10".into(),
                xip: vec![]
            })
        );
        assert_eq!(Horizon::parse("10:x:"), None);
        assert_eq!(Horizon::parse("10"), None);
        assert_eq!(Horizon::parse("1:2:3;DROP"), None);
    }

    /// The outbox row of a carried event stores no headers; the relay gives
    /// it back its event type alone, so an event with more must not be
    /// carried (it keeps an outbox row with its payload and headers).
    #[test]
    fn carries_order_events_whose_only_header_is_their_type() {
        use super::super::outbox::RecordKind;
        let event = |headers: Vec<(String, String)>| NewRecord {
            kind: RecordKind::OrderEvent,
            topic: "order-events".into(),
            key: Some(b"o-1".to_vec()),
            payload: b"{}".to_vec(),
            headers,
        };
        let typed = ("event_type".to_owned(), "OrderPaid".to_owned());
        assert!(carries(&event(vec![typed.clone()])));
        assert!(!carries(&event(vec![
            typed,
            ("traceparent".into(), "00-1".into())
        ])));
        assert!(!carries(&event(vec![])));
        let mut raw = event(vec![("event_type".into(), "OrderPaid".into())]);
        raw.kind = RecordKind::Raw;
        assert!(!carries(&raw));
    }
}
