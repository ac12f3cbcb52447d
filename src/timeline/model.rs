//! The plain data of a `process` run: what each tick recorded, and the per-process series that
//! plots, summaries and gnuplot files are drawn from. Readers (/proc, a saved `.jsonl`) produce it;
//! report writers consume it and never know where it came from.

use serde::{Deserialize, Serialize};

/// One process at one tick: one line of the `.jsonl` log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// ISO 8601 UTC, e.g. `2026-11-24T10:37:17.123Z`.
    pub time: String,
    /// Seconds since the run started.
    pub seconds: f64,
    pub pid: u32,
    pub ppid: u32,
    /// 0 for the process asked for, 1 for its children, and so on.
    #[serde(default)]
    pub depth: u32,
    pub command: String,
    /// Bytes.
    pub rss: u64,
    pub vms: u64,
    /// VmHWM: the highest RSS the kernel saw (between ticks too).
    pub peak_rss: u64,
    pub swap: u64,
    pub minor_faults_per_second: f64,
    pub major_faults_per_second: f64,
    /// CPU seconds the process used since it started.
    pub user_seconds: f64,
    pub system_seconds: f64,
    /// CPU time used since the run started (or since the process appeared), over wall time, in
    /// percent of one core.
    pub cpu_percent_mean: f64,
    /// The same over the last tick only.
    pub cpu_percent: f64,
    pub threads: u64,
    /// Unique set size (private pages) and proportional set size, with `--smaps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uss: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pss: Option<u64>,
    /// A mark the user typed, stamped on the tick taken when it was typed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// One point of a process's series (what plots and gnuplot files need of a [`Tick`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub seconds: f64,
    /// Seconds since the Unix epoch (gnuplot's Timestamp column).
    pub unix_time: f64,
    pub rss: u64,
    /// Minor plus major faults per second.
    pub faults_per_second: f64,
    pub user_seconds: f64,
    pub cpu_percent_mean: f64,
    pub cpu_percent: f64,
}

impl Point {
    pub fn from_tick(tick: &Tick, unix_time: f64) -> Point {
        Point {
            seconds: tick.seconds,
            unix_time,
            rss: tick.rss,
            faults_per_second: tick.minor_faults_per_second + tick.major_faults_per_second,
            user_seconds: tick.user_seconds,
            cpu_percent_mean: tick.cpu_percent_mean,
            cpu_percent: tick.cpu_percent,
        }
    }
}

/// One process followed during the run: its identity and its points in time order.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSeries {
    pub pid: u32,
    pub ppid: u32,
    pub depth: u32,
    pub command: String,
    pub points: Vec<Point>,
}

/// A mark the user typed, at a moment of the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    pub seconds: f64,
    pub text: String,
}

/// Everything a plot or a gnuplot file shows. `processes[0]` is the root (the process asked for);
/// the others are its descendants in the order they were first seen.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// A title line, e.g. `PID 1234 python3 job.py`.
    pub title: String,
    pub processes: Vec<ProcessSeries>,
    pub labels: Vec<Label>,
}
