//! Running a small stdlib-only Python helper inside a live CPython, from outside (Linux x86_64).
//!
//! docs/inject.md ("Why this method") records what is safe on these machines; this follows it:
//! 1. a private reply channel in the target's own /tmp, made with the target's own rights
//!    ([`channel`], [`target_user`]);
//! 2. the main thread is held with ptrace just long enough to map a few pages, write the stub and
//!    a bootstrap snippet into them and queue the stub's `run_then_unmap`, which runs the snippet
//!    with `PyRun_SimpleString` and then unmaps those pages ([`stub`]); its registers and vector
//!    state are then restored ([`ptrace`]);
//! 3. the interpreter runs the bootstrap at its next bytecode boundary with the GIL held; it
//!    connects back, receives the helper's source and request, runs the helper's `main(request)`
//!    in a fresh namespace and sends the reply.
//!
//! Nothing is installed in the target; the helper sees only what it is sent.

mod c_library;
mod channel;
pub mod debug_offsets;
mod gdb;
pub mod marshal;
pub(crate) mod ptrace;
mod stub;
mod target_user;

pub(crate) use target_user::TargetUser;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use ptrace::PtraceError;

/// A helper: stdlib-only Python defining `main(request) -> dict`, embedded in the binary. It finds
/// `CHANNEL_DIR` in its globals: a private directory of the target's user, for scratch files.
#[derive(Debug, Clone, Copy)]
pub struct Helper {
    pub name: &'static str,
    pub source: &'static str,
    /// The oldest Python (major, minor) the helper works on: older targets are refused before
    /// anything is sent (exit code 6) rather than left with a helper that cannot run.
    pub min_version: (u64, u64),
}

const BOOTSTRAP: &str = include_str!("helpers/bootstrap.py");

/// Captures `sys._debugmallocstats()` (`pymemtrace mallocstats`).
pub const MALLOCSTATS: Helper = Helper {
    name: "mallocstats",
    source: include_str!("helpers/mallocstats.py"),
    min_version: (3, 3),
};

/// Starts tracemalloc and sends its raw traces, then sends them again and restores
/// (`pymemtrace tracemalloc`); between the two, a watchdog restores the target if the tool goes.
pub const TRACEMALLOC: Helper = Helper {
    name: "tracemalloc",
    source: include_str!("helpers/tracemalloc.py"),
    min_version: (3, 4),
};

/// Says where it ran: proves the round trip (`pymemtrace ping`, tests, benchmarks).
pub const PING: Helper = Helper {
    name: "ping",
    source: include_str!("helpers/ping.py"),
    min_version: (2, 7),
};

/// How an injection runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for the helper's reply (the main thread must reach Python code first).
    pub timeout: Duration,
    /// The largest reply accepted.
    pub max_reply: usize,
    /// Make a main thread waiting on a lock (futex) return EINTR so the helper runs at once.
    pub nudge_lock_waits: bool,
    /// How the helper gets in.
    pub method: Method,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            timeout: Duration::from_secs(10),
            max_reply: 64 << 20,
            nudge_lock_waits: true,
            method: Method::Auto,
        }
    }
}

/// How long a helper that has started (connected back) may take to reply, at least: snapshots of
/// a large heap under GIL contention took over 10 s on this machine.
const MIN_REPLY_ALLOWANCE: Duration = Duration::from_secs(60);

/// What one injection measured, besides the reply.
#[derive(Debug, Clone)]
pub struct Timing {
    /// The main thread held by ptrace.
    pub held: Duration,
    /// From the start to the reply.
    pub round_trip: Duration,
    /// How the helper got in.
    pub delivery: Delivery,
}

fn helper_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::HelperFailed, message)
}

/// The target's filesystem ids and groups: what its connect() is checked with, and whose rights
/// the reply channel is made with.
fn target_user(pid: i32) -> Result<TargetUser> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|_| {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("PID {pid} exited before the helper could be sent"),
        )
    })?;
    TargetUser::from_status(&status).ok_or_else(|| {
        Error::internal(format!(
            "cannot read the owner of PID {pid} from /proc/{pid}/status"
        ))
    })
}

