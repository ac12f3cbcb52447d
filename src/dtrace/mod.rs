//! `pymemtrace dtrace`: runs a script from the catalogue (`dtrace/NAME.d` with dtrace,
//! `probes/NAME.bt` with bpftrace) against one process, and turns its output into a report.
//!
//! target facts (target.rs) + options -> a filled script (catalogue.rs) -> the tracer (here) ->
//! its text -> parse.rs (pure) -> report.rs (data model, table).

pub mod catalogue;
pub mod command;
pub mod offsets;
pub mod parse;
pub mod report;
pub mod target;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

pub use catalogue::{Entry, CATALOGUE};
pub use report::Report;

/// Which tracer runs the script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Dtrace,
    Bpftrace,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Dtrace => "dtrace",
            Backend::Bpftrace => "bpftrace",
        }
    }
}

/// Where `program` is on PATH.
fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| {
            use std::os::unix::fs::PermissionsExt;
            candidate
                .metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// True when `dtrace` on PATH is a real DTrace, not systemtap's `dtrace` header generator
/// (systemtap-sdt-dev installs one on Linux).
fn real_dtrace(path: &PathBuf) -> bool {
    Command::new(path)
        .arg("-V")
        .stdin(Stdio::null())
        .output()
        .map(|out| {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            text.contains("Sun D") || text.contains("dtrace: D ") || text.contains("Oracle D")
        })
        .unwrap_or(false)
}

/// The tracer to use: `requested`, else dtrace where it exists, else bpftrace.
pub fn choose_backend(requested: Option<Backend>) -> Result<(Backend, PathBuf)> {
    let install = "install bpftrace (Debian/Ubuntu: `apt-get install bpftrace`, Fedora/RHEL: \
                   `dnf install bpftrace`, Arch: `pacman -S bpftrace`); DTrace comes with macOS, \
                   FreeBSD, illumos and Oracle Linux (dtrace-utils)";
    match requested {
        Some(backend) => on_path(backend.name())
            .map(|path| (backend, path))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::TracerUnavailable,
                    format!("{} is not on PATH: {install}", backend.name()),
                )
            }),
        None => {
            if let Some(path) = on_path("dtrace").filter(real_dtrace) {
                return Ok((Backend::Dtrace, path));
            }
            on_path("bpftrace")
                .map(|path| (Backend::Bpftrace, path))
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::TracerUnavailable,
                        format!("neither dtrace nor bpftrace is installed: {install}"),
                    )
                })
        }
    }
}

/// Tracers need root (or CAP_BPF and CAP_PERFMON for bpftrace; dtrace_proc on illumos).
pub(crate) fn check_root(backend: Backend) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::TracerUnavailable,
        format!(
            "{} needs root to place probes: run `sudo pymemtrace dtrace ...`{}",
            backend.name(),
            if backend == Backend::Bpftrace {
                " (or give the tool and bpftrace CAP_BPF, CAP_PERFMON and CAP_SYS_PTRACE)"
            } else {
                ""
            }
        ),
    ))
}

/// What a run is asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    pub pid: i32,
    pub script: String,
    pub backend: Option<Backend>,
    pub duration: Option<f64>,
    /// `-D name=value` (a bare `-D name` is `name=1`).
    pub defines: Vec<(String, String)>,
    /// Pass the tracer's output through as it comes.
    pub raw: bool,
}

/// A script filled in for one target, ready to run.
pub struct Prepared {
    pub backend: Backend,
    pub tracer: PathBuf,
    pub entry: &'static Entry,
    pub facts: target::Facts,
    pub text: String,
    pub min_age_ms: u64,
}

fn find_entry(name: &str) -> Result<&'static Entry> {
    catalogue::find(name).ok_or_else(|| {
        Error::usage(format!(
            "no script named `{name}`; the catalogue: {} (`pymemtrace dtrace --list`)",
            catalogue::names()
        ))
    })
}

