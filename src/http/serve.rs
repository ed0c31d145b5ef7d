//! The HTTP/1.1 server loop: axum's router on hyper, with the connection
//! settings live streams need.
//!
//! `axum::serve` would do, but it offers no hyper settings, and a held-open
//! stream costs its connection's buffers for as long as it lasts. Here:
//! hyper's read buffer is capped at its floor (8 KB), so a connection
//! waiting after its request keeps the buffer it read the request into
//! instead of growing it to 16 KB (request heads over 8 KB get 431);
//! `TCP_NODELAY`, so a small event is written at once rather than after the
//! previous one's acknowledgement; request heads must arrive within 30 s.

use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// hyper's minimum for `max_buf_size`.
const MAX_BUF: usize = 8192;

/// Serves `router` on `listener` until `stop`, then waits for open
/// connections to finish their responses (live streams end on the same
/// signal).
pub async fn serve(listener: TcpListener, router: Router, stop: CancellationToken) {
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.max_buf_size(MAX_BUF)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30));
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
        // A router clone is a reference count.
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP connection ended with an error");
            }
        });
    }
    graceful.shutdown().await;
}
