//! Checkouts become orders.
//!
//! Each new checkout is priced (tax by its shipping address, shipping by its
//! currency) and becomes a PENDING_PAYMENT order announced as `OrderCreated`,
//! or, when the cart cannot be priced, a REJECTED order announced as
//! `OrderRejected`. A checkout for an order id or cart that exists already is
//! a duplicate (an upstream retry or double submit), except that another cart
//! under a taken order id is dead-lettered: merging it would be wrong.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgConnection;

use super::{Handler, Input, Plan, Verdict};
use crate::domain::pricing::{self, PricedOrder, Rejection};
use crate::domain::{truncate_chars, EventId, OrderId, OrderStatus};
use crate::events::{Address, CheckoutEvent, Codec, DecodeError, Normalized, OrderEventBody};
use crate::store::inbox::Source;
use crate::store::orders::{self, Amounts, NewOrder};
use crate::store::pricing_tables::PricingTables;

/// Pricing tables are re-read at most this often (they change rarely, and
/// re-reading per batch would cost two queries per batch).
const TABLES_TTL: Duration = Duration::from_secs(30);

const MAX_FIELD_LEN: usize = 256;

pub struct CheckoutHandler {
    default_tax_rate_ppm: u32,
    tables: Mutex<Option<(Instant, Arc<PricingTables>)>>,
}

/// What the decisions of one checkout batch know.
pub struct CheckoutFacts {
    tables: Arc<PricingTables>,
    /// Cart of every order id of the batch that exists (or was just created).
    orders: HashMap<OrderId, i64>,
    /// Every cart of the batch that has an order.
    carts: HashSet<i64>,
}

impl CheckoutHandler {
    pub fn new(default_tax_rate_ppm: u32) -> Self {
        CheckoutHandler {
            default_tax_rate_ppm,
            tables: Mutex::new(None),
        }
    }

    async fn tables(&self, conn: &mut PgConnection) -> anyhow::Result<Arc<PricingTables>> {
        if let Some((loaded, tables)) = &*self.tables.lock().expect("tables lock") {
            if loaded.elapsed() < TABLES_TTL {
                return Ok(tables.clone());
            }
        }
        let tables = Arc::new(
            PricingTables::load(conn, self.default_tax_rate_ppm)
                .await
                .context("failed to load pricing tables")?,
        );
        *self.tables.lock().expect("tables lock") = Some((Instant::now(), tables.clone()));
        Ok(tables)
    }
}

impl Input for CheckoutEvent {
    fn event_id(&self) -> &EventId {
        &self.event_id
    }
    fn order_id(&self) -> &OrderId {
        &self.order_id
    }
    fn occurred_at(&self) -> chrono::DateTime<chrono::Utc> {
        self.occurred_at
    }
}

impl Handler for CheckoutHandler {
    type Event = CheckoutEvent;
    type Facts = CheckoutFacts;

    fn source(&self) -> Source {
        Source::Checkout
    }

    fn reader_schema(&self) -> &'static apache_avro::Schema {
        &crate::events::avro::CHECKOUT
    }

    fn decode(
        &self,
        codec: &Codec,
        payload: &Normalized<'_>,
    ) -> Result<CheckoutEvent, DecodeError> {
        codec.decode(payload)
    }

    async fn load<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a CheckoutEvent],
    ) -> anyhow::Result<CheckoutFacts> {
        let tables = self.tables(conn).await?;
        let ids: Vec<&str> = events.iter().map(|e| e.order_id.as_str()).collect();
        let carts: Vec<i64> = events.iter().map(|e| e.cart_id).collect();
        let existing = orders::existing(conn, &ids, &carts)
            .await
            .context("failed to read existing orders")?;
        let mut facts = CheckoutFacts {
            tables,
            orders: HashMap::with_capacity(existing.len()),
            carts: HashSet::with_capacity(existing.len()),
        };
        for (order_id, cart) in existing {
            facts.carts.insert(cart);
            if let Ok(order_id) = OrderId::parse(&order_id) {
                facts.orders.insert(order_id, cart);
            }
        }
        Ok(facts)
    }

    fn decide(&self, facts: &mut CheckoutFacts, ev: &CheckoutEvent, plan: &mut Plan) -> Verdict {
        if let Some(&cart) = facts.orders.get(&ev.order_id) {
            return if cart == ev.cart_id {
                Verdict::Duplicate
            } else {
                Verdict::DeadLetter(format!(
                    "order_id {:?} already belongs to cart {cart}, not cart {}",
                    ev.order_id.as_str(),
                    ev.cart_id
                ))
            };
        }
        if facts.carts.contains(&ev.cart_id) {
            return Verdict::Duplicate;
        }
        facts.orders.insert(ev.order_id.clone(), ev.cart_id);
        facts.carts.insert(ev.cart_id);
        let priced = check_fields(ev).and_then(|()| price(&facts.tables, ev));
        let order = new_order(ev, &priced);
        let (verdict, body) = match &priced {
            Ok(o) => (
                Verdict::Applied,
                OrderEventBody::OrderCreated {
                    user_id: ev.user_id,
                    cart_id: ev.cart_id,
                    currency: o.currency.code().to_owned(),
                    subtotal_minor: o.subtotal.minor(),
                    tax_minor: o.tax.minor(),
                    shipping_minor: o.shipping.minor(),
                    total_minor: o.total.minor(),
                    item_count: o.item_count(),
                    line_count: o.lines.len() as i64,
                },
            ),
            Err(reason) => (
                Verdict::Rejected,
                OrderEventBody::OrderRejected {
                    user_id: ev.user_id,
                    cart_id: ev.cart_id,
                    reason: reason.to_string(),
                },
            ),
        };
        plan.announce(&ev.event_id, &ev.order_id, order.status, body);
        plan.create_order(order);
        verdict
    }
}