/// Parses `-D` arguments: `name=value` or `name` (meaning 1).
pub fn parse_defines(defines: &[String]) -> Result<Vec<(String, String)>> {
    defines
        .iter()
        .map(|d| {
            let (name, value) = d.split_once('=').unwrap_or((d.as_str(), "1"));
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(Error::usage(format!("-D {d}: expected NAME or NAME=VALUE")));
            }
            Ok((name.to_string(), value.to_string()))
        })
        .collect()
}

/// Fills the script in for this target (what `--print-script` shows and what runs).
pub fn prepare(options: &Options, backend: Backend, tracer: PathBuf) -> Result<Prepared> {
    let entry = find_entry(&options.script)?;
    let facts = target::inspect(options.pid)?;
    if let Err(why) = catalogue::availability(entry, &facts) {
        // Not a CPython process (a static non-Python binary has no C library to probe either):
        // exit 4, whatever the script needed. A CPython one this script cannot run on: exit 6.
        let kind = if facts.python.is_err() {
            ErrorKind::NotPython
        } else {
            ErrorKind::UnsupportedVersion
        };
        return Err(Error::new(
            kind,
            format!("{} cannot run on PID {}: {why}", entry.name, options.pid),
        ));
    }
    let values = catalogue::values(entry, &facts, &options.defines, backend == Backend::Dtrace)
        .map_err(Error::usage)?;
    if let Some(threads) = values.get("max_threads") {
        if !matches!(threads.parse::<u32>(), Ok(1..=100)) {
            return Err(Error::usage(format!(
                "-D max_threads={threads}: between 1 and 100 (bpftrace's unroll limit)"
            )));
        }
    }
    if let Some(depth) = values.get("stack_depth") {
        if !matches!(depth.parse::<u32>(), Ok(1..=127)) {
            return Err(Error::usage(format!(
                "-D stack_depth={depth}: between 1 and 127"
            )));
        }
    }
    let min_age_ms = values
        .get("min_age_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let script = match backend {
        Backend::Dtrace => entry.d,
        Backend::Bpftrace => entry.bt,
    };
    let text = catalogue::fill(script, &values).map_err(Error::internal)?;
    Ok(Prepared {
        backend,
        tracer,
        entry,
        facts,
        text,
        min_age_ms,
    })
}

/// One row of `--list`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Listed {
    pub name: &'static str,
    pub shows: &'static str,
    /// None without --pid; else whether it can run on that process.
    pub runs_here: Option<bool>,
    /// Why it cannot run on that process.
    pub why_not: Option<String>,
    pub options: Vec<catalogue::ScriptOption>,
}

/// Every script, and for `pid` whether it can run there and why not.
pub fn list(pid: Option<i32>) -> Result<(Vec<Listed>, Option<target::Facts>)> {
    let facts = pid.map(target::inspect).transpose()?;
    let rows = CATALOGUE
        .iter()
        .map(|entry| Listed {
            name: entry.name,
            shows: entry.shows,
            runs_here: facts
                .as_ref()
                .map(|f| catalogue::availability(entry, f).is_ok()),
            why_not: facts
                .as_ref()
                .and_then(|f| catalogue::availability(entry, f).err()),
            options: catalogue::options(entry.bt),
        })
        .collect();
    Ok((rows, facts))
}

/// Writes `--list`.
pub fn write_list(
    out: &mut impl Write,
    rows: &[Listed],
    facts: Option<&target::Facts>,
) -> std::io::Result<()> {
    if let Some(facts) = facts {
        writeln!(
            out,
            "PID {} ({}): {}; C library {}",
            facts.pid,
            crate::report::collapsed::truncate(&facts.command_line, 60),
            match &facts.python {
                Ok(p) => format!(
                    "Python {} in {}{}",
                    p.version,
                    p.binary,
                    match p.frames() {
                        Ok(_) => ", Python frames readable".to_string(),
                        Err(why) => format!(", Python frames not readable: {why}"),
                    }
                ),
                Err(why) => format!("not CPython ({why})"),
            },
            facts
                .libc
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "not mapped".into())
        )?;
        writeln!(out)?;
    }
    for row in rows {
        let verdict = match (row.runs_here, &row.why_not) {
            (None, _) => String::new(),
            (Some(true), _) => "  [runs here]".to_string(),
            (Some(false), why) => format!("  [cannot run here: {}]", why.as_deref().unwrap_or("")),
        };
        writeln!(out, "{:<20} {}{verdict}", row.name, row.shows)?;
        for option in &row.options {
            writeln!(
                out,
                "{:<20}   -D {}={}  {}",
                "", option.name, option.default, option.help
            )?;
        }
    }
    Ok(())
}

