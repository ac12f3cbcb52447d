//! The `process` log: one JSON object per process per tick, streamed and flushed every tick, and
//! read back for `--input`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};
use crate::report::atomic::{self, StreamedFile};
use crate::timeline::run::TickObserver;
use crate::timeline::Tick;

/// Writes rows as they come; each tick is flushed, so a crash loses at most the tick being written.
pub struct JsonlWriter {
    path: PathBuf,
    file: BufWriter<StreamedFile>,
    rows: u64,
}

impl JsonlWriter {
    /// Opens the log now, so that a bad path fails before the run starts. A regular file is
    /// written in place (not renamed into place like the other outputs) and a link at its name
    /// is refused rather than followed; a device or FIFO is written into (see
    /// [`crate::report::atomic`]).
    pub fn create(path: &Path) -> Result<JsonlWriter> {
        let file = atomic::open_streamed(path).map_err(|err| {
            let why = if err.raw_os_error() == Some(libc::ELOOP) {
                "it is a symbolic link, which this log is never written through; give the \
                 path it points to"
                    .to_string()
            } else {
                err.to_string()
            };
            Error::new(
                ErrorKind::OutputNotWritable,
                format!("cannot write `{}`: {why}", path.display()),
            )
        })?;
        Ok(JsonlWriter {
            path: path.to_path_buf(),
            file: BufWriter::new(file),
            rows: 0,
        })
    }

    /// Whether the log is a regular file this run created or truncated (so that it may remove it
    /// again when nothing was recorded); a device or FIFO is never removed.
    pub fn is_regular_file(&self) -> bool {
        self.file.get_ref().is_regular_file()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn write_rows(&mut self, rows: &[Tick]) -> std::io::Result<()> {
        for row in rows {
            serde_json::to_writer(&mut self.file, row)?;
            self.file.write_all(b"\n")?;
            self.rows += 1;
        }
        self.file.flush()
    }
}

impl TickObserver for JsonlWriter {
    fn tick(&mut self, rows: &[Tick]) -> Result<()> {
        self.write_rows(rows).map_err(|err| {
            Error::new(
                ErrorKind::OutputNotWritable,
                format!("writing `{}` failed: {err}", self.path.display()),
            )
        })
    }
}

/// The longest line accepted from a log (a row is about 400 bytes; a command line can be long).
const MAX_LINE: usize = 1 << 20;

/// Reads a log and hands each tick's rows (consecutive rows with the same `seconds`) to `each`.
/// A last line cut short (the writer was killed mid-line) is skipped and reported in the returned
/// count; any other bad line is an error that names the line.
pub fn read_ticks(path: &Path, each: &mut dyn FnMut(&[Tick])) -> Result<ReadOutcome> {
    let file = File::open(path).map_err(|err| {
        Error::new(
            ErrorKind::BadInput,
            format!("cannot read `{}`: {err}", path.display()),
        )
    })?;
    read_ticks_from(&mut BufReader::new(file), path, each)
}

/// [`read_ticks`] on an open reader; `path` only names the input in messages.
pub fn read_ticks_from(
    reader: &mut dyn BufRead,
    path: &Path,
    each: &mut dyn FnMut(&[Tick]),
) -> Result<ReadOutcome> {
    let bad_input = |message: String| Error::new(ErrorKind::BadInput, message);
    let mut outcome = ReadOutcome::default();
    let mut rows: Vec<Tick> = Vec::new();
    let mut line = Vec::new();
    let mut number = 0usize;
    loop {
        line.clear();
        let read = (&mut *reader)
            .take(MAX_LINE as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|err| bad_input(format!("cannot read `{}`: {err}", path.display())))?;
        if read == 0 {
            break;
        }
        number += 1;
        let complete = line.last() == Some(&b'\n');
        if line.len() > MAX_LINE {
            return Err(bad_input(format!(
                "`{}` line {number} is longer than {MAX_LINE} bytes: not a pymemtrace process log",
                path.display()
            )));
        }
        let text = String::from_utf8_lossy(&line);
        if text.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Tick>(text.trim()) {
            Ok(tick) if tick.seconds.is_finite() => {
                if rows.first().is_some_and(|r| r.seconds != tick.seconds) {
                    each(&rows);
                    outcome.ticks += 1;
                    rows.clear();
                }
                rows.push(tick);
                outcome.rows += 1;
            }
            Ok(_) => {
                return Err(bad_input(format!(
                    "`{}` line {number}: `seconds` is not a finite number",
                    path.display()
                )))
            }
            Err(_) if !complete => {
                // The writer was stopped mid-line: everything before it is good.
                outcome.cut_last_line = true;
            }
            Err(err) => {
                return Err(bad_input(format!(
                    "`{}` line {number} is not a pymemtrace process log row ({err}); \
                     --input reads the .jsonl files that `pymemtrace process -o` writes",
                    path.display()
                )))
            }
        }
    }
    if !rows.is_empty() {
        each(&rows);
        outcome.ticks += 1;
    }
    if outcome.rows == 0 {
        return Err(bad_input(format!(
            "`{}` holds no rows: nothing to plot or summarise",
            path.display()
        )));
    }
    Ok(outcome)
}

/// What reading a log found.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReadOutcome {
    pub rows: u64,
    pub ticks: u64,
    /// The last line was incomplete and skipped.
    pub cut_last_line: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link at the log's path (planted by another user in a shared directory) is refused with a
    /// line that says why; the file it points to is not truncated.
    #[test]
    fn a_symbolic_link_at_the_log_path_is_refused_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "root's own").unwrap();
        let log = dir.path().join("run.jsonl");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        let err = JsonlWriter::create(&log)
            .err()
            .expect("the link is refused");
        assert_eq!(err.kind, ErrorKind::OutputNotWritable);
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own");
        std::fs::remove_file(&log).unwrap();
        let mut writer = JsonlWriter::create(&log).unwrap();
        writer.write_rows(&[]).unwrap();
        assert_eq!(writer.rows(), 0);
    }
}
