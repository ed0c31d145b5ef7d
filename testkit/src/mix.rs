//! A seeded mix of orders' lives across the three input topics, and an
//! independent model of what it must lead to.
//!
//! Each order gets a story: its checkout (sometimes rejected, sometimes
//! delivered twice), payments (none, correct, failed then confirmed, wrong
//! amount then correct, two correct, a provider hammering one webhook,
//! failed only) and sometimes a cancellation (sometimes delivered twice);
//! for some orders the payments and cancellations come before the checkout.
//! The stories are merged into one stream in random cross-topic order,
//! keeping each story's own order. The model is computed from the stories
//! alone, by the rules as the README states them, not by orderflow's code.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Duration as Span, Utc};
use orderflow::domain::{EventId, OrderId};
use orderflow::events::{
    Address, Cancellation, CheckoutEvent, CheckoutItem, PaymentConfirmation, PaymentStatus,
    RequestedBy,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The total of every checkout of the mix: 2 × 1,000 + 1 × 550 = 2,550,
/// 7.25 % California tax (185, rounded half-up) and 499 shipping.
pub const TOTAL: i64 = 3_234;

/// Which input topic a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Input {
    Checkouts,
    Payments,
    Cancellations,
}

impl Input {
    pub const ALL: [Input; 3] = [Input::Checkouts, Input::Payments, Input::Cancellations];

    /// The inbox source of its events (`processed_events.source`).
    pub fn source(self) -> &'static str {
        match self {
            Input::Checkouts => "checkout",
            Input::Payments => "payment",
            Input::Cancellations => "cancellation",
        }
    }

    pub fn topic(self, topics: &orderflow::config::Topics) -> &str {
        match self {
            Input::Checkouts => &topics.checkouts,
            Input::Payments => &topics.payment_confirmations,
            Input::Cancellations => &topics.cancellations,
        }
    }
}

/// One message to produce.
#[derive(Debug, Clone)]
pub struct Message {
    pub input: Input,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The event id it carries (`None` for poison, which has none).
    pub event_id: Option<String>,
}

/// What one order's messages must lead to, whatever the interleaving.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub status: &'static str,
    /// payment id → refunded amount.
    pub refunds: BTreeMap<String, i64>,
    /// (payment id, status) of every payment recorded against the order.
    pub payments: BTreeSet<(String, &'static str)>,
}

#[derive(Debug, Clone, Copy)]
pub struct MixOptions {
    /// Roughly how many messages (orders are added until it is reached).
    pub events: usize,
    pub seed: u64,
    /// Prefix of the order ids, so mixes of one database do not collide.
    pub prefix: &'static str,
    /// `occurred_at` from a week in the past to an hour in the future.
    pub skewed_clocks: bool,
}

