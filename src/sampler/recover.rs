//! Stack reads that survive thread churn.
//!
//! py-spy walks the interpreter's list of thread states and fails the whole read when one thread
//! cannot be read. Under churn (threads started and ended thousands of times a second) that happens
//! in 1-5% of nonblocking reads: a thread that is ending has freed its frames (or its thread state)
//! while still linked in the list, and the walk reads freed memory ("Failed to copy PyFrameObject /
//! PyCodeObject / PyThreadState: Bad address"; figures in docs/reliability.md, "Thread churn").
//! An immediate second read fails again in about one case in ten: the ending thread is still there.
//!
//! So a read is retried a few times, and when it still fails, the threads after the bad one are
//! read on their own: new thread states are linked at the head of the list, so the thread that is
//! ending is usually one of the first, and the threads after it (the long-lived ones: the main
//! thread comes last) can still be read. py-spy starts its walk at `*(interpreter + head offset)`;
//! pointing its interpreter address so that this is a thread state's `next` field makes it walk
//! from the following thread on. The offsets are CPython's (stable within a minor version) and
//! are checked on the target before they are trusted: a read from the second thread on must give
//! exactly the full read's threads but the first. Nothing is written to the target and nothing is
//! paused; a wrong pointer only makes a read fail.
//!
//! Such a read is partial: the skipped thread states (the failing one and any newer ones before
//! it) are missing from it. It is counted as a sample, and separately as partial, with the number
//! of thread states skipped, so that the report says how much of what it saw was incomplete.

use std::time::{Duration, Instant};

use py_spy::{PythonSpy, StackTrace};

use crate::target::walk::{self, Corrupt, Walker};

/// Whole reads tried before reading thread by thread: with a failure rate p per read and about one
/// failure in ten repeating at once, three reads leave roughly p/100 (measured: reliability.md).
const FULL_ATTEMPTS: u32 = 3;
/// At most this many thread states are skipped from the head of the list, and the recovery gives
/// up after this long: a read costs 0.1-1 ms, and a stuck tick must not stall the RSS polling.
const MAX_SKIPPED: usize = 8;
const RECOVERY_BUDGET: Duration = Duration::from_millis(5);
/// No whole read is retried once this long has gone on the read: a target with hundreds of deep
/// threads takes seconds per read, and a retry would only add seconds more to a late tick.
const RETRY_BUDGET: Duration = Duration::from_millis(100);
/// Checks of the offsets (one per successful read with at least two threads, until one agrees).
/// Under churn a check can see the list change between its two reads; 50 checks that all
/// disagree mean the offsets are wrong for this build, and recovery stays off.
const MAX_CHECKS: u32 = 50;

/// Where the thread list is, for one CPython minor version (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ListLayout {
    /// `PyInterpreterState.tstate_head` (<= 3.10) or `.threads.head` (3.11+).
    head: usize,
    /// `PyThreadState.next`.
    next: usize,
}

/// The offsets of a default (GIL, release, x86_64/aarch64) build. 2.7 has no `prev` before `next`;
/// 3.8-3.13 agree with src/dtrace/offsets.rs, which was measured against each version's headers
/// (a unit test checks the two tables agree).
fn layout(major: u64, minor: u64) -> Option<ListLayout> {
    let (head, next) = match (major, minor) {
        (2, 7) => (8, 0),
        (3, 6..=10) => (8, 8),
        (3, 11) => (16, 8),
        (3, 12) => (72, 8),
        (3, 13) => (7344, 8),
        _ => return None,
    };
    Some(ListLayout { head, next })
}

