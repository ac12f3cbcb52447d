//! Output formats. Writers see only plain data ([`Meta`] and a [`Recording`]), never the target.

pub mod atomic;
pub mod collapsed;
pub mod cpymemtrace;
pub mod gnuplot;
pub mod json;
pub mod jsonl;
pub mod plot;
pub mod process_table;
pub mod speedscope;
pub mod table;
pub mod terminal;

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::sampler::Recording;

/// What the reports say about the run besides the samples.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    pub pid: i32,
    pub command_line: String,
    pub executable: String,
    pub python_version: String,
    pub rate: f64,
    pub max_rate: Option<f64>,
    pub blocking: bool,
    pub threads: bool,
    pub idle: bool,
    pub tool_version: String,
    /// How the figures were made, when not by sampling (`attach --precise`).
    pub mode: Option<String>,
}

/// The output formats of `attach`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The summary table (what is printed on stdout).
    Table,
    /// Collapsed stacks, one `frame;frame;... BYTES` line per stack (py-spy's raw format).
    Collapsed,
    /// Flamegraph of growth (SVG, by inferno).
    Svg,
    /// speedscope profile, weights in bytes.
    Speedscope,
    /// The whole result as JSON.
    Json,
    /// cPyMemTrace-compatible event log.
    Log,
}

impl Format {
    /// The format a path's extension implies, if any.
    pub fn from_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_string_lossy().to_ascii_lowercase();
        if name.ends_with(".speedscope.json") || name.ends_with(".speedscope") {
            return Some(Format::Speedscope);
        }
        match path
            .extension()?
            .to_string_lossy()
            .to_ascii_lowercase()
            .as_str()
        {
            "txt" | "collapsed" | "folded" => Some(Format::Collapsed),
            "svg" => Some(Format::Svg),
            "json" => Some(Format::Json),
            "log" => Some(Format::Log),
            "table" => Some(Format::Table),
            _ => None,
        }
    }
}

/// An output file of `attach`, checked for writability before sampling begins and written
/// atomically at the end (see [`atomic`]). The event log is streamed during the run into an
/// [`atomic::AtomicFile`] that gets its name when the run ends well.
pub struct Output {
    pub path: PathBuf,
    pub format: Format,
}

impl Output {
    /// Checks now that the file can be written, so that a bad path fails before a long run, not
    /// after it. Creates nothing.
    pub fn create(path: &Path, format: Option<Format>) -> Result<Output> {
        let format = match format.or_else(|| Format::from_path(path)) {
            Some(format) => format,
            None => {
                return Err(Error::usage(format!(
                    "cannot tell the format of `{}` from its extension: use .txt (collapsed stacks), .svg, \
                     .speedscope.json, .json, .log or .table, or give --format",
                    path.display()
                )))
            }
        };
        atomic::check_writable(path).map_err(|err| atomic::not_writable(path, true, err))?;
        Ok(Output {
            path: path.to_path_buf(),
            format,
        })
    }

    pub fn write_error(&self, err: std::io::Error) -> Error {
        atomic::not_writable(&self.path, false, err)
    }
}

/// Options that shape the reports.
#[derive(Debug, Clone, Copy)]
pub struct ReportOptions {
    /// Collapsed stacks and flamegraphs show released bytes instead of net growth.
    pub released: bool,
    /// Rows in the summary table.
    pub top: usize,
}

/// Writes one finished report (every format but the streamed event log), atomically.
pub fn write_report(
    out: &Output,
    meta: &Meta,
    recording: &Recording,
    options: ReportOptions,
) -> Result<()> {
    if out.format == Format::Log {
        // Streamed while sampling; see cpymemtrace::LogWriter.
        return Ok(());
    }
    atomic::write_stream_atomically(&out.path, |file| match out.format {
        Format::Table => table::write(file, meta, recording, options.top),
        Format::Collapsed => collapsed::write(file, &recording.profile, options.released),
        Format::Svg => {
            collapsed::write_flamegraph(file, meta, &recording.profile, options.released)
        }
        Format::Speedscope => speedscope::write(file, meta, &recording.profile),
        Format::Json => json::write(file, meta, recording),
        Format::Log => Ok(()),
    })
    .map_err(|err| out.write_error(err))
}

/// `function (file:line)`, the frame label of py-spy's collapsed stacks.
pub fn frame_label(frame: &crate::attribution::Frame) -> String {
    if frame.is_synthetic() {
        frame.function.clone()
    } else {
        format!("{} ({}:{})", frame.function, frame.file, frame.line)
    }
}
