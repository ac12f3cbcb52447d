//! Bounded walks of the target's thread-state list and frame chains.
//!
//! The target is untrusted: a process can point its own thread state's `next` (or a frame's caller)
//! back at itself with ctypes. py-spy walks such a list up to 4096 times per read, re-reading the
//! whole stack each time, and at startup, when the list it is given does not end, it scans the
//! interpreter's data section trying every candidate the same way: minutes of a core and hundreds
//! of MB for one crafted pointer. So the tool walks the list itself first, one pointer per thread
//! state, with a visited set and a count cap, and refuses a target whose list loops (exit 4, one
//! line) instead of handing it to py-spy.
//!
//! A list seen looping once may be a torn read of a thread state freed and reused while the walk
//! ran (nothing is paused), so a loop counts only when it is seen on [`CONFIRMATIONS`] walks in a
//! row, a few milliseconds apart: a real loop stays, a race does not.

use std::collections::HashSet;
use std::time::Duration;

use remoteprocess::ProcessMemory;

use crate::error::{Error, ErrorKind};

/// The most thread states the tool walks: py-spy's own bound (a longer list fails its reads).
pub const MAX_THREAD_STATES: usize = 4096;
/// The most frames of one thread the tool walks: py-spy's own bound, as above.
pub const MAX_FRAMES: usize = 4096;
/// Walks in a row that must see the same loop before the target is called corrupt.
const CONFIRMATIONS: u32 = 3;
const CONFIRMATION_PAUSE: Duration = Duration::from_millis(2);

/// What is wrong with a structure the target handed us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corrupt {
    /// The thread-state list comes back to `state`.
    ThreadListLoops { state: u64 },
    /// The list goes on past [`MAX_THREAD_STATES`] distinct thread states.
    TooManyThreadStates,
    /// The frames of thread state `state` come back to `frame`.
    FrameChainLoops { state: u64, frame: u64 },
}

impl Corrupt {
    /// The user's one line (exit 4: no readable interpreter).
    pub fn error(self, pid: i32) -> Error {
        let what = match self {
            Corrupt::ThreadListLoops { state } => format!(
                "its interpreter's thread-state list loops (thread state {state:#x} is linked twice)"
            ),
            Corrupt::TooManyThreadStates => format!(
                "its interpreter's thread-state list has more than {MAX_THREAD_STATES} entries"
            ),
            Corrupt::FrameChainLoops { state, frame } => format!(
                "the frames of thread state {state:#x} loop (frame {frame:#x} is reached twice)"
            ),
        };
        Error::new(
            ErrorKind::NotPython,
            format!(
                "PID {pid}: {what}; its memory is corrupt or crafted, so it is not read any further"
            ),
        )
    }
}

/// Where the thread-state list and the frames are, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offsets {
    /// `PyInterpreterState.tstate_head` (<= 3.10) or `.threads.head` (3.11+).
    pub head: u64,
    /// `PyThreadState.next`.
    pub next: u64,
    /// From a thread state to its current frame, and from a frame to its caller; None where the
    /// tool has no frame offsets for this version (only the list is checked then).
    pub frames: Option<(&'static [u64], u64)>,
}

impl Offsets {
    /// The offsets for CPython `major.minor`, from src/dtrace/offsets.rs (3.8-3.13, checked
    /// against each version's headers). None for other versions.
    pub fn for_version(major: u64, minor: u64) -> Option<Offsets> {
        let layout = crate::dtrace::offsets::layout(major, minor).ok()?;
        Some(Offsets {
            head: layout.interp_threads_head,
            next: layout.tstate_next,
            frames: Some((layout.tstate_frame, layout.frame_previous)),
        })
    }
}

/// Reads one pointer of the target; None when it cannot be read.
pub fn pointer<P: ProcessMemory>(process: &P, address: u64) -> Option<u64> {
    process
        .copy_struct::<usize>(address as usize)
        .ok()
        .map(|p| p as u64)
}

/// Walks with a visited set kept between walks (no allocation per walk once warm).
#[derive(Default)]
pub struct Walker {
    seen: HashSet<u64>,
}

impl Walker {
    /// The thread states of the list whose head pointer is at `head_field`, head first, into
    /// `states`. A pointer that cannot be read ends the list (a state freed under us).
    pub fn thread_states(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        head_field: u64,
        next: u64,
        states: &mut Vec<u64>,
    ) -> Result<(), Corrupt> {
        states.clear();
        self.seen.clear();
        let mut state = read(head_field).unwrap_or(0);
        while state != 0 {
            if !self.seen.insert(state) {
                return Err(Corrupt::ThreadListLoops { state });
            }
            if states.len() >= MAX_THREAD_STATES {
                return Err(Corrupt::TooManyThreadStates);
            }
            states.push(state);
            state = read(state.wrapping_add(next)).unwrap_or(0);
        }
        Ok(())
    }