/// One stack read that succeeded, whole or in part.
pub struct Read {
    pub traces: Vec<StackTrace>,
    /// Whole reads that failed before this one succeeded (0: the first read worked).
    pub failed_attempts: u32,
    /// Thread states left out from the head of the list (0: a whole read).
    pub skipped: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trust {
    /// Not checked yet (or every check so far saw the list change).
    Unchecked(u32),
    Checked,
    /// No offsets for this version, or they never agreed: retries only.
    Off,
}

/// Why a read gave nothing.
#[derive(Debug)]
pub enum ReadError {
    /// py-spy failed (a thread ending under the read, the target exiting, ...).
    Failed,
    /// The target's thread list or frames loop (seen on several walks in a row): no read of it can
    /// be trusted to end in reasonable time.
    Corrupt(Corrupt),
}

pub struct Reader {
    layout: Option<ListLayout>,
    /// Frame offsets (3.8-3.13), to tell a frame loop from deep recursion when a read fails.
    frames: Option<(&'static [u64], u64)>,
    trust: Trust,
    walker: Walker,
    states: Vec<u64>,
}

impl Reader {
    pub fn new(spy: &PythonSpy) -> Reader {
        let layout = layout(spy.version.major, spy.version.minor);
        Reader {
            layout,
            frames: walk::Offsets::for_version(spy.version.major, spy.version.minor)
                .and_then(|offsets| offsets.frames),
            walker: Walker::default(),
            states: Vec::new(),
            trust: if layout.is_some() {
                Trust::Unchecked(0)
            } else {
                Trust::Off
            },
        }
    }

    /// Whether threads can be read after one that cannot (the offsets were checked on the target).
    pub fn by_thread(&self) -> bool {
        self.trust == Trust::Checked
    }

    /// Walks the thread list first, before each read (one pointer per thread state, a few
    /// microseconds): a list that loops is never handed to py-spy, which would read every stack
    /// up to 4096 times. Says how many thread states it has.
    pub fn walk_list(&mut self, spy: &PythonSpy) -> Result<usize, ReadError> {
        self.check_list(spy).map_err(ReadError::Corrupt)?;
        Ok(self.states.len())
    }

    /// Reads every thread's stack, once [`Reader::walk_list`] has walked the list: whole, else
    /// after a few retries, else from the threads after the one that cannot be read.
    pub fn read_walked(&mut self, spy: &mut PythonSpy) -> Result<Read, ReadError> {
        let started = Instant::now();
        let mut last_error = None;
        for attempt in 0..FULL_ATTEMPTS {
            if attempt > 0 && started.elapsed() > RETRY_BUDGET {
                break;
            }
            match spy.get_stack_traces() {
                Ok(traces) => {
                    if let Trust::Unchecked(_) = self.trust {
                        self.check(spy, &traces);
                    }
                    return Ok(Read {
                        traces,
                        failed_attempts: attempt,
                        skipped: 0,
                    });
                }
                Err(err) => last_error = Some(err),
            }
        }
        let error = last_error.expect("at least one attempt");
        if format!("{error:#}").contains("Max frame recursion depth") {
            // More than 4096 frames: deep recursion, or frames that loop.
            self.check_frames(spy).map_err(ReadError::Corrupt)?;
        }
        if self.trust != Trust::Checked || started.elapsed() > RETRY_BUDGET {
            return Err(ReadError::Failed);
        }
        match self.read_after_failing_thread(spy) {
            Some((traces, skipped)) => Ok(Read {
                traces,
                failed_attempts: FULL_ATTEMPTS,
                skipped,
            }),
            None => Err(ReadError::Failed),
        }
    }

    /// Walks the thread list (see [`walk`]); a loop or an endless list is an error once confirmed.
    fn check_list(&mut self, spy: &PythonSpy) -> Result<(), Corrupt> {
        let Some(layout) = self.layout else {
            return Ok(());
        };
        let head = (spy.addresses.interpreter_address + layout.head) as u64;
        let (walker, states) = (&mut self.walker, &mut self.states);
        let mut read = |address| walk::pointer(&spy.process, address);
        walk::confirmed(|| walker.thread_states(&mut read, head, layout.next as u64, states))
    }

