//! Checkouts become orders.
//!
//! For each checkout, in the loop's transaction: claim the event id in the
//! inbox (a repeat is a duplicate), price the cart, insert the order with its
//! lines and first status-history row (a second checkout of the same cart is a
//! duplicate), and enqueue `OrderCreated` or `OrderRejected`.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgConnection;

use super::emit::Emitter;
use super::lifecycle::Lifecycle;
use super::{check_envelope, Handled, Handler, Tally, Verdict};
use crate::domain::pricing::{self, PricedOrder, Rejection};
use crate::domain::{truncate_chars, OrderStatus};
use crate::events::{
    Address, CheckoutEvent, Codec, DecodeError, Normalized, OrderEvent, OrderEventBody,
};
use crate::store::orders::{self, Amounts, NewOrder};
use crate::store::pricing_tables::PricingTables;
use crate::store::{inbox, outbox};
use crate::telemetry::Outcome;

/// Pricing tables are re-read at most this often (they change rarely, and
/// re-reading per batch would cost two queries per batch).
const TABLES_TTL: Duration = Duration::from_secs(30);

const MAX_FIELD_LEN: usize = 256;

pub struct CheckoutHandler {
    emitter: Emitter,
    /// Applies payments and cancellations that arrived before the checkout.
    lifecycle: Arc<Lifecycle>,
    default_tax_rate_ppm: u32,
    tables: Mutex<Option<(Instant, Arc<PricingTables>)>>,
}

impl CheckoutHandler {
    pub fn new(emitter: Emitter, lifecycle: Arc<Lifecycle>, default_tax_rate_ppm: u32) -> Self {
        CheckoutHandler {
            emitter,
            lifecycle,
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

impl Handler for CheckoutHandler {
    type Event = CheckoutEvent;

    fn source(&self) -> &'static str {
        "checkout"
    }

    fn reader_schema(&self) -> &'static apache_avro::Schema {
        &crate::events::avro::CHECKOUT
    }

    fn decode(
        &self,
        codec: &Codec,
        key: Option<&[u8]>,
        payload: &Normalized<'_>,
    ) -> Result<CheckoutEvent, DecodeError> {
        let event: CheckoutEvent = codec.decode(payload)?;
        check_envelope(&event.event_id, &event.order_id, key)?;
        Ok(event)
    }

    fn order_id<'e>(&self, event: &'e CheckoutEvent) -> &'e str {
        &event.order_id
    }

    /// Set-based: a fixed number of statements per batch, whatever its size.
    /// Same results as applying the events one by one, in order.
    async fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a CheckoutEvent],
    ) -> anyhow::Result<Vec<Handled>> {
        let handled = |ev: &CheckoutEvent, verdict| Handled {
            verdict,
            occurred_at: Some(ev.occurred_at),
            tally: Tally::default(),
        };
        let mut results: Vec<Option<Handled>> = vec![None; events.len()];

        // Dedupe: an event id seen earlier in this batch, or ever.
        let mut seen = HashSet::new();
        let firsts: Vec<usize> = (0..events.len())
            .filter(|&i| seen.insert(events[i].event_id.as_str()))
            .collect();
        let ids: Vec<&str> = firsts
            .iter()
            .map(|&i| events[i].event_id.as_str())
            .collect();
        let orders_of: Vec<&str> = firsts
            .iter()
            .map(|&i| events[i].order_id.as_str())
            .collect();
        let claimed = inbox::claim_many(conn, self.source(), &ids, &orders_of)
            .await
            .context("failed to claim event ids")?;
        let fresh: Vec<usize> = firsts
            .into_iter()
            .filter(|&i| claimed.contains(&events[i].event_id))
            .collect();

        // Price, then insert every order at once; an existing order id or
        // cart (in the table or earlier in the batch) is skipped.
        let tables = self.tables(conn).await?;
        let priced: Vec<Result<PricedOrder, Rejection>> = fresh
            .iter()
            .map(|&i| {
                let ev = events[i];
                check_fields(ev).and_then(|()| price(&tables, ev))
            })
            .collect();
        let reasons: Vec<Option<String>> = priced
            .iter()
            .map(|p| p.as_ref().err().map(ToString::to_string))
            .collect();
        let new_orders: Vec<NewOrder<'_>> = fresh
            .iter()
            .zip(&priced)
            .zip(&reasons)
            .map(|((&i, p), r)| new_order(events[i], p, r.as_deref()))
            .collect();
        let created = orders::insert_many(conn, &new_orders)
            .await
            .context("failed to insert orders")?;

        // Skipped ones: a retry or a second checkout of a cart is a
        // duplicate; another cart under a taken order id is dead-lettered.
        let skipped: Vec<usize> = fresh
            .iter()
            .copied()
            .filter(|&i| !created.contains(&events[i].event_id))
            .collect();
        let mut outcome_ids = Vec::new();
        let mut outcome_names = Vec::new();
        if !skipped.is_empty() {
            let order_ids: Vec<&str> = skipped
                .iter()
                .map(|&i| events[i].order_id.as_str())
                .collect();
            let carts: Vec<i64> = skipped.iter().map(|&i| events[i].cart_id).collect();
            let existing = orders::existing(conn, &order_ids, &carts)
                .await
                .context("failed to read existing orders")?;
            for &i in &skipped {
                let ev = events[i];
                let taken_by_other_cart = existing
                    .iter()
                    .find(|(order_id, _)| *order_id == ev.order_id)
                    .filter(|(_, cart)| *cart != ev.cart_id);
                let verdict = match taken_by_other_cart {
                    Some((_, cart)) => Verdict::DeadLetter(format!(
                        "order_id {:?} already belongs to cart {cart}, not cart {}",
                        ev.order_id, ev.cart_id
                    )),
                    None => Verdict::Duplicate,
                };
                outcome_ids.push(ev.event_id.as_str());
                outcome_names.push(verdict.outcome().as_str());
                results[i] = Some(handled(ev, verdict));
            }
        }

        // Announce the created orders, in batch order.
        let mut announced = Vec::new();
        for (k, &i) in fresh.iter().enumerate() {
            let ev = events[i];
            if !created.contains(&ev.event_id) {
                continue;
            }
            let (status, body) = match &priced[k] {
                Ok(order) => (
                    OrderStatus::PendingPayment,
                    OrderEventBody::OrderCreated {
                        user_id: ev.user_id,
                        cart_id: ev.cart_id,
                        currency: order.currency.code().to_owned(),
                        subtotal_minor: order.subtotal.minor(),
                        tax_minor: order.tax.minor(),
                        shipping_minor: order.shipping.minor(),
                        total_minor: order.total.minor(),
                        item_count: order.item_count(),
                        line_count: order.lines.len() as i64,
                    },
                ),
                Err(reason) => {
                    outcome_ids.push(ev.event_id.as_str());
                    outcome_names.push(Outcome::Rejected.as_str());
                    (
                        OrderStatus::Rejected,
                        OrderEventBody::OrderRejected {
                            user_id: ev.user_id,
                            cart_id: ev.cart_id,
                            reason: reason.to_string(),
                        },
                    )
                }
            };
            announced.push((i, OrderEvent::new(&ev.event_id, &ev.order_id, status, body)));
            let verdict = if priced[k].is_ok() {
                Verdict::Applied
            } else {
                Verdict::Rejected
            };
            results[i] = Some(handled(ev, verdict));
        }
        let payloads: Vec<Vec<u8>> = announced
            .iter()
            .map(|(_, e)| self.emitter.payload(e))
            .collect();
        let records: Vec<_> = announced
            .iter()
            .zip(&payloads)
            .map(|((_, e), p)| self.emitter.record(e, p))
            .collect();
        outbox::enqueue_many(conn, &records)
            .await
            .context("failed to enqueue order events")?;
        inbox::set_outcomes(conn, self.source(), &outcome_ids, &outcome_names)
            .await
            .context("failed to record outcomes")?;

        // Payments and cancellations that overtook their checkout.
        let created_ids: Vec<&str> = announced
            .iter()
            .map(|(i, _)| events[*i].order_id.as_str())
            .collect();
        let index_of: std::collections::HashMap<&str, usize> = announced
            .iter()
            .map(|(i, _)| (events[*i].order_id.as_str(), *i))
            .collect();
        for (order_id, t) in self.lifecycle.drain_parked(conn, &created_ids).await? {
            let i = *index_of
                .get(order_id.as_str())
                .context("drained order was created in this batch")?;
            let tally = &mut results[i]
                .as_mut()
                .context("created order has a result")?
                .tally;
            tally.transitions.extend(t.transitions);
            tally.refunds.extend(t.refunds);
            tally.payments_rejected += t.payments_rejected;
            tally.unparked += t.unparked;
        }

        Ok(results
            .into_iter()
            .zip(events)
            .map(|(r, ev)| r.unwrap_or_else(|| handled(ev, Verdict::Duplicate)))
            .collect())
    }
}

