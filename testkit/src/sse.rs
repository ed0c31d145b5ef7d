//! A minimal server-sent-events client over reqwest, for the tests and the
//! benchmark: it parses `event:`, `id:`, `data:` and comment lines as a
//! browser's `EventSource` does (one event per blank line).

use std::time::Duration;

use anyhow::Context;

/// One dispatched event, or a comment (heartbeat) when `comment` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
    pub retry: Option<u64>,
    pub comment: Option<String>,
}

impl SseEvent {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null)
    }
}

pub struct SseStream {
    response: reqwest::Response,
    buffer: Vec<u8>,
    pending: std::collections::VecDeque<SseEvent>,
    current: SseEvent,
}

/// Opens `url` with an optional `Last-Event-ID`; `Err` carries the status
/// and body of a non-stream answer.
pub async fn connect(
    http: &reqwest::Client,
    url: &str,
    last_event_id: Option<&str>,
) -> Result<SseStream, (u16, String)> {
    let mut request = http.get(url).header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.map_err(|e| (0, e.to_string()))?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.text().await.unwrap_or_default();
        return Err((status, body));
    }
    Ok(SseStream {
        response,
        buffer: Vec::new(),
        pending: Default::default(),
        current: SseEvent::default(),
    })
}

impl SseStream {
    /// The next event or comment; `Ok(None)` when the server closed the
    /// stream; `Err` on timeout.
    pub async fn next_any(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .context("timed out waiting for a server-sent event")?
                .context("stream failed")?;
            let Some(chunk) = chunk else {
                return Ok(None);
            };
            self.buffer.extend_from_slice(&chunk);
            self.parse();
        }
    }

    /// The next event, skipping comments and `retry:`-only events.
    pub async fn next(&mut self, timeout: Duration) -> anyhow::Result<Option<SseEvent>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_any(left).await? {
                Some(e) if e.comment.is_some() || (e.data.is_empty() && e.event.is_empty()) => {}
                other => return Ok(other),
            }
        }
    }

    fn parse(&mut self) {
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                let event = std::mem::take(&mut self.current);
                if event != SseEvent::default() {
                    self.pending.push_back(event);
                }
                continue;
            }
            if let Some(comment) = line.strip_prefix(':') {
                self.pending.push_back(SseEvent {
                    comment: Some(comment.trim().to_owned()),
                    ..SseEvent::default()
                });
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.current.event = value.to_owned(),
                "id" => self.current.id = Some(value.to_owned()),
                "retry" => self.current.retry = value.parse().ok(),
                "data" => {
                    if !self.current.data.is_empty() {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                }
                _ => {}
            }
        }
    }
}