    /// Walks every thread's frames; a loop is an error once confirmed.
    fn check_frames(&mut self, spy: &PythonSpy) -> Result<(), Corrupt> {
        let (Some(layout), Some((to_frame, previous))) = (self.layout, self.frames) else {
            return Ok(());
        };
        let head = (spy.addresses.interpreter_address + layout.head) as u64;
        let (walker, states) = (&mut self.walker, &mut self.states);
        let mut read = |address| walk::pointer(&spy.process, address);
        walk::confirmed(|| {
            walker.thread_states(&mut read, head, layout.next as u64, states)?;
            for &state in states.iter() {
                walker.frames(&mut read, state, to_frame, previous)?;
            }
            Ok(())
        })
    }

    /// The addresses of the thread states in the list, head first, as far as they can be read
    /// (empty when the list loops: [`Reader::read`] has refused such a target already).
    fn list(&mut self, spy: &PythonSpy, layout: ListLayout) -> Vec<usize> {
        let head = (spy.addresses.interpreter_address + layout.head) as u64;
        let mut states = Vec::new();
        let mut read = |address| walk::pointer(&spy.process, address);
        if self
            .walker
            .thread_states(&mut read, head, layout.next as u64, &mut states)
            .is_err()
        {
            states.clear();
        }
        states.into_iter().map(|state| state as usize).collect()
    }

    /// py-spy's read of the threads that follow thread state `after` in the list.
    fn read_from(
        spy: &mut PythonSpy,
        layout: ListLayout,
        after: usize,
    ) -> anyhow::Result<Vec<StackTrace>> {
        let interpreter = spy.addresses.interpreter_address;
        // py-spy reads the list head at interpreter + head: make that address `after`'s `next`.
        spy.addresses.interpreter_address = (after + layout.next).wrapping_sub(layout.head);
        let result = spy.get_stack_traces();
        spy.addresses.interpreter_address = interpreter;
        result
    }

    fn read_after_failing_thread(
        &mut self,
        spy: &mut PythonSpy,
    ) -> Option<(Vec<StackTrace>, usize)> {
        let layout = self.layout?;
        let start = Instant::now();
        let states = self.list(spy, layout);
        for (index, &state) in states.iter().enumerate().take(MAX_SKIPPED) {
            if start.elapsed() > RECOVERY_BUDGET {
                break;
            }
            if let Ok(traces) = Self::read_from(spy, layout, state) {
                // Skipping the last thread state leaves nothing read: that is not a sample.
                if traces.is_empty() {
                    return None;
                }
                return Some((traces, index + 1));
            }
        }
        None
    }

    /// Checks the offsets against a whole read just made: reading from the second thread on must
    /// give the same threads but the first.
    fn check(&mut self, spy: &mut PythonSpy, whole: &[StackTrace]) {
        let (Some(layout), Trust::Unchecked(checks)) = (self.layout, self.trust) else {
            return;
        };
        if whole.len() < 2 {
            return;
        }
        let states = self.list(spy, layout);
        let agrees = states.len() == whole.len()
            && Self::read_from(spy, layout, states[0]).is_ok_and(|rest| {
                rest.iter()
                    .map(|t| t.thread_id)
                    .eq(whole[1..].iter().map(|t| t.thread_id))
            });
        self.trust = if agrees {
            Trust::Checked
        } else if checks + 1 >= MAX_CHECKS {
            Trust::Off
        } else {
            Trust::Unchecked(checks + 1)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::layout;

    #[test]
    fn list_offsets_agree_with_the_measured_frame_layouts() {
        for measured in crate::dtrace::offsets::LAYOUTS {
            let ours = layout(3, measured.minor as u64).expect("a layout for every measured minor");
            assert_eq!(
                ours.head as u64, measured.interp_threads_head,
                "3.{}",
                measured.minor
            );
            assert_eq!(
                ours.next as u64, measured.tstate_next,
                "3.{}",
                measured.minor
            );
        }
    }
}
