//! `orderflow-bench`: throughput, latency, HTTP and memory of the real
//! worker, with the database ceiling and a naive design measured in the same
//! run so machine noise cancels out in the ratios. `./scripts/bench.sh` runs
//! it on a fresh broker; it is not part of the service's binary.
//!
//! It creates a fresh database and fresh topics, runs `orderflow run` as a
//! child process (so its RSS is the worker's alone), and drops the database
//! at the end.

mod analytics;
mod baselines;
mod cost;
mod cpu;
mod harness;
mod http_load;
mod load;
mod relay;
mod report;
mod scale;
mod size;
mod streams;
mod waldump;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use orderflow::config::Settings;

/// Measure throughput, latency, HTTP and memory against same-run baselines.
#[derive(Debug, Clone, Parser)]
#[command(name = "orderflow-bench")]
pub struct Options {
    /// Checkouts for the throughput phase (payments and cancellations are added).
    #[arg(long, default_value_t = 200_000)]
    pub checkouts: u64,
    /// Payments per checkout in the throughput phase's mix.
    #[arg(long, default_value_t = 0.9)]
    pub payment_ratio: f64,
    /// Cancellations per checkout in the throughput phase's mix.
    #[arg(long, default_value_t = 0.05)]
    pub cancellation_ratio: f64,
    /// Checkouts per second in the latency phase.
    #[arg(long, default_value_t = 1_000)]
    pub latency_rate: u64,
    /// Length of the latency phase, seconds.
    #[arg(long, default_value_t = 60)]
    pub latency_secs: u64,
    /// Length of each HTTP phase, seconds.
    #[arg(long, default_value_t = 10)]
    pub http_secs: u64,
    /// Concurrent HTTP connections; each route is measured at each level.
    #[arg(long, value_delimiter = ',', default_value = "8,32,64")]
    pub http_concurrency: Vec<usize>,
    /// Checkouts for the database-ceiling baseline (the naive one uses a fifth).
    #[arg(long, default_value_t = 20_000)]
    pub baseline_events: u64,
    /// Live streams held open on the worker in the streams phase (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    pub sse_subscribers: u64,
    /// Checkouts of the mix in each of the streams phase's two throughput
    /// bursts (without and with the subscribers attached).
    #[arg(long, default_value_t = 20_000)]
    pub sse_checkouts: u64,
    /// Run the analytics phase (its cost to the write path, its own rate,
    /// its routes with `--analytics-orders` orders).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub analytics: bool,
    /// Checkouts of the mix in each of the analytics phase's bursts
    /// (without, with, without, with the analytics loop, ...; 0 skips them).
    #[arg(long, default_value_t = 20_000)]
    pub analytics_checkouts: u64,
    /// How many bursts without and with the loop (each).
    #[arg(long, default_value_t = 2)]
    pub analytics_rounds: u64,
    /// Orders in the database (synthetic ones over 90 days are added up to
    /// this) when the analytics routes and the rebuild are measured.
    #[arg(long, default_value_t = 1_000_000)]
    pub analytics_orders: u64,
    /// Events of each kind (checkouts, payments, cancellations) in the cost
    /// phase: rows, WAL and CPU per 1,000 events of each kind (0 skips it).
    #[arg(long, default_value_t = 5_000)]
    pub cost_events: u64,
    /// Outbox rows each round of the relay phase publishes (0 skips it).
    #[arg(long, default_value_t = 50_000)]
    pub relay_rows: u64,
    /// Relay processes in each round of the relay phase.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub relay_instances: Vec<usize>,
    /// Worker processes in each round of the scale-out phase (full `run`s,
    /// one consumer group; an empty list skips the phase).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub instances: Vec<usize>,
    /// Checkouts of the mix in each scale-out round (0 skips the rounds).
    #[arg(long, default_value_t = 20_000)]
    pub instance_checkouts: u64,
    /// Checkouts per second in the scale-out churn (a worker joins, one is
    /// killed); it runs when the largest `--instances` is at least 2. Sent one
    /// record per batch, which Tansu takes at a few thousand per second.
    #[arg(long, default_value_t = 500)]
    pub churn_rate: u64,
    /// Length of the churn, seconds (under 6 skips it).
    #[arg(long, default_value_t = 60)]
    pub churn_secs: u64,
    /// Orders bulk-loaded between the two rounds of the size phase, which
    /// runs last (0 skips it; the figure is for 10,000,000).
    #[arg(long, default_value_t = 0)]
    pub preload_orders: u64,
    /// Days the preloaded orders were created over (the inbox and the feed
    /// get rows only for those inside their retention windows).
    #[arg(long, default_value_t = 90)]
    pub preload_days: u64,
    /// Checkouts of the mix in each of the size phase's two rounds.
    #[arg(long, default_value_t = 20_000)]
    pub size_checkouts: u64,
    /// Customers the generated checkouts are spread over (user ids 1..=N,
    /// at random). The streams phase picks its own users.
    #[arg(long, default_value_t = 20)]
    pub users: i64,
    /// Print the result as JSON as well.
    #[arg(long)]
    pub json: bool,
    /// The orderflow binary to run as the worker (default: the `orderflow`
    /// next to this one), to compare two builds under the same harness.
    #[arg(long)]
    pub worker: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = Options::parse();
    match run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    for (name, ratio) in [
        ("--payment-ratio", options.payment_ratio),
        ("--cancellation-ratio", options.cancellation_ratio),
    ] {
        anyhow::ensure!(
            (0.0..=1.0).contains(&ratio),
            "{name} must be between 0 and 1, not {ratio}"
        );
    }
    let worker = match &options.worker {
        Some(path) => path.clone(),
        None => std::env::current_exe()?.with_file_name("orderflow"),
    };
    anyhow::ensure!(
        worker.exists(),
        "no worker binary at {} (build it: cargo build --release -p orderflow, or pass --worker)",
        worker.display()
    );
    let (report, result) = harness::run(&settings, &options, &worker).await?;
    if result.is_err() {
        println!("A phase failed; what the phases before it measured:");
    }
    report.print_table();
    if options.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    result
}

/// Progress on stderr, so stdout holds only the result.
pub fn progress(msg: impl AsRef<str>) {
    eprintln!("[bench] {}", msg.as_ref());
}
