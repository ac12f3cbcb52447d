//! Programs the tool starts end with it, even when it is SIGKILLed.
//!
//! A child that outlives the tool is at best litter and at worst a root tracer running forever
//! (bpftrace keeps its probes and maps until it exits). A signal handler cannot help against
//! SIGKILL, so each child asks the kernel itself, between fork and exec, to be sent SIGKILL when
//! its parent dies (`PR_SET_PDEATHSIG`).
//!
//! What each child of the tool gets:
//! - the tracers (`dtrace`, `attach --precise`: bpftrace or dtrace): SIGKILL with the tool. The
//!   kernel then detaches their probes and frees their maps, as for any exiting tracer.
//! - a program started after `--` (`attach -- CMD`, `process -- CMD`): SIGKILL with the tool, as
//!   the tool would end it at the end of a normal run ([`crate::target::stop_child`]). Only the
//!   program itself: what it started in turn is its own business.
//! - gdb (`--method gdb`): nothing. gdb may be in the middle of a call inside the target (its
//!   registers and stack changed for `mmap` or `Py_AddPendingCall`); killed there, it would leave
//!   the target to crash. Its job is short and bounded (attach, two calls, detach), and in batch
//!   mode it detaches and exits by itself when its script ends, so it ends soon after a killed tool.
//!
//! The signal comes when the *thread* that forked the child exits, not the process (prctl(2)):
//! so a child must be started from a thread that lives as long as the child is wanted, which is
//! the case for every caller (they start and wait for the child on the same thread, or start it
//! from the main thread).

use std::os::unix::process::CommandExt;
use std::process::Command;

/// Makes the child started by `command` be SIGKILLed when this process (the thread that starts
/// it) dies.
pub fn end_with_tool(command: &mut Command) {
    // Read before fork: the child compares its parent with it, to catch a parent that died
    // between the fork and the prctl (the signal would then never come).
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the child between fork and exec and calls only async-signal-safe
    // functions (prctl, getppid, raise).
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::raise(libc::SIGKILL);
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_with_the_death_signal_runs_normally() {
        // The death signal itself is checked for real in tests/hostile_tracer.rs (a SIGKILLed
        // tool); here, that setting it does not stop the child from starting and running.
        let mut command = Command::new("sh");
        command.args(["-c", "exit 7"]);
        end_with_tool(&mut command);
        assert_eq!(command.status().unwrap().code(), Some(7));
    }
}
