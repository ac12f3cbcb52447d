//! `pymemtrace mallocstats`: two `sys._debugmallocstats()` captures taken inside the target, a wait
//! apart, parsed and compared here.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::error::{Error, ErrorKind, Result};
use crate::inject::{self, Options};

use super::{diff, parse, Diff, Stats};

/// Both captures, their comparison, and what the captures cost.
pub struct Captures {
    pub before: Stats,
    pub after: Stats,
    pub diff: Diff,
    pub seconds: f64,
    /// How long the target's fd 2 pointed at the capture file, per capture.
    pub windows: [f64; 2],
    pub round_trips: [f64; 2],
    /// How each capture's helper got in (pending call, direct call, gdb).
    pub deliveries: [String; 2],
}

fn capture(pid: i32, options: &Options) -> Result<(Stats, f64, f64, f64, String)> {
    let (reply, timing) = inject::run_helper(pid, &inject::MALLOCSTATS, &json!({}), options)?;
    let text = reply["text"].as_str().ok_or_else(|| {
        Error::new(
            ErrorKind::HelperFailed,
            "the mallocstats helper's reply has no text: not what the helper sends",
        )
    })?;
    let stats = parse(text).map_err(|err| {
        Error::new(
            ErrorKind::HelperFailed,
            format!("PID {pid}'s sys._debugmallocstats() output was not understood: {err}"),
        )
    })?;
    Ok((
        stats,
        reply["window_seconds"].as_f64().unwrap_or(0.0),
        reply["time"].as_f64().unwrap_or(0.0),
        timing.round_trip.as_secs_f64(),
        timing.delivery.to_string(),
    ))
}

/// Captures, waits for `duration` (or until `stop`), captures again, compares.
pub fn compare(
    pid: i32,
    duration: Option<f64>,
    timeout: f64,
    method: inject::Method,
    stop: &Arc<AtomicBool>,
) -> Result<Captures> {
    let options = Options {
        timeout: Duration::from_secs_f64(timeout),
        method,
        ..Options::default()
    };
    let (before, window_before, time_before, trip_before, how_before) = capture(pid, &options)?;
    eprintln!(
        "pymemtrace: first capture taken{}; Ctrl-C takes the second now",
        duration
            .map(|d| format!("; the second in {d} s"))
            .unwrap_or_default()
    );
    let started = Instant::now();
    while !stop.load(Ordering::Relaxed)
        && crate::target::is_alive(pid)
        && duration.is_none_or(|d| started.elapsed().as_secs_f64() < d)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (after, window_after, time_after, trip_after, how_after) =
        capture(pid, &options).map_err(|err| {
            if err.kind == ErrorKind::NoSuchProcess || !crate::target::is_alive(pid) {
                Error::new(
                    ErrorKind::NoSuchProcess,
                    format!(
                        "PID {pid} exited between the two captures: there is nothing to compare"
                    ),
                )
            } else {
                err
            }
        })?;
    let diff = diff(&before, &after);
    Ok(Captures {
        before,
        after,
        diff,
        seconds: time_after - time_before,
        windows: [window_before, window_after],
        round_trips: [trip_before, trip_after],
        deliveries: [how_before, how_after],
    })
}
