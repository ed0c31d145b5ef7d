//! The analytics tables (`analytics_*`, see their migration): what the
//! analytics loop adds in each batch, what the HTTP routes read, and the
//! rebuild from the order tables.
//!
//! Rollup rows are keyed by (day, currency, part); `part` is the
//! `order-events` partition whose batches wrote the row, or -1 for rows a
//! rebuild wrote. Reads sum over `part`. Batches take the analytics lock
//! shared, a rebuild takes it exclusively, so a rebuild never interleaves
//! with a batch.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};

/// The advisory lock (class, key) between analytics batches and rebuilds.
const LOCK: (i32, i32) = (0x616e_616c, 1);

/// A rebuild without a start rebuilds from here (PostgreSQL's dates reach
/// further back than chrono's range allows binding).
const EARLIEST: NaiveDate = NaiveDate::from_ymd_opt(1, 1, 1).expect("a valid date");

pub use super::claims::REBUILT_PART;

/// One rollup row's counters (or a sum of them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, sqlx::FromRow)]
pub struct Counts {
    pub orders_created: i64,
    pub orders_rejected: i64,
    pub orders_paid: i64,
    pub orders_payment_failed: i64,
    pub orders_cancelled: i64,
    pub gross_revenue_minor: i64,
    pub refunds_requested: i64,
    pub refunded_minor: i64,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        self.orders_created += o.orders_created;
        self.orders_rejected += o.orders_rejected;
        self.orders_paid += o.orders_paid;
        self.orders_payment_failed += o.orders_payment_failed;
        self.orders_cancelled += o.orders_cancelled;
        self.gross_revenue_minor += o.gross_revenue_minor;
        self.refunds_requested += o.refunds_requested;
        self.refunded_minor += o.refunded_minor;
    }
}

/// A product's sums.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct ProductSums {
    pub sku: String,
    pub name: String,
    pub units: i64,
    pub revenue_minor: i64,
}

/// What one batch adds to the rollups, keyed by (day, currency).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Delta {
    pub daily: HashMap<(NaiveDate, String), Counts>,
    /// Orders paid per time-to-pay bucket (its upper bound in seconds).
    pub time_to_pay: HashMap<(NaiveDate, String, i32), i64>,
    /// Per product (sku): name, units, revenue.
    pub products: HashMap<(NaiveDate, String, String), ProductSums>,
}

/// What the analytics loop needs to know of an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderFacts {
    pub currency: String,
    pub created_at: DateTime<Utc>,
    /// Empty unless asked for.
    pub lines: Vec<Line>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub sku: String,
    pub name: String,
    pub quantity: i64,
    pub line_total_minor: i64,
}

/// Takes the analytics lock shared until the transaction ends (every
/// batch, first thing).
pub async fn lock_shared(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock_shared($1, $2)")
        .bind(LOCK.0)
        .bind(LOCK.1)
        .execute(conn)
        .await?;
    Ok(())
}

