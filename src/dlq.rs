//! `orderflow dlq list|replay`: read a dead-letter topic and act on it.
//!
//! A dead letter (`events::dead_letter`) carries its original key and
//! payload and says why in its headers. `list` reads a dead-letter topic
//! from the beginning and shows each letter with its reason; `replay` sends
//! the original key and payload back to the topic it came from, once the
//! cause is fixed. Replaying is harmless to repeat: the inbox records every
//! applied event id, so a second copy changes nothing.
//!
//! Neither command joins a consumer group or commits offsets: reading a
//! dead-letter topic never moves anyone's position. The read ends a moment
//! after the partitions' ends as the broker reported them at start (Tansu's
//! are one short, docs/tansu.md), or after [`IDLE`] without a message.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::events::DeadLetterClass;

/// A read ends after this long without a message.
pub const IDLE: Duration = Duration::from_secs(3);
/// ... or this long after the last one, once every partition's reported
/// end was reached.
const LINGER: Duration = Duration::from_secs(1);
const KAFKA_TIMEOUT: Duration = Duration::from_secs(10);

/// One dead letter as read from its topic.
#[derive(Debug, Clone)]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<DateTime<Utc>>,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: HashMap<String, String>,
}

impl Letter {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }

    /// Why it was dead-lettered (`error` header).
    pub fn reason(&self) -> &str {
        self.header("error")
    }

    pub fn class(&self) -> Option<DeadLetterClass> {
        DeadLetterClass::parse(self.header("error_class"))
    }

    pub fn source_topic(&self) -> &str {
        self.header("source_topic")
    }

    /// Where the original was read: `topic[partition]@offset`.
    pub fn source(&self) -> String {
        format!(
            "{}[{}]@{}",
            self.source_topic(),
            self.header("source_partition"),
            self.header("source_offset")
        )
    }

    /// The payload was cut when dead-lettered (it cannot be replayed).
    pub fn truncated(&self) -> bool {
        self.headers.contains_key("payload_truncated")
    }

    /// One line for a terminal: where, when, class, source, key, reason.
    pub fn line(&self) -> String {
        format!(
            "{}@{}  {}  {:<8}  {}  key={}  {}",
            self.partition,
            self.offset,
            self.timestamp.map_or("-".to_owned(), |t| t
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()),
            self.header("error_class"),
            self.source(),
            self.key
                .as_deref()
                .map_or("-".into(), String::from_utf8_lossy),
            self.reason(),
        )
    }

    /// The letter as JSON (payload as text, lossily).
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "partition": self.partition,
            "offset": self.offset,
            "timestamp": self.timestamp,
            "class": self.header("error_class"),
            "reason": self.reason(),
            "source_topic": self.source_topic(),
            "source_partition": self.header("source_partition").parse::<i32>().ok(),
            "source_offset": self.header("source_offset").parse::<i64>().ok(),
            "key": self.key.as_deref().map(String::from_utf8_lossy),
            "payload": String::from_utf8_lossy(&self.payload),
            "payload_truncated": self.truncated(),
        })
    }
}

/// Which letters a command acts on.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub class: Option<DeadLetterClass>,
    /// Only letters written at or after this time.
    pub since: Option<DateTime<Utc>>,
}

impl Filter {
    pub fn matches(&self, letter: &Letter) -> bool {
        self.class.is_none_or(|c| letter.class() == Some(c))
            && self
                .since
                .is_none_or(|since| letter.timestamp.is_some_and(|t| t >= since))
    }
}

/// Parses `--since`: an RFC 3339 time, or an age such as `30m`, `2h`, `7d`.
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is neither an RFC 3339 time nor an age like 30m, 2h, 7d"))?;
    let age = match unit {
        "s" => chrono::Duration::seconds(n),
        "m" => chrono::Duration::minutes(n),
        "h" => chrono::Duration::hours(n),
        "d" => chrono::Duration::days(n),
        _ => return Err(format!("unknown unit in {text:?}: use s, m, h or d")),
    };
    Ok(Utc::now() - age)
}

