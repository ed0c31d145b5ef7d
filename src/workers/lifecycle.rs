//! Payment confirmations and cancellations: the order lifecycle.
//!
//! Every writer of an order holds that order's lock (taken for the whole
//! batch by the consumer loop, see `store::lifecycle::lock_orders`). That is
//! what makes parking safe: a payment for an unknown order is parked in a
//! transaction holding the lock, and a checkout creates the order and drains
//! its parked events in a transaction holding the same lock, so whichever
//! commits second sees the other's work.

use std::sync::Arc;

use anyhow::Context;
use sqlx::PgConnection;

use super::emit::Emitter;
use super::{check_envelope, Handled, Handler, Tally, Verdict};
use crate::domain::lifecycle::{self, Decision, Effect};
use crate::domain::{truncate_chars, Money};
use crate::events::{
    Cancellation, Codec, DecodeError, Normalized, OrderEvent, OrderEventBody, PaymentConfirmation,
    PaymentStatus,
};
use crate::store::{inbox, lifecycle as store, orders, outbox};

pub const PAYMENT_SOURCE: &str = "payment";
pub const CANCELLATION_SOURCE: &str = "cancellation";
const MAX_TEXT: usize = 1024;

/// A lifecycle input, as applied or parked.
#[derive(Debug, Clone)]
pub enum Input {
    Payment(PaymentConfirmation),
    Cancellation(Cancellation),
}

impl Input {
    fn event_id(&self) -> &str {
        match self {
            Input::Payment(p) => &p.event_id,
            Input::Cancellation(c) => &c.event_id,
        }
    }

    fn order_id(&self) -> &str {
        match self {
            Input::Payment(p) => &p.order_id,
            Input::Cancellation(c) => &c.order_id,
        }
    }

    fn source(&self) -> &'static str {
        match self {
            Input::Payment(_) => PAYMENT_SOURCE,
            Input::Cancellation(_) => CANCELLATION_SOURCE,
        }
    }

    fn occurred_at(&self) -> chrono::DateTime<chrono::Utc> {
        match self {
            Input::Payment(p) => p.occurred_at,
            Input::Cancellation(c) => c.occurred_at,
        }
    }
}

/// Applies lifecycle inputs to orders; shared by the payment and cancellation
/// handlers and by the checkout handler when it drains parked events.
pub struct Lifecycle {
    emitter: Emitter,
}

/// An order event waiting for the batch's refunds to be recorded: a
/// `RefundRequested` is only published if its refund row was new.
struct Pending {
    event: OrderEvent,
    refund_of: Option<String>,
}

impl Lifecycle {
    pub fn new(emitter: Emitter) -> Self {
        Lifecycle { emitter }
    }

