//! The `orderflow` command: parse the CLI, set up logging, read settings, run.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use orderflow::app::{self, Component};
use orderflow::config::{LogFormat, Settings};
use orderflow::kafka::topics;
use orderflow::{produce, store, telemetry};

#[derive(Parser)]
#[command(
    name = "orderflow",
    version,
    about = "Kafka-first order-management workers over PostgreSQL"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run consumer loops, the outbox relay and the HTTP API until SIGINT/SIGTERM.
    Run {
        /// Run only these components (comma-separated); default: all.
        #[arg(long, value_delimiter = ',', value_enum)]
        only: Vec<Component>,
        /// Apply migrations before starting.
        #[arg(long)]
        migrate: bool,
    },
    /// Create the database if missing and apply pending migrations.
    Migrate,
    /// Manage topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Register or check the Avro schemas in schemas/ (needs SCHEMA_REGISTRY_URL).
    Schemas {
        #[command(subcommand)]
        command: SchemasCommand,
    },
    /// The benchmark is its own binary now (`./scripts/bench.sh`).
    #[command(hide = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Send sample checkouts, or the JSON lines of a file, to a topic.
    Produce(ProduceArgs),
    /// Read dead-letter topics, and send their messages back once the cause is fixed.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Analytics rollups.
    Analytics {
        #[command(subcommand)]
        command: AnalyticsCommand,
    },
}

