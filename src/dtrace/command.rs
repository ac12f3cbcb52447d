//! The `pymemtrace dtrace` command: --list, --print-script, or a run with its table and JSON.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::report::atomic;

use super::{choose_backend, list, parse_defines, prepare, run, write_list, Backend, Options};

/// What the command line asked for.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    pub pid: Option<i32>,
    pub script: Option<String>,
    pub backend: Option<Backend>,
    pub duration: Option<f64>,
    pub defines: Vec<String>,
    pub json: Option<PathBuf>,
    pub raw: bool,
    pub print_script: bool,
    pub list: bool,
    pub top: usize,
}

fn stdout_error(err: std::io::Error) -> Error {
    Error::internal(format!("cannot write to stdout: {err}"))
}

pub fn run_command(options: CommandOptions) -> Result<()> {
    crate::options::optional_seconds("--duration", options.duration)?;
    let defines = parse_defines(&options.defines)?;
    let stdout = std::io::stdout();
    if options.list {
        let (rows, facts) = list(options.pid)?;
        let mut out = stdout.lock();
        write_list(&mut out, &rows, facts.as_ref()).map_err(stdout_error)?;
        if let Some(path) = &options.json {
            let value = serde_json::json!({ "scripts": rows });
            write_json(path, &value)?;
        }
        return Ok(());
    }
    let Some(script) = options.script.clone() else {
        return Err(Error::usage(format!(
            "give --script NAME (one of: {}), or --list",
            super::catalogue::names()
        )));
    };
    let Some(pid) = options.pid else {
        return Err(Error::usage("give --pid PID: the process to trace"));
    };
    let run_options = Options {
        pid,
        script,
        backend: options.backend,
        duration: options.duration,
        defines,
        raw: options.raw,
    };
    // --print-script works without the tracer installed: it shows the bpftrace twin by default.
    let (backend, tracer) = match choose_backend(options.backend) {
        Ok(found) => found,
        Err(err) if options.print_script => {
            let _ = err;
            let backend = options.backend.unwrap_or(Backend::Bpftrace);
            (backend, PathBuf::from(backend.name()))
        }
        Err(err) => return Err(err),
    };
    if !options.print_script {
        super::check_root(backend)?;
    }
    let prepared = prepare(&run_options, backend, tracer)?;
    if options.print_script {
        let mut out = stdout.lock();
        out.write_all(super::runnable(prepared.backend, &prepared.text).as_bytes())
            .map_err(stdout_error)?;
        return Ok(());
    }
    // A bad --json path fails before the target is touched (the file is written atomically at the end).
    if let Some(path) = &options.json {
        atomic::check_writable(path).map_err(|err| atomic::not_writable(path, true, err))?;
    }
    let stop = crate::signals::stop_flag();
    if let Some(warning) = crate::target::stopped_warning(pid) {
        eprintln!("{warning}");
    }
    let report = run(&prepared, &run_options, &stop)?;
    if !options.raw {
        // Function, file and symbol names come from the target: shown only once printable.
        let mut out = crate::report::terminal::PrintableWriter::new(stdout.lock());
        super::report::write_table(&mut out, &report, options.top)
            .and_then(|_| out.flush())
            .map_err(stdout_error)?;
    }
    if let Some(path) = &options.json {
        write_json(path, &report)?;
        eprintln!("pymemtrace: wrote {}", path.display());
    }
    if report.end == "target exited" {
        eprintln!("pymemtrace: PID {pid} exited; the report covers it up to its exit");
    }
    Ok(())
}

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    atomic::write_stream_atomically(path, |out| {
        serde_json::to_writer_pretty(out, value).map_err(std::io::Error::from)
    })
    .map_err(|err| atomic::not_writable(path, false, err))
}