    /// Applies `inputs` in order, each to its order or parked when the order
    /// is unknown, with a fixed number of statements: the facts are read
    /// once, the rules run in memory (an order changed by one input is seen
    /// changed by the next), and every write goes out in one statement per
    /// table. The caller holds the order locks and has claimed the event ids.
    pub async fn apply_many(
        &self,
        conn: &mut PgConnection,
        inputs: &[&Input],
    ) -> anyhow::Result<Vec<(Verdict, Tally)>> {
        let order_ids: Vec<&str> = inputs.iter().map(|i| i.order_id()).collect();
        let mut facts = store::facts_many(conn, &order_ids)
            .await
            .context("failed to read orders")?;
        let (payment_ids, statuses): (Vec<&str>, Vec<&str>) = inputs
            .iter()
            .filter_map(|i| match i {
                Input::Payment(p) => Some((p.payment_id.as_str(), payment_status_str(p.status))),
                Input::Cancellation(_) => None,
            })
            .unzip();
        let mut seen = if payment_ids.is_empty() {
            Default::default()
        } else {
            store::payments_seen(conn, &payment_ids, &statuses)
                .await
                .context("failed to read payments")?
        };

        let mut results = Vec::with_capacity(inputs.len());
        let mut parking = Vec::new();
        let mut payments = Vec::new();
        let mut transitions = Vec::new();
        let mut refunds = Vec::new();
        let mut pending: Vec<(usize, Pending)> = Vec::new();
        for (k, input) in inputs.iter().enumerate() {
            let order_id = input.order_id();
            let cause = input.event_id();
            let Some(order) = facts.get_mut(order_id) else {
                let (payload, occurred_at) = match input {
                    Input::Payment(p) => (serde_json::to_value(p)?, p.occurred_at),
                    Input::Cancellation(c) => (serde_json::to_value(c)?, c.occurred_at),
                };
                parking.push(store::Parking {
                    source: input.source(),
                    event_id: cause,
                    order_id,
                    payload,
                    occurred_at,
                });
                results.push((Verdict::Parked, Tally::default()));
                continue;
            };
            let decision = match input {
                Input::Payment(p) => {
                    let status = payment_status_str(p.status);
                    if !seen.insert((p.payment_id.clone(), status.to_owned())) {
                        results.push((Verdict::Duplicate, Tally::default()));
                        continue;
                    }
                    let domain = lifecycle::Payment {
                        payment_id: p.payment_id.clone(),
                        status: match p.status {
                            PaymentStatus::Confirmed => lifecycle::PaymentStatus::Confirmed,
                            PaymentStatus::Failed => lifecycle::PaymentStatus::Failed,
                        },
                        amount: Money::from_minor(p.amount_minor),
                        currency: p.currency.clone(),
                        failure_reason: p.failure_reason.clone(),
                    };
                    let decision = lifecycle::decide_payment(order, &domain);
                    payments.push(store::NewPayment {
                        payment_id: &p.payment_id,
                        status,
                        order_id,
                        amount_minor: p.amount_minor,
                        currency: truncate_chars(&p.currency, 16),
                        provider: truncate_chars(&p.provider, 64),
                        failure_reason: p
                            .failure_reason
                            .as_deref()
                            .map(|r| truncate_chars(r, MAX_TEXT)),
                        disposition: disposition(&decision),
                        event_id: &p.event_id,
                        occurred_at: p.occurred_at,
                    });
                    decision
                }
                Input::Cancellation(c) => lifecycle::decide_cancellation(
                    order,
                    &lifecycle::Cancellation {
                        reason: truncate_chars(&c.reason, MAX_TEXT),
                        requested_by: c.requested_by.as_str().to_owned(),
                    },
                ),
            };
            if decision.is_ignored() {
                results.push((Verdict::Ignored, Tally::default()));
                continue;
            }
            let mut tally = Tally::default();
            let status = decision.new_status.unwrap_or(order.status);
            if let Some(to) = decision.new_status {
                let reason = decision.effects.iter().find_map(|e| match e {
                    Effect::PaymentFailed { reason, .. } | Effect::Cancelled { reason, .. } => {
                        Some(reason.clone())
                    }
                    _ => None,
                });
                transitions.push(orders::Transition {
                    order_id,
                    from: order.status,
                    to,
                    cause_event_id: cause,
                    reason,
                });
                tally.transitions.push((order.status, to));
                order.status = to;
            }
            for effect in decision.effects {
                let mut refund_of = None;
                let body = match effect {
                    Effect::Paid { payment_id, amount } => {
                        order.paid_by = Some((payment_id.clone(), amount));
                        OrderEventBody::OrderPaid {
                            payment_id,
                            amount_minor: amount.minor(),
                            currency: order.currency.clone(),
                        }
                    }
                    Effect::PaymentFailed { payment_id, reason } => {
                        OrderEventBody::OrderPaymentFailed { payment_id, reason }
                    }
                    Effect::Cancelled {
                        reason,
                        requested_by,
                    } => OrderEventBody::OrderCancelled {
                        reason,
                        requested_by,
                    },
                    Effect::PaymentRejected {
                        payment_id,
                        amount,
                        currency,
                        reason,
                    } => {
                        tally.payments_rejected += 1;
                        OrderEventBody::PaymentRejected {
                            payment_id,
                            amount_minor: amount.minor(),
                            currency: truncate_chars(&currency, 16),
                            reason,
                        }
                    }
                    Effect::RefundRequested {
                        payment_id,
                        amount,
                        currency,
                        reason,
                    } => {
                        let currency = truncate_chars(&currency, 16);
                        refunds.push(store::Refund {
                            payment_id: payment_id.clone(),
                            order_id,
                            amount_minor: amount.minor(),
                            currency: currency.clone(),
                            reason: reason.clone(),
                            cause_event_id: cause,
                        });
                        refund_of = Some(payment_id.clone());
                        OrderEventBody::RefundRequested {
                            payment_id,
                            amount_minor: amount.minor(),
                            currency,
                            reason,
                        }
                    }
                };
                let event = OrderEvent::new(cause, order_id, status, body);
                pending.push((k, Pending { event, refund_of }));
            }
            results.push((Verdict::Applied, tally));
        }

        store::park_many(conn, &parking)
            .await
            .context("failed to park events")?;
        store::record_payments(conn, &payments)
            .await
            .context("failed to record payments")?;
        // Each changed order once, with its status after the whole batch.
        let mut changed = std::collections::HashSet::new();
        let finals: Vec<(&str, &lifecycle::OrderFacts)> = transitions
            .iter()
            .filter(|t| changed.insert(t.order_id))
            .map(|t| (t.order_id, &facts[t.order_id]))
            .collect();
        let ids: Vec<&str> = finals.iter().map(|(id, _)| *id).collect();
        let statuses: Vec<&str> = finals.iter().map(|(_, f)| f.status.as_str()).collect();
        let paid_ids: Vec<Option<&str>> = finals
            .iter()
            .map(|(_, f)| f.paid_by.as_ref().map(|(p, _)| p.as_str()))
            .collect();
        let paid_amounts: Vec<Option<i64>> = finals
            .iter()
            .map(|(_, f)| f.paid_by.as_ref().map(|(_, a)| a.minor()))
            .collect();
        store::set_statuses(conn, &ids, &statuses, &paid_ids, &paid_amounts)
            .await
            .context("failed to update orders")?;
        orders::append_history_many(conn, &transitions)
            .await
            .context("failed to append status history")?;
        // A refund is requested at most once per payment, ever: drop the
        // announcement of any refund whose row already existed.
        let fresh_refunds = store::request_refunds(conn, &refunds)
            .await
            .context("failed to record refunds")?;
        let mut announced_refunds = std::collections::HashSet::new();
        let mut events = Vec::with_capacity(pending.len());
        for (k, p) in pending {
            if let Some(payment_id) = &p.refund_of {
                if !fresh_refunds.contains(payment_id)
                    || !announced_refunds.insert(payment_id.clone())
                {
                    continue;
                }
                if let OrderEventBody::RefundRequested {
                    currency,
                    amount_minor,
                    ..
                } = &p.event.body
                {
                    results[k].1.refunds.push((currency.clone(), *amount_minor));
                }
            }
            events.push(p.event);
        }
        let payloads: Vec<Vec<u8>> = events.iter().map(|e| self.emitter.payload(e)).collect();
        let records: Vec<_> = events
            .iter()
            .zip(&payloads)
            .map(|(e, p)| self.emitter.record(e, p))
            .collect();
        outbox::enqueue_many(conn, &records)
            .await
            .context("failed to enqueue order events")?;
        Ok(results)
    }