/// Currency and creation time of the orders in `order_ids` that exist, with
/// their lines for those also in `with_lines` (from `orders.items`, the
/// lines as one document: one row per order to read). One statement.
pub async fn order_facts(
    conn: &mut PgConnection,
    order_ids: &[&str],
    with_lines: &[&str],
) -> sqlx::Result<HashMap<String, OrderFacts>> {
    if order_ids.is_empty() {
        return Ok(HashMap::new());
    }
    #[derive(serde::Deserialize)]
    struct Item {
        sku: String,
        name: String,
        quantity: i64,
        line_total_minor: i64,
    }
    /// order_id, currency, created_at, lines (when asked for).
    type Row = (
        String,
        String,
        DateTime<Utc>,
        Option<sqlx::types::Json<Vec<Item>>>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT order_id, currency, created_at,
                    CASE WHEN order_id = ANY($2) THEN items END
             FROM orders WHERE order_id = ANY($1)",
    )
    .bind(order_ids)
    .bind(with_lines)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(id, currency, created_at, items)| {
            let lines = items
                .map(|items| {
                    items
                        .0
                        .into_iter()
                        .map(|i| Line {
                            sku: i.sku,
                            name: i.name,
                            quantity: i.quantity,
                            line_total_minor: i.line_total_minor,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let facts = OrderFacts {
                currency,
                created_at,
                lines,
            };
            (id, facts)
        })
        .collect())
}

/// Adds `delta` to the rows of partition `part`: three statements, rows in
/// key order.
pub async fn add(conn: &mut PgConnection, part: i32, delta: &Delta) -> sqlx::Result<()> {
    add_daily(conn, part, delta).await?;
    add_time_to_pay(conn, part, delta).await?;
    add_products(conn, part, delta).await
}

async fn add_daily(conn: &mut PgConnection, part: i32, delta: &Delta) -> sqlx::Result<()> {
    if delta.daily.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<_> = delta.daily.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let days: Vec<NaiveDate> = rows.iter().map(|((d, _), _)| *d).collect();
    let currencies: Vec<&str> = rows.iter().map(|((_, c), _)| c.as_str()).collect();
    let col = |f: fn(&Counts) -> i64| rows.iter().map(|(_, c)| f(c)).collect::<Vec<i64>>();
    sqlx::query(
        "INSERT INTO analytics_daily AS a (day, currency, part, orders_created, orders_rejected,
             orders_paid, orders_payment_failed, orders_cancelled, gross_revenue_minor,
             refunds_requested, refunded_minor)
         SELECT d, c, $3, n1, n2, n3, n4, n5, g, r, rm
         FROM UNNEST($1::date[], $2::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
                     $8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[])
              AS t(d, c, n1, n2, n3, n4, n5, g, r, rm)
         ON CONFLICT (day, currency, part) DO UPDATE SET
             orders_created = a.orders_created + excluded.orders_created,
             orders_rejected = a.orders_rejected + excluded.orders_rejected,
             orders_paid = a.orders_paid + excluded.orders_paid,
             orders_payment_failed = a.orders_payment_failed + excluded.orders_payment_failed,
             orders_cancelled = a.orders_cancelled + excluded.orders_cancelled,
             gross_revenue_minor = a.gross_revenue_minor + excluded.gross_revenue_minor,
             refunds_requested = a.refunds_requested + excluded.refunds_requested,
             refunded_minor = a.refunded_minor + excluded.refunded_minor",
    )
    .bind(&days)
    .bind(&currencies)
    .bind(part)
    .bind(col(|c| c.orders_created))
    .bind(col(|c| c.orders_rejected))
    .bind(col(|c| c.orders_paid))
    .bind(col(|c| c.orders_payment_failed))
    .bind(col(|c| c.orders_cancelled))
    .bind(col(|c| c.gross_revenue_minor))
    .bind(col(|c| c.refunds_requested))
    .bind(col(|c| c.refunded_minor))
    .execute(conn)
    .await?;
    Ok(())
}

async fn add_time_to_pay(conn: &mut PgConnection, part: i32, delta: &Delta) -> sqlx::Result<()> {
    if delta.time_to_pay.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<_> = delta.time_to_pay.iter().collect();
    rows.sort();
    let days: Vec<NaiveDate> = rows.iter().map(|((d, _, _), _)| *d).collect();
    let currencies: Vec<&str> = rows.iter().map(|((_, c, _), _)| c.as_str()).collect();
    let buckets: Vec<i32> = rows.iter().map(|((_, _, le), _)| *le).collect();
    let orders: Vec<i64> = rows.iter().map(|(_, n)| **n).collect();
    sqlx::query(
        "INSERT INTO analytics_time_to_pay AS a (day, currency, part, le_seconds, orders)
         SELECT d, c, $3, le, n FROM UNNEST($1::date[], $2::text[], $4::int[], $5::bigint[]) AS t(d, c, le, n)
         ON CONFLICT (day, currency, part, le_seconds) DO UPDATE SET orders = a.orders + excluded.orders",
    )
    .bind(&days)
    .bind(&currencies)
    .bind(part)
    .bind(&buckets)
    .bind(&orders)
    .execute(conn)
    .await?;
    Ok(())
}

async fn add_products(conn: &mut PgConnection, part: i32, delta: &Delta) -> sqlx::Result<()> {
    if delta.products.is_empty() {
        return Ok(());
    }
    let mut rows: Vec<_> = delta.products.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    let days: Vec<NaiveDate> = rows.iter().map(|((d, _, _), _)| *d).collect();
    let currencies: Vec<&str> = rows.iter().map(|((_, c, _), _)| c.as_str()).collect();
    let skus: Vec<&str> = rows.iter().map(|(_, p)| p.sku.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|(_, p)| p.name.as_str()).collect();
    let units: Vec<i64> = rows.iter().map(|(_, p)| p.units).collect();
    let revenue: Vec<i64> = rows.iter().map(|(_, p)| p.revenue_minor).collect();
    sqlx::query(
        "INSERT INTO analytics_products AS a (day, currency, part, sku, name, units, revenue_minor)
         SELECT d, c, $3, s, n, u, r
         FROM UNNEST($1::date[], $2::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])
              AS t(d, c, s, n, u, r)
         ON CONFLICT (day, currency, part, sku) DO UPDATE SET
             name = GREATEST(a.name, excluded.name),
             units = a.units + excluded.units,
             revenue_minor = a.revenue_minor + excluded.revenue_minor",
    )
    .bind(&days)
    .bind(&currencies)
    .bind(part)
    .bind(&skus)
    .bind(&names)
    .bind(&units)
    .bind(&revenue)
    .execute(conn)
    .await?;
    Ok(())
}