/// Lines bpftrace prints on stderr that say nothing about the run (this kernel has no tracefs
/// mounted, so detaching uprobes through it fails harmlessly; the memlock limit is not needed
/// with a memcg-accounted kernel).
fn noise(line: &str) -> bool {
    line.contains("RLIMIT_MEMLOCK")
        || line.contains("uprobe_events")
        || line.contains("failed to detach probe")
        || line.trim().is_empty()
}

enum Line {
    Out(String),
    OutClosed,
}

/// What bpftrace runs after the script: an async event every 100 ms that prints nothing.
///
/// bpftrace 0.17 notices a SIGINT only when it interrupts its wait for events or when an event
/// arrives: a SIGINT that lands while it is busy elsewhere (printing `PMT start`, or still
/// attaching probes) sets its flag and then nothing reads it when no event comes, as after the
/// target's death, and it ran on until our watchdog (60 s). This event is the one that comes.
pub const BPFTRACE_HEARTBEAT: &str =
    "\n/* Added by pymemtrace (src/dtrace/mod.rs): lets bpftrace notice a stop request. */\n\
interval:ms:100\n{\n\tprintf(\"\");\n}\n";

/// The program the tracer runs for `script` (what `--print-script` shows, too).
pub fn runnable(backend: Backend, script: &str) -> String {
    match backend {
        Backend::Bpftrace => format!("{script}{BPFTRACE_HEARTBEAT}"),
        Backend::Dtrace => script.to_string(),
    }
}

/// One run of a tracer on one script.
pub struct TraceRequest<'a> {
    pub backend: Backend,
    pub tracer: &'a std::path::Path,
    /// What runs, in the start message.
    pub label: &'a str,
    pub script: &'a str,
    pub pid: i32,
    pub duration: Option<f64>,
    /// Pass the tracer's output through as it comes.
    pub raw: bool,
    /// Give bpftrace `-p PID` (it then ends with the target). Without it, the run is ended here
    /// when the target exits: bpftrace 0.17 with `-p` places software perf events (page faults)
    /// on the target in a way that never fires.
    pub attach_pid: bool,
}

/// What the tracer printed, and how the run ended.
pub struct TraceOutput {
    pub text: String,
    pub stderr: String,
    pub status: std::process::ExitStatus,
    /// Seconds from `PMT start` to the end (0 when it never started).
    pub seconds: f64,
    /// "duration reached", "interrupted" or "target exited".
    pub end: &'static str,
}

/// How long a tracer may take to print its maps and exit once asked to stop. It needs about 0.1 s
/// per probe to detach them (docs/reliability.md); this is a last resort, never the usual end.
const STOP_WATCHDOG: Duration = Duration::from_secs(60);