pub struct Mix {
    /// In production order.
    pub messages: Vec<Message>,
    /// By order id.
    pub model: BTreeMap<String, Expected>,
    /// Distinct (source, event id) pairs: what the inbox must hold at the end.
    pub distinct_events: BTreeSet<(&'static str, String)>,
}

enum Event {
    Checkout(Box<CheckoutEvent>),
    Payment(PaymentConfirmation),
    Cancel(Cancellation),
}

impl Mix {
    pub fn generate(options: MixOptions) -> Mix {
        let mut rng = StdRng::seed_from_u64(options.seed);
        let mut stories = Vec::new();
        let mut model = BTreeMap::new();
        let mut count = 0;
        let mut i = 0;
        while count < options.events {
            let id = format!("{}{i}", options.prefix);
            let (story, expected) = story(&mut rng, &id, i as i64, options);
            count += story.len();
            stories.push(story);
            model.insert(id, expected);
            i += 1;
        }
        let stream = merge(&mut rng, stories);
        let mut distinct_events = BTreeSet::new();
        let messages = stream
            .into_iter()
            .map(|event| {
                let message = to_message(&event);
                if let Some(id) = &message.event_id {
                    distinct_events.insert((message.input.source(), id.clone()));
                }
                message
            })
            .collect();
        Mix {
            messages,
            model,
            distinct_events,
        }
    }
}

/// Merges the stories into one stream, keeping each story's order.
fn merge(rng: &mut StdRng, stories: Vec<Vec<Event>>) -> Vec<Event> {
    let mut cursors: Vec<std::vec::IntoIter<Event>> =
        stories.into_iter().map(Vec::into_iter).collect();
    let mut stream = Vec::new();
    while !cursors.is_empty() {
        let k = rng.gen_range(0..cursors.len());
        match cursors[k].next() {
            Some(event) => stream.push(event),
            None => {
                cursors.swap_remove(k);
            }
        }
    }
    stream
}

fn to_message(event: &Event) -> Message {
    let (input, order_id, event_id, payload) = match event {
        Event::Checkout(c) => (
            Input::Checkouts,
            &c.order_id,
            &c.event_id,
            serde_json::to_vec(c),
        ),
        Event::Payment(p) => (
            Input::Payments,
            &p.order_id,
            &p.event_id,
            serde_json::to_vec(p),
        ),
        Event::Cancel(c) => (
            Input::Cancellations,
            &c.order_id,
            &c.event_id,
            serde_json::to_vec(c),
        ),
    };
    Message {
        input,
        key: Some(order_id.as_str().as_bytes().to_vec()),
        payload: payload.expect("events serialise"),
        event_id: Some(event_id.to_string()),
    }
}

fn event_id(rng: &mut StdRng) -> EventId {
    EventId::parse(&format!("{:032x}", rng.gen::<u128>())).expect("32 hex digits")
}

fn occurred_at(rng: &mut StdRng, skewed: bool) -> DateTime<Utc> {
    let now = Utc::now();
    if skewed {
        now + Span::seconds(rng.gen_range(-7 * 86_400..=3_600))
    } else {
        now
    }
}

/// The address every test checkout ships to (taxed by the California row).
pub fn california() -> Address {
    Address {
        street: "1 Market St".into(),
        city: "San Francisco".into(),
        state: "CA".into(),
        zip_code: "94105".into(),
        country: "US".into(),
    }
}

/// A valid checkout shipped to California, totalling [`TOTAL`].
pub fn checkout(
    order_id: &str,
    cart_id: i64,
    event_id: EventId,
    at: DateTime<Utc>,
) -> CheckoutEvent {
    let address = california();
    let item = |sku: &str, quantity, unit_price_minor| CheckoutItem {
        sku: sku.into(),
        name: format!("Thing {sku}"),
        quantity,
        unit_price_minor,
    };
    CheckoutEvent {
        event_id,
        order_id: OrderId::parse(order_id).expect("mix order ids are valid"),
        cart_id,
        user_id: cart_id % 50,
        currency: "USD".into(),
        items: vec![item("SKU-A", 2, 1_000), item("SKU-B", 1, 550)],
        shipping_address: address.clone(),
        billing_address: address,
        payment_method: "card".into(),
        occurred_at: at,
    }
}

/// One order's messages, in the order they must be produced per topic, and
/// what they must lead to.
fn story(rng: &mut StdRng, id: &str, cart: i64, options: MixOptions) -> (Vec<Event>, Expected) {
    let skewed = options.skewed_clocks;
    let at = occurred_at(rng, skewed);
    let mut co = checkout(id, cart, event_id(rng), at);
    let rejected = rng.gen_bool(0.1);
    if rejected {
        co.items[0].quantity = 0;
    }
    let payments = payments(rng, id, skewed);
    let mut cancels = Vec::new();
    if rng.gen_bool(0.2) {
        let c = Cancellation {
            event_id: event_id(rng),
            order_id: co.order_id.clone(),
            reason: "changed my mind".into(),
            requested_by: RequestedBy::Customer,
            occurred_at: occurred_at(rng, skewed),
        };
        if rng.gen_bool(0.3) {
            cancels.push(c.clone()); // delivered twice
        }
        cancels.push(c);
    }
    let expected = expect(rejected, !cancels.is_empty(), &payments);
    let mut story = Vec::new();
    let early = rng.gen_bool(0.25);
    if !early {
        story.push(Event::Checkout(Box::new(co.clone())));
    }
    let (mut p, mut c) = (
        payments.into_iter().peekable(),
        cancels.into_iter().peekable(),
    );
    while p.peek().is_some() || c.peek().is_some() {
        if c.peek().is_none() || (p.peek().is_some() && rng.gen_bool(0.6)) {
            story.push(Event::Payment(p.next().expect("peeked")));
        } else {
            story.push(Event::Cancel(c.next().expect("peeked")));
        }
    }
    if early {
        story.push(Event::Checkout(Box::new(co.clone())));
    }
    if rng.gen_bool(0.1) {
        story.push(Event::Checkout(Box::new(co))); // the same checkout delivered twice
    }
    (story, expected)
}

/// An order's payments, by pattern.
fn payments(rng: &mut StdRng, id: &str, skewed: bool) -> Vec<PaymentConfirmation> {
    let pattern = rng.gen_range(0..100);
    let mut make = PaymentMaker { rng, id, skewed };
    let mut make = |n: u32, status, amount| make.make(n, status, amount);
    use PaymentStatus::{Confirmed, Failed};
    match pattern {
        0..15 => vec![],
        15..50 => vec![make(1, Confirmed, TOTAL)],
        50..60 => vec![make(1, Failed, TOTAL), make(2, Confirmed, TOTAL)],
        60..65 => vec![make(1, Failed, TOTAL), make(1, Confirmed, TOTAL)],
        65..75 => vec![make(1, Confirmed, TOTAL - 7), make(2, Confirmed, TOTAL)],
        75..85 => vec![make(1, Confirmed, TOTAL), make(2, Confirmed, TOTAL)],
        85..92 => {
            // A provider hammering one webhook: the same event three times,
            // then a new event id for the same payment.
            let p = make(1, Confirmed, TOTAL);
            let mut retry = p.clone();
            retry.event_id = EventId::parse(&format!("retry-{}", p.event_id)).expect("valid id");
            vec![p.clone(), p.clone(), p, retry]
        }
        _ => vec![make(1, Failed, TOTAL)],
    }
}

struct PaymentMaker<'a> {
    rng: &'a mut StdRng,
    id: &'a str,
    skewed: bool,
}