/// Reads every letter of `topic` that `filter` lets through, in partition
/// order within each partition, calling `each` for it.
pub async fn read(
    settings: &Settings,
    topic: &str,
    filter: &Filter,
    mut each: impl FnMut(Letter) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = crate::kafka::reader_config(settings)
        .create()
        .context("failed to create Kafka consumer")?;
    // Only partitions the broker lists: asking Tansu for one that does not
    // exist breaks its storage (docs/tansu.md).
    let ends = partition_ends(&consumer, topic).await?;
    let mut tpl = TopicPartitionList::new();
    for p in ends.keys() {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)
            .context("failed to build the assignment")?;
    }
    consumer
        .assign(&tpl)
        .with_context(|| format!("failed to assign the partitions of {topic}"))?;
    // Partitions not yet read up to the end the broker reported.
    let mut remaining: HashMap<i32, i64> = ends
        .into_iter()
        .filter(|(_, (low, high))| high > low)
        .map(|(p, (_, high))| (p, high))
        .collect();
    let mut stream = consumer.stream();
    let started = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        // Tansu reports ends one short (and a one-record partition as
        // empty), so the read lingers a moment past them; before the first
        // record it waits the longer IDLE (connecting, first fetch).
        let wait = match last {
            None => IDLE.saturating_sub(started.elapsed()),
            Some(at) if remaining.is_empty() => LINGER.saturating_sub(at.elapsed()),
            Some(at) => IDLE.saturating_sub(at.elapsed()),
        };
        let msg = match tokio::time::timeout(wait, stream.next()).await {
            Err(_) | Ok(None) => break,
            Ok(Some(result)) => result.with_context(|| format!("failed to read {topic}"))?,
        };
        last = Some(Instant::now());
        let (partition, offset) = (msg.partition(), msg.offset());
        if remaining
            .get(&partition)
            .is_some_and(|end| offset + 1 >= *end)
        {
            remaining.remove(&partition);
        }
        let letter = Letter {
            partition,
            offset,
            timestamp: msg
                .timestamp()
                .to_millis()
                .and_then(DateTime::<Utc>::from_timestamp_millis),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().unwrap_or_default().to_vec(),
            headers: msg
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| {
                            let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                            (h.key.to_owned(), value.into_owned())
                        })
                        .collect()
                })
                .unwrap_or_default(),
        };
        if filter.matches(&letter) {
            each(letter)?;
        }
    }
    Ok(())
}

/// Each partition's (low, high) watermarks.
async fn partition_ends(
    consumer: &StreamConsumer,
    topic: &str,
) -> anyhow::Result<HashMap<i32, (i64, i64)>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .context("failed to read topic metadata from the broker")?;
    let partitions: Vec<i32> = match metadata.topics().iter().find(|t| t.name() == topic) {
        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
            t.partitions().iter().map(|p| p.id()).collect()
        }
        _ => bail!("topic {topic} does not exist"),
    };
    let mut ends = HashMap::new();
    for p in partitions {
        let marks = consumer
            .fetch_watermarks(topic, p, KAFKA_TIMEOUT)
            .with_context(|| format!("failed to read the offsets of {topic}[{p}]"))?;
        ends.insert(p, marks);
    }
    Ok(ends)
}

/// What a replay did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// Letters sent back to their source topic (or that would be, dry run).
    pub sent: u64,
    /// Letters whose payload was cut when dead-lettered: not replayable.
    pub truncated: u64,
    /// Letters from a topic that is not one of orderflow's input topics.
    pub foreign: u64,
}