/// The addresses to call, from the interpreter's symbols.
struct Interpreter {
    /// Python 3.14+: the helper goes in through PEP 768's remote execution, not a call.
    remote_exec: bool,
    add_pending_call: u64,
    run_simple_string: u64,
    /// For a direct call (3.4+).
    gil: Option<GilFunctions>,
    /// The C library's munmap, with which a pending call frees its own pages (0: not found).
    munmap: u64,
}

#[derive(Clone, Copy)]
struct GilFunctions {
    check: u64,
    ensure: u64,
    release: u64,
}

impl Interpreter {
    /// What the stub calls (0 for what this interpreter lacks: the stub never reaches those).
    fn functions(&self) -> stub::Functions {
        let gil = self.gil.unwrap_or(GilFunctions {
            check: 0,
            ensure: 0,
            release: 0,
        });
        stub::Functions {
            gil_check: gil.check,
            add_pending_call: self.add_pending_call,
            run_simple_string: self.run_simple_string,
            gil_ensure: gil.ensure,
            gil_release: gil.release,
            munmap: self.munmap,
        }
    }
}

fn find_interpreter(pid: i32, helper: &Helper) -> Result<Interpreter> {
    let process = remoteprocess::Process::new(pid).map_err(|err| {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("cannot open PID {pid}: {err}"),
        )
    })?;
    let info = py_spy::python_process_info::PythonProcessInfo::new(&process).map_err(|err| {
        Error::new(
            ErrorKind::NotPython,
            format!("PID {pid} does not look like a CPython process ({err:#})"),
        )
    })?;
    let version = py_spy::python_process_info::get_python_version(&info, &process)
        .map(|v| (v.major, v.minor))
        .map_err(|err| {
            Error::new(
                ErrorKind::NotPython,
                format!("cannot tell the Python version of PID {pid} ({err:#})"),
            )
        })?;
    if version < helper.min_version {
        return Err(Error::new(
            ErrorKind::UnsupportedVersion,
            format!(
                "PID {pid} runs Python {}.{}: the {} helper needs Python {}.{} or later; the target was not touched",
                version.0, version.1, helper.name, helper.min_version.0, helper.min_version.1
            ),
        ));
    }
    if version >= (3, 14) {
        return Ok(Interpreter {
            remote_exec: true,
            add_pending_call: 0,
            run_simple_string: 0,
            gil: None,
            munmap: 0,
        });
    }
    let symbol = |name: &str| info.get_symbol(name).copied();
    match (symbol("Py_AddPendingCall"), symbol("PyRun_SimpleString")) {
        (Some(add_pending_call), Some(run_simple_string)) => Ok(Interpreter {
            remote_exec: false,
            add_pending_call,
            run_simple_string,
            gil: match (
                symbol("PyGILState_Check"),
                symbol("PyGILState_Ensure"),
                symbol("PyGILState_Release"),
            ) {
                (Some(check), Some(ensure), Some(release)) => Some(GilFunctions {
                    check,
                    ensure,
                    release,
                }),
                _ => None,
            },
            munmap: c_library::function(pid, "munmap").unwrap_or(0),
        }),
        _ => Err(Error::new(
            ErrorKind::NotPython,
            format!(
                "PID {pid}: Py_AddPendingCall or PyRun_SimpleString not found in its interpreter"
            ),
        )),
    }
}

