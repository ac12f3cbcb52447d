//! The summary table printed on stdout at the end of a run.

use std::io::{self, Write};

use crate::attribution::FunctionSummary;
use crate::memory::{human_bytes, human_delta};
use crate::report::collapsed::truncate;
use crate::report::terminal::printable;
use crate::report::Meta;
use crate::sampler::Recording;

/// The share of change seen late above which the summary warns that shares are approximate.
pub const LATE_WARNING: f64 = 0.05;

/// A function below the top rows that released at least this share of all released bytes is
/// shown anyway, at most `LARGEST_RELEASES_SHOWN` of them. Rows are ordered by net growth, so a big
/// release (an interpreter freeing its heap at exit, a cache emptied) sinks to the very bottom,
/// and without it the top rows add up to far more than the run's net change.
const LARGE_RELEASE_SHARE: f64 = 0.05;
const LARGEST_RELEASES_SHOWN: usize = 3;

/// "12,345".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub fn write(
    out: &mut dyn Write,
    meta: &Meta,
    recording: &Recording,
    top: usize,
) -> io::Result<()> {
    let profile = &recording.profile;
    let overall = profile.overall();
    writeln!(
        out,
        "pymemtrace attach: PID {} ({}), Python {}",
        meta.pid,
        truncate(&printable(&meta.command_line), 70),
        meta.python_version
    )?;
    if let Some(mode) = &meta.mode {
        writeln!(out, "mode: {mode}")?;
    }
    let rate = recording
        .hot_rate()
        .map(|r| format!("; {:.0} stack reads/s while memory moved", r))
        .unwrap_or_default();
    writeln!(
        out,
        "sampled {:.1} s ({}); samples {}, lost {} ({:.2}%){}",
        recording.elapsed.as_secs_f64(),
        recording.end.describe(),
        thousands(recording.samples),
        thousands(recording.lost),
        recording.lost_fraction() * 100.0,
        rate
    )?;
    let recovery = &recording.recovery;
    if recovery.slow_reads > 0 {
        // A read that outlasts the sampling interval takes the ticks it covers with it: say so,
        // or a run that read twice in 3 s would pass for one that lost nothing.
        writeln!(
            out,
            "slow stack reads: {} took longer than the {} sampling interval (longest {:.2} s); \
             no stack was read meanwhile",
            thousands(recovery.slow_reads),
            interval(meta.rate),
            recovery.longest_read.as_secs_f64(),
        )?;
    }
    if recovery.retried + recovery.partial > 0 {
        // Reads that met a thread as it ended: say how they were saved, so that a run with many
        // is not taken for one where every stack came whole at the first try.
        writeln!(
            out,
            "threads ended mid-read: {} samples read again, {} read in part ({} ending thread \
             states left out)",
            thousands(recovery.retried),
            thousands(recovery.partial),
            thousands(recovery.threads_skipped),
        )?;
    }
    writeln!(
        out,
        "RSS {} -> {} ({}), peak {}; charged: grown {}, released {}, net {}",
        human_bytes(recording.rss_start as i64),
        human_bytes(recording.rss_end as i64),
        human_delta(recording.rss_end as i64 - recording.rss_start as i64),
        human_bytes(recording.rss_peak as i64),
        human_bytes(overall.grown as i64),
        human_bytes(overall.released as i64),
        human_delta(overall.net()),
    )?;
    if recording.late_fraction() > LATE_WARNING {
        writeln!(
            out,
            "warning: {:.0}% of the change was seen only after the tool itself went up to {} ms \
             without CPU (a busy machine), so where it was charged is approximate; run when the \
             machine is less loaded, or give the tool priority (nice -n -5 pymemtrace ...)",
            recording.late_fraction() * 100.0,
            recording.longest_gap.as_millis()
        )?;
    }
    writeln!(out)?;
    let functions = profile.functions();
    if functions.iter().all(|f| f.total_totals.charges == 0) {
        writeln!(out, "No RSS change was seen while sampling.")?;
        return Ok(());
    }
    writeln!(
        out,
        "{:>11} {:>11} {:>11} {:>11} {:>6}  {:<32} FILE:LINE",
        "SELF NET", "TOTAL NET", "GROWN", "RELEASED", "SHARE", "FUNCTION"
    )?;
    let row = |out: &mut dyn Write, f: &FunctionSummary| -> io::Result<()> {
        let location = if f.file.is_empty() {
            String::new()
        } else {
            format!("{}:{}", f.file, f.line)
        };
        writeln!(
            out,
            "{:>11} {:>11} {:>11} {:>11} {:>5.1}%  {:<32} {}",
            human_delta(f.self_totals.net()),
            human_delta(f.total_totals.net()),
            human_bytes(f.self_totals.grown as i64),
            human_bytes(f.self_totals.released as i64),
            f.share * 100.0,
            truncate(&f.function, 32),
            location
        )
    };
    for f in functions.iter().take(top) {
        row(out, f)?;
    }
    if functions.len() > top {
        writeln!(
            out,
            "... {} more functions (--top N shows more)",
            functions.len() - top
        )?;
        let released: u64 = functions.iter().map(|f| f.self_totals.released).sum();
        let mut large: Vec<&FunctionSummary> = functions[top..]
            .iter()
            .filter(|f| {
                f.self_totals.released > 0
                    && f.self_totals.released as f64 >= LARGE_RELEASE_SHARE * released as f64
            })
            .collect();
        large.sort_by_key(|f| std::cmp::Reverse(f.self_totals.released));
        large.truncate(LARGEST_RELEASES_SHOWN);
        if !large.is_empty() {
            writeln!(out, "of those, the largest releases:")?;
            for f in large {
                row(out, f)?;
            }
        }
    }
    Ok(())
}

/// The sampling interval of `rate` reads per second, as "10 ms".
fn interval(rate: f64) -> String {
    let seconds = 1.0 / rate.max(0.001);
    if seconds >= 1.0 {
        format!("{seconds:.1} s")
    } else {
        format!("{:.0} ms", seconds * 1000.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_separators() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(12034), "12,034");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
