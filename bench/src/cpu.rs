//! CPU time spent, from /proc: by the worker, by PostgreSQL (every process
//! named `postgres`), by the broker (`tansu`), and by the whole machine, so
//! a phase's cost per event can be split between them. Processes that exit
//! during a phase take their time with them; the phases keep their
//! connections, so that is only a connection's start-up.

use std::ops::Sub;

/// USER_HZ: /proc reports CPU time in these ticks (100 on Linux).
const TICKS_PER_S: f64 = 100.0;

/// CPU seconds used so far.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuTimes {
    pub worker: f64,
    pub postgres: f64,
    pub broker: f64,
    pub machine: f64,
}

impl Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, o: CpuTimes) -> CpuTimes {
        CpuTimes {
            worker: self.worker - o.worker,
            postgres: self.postgres - o.postgres,
            broker: self.broker - o.broker,
            machine: self.machine - o.machine,
        }
    }
}

impl CpuTimes {
    /// Milliseconds of CPU per 1,000 events.
    pub fn per_thousand(self, events: u64) -> CpuTimes {
        let k = 1_000_000.0 / events.max(1) as f64;
        CpuTimes {
            worker: self.worker * k,
            postgres: self.postgres * k,
            broker: self.broker * k,
            machine: self.machine * k,
        }
    }
}

/// The CPU seconds used so far by each kind of process and the machine.
pub fn now(worker_pid: Option<i32>) -> CpuTimes {
    let mut times = CpuTimes {
        machine: machine(),
        ..CpuTimes::default()
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return times;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Some((comm, seconds)) = process(pid) else {
            continue;
        };
        if Some(pid) == worker_pid {
            times.worker += seconds;
        } else if comm == "postgres" {
            times.postgres += seconds;
        } else if comm.starts_with("tansu") {
            times.broker += seconds;
        }
    }
    times
}

/// CPU seconds used so far by the processes `pids` together.
pub fn processes(pids: &[i32]) -> f64 {
    pids.iter()
        .filter_map(|&pid| process(pid))
        .map(|(_, s)| s)
        .sum()
}

/// A process's name and CPU seconds so far.
fn process(pid: i32) -> Option<(String, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ... utime stime: fields 14 and 15, counted after
    // the closing parenthesis (a comm may hold spaces).
    let (head, rest) = stat.rsplit_once(')')?;
    let comm = head.split_once('(').map_or("", |(_, c)| c).to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Some((comm, (ticks(11) + ticks(12)) / TICKS_PER_S))
}

/// Busy CPU seconds of the whole machine (all but idle and iowait).
fn machine() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal
    let busy: f64 = [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| v.get(i)).sum();
    busy / TICKS_PER_S
}