/// A Python string literal for `text`, in ASCII. Control characters (the newlines of a helper's
/// source) are `\xNN`, which 2.7's byte strings read as 3.x's strings do (2.7 leaves `\u` in a
/// plain literal as it is, which turned a whole helper into one comment line there).
fn python_literal(text: &str) -> String {
    let mut literal = String::from("'");
    for c in text.chars() {
        match c {
            '\\' => literal.push_str("\\\\"),
            '\'' => literal.push_str("\\'"),
            ' '..='~' => literal.push(c),
            _ if (c as u32) < 0x80 => literal.push_str(&format!("\\x{:02x}", c as u32)),
            _ => literal.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    literal.push('\'');
    literal
}

/// `value` written as a Python literal (the helper's request travels inside the bootstrap).
fn python_value(value: &Value) -> String {
    match value {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => python_literal(s),
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(python_value)
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Value::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", python_literal(k), python_value(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Blocks the signals a user sends to stop the tool, for as long as the value lives: the target's
/// main thread must never be left inside our call.
struct SignalsBlocked(libc::sigset_t);

impl SignalsBlocked {
    fn new() -> SignalsBlocked {
        // SAFETY: sigset manipulation on local values; pthread_sigmask only changes this thread.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
                libc::sigaddset(&mut set, signal);
            }
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            SignalsBlocked(old)
        }
    }
}

impl Drop for SignalsBlocked {
    fn drop(&mut self) {
        // SAFETY: restores this thread's previous mask.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

fn ptrace_error(pid: i32, err: PtraceError) -> Error {
    match err {
        PtraceError::AlreadyTraced => helper_error(format!(
            "PID {pid} is already being traced by another tool (see TracerPid in \
             /proc/{pid}/status): detach it first"
        )),
        PtraceError::NotPermitted => Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "may not ptrace PID {pid}: run as its user or with sudo (CAP_SYS_PTRACE), and \
                 check /proc/sys/kernel/yama/ptrace_scope"
            ),
        ),
        PtraceError::DidNotStop => helper_error(format!(
            "PID {pid}'s main thread did not stop within a second (stopped by SIGSTOP, or in an \
             uninterruptible wait): nothing was done to it"
        )),
        PtraceError::Exited => Error::new(
            ErrorKind::NoSuchProcess,
            format!("PID {pid} exited while the helper was being sent"),
        ),
        PtraceError::Failed(what) => helper_error(format!(
            "could not queue the helper in PID {pid}: {what}; the target was put back as it was"
        )),
    }
}

/// How a helper gets into the target (`--method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Method {
    /// A direct call when the main thread waits in a blocking call without the GIL, else a
    /// pending call.
    #[default]
    Auto,
    /// Always a pending call: runs when the main thread next runs Python code.
    Pending,
    /// Only a direct call, and only in the state where it is safe; otherwise refuse.
    Direct,
    /// A pending call queued by gdb (where gdb is installed): slower, stops every thread while
    /// gdb is attached.
    Gdb,
}

/// How the helper was delivered, for reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Queued with Py_AddPendingCall; the main thread ran it at a bytecode boundary.
    Pending,
    /// Run at once by a direct call in the main thread, which was blocked in this system call.
    Direct(&'static str),
    /// Queued with Py_AddPendingCall by gdb.
    Gdb,
    /// Requested through PEP 768 (Python 3.14+): the interpreter runs the script file itself.
    RemoteExec,
}

impl std::fmt::Display for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Delivery::Pending => f.write_str("pending call"),
            Delivery::Direct(syscall) => write!(f, "direct call (main thread was in {syscall})"),
            Delivery::Gdb => f.write_str("pending call queued by gdb"),
            Delivery::RemoteExec => f.write_str("PEP 768 remote execution"),
        }
    }
}

/// Blocking calls made with the GIL released, after which CPython code runs again: a direct call
/// is safe while the main thread waits in one of these (docs/inject.md, "Why this method").
fn direct_call_syscall_name(number: u64) -> Option<&'static str> {
    Some(match number {
        0 => "read",
        7 => "poll",
        17 => "pread64",
        19 => "readv",
        23 => "select",
        43 => "accept",
        45 => "recvfrom",
        47 => "recvmsg",
        61 => "wait4",
        230 => "clock_nanosleep",
        270 => "pselect6",
        271 => "ppoll",
        288 => "accept4",
        _ => return None,
    })
}

/// TIMER_ABSTIME in clock_nanosleep's flags (its second argument).
const TIMER_ABSTIME: u64 = 1;

