//! Collapsed stacks (py-spy's raw format) and the flamegraph SVG drawn from them by inferno.

use std::io::{self, Write};

use crate::attribution::Profile;
use crate::report::{frame_label, Meta};

/// One line per function path, outermost frame first: `frame;frame;...;frame VALUE`.
/// VALUE is the net growth in bytes (paths with net <= 0 left out), or the released bytes.
pub fn lines(profile: &Profile, released: bool) -> Vec<String> {
    let mut lines: Vec<String> = profile
        .function_paths()
        .into_iter()
        .filter_map(|(frames, totals)| {
            let value = if released {
                totals.released as i64
            } else {
                totals.net()
            };
            if value <= 0 {
                return None;
            }
            let path: Vec<String> = frames
                .iter()
                .map(|&id| frame_label(profile.frame(id)).replace(';', ":"))
                .collect();
            Some(format!("{} {}", path.join(";"), value))
        })
        .collect();
    lines.sort();
    lines
}

pub fn write(out: &mut dyn Write, profile: &Profile, released: bool) -> io::Result<()> {
    for line in lines(profile, released) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}

pub fn write_flamegraph(
    out: &mut dyn Write,
    meta: &Meta,
    profile: &Profile,
    released: bool,
) -> io::Result<()> {
    use inferno::flamegraph::{self, color::BasicPalette, Options, Palette};
    let lines = lines(profile, released);
    let mut options = Options::default();
    options.title = format!(
        "pymemtrace: memory {} by PID {} ({}, Python {})",
        if released { "released" } else { "growth" },
        meta.pid,
        truncate(&super::terminal::printable(&meta.command_line), 60),
        meta.python_version
    );
    options.count_name = "bytes".to_string();
    options.colors = Palette::Basic(BasicPalette::Mem);
    if lines.is_empty() {
        // inferno refuses an empty profile; an explicit frame says there was nothing to show.
        let empty = ["<no net memory growth was seen> 1"];
        return flamegraph::from_lines(&mut options, empty.iter().copied(), out)
            .map_err(|e| io::Error::other(e.to_string()));
    }
    flamegraph::from_lines(&mut options, lines.iter().map(String::as_str), out)
        .map_err(|e| io::Error::other(e.to_string()))
}

pub fn truncate(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_string()
    } else {
        let head: String = text.chars().take(max_chars.saturating_sub(3)).collect();
        format!("{head}...")
    }
}