/// Sends the original key and payload of every letter of `topic` that
/// `filter` lets through back to its source topic, in the order read;
/// `dry_run` only counts. `progress` is called every 1,000 letters.
pub async fn replay(
    settings: &Settings,
    topic: &str,
    filter: &Filter,
    dry_run: bool,
    mut progress: impl FnMut(&Replayed),
) -> anyhow::Result<Replayed> {
    let inputs = settings.topics.inputs();
    let mut letters = Vec::new();
    let mut done = Replayed::default();
    read(settings, topic, filter, |letter| {
        if letter.truncated() {
            tracing::warn!(
                partition = letter.partition,
                offset = letter.offset,
                "payload was cut when dead-lettered; not replayed"
            );
            done.truncated += 1;
        } else if !inputs.contains(&letter.source_topic()) {
            tracing::warn!(
                partition = letter.partition,
                offset = letter.offset,
                source = letter.source_topic(),
                "not from an orderflow input topic; not replayed"
            );
            done.foreign += 1;
        } else {
            letters.push(letter);
        }
        Ok(())
    })
    .await?;
    if dry_run {
        done.sent = letters.len() as u64;
        return Ok(done);
    }
    let producer = crate::produce::input_producer(settings)?;
    for letter in &letters {
        let mut record = FutureRecord::<[u8], [u8]>::to(letter.source_topic())
            .payload(letter.payload.as_slice());
        if let Some(key) = &letter.key {
            record = record.key(key.as_slice());
        }
        // One at a time: a replay keeps the letters' order per order id, and
        // dead-letter topics are small.
        producer
            .send(record, KAFKA_TIMEOUT * 3)
            .await
            .map_err(|(e, _)| e)
            .with_context(|| {
                format!(
                    "failed to replay {topic}[{}]@{} to {} ({} replayed before it)",
                    letter.partition,
                    letter.offset,
                    letter.source_topic(),
                    done.sent
                )
            })?;
        done.sent += 1;
        if done.sent % 1000 == 0 {
            progress(&done);
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(class: &str, at: DateTime<Utc>) -> Letter {
        Letter {
            partition: 0,
            offset: 7,
            timestamp: Some(at),
            key: Some(b"o-1".to_vec()),
            payload: b"{}".to_vec(),
            headers: [
                ("error".to_owned(), "bad json".to_owned()),
                ("error_class".to_owned(), class.to_owned()),
                ("source_topic".to_owned(), "checkouts".to_owned()),
                ("source_partition".to_owned(), "2".to_owned()),
                ("source_offset".to_owned(), "41".to_owned()),
            ]
            .into(),
        }
    }

    #[test]
    fn filters_by_class_and_age() {
        let now = Utc::now();
        let old = letter("decode", now - chrono::Duration::hours(3));
        let db = letter("database", now);
        let by_class = Filter {
            class: Some(DeadLetterClass::Database),
            since: None,
        };
        assert!(!by_class.matches(&old) && by_class.matches(&db));
        let recent = Filter {
            class: None,
            since: Some(parse_since("1h").unwrap()),
        };
        assert!(!recent.matches(&old) && recent.matches(&db));
        assert!(Filter::default().matches(&old));
    }

    #[test]
    fn since_takes_times_and_ages_and_refuses_the_rest() {
        let t = parse_since("2026-11-30T08:00:00Z").unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-30T08:00:00+00:00");
        let d = Utc::now() - parse_since("2d").unwrap();
        assert!((d.num_seconds() - 2 * 86_400).abs() < 5);
        assert!(parse_since("yesterday").is_err());
        assert!(parse_since("5w").is_err());
        assert!(parse_since("").is_err());
    }

    #[test]
    fn a_line_says_where_why_and_from_where() {
        let l = letter("decode", Utc::now());
        let line = l.line();
        assert!(line.starts_with("0@7  "), "{line}");
        assert!(
            line.contains("decode") && line.contains("checkouts[2]@41"),
            "{line}"
        );
        assert!(line.ends_with("key=o-1  bad json"), "{line}");
        assert_eq!(l.json()["source_offset"], 41);
    }
}
