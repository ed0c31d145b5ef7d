//! `occurred_at` on the wire: Avro `timestamp-millis`, so JSON carries epoch
//! milliseconds. RFC 3339 strings are accepted on input as a courtesy to
//! hand-written JSON; output is always milliseconds.

use chrono::{DateTime, TimeZone, Utc};
use serde::{de, Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_i64(at.timestamp_millis())
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Millis(i64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Millis(ms) => Utc
            .timestamp_millis_opt(ms)
            .single()
            .ok_or_else(|| de::Error::custom(format!("timestamp {ms} ms is out of range"))),
        Raw::Text(s) => DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| de::Error::custom(format!("timestamp {s:?} is not RFC 3339: {e}"))),
    }
}