const SUMS: &str = "COALESCE(sum(orders_created), 0)::bigint AS orders_created,
    COALESCE(sum(orders_rejected), 0)::bigint AS orders_rejected,
    COALESCE(sum(orders_paid), 0)::bigint AS orders_paid,
    COALESCE(sum(orders_payment_failed), 0)::bigint AS orders_payment_failed,
    COALESCE(sum(orders_cancelled), 0)::bigint AS orders_cancelled,
    COALESCE(sum(gross_revenue_minor), 0)::bigint AS gross_revenue_minor,
    COALESCE(sum(refunds_requested), 0)::bigint AS refunds_requested,
    COALESCE(sum(refunded_minor), 0)::bigint AS refunded_minor";

/// The currencies with any figure in `[from, to]`.
pub async fn currencies(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT currency FROM analytics_daily WHERE day BETWEEN $1 AND $2 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await
}

/// The counters of `currency` summed per day over `[from, to]` (days with
/// rows only).
pub async fn daily(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    currency: &str,
) -> sqlx::Result<Vec<(NaiveDate, Counts)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        day: NaiveDate,
        #[sqlx(flatten)]
        counts: Counts,
    }
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT day, {SUMS} FROM analytics_daily
         WHERE day BETWEEN $1 AND $2 AND currency = $3 GROUP BY day ORDER BY day"
    ))
    .bind(from)
    .bind(to)
    .bind(currency)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.day, r.counts)).collect())
}

/// Orders paid per (day, time-to-pay bucket) of `currency` over `[from, to]`.
pub async fn time_to_pay(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    currency: &str,
) -> sqlx::Result<Vec<(NaiveDate, i32, i64)>> {
    sqlx::query_as(
        "SELECT day, le_seconds, sum(orders)::bigint FROM analytics_time_to_pay
         WHERE day BETWEEN $1 AND $2 AND currency = $3 GROUP BY day, le_seconds ORDER BY 1, 2",
    )
    .bind(from)
    .bind(to)
    .bind(currency)
    .fetch_all(pool)
    .await
}

