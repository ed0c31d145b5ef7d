//! The dead-letter format, a public contract: a message orderflow cannot use
//! goes to `<input topic>.dlq` with its original key and payload (cut at
//! [`MAX_DLQ_PAYLOAD`]) and these headers: `error` (why), `error_class`
//! ([`DeadLetterClass`]), `source_topic`, `source_partition`, `source_offset`,
//! and `payload_truncated` (the original size) when the payload was cut.

/// Payloads above this are cut so the dead letter itself cannot be refused by
/// the broker (default `message.max.bytes` is 1 MB); a header says so.
pub const MAX_DLQ_PAYLOAD: usize = 900 * 1024;

/// The longest `error` header, in characters.
const MAX_REASON_CHARS: usize = 4096;

/// Why a message was dead-lettered, as the `error_class` header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterClass {
    /// The bytes are not an event: not JSON or Avro, wrong types, too large,
    /// an invalid id, a key that is not its order id.
    Decode,
    /// A well-formed event the rules cannot record against an order (its
    /// order id belongs to another cart).
    Invalid,
    /// The database refused the message alone, the same way every time.
    Database,
}

impl DeadLetterClass {
    pub const ALL: [DeadLetterClass; 3] = [
        DeadLetterClass::Decode,
        DeadLetterClass::Invalid,
        DeadLetterClass::Database,
    ];

    /// The class an `error_class` header names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DeadLetterClass::Decode => "decode",
            DeadLetterClass::Invalid => "invalid",
            DeadLetterClass::Database => "database",
        }
    }
}

/// A message that failed, with where it came from and why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub class: DeadLetterClass,
    pub reason: &'a str,
    pub source_topic: &'a str,
    pub source_partition: i32,
    pub source_offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

impl DeadLetter<'_> {
    /// The payload as published: cut to [`MAX_DLQ_PAYLOAD`].
    pub fn payload(&self) -> &[u8] {
        let payload = self.payload.unwrap_or_default();
        &payload[..payload.len().min(MAX_DLQ_PAYLOAD)]
    }

    /// The headers described in the module documentation.
    pub fn headers(&self) -> Vec<(String, String)> {
        let size = self.payload.map_or(0, <[u8]>::len);
        let mut headers = vec![
            (
                "error".to_owned(),
                self.reason.chars().take(MAX_REASON_CHARS).collect(),
            ),
            ("error_class".to_owned(), self.class.as_str().to_owned()),
            ("source_topic".to_owned(), self.source_topic.to_owned()),
            (
                "source_partition".to_owned(),
                self.source_partition.to_string(),
            ),
            ("source_offset".to_owned(), self.source_offset.to_string()),
        ];
        if size > MAX_DLQ_PAYLOAD {
            headers.push(("payload_truncated".to_owned(), size.to_string()));
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_oversized_payload_is_cut_and_says_how_big_it_was() {
        let big = vec![b'x'; MAX_DLQ_PAYLOAD + 10];
        let letter = DeadLetter {
            class: DeadLetterClass::Decode,
            reason: "too large",
            source_topic: "checkouts",
            source_partition: 3,
            source_offset: 42,
            key: None,
            payload: Some(&big),
        };
        assert_eq!(letter.payload().len(), MAX_DLQ_PAYLOAD);
        let headers = letter.headers();
        let get = |k: &str| {
            headers
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get("error_class"), Some("decode"));
        assert_eq!(get("source_offset"), Some("42"));
        assert_eq!(get("payload_truncated"), Some("921610"));
    }
}
