//! Poison: messages orderflow must dead-letter with a reason, never apply,
//! never crash on and never stall a partition behind. Each has a key of its
//! own, which its dead letter keeps, so the oracle can find every one.
//!
//! Not produced: empty and null values. Tansu skips both on fetch (see
//! docs/tansu.md), so they would never reach orderflow here; the codec's
//! unit tests and the property tests cover them.

use apache_avro::Schema;
use orderflow_testkit::mix::{checkout, Input, Message};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How many kinds of poison [`poison`] cycles through.
pub const KINDS: usize = 11;

/// `n` poison messages over the three inputs; `huge` of them are 10 MB.
/// `avro` is the checkouts subject's schema id when a registry is in play.
pub fn poison(n: usize, huge: usize, seed: u64, avro: Option<u32>) -> Vec<Message> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed);
    (0..n)
        .map(|i| {
            let kind = if i < huge { usize::MAX } else { i % KINDS };
            one(&mut rng, i, kind, avro)
        })
        .collect()
}

fn one(rng: &mut StdRng, i: usize, kind: usize, avro: Option<u32>) -> Message {
    let key = format!("poison-{i}").into_bytes();
    let valid = || {
        let id = orderflow::domain::EventId::parse(&format!("poison-event-{i}")).expect("valid");
        serde_json::to_vec(&checkout(
            "someone-else",
            -(i as i64) - 1,
            id,
            chrono::Utc::now(),
        ))
        .expect("serialises")
    };
    let (input, key, payload) = match kind {
        // A valid checkout cut short.
        0 => {
            let v = valid();
            let cut = rng.gen_range(1..v.len() - 1);
            (Input::Checkouts, key, v[..cut].to_vec())
        }
        1 => (Input::Payments, key, br#"{"event_id": 5, "order_id": [1, 2]}"#.to_vec()),
        // Numbers no field can hold.
        2 => (Input::Checkouts, key, String::from_utf8(valid()).expect("utf-8").replace("\"quantity\":2", "\"quantity\":1e40").into_bytes()),
        3 => (Input::Payments, key, format!(r#"{{"event_id":"e{i}","order_id":"p{i}","payment_id":"x","status":"CONFIRMED","amount_minor":99999999999999999999999,"currency":"USD","provider":"p","occurred_at":1}}"#).into_bytes()),
        // Not UTF-8, in the value, then in the key (of a valid event).
        4 => (Input::Cancellations, key, vec![0xff, 0xfe, 0x7b, 0x00, 0x80, rng.gen()]),
        5 => {
            let mut key = vec![0xff, 0xfe];
            key.extend_from_slice(&(i as u64).to_be_bytes());
            (Input::Checkouts, key, valid())
        }
        // Confluent Avro frames: an unknown schema id, then a known one
        // with a datum that is not a checkout.
        6 => (Input::Checkouts, key, [&[0u8, 0x7f, 0xff, 0xff, 0xf0][..], b"garbage"].concat()),
        7 => {
            let id = avro.unwrap_or(1).to_be_bytes();
            (Input::Checkouts, key, [&[0u8][..], &id, &[0xff, 0xff, 0xff, 0xff, 0x0f, 1, 2]].concat())
        }
        // Well-formed JSON that is no valid event.
        8 => (Input::Checkouts, key, String::from_utf8(valid()).expect("utf-8").replace("someone-else", "has spaces").into_bytes()),
        9 => (Input::Payments, key, format!(r#"{{"event_id":"e{i}","order_id":"poison-{i}","payment_id":"x","status":"CONFIRMED","amount_minor":-5,"currency":"USD","provider":"p","occurred_at":1}}"#).into_bytes()),
        // A valid event under a key that is not its order id.
        10 => (Input::Checkouts, key, valid()),
        _ => (Input::Checkouts, key, vec![b'{'; 10 * 1024 * 1024]),
    };
    Message {
        input,
        key: Some(key),
        payload,
        event_id: None,
    }
}

/// Inserts `poison` into `messages` at random places (seeded).
pub fn interleave(messages: &mut Vec<Message>, poison: &[Message], seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xbad);
    let mut at: Vec<(usize, &Message)> = poison
        .iter()
        .map(|p| (rng.gen_range(0..=messages.len()), p))
        .collect();
    at.sort_by_key(|(position, _)| *position);
    let mut merged = Vec::with_capacity(messages.len() + poison.len());
    let mut at = at.into_iter().peekable();
    for (i, m) in std::mem::take(messages).into_iter().enumerate() {
        while let Some((_, p)) = at.next_if(|(position, _)| *position == i) {
            merged.push(p.clone());
        }
        merged.push(m);
    }
    merged.extend(at.map(|(_, p)| p.clone()));
    *messages = merged;
}

/// Re-encodes the JSON checkouts of `messages` as Confluent Avro frames
/// under schema `id` (what the registry gave `checkouts-value`).
pub fn checkouts_as_avro(messages: &mut [Message], id: u32) -> anyhow::Result<()> {
    let schema = Schema::parse_str(include_str!("../../schemas/checkout.avsc"))?;
    for m in messages
        .iter_mut()
        .filter(|m| m.input == Input::Checkouts && m.event_id.is_some())
    {
        let event: orderflow::events::CheckoutEvent = serde_json::from_slice(&m.payload)?;
        let value = apache_avro::to_value(&event)?.resolve(&schema)?;
        let datum = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()?
            .write_value_to_vec(value)?;
        m.payload = [&[0u8][..], &id.to_be_bytes(), &datum].concat();
    }
    Ok(())
}
