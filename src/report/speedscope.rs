//! speedscope's file format (https://www.speedscope.app/file-format-schema.json), weights in bytes.

use std::io::{self, Write};

use serde_json::json;

use crate::attribution::Profile;
use crate::report::Meta;

pub fn write(out: &mut dyn Write, meta: &Meta, profile: &Profile) -> io::Result<()> {
    // speedscope indexes frames in a shared table; the profile's frame ids are reused as indexes
    // after compacting them to the frames that appear in charged stacks.
    let mut index_of: Vec<Option<usize>> = Vec::new();
    let mut frames = Vec::new();
    let mut samples = Vec::new();
    let mut weights = Vec::new();
    for (stack, totals) in profile.function_paths() {
        let net = totals.net();
        if net <= 0 {
            continue;
        }
        let sample: Vec<usize> = stack
            .iter()
            .map(|&id| {
                let slot = id as usize;
                if index_of.len() <= slot {
                    index_of.resize(slot + 1, None);
                }
                *index_of[slot].get_or_insert_with(|| {
                    let frame = profile.frame(id);
                    let mut entry = json!({ "name": frame.function });
                    if !frame.is_synthetic() {
                        entry["file"] = json!(frame.file);
                        entry["line"] = json!(frame.line);
                    }
                    frames.push(entry);
                    frames.len() - 1
                })
            })
            .collect();
        samples.push(sample);
        weights.push(net);
    }
    let total: i64 = weights.iter().sum();
    let name = format!(
        "pymemtrace: memory growth of PID {} ({})",
        meta.pid, meta.command_line
    );
    let document = json!({
        "$schema": "https://www.speedscope.app/file-format-schema.json",
        "exporter": format!("pymemtrace {}", meta.tool_version),
        "name": name,
        "activeProfileIndex": 0,
        "shared": { "frames": frames },
        "profiles": [{
            "type": "sampled",
            "name": name,
            "unit": "bytes",
            "startValue": 0,
            "endValue": total,
            "samples": samples,
            "weights": weights,
        }],
    });
    serde_json::to_writer(&mut *out, &document)?;
    writeln!(out)
}
