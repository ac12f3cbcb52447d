//! `pymemtrace attach` on a target whose threads are created and end thousands of times a second
//! (fixtures/thread_churn.py), on every interpreter: under 1% of ticks lost, and the memory the
//! main thread keeps still charged to the function that keeps it.
//!
//! py-spy's library alone fails 1-5% of its reads on this target, and one retry left up to 1% of
//! ticks lost on 3.11-3.13 (docs/reliability.md, "Thread churn"; the full measurement is
//! `python3 benches/thread_churn.py`). Each case runs the fixture for 2.5 s: about 3 s per
//! interpreter, 30 s for the ten.

mod common;

use common::*;
use pymemtrace::report::table::thousands;

/// Seconds the fixture runs: long enough for thousands of reads (at 0.3-1 ms each under churn,
/// so 1% is tens of reads), short enough for the file's CI budget (about 60 s).
const SECONDS: &str = "2.5";
/// Below this the fixture did not churn (a starved machine): the case proves nothing and fails
/// rather than passing vacuously. It reaches 1,400-6,000 threads/s here under the tool.
const MIN_CHURN_PER_SECOND: f64 = 300.0;

#[test]
fn thread_churn_loses_under_one_percent_of_ticks_and_keeps_attribution() {
    let _serial = serial();
    on_every_interpreter("thread_churn", |python| {
        let scratch = Scratch::new("churn");
        let json = scratch.path("result.json");
        let output = run_to_end(
            tool()
                .args(["attach", "-o", &json, "--"])
                .arg(&python.path)
                .arg(fixture("thread_churn.py"))
                .args(["--seconds", SECONDS]),
        );
        if !output.status.success() {
            return Err(format!(
                "exit {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&output.stdout);
        let done = stdout
            .lines()
            .find(|l| l.starts_with("done kept="))
            .ok_or(format!("the fixture did not finish: {stdout:?}"))?;
        let field = |name: &str| -> f64 {
            done.split_whitespace()
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let (kept, churn) = (field("kept="), field("rate="));

        let result = read_json(&json);
        let samples = result["samples"].as_u64().unwrap_or(0);
        let lost = result["lost"].as_u64().unwrap_or(u64::MAX);
        let lost_fraction = result["lost_fraction"].as_f64().unwrap_or(1.0);
        let partial = result["partial_samples"].as_u64().unwrap_or(u64::MAX);
        let retried = result["retried_samples"].as_u64().unwrap_or(u64::MAX);
        let keep = self_bytes(&result, "keep_blocks", "net") as f64;
        let figures = format!(
            "churn {churn:.0} threads/s, samples {samples}, retried {retried}, partial {partial} \
             (threads skipped {}), lost {lost} ({:.2}%), keep_blocks {:.1} of {:.1} MiB ({:.1}%), \
             compute share {:.1}%",
            result["threads_skipped"],
            lost_fraction * 100.0,
            keep / 1048576.0,
            kept / 1048576.0,
            keep / kept * 100.0,
            share(&result, "compute") * 100.0,
        );
        // The table on stdout says the same as the JSON.
        let said = format!(
            "threads ended mid-read: {} samples read again, {} read in part ({} ending thread \
             states left out)",
            thousands(retried),
            thousands(partial),
            thousands(result["threads_skipped"].as_u64().unwrap_or(u64::MAX)),
        );
        if retried + partial > 0 && !stdout.lines().any(|l| l == said) {
            return Err(format!("the table does not say {said:?}: {figures}"));
        }
        if churn < MIN_CHURN_PER_SECOND {
            return Err(format!("the fixture hardly churned: {figures}"));
        }
        // The figures must add up: lost_fraction is lost over all ticks, partial and retried
        // samples are samples.
        let attempts = (samples + lost) as f64;
        if samples < 1000
            || (lost_fraction - lost as f64 / attempts).abs() > 1e-9
            || partial + retried > samples
        {
            return Err(format!("figures do not add up: {figures}"));
        }
        // On 3.11-3.13 py-spy fails 2-4% of its reads on this fixture (100-230 retried samples per
        // run here): none at all would mean the churn no longer tests the recovery.
        let newer = ["3.11", "3.12", "3.13"]
            .iter()
            .any(|v| python.label.trim_start_matches("debian-") == *v);
        if newer && retried + partial == 0 {
            return Err(format!(
                "no read failed, so nothing was recovered: {figures}"
            ));
        }
        if lost_fraction >= 0.01 {
            return Err(format!("lost 1% of ticks or more: {figures}"));
        }
        // The thread-list offsets were checked on this interpreter, so a read that fails on an
        // ending thread can fall back to the threads after it.
        if result["per_thread_recovery"] != true {
            return Err(format!("per-thread recovery was off: {figures}"));
        }
        // keep_blocks grows 4 MiB blocks in 64 KiB steps, each followed by a wait in keep_blocks
        // itself, and compute follows each block. statm (what attach polls) lags the page faults
        // by up to 31 pages per CPU (how-it-works.md), so up to that much of a block shows only
        // after keep_blocks returned and goes to what ran then: 6.1% of a block on 2 CPUs. Four
        // points more for the rest: reads slowed by churn on a shared machine (0.3-1 ms each),
        // and growth the interpreter's own thread bookkeeping adds while keep_blocks runs (which
        // is also why the upper bound is 105%, not 100%). Seen here: 95-100%.
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get()) as f64;
        let statm_lag = 31.0 * 4096.0 * cpus / (4.0 * 1048576.0);
        let lowest = 1.0 - statm_lag - 0.04;
        let ratio = keep / kept;
        if !(lowest..=1.05).contains(&ratio) {
            return Err(judged(
                &result,
                format!("keep_blocks not charged with what it kept: {figures}"),
            ));
        }
        Ok(figures)
    });
}