#[derive(Subcommand)]
enum AnalyticsCommand {
    /// Recompute the rollups from the order tables, replacing what is there
    /// (in one transaction; the analytics loop waits meanwhile and goes on
    /// from the log afterwards without counting anything twice).
    Rebuild {
        /// First UTC day to rebuild (YYYY-MM-DD); default: every day.
        #[arg(long)]
        from: Option<chrono::NaiveDate>,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Show the dead letters of a topic with their reasons, oldest first per partition.
    List {
        /// The dead-letter topic, e.g. checkouts.dlq.
        topic: String,
        #[command(flatten)]
        filter: DlqFilter,
        /// One JSON object per line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send the original key and payload of dead letters back to the topic
    /// they came from (harmless to repeat: the inbox skips what was applied).
    Replay {
        /// The dead-letter topic, e.g. checkouts.dlq.
        topic: String,
        #[command(flatten)]
        filter: DlqFilter,
        /// Count what would be replayed; send nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(clap::Args)]
struct DlqFilter {
    /// Only dead letters of this class.
    #[arg(long, value_enum)]
    class: Option<DlqClass>,
    /// Only dead letters written since this time (RFC 3339) or age (30m, 2h, 7d).
    #[arg(long, value_parser = orderflow::dlq::parse_since)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl DlqFilter {
    fn into_filter(self) -> orderflow::dlq::Filter {
        use orderflow::events::DeadLetterClass;
        orderflow::dlq::Filter {
            class: self.class.map(|c| match c {
                DlqClass::Decode => DeadLetterClass::Decode,
                DlqClass::Invalid => DeadLetterClass::Invalid,
                DlqClass::Database => DeadLetterClass::Database,
            }),
            since: self.since,
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DlqClass {
    Decode,
    Invalid,
    Database,
}

#[derive(clap::Args)]
struct ProduceArgs {
    /// Number of sample checkouts.
    #[arg(long, default_value_t = 10)]
    count: u64,
    /// Pause between samples, in milliseconds.
    #[arg(long, default_value_t = 0)]
    interval_ms: u64,
    /// Make every n-th sample invalid (0: none).
    #[arg(long, default_value_t = 0)]
    invalid_every: u64,
    /// Send every n-th sample twice (0: none).
    #[arg(long, default_value_t = 0)]
    duplicate_every: u64,
    /// Send each line of this JSON-lines file instead of samples.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Topic for --file (default: the checkouts topic).
    #[arg(long)]
    topic: Option<String>,
}

#[derive(Subcommand)]
enum SchemasCommand {
    /// Register every schema under its topic's `-value` subject.
    Register,
    /// Exit non-zero when a schema is not BACKWARD compatible with the latest registered version.
    Check,
}

#[derive(Subcommand)]
enum TopicsCommand {
    /// Create the topics orderflow needs that do not exist yet.
    Apply {
        /// Read the definitions from this directory's *.toml instead of the
        /// built-in ones (topics/ at build time).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let command = Cli::command().mut_subcommand("run", |run| {
        run.after_long_help(orderflow::config::variables_help())
    });
    let cli = match Cli::from_arg_matches(&command.get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orderflow: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    telemetry::init_tracing(settings.log_format == LogFormat::Json);
    match execute(cli.command, settings).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderflow: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            store::migrate(&settings.database_url).await?;
            println!("migrations applied");
        }
        Command::Topics {
            command: TopicsCommand::Apply { dir },
        } => apply_topics(&settings, dir.as_deref()).await?,
        Command::Schemas {
            command: SchemasCommand::Register,
        } => {
            for (subject, id) in orderflow::schemas::register(&settings).await? {
                println!("{subject}: schema id {id}");
            }
        }
        Command::Schemas {
            command: SchemasCommand::Check,
        } => check_schemas(&settings).await?,
        Command::Bench { .. } => anyhow::bail!(
            "the benchmark is its own binary now: ./scripts/bench.sh [OPTIONS] \
             (or cargo run --release -p orderflow-bench -- [OPTIONS])"
        ),
        Command::Produce(args) => produce(&settings, args).await?,
        Command::Run { only, migrate } => run(settings, only, migrate).await?,
        Command::Dlq { command } => dlq(&settings, command).await?,
        Command::Analytics {
            command: AnalyticsCommand::Rebuild { from },
        } => {
            let pool = store::pool(&settings.database_url, 1)?;
            let started = std::time::Instant::now();
            let rebuilt = store::analytics::rebuild(&pool, from).await?;
            println!(
                "rebuilt analytics {} in {:.1} s: {} daily rows, {} time-to-pay rows, \
                 {} product rows; {} events of the order feed marked as counted",
                from.map_or("of every day".to_owned(), |d| format!("from {d}")),
                started.elapsed().as_secs_f64(),
                rebuilt.daily_rows,
                rebuilt.time_to_pay_rows,
                rebuilt.product_rows,
                rebuilt.events_marked,
            );
        }
    }
    Ok(())
}

async fn dlq(settings: &Settings, command: DlqCommand) -> anyhow::Result<()> {
    use orderflow::dlq;
    // An input topic's name is taken to mean its dead-letter topic.
    let topic_of = |topic: String| {
        if settings.topics.inputs().contains(&topic.as_str()) {
            let letters = orderflow::config::Topics::dlq(&topic);
            eprintln!("{topic} is an input topic; reading {letters}");
            letters
        } else {
            topic
        }
    };
    match command {
        DlqCommand::List {
            topic,
            filter,
            json,
        } => {
            let topic = topic_of(topic);
            let mut shown = 0u64;
            dlq::read(settings, &topic, &filter.into_filter(), |letter| {
                shown += 1;
                if json {
                    println!("{}", letter.json());
                } else {
                    println!("{}", letter.line());
                }
                Ok(())
            })
            .await?;
            eprintln!("{shown} dead letter(s) in {topic}");
        }
        DlqCommand::Replay {
            topic,
            filter,
            dry_run,
        } => {
            let topic = topic_of(topic);
            let done = dlq::replay(settings, &topic, &filter.into_filter(), dry_run, |so_far| {
                eprintln!("replayed {} ...", so_far.sent)
            })
            .await?;
            let verb = if dry_run { "would replay" } else { "replayed" };
            println!(
                "{verb} {} dead letter(s) from {topic} to their source topics; \
                 skipped {} with a cut payload and {} from other topics",
                done.sent, done.truncated, done.foreign
            );
        }
    }
    Ok(())
}

async fn apply_topics(settings: &Settings, dir: Option<&std::path::Path>) -> anyhow::Result<()> {
    let specs = match dir {
        Some(dir) => topics::load_specs(dir)?,
        None => topics::embedded_specs()?,
    };
    for (name, applied) in topics::apply(settings, &specs).await? {
        let what = match applied {
            topics::Applied::Created => "created",
            topics::Applied::Existed => "exists",
        };
        println!("{name}: {what}");
    }
    Ok(())
}

async fn check_schemas(settings: &Settings) -> anyhow::Result<()> {
    use orderflow::schemas::Check;
    let mut broken = 0;
    for (subject, verdict) in orderflow::schemas::check(settings).await? {
        match verdict {
            Check::New => println!("{subject}: new subject, nothing to compare"),
            Check::Compatible { latest_version } => println!(
                "{subject}: BACKWARD compatible with version {}",
                latest_version.unwrap_or_default()
            ),
            Check::Incompatible {
                latest_version,
                reason,
            } => {
                broken += 1;
                println!(
                    "{subject}: NOT backward compatible with version {}: {reason}",
                    latest_version.unwrap_or_default()
                );
            }
        }
    }
    if broken > 0 {
        anyhow::bail!("{broken} schema(s) would break consumers");
    }
    Ok(())
}

async fn produce(settings: &Settings, args: ProduceArgs) -> anyhow::Result<()> {
    match args.file {
        Some(path) => {
            let topic = args
                .topic
                .unwrap_or_else(|| settings.topics.checkouts.clone());
            let sent = produce::from_file(settings, &topic, &path).await?;
            println!("sent {sent} messages to {topic}");
        }
        None => {
            let options = produce::SampleOptions {
                count: args.count,
                interval: Duration::from_millis(args.interval_ms),
                invalid_every: args.invalid_every,
                duplicate_every: args.duplicate_every,
            };
            produce::samples(settings, &options).await?;
        }
    }
    Ok(())
}

/// `orderflow run`: the components until SIGINT/SIGTERM (or until one
/// fails), then a graceful stop bounded by `SHUTDOWN_TIMEOUT_SECS`.
async fn run(settings: Settings, only: Vec<Component>, migrate: bool) -> anyhow::Result<()> {
    if migrate {
        store::migrate(&settings.database_url).await?;
    }
    let grace = settings.shutdown_timeout;
    let components = if only.is_empty() {
        Component::ALL.to_vec()
    } else {
        only
    };
    let running = app::start(settings, &components).await?;
    let failed = tokio::select! {
        signal = shutdown_signal() => {
            signal?;
            false
        }
        _ = running.stopped() => {
            tracing::error!("a component failed");
            true
        }
    };
    tracing::info!("shutting down: finishing batches in hand");
    arm_exit_watchdog(grace + WATCHDOG_MARGIN);
    if tokio::time::timeout(grace, running.stop()).await.is_err() {
        // Whatever was not committed is redelivered on restart.
        anyhow::bail!(
            "graceful shutdown took longer than SHUTDOWN_TIMEOUT_SECS={}",
            grace.as_secs()
        );
    }
    // Exit non-zero, so that systemd's `Restart=on-failure` and Kubernetes
    // see a failure, not a clean stop.
    if failed {
        anyhow::bail!("stopped because a component failed (see the error above)");
    }
    Ok(())
}

/// What the watchdog allows beyond `SHUTDOWN_TIMEOUT_SECS` for the runtime
/// to wind down.
const WATCHDOG_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Exits the process after `limit` whatever the runtime is doing. librdkafka
/// closes a consumer synchronously and, with the broker unreachable, can
/// wait for it indefinitely; such a close on the runtime's threads would
/// also stop the timer of the graceful stop, and the runtime waits for its
/// blocking tasks when dropped. An OS thread is beyond both.
fn arm_exit_watchdog(limit: std::time::Duration) {
    std::thread::spawn(move || {
        std::thread::sleep(limit);
        eprintln!(
            "orderflow: still not stopped {} s after the shutdown began; exiting",
            limit.as_secs()
        );
        std::process::exit(1);
    });
}

async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("failed to listen for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}
