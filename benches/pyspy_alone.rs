//! Baseline for the throughput benchmark: py-spy's library alone, reading stacks from a PID as
//! fast as it can (nonblocking, as `pymemtrace attach` does).
//!
//! Usage: pyspy_alone PID SECONDS   (prints "reads_per_second failures")

use std::time::{Duration, Instant};

use py_spy::config::LockingStrategy;
use py_spy::{Config, PythonSpy};

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let (Some(pid), Some(seconds)) = (
        args.get(1).and_then(|a| a.parse::<i32>().ok()),
        args.get(2).and_then(|a| a.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: pyspy_alone PID SECONDS");
        std::process::exit(2);
    };
    let config = Config {
        blocking: LockingStrategy::NonBlocking,
        collect_thread_names: false,
        ..Config::default()
    };
    let mut spy = match PythonSpy::new(pid, &config) {
        Ok(spy) => spy,
        Err(err) => {
            eprintln!("cannot read PID {pid}: {err}");
            std::process::exit(1);
        }
    };
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let (mut reads, mut failures) = (0u64, 0u64);
    while start.elapsed() < limit {
        match spy.get_stack_traces() {
            Ok(traces) => {
                std::hint::black_box(traces);
                reads += 1;
            }
            Err(_) => failures += 1,
        }
    }
    println!(
        "{:.1} {}",
        reads as f64 / start.elapsed().as_secs_f64(),
        failures
    );
}
