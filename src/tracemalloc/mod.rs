//! `pymemtrace tracemalloc`: tracemalloc's raw traces taken out of the target twice and compared
//! here ([`traces`]), with tracemalloc's own memory compensated for, and the target put back as
//! it was: by the second step, or by the helper's watchdog if the tool goes away (a lease this
//! module keeps alive between the steps).

mod traces;

use std::io::{IsTerminal, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::inject::marshal::{MarshalError, Reader};
use crate::inject::{self, Options};
use crate::memory::{human_bytes, human_delta};
use crate::report::table::thousands;

/// How allocations are grouped (tracemalloc's key types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Lineno,
    Filename,
    Traceback,
}

impl Granularity {
    fn key(self) -> &'static str {
        match self {
            Granularity::Lineno => "lineno",
            Granularity::Filename => "filename",
            Granularity::Traceback => "traceback",
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct TracemallocOptions {
    pub pid: i32,
    pub duration: Option<f64>,
    pub frames: u32,
    pub granularity: Granularity,
    pub top: usize,
    pub timeout: f64,
    pub method: inject::Method,
}

/// One group of the comparison.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// (file, line), the allocating (innermost) frame first.
    pub frames: Vec<(String, i64)>,
    pub size_before: i64,
    pub size_after: i64,
    pub size_diff: i64,
    pub count_before: i64,
    pub count_after: i64,
    pub count_diff: i64,
}

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub pid: i32,
    pub seconds: f64,
    pub frames: u64,
    pub granularity: Granularity,
    pub started_by_us: bool,
    /// Sum of every group's change (what tracemalloc saw), and tracemalloc's own memory change.
    pub traced_change: i64,
    pub traced_count_change: i64,
    pub tracemalloc_memory_change: i64,
    /// traced_change minus tracemalloc_memory_change, as the original trace_malloc reports.
    pub compensated_change: i64,
    pub groups: u64,
    pub top: Vec<Group>,
    pub injection_round_trip_seconds: [f64; 2],
    /// How each of the two helpers got in (pending call, direct call, gdb).
    pub injection_methods: [String; 2],
}

/// What one step's helper replies: its figures, and the traces (summed per traceback).
struct Step {
    figures: Value,
    traces: traces::Traces,
}

fn int(value: &Value, key: &str) -> i64 {
    value[key].as_i64().unwrap_or(0)
}

