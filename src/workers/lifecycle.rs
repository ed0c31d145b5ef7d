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
use crate::domain::lifecycle::{self, Decision, Effect, OrderFacts};
use crate::domain::Money;
use crate::events::{
    Cancellation, Codec, DecodeError, Normalized, OrderEvent, OrderEventBody, PaymentConfirmation,
    PaymentStatus,
};
use crate::store::{inbox, lifecycle as store};

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
}

/// Applies lifecycle inputs to orders; shared by the payment and cancellation
/// handlers and by the checkout handler when it drains parked events.
pub struct Lifecycle {
    emitter: Emitter,
}

impl Lifecycle {
    pub fn new(emitter: Emitter) -> Self {
        Lifecycle { emitter }
    }

    /// Applies `input` to its order, or parks it when the order is unknown.
    /// The caller holds the order lock and has claimed the event id.
    pub async fn apply(
        &self,
        conn: &mut PgConnection,
        input: &Input,
        tally: &mut Tally,
    ) -> anyhow::Result<Verdict> {
        let order_id = input.order_id();
        let Some(facts) = store::order_facts(conn, order_id)
            .await
            .context("failed to read order")?
        else {
            let (payload, at) = match input {
                Input::Payment(p) => (serde_json::to_value(p)?, p.occurred_at),
                Input::Cancellation(c) => (serde_json::to_value(c)?, c.occurred_at),
            };
            store::park(
                conn,
                input.source(),
                input.event_id(),
                order_id,
                &payload,
                at,
            )
            .await
            .context("failed to park event")?;
            return Ok(Verdict::Parked);
        };
        let decision = match input {
            Input::Payment(p) => {
                let status = payment_status_str(p.status);
                if store::payment_seen(conn, &p.payment_id, status).await? {
                    return Ok(Verdict::Duplicate);
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
                let decision = lifecycle::decide_payment(&facts, &domain);
                let failure_reason = p.failure_reason.as_deref().map(|r| cut(r, MAX_TEXT));
                store::record_payment(
                    conn,
                    &store::NewPayment {
                        payment_id: &p.payment_id,
                        status,
                        order_id,
                        amount_minor: p.amount_minor,
                        currency: &cut(&p.currency, 16),
                        provider: &cut(&p.provider, 64),
                        failure_reason: failure_reason.as_deref(),
                        disposition: disposition(&decision),
                        event_id: &p.event_id,
                        occurred_at: p.occurred_at,
                    },
                )
                .await
                .context("failed to record payment")?;
                decision
            }
            Input::Cancellation(c) => lifecycle::decide_cancellation(
                &facts,
                &lifecycle::Cancellation {
                    reason: cut(&c.reason, MAX_TEXT),
                    requested_by: c.requested_by.as_str().to_owned(),
                },
            ),
        };
        if decision.is_ignored() {
            return Ok(Verdict::Ignored);
        }
        self.persist(conn, order_id, input.event_id(), &facts, decision, tally)
            .await?;
        Ok(Verdict::Applied)
    }

    async fn persist(
        &self,
        conn: &mut PgConnection,
        order_id: &str,
        cause: &str,
        facts: &OrderFacts,
        decision: Decision,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        let status = decision.new_status.unwrap_or(facts.status);
        if let Some(to) = decision.new_status {
            let paid_by = decision.effects.iter().find_map(|e| match e {
                Effect::Paid { payment_id, amount } => Some((payment_id.as_str(), *amount)),
                _ => None,
            });
            let reason = decision.effects.iter().find_map(|e| match e {
                Effect::PaymentFailed { reason, .. } | Effect::Cancelled { reason, .. } => {
                    Some(reason.as_str())
                }
                _ => None,
            });
            store::set_status(conn, order_id, to, paid_by)
                .await
                .context("failed to update order")?;
            crate::store::orders::append_history(
                conn,
                order_id,
                Some(facts.status),
                to,
                cause,
                reason,
            )
            .await
            .context("failed to append status history")?;
            tally.transitions.push((facts.status, to));
        }
        for effect in decision.effects {
            let body = match effect {
                Effect::Paid { payment_id, amount } => OrderEventBody::OrderPaid {
                    payment_id,
                    amount_minor: amount.minor(),
                    currency: facts.currency.clone(),
                },
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
                        currency: cut(&currency, 16),
                        reason,
                    }
                }
                Effect::RefundRequested {
                    payment_id,
                    amount,
                    currency,
                    reason,
                } => {
                    let currency = cut(&currency, 16);
                    let fresh = store::request_refund(
                        conn,
                        &payment_id,
                        order_id,
                        amount,
                        &currency,
                        &reason,
                        cause,
                    )
                    .await
                    .context("failed to record refund")?;
                    if !fresh {
                        continue; // refunded once already: never twice
                    }
                    tally.refunds.push((currency.clone(), amount.minor()));
                    OrderEventBody::RefundRequested {
                        payment_id,
                        amount_minor: amount.minor(),
                        currency,
                        reason,
                    }
                }
            };
            self.emitter
                .emit(conn, &OrderEvent::new(cause, order_id, status, body))
                .await?;
        }
        Ok(())
    }

    /// Applies an order's parked events in arrival order; called right after
    /// the checkout created the order, under the same lock.
    pub async fn drain_parked(
        &self,
        conn: &mut PgConnection,
        order_id: &str,
        tally: &mut Tally,
    ) -> anyhow::Result<()> {
        for (source, payload) in store::take_parked(conn, order_id)
            .await
            .context("failed to take parked events")?
        {
            let input = match source.as_str() {
                PAYMENT_SOURCE => {
                    Input::Payment(serde_json::from_value(payload).context("parked payment")?)
                }
                CANCELLATION_SOURCE => Input::Cancellation(
                    serde_json::from_value(payload).context("parked cancellation")?,
                ),
                other => anyhow::bail!("parked event from unknown source {other:?}"),
            };
            let verdict = self.apply(conn, &input, tally).await?;
            inbox::set_outcome(
                conn,
                input.source(),
                input.event_id(),
                outcome_name(&verdict),
            )
            .await?;
            tally.unparked += 1;
        }
        Ok(())
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

fn outcome_name(verdict: &Verdict) -> &'static str {
    match verdict {
        Verdict::Applied => "applied",
        Verdict::Duplicate => "duplicate",
        Verdict::Rejected => "rejected",
        Verdict::Parked => "parked",
        Verdict::Ignored => "ignored",
        Verdict::DeadLetter(_) => "dead_lettered",
    }
}

