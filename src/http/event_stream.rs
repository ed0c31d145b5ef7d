//! A connection whose first request opens a live stream, answered without
//! hyper so that an idle stream holds no buffer.
//!
//! The head (read by `serve`, parsed once by [`head`]) becomes a request
//! for the same router as every other route; the response is written here: head, then
//! the body in chunks as it comes (or with its length when it has one, such
//! as a 404), then the connection closes (`Connection: close`: a client
//! opens a new one for its next request). Between events the connection
//! holds its socket and the response body only; each chunk is written from
//! a buffer made for it. A client that closes is noticed while idle (its
//! socket turns readable at end of file); one that stops reading is dropped
//! after [`WRITE_TIMEOUT`] of a blocked write. At shutdown the body ends
//! (the streams end on the same signal) and the last chunk is written, or
//! the connection is dropped [`SHUTDOWN_GRACE`] after the signal.

use std::time::Duration;

use axum::body::Body;
use axum::body::HttpBody;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, Version};
use axum::Router;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long one chunk may wait for a client that does not read.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the stop signal a connection may still write.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Whether a request line asks for a live stream: `GET` of a path ending in
/// `/events`, over HTTP/1.1 (an HTTP/1.0 client cannot take chunks). The
/// router still decides what answers it; this only picks the writer.
pub fn is_stream_request_line(line: &[u8]) -> bool {
    let mut parts = line.split(|b| *b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let path = target.split(|b| *b == b'?').next().unwrap_or_default();
    method == b"GET"
        && version == b"HTTP/1.1"
        && path.starts_with(b"/")
        && path.ends_with(b"/events")
}

/// What the bytes read so far from a connection are.
pub enum Head {
    /// Not yet a whole head of a stream request.
    Partial,
    /// A whole head of a live stream request, with nothing after it, as a
    /// request for the router.
    Stream(Box<Request<Body>>),
    /// Anything else (another request, a body, pipelined bytes, a head
    /// httparse refuses): hyper answers it.
    Other,
}

/// Reads `read` as the start of a connection (`serve` reads until this is
/// not `Partial`). The head is parsed once, here.
pub fn head(read: &[u8]) -> Head {
    let Some(line_end) = read.windows(2).position(|w| w == b"\r\n") else {
        return Head::Partial;
    };
    if !is_stream_request_line(&read[..line_end]) {
        return Head::Other;
    }
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut headers);
    match parsed.parse(read) {
        Ok(httparse::Status::Partial) => return Head::Partial,
        Ok(httparse::Status::Complete(len)) if len == read.len() => {}
        _ => return Head::Other,
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_11)
        .uri(parsed.path.unwrap_or("/"));
    for h in parsed.headers.iter() {
        let announces_body = h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0");
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Head::Other;
        };
        if announces_body {
            return Head::Other;
        }
        request = request.header(name, value);
    }
    request
        .body(Body::empty())
        .map_or(Head::Other, |r| Head::Stream(Box::new(r)))
}

/// Serves `request` (a live stream's, from [`head`]) on `stream`, then
/// closes it.
pub async fn serve(
    mut stream: TcpStream,
    request: Request<Body>,
    router: Router,
    stop: CancellationToken,
) {
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let write = respond(&mut stream, response);
    let outcome = tokio::select! {
        outcome = write => outcome,
        _ = async {
            stop.cancelled().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    if let Err(e) = outcome {
        tracing::debug!(error = %e, "live stream connection ended with an error");
    }
}

/// Writes `response`: its head, then its body, then closes.
async fn respond(stream: &mut TcpStream, response: Response<Body>) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let length = body.size_hint().exact();
    let mut body = body.into_data_stream();
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(b"HTTP/1.1 ");
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONNECTION
            || name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n");
    match length {
        Some(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    head.extend_from_slice(b"connection: close\r\n\r\n");
    write(stream, &head).await?;
    drop(head);

    loop {
        let frame = tokio::select! {
            data = body.next() => data,
            gone = client_gone(stream) => {
                if gone {
                    return Ok(());
                }
                continue;
            }
        };
        let Some(data) = frame else { break };
        let data = data.map_err(std::io::Error::other)?;
        if data.is_empty() {
            continue;
        }
        if length.is_some() {
            write(stream, &data).await?;
        } else {
            let mut chunk = Vec::with_capacity(data.len() + 12);
            chunk.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            chunk.extend_from_slice(&data);
            chunk.extend_from_slice(b"\r\n");
            write(stream, &chunk).await?;
        }
    }
    if length.is_none() {
        write(stream, b"0\r\n\r\n").await?;
    }
    stream.shutdown().await
}

async fn write(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, stream.write_all(bytes)).await {
        Ok(written) => written,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client stopped reading",
        )),
    }
}

/// Waits until the socket has something to read: `true` when the client
/// closed (or the socket failed); `false` when it sent bytes, which are
/// dropped (nothing more is read on a connection that closes after this
/// response).
async fn client_gone(stream: &TcpStream) -> bool {
    if stream.readable().await.is_err() {
        return true;
    }
    let mut scratch = [0u8; 64];
    match stream.try_read(&mut scratch) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_1_1_gets_of_event_paths_are_streams() {
        assert!(is_stream_request_line(b"GET /orders/o-1/events HTTP/1.1"));
        assert!(is_stream_request_line(
            b"GET /users/42/orders/events?after=3 HTTP/1.1"
        ));
        assert!(!is_stream_request_line(b"GET /orders/o-1/events HTTP/1.0"));
        assert!(!is_stream_request_line(b"HEAD /orders/o-1/events HTTP/1.1"));
        assert!(!is_stream_request_line(b"GET /orders/o-1/status HTTP/1.1"));
        assert!(!is_stream_request_line(b"GET /events/x HTTP/1.1"));
        assert!(!is_stream_request_line(
            b"GET /orders/o-1/events HTTP/1.1 x"
        ));
    }

    #[test]
    fn heads_become_requests_for_the_router() {
        let stream = |raw: &[u8]| match head(raw) {
            Head::Stream(request) => Some(*request),
            Head::Partial | Head::Other => None,
        };
        assert!(
            stream(b"GET /o/events HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").is_none()
        );
        assert!(stream(b"GET /o/events HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some());
        assert!(stream(b"GET /o/events HTTP/1.1\r\nBad Name: x\r\n\r\n").is_none());
        assert!(matches!(
            head(b"GET /o/events HTTP/1.1\r\nHost:"),
            Head::Partial
        ));
        assert!(matches!(head(b"GET /o/status HTTP/1.1\r\n"), Head::Other));
        let raw = b"GET /orders/o/events?after=2 HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n";
        let request = stream(raw).unwrap();
        assert_eq!(request.uri(), "/orders/o/events?after=2");
        assert_eq!(request.headers()["last-event-id"], "7");
        let mut pipelined = raw.to_vec();
        pipelined.extend_from_slice(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(stream(&pipelined).is_none());
    }
}