/// Prices a checkout's cart: tax by its shipping address, shipping by its
/// currency, both from `tables`.
pub fn price(tables: &PricingTables, ev: &CheckoutEvent) -> Result<PricedOrder, Rejection> {
    let ship_to = &ev.shipping_address;
    let rate = tables.tax_rate_ppm(&ship_to.country, &ship_to.state);
    pricing::price_cart(&ev.currency, &ev.cart_lines(), rate, |c| {
        tables.shipping_rule(c)
    })
}

/// Field-size checks that pricing does not cover.
fn check_fields(ev: &CheckoutEvent) -> Result<(), Rejection> {
    let too_long = |value: &str| value.chars().count() > MAX_FIELD_LEN;
    if too_long(&ev.payment_method) || ev.payment_method.is_empty() {
        return Err(Rejection::Field(format!(
            "payment_method must be 1 to {MAX_FIELD_LEN} characters"
        )));
    }
    for (name, a) in [
        ("shipping_address", &ev.shipping_address),
        ("billing_address", &ev.billing_address),
    ] {
        for (field, value) in [
            ("street", &a.street),
            ("city", &a.city),
            ("state", &a.state),
            ("zip_code", &a.zip_code),
            ("country", &a.country),
        ] {
            if too_long(value) {
                return Err(Rejection::Field(format!(
                    "{name}.{field} is longer than {MAX_FIELD_LEN} characters"
                )));
            }
        }
    }
    Ok(())
}

/// Strings of a rejected checkout are stored cut to size: they were never
/// validated, and a rejected order must not become a way to bloat the store.
fn address_json(a: &Address) -> serde_json::Value {
    let cut = |s: &str| truncate_chars(s, MAX_FIELD_LEN);
    serde_json::json!({
        "street": cut(&a.street), "city": cut(&a.city), "state": cut(&a.state),
        "zip_code": cut(&a.zip_code), "country": cut(&a.country),
    })
}

fn new_order(ev: &CheckoutEvent, priced: &Result<PricedOrder, Rejection>) -> NewOrder {
    let (status, amounts, item_count, lines, currency, rejection) = match priced {
        Ok(o) => (
            OrderStatus::PendingPayment,
            Some(Amounts {
                subtotal: o.subtotal.minor(),
                tax: o.tax.minor(),
                tax_rate_ppm: o.tax_rate_ppm,
                shipping: o.shipping.minor(),
                total: o.total.minor(),
            }),
            o.item_count(),
            o.lines.clone(),
            o.currency.code().to_owned(),
            None,
        ),
        Err(reason) => (
            OrderStatus::Rejected,
            None,
            0,
            Vec::new(),
            truncate_chars(&ev.currency, 16),
            Some(reason.to_string()),
        ),
    };
    NewOrder {
        order_id: ev.order_id.clone(),
        cart_id: ev.cart_id,
        user_id: ev.user_id,
        status,
        currency,
        amounts,
        item_count,
        payment_method: truncate_chars(&ev.payment_method, MAX_FIELD_LEN),
        shipping_address: address_json(&ev.shipping_address),
        billing_address: (ev.billing_address != ev.shipping_address)
            .then(|| address_json(&ev.billing_address)),
        rejection_reason: rejection,
        checkout_event_id: ev.event_id.clone(),
        checkout_occurred_at: ev.occurred_at,
        lines,
        paid_by: None,
    }
}