    /// Applies the parked events of `order_ids` in arrival order; called
    /// right after the checkouts created those orders, under the same locks.
    /// Returns each input's tally with the order it belongs to.
    pub async fn drain_parked(
        &self,
        conn: &mut PgConnection,
        order_ids: &[&str],
    ) -> anyhow::Result<Vec<(String, Tally)>> {
        let mut inputs = Vec::new();
        for (source, payload) in store::take_parked(conn, order_ids)
            .await
            .context("failed to take parked events")?
        {
            inputs.push(match source.as_str() {
                PAYMENT_SOURCE => {
                    Input::Payment(serde_json::from_value(payload).context("parked payment")?)
                }
                CANCELLATION_SOURCE => Input::Cancellation(
                    serde_json::from_value(payload).context("parked cancellation")?,
                ),
                other => anyhow::bail!("parked event from unknown source {other:?}"),
            });
        }
        let refs: Vec<&Input> = inputs.iter().collect();
        let applied = self.apply_many(conn, &refs).await?;
        // Record each drained event's final outcome, per source.
        for source in [PAYMENT_SOURCE, CANCELLATION_SOURCE] {
            let (ids, names): (Vec<&str>, Vec<&str>) = inputs
                .iter()
                .zip(&applied)
                .filter(|(i, _)| i.source() == source)
                .map(|(i, (v, _))| (i.event_id(), v.outcome().as_str()))
                .unzip();
            inbox::set_outcomes(conn, source, &ids, &names).await?;
        }
        Ok(inputs
            .iter()
            .zip(applied)
            .map(|(i, (_, mut tally))| {
                tally.unparked = 1;
                (i.order_id().to_owned(), tally)
            })
            .collect())
    }
}

fn payment_status_str(status: PaymentStatus) -> &'static str {
    match status {
        PaymentStatus::Confirmed => "CONFIRMED",
        PaymentStatus::Failed => "FAILED",
    }
}

/// What a payment did, as stored in `payments.disposition`.
fn disposition(decision: &Decision) -> &'static str {
    let has = |f: fn(&Effect) -> bool| decision.effects.iter().any(f);
    if has(|e| matches!(e, Effect::Paid { .. })) {
        "PAID"
    } else if has(|e| matches!(e, Effect::PaymentFailed { .. })) {
        "FAILED"
    } else if has(|e| matches!(e, Effect::PaymentRejected { .. })) {
        "REJECTED"
    } else if has(|e| matches!(e, Effect::RefundRequested { .. })) {
        "REFUNDED"
    } else {
        "IGNORED"
    }
}

