//! A Tansu broker of the scenario's own: sqlite storage in the scenario's
//! directory (so it survives a restart) or memory storage, a port of its
//! own, and an advertised address that may be a proxy in front of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use tokio::process::{Child, Command};

pub struct Broker {
    pub port: u16,
    /// `sqlite://tansu.db` (in the scenario's directory, survives a
    /// restart) or `memory://tansu/`.
    storage: &'static str,
    /// What clients are told to connect to (the port, or a proxy's).
    pub advertised: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    /// `durable`: sqlite storage, which survives a restart but cannot serve
    /// a 10 MB record (docs/tansu.md); memory storage otherwise.
    pub async fn start(
        dir: &Path,
        port: u16,
        advertised: u16,
        durable: bool,
    ) -> anyhow::Result<Broker> {
        std::fs::create_dir_all(dir)?;
        let mut broker = Broker {
            port,
            storage: if durable {
                "sqlite://tansu.db"
            } else {
                "memory://tansu/"
            },
            advertised,
            dir: dir.to_owned(),
            child: None,
        };
        broker.spawn().await?;
        Ok(broker)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))?;
        let child = Command::new("tansu")
            .arg("broker")
            .arg("--listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://127.0.0.1:{}", self.advertised))
            // Tansu takes the path after sqlite:// relative to its directory.
            .arg("--storage-engine")
            .arg(self.storage)
            .current_dir(&self.dir)
            // Tansu logs whatever RUST_LOG allows: keep it quiet.
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("failed to start tansu (is it installed? the scripts install it)")?;
        self.child = Some(child);
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            if started.elapsed() > Duration::from_secs(20) {
                bail!("tansu did not listen on {} within 20 s", self.port);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not stopped after 10 s.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_err()
        {
            child.kill().await?;
        }
        Ok(())
    }

    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }
}