impl PaymentMaker<'_> {
    fn make(&mut self, n: u32, status: PaymentStatus, amount: i64) -> PaymentConfirmation {
        PaymentConfirmation {
            event_id: event_id(self.rng),
            order_id: OrderId::parse(self.id).expect("mix order ids are valid"),
            payment_id: format!("pay-{}-{n}", self.id),
            status,
            amount_minor: amount,
            currency: "USD".into(),
            provider: "fakepay".into(),
            failure_reason: (status == PaymentStatus::Failed).then(|| "card declined".into()),
            occurred_at: occurred_at(self.rng, self.skewed),
        }
    }
}

/// The rules, stated on the facts rather than simulated step by step: they
/// were chosen so that final states and refunds do not depend on the
/// interleaving across topics (docs/lifecycle.md).
fn expect(rejected: bool, cancelled: bool, payments: &[PaymentConfirmation]) -> Expected {
    let mut seen = BTreeSet::new();
    let mut expected = Expected::default();
    let (mut correct, mut failed) = (Vec::new(), false);
    for p in payments {
        if !seen.insert((p.payment_id.clone(), p.status.as_str())) {
            continue; // a duplicate: same payment, same status
        }
        expected
            .payments
            .insert((p.payment_id.clone(), p.status.as_str()));
        match p.status {
            PaymentStatus::Failed => failed = true,
            PaymentStatus::Confirmed if rejected || p.amount_minor != TOTAL => {
                expected
                    .refunds
                    .insert(p.payment_id.clone(), p.amount_minor);
            }
            PaymentStatus::Confirmed => correct.push(p.payment_id.clone()),
        }
    }
    let refund_all = rejected || cancelled;
    for (k, payment) in correct.iter().enumerate() {
        if refund_all || k > 0 {
            expected.refunds.insert(payment.clone(), TOTAL);
        }
    }
    expected.status = if rejected {
        "REJECTED"
    } else if cancelled {
        "CANCELLED"
    } else if !correct.is_empty() {
        "PAID"
    } else if failed {
        "PAYMENT_FAILED"
    } else {
        "PENDING_PAYMENT"
    };
    expected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_seeded_sized_and_keeps_each_story_in_order() {
        let options = MixOptions {
            events: 2_000,
            seed: 7,
            prefix: "m-",
            skewed_clocks: false,
        };
        let a = Mix::generate(options);
        let b = Mix::generate(options);
        assert!(a.messages.len() >= 2_000 && a.messages.len() < 2_020);
        let ids = |m: &Mix| -> Vec<(Option<Vec<u8>>, Option<String>)> {
            m.messages
                .iter()
                .map(|m| (m.key.clone(), m.event_id.clone()))
                .collect()
        };
        assert!(ids(&a) == ids(&b), "the same seed gives the same stream");
        let statuses: BTreeSet<&str> = a.model.values().map(|e| e.status).collect();
        assert_eq!(statuses.len(), 5, "every final status occurs: {statuses:?}");
        assert!(
            a.distinct_events.len() < a.messages.len(),
            "duplicates exist"
        );
    }

    #[test]
    fn the_model_refunds_what_cannot_be_kept() {
        let pay = |id: &str, status, amount| PaymentConfirmation {
            event_id: EventId::parse(id).unwrap(),
            order_id: OrderId::parse("o").unwrap(),
            payment_id: id.into(),
            status,
            amount_minor: amount,
            currency: "USD".into(),
            provider: "p".into(),
            failure_reason: None,
            occurred_at: Utc::now(),
        };
        use PaymentStatus::*;
        let two = [pay("p1", Confirmed, TOTAL), pay("p2", Confirmed, TOTAL)];
        let paid = expect(false, false, &two);
        assert_eq!(paid.status, "PAID");
        assert_eq!(paid.refunds, BTreeMap::from([("p2".into(), TOTAL)]));
        let cancelled = expect(false, true, &two);
        assert_eq!(cancelled.refunds.len(), 2);
        let wrong = expect(false, false, &[pay("p1", Confirmed, 5)]);
        assert_eq!((wrong.status, wrong.refunds.len()), ("PENDING_PAYMENT", 1));
        let failed = expect(false, false, &[pay("p1", Failed, TOTAL)]);
        assert_eq!(failed.status, "PAYMENT_FAILED");
        assert_eq!(expect(true, false, &[]).status, "REJECTED");
    }
}
