//! Where the calling thread's Python frame is, per CPython minor version: the structure offsets the
//! Python-frame probes (py_malloc, py_flow_malloc_free, malloc_outstanding) read from.
//!
//! Measured with `offsets.c` (next to this file) against each version's own headers on this
//! machine: pyenv 3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1, 3.13.0 and Debian's 3.11.2 (the same as
//! pyenv's 3.11). These structures are private to CPython but stay put within a minor version of a
//! default (GIL, release) build; a free-threaded or debug build has other layouts.

/// How the probe knows which thread state is the calling thread's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadSelf {
    /// `tstate->native_thread_id` (3.11+), compared with bpftrace's `tid`.
    NativeId,
    /// `tstate->thread_id`, the thread's `pthread_t`, which is its FS base on x86-64 glibc.
    PthreadFsBase,
}

/// The offsets for one minor version (bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLayout {
    pub minor: u32,
    /// `_PyRuntime.interpreters.main`.
    pub runtime_interp_main: u64,
    /// `PyInterpreterState.tstate_head` (3.8-3.10), `.threads.head` (3.11+).
    pub interp_threads_head: u64,
    /// `PyThreadState.next`.
    pub tstate_next: u64,
    /// `PyThreadState.thread_id` (3.8-3.10) or `.native_thread_id` (3.11+).
    pub tstate_thread_id: u64,
    pub thread_self: ThreadSelf,
    /// Offsets to follow from the thread state to its current frame: `frame` (3.8-3.10),
    /// `cframe` then `current_frame` (3.11, 3.12), `current_frame` (3.13).
    pub tstate_frame: &'static [u64],
    /// `f_code` (3.8-3.12) or `f_executable` (3.13) of the frame.
    pub frame_code: u64,
    /// The calling frame: `f_back` (3.8-3.10) or `previous` (3.11+); `attach --precise` walks it.
    pub frame_previous: u64,
    /// `owner` of an interpreter frame (3.12+), where a C-stack entry frame (owner 3, whose code
    /// is not a function's) is skipped; None where there are no such frames.
    pub frame_owner: Option<u64>,
    /// `co_qualname` (3.11+) or `co_name`.
    pub code_name: u64,
    pub code_filename: u64,
    pub code_firstlineno: u64,
    /// `sizeof(PyASCIIObject)`: a compact ASCII string's characters follow it.
    pub str_data: u64,
}

const LAYOUT_3_8_TO_3_10: [u64; 1] = [24];

/// The table: 3.8, 3.9 and 3.10 share one layout for what is read here.
pub const LAYOUTS: &[FrameLayout] = &[
    FrameLayout {
        minor: 8,
        runtime_interp_main: 40,
        interp_threads_head: 8,
        tstate_next: 8,
        tstate_thread_id: 176,
        thread_self: ThreadSelf::PthreadFsBase,
        tstate_frame: &LAYOUT_3_8_TO_3_10,
        frame_code: 32,
        frame_previous: 24,
        frame_owner: None,
        code_name: 112,
        code_filename: 104,
        code_firstlineno: 40,
        str_data: 48,
    },
    FrameLayout {
        minor: 9,
        runtime_interp_main: 40,
        interp_threads_head: 8,
        tstate_next: 8,
        tstate_thread_id: 176,
        thread_self: ThreadSelf::PthreadFsBase,
        tstate_frame: &LAYOUT_3_8_TO_3_10,
        frame_code: 32,
        frame_previous: 24,
        frame_owner: None,
        code_name: 112,
        code_filename: 104,
        code_firstlineno: 40,
        str_data: 48,
    },
    FrameLayout {
        minor: 10,
        runtime_interp_main: 40,
        interp_threads_head: 8,
        tstate_next: 8,
        tstate_thread_id: 176,
        thread_self: ThreadSelf::PthreadFsBase,
        tstate_frame: &LAYOUT_3_8_TO_3_10,
        frame_code: 32,
        frame_previous: 24,
        frame_owner: None,
        code_name: 112,
        code_filename: 104,
        code_firstlineno: 40,
        str_data: 48,
    },
    FrameLayout {
        minor: 11,
        runtime_interp_main: 48,
        interp_threads_head: 16,
        tstate_next: 8,
        tstate_thread_id: 160,
        thread_self: ThreadSelf::NativeId,
        tstate_frame: &[56, 8],
        frame_code: 32,
        frame_previous: 48,
        frame_owner: None,
        code_name: 128,
        code_filename: 112,
        code_firstlineno: 72,
        str_data: 48,
    },
    FrameLayout {
        minor: 12,
        runtime_interp_main: 48,
        interp_threads_head: 72,
        tstate_next: 8,
        tstate_thread_id: 144,
        thread_self: ThreadSelf::NativeId,
        tstate_frame: &[56, 0],
        frame_code: 0,
        frame_previous: 8,
        frame_owner: Some(70),
        code_name: 128,
        code_filename: 112,
        code_firstlineno: 68,
        str_data: 40,
    },
    FrameLayout {
        minor: 13,
        runtime_interp_main: 640,
        interp_threads_head: 7344,
        tstate_next: 8,
        tstate_thread_id: 160,
        thread_self: ThreadSelf::NativeId,
        tstate_frame: &[72],
        frame_code: 0,
        frame_previous: 8,
        frame_owner: Some(70),
        code_name: 128,
        code_filename: 112,
        code_firstlineno: 68,
        str_data: 40,
    },
];