/// Runs a script with its tracer until Ctrl-C (`stop`), `duration` after `PMT start`, or the
/// target's exit, handing each line of its output to `on_line` as it comes.
///
/// The program goes to the tracer on its standard input: no file is written, so there is no name
/// in /tmp for another user to plant a link or a FIFO at. The tracer is SIGKILLed if the tool dies
/// ([`crate::children`]). A stop asked before the probes are attached (`PMT start` is printed once
/// they are) kills the tracer at once: nothing has been traced, and waiting for it to finish
/// attaching would take seconds for nothing.
pub fn trace(
    request: &TraceRequest<'_>,
    stop: &AtomicBool,
    on_line: &mut dyn FnMut(&str),
) -> Result<TraceOutput> {
    check_root(request.backend)?;
    let program = runnable(request.backend, request.script);
    let mut command = Command::new(request.tracer);
    match request.backend {
        Backend::Bpftrace => {
            if request.attach_pid {
                command.arg("-p").arg(request.pid.to_string());
            }
            command
                // The program, from standard input.
                .arg("-")
                // Long enough for file names; maps big enough for a busy target's live blocks.
                .env("BPFTRACE_STRLEN", "200")
                .env("BPFTRACE_MAP_KEYS_MAX", "65536")
                .env("BPFTRACE_NO_CPP_DEMANGLE", "1");
        }
        Backend::Dtrace => {
            command
                .arg("-q")
                .arg("-p")
                .arg(request.pid.to_string())
                .arg("-s")
                .arg("/dev/stdin");
        }
    }
    {
        use std::os::unix::process::CommandExt;
        // Its own process group: a terminal's Ctrl-C reaches only us, and we stop the tracer once.
        command.process_group(0);
    }
    crate::children::end_with_tool(&mut command);
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            Error::new(
                ErrorKind::TracerUnavailable,
                format!("cannot start {}: {e}", request.tracer.display()),
            )
        })?;
    let mut stdin = child.stdin.take().expect("piped");
    // A thread, so that a program longer than the pipe's buffer cannot block us; a tracer that
    // exits without reading it ends the write with an error, which its exit status reports.
    std::thread::spawn(move || {
        let _ = stdin.write_all(program.as_bytes());
    });
    let (sender, receiver) = mpsc::channel();
    let stdout = child.stdout.take().expect("piped");
    std::thread::spawn(move || {
        let reader = BufReader::new(stdout);
        for line in reader.lines() {
            match line {
                Ok(line) => {
                    if sender.send(Line::Out(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = sender.send(Line::OutClosed);
    });
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_thread = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });

    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let mut text = String::new();
    let mut started_at: Option<Instant> = None;
    let mut stop_sent: Option<Instant> = None;
    let mut end = "target exited";
    let stdout_handle = std::io::stdout();
    loop {
        match receiver.recv_timeout(Duration::from_millis(20)) {
            Ok(Line::Out(line)) => {
                if request.raw {
                    let mut out = stdout_handle.lock();
                    // The tracer prints names the target chose: shown only once printable.
                    let _ = writeln!(out, "{}", crate::report::terminal::printable(&line));
                    let _ = out.flush();
                }
                if started_at.is_none() && line.starts_with("PMT start") {
                    started_at = Some(Instant::now());
                    eprintln!(
                        "pymemtrace: tracing PID {} with {}{}; Ctrl-C to stop and report",
                        request.pid,
                        request.label,
                        request
                            .duration
                            .map(|d| format!(" for {d} s"))
                            .unwrap_or_default()
                    );
                }
                on_line(&line);
                text.push_str(&line);
                text.push('\n');
            }
            Ok(Line::OutClosed) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if stop_sent.is_none() {
            let timed_out = match (request.duration, started_at) {
                (Some(d), Some(start)) => start.elapsed().as_secs_f64() >= d,
                _ => false,
            };
            // With `-p`, bpftrace notices the target's exit by itself, but only up to a second
            // later: asking it to print now ends the tool within a second of the exit.
            let target_gone = !crate::target::is_alive(request.pid);
            let interrupted = stop.load(Ordering::Relaxed);
            if interrupted || timed_out || target_gone {
                end = if target_gone {
                    "target exited"
                } else if timed_out {
                    "duration reached"
                } else {
                    "interrupted"
                };
                if started_at.is_some() {
                    // SIGINT: the tracer runs its END probe, which prints the maps.
                    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
                } else {
                    // Not attached yet: there is nothing to print.
                    let _ = child.kill();
                }
                stop_sent = Some(Instant::now());
            }
        } else if stop_sent.is_some_and(|t| t.elapsed() > STOP_WATCHDOG) {
            // The tracer did not finish printing in time: end it; what it printed stays.
            let _ = child.kill();
        }
    }
    let status = child
        .wait()
        .map_err(|e| Error::internal(format!("waiting for the tracer: {e}")))?;
    let stderr = stderr_thread.join().unwrap_or_default();
    Ok(TraceOutput {
        text,
        stderr,
        status,
        seconds: started_at.map_or(0.0, |s| s.elapsed().as_secs_f64()),
        end,
    })
}

/// A run whose tracer printed no `PMT start`: `Ok` when the user stopped it before its probes
/// were attached (the caller reports an empty run, as documented for Ctrl-C: exit 0, every output
/// written), else the error to give: the target exited first (exit 3), or the tracer failed
/// (exit 1, with its messages).
pub fn never_started(
    (end, status): &(&'static str, std::process::ExitStatus),
    pid: i32,
    tracer: &str,
    errors: &[String],
) -> Result<()> {
    if *end == "interrupted" {
        eprintln!("pymemtrace: interrupted before the probes were attached: nothing was traced");
        return Ok(());
    }
    Err(if !crate::target::is_alive(pid) {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("PID {pid} exited before the probes were attached"),
        )
    } else {
        Error::internal(format!(
            "{tracer} failed ({status}) before attaching its probes: {}",
            if errors.is_empty() {
                "no message".to_string()
            } else {
                errors.join(" | ")
            }
        ))
    })
}

/// The tracer's stderr lines worth showing (without the harmless noise and lost-stack notes).
pub fn tracer_errors(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| !noise(l) && !l.contains("failed to look up stack id"))
        .map(str::to_string)
        .collect()
}

/// Runs a prepared script until Ctrl-C (`stop`), `--duration` or the target's exit.
pub fn run(prepared: &Prepared, options: &Options, stop: &AtomicBool) -> Result<Report> {
    let label = format!("{} ({})", prepared.entry.name, prepared.backend.name());
    let output = trace(
        &TraceRequest {
            backend: prepared.backend,
            tracer: &prepared.tracer,
            label: &label,
            script: &prepared.text,
            pid: options.pid,
            duration: options.duration,
            raw: options.raw,
            attach_pid: true,
        },
        stop,
        &mut |_| {},
    )?;
    let output_end = (output.end, output.status);
    let TraceOutput {
        text,
        stderr: stderr_text,
        seconds,
        end,
        ..
    } = output;
    // bpftrace reports each stack the kernel could not walk (no frame pointers) when printing.
    let lost_stacks = stderr_text
        .lines()
        .filter(|l| l.contains("failed to look up stack id"))
        .count();
    let errors = tracer_errors(&stderr_text);
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", options.pid)).unwrap_or_default();
    let parsed = parse::parse(&text);
    if !parsed.started {
        never_started(&output_end, options.pid, prepared.backend.name(), &errors)?;
        return Ok(Report {
            script: prepared.entry.name.to_string(),
            backend: prepared.backend.name().to_string(),
            pid: options.pid,
            command: prepared.facts.command_line.clone(),
            python: prepared
                .facts
                .python
                .as_ref()
                .ok()
                .map(|p| p.version.clone()),
            end: end.to_string(),
            // Nothing was traced, so this empty report is the whole of it.
            complete: true,
            ..Report::default()
        });
    }
    for line in &errors {
        eprintln!("pymemtrace: {}: {line}", prepared.backend.name());
    }
    if lost_stacks > 0 {
        eprintln!(
            "pymemtrace: {lost_stacks} native stacks could not be walked (code without frame \
             pointers); those blocks show their caller only"
        );
    }
    let meta = Report {
        script: prepared.entry.name.to_string(),
        backend: prepared.backend.name().to_string(),
        pid: options.pid,
        command: prepared.facts.command_line.clone(),
        python: prepared
            .facts
            .python
            .as_ref()
            .ok()
            .map(|p| p.version.clone()),
        seconds,
        end: end.to_string(),
        ..Report::default()
    };
    Ok(report::build(
        &parsed,
        meta,
        &report::ReadOptions {
            min_age_ms: prepared.min_age_ms,
            maps,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defines() {
        assert_eq!(
            parse_defines(&["per_thread".into(), "min_age_ms=500".into()]).unwrap(),
            [
                ("per_thread".to_string(), "1".to_string()),
                ("min_age_ms".to_string(), "500".to_string())
            ]
        );
        assert!(parse_defines(&["a b=1".into()]).is_err());
        assert!(parse_defines(&["=1".into()]).is_err());
    }
}