/// What top products are ranked by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rank {
    Units,
    Revenue,
}

/// The `limit` products of `currency` with the most units (or revenue) over
/// `[from, to]`; ties by sku.
pub async fn top_products(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    currency: &str,
    by: Rank,
    limit: i64,
) -> sqlx::Result<Vec<ProductSums>> {
    let order = match by {
        Rank::Units => "units DESC, revenue_minor DESC",
        Rank::Revenue => "revenue_minor DESC, units DESC",
    };
    sqlx::query_as(&format!(
        "SELECT sku, max(name) AS name, sum(units)::bigint AS units,
                sum(revenue_minor)::bigint AS revenue_minor
         FROM analytics_products WHERE day BETWEEN $1 AND $2 AND currency = $3
         GROUP BY sku ORDER BY {order}, sku LIMIT $4"
    ))
    .bind(from)
    .bind(to)
    .bind(currency)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rebuilt {
    pub daily_rows: u64,
    pub time_to_pay_rows: u64,
    pub product_rows: u64,
    /// Events of the order feed newly marked as counted (their effects were
    /// in the tables the rebuild read; the loop has yet to read them).
    pub events_marked: u64,
}

/// Recomputes the rollups of the days from `from` (all days when `None`)
/// from the order tables, replacing what is there, in one transaction.
///
/// The rebuild must not count twice what the loop will read later: every
/// order event whose effect is in the tables it reads is in the order feed
/// (written in the same transactions), so the rebuild marks the feed's
/// events of those days as counted, in the same snapshot. Events older than
/// the feed's retention that the loop has not read yet would be counted
/// twice; the loop is never that far behind unless it was stopped for a week.
///
/// Batches of the loop wait while it runs (the analytics lock): the lock is
/// taken on the session before the transaction, so its snapshot follows
/// every batch that committed.
pub async fn rebuild(pool: &PgPool, from: Option<NaiveDate>) -> anyhow::Result<Rebuilt> {
    use anyhow::Context;
    let mut conn = pool
        .acquire()
        .await
        .context("failed to connect to the database")?;
    sqlx::query("SELECT pg_advisory_lock($1, $2)")
        .bind(LOCK.0)
        .bind(LOCK.1)
        .execute(&mut *conn)
        .await
        .context("failed to take the analytics lock")?;
    let result = rebuild_locked(&mut conn, from).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1, $2)")
        .bind(LOCK.0)
        .bind(LOCK.1)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // The lock goes with the session: drop the connection.
        conn.detach();
    }
    result
}

async fn rebuild_locked(
    conn: &mut PgConnection,
    from: Option<NaiveDate>,
) -> anyhow::Result<Rebuilt> {
    use anyhow::Context;
    let from = from.unwrap_or(EARLIEST);
    // Midnight UTC of `from`, so that the range predicates use the indexes.
    let since = from.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
    let mut tx = sqlx::Connection::begin(&mut *conn)
        .await
        .context("failed to begin")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *tx)
        .await
        .context("failed to set the isolation level")?;
    for table in [
        "analytics_daily",
        "analytics_time_to_pay",
        "analytics_products",
    ] {
        sqlx::query(&format!("DELETE FROM {table} WHERE day >= $1"))
            .bind(from)
            .execute(&mut *tx)
            .await
            .with_context(|| format!("failed to clear {table}"))?;
    }
    let daily_rows = sqlx::query(REBUILD_DAILY)
        .bind(since)
        .bind(REBUILT_PART)
        .execute(&mut *tx)
        .await
        .context("failed to rebuild analytics_daily")?
        .rows_affected();
    let time_to_pay_rows = sqlx::query(REBUILD_TIME_TO_PAY)
        .bind(since)
        .bind(REBUILT_PART)
        .execute(&mut *tx)
        .await
        .context("failed to rebuild analytics_time_to_pay")?
        .rows_affected();
    let product_rows = sqlx::query(REBUILD_PRODUCTS)
        .bind(since)
        .bind(REBUILT_PART)
        .execute(&mut *tx)
        .await
        .context("failed to rebuild analytics_products")?
        .rows_affected();
    let events_marked = super::claims::mark_feed(&mut tx, since)
        .await
        .context("failed to mark the feed's events as counted")?;
    tx.commit().await.context("failed to commit the rebuild")?;
    Ok(Rebuilt {
        daily_rows,
        time_to_pay_rows,
        product_rows,
        events_marked,
    })
}

