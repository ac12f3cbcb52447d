//! Finding and validating the target process, and every user-facing error about it.
//!
//! `attach` opens an existing PID; `spawn` starts a command and waits until its interpreter can be
//! read. Both hand back a [`Target`] that owns the py-spy handle used by the sampler.

use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use py_spy::config::{LineNo, LockingStrategy};
use py_spy::{Config, PythonSpy};

use crate::error::{Error, ErrorKind, Result};

pub mod walk;

/// How the stacks are to be read.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpyOptions {
    /// Pause the target during each stack read (exact stacks, slower target).
    pub blocking: bool,
    /// Look up Python thread names (needed only when threads are kept apart).
    pub thread_names: bool,
}

/// A Python process we can read, and what we know about it.
pub struct Target {
    pub pid: i32,
    pub command_line: String,
    pub executable: String,
    pub python_version: String,
    /// Shared with the thread that reads stacks (src/sampler/worker.rs), which may still be in a
    /// read when the sampling loop ends.
    pub spy: Arc<Mutex<PythonSpy>>,
    /// Set in spawn mode: the child we started and must reap.
    pub child: Option<Child>,
}

fn spy_config(options: SpyOptions) -> Config {
    Config {
        blocking: if options.blocking {
            LockingStrategy::Lock
        } else {
            LockingStrategy::NonBlocking
        },
        collect_thread_names: options.thread_names,
        lineno: LineNo::LastInstruction,
        gil_only: false,
        ..Config::default()
    }
}

/// Reads /proc/PID/stat's state letter, or None when the process does not exist.
fn process_state(pid: i32) -> Option<char> {
    state_from_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The state letter of a stat line.
pub(crate) fn state_from_stat(stat: &str) -> Option<char> {
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().next()?.chars().next()
}

/// Why a run (of `attach` or `process`) stopped: the user, the clock, or the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    Interrupted,
    DurationReached,
    TargetExited,
}

impl EndReason {
    pub fn describe(self) -> &'static str {
        match self {
            EndReason::Interrupted => "interrupted",
            EndReason::DurationReached => "duration reached",
            EndReason::TargetExited => "target exited",
        }
    }
}

/// True while the process exists and is not a zombie.
pub fn is_alive(pid: i32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z' && state != 'X')
}

/// Whether the process is stopped: by a job-control signal (SIGSTOP, SIGTSTP, Ctrl-Z: state T)
/// or by a debugger holding it (state t). A stopped process runs no code, so a helper sent to it
/// could not run, and its memory does not change until it is continued.
pub fn is_stopped(pid: i32) -> bool {
    matches!(process_state(pid), Some('T' | 't'))
}

/// The warning `attach`, `process` and `dtrace` print when their target is stopped: they read it
/// without stopping it (or, for dtrace, wait for probes to fire), so they carry on, but a user
/// looking at a flat line should know why.
pub fn stopped_warning(pid: i32) -> Option<String> {
    is_stopped(pid).then(|| {
        format!(
            "pymemtrace: warning: PID {pid} is stopped (SIGSTOP, Ctrl-Z or a debugger): it runs nothing and its memory will not change until it is continued (kill -CONT {pid})"
        )
    })
}

/// The process's command line, arguments joined by spaces (empty if it cannot be read).
pub fn command_line(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| join_cmdline(&raw))
        .unwrap_or_default()
}

