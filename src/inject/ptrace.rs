//! Calling a function inside a stopped thread of another process (Linux x86_64), with ptrace.
//!
//! The recipe is the one docs/inject.md ("Why this method") records as safe on these machines: seize and
//! interrupt one thread, save its general registers *and* its extended (vector) state, run what we
//! need, restore both, detach. Signals that arrive for the thread while we hold it are held back and
//! sent again after the detach, so the target loses none.

use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::ptrace;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::inject::stub;

/// What went wrong while the thread was held.
#[derive(Debug)]
pub enum PtraceError {
    /// Another tracer (a debugger, strace, py-spy --native...) already traces the target.
    AlreadyTraced,
    /// The kernel refused (no CAP_SYS_PTRACE, Yama ptrace_scope, another user's process).
    NotPermitted,
    /// The thread did not stop in time (it is in uninterruptible sleep, or stopped by SIGSTOP).
    DidNotStop,
    /// The target exited while held.
    Exited,
    /// Anything else, with what was being done.
    Failed(String),
}

impl std::fmt::Display for PtraceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PtraceError::AlreadyTraced => {
                f.write_str("another tracer (a debugger?) is attached to it")
            }
            PtraceError::NotPermitted => f.write_str("ptrace was refused"),
            PtraceError::DidNotStop => f.write_str("its main thread did not stop within a second"),
            PtraceError::Exited => f.write_str("it exited"),
            PtraceError::Failed(what) => f.write_str(what),
        }
    }
}

type Result<T> = std::result::Result<T, PtraceError>;

fn failed(what: &str, err: Errno) -> PtraceError {
    match err {
        Errno::ESRCH => PtraceError::Exited,
        _ => PtraceError::Failed(format!("{what}: {err}")),
    }
}

/// NT_X86_XSTATE: the regset holding the AVX/AVX-512/AMX state a call can clobber.
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Larger than any x86_64 xstate area (about 11 KiB with AMX tiles).
const XSTATE_BUFFER: usize = 32 * 1024;
/// x86_64 syscall numbers used here.
pub const SYS_MMAP: u64 = 9;
pub const SYS_MUNMAP: u64 = 11;
pub const SYS_FUTEX: u64 = 202;
pub const SYS_CLOCK_NANOSLEEP: u64 = 230;
/// The kernel's "restart this syscall" codes, as they sit in rax of an interrupted syscall.
const ERESTARTSYS: i64 = 512;
const ERESTARTNOINTR: i64 = 513;
const ERESTARTNOHAND: i64 = 514;
pub const ERESTART_RESTARTBLOCK: i64 = 516;

/// How long a thread may take to stop, and a call to return.
const STOP_TIMEOUT: Duration = Duration::from_secs(1);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What happens to the system call the thread was interrupted in, when it is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterRelease {
    /// The kernel restarts it as it would after any stop (the usual case).
    Restart,
    /// A futex wait returns EINTR instead, so a lock wait in CPython runs pending calls at once.
    InterruptLockWait,
    /// The thread executes the same syscall again with its saved arguments. For a sleep to an
    /// absolute deadline (clock_nanosleep with TIMER_ABSTIME) this is exactly what the kernel's
    /// restart does, without depending on the thread's restart block, which a timed wait inside
    /// our own call may have overwritten.
    Reissue,
}

/// A thread held stopped, with everything needed to put it back as it was.
pub struct Held {
    tid: Pid,
    saved: libc::user_regs_struct,
    xstate: Vec<u8>,
    /// Signals that arrived while held, to be sent again after the detach.
    held_back: Vec<Signal>,
    detached: bool,
}

/// Seizes `tid` and stops it. The thread is resumed (detached) when the returned value is dropped,
/// restored to its saved state if [`Held::release`] was not called.
pub fn seize(tid: i32) -> Result<Held> {
    let pid = Pid::from_raw(tid);
    match ptrace::seize(pid, ptrace::Options::empty()) {
        Ok(()) => {}
        Err(Errno::EPERM) => {
            // EPERM is both "traced by someone else" and "not allowed": TracerPid tells them apart.
            return Err(if traced_by_other(tid) {
                PtraceError::AlreadyTraced
            } else {
                PtraceError::NotPermitted
            });
        }
        Err(Errno::ESRCH) => return Err(PtraceError::Exited),
        Err(err) => return Err(failed("PTRACE_SEIZE", err)),
    }
    let mut held = Held {
        tid: pid,
        // SAFETY: a plain C struct of integers; overwritten by getregs before any use.
        saved: unsafe { std::mem::zeroed() },
        xstate: Vec::new(),
        held_back: Vec::new(),
        detached: false,
    };
    ptrace::interrupt(pid).map_err(|e| failed("PTRACE_INTERRUPT", e))?;
    held.wait_for(STOP_TIMEOUT, |status| {
        matches!(status, WaitStatus::PtraceEvent(_, _, event) if *event == libc::PTRACE_EVENT_STOP)
    }, Resume::Continue)?;
    held.saved = ptrace::getregs(pid).map_err(|e| failed("PTRACE_GETREGS", e))?;
    held.xstate = get_xstate(pid)?;
    Ok(held)
}