/// Reads a step's reply: every key as JSON but `traces`, which is read trace by trace; then the
/// measurement's own traces (`own_files`) are left out.
fn read_step(reader: &mut Reader) -> std::result::Result<Step, MarshalError> {
    let mut figures = serde_json::Map::new();
    let mut traces = None;
    reader.dict(|reader, key| {
        let key = key
            .as_str()
            .ok_or_else(|| MarshalError("a key that is not a string".into()))?
            .to_string();
        if key == "traces" {
            traces = Some(traces::Traces::read(reader)?);
        } else {
            figures.insert(key, reader.object()?.to_json());
        }
        Ok(())
    })?;
    let mut traces = traces.ok_or_else(|| MarshalError("no traces".into()))?;
    let own_files: Vec<&str> = figures
        .get("own_files")
        .and_then(Value::as_array)
        .map(|files| files.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    traces.leave_out(&own_files);
    Ok(Step {
        figures: Value::Object(figures),
        traces,
    })
}

/// The largest reply accepted from a step: its traces take about 17-22 bytes each, so this is
/// room for about 12 million live traced blocks.
const MAX_TRACES_REPLY: usize = 256 << 20;

/// How long the helper's watchdog waits for a sign of life from the tool before it puts the
/// target back by itself (the tool's death is seen at once: the connection closes).
const LEASE: Duration = Duration::from_secs(10);
/// How often the tool gives that sign of life.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Keeps the first step's connection open and alive (a byte every [`HEARTBEAT`]) until dropped:
/// then the connection closes and the helper's watchdog, if the second step has not already
/// done it, restores the target.
struct Lease {
    stop: Arc<AtomicBool>,
    beating: Option<std::thread::JoinHandle<()>>,
}

impl Lease {
    fn keep(connection: UnixStream) -> Lease {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let beating = std::thread::spawn(move || {
            let _ = connection.set_write_timeout(Some(HEARTBEAT));
            let mut last: Option<Instant> = None;
            while !stopped.load(Ordering::Relaxed) {
                if last.is_none_or(|at| at.elapsed() >= HEARTBEAT) {
                    if (&connection).write_all(b".").is_err() {
                        break; // the watchdog is gone (restored, or the target exited)
                    }
                    last = Some(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Lease {
            stop,
            beating: Some(beating),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(beating) = self.beating.take() {
            let _ = beating.join(); // its end of the connection closes with it
        }
    }
}

/// A name for this run, so the second step acts only on this run's first.
fn run_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Runs the two steps around a wait of `duration` (or until `stop`).
pub fn compare(options: &TracemallocOptions, stop: &Arc<AtomicBool>) -> Result<Comparison> {
    let inject_options = Options {
        timeout: Duration::from_secs_f64(options.timeout),
        method: options.method,
        max_reply: MAX_TRACES_REPLY,
        ..Options::default()
    };
    let run = run_name();
    let start_request = json!({
        "action": "start",
        "frames": options.frames,
        "run": run,
        "lease": LEASE.as_secs_f64(),
    });
    let (before, first, connection) = inject::run_helper_with(
        options.pid,
        &inject::TRACEMALLOC,
        &start_request,
        &inject_options,
        read_step,
    )?;
    // From here on, whatever ends this function (an error, a return, the tool's death) closes
    // the connection, and the helper's watchdog then puts the target back.
    let _lease = Lease::keep(connection);
    let started_by_us = before.figures["started_by_us"].as_bool().unwrap_or(false);
    let frames = &before.figures["frames"];
    eprintln!(
        "pymemtrace: first snapshot taken ({}, {} frame{}){}; Ctrl-C takes the second snapshot now",
        if started_by_us {
            "tracemalloc started for this run"
        } else {
            "tracemalloc was already running"
        },
        frames,
        if *frames == 1 { "" } else { "s" },
        options
            .duration
            .map(|d| format!("; the second in {d} s"))
            .unwrap_or_default(),
    );
    wait(options.pid, options.duration, stop);
    let finish_request = json!({"action": "finish", "run": run});
    let finished = inject::run_helper_with(
        options.pid,
        &inject::TRACEMALLOC,
        &finish_request,
        &inject_options,
        read_step,
    );
    let (after, second) = match finished {
        Ok((after, second, _)) => (after, second),
        Err(err)
            if err.kind == ErrorKind::NoSuchProcess || !crate::target::is_alive(options.pid) =>
        {
            return Err(Error::new(
                ErrorKind::NoSuchProcess,
                format!(
                    "PID {} exited between the two snapshots: there is nothing to compare",
                    options.pid
                ),
            ))
        }
        Err(err) => {
            return Err(Error::new(
                err.kind,
                format!(
                    "{}; the helper's watchdog stops tracemalloc (if this run started it) as \
                     this tool ends",
                    err.message
                ),
            ))
        }
    };
    let version = after.figures["version"]
        .as_array()
        .map(|v| (v[0].as_u64().unwrap_or(0), v[1].as_u64().unwrap_or(0)))
        .unwrap_or((0, 0));
    let differences = traces::compare(
        &before.traces,
        &after.traces,
        options.granularity,
        version >= (3, 7),
    );
    let reply = &after.figures;
    let traced_change: i64 = differences.iter().map(|d| d.size_diff).sum();
    let tracemalloc_memory_change =
        int(reply, "tracemalloc_memory") - int(reply, "tracemalloc_memory_before");
    Ok(Comparison {
        pid: options.pid,
        seconds: reply["seconds"].as_f64().unwrap_or(0.0),
        frames: reply["frames"].as_u64().unwrap_or(0),
        granularity: options.granularity,
        started_by_us,
        traced_change,
        traced_count_change: differences.iter().map(|d| d.count_diff).sum(),
        tracemalloc_memory_change,
        compensated_change: traced_change - tracemalloc_memory_change,
        groups: differences.len() as u64,
        top: differences
            .into_iter()
            .take(options.top)
            .map(|d| Group {
                frames: d.frames.iter().map(|(f, l)| (f.to_string(), *l)).collect(),
                size_before: d.size - d.size_diff,
                size_after: d.size,
                size_diff: d.size_diff,
                count_before: d.count - d.count_diff,
                count_after: d.count,
                count_diff: d.count_diff,
            })
            .collect(),
        injection_round_trip_seconds: [
            first.round_trip.as_secs_f64(),
            second.round_trip.as_secs_f64(),
        ],
        injection_methods: [first.delivery.to_string(), second.delivery.to_string()],
    })
}

/// Waits for the duration, Ctrl-C or the target's exit, with a counter on a terminal.
fn wait(pid: i32, duration: Option<f64>, stop: &Arc<AtomicBool>) {
    let started = Instant::now();
    let live = std::io::stderr().is_terminal();
    loop {
        if stop.load(Ordering::Relaxed) || !crate::target::is_alive(pid) {
            break;
        }
        let elapsed = started.elapsed().as_secs_f64();
        if duration.is_some_and(|d| elapsed >= d) {
            break;
        }
        if live {
            eprint!("\rtracing: {elapsed:.0} s ");
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if live {
        eprint!("\r{}\r", " ".repeat(20));
    }
}

fn place(frames: &[(String, i64)], granularity: Granularity) -> String {
    match (granularity, frames.first()) {
        (_, None) => "<unknown>".into(),
        (Granularity::Filename, Some((file, _))) => file.clone(),
        (Granularity::Lineno, Some((file, line))) => format!("{file}:{line}"),
        (Granularity::Traceback, _) => frames
            .iter()
            .map(|(file, line)| format!("{file}:{line}"))
            .collect::<Vec<_>>()
            .join(" <- "),
    }
}

/// The summary table.
pub fn write_table(out: &mut dyn Write, result: &Comparison, command: &str) -> std::io::Result<()> {
    writeln!(
        out,
        "pymemtrace tracemalloc: PID {} ({}), {:.1} s between snapshots, {} frame{}, by {}",
        result.pid,
        crate::report::collapsed::truncate(command, 60),
        result.seconds,
        result.frames,
        if result.frames == 1 { "" } else { "s" },
        result.granularity.key()
    )?;
    writeln!(
        out,
        "traced change {} in {} blocks; tracemalloc's own memory {}; compensated change {}",
        human_delta(result.traced_change),
        signed(result.traced_count_change),
        human_delta(result.tracemalloc_memory_change),
        human_delta(result.compensated_change)
    )?;
    writeln!(
        out,
        "{}",
        if result.started_by_us {
            "tracemalloc was started for this run and stopped after it."
        } else {
            "tracemalloc was already running: it was left running, with its own snapshots untouched."
        }
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "{:>12} {:>12} {:>12} {:>10} {:>10} {:>10}  WHERE",
        "BEFORE", "AFTER", "CHANGE", "COUNT", "AFTER", "CHANGE"
    )?;
    for group in &result.top {
        writeln!(
            out,
            "{:>12} {:>12} {:>12} {:>10} {:>10} {:>10}  {}",
            human_bytes(group.size_before),
            human_bytes(group.size_after),
            human_delta(group.size_diff),
            thousands(group.count_before.max(0) as u64),
            thousands(group.count_after.max(0) as u64),
            signed(group.count_diff),
            place(&group.frames, result.granularity)
        )?;
    }
    if result.groups as usize > result.top.len() {
        writeln!(
            out,
            "... {} more groups (--top N shows more)",
            result.groups as usize - result.top.len()
        )?;
    }
    Ok(())
}

fn signed(n: i64) -> String {
    let sign = if n > 0 {
        "+"
    } else if n < 0 {
        "-"
    } else {
        ""
    };
    format!("{sign}{}", thousands(n.unsigned_abs()))
}