/// The NUL-separated arguments of a cmdline file, joined by spaces.
pub(crate) fn join_cmdline(raw: &[u8]) -> String {
    raw.split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn owner_uid(pid: i32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

fn permission_error(pid: i32) -> Error {
    let owner = owner_uid(pid)
        .map(|uid| format!(" (owned by uid {uid})"))
        .unwrap_or_default();
    let scope = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&s| s > 0)
        .map(|s| {
            format!("; kernel.yama.ptrace_scope is {s}, so without CAP_SYS_PTRACE only a parent may read its children")
        })
        .unwrap_or_default();
    Error::new(
        ErrorKind::PermissionDenied,
        format!(
            "permission denied reading the memory of PID {pid}{owner}: run pymemtrace as the same user, \
             with sudo, or with CAP_SYS_PTRACE (e.g. `sudo setcap cap_sys_ptrace+ep $(command -v pymemtrace)`){scope}"
        ),
    )
}

/// The kernel's flag for its own threads in /proc/PID/stat (include/linux/sched.h).
const PF_KTHREAD: u64 = 0x0020_0000;

/// True when `pid` is a kernel thread (kthreadd, kworker/...): no user memory, no program.
pub fn is_kernel_thread(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    kernel_thread_stat(&stat)
}

/// Whether a stat line carries the kernel-thread flag.
pub(crate) fn kernel_thread_stat(stat: &str) -> bool {
    // Fields after the command name (which may hold spaces and parentheses): state is the 3rd
    // field of the line, flags the 9th.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    rest.split_whitespace()
        .nth(6)
        .and_then(|flags| flags.parse::<u64>().ok())
        .is_some_and(|flags| flags & PF_KTHREAD != 0)
}

/// Refuses kernel threads with one line (exit code 4): they have no memory of their own to read.
pub fn check_not_kernel_thread(pid: i32) -> Result<()> {
    if is_kernel_thread(pid) {
        let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        return Err(Error::new(
            ErrorKind::NotPython,
            format!(
                "PID {pid} ({}) is a kernel thread, not a program: it has no memory of its own to follow",
                name.trim()
            ),
        ));
    }
    Ok(())
}

/// Checks that `pid` names a live process whose memory we may read; says precisely what is wrong if not.
pub fn check_process(pid: i32) -> Result<()> {
    if pid <= 0 {
        return Err(Error::usage(format!(
            "--pid must be a positive process id, not {pid}"
        )));
    }
    match process_state(pid) {
        None => {
            return Err(Error::new(
                ErrorKind::NoSuchProcess,
                format!("no process with PID {pid}: check the PID with `ps` or `pgrep -f python`"),
            ))
        }
        Some('Z') | Some('X') => {
            return Err(Error::new(
                ErrorKind::NoSuchProcess,
                format!("PID {pid} has already exited (it is a zombie waiting for its parent)"),
            ))
        }
        Some(_) => {}
    }
    check_not_kernel_thread(pid)?;
    // /proc/PID/maps is guarded by the same ptrace access check as reading the memory itself.
    match std::fs::File::open(format!("/proc/{pid}/maps")) {
        Ok(_) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            Err(permission_error(pid))
        }
        Err(_) if !Path::new(&format!("/proc/{pid}")).exists() => Err(Error::new(
            ErrorKind::NoSuchProcess,
            format!("PID {pid} exited while being checked"),
        )),
        Err(err) => Err(Error::internal(format!(
            "cannot read /proc/{pid}/maps: {err}"
        ))),
    }
}

/// Turns py-spy's errors into the tool's own.
fn classify_spy_error(pid: i32, err: &anyhow::Error) -> Error {
    let text = format!("{err:#}");
    let permission = err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
    }) || text.contains("Permission denied")
        || text.contains("Operation not permitted");
    if !is_alive(pid) {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("PID {pid} exited before it could be read"),
        )
    } else if permission {
        permission_error(pid)
    } else if text.contains("Unsupported version") {
        Error::new(
            ErrorKind::UnsupportedVersion,
            format!("PID {pid} runs a Python version this build cannot read ({text}); supported: CPython 2.7 and 3.3-3.14"),
        )
    } else if text.contains("python version")
        || text.contains("python interpreter")
        || text.contains("Failed to find")
    {
        Error::new(
            ErrorKind::NotPython,
            format!(
                "PID {pid} ({}) is not a CPython process, or its interpreter could not be found: {text}",
                command_line(pid)
            ),
        )
    } else {
        Error::internal(format!("cannot read the Python state of PID {pid}: {text}"))
    }
}

fn describe(pid: i32, spy: PythonSpy, child: Option<Child>) -> Target {
    let executable = spy
        .process
        .exe()
        .unwrap_or_else(|_| String::from("<unknown>"));
    Target {
        pid,
        command_line: command_line(pid),
        executable,
        python_version: spy.version.to_string(),
        spy: Arc::new(Mutex::new(spy)),
        child,
    }
}

