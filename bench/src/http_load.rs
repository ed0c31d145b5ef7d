//! Closed-loop HTTP load from a minimal keep-alive HTTP/1.1 client: it runs
//! on the same two cores as the server it measures, so it must cost far less
//! than a general-purpose client would (reqwest was the bottleneck).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;

use crate::progress;
use crate::report::{percentile, HttpRun};

/// `connections` clients issue GETs of `path(i)` to `addr` back to back for
/// `secs`, each over its own keep-alive connection.
pub async fn run(
    addr: &str,
    secs: u64,
    connections: usize,
    route: &str,
    path: impl Fn(usize) -> String + Send + Sync + 'static,
) -> anyhow::Result<HttpRun> {
    progress(format!(
        "http: {route}, {connections} connections, {secs} s"
    ));
    let path = Arc::new(path);
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for client in 0..connections {
        let (path, addr) = (path.clone(), addr.to_owned());
        tasks.push(tokio::spawn(async move {
            one_client(&addr, deadline, client * 1_000_003, &*path).await
        }));
    }
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, failed) = task.await?;
        all.extend(latencies);
        errors += failed;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if errors > 0 {
        progress(format!("  {errors} requests failed"));
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let run = HttpRun {
        route: route.to_owned(),
        connections,
        requests_per_s: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 0.5),
        p99_ms: percentile(&all, 0.99),
        errors,
    };
    progress(format!(
        "  {:.0} requests/s, p50 {:.2} ms, p99 {:.2} ms",
        run.requests_per_s, run.p50_ms, run.p99_ms
    ));
    Ok(run)
}

/// One client until `deadline`: (latencies of the 200s in ms, failures).
async fn one_client(
    addr: &str,
    deadline: Instant,
    mut i: usize,
    path: &(dyn Fn(usize) -> String + Send + Sync),
) -> (Vec<f64>, u64) {
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut conn = None;
    while Instant::now() < deadline {
        let t = Instant::now();
        if conn.is_none() {
            conn = HttpConn::connect(addr).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            errors += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        match c.get(&path(i)).await {
            Ok(200) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
            Ok(_) => errors += 1,
            Err(_) => {
                errors += 1;
                conn = None;
            }
        }
        i += 1;
    }
    (latencies, errors)
}

/// A keep-alive HTTP/1.1 connection: a request line out, a status line,
/// headers and a `Content-Length` body in.
struct HttpConn {
    stream: BufStream<TcpStream>,
    line: String,
    body: Vec<u8>,
}

impl HttpConn {
    async fn connect(addr: &str) -> std::io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream: BufStream::new(stream),
            line: String::new(),
            body: Vec::new(),
        })
    }

    /// One GET; returns the status code once the whole body is read.
    async fn get(&mut self, path: &str) -> std::io::Result<u16> {
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
        self.stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").as_bytes())
            .await?;
        self.stream.flush().await?;
        self.line.clear();
        self.stream.read_line(&mut self.line).await?;
        let status: u16 = self
            .line
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| bad("no status line"))?;
        let mut length = None;
        loop {
            self.line.clear();
            if self.stream.read_line(&mut self.line).await? == 0 {
                return Err(bad("connection closed in headers"));
            }
            let header = self.line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let length = length.ok_or_else(|| bad("no content-length"))?;
        self.body.resize(length, 0);
        self.stream.read_exact(&mut self.body).await?;
        Ok(status)
    }
}