fn cut(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Claims the event id, then applies through the lifecycle.
async fn claim_and_apply(
    lifecycle: &Lifecycle,
    conn: &mut PgConnection,
    input: &Input,
    occurred_at: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<Handled> {
    let mut tally = Tally::default();
    let claimed = inbox::claim(
        conn,
        input.source(),
        input.event_id(),
        Some(input.order_id()),
        "applied",
    )
    .await
    .context("failed to claim event id")?;
    let verdict = if claimed {
        let verdict = lifecycle.apply(conn, input, &mut tally).await?;
        if verdict != Verdict::Applied {
            inbox::set_outcome(
                conn,
                input.source(),
                input.event_id(),
                outcome_name(&verdict),
            )
            .await?;
        }
        verdict
    } else {
        Verdict::Duplicate
    };
    Ok(Handled {
        verdict,
        occurred_at: Some(occurred_at),
        tally,
    })
}

pub struct PaymentHandler {
    pub lifecycle: Arc<Lifecycle>,
}

impl Handler for PaymentHandler {
    type Event = Input;

    fn source(&self) -> &'static str {
        PAYMENT_SOURCE
    }

    fn reader_schema(&self) -> &'static apache_avro::Schema {
        &crate::events::avro::PAYMENT_CONFIRMATION
    }

    fn decode(
        &self,
        codec: &Codec,
        key: Option<&[u8]>,
        payload: &Normalized<'_>,
    ) -> Result<Input, DecodeError> {
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

    fn order_id<'e>(&self, event: &'e Input) -> &'e str {
        event.order_id()
    }

    async fn apply(&self, conn: &mut PgConnection, event: &Input) -> anyhow::Result<Handled> {
        let Input::Payment(p) = event else {
            anyhow::bail!("payment handler given a cancellation")
        };
        claim_and_apply(&self.lifecycle, conn, event, p.occurred_at).await
    }
}

pub struct CancellationHandler {
    pub lifecycle: Arc<Lifecycle>,
}

impl Handler for CancellationHandler {
    type Event = Input;

    fn source(&self) -> &'static str {
        CANCELLATION_SOURCE
    }

    fn reader_schema(&self) -> &'static apache_avro::Schema {
        &crate::events::avro::CANCELLATION
    }

    fn decode(
        &self,
        codec: &Codec,
        key: Option<&[u8]>,
        payload: &Normalized<'_>,
    ) -> Result<Input, DecodeError> {
        let c: Cancellation = codec.decode(payload)?;
        check_envelope(&c.event_id, &c.order_id, key)?;
        Ok(Input::Cancellation(c))
    }

    fn order_id<'e>(&self, event: &'e Input) -> &'e str {
        event.order_id()
    }

    async fn apply(&self, conn: &mut PgConnection, event: &Input) -> anyhow::Result<Handled> {
        let Input::Cancellation(c) = event else {
            anyhow::bail!("cancellation handler given a payment")
        };
        claim_and_apply(&self.lifecycle, conn, event, c.occurred_at).await
    }
}
