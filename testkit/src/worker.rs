//! `orderflow run` as a child process: its own OS process, as in production,
//! so it can be killed, frozen and measured (RSS) on its own.

use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use orderflow::config::Settings;
use tokio::process::{Child, Command};

/// How long a worker may take to answer `/readyz`.
const READY_WITHIN: Duration = Duration::from_secs(30);

pub struct Worker {
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    client: reqwest::Client,
}

impl Worker {
    /// Starts `binary run` on the world of `settings` (database, brokers,
    /// group, topics), on a free port, with `RUST_LOG=warn` and its stderr
    /// passed through; `env` adds or overrides variables. Returns once it
    /// answers `/readyz` with 200.
    pub async fn spawn(
        binary: &Path,
        settings: &Settings,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Worker> {
        Self::spawn_logging_to(binary, settings, env, Stdio::inherit()).await
    }

    /// [`Worker::spawn`], with its stderr (its log) going to `log`.
    pub async fn spawn_logging_to(
        binary: &Path,
        settings: &Settings,
        env: &[(&str, &str)],
        log: Stdio,
    ) -> anyhow::Result<Worker> {
        Self::spawn_with_args(binary, settings, env, &[], log).await
    }

    /// [`Worker::spawn_logging_to`], with `args` after `run` (e.g.
    /// `--only`, `relay,http`).
    pub async fn spawn_with_args(
        binary: &Path,
        settings: &Settings,
        env: &[(&str, &str)],
        args: &[&str],
        log: Stdio,
    ) -> anyhow::Result<Worker> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(binary)
            .arg("run")
            .args(args)
            .env("DATABASE_URL", &settings.database_url)
            .env("KAFKA_BROKERS", &settings.kafka_brokers)
            .env("KAFKA_GROUP_ID", &settings.group_id)
            .envs(settings.topics.vars())
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("failed to start {}", binary.display()))?;
        let worker = Worker {
            child,
            base: format!("http://127.0.0.1:{port}"),
            client: reqwest::Client::new(),
        };
        worker.wait_ready().await?;
        Ok(worker)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            let ready = self
                .client
                .get(format!("{}/readyz", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready {
                return Ok(());
            }
            if started.elapsed() > READY_WITHIN {
                bail!("worker not ready after {} s", READY_WITHIN.as_secs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The worker's `/metrics` page; an error after 2 s (a frozen worker
    /// accepts the connection and never answers).
    pub async fn metrics_page(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(format!("{}/metrics", self.base))
            .timeout(Duration::from_secs(2))
            .send()
            .await?
            .text()
            .await?)
    }

    /// `orderflow_messages_total` of `topic` and `outcome` (0 if unseen).
    pub async fn handled(&self, topic: &str, outcome: &str) -> anyhow::Result<u64> {
        let page = self.metrics_page().await?;
        let wanted = [("topic", topic), ("outcome", outcome)];
        Ok(crate::prom::sum(&page, "orderflow_messages_total", &wanted) as u64)
    }

    /// `orderflow_relay_shards`: outbox shards its relay holds.
    pub async fn relay_shards(&self) -> anyhow::Result<u32> {
        let page = self.metrics_page().await?;
        Ok(crate::prom::sum(&page, "orderflow_relay_shards", &[]) as u32)
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|pid| pid as i32)
    }

    /// Sends `signal` (SIGKILL, SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.pid().context("the worker has exited")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
            .with_context(|| format!("failed to send {signal} to {pid}"))
    }

    /// SIGKILL, then reap.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.signal(nix::sys::signal::Signal::SIGKILL)?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, and the exit status once it has stopped gracefully.
    pub async fn terminate(mut self) -> anyhow::Result<ExitStatus> {
        self.signal(nix::sys::signal::Signal::SIGTERM)?;
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .context("no exit within 60 s of SIGTERM")?
            .context("failed to wait for the worker")
    }

    /// (current RSS, peak RSS) in MB, from /proc (0 once it has exited).
    pub fn rss_mb(&self) -> (f64, f64) {
        let Some(pid) = self.pid() else {
            return (0.0, 0.0);
        };
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}
