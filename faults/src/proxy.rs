//! A TCP proxy on loopback under the scenario's control, between orderflow
//! and the broker or PostgreSQL: pass traffic, delay it, cut every open
//! connection, or black-hole it (connections stay open, nothing goes
//! through, new ones are accepted and hang), the way a bad network does.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    /// Each chunk waits this long before it is forwarded.
    Delay(Duration),
    /// Nothing is forwarded, in either direction; nothing is closed.
    Blackhole,
}

pub struct Proxy {
    pub port: u16,
    mode: watch::Sender<Mode>,
    /// Bumped to close every connection open at that moment.
    cut: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on a free port and forwards to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let (mode, mode_rx) = watch::channel(Mode::Pass);
        let (cut, cut_rx) = watch::channel(0u64);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (mode, cut) = (mode_rx.clone(), cut_rx.clone());
                tokio::spawn(connection(client, upstream, mode, cut));
            }
        });
        Ok(Proxy {
            port,
            mode,
            cut,
            task,
        })
    }

    pub fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    /// Closes every connection open now (peers see a reset or EOF).
    pub fn cut_all(&self) {
        self.cut.send_modify(|generation| *generation += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut_all();
    }
}

async fn connection(
    client: TcpStream,
    upstream: u16,
    mode: watch::Receiver<Mode>,
    mut cut: watch::Receiver<u64>,
) {
    let generation = *cut.borrow_and_update();
    // A new connection during a black-hole hangs until it is lifted.
    let mut waiting = mode.clone();
    while *waiting.borrow_and_update() == Mode::Blackhole {
        if waiting.changed().await.is_err() {
            return;
        }
    }
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let mode = Arc::new(mode);
    tokio::select! {
        _ = pump(client_read, server_write, mode.as_ref().clone()) => {}
        _ = pump(server_read, client_write, mode.as_ref().clone()) => {}
        _ = async { while cut.changed().await.is_ok() { if *cut.borrow() != generation { break; } } } => {}
    }
}

/// Copies one direction, obeying the mode for every chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        loop {
            let current = *mode.borrow_and_update();
            match current {
                Mode::Pass => break,
                Mode::Delay(d) => {
                    tokio::time::sleep(d).await;
                    break;
                }
                Mode::Blackhole => {
                    if mode.changed().await.is_err() {
                        return;
                    }
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
