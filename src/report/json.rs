//! The whole result as one JSON document (schema described in docs/formats.md).

use std::io::{self, Write};

use serde_json::{json, Value};

use crate::attribution::Profile;
use crate::report::Meta;
use crate::sampler::Recording;

fn seconds_since_epoch(time: std::time::SystemTime) -> f64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn frames_json(profile: &Profile, frames: &[u32]) -> Value {
    Value::Array(
        frames
            .iter()
            .map(|&id| {
                let frame = profile.frame(id);
                json!({ "function": frame.function, "file": frame.file, "line": frame.line })
            })
            .collect(),
    )
}

pub fn to_value(meta: &Meta, recording: &Recording) -> Value {
    let profile = &recording.profile;
    let overall = profile.overall();
    let net_growth = profile.net_growth();
    let functions: Vec<Value> = profile
        .functions()
        .into_iter()
        .map(|f| {
            json!({
                "function": f.function,
                "file": f.file,
                "line": f.line,
                "self": { "grown": f.self_totals.grown, "released": f.self_totals.released, "net": f.self_totals.net() },
                "total": { "grown": f.total_totals.grown, "released": f.total_totals.released, "net": f.total_totals.net() },
                "share": f.share,
            })
        })
        .collect();
    let mut stacks: Vec<(i64, Value)> = profile
        .charged_stacks()
        .map(|(_, frames, totals)| {
            (
                totals.net(),
                json!({
                    "frames": frames_json(profile, frames),
                    "grown": totals.grown,
                    "released": totals.released,
                    "net": totals.net(),
                    "charges": totals.charges,
                }),
            )
        })
        .collect();
    stacks.sort_by_key(|(net, _)| std::cmp::Reverse(*net));
    json!({
        "tool": "pymemtrace attach",
        "version": meta.tool_version,
        "mode": meta.mode.as_deref().unwrap_or("sampling"),
        "target": {
            "pid": meta.pid,
            "command_line": meta.command_line,
            "executable": meta.executable,
            "python_version": meta.python_version,
        },
        "settings": {
            "rate": meta.rate,
            "max_rate": meta.max_rate,
            "blocking": meta.blocking,
            "threads": meta.threads,
            "idle": meta.idle,
        },
        "started_unix": seconds_since_epoch(recording.started),
        "duration_seconds": recording.elapsed.as_secs_f64(),
        "end": recording.end.describe(),
        "samples": recording.samples,
        "lost": recording.lost,
        "lost_fraction": recording.lost_fraction(),
        "retried_samples": recording.recovery.retried,
        "partial_samples": recording.recovery.partial,
        "threads_skipped": recording.recovery.threads_skipped,
        "per_thread_recovery": recording.recovery.by_thread,
        "slow_reads": recording.recovery.slow_reads,
        "longest_read_seconds": recording.recovery.longest_read.as_secs_f64(),
        "rss_polls": recording.rss_polls,
        "threads_without_kernel_id": recording.threads_without_id,
        "late_fraction": recording.late_fraction(),
        "longest_gap_seconds": recording.longest_gap.as_secs_f64(),
        "stack_reads_per_second_while_moving": recording.hot_rate(),
        "rss": {
            "start": recording.rss_start,
            "end": recording.rss_end,
            "peak": recording.rss_peak,
            "change": recording.rss_end as i64 - recording.rss_start as i64,
        },
        "charged": {
            "grown": overall.grown,
            "released": overall.released,
            "net": overall.net(),
            "net_growth": net_growth,
        },
        "functions": functions,
        "stacks": stacks.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
    })
}

pub fn write(out: &mut dyn Write, meta: &Meta, recording: &Recording) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &to_value(meta, recording))?;
    writeln!(out)
}