/// Whether the held main thread waits where a direct call can be safe: in a blocking call from the
/// list above, that the kernel restarts without its restart block (or a sleep to an absolute
/// deadline, which we re-issue ourselves). The GIL is checked next, by the stub. Returns the
/// syscall's name and how to release the thread afterwards, or why not.
fn direct_call_state(
    held: &ptrace::Held,
    interpreter: &Interpreter,
) -> std::result::Result<(&'static str, ptrace::AfterRelease), String> {
    if interpreter.gil.is_none() {
        return Err("this interpreter has no PyGILState_Check".into());
    }
    let Some(number) = held.interrupted_syscall() else {
        return Err("the main thread is not waiting in a system call".into());
    };
    let Some(name) = direct_call_syscall_name(number) else {
        return Err(format!(
            "the main thread waits in system call {number}, not a read, sleep, select, poll, \
             accept or wait"
        ));
    };
    let registers = held.saved_registers();
    let after = if -(registers.rax as i64) == ptrace::ERESTART_RESTARTBLOCK {
        // Restarted through the thread's restart block, which a timed wait of our own (the GIL)
        // can overwrite if a signal lands in it. Only an absolute sleep can be re-issued as is.
        if number == ptrace::SYS_CLOCK_NANOSLEEP && registers.rsi & TIMER_ABSTIME != 0 {
            ptrace::AfterRelease::Reissue
        } else {
            return Err(format!(
                "the main thread's {name} has a relative timeout that only the kernel can resume"
            ));
        }
    } else {
        ptrace::AfterRelease::Restart
    };
    Ok((name, after))
}