/// Claims the event ids (a repeat, in the batch or ever, is a duplicate),
/// then applies the fresh ones through the lifecycle.
async fn claim_and_apply(
    lifecycle: &Lifecycle,
    conn: &mut PgConnection,
    inputs: &[&Input],
) -> anyhow::Result<Vec<Handled>> {
    let Some(source) = inputs.first().map(|i| i.source()) else {
        return Ok(Vec::new());
    };
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<usize> = (0..inputs.len())
        .filter(|&i| seen.insert(inputs[i].event_id()))
        .collect();
    let ids: Vec<&str> = firsts.iter().map(|&i| inputs[i].event_id()).collect();
    let orders_of: Vec<&str> = firsts.iter().map(|&i| inputs[i].order_id()).collect();
    let claimed = inbox::claim_many(conn, source, &ids, &orders_of)
        .await
        .context("failed to claim event ids")?;
    let fresh: Vec<usize> = firsts
        .into_iter()
        .filter(|&i| claimed.contains(inputs[i].event_id()))
        .collect();
    let fresh_inputs: Vec<&Input> = fresh.iter().map(|&i| inputs[i]).collect();
    let applied = lifecycle.apply_many(conn, &fresh_inputs).await?;

    let mut results: Vec<Handled> = inputs
        .iter()
        .map(|i| Handled {
            verdict: Verdict::Duplicate,
            occurred_at: Some(i.occurred_at()),
            tally: Tally::default(),
        })
        .collect();
    let mut outcome_ids = Vec::new();
    let mut outcome_names = Vec::new();
    for (&i, (verdict, tally)) in fresh.iter().zip(applied) {
        if verdict != Verdict::Applied {
            outcome_ids.push(inputs[i].event_id());
            outcome_names.push(verdict.outcome().as_str());
        }
        results[i].verdict = verdict;
        results[i].tally = tally;
    }
    inbox::set_outcomes(conn, source, &outcome_ids, &outcome_names)
        .await
        .context("failed to record outcomes")?;
    Ok(results)
}

/// Which lifecycle topic a [`LifecycleHandler`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    Payments,
    Cancellations,
}

/// The handler of the payment-confirmations or the cancellations topic.
pub struct LifecycleHandler {
    pub lifecycle: Arc<Lifecycle>,
    pub kind: InputKind,
}

impl LifecycleHandler {
    pub fn payments(lifecycle: Arc<Lifecycle>) -> Self {
        LifecycleHandler {
            lifecycle,
            kind: InputKind::Payments,
        }
    }

    pub fn cancellations(lifecycle: Arc<Lifecycle>) -> Self {
        LifecycleHandler {
            lifecycle,
            kind: InputKind::Cancellations,
        }
    }
}

impl Handler for LifecycleHandler {
    type Event = Input;

    fn source(&self) -> &'static str {
        match self.kind {
            InputKind::Payments => PAYMENT_SOURCE,
            InputKind::Cancellations => CANCELLATION_SOURCE,
        }
    }

    fn reader_schema(&self) -> &'static apache_avro::Schema {
        match self.kind {
            InputKind::Payments => &crate::events::avro::PAYMENT_CONFIRMATION,
            InputKind::Cancellations => &crate::events::avro::CANCELLATION,
        }
    }

    fn decode(
        &self,
        codec: &Codec,
        key: Option<&[u8]>,
        payload: &Normalized<'_>,
    ) -> Result<Input, DecodeError> {
        match self.kind {
            InputKind::Payments => {
                let p: PaymentConfirmation = codec.decode(payload)?;
                check_envelope(&p.event_id, &p.order_id, key)?;
                if p.payment_id.is_empty() || p.payment_id.len() > 128 {
                    return Err(DecodeError::Invalid(
                        "payment_id must be 1 to 128 characters".into(),
                    ));
                }
                if p.amount_minor < 0 {
                    return Err(DecodeError::Invalid(format!(
                        "amount_minor {} is negative",
                        p.amount_minor
                    )));
                }
                Ok(Input::Payment(p))
            }
            InputKind::Cancellations => {
                let c: Cancellation = codec.decode(payload)?;
                check_envelope(&c.event_id, &c.order_id, key)?;
                Ok(Input::Cancellation(c))
            }
        }
    }

    fn order_id<'e>(&self, event: &'e Input) -> &'e str {
        event.order_id()
    }

    async fn apply_batch<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        events: &'a [&'a Input],
    ) -> anyhow::Result<Vec<Handled>> {
        claim_and_apply(&self.lifecycle, conn, events).await
    }
}