    /// Follows thread state `state`'s frames, innermost first, up to [`MAX_FRAMES`] (a longer,
    /// loop-free chain is deep recursion, not corruption). Returns how many were walked.
    pub fn frames(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        state: u64,
        to_frame: &[u64],
        previous: u64,
    ) -> Result<usize, Corrupt> {
        self.seen.clear();
        let mut frame = state;
        for &offset in to_frame {
            frame = match read(frame.wrapping_add(offset)) {
                Some(next) if next != 0 => next,
                _ => return Ok(0),
            };
        }
        let mut walked = 0;
        while frame != 0 && walked < MAX_FRAMES {
            if !self.seen.insert(frame) {
                return Err(Corrupt::FrameChainLoops { state, frame });
            }
            walked += 1;
            frame = read(frame.wrapping_add(previous)).unwrap_or(0);
        }
        Ok(walked)
    }

    /// The whole check: the list, then each thread's frames when their offsets are known.
    pub fn check(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        interpreter: u64,
        offsets: Offsets,
    ) -> Result<(), Corrupt> {
        let mut states = Vec::new();
        self.thread_states(read, interpreter + offsets.head, offsets.next, &mut states)?;
        if let Some((to_frame, previous)) = offsets.frames {
            for &state in &states {
                self.frames(read, state, to_frame, previous)?;
            }
        }
        Ok(())
    }
}

/// Runs `walk` until it succeeds, or returns the corruption it saw on [`CONFIRMATIONS`] walks in a
/// row (see the module's comment: a race is not a loop).
pub fn confirmed(mut walk: impl FnMut() -> Result<(), Corrupt>) -> Result<(), Corrupt> {
    let mut last = Ok(());
    for attempt in 0..CONFIRMATIONS {
        if attempt > 0 {
            std::thread::sleep(CONFIRMATION_PAUSE);
        }
        last = walk();
        if last.is_ok() {
            return last;
        }
    }
    last
}

/// Checks a target before py-spy is let loose on it: finds its main interpreter through
/// `_PyRuntime` (3.8-3.13) and walks its thread states and their frames. Anything that stops the
/// check (not Python, another version, no symbol) is left for py-spy to report.
pub fn check_before_attach(pid: i32) -> crate::error::Result<()> {
    let Ok(facts) = crate::dtrace::target::inspect(pid) else {
        return Ok(());
    };
    let Ok(python) = facts.python else {
        return Ok(());
    };
    let (Some(runtime), Some(offsets)) = (
        python.runtime,
        Offsets::for_version(python.major, python.minor),
    ) else {
        return Ok(());
    };
    let Ok(layout) = python.layout else {
        return Ok(());
    };
    let Ok(process) = remoteprocess::Process::new(pid) else {
        return Ok(());
    };
    let mut read = |address| pointer(&process, address);
    let Some(interpreter) = read(runtime + layout.runtime_interp_main).filter(|&i| i != 0) else {
        return Ok(());
    };
    let mut walker = Walker::default();
    confirmed(|| walker.check(&mut read, interpreter, offsets))
        .map_err(|corrupt| corrupt.error(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn memory(pairs: &[(u64, u64)]) -> HashMap<u64, u64> {
        pairs.iter().copied().collect()
    }

    #[test]
    fn a_list_that_ends_is_walked_whole() {
        // head at 0x10 -> 0x100 -> 0x200 -> end; next at +8.
        let mem = memory(&[(0x10, 0x100), (0x108, 0x200), (0x208, 0)]);
        let mut states = Vec::new();
        let mut read = |a| mem.get(&a).copied();
        Walker::default()
            .thread_states(&mut read, 0x10, 8, &mut states)
            .unwrap();
        assert_eq!(states, [0x100, 0x200]);
    }

    #[test]
    fn a_list_pointing_back_is_a_loop() {
        let mem = memory(&[(0x10, 0x100), (0x108, 0x200), (0x208, 0x100)]);
        let mut read = |a| mem.get(&a).copied();
        let mut states = Vec::new();
        assert_eq!(
            Walker::default().thread_states(&mut read, 0x10, 8, &mut states),
            Err(Corrupt::ThreadListLoops { state: 0x100 })
        );
    }

    #[test]
    fn a_frame_that_is_its_own_caller_is_a_loop() {
        // thread state 0x100: frame pointer at +24 -> 0x500, whose caller (at +24) is itself.
        let mem = memory(&[(0x118, 0x500), (0x518, 0x500)]);
        let mut read = |a| mem.get(&a).copied();
        assert_eq!(
            Walker::default().frames(&mut read, 0x100, &[24], 24),
            Err(Corrupt::FrameChainLoops {
                state: 0x100,
                frame: 0x500
            })
        );
    }

    #[test]
    fn a_long_list_is_cut_at_the_cap() {
        let mut read = |a: u64| Some(a + 0x100); // every state's next is a new state
        let mut states = Vec::new();
        assert_eq!(
            Walker::default().thread_states(&mut read, 0x10, 8, &mut states),
            Err(Corrupt::TooManyThreadStates)
        );
        assert_eq!(states.len(), MAX_THREAD_STATES);
    }
}