/// Field-size checks that pricing does not cover.
/// Prices a checkout's cart: tax by its shipping address, shipping by its
/// currency, both from `tables`.
pub fn price(tables: &PricingTables, ev: &CheckoutEvent) -> Result<PricedOrder, Rejection> {
    let ship_to = &ev.shipping_address;
    let rate = tables.tax_rate_ppm(&ship_to.country, &ship_to.state);
    pricing::price_cart(&ev.currency, &ev.cart_lines(), rate, |c| {
        tables.shipping_rule(c)
    })
}

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
    serde_json::json!({
        "street": truncate_chars(&a.street, MAX_FIELD_LEN), "city": truncate_chars(&a.city, MAX_FIELD_LEN), "state": truncate_chars(&a.state, MAX_FIELD_LEN),
        "zip_code": truncate_chars(&a.zip_code, MAX_FIELD_LEN), "country": truncate_chars(&a.country, MAX_FIELD_LEN),
    })
}

fn new_order<'a>(
    ev: &'a CheckoutEvent,
    priced: &'a Result<PricedOrder, Rejection>,
    rejection: Option<&'a str>,
) -> NewOrder<'a> {
    let (status, amounts, item_count, lines): (_, _, _, &[_]) = match priced {
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
            &o.lines,
        ),
        Err(_) => (OrderStatus::Rejected, None, 0, &[]),
    };
    NewOrder {
        order_id: &ev.order_id,
        cart_id: ev.cart_id,
        user_id: ev.user_id,
        status,
        currency: match priced {
            Ok(o) => o.currency.code().to_owned(),
            Err(_) => truncate_chars(&ev.currency, 16),
        },
        amounts,
        item_count,
        payment_method: truncate_chars(&ev.payment_method, MAX_FIELD_LEN),
        shipping_address: address_json(&ev.shipping_address),
        billing_address: address_json(&ev.billing_address),
        rejection_reason: rejection,
        checkout_event_id: &ev.event_id,
        checkout_occurred_at: ev.occurred_at,
        lines,
    }
}
