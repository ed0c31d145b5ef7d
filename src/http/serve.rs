//! The HTTP/1.1 server loop: axum's router on hyper, with the connection
//! settings live streams need, and live streams on a writer of their own.
//!
//! `axum::serve` would do, but it offers no hyper settings, and a held-open
//! stream costs its connection's buffers for as long as it lasts: hyper
//! keeps a read buffer and a write buffer of 8 KB each for every connection
//! and cannot make them smaller. So the first request head of a connection
//! is read here: a `GET …/events` (a live stream) is answered by
//! [`event_stream`], which keeps no buffer once the head is parsed; anything
//! else goes to hyper with the bytes already read in front of the socket.
//! Both pass the request through the same router. For hyper: its read
//! buffer is capped at its floor (8 KB), so a connection waiting after its
//! request keeps the buffer it read the request into instead of growing it
//! to 16 KB (request heads over 8 KB get 431); `TCP_NODELAY`, so a small
//! event is written at once rather than after the previous one's
//! acknowledgement; request heads must arrive within 30 s.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::event_stream::{self, Head};

/// hyper's minimum for `max_buf_size`, and the longest head read here.
const MAX_BUF: usize = 8192;
/// Time for a client to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `router` on `listener` until `stop`, then waits for open
/// connections to finish their responses (live streams end on the same
/// signal).
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let connections = TaskTracker::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_BUF)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait, don't spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            router.clone(), // a reference count
            http.clone(),
            graceful.watcher(),
            stop.clone(),
        ));
    }
    graceful.shutdown().await;
    connections.close();
    connections.wait().await;
}

/// One connection: its first head decides who serves it.
async fn connection(
    mut stream: TcpStream,
    router: Router,
    http: hyper::server::conn::http1::Builder,
    watcher: Watcher,
    stop: CancellationToken,
) {
    let first = tokio::select! {
        _ = stop.cancelled() => return,
        first = tokio::time::timeout(HEAD_TIMEOUT, first_head(&mut stream)) => first,
    };
    let read = match first {
        Ok(Ok(read)) => read,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP connection failed before its first request");
            return;
        }
        Err(_) => return, // no head within the timeout: close, as hyper does
    };
    match read {
        First::Nothing => {}
        First::Stream(request) => {
            drop(watcher);
            event_stream::serve(stream, *request, router, stop).await;
        }
        First::Other(read) => {
            let io = TokioIo::new(Prefixed {
                read,
                at: 0,
                stream,
            });
            let service = TowerToHyperService::new(router);
            if let Err(e) = watcher.watch(http.serve_connection(io, service)).await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        }
    }
}

enum First {
    /// Closed before sending anything.
    Nothing,
    /// A live stream's request.
    Stream(Box<Request<Body>>),
    /// Anything else: the bytes read so far, for hyper.
    Other(Vec<u8>),
}

/// Reads until the request line shows whether this is a live stream, and
/// for one until its head is complete.
async fn first_head(stream: &mut TcpStream) -> io::Result<First> {
    let mut read = Vec::with_capacity(1024);
    loop {
        if read.len() >= MAX_BUF {
            return Ok(First::Other(read));
        }
        let n = stream.read_buf(&mut read).await?;
        if n == 0 {
            return Ok(if read.is_empty() {
                First::Nothing
            } else {
                First::Other(read)
            });
        }
        match event_stream::head(&read) {
            Head::Partial => {}
            Head::Stream(request) => return Ok(First::Stream(request)),
            Head::Other => return Ok(First::Other(read)),
        }
    }
}

/// A socket with bytes already read from it in front.
struct Prefixed {
    read: Vec<u8>,
    at: usize,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let n = buf.remaining().min(this.read.len() - this.at);
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new(); // give the memory back
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