/// Attaches to a running process.
pub fn attach(pid: i32, options: SpyOptions) -> Result<Target> {
    check_process(pid)?;
    // Before py-spy: a crafted thread list would keep it busy for minutes (walk.rs).
    walk::check_before_attach(pid)?;
    let config = spy_config(options);
    // A few quick retries ride over the transient read errors seen while a target starts or forks.
    let mut last_error = None;
    for _ in 0..3 {
        match PythonSpy::new(pid, &config) {
            Ok(spy) => return Ok(describe(pid, spy, None)),
            Err(err) => last_error = Some(err),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let err = last_error.expect("three attempts were made");
    Err(classify_spy_error(pid, &err))
}

/// [`attach`], given up at `deadline` or when `stop` is set: finding the interpreter includes
/// py-spy's first whole read of the stacks, which takes seconds on a target with hundreds of deep
/// threads, and `--duration` counts from the command's start. The attempt left running reads the
/// target's memory only, and ends with the process.
pub fn attach_within(
    pid: i32,
    options: SpyOptions,
    deadline: Option<Instant>,
    stop: &AtomicBool,
) -> Result<Target> {
    let started = Instant::now();
    let (done, result) = mpsc::channel();
    std::thread::Builder::new()
        .name("attach".into())
        .spawn(move || {
            let _ = done.send(attach(pid, options));
        })
        .map_err(|err| Error::internal(format!("cannot start a thread: {err}")))?;
    // When the stop or the deadline comes, the attempt still gets [`END_GRACE`]: a target found
    // by then is sampled not at all and reported (an empty report, exit 0, as for any Ctrl-C),
    // and only a read still running after it is given up.
    let mut ending: Option<(Instant, &str)> = None;
    loop {
        let now = Instant::now();
        if ending.is_none() {
            if stop.load(Ordering::Relaxed) {
                ending = Some((now, "interrupted"));
            } else if deadline.is_some_and(|d| now >= d) {
                ending = Some((now, "--duration reached"));
            }
        }
        let why = match ending {
            Some((since, why)) if now >= since + END_GRACE => why,
            _ => {
                let until = match ending {
                    Some((since, _)) => Some(since + END_GRACE),
                    None => deadline,
                };
                let wait = until.map_or(STOP_POLL, |u| {
                    STOP_POLL.min(u.saturating_duration_since(now))
                });
                match result.recv_timeout(wait) {
                    Ok(attached) => return attached,
                    Err(mpsc::RecvTimeoutError::Timeout) => continue,
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        return Err(Error::internal(format!("attaching to PID {pid} failed")))
                    }
                }
            }
        };
        return Err(Error::new(
            ErrorKind::NotPython,
            format!(
                "PID {pid}: {why} before its Python stacks could be read (the first read was \
                 still running after {:.1} s: a target with many deep threads needs a longer \
                 --duration)",
                started.elapsed().as_secs_f64()
            ),
        ));
    }
}

/// How often [`attach_within`] looks at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// How long [`attach_within`] still waits for a first read once stopped or out of time.
const END_GRACE: Duration = Duration::from_millis(500);

/// How long a spawned program may take before its interpreter is readable.
const SPAWN_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts `command` and attaches as soon as its interpreter can be read.
pub fn spawn(command: &[String], options: SpyOptions) -> Result<Target> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::usage("nothing to run after `--`"))?;
    let mut command = Command::new(program);
    command.args(args);
    // The program is the tool's while it runs: it ends with it, even a SIGKILLed one.
    crate::children::end_with_tool(&mut command);
    let mut child = command.spawn().map_err(|err| {
        Error::new(
            ErrorKind::SpawnFailed,
            format!("cannot start `{program}`: {err}"),
        )
    })?;
    let pid = child.id() as i32;
    let config = spy_config(options);
    let started = Instant::now();
    loop {
        // Polled at 1 ms so that as little as possible of the program runs before the first sample.
        // The program is no more trusted than any target: its thread list is checked first.
        walk::check_before_attach(pid).inspect_err(|_| stop_child(&mut child))?;
        let attempt = PythonSpy::new(pid, &config).and_then(|mut spy| {
            spy.get_stack_traces()?;
            Ok(spy)
        });
        match attempt {
            Ok(spy) => return Ok(describe(pid, spy, Some(child))),
            Err(err) => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::new(
                        ErrorKind::NoSuchProcess,
                        format!("`{program}` exited ({status}) before its Python interpreter could be read"),
                    ));
                }
                if started.elapsed() > SPAWN_READY_TIMEOUT {
                    let error = classify_spy_error(pid, &err);
                    stop_child(&mut child);
                    return Err(error);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Ends a child we started: SIGINT first (as Ctrl-C would), then SIGKILL if it ignores that.
pub fn stop_child(child: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kthreadd_is_a_kernel_thread_and_we_are_not() {
        assert!(!is_kernel_thread(std::process::id() as i32));
        // PID 2 is kthreadd outside containers with their own PID namespace.
        if std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd") {
            assert!(is_kernel_thread(2));
            assert_eq!(
                check_not_kernel_thread(2).unwrap_err().kind,
                ErrorKind::NotPython
            );
        }
    }

    #[test]
    fn own_process_is_alive() {
        assert!(is_alive(std::process::id() as i32));
        assert_eq!(process_state(i32::MAX), None);
    }

    #[test]
    fn missing_pid_is_reported() {
        let err = check_process(i32::MAX).unwrap_err();
        assert_eq!(err.kind, ErrorKind::NoSuchProcess);
    }
}
