//! The `process` tool's terminal output: the live table (a row per process per tick, changes
//! coloured) and the summary printed at the end.

use crate::report::terminal::printable;
use std::io::{self, Write};

use anstyle::{AnsiColor, Style};

use crate::error::{Error, Result};
use crate::memory::{human_bytes, human_delta};
use crate::report::table::thousands;
use crate::timeline::run::TickObserver;
use crate::timeline::summary::{Collector, ProcessSummary, SeriesStats};
use crate::timeline::Tick;

const GROWTH: Style = AnsiColor::Red.on_default();
const SHRINK: Style = AnsiColor::Green.on_default();
const LABEL: Style = AnsiColor::Cyan.on_default().bold();
const HEADER: Style = Style::new().bold();

/// The header is repeated every this many rows, so a long scroll stays readable.
const ROWS_PER_HEADER: u64 = 40;

/// Prints a row per process per tick. Colour codes are dropped when the stream is not a terminal
/// (anstream decides).
pub struct LiveTable<W: Write> {
    out: W,
    rows_since_header: u64,
    /// Each process's RSS at its previous row, for the change column.
    previous_rss: std::collections::HashMap<u32, u64>,
    command_width: usize,
}

impl<W: Write> LiveTable<W> {
    pub fn new(out: W) -> LiveTable<W> {
        LiveTable {
            out,
            rows_since_header: ROWS_PER_HEADER,
            previous_rss: Default::default(),
            command_width: 48,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        writeln!(
            self.out,
            "{HEADER}{:>9} {:>7} {:>11} {:>11} {:>11} {:>9} {:>7} {:>6} {:>4}  COMMAND{HEADER:#}",
            "TIME(s)", "PID", "RSS", "CHANGE", "PEAK", "MINFLT/s", "MAJFLT/s", "CPU%", "THR"
        )
    }

    fn write_rows(&mut self, rows: &[Tick]) -> io::Result<()> {
        if self.rows_since_header >= ROWS_PER_HEADER {
            self.header()?;
            self.rows_since_header = 0;
        }
        if let Some(label) = rows.iter().find_map(|r| r.label.as_deref()) {
            writeln!(self.out, "{LABEL}--- {label} ---{LABEL:#}")?;
        }
        for (i, row) in rows.iter().enumerate() {
            let change = self
                .previous_rss
                .insert(row.pid, row.rss)
                .map(|before| row.rss as i64 - before as i64);
            let style = match change {
                Some(c) if c > 0 => GROWTH,
                Some(c) if c < 0 => SHRINK,
                _ => Style::new(),
            };
            let time = if i == 0 {
                format!("{:.2}", row.seconds)
            } else {
                String::new()
            };
            let change_text = match change {
                Some(0) => "0".to_string(),
                Some(c) => human_delta(c),
                None => "new".to_string(),
            };
            let indent = "  ".repeat(row.depth as usize);
            let command = crate::report::collapsed::truncate(
                &printable(&row.command),
                self.command_width.saturating_sub(indent.len()),
            );
            writeln!(
                self.out,
                "{:>9} {:>7} {style}{:>11} {:>11}{style:#} {:>11} {:>9} {:>7} {:>6.1} {:>4}  {indent}{command}",
                time,
                row.pid,
                human_bytes(row.rss as i64),
                change_text,
                human_bytes(row.peak_rss as i64),
                thousands(row.minor_faults_per_second.round() as u64),
                thousands(row.major_faults_per_second.round() as u64),
                row.cpu_percent,
                row.threads,
            )?;
            self.rows_since_header += 1;
        }
        self.out.flush()
    }
}

impl<W: Write> TickObserver for LiveTable<W> {
    fn tick(&mut self, rows: &[Tick]) -> Result<()> {
        // The terminal going away (a closed pipe) must not stop the recording.
        let _ = self.write_rows(rows);
        Ok(())
    }
}

/// How the run went, for the summary's first lines.
pub struct RunDescription {
    /// e.g. "10.0 s (target exited), 21 ticks every 0.5 s" or "read from run.jsonl: ...".
    pub how: String,
    /// The tool's own cost, for a live run.
    pub cost: Option<String>,
}

/// Bytes per second, for people and for scripts: "+1.0 MiB/s (+1,048,576 B/s)".
pub fn rate_text(bytes_per_second: f64) -> String {
    let sign = if bytes_per_second < 0.0 { "-" } else { "+" };
    format!(
        "{}/s ({sign}{} B/s)",
        human_delta(bytes_per_second.round() as i64),
        thousands(bytes_per_second.abs().round() as u64)
    )
}

fn rss_line(stats: &SeriesStats, peak: Option<u64>) -> String {
    let peak = peak
        .map(|p| format!(", peak (VmHWM) {}", human_bytes(p as i64)))
        .unwrap_or_default();
    format!(
        "start {}, end {} ({}), min {}, max {}, mean {}{peak}",
        human_bytes(stats.start as i64),
        human_bytes(stats.end as i64),
        human_delta(stats.end as i64 - stats.start as i64),
        human_bytes(stats.min as i64),
        human_bytes(stats.max as i64),
        human_bytes(stats.mean().round() as i64),
    )
}

/// The growth line and, when the climb is steady, the leak verdict.
fn growth_lines(stats: &SeriesStats, pid: u32) -> Vec<String> {
    match stats.fit.slope_and_r2() {
        None => vec!["growth: too few ticks to fit a rate".to_string()],
        Some((slope, r2)) => {
            let mut lines = vec![format!(
                "growth: {} by least squares over {:.1} s, R\u{b2} {:.2}",
                rate_text(slope),
                stats.seconds(),
                r2
            )];
            if stats.looks_like_a_leak() {
                lines.push(format!(
                    "  RSS climbed steadily (R\u{b2} {r2:.2}): the signature of a leak. \
                     `pymemtrace attach --pid {pid}` shows which Python functions grow it."
                ));
            } else if slope > 0.0 && r2 < 0.8 {
                lines.push(
                    "  no steady climb: RSS moved up and down rather than growing in a line."
                        .to_string(),
                );
            }
            lines
        }
    }
}

fn cpu_line(process: &ProcessSummary) -> String {
    let seconds = process.rss.seconds();
    let share = if seconds > 0.0 {
        format!(
            " ({:.1}% of a core on average)",
            process.cpu_seconds() / seconds * 100.0
        )
    } else {
        String::new()
    };
    format!(
        "CPU: {:.2} s user, {:.2} s system while watched{share}; threads up to {}",
        process.user_end - process.user_start,
        process.system_end - process.system_start,
        process.threads_max
    )
}

/// Writes the end-of-run summary.
pub fn write_summary(
    out: &mut dyn Write,
    collector: &Collector,
    run: &RunDescription,
) -> io::Result<()> {
    let Some(root) = collector.root() else {
        return writeln!(out, "pymemtrace process: no tick was recorded");
    };
    writeln!(
        out,
        "pymemtrace process: PID {} ({}), {}",
        root.pid,
        crate::report::collapsed::truncate(&printable(&root.command), 70),
        run.how
    )?;
    writeln!(out, "RSS: {}", rss_line(&root.rss, Some(root.peak_rss)))?;
    if let (Some(uss), Some(pss)) = (root.uss_end, root.pss_end) {
        writeln!(
            out,
            "at the end: USS {}, PSS {}",
            human_bytes(uss as i64),
            human_bytes(pss as i64)
        )?;
    }
    for line in growth_lines(&root.rss, root.pid) {
        writeln!(out, "{line}")?;
    }
    writeln!(out, "{}", cpu_line(root))?;
    if collector.processes.len() > 1 {
        writeln!(out)?;
        writeln!(
            out,
            "the tree: {} processes seen; total RSS {}",
            collector.processes.len(),
            rss_line(&collector.tree, None)
        )?;
        for line in growth_lines(&collector.tree, root.pid) {
            writeln!(out, "{line}")?;
        }
        writeln!(
            out,
            "{:>8} {:>8} {:>15} {:>11} {:>11} {:>11} {:>8}  COMMAND",
            "PID", "PPID", "SEEN(s)", "RSS START", "RSS END", "RSS MAX", "CPU(s)"
        )?;
        for process in &collector.processes {
            writeln!(
                out,
                "{:>8} {:>8} {:>15} {:>11} {:>11} {:>11} {:>8.2}  {}{}",
                process.pid,
                process.ppid,
                format!(
                    "{:.1}-{:.1}",
                    process.rss.first_seconds, process.rss.last_seconds
                ),
                human_bytes(process.rss.start as i64),
                human_bytes(process.rss.end as i64),
                human_bytes(process.rss.max as i64),
                process.cpu_seconds(),
                "  ".repeat(process.depth as usize),
                crate::report::collapsed::truncate(&printable(&process.command), 50),
            )?;
        }
    }
    if let Some(cost) = &run.cost {
        writeln!(out, "{cost}")?;
    }
    Ok(())
}

/// The summary as a string error-mapped for the CLI.
pub fn print_summary(collector: &Collector, run: &RunDescription) -> Result<()> {
    let stdout = io::stdout();
    let mut stdout = stdout.lock();
    write_summary(&mut stdout, collector, run)
        .and_then(|_| stdout.flush())
        .map_err(|err| Error::internal(format!("cannot write to stdout: {err}")))
}