// The rebuild's reading of the tables, event type by event type (see
// docs/analytics.md): OrderCreated and OrderRejected are the orders by
// creation time (REJECTED ones are the rejections); OrderPaid,
// OrderPaymentFailed and OrderCancelled are the history rows into PAID,
// PAYMENT_FAILED and CANCELLED; RefundRequested is a refunds row. Every one
// of those rows carries the instant of the batch that announced the event.
const REBUILD_DAILY: &str = "
INSERT INTO analytics_daily (day, currency, part, orders_created, orders_rejected, orders_paid,
    orders_payment_failed, orders_cancelled, gross_revenue_minor, refunds_requested, refunded_minor)
SELECT day, currency, $2, sum(created), sum(rejected), sum(paid), sum(failed), sum(cancelled),
       sum(gross), sum(refunds), sum(refunded)
FROM (
    SELECT (created_at AT TIME ZONE 'UTC')::date AS day, currency,
           count(*) FILTER (WHERE status <> 'REJECTED') AS created,
           count(*) FILTER (WHERE status = 'REJECTED') AS rejected,
           0 AS paid, 0 AS failed, 0 AS cancelled, 0 AS gross, 0 AS refunds, 0 AS refunded
    FROM orders WHERE created_at >= $1 GROUP BY 1, 2
    UNION ALL
    SELECT (h.at AT TIME ZONE 'UTC')::date, o.currency, 0, 0,
           count(*) FILTER (WHERE h.to_status = 'PAID'),
           count(*) FILTER (WHERE h.to_status = 'PAYMENT_FAILED'),
           count(*) FILTER (WHERE h.to_status = 'CANCELLED'),
           COALESCE(sum(o.paid_amount_minor) FILTER (WHERE h.to_status = 'PAID'), 0), 0, 0
    FROM order_status_changes h JOIN orders o USING (order_id)
    WHERE h.at >= $1
      AND h.to_status IN ('PAID', 'PAYMENT_FAILED', 'CANCELLED')
    GROUP BY 1, 2
    UNION ALL
    SELECT (requested_at AT TIME ZONE 'UTC')::date, currency, 0, 0, 0, 0, 0, 0,
           count(*), sum(amount_minor)
    FROM refunds WHERE requested_at >= $1 GROUP BY 1, 2
) AS t
GROUP BY day, currency";

const REBUILD_TIME_TO_PAY: &str = "
INSERT INTO analytics_time_to_pay (day, currency, part, le_seconds, orders)
SELECT (h.at AT TIME ZONE 'UTC')::date, o.currency, $2,
       analytics_le_seconds((extract(epoch FROM h.at - o.created_at) * 1000)::bigint), count(*)
FROM order_status_changes h JOIN orders o USING (order_id)
WHERE h.at >= $1 AND h.to_status = 'PAID'
GROUP BY 1, 2, 4";

const REBUILD_PRODUCTS: &str = "
INSERT INTO analytics_products (day, currency, part, sku, name, units, revenue_minor)
SELECT (o.created_at AT TIME ZONE 'UTC')::date, o.currency, $2, i.sku, max(i.name),
       sum(i.quantity), sum(i.line_total_minor)
FROM orders o,
     json_to_recordset(o.items) AS i(sku text, name text, quantity integer, line_total_minor bigint)
WHERE o.created_at >= $1 AND o.status <> 'REJECTED'
GROUP BY 1, 2, 4";
