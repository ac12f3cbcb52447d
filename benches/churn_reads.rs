//! Why stack reads fail under thread churn: py-spy's library alone, reading a PID nonblocking at a
//! fixed rate (1 kHz, as `pymemtrace attach` while memory is flat) or back to back, and sorting
//! every failed `get_stack_traces()` by the step that failed and the error underneath.
//!
//! Usage: churn_reads PID SECONDS [RATE]   (RATE 0: back to back; default 1000)
//!
//! Prints one line of figures, `reads N failed N failed_twice N`, where `failed_twice` counts
//! reads whose immediate retry failed too (what `attach` counted as lost before it recovered per
//! thread), then one line per kind of failure, most frequent first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use py_spy::config::LockingStrategy;
use py_spy::{Config, PythonSpy};

/// The error's chain with numbers (thread ids, addresses) blanked, so that kinds group.
fn kind(err: &anyhow::Error) -> String {
    let mut chain: Vec<String> = err.chain().map(|e| e.to_string()).collect();
    // An io::Error wrapped by anyhow shows twice in the chain.
    chain.dedup();
    let text = chain.join(": ");
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        if c.is_ascii_hexdigit() && (in_number || c.is_ascii_digit()) {
            if !in_number {
                out.push('N');
            }
            in_number = true;
        } else {
            in_number = false;
            out.push(c);
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let (Some(pid), Some(seconds)) = (
        args.get(1).and_then(|a| a.parse::<i32>().ok()),
        args.get(2).and_then(|a| a.parse::<f64>().ok()),
    ) else {
        eprintln!("usage: churn_reads PID SECONDS [RATE]");
        std::process::exit(2);
    };
    let rate = args
        .get(3)
        .and_then(|a| a.parse::<f64>().ok())
        .unwrap_or(1000.0);
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
    let period = (rate > 0.0).then(|| Duration::from_secs_f64(1.0 / rate));
    let start = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let (mut reads, mut failed, mut failed_twice) = (0u64, 0u64, 0u64);
    let mut kinds: HashMap<String, u64> = HashMap::new();
    let mut next = start;
    while start.elapsed() < limit {
        if let Some(period) = period {
            let now = Instant::now();
            if now < next {
                std::thread::sleep(next - now);
            }
            next += period;
        }
        reads += 1;
        if let Err(err) = spy.get_stack_traces() {
            failed += 1;
            *kinds.entry(kind(&err)).or_default() += 1;
            if spy.get_stack_traces().is_err() {
                failed_twice += 1;
            }
        }
    }
    println!("reads {reads} failed {failed} failed_twice {failed_twice}");
    let mut kinds: Vec<(String, u64)> = kinds.into_iter().collect();
    kinds.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    for (kind, n) in kinds {
        println!("  {n:6}  {kind}");
    }
}
