//! One row per scenario, and the table the README shows.

use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Outcome {
    pub name: &'static str,
    /// Messages produced (events, duplicates and poison).
    pub events: usize,
    pub faults: usize,
    /// Messages handled more than once (a lower bound: what a killed
    /// worker handled after its last scrape is not seen).
    pub redeliveries: u64,
    pub mismatches: usize,
    /// The longest time from a fault cleared to everything sent before it
    /// applied.
    pub recovery: Option<Duration>,
    pub duration: Duration,
    pub notes: Vec<String>,
    /// The first mismatches, to start looking.
    pub examples: Vec<String>,
    /// Why it failed other than by mismatches.
    pub failed: Option<String>,
}

impl Outcome {
    /// A scenario that could not run to its oracle.
    pub fn errored(name: &'static str, why: String) -> Outcome {
        Outcome {
            name,
            events: 0,
            faults: 0,
            redeliveries: 0,
            mismatches: 0,
            recovery: None,
            duration: std::time::Duration::ZERO,
            notes: Vec::new(),
            examples: Vec::new(),
            failed: Some(why),
        }
    }

    pub fn passed(&self) -> bool {
        self.mismatches == 0 && self.failed.is_none()
    }
}

pub fn print_table(outcomes: &[Outcome]) {
    println!();
    println!(
        "| scenario | events | faults | redeliveries | mismatches | recovery | took | verdict |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for o in outcomes {
        println!("{}", row(o));
    }
    for o in outcomes {
        for note in &o.notes {
            println!("- {}: {note}", o.name);
        }
        for example in &o.examples {
            println!("- {} mismatch: {example}", o.name);
        }
    }
}

/// One scenario's line of the table.
pub fn row(o: &Outcome) -> String {
    let recovery = o
        .recovery
        .map_or("—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64()));
    let verdict = match (&o.failed, o.mismatches) {
        (None, 0) => "pass".to_owned(),
        (Some(why), _) => format!("FAIL: {why}"),
        (None, n) => format!("FAIL: {n} mismatches"),
    };
    format!(
        "| {} | {} | {} | {} | {} | {recovery} | {:.0} s | {verdict} |",
        o.name,
        o.events,
        o.faults,
        o.redeliveries,
        o.mismatches,
        o.duration.as_secs_f64()
    )
}