pub fn traced_by_other(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| tracer_pid(&status))
        .is_some_and(|tracer| tracer != 0)
}

/// The TracerPid line of /proc/PID/status.
pub(crate) fn tracer_pid(status: &str) -> Option<i32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("TracerPid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
}

fn get_xstate(pid: Pid) -> Result<Vec<u8>> {
    let mut buffer = vec![0u8; XSTATE_BUFFER];
    let mut iov = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: buffer.len(),
    };
    // SAFETY: the kernel writes at most iov_len bytes into the buffer and sets iov_len.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_GETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    if rc != 0 {
        return Err(failed("PTRACE_GETREGSET(NT_X86_XSTATE)", Errno::last()));
    }
    buffer.truncate(iov.iov_len);
    Ok(buffer)
}

fn set_xstate(pid: Pid, xstate: &mut [u8]) -> Result<()> {
    let mut iov = libc::iovec {
        iov_base: xstate.as_mut_ptr().cast(),
        iov_len: xstate.len(),
    };
    // SAFETY: the kernel reads iov_len bytes from the buffer.
    let rc = unsafe {
        libc::ptrace(
            libc::PTRACE_SETREGSET,
            pid.as_raw(),
            NT_X86_XSTATE as usize as *mut libc::c_void,
            &mut iov as *mut libc::iovec,
        )
    };
    if rc != 0 {
        return Err(failed("PTRACE_SETREGSET(NT_X86_XSTATE)", Errno::last()));
    }
    Ok(())
}

/// How to resume the thread after holding back a signal while waiting.
#[derive(Clone, Copy)]
enum Resume {
    Continue,
    Step,
}

/// x86_64 `restart_syscall`: resumes a call through the thread's restart block.
const SYS_RESTART_SYSCALL: u64 = 219;

impl Held {
    /// The registers the thread was stopped with.
    pub fn saved_registers(&self) -> &libc::user_regs_struct {
        &self.saved
    }

    /// The syscall the thread was in when stopped (interrupted, to be restarted), if any.
    pub fn interrupted_syscall(&self) -> Option<u64> {
        let rax = self.saved.rax as i64;
        let in_syscall = (self.saved.orig_rax as i64) >= 0;
        let restartable = matches!(
            -rax,
            ERESTARTSYS | ERESTARTNOINTR | ERESTARTNOHAND | ERESTART_RESTARTBLOCK
        );
        (in_syscall && restartable).then_some(self.saved.orig_rax)
    }

