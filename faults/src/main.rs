//! `orderflow-faults`: breaks orderflow while it works, in fifteen ways,
//! and checks after each that nothing was lost and nothing applied twice.
//! `./scripts/faults.sh [NAME…]` runs it on this machine's PostgreSQL with
//! a Tansu broker of each scenario's own; see the README's "Reliability".

mod drive;
mod poison;
mod proxy;
mod report;
mod run;
mod scenarios;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use orderflow::config::Settings;

#[derive(Debug, Parser)]
#[command(name = "orderflow-faults")]
struct Cli {
    /// Scenarios to run (default: all but soak); see --list.
    names: Vec<String>,
    /// Input messages per scenario.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Seed of the mix (the same seed, the same input).
    #[arg(long, default_value_t = 20_261_127)]
    seed: u64,
    /// Messages per second the mix is produced at.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Shorter freezes, outages and holds (a third), for CI.
    #[arg(long)]
    quick: bool,
    /// The orderflow binary to run (default: the one next to this one).
    #[arg(long)]
    worker: Option<PathBuf>,
    /// Print the outcomes as JSON as well.
    #[arg(long)]
    json: bool,
    /// List the scenarios and exit.
    #[arg(long)]
    list: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.list {
        for (name, what, _) in scenarios::ALL {
            println!("{name:18} {what}");
        }
        return ExitCode::SUCCESS;
    }
    match run(cli).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("orderflow-faults: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let binary = match cli.worker {
        Some(path) => path,
        None => std::env::current_exe()?.with_file_name("orderflow"),
    };
    anyhow::ensure!(
        binary.exists(),
        "no orderflow binary at {}",
        binary.display()
    );
    let workdir = std::env::current_dir()?.join(".local/faults");
    std::fs::create_dir_all(&workdir)?;
    let opts = run::Options {
        events: cli.events,
        seed: cli.seed,
        rate: cli.rate,
        quick: cli.quick,
        binary,
        base: Settings::from_env()?,
        workdir,
    };
    for name in &cli.names {
        anyhow::ensure!(
            scenarios::ALL.iter().any(|(n, _, _)| n == name),
            "no scenario {name:?} (see --list)"
        );
    }
    let mut outcomes = Vec::new();
    for (name, what, scenario) in scenarios::ALL {
        let chosen = if cli.names.is_empty() {
            *name != "soak"
        } else {
            cli.names.iter().any(|n| n == name)
        };
        if !chosen {
            continue;
        }
        eprintln!("[faults] {name}: {what} ({} events)", cli.events);
        let outcome = match scenario(&opts).await {
            Ok(outcome) => outcome,
            Err(e) => report::Outcome::errored(name, format!("{e:#}")),
        };
        eprintln!(
            "[faults] {name}: {} ({} mismatches, {:.0} s){}",
            if outcome.passed() { "pass" } else { "FAIL" },
            outcome.mismatches,
            outcome.duration.as_secs_f64(),
            outcome
                .failed
                .as_ref()
                .map_or(String::new(), |why| format!(": {why}"))
        );
        // The row and notes now, so an interrupted run keeps what it learnt.
        eprintln!("[faults] {}", report::row(&outcome));
        for note in &outcome.notes {
            eprintln!("[faults] {name}: {note}");
        }
        outcomes.push(outcome);
    }
    report::print_table(&outcomes);
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&outcomes)?);
    }
    Ok(outcomes.iter().all(report::Outcome::passed))
}
