//! `pymemtrace tracemalloc`: two tracemalloc snapshots taken inside the target, compared there,
//! with tracemalloc's own memory compensated for, and the target put back as it was.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, ErrorKind, Result};
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

fn int(value: &Value, key: &str) -> i64 {
    value[key].as_i64().unwrap_or(0)
}

fn not_helper_reply(what: &str) -> Error {
    Error::new(
        ErrorKind::HelperFailed,
        format!("the tracemalloc helper's reply lacks {what}: not what the helper sends"),
    )
}

fn parse_group(value: &Value) -> Result<Group> {
    let frames = value["frames"]
        .as_array()
        .ok_or_else(|| not_helper_reply("frames"))?
        .iter()
        .map(|f| {
            Ok((
                f[0].as_str()
                    .ok_or_else(|| not_helper_reply("a file"))?
                    .to_string(),
                f[1].as_i64().ok_or_else(|| not_helper_reply("a line"))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let (size, size_diff) = (int(value, "size"), int(value, "size_diff"));
    let (count, count_diff) = (int(value, "count"), int(value, "count_diff"));
    Ok(Group {
        frames,
        size_before: size - size_diff,
        size_after: size,
        size_diff,
        count_before: count - count_diff,
        count_after: count,
        count_diff,
    })
}

/// Runs the two steps around a wait of `duration` (or until `stop`).
pub fn compare(options: &TracemallocOptions, stop: &Arc<AtomicBool>) -> Result<Comparison> {
    let inject_options = Options {
        timeout: Duration::from_secs_f64(options.timeout),
        method: options.method,
        ..Options::default()
    };
    let start_request = json!({"action": "start", "frames": options.frames});
    let (started, first) = inject::run_helper_with_fallback(
        options.pid,
        &inject::TRACEMALLOC,
        &start_request,
        inject::TRACEMALLOC_FALLBACK,
        &inject_options,
    )?;
    let started_by_us = started["started_by_us"].as_bool().unwrap_or(false);
    eprintln!(
        "pymemtrace: first snapshot taken ({}, {} frame{}){}; Ctrl-C takes the second snapshot now",
        if started_by_us {
            "tracemalloc started for this run"
        } else {
            "tracemalloc was already running"
        },
        started["frames"],
        if started["frames"] == 1 { "" } else { "s" },
        options
            .duration
            .map(|d| format!("; the second in {d} s"))
            .unwrap_or_default(),
    );
    wait(options.pid, options.duration, stop);
    let finish_request = json!({
        "action": "finish",
        "granularity": options.granularity.key(),
        "top": options.top,
    });
    let finished = inject::run_helper_with_fallback(
        options.pid,
        &inject::TRACEMALLOC,
        &finish_request,
        inject::TRACEMALLOC_FALLBACK,
        &inject_options,
    );
    let (reply, second) = match finished {
        Ok(done) => done,
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
        Err(err) if err.message.contains("did not run within") => {
            return Err(Error::new(
                err.kind,
                format!(
                    "{}; when it runs it stops tracemalloc (if this run started it) and frees the \
                     first snapshot",
                    err.message
                ),
            ))
        }
        Err(err) => {
            // The second step failed before it was queued: undo the first one now.
            let _ = inject::run_helper(
                options.pid,
                &inject::TRACEMALLOC,
                &json!({"action": "abort"}),
                &inject_options,
            );
            return Err(err);
        }
    };
    let top = reply["top"]
        .as_array()
        .ok_or_else(|| not_helper_reply("top"))?
        .iter()
        .map(parse_group)
        .collect::<Result<Vec<_>>>()?;
    let traced_change = int(&reply, "total_size_diff");
    let tracemalloc_memory_change =
        int(&reply, "tracemalloc_memory_after") - int(&reply, "tracemalloc_memory_before");
    Ok(Comparison {
        pid: options.pid,
        seconds: reply["seconds"].as_f64().unwrap_or(0.0),
        frames: reply["frames"].as_u64().unwrap_or(0),
        granularity: options.granularity,
        started_by_us,
        traced_change,
        traced_count_change: int(&reply, "total_count_diff"),
        tracemalloc_memory_change,
        compensated_change: traced_change - tracemalloc_memory_change,
        groups: reply["groups"].as_u64().unwrap_or(0),
        top,
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