/// Delivers `snippet` to the main thread of `pid` as `options.method` says. With a direct call,
/// returns after the snippet has run. Returns how, how long the thread was held, and (for a
/// pending call) why it was not a direct one.
fn deliver(
    pid: i32,
    interpreter: &Interpreter,
    snippet: &str,
    options: &Options,
    reply_allowance: Duration,
    channel: &channel::Channel,
) -> Result<(Delivery, Duration, String)> {
    let started = Instant::now();
    if interpreter.remote_exec {
        return remote_exec(pid, snippet, options, channel)
            .map(|()| (Delivery::RemoteExec, started.elapsed(), "PEP 768".into()));
    }
    if options.method == Method::Gdb {
        gdb::queue_pending_call(pid, snippet)?;
        return Ok((Delivery::Gdb, started.elapsed(), "--method gdb".into()));
    }
    let _blocked = SignalsBlocked::new();
    let mut held = ptrace::seize(pid).map_err(|e| ptrace_error(pid, e))?;
    let fail = |e| ptrace_error(pid, e);
    let mut not_direct = format!("--method {:?}", options.method).to_lowercase();
    let mut direct = match options.method {
        Method::Pending | Method::Gdb => None,
        Method::Auto => direct_call_state(&held, interpreter)
            .map_err(|why| not_direct = why)
            .ok(),
        Method::Direct => Some(direct_call_state(&held, interpreter).map_err(|why| {
            helper_error(format!(
                "--method direct refused for PID {pid}: {why}; nothing was done (try --method \
                 auto)"
            ))
        })?),
    };
    let pending_after = if options.nudge_lock_waits {
        ptrace::AfterRelease::InterruptLockWait
    } else {
        ptrace::AfterRelease::Restart
    };

    // One page for the stub, the thread's saved state and the snippet (see stub.rs).
    let syscall_at = ptrace::find_syscall_instruction(pid, &held).map_err(fail)?;
    let mut code = snippet.as_bytes().to_vec();
    code.push(0);
    let layout = stub::Layout::new(held.xstate().len(), code.len());
    let page = held
        .syscall(
            syscall_at,
            ptrace::SYS_MMAP,
            [
                0,
                layout.length,
                (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(fail)?;
    if (page as i64) < 0 && (page as i64) > -4096 {
        return Err(helper_error(format!(
            "could not map a page in PID {pid} (errno {}); the target was put back as it was",
            -(page as i64)
        )));
    }
    let image = layout.image(page, &interpreter.functions(), held.xstate(), &code);
    ptrace::write_memory(pid, page, &image).map_err(fail)?;
    // What the stub's last call returned.
    let result = || -> Result<u64> {
        let bytes = ptrace::read_memory(pid, page + stub::RESULT, 8).map_err(fail)?;
        Ok(u64::from_ne_bytes(bytes.try_into().unwrap_or([0xff; 8])))
    };

    if let Some((syscall, _)) = direct {
        // Does the thread hold the GIL? (A C extension blocked while holding it is left alone.)
        stub::Layout::write_resume(pid, page, &held.resume_registers(pending_after))
            .map_err(fail)?;
        held.run_stub(page, stub::ENTRY_CHECK, ptrace::CALL_TIMEOUT)
            .map_err(fail)?;
        if result()? as u32 != 0 {
            not_direct = format!("the main thread holds the GIL while in {syscall}");
            if options.method == Method::Direct {
                return Err(helper_error(format!(
                    "--method direct refused for PID {pid}: {not_direct}; nothing was done (try \
                     --method auto)"
                )));
            }
            direct = None;
        }
    }
    if let Some((syscall, after)) = direct {
        // The thread sits in a blocking call with the GIL released: the stub takes the GIL as any
        // C extension thread would, runs the bootstrap and gives the GIL back. That lasts as long
        // as the helper and cannot be cut short; if the tool dies meanwhile, the stub resumes the
        // thread itself.
        stub::Layout::write_resume(pid, page, &held.resume_registers(after)).map_err(fail)?;
        held.run_stub(
            page,
            stub::ENTRY_DIRECT,
            reply_allowance * 2 + options.timeout,
        )
        .map_err(fail)?;
        held.syscall(
            syscall_at,
            ptrace::SYS_MUNMAP,
            [page, layout.length, 0, 0, 0, 0],
        )
        .map_err(fail)?;
        held.release(after).map_err(fail)?;
        return Ok((Delivery::Direct(syscall), started.elapsed(), String::new()));
    }
    stub::Layout::write_resume(pid, page, &held.resume_registers(pending_after)).map_err(fail)?;
    held.run_stub(page, stub::ENTRY_PENDING, ptrace::CALL_TIMEOUT)
        .map_err(fail)?;
    let queued = result()?;
    if queued as u32 as i32 != 0 {
        // Nothing was queued, so nothing will free the pages: do it now, while we hold the thread.
        held.syscall(
            syscall_at,
            ptrace::SYS_MUNMAP,
            [page, layout.length, 0, 0, 0, 0],
        )
        .map_err(fail)?;
    }
    held.release(pending_after).map_err(fail)?;
    if queued as u32 as i32 != 0 {
        return Err(helper_error(format!(
            "PID {pid}'s interpreter refused the pending call (its queue of 32 is full): try again"
        )));
    }
    Ok((Delivery::Pending, started.elapsed(), not_direct))
}

/// Python 3.14+: the bootstrap goes in a file in the private directory and the interpreter is
/// asked, by memory writes only (PEP 768), to run it at its next bytecode boundary. No thread is
/// stopped. Unverified against a real 3.14 here (none is installed): see docs/inject.md.
fn remote_exec(
    pid: i32,
    snippet: &str,
    options: &Options,
    channel: &channel::Channel,
) -> Result<()> {
    if options.method != Method::Auto {
        return Err(Error::usage(
            format!(
            "--method {:?} does not apply to PID {pid}: Python 3.14+ is reached through PEP 768's \
             remote execution (use the default, --method auto)",
            options.method
        )
            .to_lowercase(),
        ));
    }
    let path = channel
        .write_file(channel::SCRIPT_NAME, snippet.as_bytes())
        .map_err(|err| {
            helper_error(format!(
                "cannot write the helper script for PID {pid}: {err}"
            ))
        })?;
    debug_offsets::request_remote_exec(pid, &path)
}

/// What the main thread is blocked in, for messages: from /proc/PID/task/PID/syscall.
fn main_thread_wait(pid: i32) -> String {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/syscall")).unwrap_or_default();
    let number = text.split_whitespace().next().unwrap_or("");
    let name = match number {
        "running" => return "running native code that has not returned to Python".into(),
        "0" => "read",
        "7" => "poll",
        "23" => "select",
        "35" | "230" => "sleep",
        "43" | "288" => "accept",
        "61" => "wait4 (waiting for a child process)",
        "202" => "a lock or condition wait (futex)",
        "232" | "281" => "epoll_wait",
        "270" => "pselect",
        "271" => "ppoll",
        "" => return "in an unknown state".into(),
        other => return format!("blocked in system call {other}"),
    };
    format!("blocked in {name}")
}

/// Refuses a target that is stopped, before anything is made or sent: a stopped process runs no
/// code, so a queued helper would wait for the SIGCONT, and holding a stopped thread with ptrace
/// races its job-control stop. One held by a debugger gets the debugger's message.
fn refuse_stopped(pid: i32) -> Result<()> {
    if !crate::target::is_stopped(pid) {
        return Ok(());
    }
    Err(if ptrace::traced_by_other(pid) {
        ptrace_error(pid, PtraceError::AlreadyTraced)
    } else {
        helper_error(format!(
            "PID {pid} is stopped (SIGSTOP or Ctrl-Z): a helper cannot run in it, so nothing was \
             sent and nothing was changed; continue it (kill -CONT {pid}) and run again"
        ))
    })
}

/// Runs `helper` in `pid` with `request` and returns its reply (the helper's `main` result).
pub fn run_helper(
    pid: i32,
    helper: &Helper,
    request: &Value,
    options: &Options,
) -> Result<(Value, Timing)> {
    let (reply, timing, _connection) = run_helper_with(pid, helper, request, options, |reader| {
        reader.object().map(|object| object.to_json())
    })?;
    Ok((reply, timing))
}

/// Like [`run_helper`], with the helper's result read by `decode` straight from the marshalled
/// reply (a large one need not be built whole), and the helper's connection returned: it stays
/// open until dropped, for a helper that keeps its end (tracemalloc's watchdog).
pub fn run_helper_with<T>(
    pid: i32,
    helper: &Helper,
    request: &Value,
    options: &Options,
    decode: impl FnOnce(&mut marshal::Reader) -> std::result::Result<T, marshal::MarshalError>,
) -> Result<(T, Timing, std::os::unix::net::UnixStream)> {
    let started = Instant::now();
    crate::target::check_process(pid)?;
    refuse_stopped(pid)?;
    let interpreter = find_interpreter(pid, helper)?;
    let user = target_user(pid)?;
    let channel = channel::Channel::open(pid, &user).map_err(|err| {
        if err.kind() == std::io::ErrorKind::PermissionDenied {
            // Its /tmp is a directory its user may not write to (a mount of another user's
            // directory in its own namespaces, a read-only or root-only /tmp): the channel is
            // made only with the target's own rights (channel.rs), so not there.
            helper_error(format!(
                "PID {pid}'s user (uid {}) may not create a directory in the /tmp it sees, so \
                 the reply channel cannot be made there; nothing was created and the target was \
                 not touched (`pymemtrace attach --pid {pid}` reads it from outside, without a \
                 helper)",
                user.uid
            ))
        } else {
            helper_error(format!(
                "cannot make the reply channel in PID {pid}'s /tmp ({err}); the target was not \
                 touched"
            ))
        }
    })?;
    let snippet = BOOTSTRAP
        .replace("@PATH@", &python_literal(&channel.target_dir))
        .replace("@SOURCE@", &python_literal(helper.source))
        .replace("@REQUEST@", &python_value(request))
        .replace(
            "@TIMEOUT@",
            &format!("{:.1}", options.timeout.as_secs_f64().max(1.0)),
        );
    let deadline = started + options.timeout;
    let reply_allowance = options.timeout.max(MIN_REPLY_ALLOWANCE);
    // The reply is awaited beside the delivery: a direct call returns only once the helper has
    // replied, so the listener must already be answering.
    let cancel = AtomicBool::new(false);
    let (delivered, received) = std::thread::scope(|scope| {
        let receiver =
            scope.spawn(|| channel.receive(deadline, reply_allowance, options.max_reply, &cancel));
        let delivered = deliver(
            pid,
            &interpreter,
            &snippet,
            options,
            reply_allowance,
            &channel,
        );
        if delivered.is_err() {
            cancel.store(true, Ordering::Relaxed);
        }
        let received = receiver
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the reply reader panicked")));
        (delivered, received)
    });
    let (delivery, held, not_direct) = delivered?;
    let reply = received.map_err(|err| match err.kind() {
        // A target killed while its helper ran: the socket just ends.
        _ if !crate::target::is_alive(pid) => Error::new(
            ErrorKind::NoSuchProcess,
            format!(
                "PID {pid} exited while the {} helper was running in it",
                helper.name
            ),
        ),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => helper_error(format!(
            "the {} helper started in PID {pid} but did not reply within {:.0} s; it finishes \
             on its own (its reply goes nowhere)",
            helper.name,
            reply_allowance.as_secs_f64()
        )),
        _ => helper_error(format!("the {} helper's reply failed: {err}", helper.name)),
    })?;
    let Some((reply, connection)) = reply else {
        return Err(if crate::target::is_alive(pid) {
            helper_error(format!(
                "the {} helper did not run within {:.0} s: PID {pid}'s main thread is {} (no \
                 direct call: {not_direct}). It stays queued and runs when that thread next runs \
                 Python code; it will then find nobody listening, do nothing and free its \
                 memory. Try a longer --timeout, or a moment when the program is \
                 active.",
                helper.name,
                options.timeout.as_secs_f64(),
                main_thread_wait(pid)
            ))
        } else {
            Error::new(
                ErrorKind::NoSuchProcess,
                format!("PID {pid} exited before the {} helper replied", helper.name),
            )
        });
    };
    let unreadable = |err: marshal::MarshalError| {
        helper_error(format!(
            "the {} helper's reply could not be read ({}): not what the helper sends",
            helper.name, err.0
        ))
    };
    // The bootstrap sends {"ok": result} or {"error": message, "traceback": text}.
    let mut decode = Some(decode);
    let mut ok = None;
    let mut error = None;
    let mut reader = marshal::Reader::new(&reply);
    reader
        .dict(|reader, key| {
            match key.as_str().map(|k| &**k) {
                Some("ok") => match decode.take() {
                    Some(decode) => ok = Some(decode(reader)?),
                    None => return Err(marshal::MarshalError("two results".into())),
                },
                Some("error") => error = Some(reader.object()?.to_json()),
                _ => drop(reader.object()?),
            }
            Ok(())
        })
        .and_then(|()| reader.finish())
        .map_err(unreadable)?;
    let timing = Timing {
        held,
        round_trip: started.elapsed(),
        delivery,
    };
    match (ok, error) {
        (Some(ok), None) => Ok((ok, timing, connection)),
        (None, Some(error)) => Err(helper_error(format!(
            "the {} helper failed inside PID {pid}: {}",
            helper.name,
            error.as_str().unwrap_or("(no message)")
        ))),
        _ => Err(helper_error(format!(
            "the {} helper's reply has neither `ok` nor `error`: not what the helper sends",
            helper.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn python_literals_escape_what_they_must() {
        assert_eq!(super::python_literal("/tmp/a'b\\c"), "'/tmp/a\\'b\\\\c'");
        assert_eq!(super::python_literal("é"), "'\\u00e9'");
        let request = serde_json::json!({"a": [1, true, null, "x\n"], "b": 1.5});
        assert_eq!(
            super::python_value(&request),
            "{'a': [1, True, None, 'x\\x0a'], 'b': 1.5}"
        );
    }
}
