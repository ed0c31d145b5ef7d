//! Checkouts become orders.
//!
//! For each checkout, in the loop's transaction: claim the event id in the
//! inbox (a repeat is a duplicate), price the cart, insert the order with its
//! lines and first status-history row (a second checkout of the same cart is a
//! duplicate), and enqueue `OrderCreated` or `OrderRejected`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use sqlx::PgConnection;

use super::emit::Emitter;
use super::lifecycle::Lifecycle;
use super::{check_envelope, Handled, Handler, Tally, Verdict};
use crate::domain::pricing::{self, PricedOrder, Rejection};
use crate::domain::OrderStatus;
use crate::events::{
    Address, CheckoutEvent, Codec, DecodeError, Normalized, OrderEvent, OrderEventBody,
};
use crate::store::inbox;
use crate::store::orders::{self, Amounts, Inserted, NewOrder};
use crate::store::pricing_tables::PricingTables;

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

    async fn apply(&self, conn: &mut PgConnection, ev: &CheckoutEvent) -> anyhow::Result<Handled> {
        let mut tally = Tally::default();
        let handled = |verdict, tally| Handled {
            verdict,
            occurred_at: Some(ev.occurred_at),
            tally,
        };
        if !inbox::claim(
            conn,
            self.source(),
            &ev.event_id,
            Some(&ev.order_id),
            "applied",
        )
        .await
        .context("failed to claim event id")?
        {
            return Ok(handled(Verdict::Duplicate, tally));
        }
        let tables = self.tables(conn).await?;
        let priced = check_fields(ev).and_then(|()| {
            let ship_to = &ev.shipping_address;
            let rate = tables.tax_rate_ppm(&ship_to.country, &ship_to.state);
            pricing::price_cart(&ev.currency, &ev.cart_lines(), rate, |c| {
                tables.shipping_rule(c)
            })
        });
        let rejection = priced.as_ref().err().map(ToString::to_string);
        let new_order = new_order(ev, &priced, rejection.as_deref());
        match orders::insert(conn, &new_order)
            .await
            .context("failed to insert order")?
        {
            Inserted::Created => {}
            Inserted::Exists { order_id, cart_id } => {
                if order_id == ev.order_id && cart_id != ev.cart_id {
                    // Not a retry: two carts claim one order id. Neither can
                    // be recorded against the other, so the newcomer is
                    // dead-lettered for a human to look at.
                    let reason = format!(
                        "order_id {:?} already belongs to cart {cart_id}, not cart {}",
                        ev.order_id, ev.cart_id
                    );
                    inbox::set_outcome(conn, self.source(), &ev.event_id, "dead_lettered").await?;
                    return Ok(handled(Verdict::DeadLetter(reason), tally));
                }
                // The same checkout again under a new event id, or a second
                // checkout of a cart that already has an order: the first stands.
                tracing::debug!(order_id = %ev.order_id, cart_id = ev.cart_id, existing_order = %order_id, "checkout duplicates an existing order");
                inbox::set_outcome(conn, self.source(), &ev.event_id, "duplicate").await?;
                return Ok(handled(Verdict::Duplicate, tally));
            }
        }
        let event = match &priced {
            Ok(order) => OrderEvent::new(
                &ev.event_id,
                &ev.order_id,
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
            Err(reason) => OrderEvent::new(
                &ev.event_id,
                &ev.order_id,
                OrderStatus::Rejected,
                OrderEventBody::OrderRejected {
                    user_id: ev.user_id,
                    cart_id: ev.cart_id,
                    reason: reason.to_string(),
                },
            ),
        };
        self.emitter.emit(conn, &event).await?;
        // Payments and cancellations that overtook this checkout.
        self.lifecycle
            .drain_parked(conn, &ev.order_id, &mut tally)
            .await?;
        if priced.is_err() {
            inbox::set_outcome(conn, self.source(), &ev.event_id, "rejected").await?;
            return Ok(handled(Verdict::Rejected, tally));
        }
        Ok(handled(Verdict::Applied, tally))
    }
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
fn cut(s: &str) -> String {
    s.chars().take(MAX_FIELD_LEN).collect()
}

fn address_json(a: &Address) -> serde_json::Value {
    serde_json::json!({
        "street": cut(&a.street), "city": cut(&a.city), "state": cut(&a.state),
        "zip_code": cut(&a.zip_code), "country": cut(&a.country),
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
            Err(_) => ev.currency.chars().take(16).collect(),
        },
        amounts,
        item_count,
        payment_method: cut(&ev.payment_method),
        shipping_address: address_json(&ev.shipping_address),
        billing_address: address_json(&ev.billing_address),
        rejection_reason: rejection,
        checkout_event_id: &ev.event_id,
        checkout_occurred_at: ev.occurred_at,
        lines,
    }
}
