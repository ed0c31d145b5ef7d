//! Dead-letter records: the original key and payload, with why and where from
//! in headers. They travel through the outbox like every other record, so a
//! dead letter is committed together with the offset-advancing batch.

use crate::store::outbox::NewRecord;

/// Payloads above this are cut so the dead letter itself cannot be refused by
/// the broker (default `message.max.bytes` is 1 MB); a header says so.
pub const MAX_DLQ_PAYLOAD: usize = 900 * 1024;

/// Where a failed message came from.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
}

/// Builds the dead-letter record for a message that failed with `reason`.
/// Headers: `error`, `error_class`, `source_topic`, `source_partition`,
/// `source_offset`, and `payload_truncated` when the payload was cut.
pub fn from_failed_message<'a>(
    dlq_topic: &'a str,
    source: &Source<'a>,
    class: &str,
    reason: &str,
) -> NewRecord<'a> {
    let payload = source.payload.unwrap_or_default();
    let truncated = payload.len() > MAX_DLQ_PAYLOAD;
    let mut headers = vec![
        ("error".to_owned(), reason.chars().take(4096).collect()),
        ("error_class".to_owned(), class.to_owned()),
        ("source_topic".to_owned(), source.topic.to_owned()),
        ("source_partition".to_owned(), source.partition.to_string()),
        ("source_offset".to_owned(), source.offset.to_string()),
    ];
    if truncated {
        headers.push(("payload_truncated".to_owned(), payload.len().to_string()));
    }
    NewRecord {
        kind: crate::store::outbox::RecordKind::Raw,
        topic: dlq_topic,
        key: source.key,
        payload: &payload[..payload.len().min(MAX_DLQ_PAYLOAD)],
        headers,
    }
}