/// The layout for CPython `major.minor`, or why there is none.
pub fn layout(major: u64, minor: u64) -> Result<&'static FrameLayout, String> {
    if major != 3 {
        return Err(format!(
            "Python {major}.{minor} has no offset table here (3.8-3.13 only)"
        ));
    }
    LAYOUTS
        .iter()
        .find(|l| u64::from(l.minor) == minor)
        .ok_or_else(|| {
            if minor < 8 {
                format!("Python 3.{minor} has no offset table here (3.8-3.13 only; before 3.8 the thread states are laid out differently and were not measured)")
            } else {
                format!("Python 3.{minor} has no offset table here (3.8-3.13 only; its structures were not measured)")
            }
        })
}

/// The bpftrace expression for the current frame of thread state `$me`.
pub fn frame_expression(layout: &FrameLayout) -> String {
    let mut expression = "$me".to_string();
    for offset in layout.tstate_frame {
        expression = format!("*(uint64 *)uptr({expression} + {offset})");
    }
    expression
}

/// The D expression for the current frame of thread state `this->me`.
pub fn frame_expression_d(layout: &FrameLayout) -> String {
    let mut expression = "this->me".to_string();
    for offset in layout.tstate_frame {
        expression = format!("*(uint64_t *)copyin({expression} + {offset}, 8)");
    }
    expression
}

/// The bpftrace expression the thread id stored in a thread state is compared with.
pub fn thread_self_expression(layout: &FrameLayout) -> &'static str {
    match layout.thread_self {
        ThreadSelf::NativeId => "tid",
        ThreadSelf::PthreadFsBase => "(uint64)curtask->thread.fsbase",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_minor_from_3_8_to_3_13_has_a_layout() {
        for minor in 8..=13 {
            assert_eq!(layout(3, minor).unwrap().minor as u64, minor);
        }
        assert!(layout(3, 7).unwrap_err().contains("3.8-3.13"));
        assert!(layout(2, 7).is_err());
        assert!(layout(3, 14).is_err());
    }

    #[test]
    fn frame_expressions_follow_the_chain() {
        assert_eq!(
            frame_expression(layout(3, 12).unwrap()),
            "*(uint64 *)uptr(*(uint64 *)uptr($me + 56) + 0)"
        );
        assert_eq!(
            frame_expression(layout(3, 13).unwrap()),
            "*(uint64 *)uptr($me + 72)"
        );
        assert_eq!(
            thread_self_expression(layout(3, 9).unwrap()),
            "(uint64)curtask->thread.fsbase"
        );
    }
}