    /// Waits for a stop that `wanted` accepts; other signals are held back and the thread resumed
    /// as `resume` says. Fails on exit or after `limit`.
    fn wait_for(
        &mut self,
        limit: Duration,
        wanted: impl Fn(&WaitStatus) -> bool,
        resume: Resume,
    ) -> Result<WaitStatus> {
        let now = Instant::now();
        let deadline = now
            .checked_add(limit)
            .unwrap_or(now + Duration::from_secs(86_400));
        loop {
            let status = waitpid(self.tid, Some(WaitPidFlag::__WALL | WaitPidFlag::WNOHANG))
                .map_err(|e| failed("waitpid", e))?;
            match status {
                WaitStatus::StillAlive => {
                    if Instant::now() >= deadline {
                        return Err(PtraceError::DidNotStop);
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                WaitStatus::Exited(..) | WaitStatus::Signaled(..) => {
                    self.detached = true;
                    return Err(PtraceError::Exited);
                }
                status if wanted(&status) => return Ok(status),
                other => {
                    // A thread that keeps reporting other stops (a job-control stop that arrived
                    // while we hold it reports one after each resume) must not keep us here.
                    if Instant::now() >= deadline {
                        return Err(PtraceError::DidNotStop);
                    }
                    // A signal for the target is kept for after the detach; group stops and other
                    // events are passed over. Either way the thread goes on as it was going.
                    if let WaitStatus::Stopped(_, signal) = other {
                        self.held_back.push(signal);
                    }
                    let resumed = match resume {
                        Resume::Continue => ptrace::cont(self.tid, None),
                        Resume::Step => ptrace::step(self.tid, None),
                    };
                    resumed.map_err(|e| failed("resuming after an unrelated stop", e))?;
                }
            }
        }
    }

    fn fresh_regs(&self) -> libc::user_regs_struct {
        let mut regs = self.saved;
        // No syscall restart logic may touch rip when we resume at an address of our own.
        regs.orig_rax = u64::MAX;
        // The ABI wants the direction flag clear at a call.
        regs.eflags &= !(1 << 10);
        regs
    }

    /// Runs one syscall in the thread by single-stepping a `syscall` instruction at `at`.
    pub fn syscall(&mut self, at: u64, number: u64, args: [u64; 6]) -> Result<u64> {
        let mut regs = self.fresh_regs();
        regs.rip = at;
        regs.rax = number;
        regs.rdi = args[0];
        regs.rsi = args[1];
        regs.rdx = args[2];
        regs.r10 = args[3];
        regs.r8 = args[4];
        regs.r9 = args[5];
        ptrace::setregs(self.tid, regs).map_err(|e| failed("PTRACE_SETREGS", e))?;
        ptrace::step(self.tid, None).map_err(|e| failed("PTRACE_SINGLESTEP", e))?;
        self.wait_for(
            STOP_TIMEOUT,
            |s| matches!(s, WaitStatus::Stopped(_, Signal::SIGTRAP)),
            Resume::Step,
        )?;
        let after = ptrace::getregs(self.tid).map_err(|e| failed("PTRACE_GETREGS", e))?;
        Ok(after.rax)
    }

    /// Runs the stub in `page` from `entry` on the thread's own stack (below its red zone) until
    /// it reaches its `resume` stop, where the thread is held again. `limit` bounds the wait; past
    /// it the thread is still in the stub, which puts the thread back by itself when it ends.
    pub fn run_stub(&mut self, page: u64, entry: u64, limit: Duration) -> Result<()> {
        let mut regs = self.fresh_regs();
        // 16-byte aligned: the stub's `call` then gives each function the ABI's alignment.
        regs.rsp = (self.saved.rsp - 1024) & !15;
        regs.rip = page + entry;
        ptrace::setregs(self.tid, regs).map_err(|e| failed("PTRACE_SETREGS", e))?;
        ptrace::cont(self.tid, None).map_err(|e| failed("PTRACE_CONT", e))?;
        let tid = self.tid;
        let stop = page + stub::RESUME_STOP;
        // The stub's own signal, at the stub's own address; any other signal is held back.
        self.wait_for(
            limit,
            |s| {
                matches!(s, WaitStatus::Stopped(_, signal) if *signal == stub::RESUME_SIGNAL)
                    && ptrace::getregs(tid).is_ok_and(|r| r.rip == stop)
            },
            Resume::Continue,
        )?;
        stall_for_tests(entry);
        Ok(())
    }

    /// The registers the thread resumes with, by us or by the stub: as saved, except that an
    /// interrupted system call is entered again (what the kernel's own restart does), made to
    /// return EINTR, or re-issued, as `after` says. orig_rax -1: no restart logic of the kernel's
    /// runs on top of ours (the stub stops just after a system call of its own).
    pub fn resume_registers(&self, after: AfterRelease) -> libc::user_regs_struct {
        let mut regs = self.saved;
        if let Some(number) = self.interrupted_syscall() {
            match after {
                AfterRelease::InterruptLockWait if number == SYS_FUTEX => {
                    regs.rax = (-(libc::EINTR as i64)) as u64;
                }
                AfterRelease::Reissue => {
                    regs.rax = number;
                    regs.rip -= 2;
                }
                _ => {
                    regs.rax = if -(self.saved.rax as i64) == ERESTART_RESTARTBLOCK {
                        SYS_RESTART_SYSCALL
                    } else {
                        number
                    };
                    regs.rip -= 2;
                }
            }
        }
        regs.orig_rax = u64::MAX;
        regs
    }

    /// Puts the thread back as it was and lets it go; `after` says what becomes of the system
    /// call it was interrupted in.
    pub fn release(mut self, after: AfterRelease) -> Result<()> {
        let regs = self.resume_registers(after);
        let mut xstate = std::mem::take(&mut self.xstate);
        let restored = ptrace::setregs(self.tid, regs)
            .map_err(|e| failed("PTRACE_SETREGS", e))
            .and_then(|_| set_xstate(self.tid, &mut xstate));
        self.detach();
        restored
    }

    /// The thread's vector state as saved (the stub restores it if the tool is gone).
    pub fn xstate(&self) -> &[u8] {
        &self.xstate
    }

    fn detach(&mut self) {
        if self.detached {
            return;
        }
        self.detached = true;
        let _ = ptrace::detach(self.tid, None);
        for signal in self.held_back.drain(..) {
            // SAFETY: tgkill only sends a signal.
            unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    self.tid.as_raw(),
                    self.tid.as_raw(),
                    signal as libc::c_int,
                );
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.detached {
            // An error path: put back what we saved before letting the thread run. (If it is
            // running inside the stub, these fail and the stub puts it back itself.)
            let _ = ptrace::setregs(self.tid, self.resume_registers(AfterRelease::Restart));
            if !self.xstate.is_empty() {
                let mut xstate = std::mem::take(&mut self.xstate);
                let _ = set_xstate(self.tid, &mut xstate);
            }
            self.detach();
        }
    }
}

/// Test hook: with PYMEMTRACE_TEST_STALL=ENTRY:MS (ENTRY check, pending or direct), the tool says
/// so on stderr and waits MS with the thread held at that stub run's stop, so a test can kill the
/// tool at the worst moment and check that the target lives on.
fn stall_for_tests(entry: u64) {
    let Ok(setting) = std::env::var("PYMEMTRACE_TEST_STALL") else {
        return;
    };
    let name = match entry {
        stub::ENTRY_CHECK => "check",
        stub::ENTRY_PENDING => "pending",
        _ => "direct",
    };
    if let Some(ms) = setting
        .strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(':'))
        .and_then(|ms| ms.parse::<u64>().ok())
    {
        eprintln!("pymemtrace: stalling {ms} ms at the {name} stop (test hook)");
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// Writes into another process's memory (the pages must be writable).
pub fn write_memory(pid: i32, address: u64, data: &[u8]) -> Result<()> {
    let local = libc::iovec {
        iov_base: data.as_ptr() as *mut libc::c_void,
        iov_len: data.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: data.len(),
    };
    // SAFETY: the local buffer is valid for data.len() bytes; the kernel checks the remote range.
    let written = unsafe { libc::process_vm_writev(pid, &local, 1, &remote, 1, 0) };
    if written != data.len() as isize {
        return Err(failed("process_vm_writev", Errno::last()));
    }
    Ok(())
}

/// Reads another process's memory.
pub fn read_memory(pid: i32, address: u64, len: usize) -> Result<Vec<u8>> {
    let mut buffer = vec![0u8; len];
    let local = libc::iovec {
        iov_base: buffer.as_mut_ptr().cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the local buffer is valid for len bytes; the kernel checks the remote range.
    let read = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
    if read != len as isize {
        return Err(failed("process_vm_readv", Errno::last()));
    }
    Ok(buffer)
}

/// An address holding a `syscall` instruction (0f 05) the thread can single-step: right before
/// its rip when it sits in a syscall, else one in the vDSO.
pub fn find_syscall_instruction(pid: i32, held: &Held) -> Result<u64> {
    if held.saved.orig_rax as i64 >= 0 {
        let at = held.saved.rip - 2;
        if read_memory(pid, at, 2)? == [0x0f, 0x05] {
            return Ok(at);
        }
    }
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| PtraceError::Failed(format!("cannot read /proc/{pid}/maps: {e}")))?;
    let vdso = vdso_range(&maps)
        .ok_or_else(|| PtraceError::Failed("no [vdso] mapping to find a syscall in".into()))?;
    let code = read_memory(pid, vdso.0, (vdso.1 - vdso.0) as usize)?;
    code.windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|offset| vdso.0 + offset as u64)
        .ok_or_else(|| PtraceError::Failed("no syscall instruction in the vDSO".into()))
}

/// The [vdso] mapping of /proc/PID/maps text: (start, end).
pub(crate) fn vdso_range(maps: &str) -> Option<(u64, u64)> {
    maps.lines()
        .find(|l| l.ends_with("[vdso]"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|range| range.split_once('-'))
        .and_then(|(start, end)| {
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
            ))
        })
}
