//! The tool's own memory after an hour of samples: feeds the attribution model (src/attribution)
//! with TICKS stack reads the way the attach loop does, and prints the process's peak RSS.
//!
//! Each tick is one stack read of THREADS threads: every frame arrives as fresh owned strings (as
//! py-spy returns them), is interned with `Profile::intern_frame`, the stack with
//! `Profile::intern_stack`, the chargeable threads are picked with `chargeable`, and one tick in
//! four carries an RSS change charged with `Profile::charge` (growth and release alike). At the end
//! the report's figures are computed (`Profile::functions`, the collapsed stacks). Interning makes
//! the model's memory depend on the number of distinct stacks, not of ticks, so two workloads run:
//!
//!   service   4 threads, stacks 25 frames deep drawn from 400 shapes with varying leaf lines
//!             (about 3,000 distinct stacks)
//!   distinct  the same, but thread 0's stack cycles through 100,000 distinct stacks (far more
//!             than a real program shows in an hour: the model's memory per distinct stack)
//!
//! Usage: aggregator_memory WORKLOAD TICKS   (prints one JSON line)
//! Run by benches/compare.py; one workload per process so each peak RSS is its own.

use std::time::Instant;

use pymemtrace::attribution::{chargeable, Frame, FrameId, Profile, ThreadSample};
use pymemtrace::report::collapsed;

/// Tiny deterministic generator (xorshift), so every run feeds the same ticks.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// One frame as py-spy hands it over: owned strings, made afresh for every read.
fn frame(function: usize, line: i32) -> Frame {
    Frame {
        function: format!("handler_function_{function}"),
        file: format!("/srv/app/package/module_{}.py", function % 40),
        line,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let workload = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("service")
        .to_string();
    let ticks: u64 = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_600_000);
    let (threads, depth, shapes) = match workload.as_str() {
        "service" => (4usize, 25usize, 400usize),
        "distinct" => (4, 25, 400),
        other => {
            eprintln!("unknown workload {other}: service or distinct");
            std::process::exit(2);
        }
    };
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    // Each shape: the function index of each frame, outermost first.
    let shape_functions: Vec<Vec<usize>> = (0..shapes)
        .map(|_| (0..depth).map(|_| (rng.next() % 300) as usize).collect())
        .collect();

    let rss_before = status_kib("VmRSS:");
    let mut profile = Profile::new();
    let started = Instant::now();
    let mut charged_ticks = 0u64;
    for tick in 0..ticks {
        let mut samples: Vec<ThreadSample> = Vec::with_capacity(threads);
        for thread in 0..threads {
            let distinct = workload == "distinct" && thread == 0;
            let pick = if distinct {
                (tick % 100_000 % shapes as u64) as usize
            } else {
                (rng.next() % shapes as u64) as usize
            };
            let shape = &shape_functions[pick];
            let mut ids: Vec<FrameId> = Vec::with_capacity(depth);
            for (position, &function) in shape.iter().enumerate() {
                let line = if position + 1 == depth {
                    if distinct {
                        // A new leaf line every tick, cycling over 100,000.
                        (tick % 100_000) as i32 + 1
                    } else {
                        10 + (rng.next() % 8) as i32
                    }
                } else {
                    10 + (function % 5) as i32
                };
                ids.push(profile.intern_frame(frame(function, line)));
            }
            samples.push(ThreadSample {
                stack: profile.intern_stack(ids),
                owns_gil: thread == (tick % threads as u64) as usize,
                active: thread < 2,
                os_thread_id: Some(1000 + thread as u64),
            });
        }
        let charge = chargeable(&samples, false);
        if tick.is_multiple_of(4) {
            charged_ticks += 1;
            let delta = if rng.next().is_multiple_of(3) {
                -4096
            } else {
                8192
            };
            profile.charge(delta, &charge);
        }
        std::hint::black_box(&samples);
    }
    let feed_seconds = started.elapsed().as_secs_f64();
    let peak_after_feed = status_kib("VmHWM:");
    let rss_after_feed = status_kib("VmRSS:");
    let report_started = Instant::now();
    let functions = profile.functions();
    let lines = collapsed::lines(&profile, false);
    let report_seconds = report_started.elapsed().as_secs_f64();
    let peak_after_report = status_kib("VmHWM:");
    println!(
        "{{\"workload\": \"{workload}\", \"ticks\": {ticks}, \"threads\": {threads}, \"depth\": {depth}, \
         \"charged_ticks\": {charged_ticks}, \"stacks\": {}, \"functions\": {}, \"collapsed_lines\": {}, \
         \"rss_before_kib\": {rss_before}, \"rss_after_feed_kib\": {rss_after_feed}, \
         \"peak_after_feed_kib\": {peak_after_feed}, \"peak_after_report_kib\": {peak_after_report}, \
         \"feed_seconds\": {feed_seconds:.3}, \"ns_per_tick\": {:.1}, \"report_seconds\": {report_seconds:.3}}}",
        profile.stack_count(),
        functions.len(),
        lines.len(),
        feed_seconds * 1e9 / ticks as f64,
    );
}
