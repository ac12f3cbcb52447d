//! An event log in the format of cPyMemTrace's Profile logs, streamed while sampling.
//!
//! Layout as cPyMemTrace writes it: `SOF`, a `HDR:` line, a `FRST:` row, then for each logged event
//! a `NEXT:` row (preceded by a `PREV:` row when events were skipped since the last one), a `LAST:`
//! row and `EOF`. Differences, documented in docs/formats.md: an event is one stack read (not an
//! interpreter callback), What is `SAMPLE`, Clock is wall seconds since attach (not CPU time), and
//! PREV shows the stack read just before the change rather than repeating the last row.

use std::io::{self, Write};

use crate::attribution::{Profile, StackId, UNATTRIBUTED};
use crate::sampler::{Change, Observer};

/// Where the log's rows come from: the sampler's changes.
pub struct LogWriter<W: Write> {
    out: W,
    /// Log rows only when |RSS - last reported RSS| reaches this many bytes.
    trigger: u64,
    last_reported_rss: u64,
    last_reported_event: u64,
    error: Option<io::Error>,
}

/// One event row, without its `FRST:`/`NEXT:`/`PREV:`/`LAST:` prefix.
struct Row<'a> {
    event: u64,
    d_event: u64,
    clock: f64,
    file: &'a str,
    line: i32,
    function: &'a str,
    rss: u64,
    d_rss: i64,
}

impl std::fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<12} +{:<6} {:<12.6} {:<8} {:<80} {:>4} {:<32} {:>12} {:>12}",
            self.event,
            self.d_event,
            self.clock,
            "SAMPLE",
            self.file,
            self.line,
            self.function,
            self.rss,
            self.d_rss
        )
    }
}

fn leaf<'a>(profile: &'a Profile, charged: &[StackId]) -> (&'a str, i32, &'a str) {
    match charged.first().and_then(|&s| profile.stack(s).last()) {
        Some(&frame) => {
            let frame = profile.frame(frame);
            (&frame.file, frame.line, &frame.function)
        }
        None => ("", 0, UNATTRIBUTED),
    }
}

impl<W: Write> LogWriter<W> {
    /// Writes `SOF`, the header and the `FRST:` row for the RSS at attach.
    pub fn start(mut out: W, trigger: u64, rss_start: u64) -> io::Result<LogWriter<W>> {
        writeln!(out, "SOF")?;
        writeln!(
            out,
            "HDR: {:<12} {:<6}  {:<12} {:<8} {:<80} {:>4} {:<32} {:>12} {:>12}",
            "Event", "dEvent", "Clock", "What", "File", "Line", "Function", "RSS", "dRSS"
        )?;
        let first = Row {
            event: 0,
            d_event: 0,
            clock: 0.0,
            file: "",
            line: 0,
            function: "<attach>",
            rss: rss_start,
            d_rss: 0,
        };
        writeln!(out, "FRST: {first}")?;
        Ok(LogWriter {
            out,
            trigger: trigger.max(1),
            last_reported_rss: rss_start,
            last_reported_event: 0,
            error: None,
        })
    }

    /// Writes the `LAST:` row and `EOF`, and returns the first write error, if any.
    pub fn finish(mut self, samples: u64, clock: f64, rss_end: u64, why: &str) -> io::Result<W> {
        if let Some(err) = self.error.take() {
            return Err(err);
        }
        let d_rss = rss_end as i64 - self.last_reported_rss as i64;
        let d_event = samples.saturating_sub(self.last_reported_event);
        let what = format!("<end: {why}>");
        let last = Row {
            event: samples,
            d_event,
            clock,
            file: "",
            line: 0,
            function: &what,
            rss: rss_end,
            d_rss,
        };
        writeln!(self.out, "LAST: {last}")?;
        writeln!(self.out, "EOF")?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn log_change(&mut self, change: &Change<'_>, profile: &Profile) -> io::Result<()> {
        let d_rss = change.rss as i64 - self.last_reported_rss as i64;
        if d_rss.unsigned_abs() < self.trigger {
            return Ok(());
        }
        let d_event = change.sample - self.last_reported_event;
        if d_event > 1 && change.sample > 1 {
            if let Some(previous) = &change.previous {
                let (file, line, function) = leaf(profile, previous.charged);
                let d_prev = previous.rss as i64 - self.last_reported_rss as i64;
                let prev = Row {
                    event: change.sample - 1,
                    d_event: d_event - 1,
                    clock: previous.clock,
                    file,
                    line,
                    function,
                    rss: previous.rss,
                    d_rss: d_prev,
                };
                writeln!(self.out, "PREV: {prev}")?;
            }
        }
        let (file, line, function) = leaf(profile, change.charged);
        let next = Row {
            event: change.sample,
            d_event,
            clock: change.clock,
            file,
            line,
            function,
            rss: change.rss,
            d_rss,
        };
        writeln!(self.out, "NEXT: {next}")?;
        self.last_reported_rss = change.rss;
        self.last_reported_event = change.sample;
        Ok(())
    }
}

impl<W: Write> Observer for LogWriter<W> {
    fn change(&mut self, change: &Change<'_>, profile: &Profile) {
        if self.error.is_none() {
            if let Err(err) = self.log_change(change, profile) {
                self.error = Some(err);
            }
        }
    }
}
