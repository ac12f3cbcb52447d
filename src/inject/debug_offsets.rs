//! CPython's `_Py_DebugOffsets` (3.13+), read from a live process, and the PEP 768 remote-exec
//! request (3.14+).
//!
//! Since 3.13, `_PyRuntime` (the interpreter's one global runtime state) starts with a table of
//! struct sizes and field offsets, `_Py_DebugOffsets`, meant for out-of-process tools: a cookie
//! `"xdebugpy"`, `PY_VERSION_HEX`, then groups of `uint64_t` offsets. `_PyRuntime` lives in its own
//! ELF section, `.PyRuntime`, of the executable (static builds) or of `libpython3.x.so`.
//!
//! The layouts below are transcribed from CPython's headers:
//! - 3.13: `Include/internal/pycore_runtime.h` (the struct is defined there in 3.13); checked
//!   against a real 3.13.0 process (`fixtures/debug_offsets/3.13.0.bin`, 584 bytes as gdb reports
//!   for `sizeof(_Py_DebugOffsets)`).
//! - 3.14: `Include/internal/pycore_debug_offsets.h` at v3.14.0 (adds `threads_main`, the
//!   free-threading `tlbc` fields, `set_object`, `gen_object`, `llist_node` and
//!   `debugger_support`).
//!   No 3.14 interpreter was available to check it against.
//!
//! The remote-exec request mirrors what CPython 3.14 does itself for `sys.remote_exec`
//! (`Python/remote_debugging.c`, `send_exec_to_proc_handle`): check `config.remote_debug` of the
//! interpreter, write the NUL-terminated script path into the thread state's
//! `remote_debugger_support.debugger_script_path`, then `debugger_pending_call = 1`, then set
//! `_PY_EVAL_PLEASE_STOP_BIT` (1 << 5) in the thread's `eval_breaker`. At its next eval-breaker
//! check the thread calls `_PyRunRemoteDebugger`, which re-checks `config.remote_debug`, clears the
//! pending flag, raises the audit event `cpython.remote_debugger_script` and runs the file.
//!
//! Everything read from the target is treated as untrusted: every read is bounded, every list walk
//! has a length limit and cycle detection, and offsets are checked against the struct sizes the
//! same table declares before they are used.

use std::collections::HashSet;
use std::fs::File;

use object::read::elf::ElfFile64;
use object::read::ReadCache;
use object::{Endianness, Object, ObjectSection, ObjectSegment, ObjectSymbol};
use serde_json::json;

use crate::error::{Error, ErrorKind, Result};

/// The cookie `_Py_DebugOffsets` starts with (`_Py_Debug_Cookie`, 8 bytes, no NUL).
pub const COOKIE: &[u8; 8] = b"xdebugpy";

/// `_PY_EVAL_PLEASE_STOP_BIT` in `Include/internal/pycore_ceval.h` (3.13 and 3.14).
pub const EVAL_PLEASE_STOP_BIT: u64 = 1 << 5;

/// Bounds on walks through the target's linked lists: far above any real process, low enough that
/// garbage cannot keep us busy.
const MAX_INTERPRETERS: usize = 1024;
const MAX_THREADS: usize = 4096;
/// The largest single read from the target (struct sizes above this are treated as garbage).
const MAX_READ: usize = 64 * 1024;
/// Sanity limits for sizes declared in the table (3.13.0's PyInterpreterState is about 190 KiB).
const MAX_STRUCT_SIZE: u64 = 16 * 1024 * 1024;
const MAX_SCRIPT_PATH_SIZE: u64 = 64 * 1024;

/// Offsets into `_PyRuntimeState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeOffsets {
    pub size: u64,
    /// `_finalizing`: the thread state finalizing the runtime, NULL while it runs normally.
    pub finalizing: u64,
    /// `interpreters.head`: the newest interpreter; the list ends with the main one.
    pub interpreters_head: u64,
}

/// Offsets into `PyInterpreterState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterpreterOffsets {
    pub size: u64,
    /// `id` (int64; the main interpreter is 0).
    pub id: u64,
    pub next: u64,
    /// `threads.head`: the newest thread state.
    pub threads_head: u64,
    /// `threads.main` (3.14+): the thread state of the thread that initialised the runtime.
    pub threads_main: Option<u64>,
}

/// Offsets into `PyThreadState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadOffsets {
    pub size: u64,
    pub prev: u64,
    pub next: u64,
    pub interp: u64,
    pub current_frame: u64,
    /// `thread_id`: the pthread_t (unsigned long).
    pub thread_id: u64,
    /// `native_thread_id`: the kernel tid (unsigned long).
    pub native_thread_id: u64,
    pub status: u64,
}

/// `debugger_support` (3.14+): where PEP 768 requests are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebuggerSupportOffsets {
    /// `PyThreadState.eval_breaker` (uintptr_t; event bits in the low byte).
    pub eval_breaker: u64,
    /// `PyThreadState.remote_debugger_support` (a `_PyRemoteDebuggerSupport`).
    pub remote_debugger_support: u64,
    /// `PyInterpreterState.config.remote_debug` (int; 1 = enabled).
    pub remote_debugging_enabled: u64,
    /// `_PyRemoteDebuggerSupport.debugger_pending_call` (int32), relative to
    /// `remote_debugger_support`.
    pub debugger_pending_call: u64,
    /// `_PyRemoteDebuggerSupport.debugger_script_path` (char[]), relative to
    /// `remote_debugger_support`.
    pub debugger_script_path: u64,
    /// Size of that buffer, NUL included (`MAX_SCRIPT_PATH_SIZE`, 512 in 3.14.0).
    pub debugger_script_path_size: u64,
}

/// What we use of a target's `_Py_DebugOffsets`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DebugOffsets {
    /// `PY_VERSION_HEX` of the target, e.g. 0x030d00f0 for 3.13.0.
    pub version: u64,
    pub free_threaded: bool,
    pub runtime: RuntimeOffsets,
    pub interpreter: InterpreterOffsets,
    pub thread: ThreadOffsets,
    /// Present from 3.14 on.
    pub debugger: Option<DebuggerSupportOffsets>,
}

impl DebugOffsets {
    pub fn major(&self) -> u64 {
        (self.version >> 24) & 0xff
    }

    pub fn minor(&self) -> u64 {
        (self.version >> 16) & 0xff
    }

    /// "3.13.0", "3.14.0rc2": the same text `sys.version` starts with.
    pub fn version_string(&self) -> String {
        version_string(self.version)
    }
}

fn version_string(hex: u64) -> String {
    let (major, minor, micro) = ((hex >> 24) & 0xff, (hex >> 16) & 0xff, (hex >> 8) & 0xff);
    let serial = hex & 0xf;
    let level = match (hex >> 4) & 0xf {
        0xa => format!("a{serial}"),
        0xb => format!("b{serial}"),
        0xc => format!("rc{serial}"),
        0xf => String::new(),
        other => format!("?{other:x}{serial}"),
    };
    format!("{major}.{minor}.{micro}{level}")
}

/// A thread state of the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadState {
    /// Address of the `PyThreadState` in the target.
    pub address: u64,
    /// Kernel thread id (`native_thread_id`).
    pub native_thread_id: u64,
    /// pthread_t (`thread_id`), what `threading.get_ident()` returns.
    pub thread_id: u64,
    /// The `PyInterpreterState` it belongs to (its `interp` field).
    pub interpreter: u64,
}

/// The main interpreter of the target and its thread states, newest first (CPython's list order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpreter {
    pub address: u64,
    pub id: i64,
    pub threads: Vec<ThreadState>,
    /// `threads.main` (3.14+).
    pub threads_main: Option<u64>,
}

// ---------------------------------------------------------------------------------------------
// The layouts, transcribed group by group and field by field from the headers named at the top.
// Every field is a uint64_t; the struct is the 8-byte cookie followed by these u64s in order.

type Group = (&'static str, &'static [&'static str]);

const RUNTIME_STATE: &[&str] = &["size", "finalizing", "interpreters_head"];
const THREAD_STATE: &[&str] = &[
    "size",
    "prev",
    "next",
    "interp",
    "current_frame",
    "thread_id",
    "native_thread_id",
    "datastack_chunk",
    "status",
];
const PYOBJECT: &[&str] = &["size", "ob_type"];
const TYPE_OBJECT: &[&str] = &["size", "tp_name", "tp_repr", "tp_flags"];
const TUPLE_OBJECT: &[&str] = &["size", "ob_item", "ob_size"];
const LIST_OBJECT: &[&str] = &["size", "ob_item", "ob_size"];
const DICT_OBJECT: &[&str] = &["size", "ma_keys", "ma_values"];
const FLOAT_OBJECT: &[&str] = &["size", "ob_fval"];
const LONG_OBJECT: &[&str] = &["size", "lv_tag", "ob_digit"];
const BYTES_OBJECT: &[&str] = &["size", "ob_size", "ob_sval"];
const UNICODE_OBJECT: &[&str] = &["size", "state", "length", "asciiobject_size"];
const GC: &[&str] = &["size", "collecting"];

/// 3.13: `Include/internal/pycore_runtime.h`, `struct _Py_DebugOffsets`.
const LAYOUT_3_13: &[Group] = &[
    ("runtime_state", RUNTIME_STATE),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
        ],
    ),
    ("thread_state", THREAD_STATE),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
        ],
    ),
    ("pyobject", PYOBJECT),
    ("type_object", TYPE_OBJECT),
    ("tuple_object", TUPLE_OBJECT),
    ("list_object", LIST_OBJECT),
    ("dict_object", DICT_OBJECT),
    ("float_object", FLOAT_OBJECT),
    ("long_object", LONG_OBJECT),
    ("bytes_object", BYTES_OBJECT),
    ("unicode_object", UNICODE_OBJECT),
    ("gc", GC),
];

/// 3.14: `Include/internal/pycore_debug_offsets.h` at v3.14.0, `struct _Py_DebugOffsets`.
const LAYOUT_3_14: &[Group] = &[
    ("runtime_state", RUNTIME_STATE),
    (
        "interpreter_state",
        &[
            "size",
            "id",
            "next",
            "threads_head",
            "threads_main",
            "gc",
            "imports_modules",
            "sysdict",
            "builtins",
            "ceval_gil",
            "gil_runtime_state",
            "gil_runtime_state_enabled",
            "gil_runtime_state_locked",
            "gil_runtime_state_holder",
            "code_object_generation",
            "tlbc_generation",
        ],
    ),
    ("thread_state", THREAD_STATE),
    (
        "interpreter_frame",
        &[
            "size",
            "previous",
            "executable",
            "instr_ptr",
            "localsplus",
            "owner",
            "stackpointer",
            "tlbc_index",
        ],
    ),
    (
        "code_object",
        &[
            "size",
            "filename",
            "name",
            "qualname",
            "linetable",
            "firstlineno",
            "argcount",
            "localsplusnames",
            "localspluskinds",
            "co_code_adaptive",
            "co_tlbc",
        ],
    ),
    ("pyobject", PYOBJECT),
    ("type_object", TYPE_OBJECT),
    ("tuple_object", TUPLE_OBJECT),
    ("list_object", LIST_OBJECT),
    ("set_object", &["size", "used", "table", "mask"]),
    ("dict_object", DICT_OBJECT),
    ("float_object", FLOAT_OBJECT),
    ("long_object", LONG_OBJECT),
    ("bytes_object", BYTES_OBJECT),
    ("unicode_object", UNICODE_OBJECT),
    ("gc", GC),
    (
        "gen_object",
        &["size", "gi_name", "gi_iframe", "gi_frame_state"],
    ),
    ("llist_node", &["next", "prev"]),
    (
        "debugger_support",
        &[
            "eval_breaker",
            "remote_debugger_support",
            "remote_debugging_enabled",
            "debugger_pending_call",
            "debugger_script_path",
            "debugger_script_path_size",
        ],
    ),
];

/// Bytes before the first group: cookie, version, free_threaded.
const HEADER_SIZE: usize = 24;

/// `sizeof(_Py_DebugOffsets)` for a layout.
fn layout_size(layout: &[Group]) -> usize {
    HEADER_SIZE + 8 * layout.iter().map(|(_, fields)| fields.len()).sum::<usize>()
}

/// Byte offset of `group.field` inside `_Py_DebugOffsets`.
fn field_offset(layout: &[Group], group: &str, field: &str) -> Option<usize> {
    let mut offset = HEADER_SIZE;
    for (name, fields) in layout {
        if *name == group {
            return fields
                .iter()
                .position(|f| *f == field)
                .map(|i| offset + 8 * i);
        }
        offset += 8 * fields.len();
    }
    None
}

fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[offset..offset + 8]);
    u64::from_le_bytes(word)
}

/// The layout for a `PY_VERSION_HEX`, or a one-line reason why we do not read it.
fn layout_for(version: u64) -> std::result::Result<&'static [Group], String> {
    let text = version_string(version);
    let (major, minor) = ((version >> 24) & 0xff, (version >> 16) & 0xff);
    let layout: &'static [Group] = match (major, minor) {
        (3, 13) => LAYOUT_3_13,
        (3, 14) => LAYOUT_3_14,
        (3, m) if m > 14 => {
            return Err(format!(
                "the target runs Python {text}, newer than this build knows: it reads the \
                 _Py_DebugOffsets layouts of Python 3.13 and 3.14 only"
            ))
        }
        _ => {
            return Err(format!(
                "the _Py_DebugOffsets version field says {text} (0x{version:x}), which has no \
                 such table; the memory does not look like CPython's"
            ))
        }
    };
    // CPython itself only trusts the table across patch releases: alphas and betas changed it
    // (3.14's grew over its alphas). Release candidates already have the final layout.
    let level = (version >> 4) & 0xf;
    if level == 0xa || level == 0xb {
        return Err(format!(
            "the target runs the pre-release Python {text}; the _Py_DebugOffsets layout changed \
             between alphas and betas, and this build reads release candidates and final \
             releases only"
        ));
    }
    Ok(layout)
}

fn unsupported(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::UnsupportedVersion, message)
}

/// Parses a `_Py_DebugOffsets` from its bytes (at least `sizeof(_Py_DebugOffsets)` of the
/// target's version; extra bytes are ignored).
pub fn parse(bytes: &[u8]) -> Result<DebugOffsets> {
    if bytes.len() < 16 || &bytes[..8] != COOKIE {
        return Err(unsupported(
            "no _Py_DebugOffsets (cookie \"xdebugpy\") at the start of _PyRuntime: the target \
             predates Python 3.13",
        ));
    }
    let version = u64_at(bytes, 8);
    let layout = layout_for(version).map_err(unsupported)?;
    let size = layout_size(layout);
    if bytes.len() < size {
        return Err(Error::internal(format!(
            "_Py_DebugOffsets of Python {} needs {size} bytes, got {}",
            version_string(version),
            bytes.len()
        )));
    }
    let get = |group: &str, field: &str| -> Option<u64> {
        field_offset(layout, group, field).map(|offset| u64_at(bytes, offset))
    };
    // The groups and fields named here exist in every layout above (the tests check it), except
    // those read as Option.
    let must = |group: &str, field: &str| get(group, field).unwrap_or(0);
    let free_threaded = match u64_at(bytes, 16) {
        0 => false,
        1 => true,
        other => {
            return Err(unsupported(format!(
                "_Py_DebugOffsets.free_threaded is {other}, not 0 or 1: the table is not laid \
                 out as this build expects for Python {}",
                version_string(version)
            )))
        }
    };
    let offsets = DebugOffsets {
        version,
        free_threaded,
        runtime: RuntimeOffsets {
            size: must("runtime_state", "size"),
            finalizing: must("runtime_state", "finalizing"),
            interpreters_head: must("runtime_state", "interpreters_head"),
        },
        interpreter: InterpreterOffsets {
            size: must("interpreter_state", "size"),
            id: must("interpreter_state", "id"),
            next: must("interpreter_state", "next"),
            threads_head: must("interpreter_state", "threads_head"),
            threads_main: get("interpreter_state", "threads_main"),
        },
        thread: ThreadOffsets {
            size: must("thread_state", "size"),
            prev: must("thread_state", "prev"),
            next: must("thread_state", "next"),
            interp: must("thread_state", "interp"),
            current_frame: must("thread_state", "current_frame"),
            thread_id: must("thread_state", "thread_id"),
            native_thread_id: must("thread_state", "native_thread_id"),
            status: must("thread_state", "status"),
        },
        debugger: field_offset(layout, "debugger_support", "eval_breaker").map(|_| {
            DebuggerSupportOffsets {
                eval_breaker: must("debugger_support", "eval_breaker"),
                remote_debugger_support: must("debugger_support", "remote_debugger_support"),
                remote_debugging_enabled: must("debugger_support", "remote_debugging_enabled"),
                debugger_pending_call: must("debugger_support", "debugger_pending_call"),
                debugger_script_path: must("debugger_support", "debugger_script_path"),
                debugger_script_path_size: must("debugger_support", "debugger_script_path_size"),
            }
        }),
    };
    validate(&offsets, size as u64).map_err(|what| {
        unsupported(format!(
            "the _Py_DebugOffsets of this Python {} are inconsistent ({what}): not the layout \
             this build expects",
            offsets.version_string()
        ))
    })?;
    Ok(offsets)
}

/// Checks that every offset we use lies inside the struct it belongs to, so that a wrong layout
/// or garbage memory gives an error here rather than reads and writes at nonsense addresses.
fn validate(o: &DebugOffsets, table_size: u64) -> std::result::Result<(), String> {
    let within = |what: &str, offset: u64, width: u64, size: u64| {
        if offset.checked_add(width).is_some_and(|end| end <= size) {
            Ok(())
        } else {
            Err(format!("{what} at {offset} does not fit in {size} bytes"))
        }
    };
    for (what, size) in [
        ("_PyRuntimeState", o.runtime.size),
        ("PyInterpreterState", o.interpreter.size),
        ("PyThreadState", o.thread.size),
    ] {
        if size == 0 || size > MAX_STRUCT_SIZE {
            return Err(format!("sizeof({what}) = {size}"));
        }
    }
    if o.thread.size > MAX_READ as u64 {
        return Err(format!("sizeof(PyThreadState) = {}", o.thread.size));
    }
    let runtime = o.runtime.size;
    // The table is the first member of _PyRuntimeState, so nothing else we use can overlap it.
    for (what, offset) in [
        ("runtime finalizing", o.runtime.finalizing),
        ("interpreters_head", o.runtime.interpreters_head),
    ] {
        if offset < table_size {
            return Err(format!("{what} at {offset} lies inside the table itself"));
        }
    }
    within("runtime finalizing", o.runtime.finalizing, 8, runtime)?;
    within("interpreters_head", o.runtime.interpreters_head, 8, runtime)?;
    let interp = o.interpreter.size;
    within("interpreter id", o.interpreter.id, 8, interp)?;
    within("interpreter next", o.interpreter.next, 8, interp)?;
    within("threads_head", o.interpreter.threads_head, 8, interp)?;
    if let Some(main) = o.interpreter.threads_main {
        within("threads_main", main, 8, interp)?;
    }
    let thread = o.thread.size;
    within("thread next", o.thread.next, 8, thread)?;
    within("thread interp", o.thread.interp, 8, thread)?;
    within("thread_id", o.thread.thread_id, 8, thread)?;
    within("native_thread_id", o.thread.native_thread_id, 8, thread)?;
    if let Some(d) = &o.debugger {
        within("eval_breaker", d.eval_breaker, 8, thread)?;
        within(
            "remote_debugging_enabled",
            d.remote_debugging_enabled,
            4,
            interp,
        )?;
        if d.debugger_script_path_size == 0 || d.debugger_script_path_size > MAX_SCRIPT_PATH_SIZE {
            return Err(format!(
                "debugger_script_path_size = {}",
                d.debugger_script_path_size
            ));
        }
        let support = d.remote_debugger_support;
        let pending = support.saturating_add(d.debugger_pending_call);
        within("debugger_pending_call", pending, 4, thread)?;
        let path = support.saturating_add(d.debugger_script_path);
        within(
            "debugger_script_path",
            path,
            d.debugger_script_path_size,
            thread,
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Target memory.

fn errno_error(pid: i32, doing: &str, errno: i32) -> Error {
    let err = std::io::Error::from_raw_os_error(errno);
    match errno {
        libc::ESRCH => Error::new(ErrorKind::NoSuchProcess, format!("process {pid} exited")),
        libc::EPERM | libc::EACCES => Error::new(
            ErrorKind::PermissionDenied,
            format!("not allowed to {doing} of process {pid}: {err}"),
        ),
        _ => Error::internal(format!("cannot {doing} of process {pid}: {err}")),
    }
}

/// Reads `len` bytes of the target (bounded by MAX_READ); a short read is an error.
fn read_bytes(pid: i32, address: u64, len: usize, what: &str) -> Result<Vec<u8>> {
    if len > MAX_READ {
        return Err(Error::internal(format!(
            "refusing to read {len} bytes of {what} from process {pid}"
        )));
    }
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
    if read < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(errno_error(
            pid,
            &format!("read {what} at 0x{address:x}"),
            errno,
        ));
    }
    if read as usize != len {
        return Err(Error::internal(format!(
            "cannot read {what} at 0x{address:x} of process {pid}: only {read} of {len} bytes \
             are mapped"
        )));
    }
    Ok(buffer)
}

/// Writes `data` into the target; a short write is an error.
fn write_bytes(pid: i32, address: u64, data: &[u8], what: &str) -> Result<()> {
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
    if written < 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        return Err(errno_error(
            pid,
            &format!("write {what} at 0x{address:x}"),
            errno,
        ));
    }
    if written as usize != data.len() {
        return Err(Error::internal(format!(
            "wrote only {written} of {} bytes of {what} at 0x{address:x} in process {pid}",
            data.len()
        )));
    }
    Ok(())
}

fn read_u64(pid: i32, address: u64, what: &str) -> Result<u64> {
    let bytes = read_bytes(pid, address, 8, what)?;
    Ok(u64_at(&bytes, 0))
}

fn read_i32(pid: i32, address: u64, what: &str) -> Result<i32> {
    let bytes = read_bytes(pid, address, 4, what)?;
    Ok(i32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

/// `base + offset` in the target, as an error rather than a wrap when garbage overflows.
fn at(base: u64, offset: u64, what: &str) -> Result<u64> {
    base.checked_add(offset).ok_or_else(|| {
        Error::internal(format!(
            "address of {what} overflows (0x{base:x} + 0x{offset:x})"
        ))
    })
}

/// A pointer read from the target that we are about to follow: must look like one.
fn check_pointer(pointer: u64, what: &str) -> Result<()> {
    // Every struct followed here holds pointers, so it is 8-aligned; user space is below 2^56,
    // even with 5-level paging.
    if !pointer.is_multiple_of(8) || pointer >= 1 << 56 {
        return Err(Error::internal(format!(
            "{what} is 0x{pointer:x}, not a valid pointer: the target's memory does not look \
             like CPython's"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Finding _PyRuntime.

/// One line of /proc/PID/maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub(crate) start: u64,
    pub(crate) end: u64,
    /// The "start-end" text, as /proc/PID/map_files names the mapping.
    pub(crate) range: String,
    /// Mapped with execute permission.
    pub(crate) executable: bool,
    pub(crate) offset: u64,
    pub(crate) path: String,
}

pub(crate) fn parse_maps(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<Mapping> {
    // "start-end perms offset dev inode   path"; the path may contain spaces, so take the five
    // fields one by one and keep the rest.
    let mut rest = line;
    let mut fields = [""; 5];
    for field in fields.iter_mut() {
        rest = rest.trim_start();
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let (start, end) = fields[0].split_once('-')?;
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        range: fields[0].to_string(),
        executable: fields[1].contains('x'),
        offset: u64::from_str_radix(fields[2], 16).ok()?,
        path: rest.trim_start().to_string(),
    })
}

fn proc_error(pid: i32, what: &str, err: &std::io::Error) -> Error {
    match err.kind() {
        std::io::ErrorKind::NotFound => {
            Error::new(ErrorKind::NoSuchProcess, format!("no process {pid}"))
        }
        std::io::ErrorKind::PermissionDenied => Error::new(
            ErrorKind::PermissionDenied,
            format!("not allowed to read {what} of process {pid}"),
        ),
        _ => Error::internal(format!("cannot read {what} of process {pid}: {err}")),
    }
}

/// Where `_PyRuntime` is in one ELF file: its link-time address and the link-time address the
/// first PT_LOAD segment starts at (page-aligned), or None if the file has neither a `.PyRuntime`
/// section nor a `_PyRuntime` symbol.
/// Opens the file behind mapping `m` of `pid` as the target sees it: through
/// /proc/PID/map_files (which works across mount namespaces and for deleted or replaced files),
/// else through /proc/PID/root.
pub(crate) fn open_mapped_file(pid: i32, m: &Mapping) -> std::io::Result<File> {
    File::open(format!("/proc/{pid}/map_files/{}", m.range)).or_else(|_| {
        let path = m.path.strip_suffix(" (deleted)").unwrap_or(&m.path);
        File::open(format!("/proc/{pid}/root{path}"))
    })
}

/// The lowest PT_LOAD address of an ELF file, rounded down to a page: what its offset-0 mapping's
/// start corresponds to, so that start - this is the load bias (0 for a non-PIE executable).
pub(crate) fn first_load<'data, R: object::ReadRef<'data>>(
    elf: &ElfFile64<'data, Endianness, R>,
) -> Option<u64> {
    let page_size = crate::memory::page_size();
    let page_size = if page_size.is_power_of_two() {
        page_size
    } else {
        4096
    };
    elf.segments()
        .map(|s| s.address())
        .min()
        .map(|lowest| lowest & !(page_size - 1))
}

fn runtime_in_elf(file: File) -> std::result::Result<Option<(u64, u64)>, String> {
    // ReadCache reads only the parts of the file that are looked at (libpython with debug info is
    // tens of MB).
    let cache = ReadCache::new(file);
    let elf = ElfFile64::<Endianness, _>::parse(&cache).map_err(|e| e.to_string())?;
    let Some(first_load) = first_load(&elf) else {
        return Ok(None);
    };
    // The section is what CPython's own remote debugging looks for (3.14 puts _PyRuntime there on
    // purpose); the symbol covers builds whose linker dropped or renamed the section.
    if let Some(section) = elf.section_by_name(".PyRuntime") {
        if section.address() != 0 {
            return Ok(Some((section.address(), first_load)));
        }
    }
    let symbol = elf
        .dynamic_symbols()
        .chain(elf.symbols())
        .find(|s| s.is_definition() && s.name() == Ok("_PyRuntime"));
    Ok(symbol.map(|s| (s.address(), first_load)))
}

/// Address of `_PyRuntime` (the `.PyRuntime` section) in process `pid`.
///
/// Looks at the executable and at every mapped file whose name contains "python" (static
/// builds, `libpython3.x.so`, embedders). Files are opened through /proc/PID/map_files (or
/// /proc/PID/root), so the target's own files are read even inside a container or after they were
/// replaced on disk. The load bias is the start of the file's offset-0 mapping minus its first
/// PT_LOAD address (0 for non-PIE executables).
pub fn find_runtime(pid: i32) -> Result<u64> {
    let maps_text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| proc_error(pid, "/proc/PID/maps", &e))?;
    let maps = parse_maps(&maps_text);
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    // Candidate files, the executable first, each with its lowest offset-0 mapping.
    let mut candidates: Vec<&Mapping> = Vec::new();
    let mut seen = HashSet::new();
    let is_candidate = |m: &Mapping| {
        let name = m.path.rsplit('/').next().unwrap_or("");
        m.path.starts_with('/') && (Some(&m.path) == exe.as_ref() || name.contains("python"))
    };
    for pass_exe in [true, false] {
        for m in &maps {
            if m.offset != 0 || !is_candidate(m) {
                continue;
            }
            if pass_exe != (Some(&m.path) == exe.as_ref()) || !seen.insert(m.path.clone()) {
                continue;
            }
            candidates.push(m);
        }
    }

    let mut problems = Vec::new();
    for m in candidates {
        let file = match open_mapped_file(pid, m) {
            Ok(file) => file,
            Err(e) => {
                problems.push(format!("{}: {e}", m.path));
                continue;
            }
        };
        match runtime_in_elf(file) {
            Ok(Some((vaddr, first_load))) => {
                let address = m
                    .start
                    .checked_sub(first_load)
                    .and_then(|bias| bias.checked_add(vaddr));
                // The result must fall inside one of the target's mappings, or the bias is wrong.
                if let Some(address) = address {
                    if maps.iter().any(|r| r.start <= address && address < r.end) {
                        return Ok(address);
                    }
                }
                problems.push(format!(
                    "{}: _PyRuntime is not mapped where expected",
                    m.path
                ));
            }
            Ok(None) => {}
            Err(e) => problems.push(format!("{}: {e}", m.path)),
        }
    }
    let detail = if problems.is_empty() {
        String::new()
    } else {
        format!(" ({})", problems.join("; "))
    };
    Err(Error::new(
        ErrorKind::NotPython,
        format!(
            "no CPython runtime in process {pid}: neither the executable nor a mapped file named \
             like python has a .PyRuntime section or a _PyRuntime symbol{detail}"
        ),
    ))
}

/// Reads and parses the `_Py_DebugOffsets` at the start of `_PyRuntime`.
pub fn read(pid: i32, runtime: u64) -> Result<DebugOffsets> {
    let head = read_bytes(pid, runtime, 16, "the start of _PyRuntime")?;
    if &head[..8] != COOKIE {
        return Err(unsupported(format!(
            "process {pid} has no _Py_DebugOffsets (cookie \"xdebugpy\") at the start of \
             _PyRuntime (0x{runtime:x}): it runs a Python older than 3.13"
        )));
    }
    let layout = layout_for(u64_at(&head, 8)).map_err(unsupported)?;
    let bytes = read_bytes(pid, runtime, layout_size(layout), "_Py_DebugOffsets")?;
    parse(&bytes)
}

// ---------------------------------------------------------------------------------------------
// Walking interpreters and threads.

/// The main interpreter (id 0) and its thread states.
pub fn main_interpreter(pid: i32, runtime: u64, offsets: &DebugOffsets) -> Result<Interpreter> {
    let head = read_u64(
        pid,
        at(
            runtime,
            offsets.runtime.interpreters_head,
            "interpreters.head",
        )?,
        "_PyRuntime.interpreters.head",
    )?;
    if head == 0 {
        return Err(Error::new(
            ErrorKind::NotPython,
            format!("process {pid} has no Python interpreter yet (or any more)"),
        ));
    }
    // New interpreters are pushed at the head, so the main one (id 0) is normally the last.
    let mut visited = HashSet::new();
    let mut address = head;
    let mut chosen = None;
    let mut last = (head, -1);
    while address != 0 {
        check_pointer(address, "an interpreter state pointer")?;
        if !visited.insert(address) || visited.len() > MAX_INTERPRETERS {
            return Err(Error::internal(format!(
                "the interpreter list of process {pid} loops or is longer than \
                 {MAX_INTERPRETERS}: the target's memory does not look like CPython's"
            )));
        }
        let id = read_u64(
            pid,
            at(address, offsets.interpreter.id, "id")?,
            "interpreter id",
        )? as i64;
        if id == 0 {
            chosen = Some((address, 0));
            break;
        }
        last = (address, id);
        address = read_u64(
            pid,
            at(address, offsets.interpreter.next, "next")?,
            "interp next",
        )?;
    }
    // No id 0 (cannot happen in CPython, where the main interpreter lives until the end): use the
    // oldest one.
    let (interp, id) = chosen.unwrap_or(last);

    let threads_main = match offsets.interpreter.threads_main {
        Some(offset) => Some(read_u64(
            pid,
            at(interp, offset, "threads.main")?,
            "threads.main",
        )?),
        None => None,
    };
    let threads = thread_states(pid, interp, offsets)?;
    Ok(Interpreter {
        address: interp,
        id,
        threads,
        threads_main,
    })
}

/// The thread states of one interpreter, in list order (newest first).
fn thread_states(pid: i32, interp: u64, offsets: &DebugOffsets) -> Result<Vec<ThreadState>> {
    let t = &offsets.thread;
    // One read per thread state, covering the fields used (validate() checked they fit in size).
    let span = [t.next, t.interp, t.thread_id, t.native_thread_id]
        .into_iter()
        .max()
        .unwrap_or(0)
        + 8;
    let mut threads = Vec::new();
    let mut visited = HashSet::new();
    let mut address = read_u64(
        pid,
        at(interp, offsets.interpreter.threads_head, "threads.head")?,
        "threads.head",
    )?;
    while address != 0 {
        check_pointer(address, "a thread state pointer")?;
        if !visited.insert(address) || threads.len() >= MAX_THREADS {
            return Err(Error::internal(format!(
                "the thread list of process {pid} loops or is longer than {MAX_THREADS}: the \
                 target's memory does not look like CPython's"
            )));
        }
        let bytes = read_bytes(pid, address, span as usize, "a thread state")?;
        let field = |offset: u64| u64_at(&bytes, offset as usize);
        threads.push(ThreadState {
            address,
            native_thread_id: field(t.native_thread_id),
            thread_id: field(t.thread_id),
            interpreter: field(t.interp),
        });
        address = field(t.next);
    }
    Ok(threads)
}

/// The thread state of the process's main thread: the one whose native_thread_id is the pid. On
/// 3.14+, if no thread has that id (Python initialised from another thread of an embedding
/// program), falls back to `threads.main`, the thread `sys.remote_exec` itself targets.
pub fn main_thread_state(pid: i32, runtime: u64, offsets: &DebugOffsets) -> Result<ThreadState> {
    let interp = main_interpreter(pid, runtime, offsets)?;
    pick_main_thread(pid, &interp).ok_or_else(|| {
        Error::new(
            ErrorKind::HelperFailed,
            format!(
                "process {pid} has no Python thread state for its main thread (tid {pid}) among \
                 {} thread(s): Python is still starting, or shutting down, or was started from \
                 another thread",
                interp.threads.len()
            ),
        )
    })
}

fn pick_main_thread(pid: i32, interp: &Interpreter) -> Option<ThreadState> {
    let by_tid = interp
        .threads
        .iter()
        .find(|t| t.native_thread_id == pid as u64);
    let by_main = interp
        .threads_main
        .and_then(|main| interp.threads.iter().find(|t| t.address == main));
    by_tid.or(by_main).copied()
}

fn hex(address: u64) -> String {
    format!("0x{address:x}")
}

fn thread_json(t: &ThreadState, main: Option<&ThreadState>) -> serde_json::Value {
    json!({
        "address": hex(t.address),
        "native_thread_id": t.native_thread_id,
        "thread_id": t.thread_id,
        "main": main.is_some_and(|m| m.address == t.address),
    })
}

/// Whether `config.remote_debug` of the interpreter is 1 (3.14+; None before).
fn remote_debugging_enabled(pid: i32, interp: u64, offsets: &DebugOffsets) -> Result<Option<bool>> {
    match &offsets.debugger {
        None => Ok(None),
        Some(d) => {
            let address = at(interp, d.remote_debugging_enabled, "config.remote_debug")?;
            // CPython's own sender and _PyRunRemoteDebugger both test `== 1`.
            Ok(Some(read_i32(pid, address, "config.remote_debug")? == 1))
        }
    }
}

/// Everything above as JSON: version, runtime and interpreter addresses, the thread states (newest
/// first), the main one, and for 3.14+ whether remote debugging (PEP 768) is enabled.
pub fn inspect(pid: i32) -> Result<serde_json::Value> {
    inspect_at(pid, find_runtime(pid)?)
}

/// [`inspect`] with `_PyRuntime` already found.
fn inspect_at(pid: i32, runtime: u64) -> Result<serde_json::Value> {
    let offsets = read(pid, runtime)?;
    let finalizing = read_u64(
        pid,
        at(runtime, offsets.runtime.finalizing, "_finalizing")?,
        "_PyRuntime._finalizing",
    )?;
    let interp = main_interpreter(pid, runtime, &offsets)?;
    let main = pick_main_thread(pid, &interp);
    let enabled = remote_debugging_enabled(pid, interp.address, &offsets)?;
    Ok(json!({
        "pid": pid,
        "version": offsets.version_string(),
        "version_hex": hex(offsets.version),
        "free_threaded": offsets.free_threaded,
        "runtime": hex(runtime),
        "finalizing": finalizing != 0,
        "interpreter": {
            "address": hex(interp.address),
            "id": interp.id,
            "threads_main": interp.threads_main.map(hex),
        },
        "threads": interp.threads.iter().map(|t| thread_json(t, main.as_ref())).collect::<Vec<_>>(),
        "main_thread": main.as_ref().map(|t| thread_json(t, main.as_ref())),
        "remote_exec_supported": offsets.debugger.is_some(),
        "remote_debugging_enabled": enabled,
    }))
}

// ---------------------------------------------------------------------------------------------
// PEP 768.

/// Asks the target's main thread to run the Python file `script_path_in_target` (a path as the
/// target sees it: its mount namespace) at its next eval-breaker check, the way
/// `sys.remote_exec` does (Python 3.14+ only).
///
/// Returns once the request is written; it runs later, when the main thread next executes
/// bytecode (not while it is blocked in a system call). What this cannot see from outside: an
/// audit hook in the target may veto the `cpython.remote_debugger_script` event, and errors in
/// the script are only reported to the target's unraisable hook; callers must wait for a
/// result with a timeout.
pub fn request_remote_exec(pid: i32, script_path_in_target: &str) -> Result<()> {
    request_remote_exec_at(pid, find_runtime(pid)?, script_path_in_target)
}

/// [`request_remote_exec`] with `_PyRuntime` already found.
fn request_remote_exec_at(pid: i32, runtime: u64, script_path_in_target: &str) -> Result<()> {
    let offsets = read(pid, runtime)?;
    let Some(d) = offsets.debugger else {
        return Err(unsupported(format!(
            "process {pid} runs Python {}; the remote-exec interface (PEP 768) needs Python 3.14 \
             or newer",
            offsets.version_string()
        )));
    };

    // The target copies the buffer and forces its last byte to NUL, so a path that does not fit
    // with its NUL would silently run a truncated (other) file name.
    let path = script_path_in_target.as_bytes();
    if !script_path_in_target.starts_with('/') || path.contains(&0) {
        return Err(Error::usage(format!(
            "the script path for remote exec must be absolute and contain no NUL byte, got {:?}",
            script_path_in_target
        )));
    }
    if path.len() as u64 + 1 > d.debugger_script_path_size {
        return Err(Error::usage(format!(
            "the script path for remote exec is {} bytes; the target's buffer holds at most {} \
             plus the terminating NUL",
            path.len(),
            d.debugger_script_path_size - 1
        )));
    }

    let finalizing = read_u64(
        pid,
        at(runtime, offsets.runtime.finalizing, "_finalizing")?,
        "_PyRuntime._finalizing",
    )?;
    if finalizing != 0 {
        return Err(Error::new(
            ErrorKind::HelperFailed,
            format!("process {pid} is shutting down its Python runtime; nothing can run in it"),
        ));
    }
    let interp = main_interpreter(pid, runtime, &offsets)?;
    if remote_debugging_enabled(pid, interp.address, &offsets)? != Some(true) {
        return Err(Error::new(
            ErrorKind::HelperFailed,
            format!(
                "remote debugging (PEP 768) is disabled in process {pid}: it was started with \
                 PYTHON_DISABLE_REMOTE_DEBUG set or with -X disable-remote-debug, or its Python \
                 was built --without-remote-debug"
            ),
        ));
    }
    let thread = pick_main_thread(pid, &interp).ok_or_else(|| {
        Error::new(
            ErrorKind::HelperFailed,
            format!("process {pid} has no Python thread state for its main thread (tid {pid})"),
        )
    })?;

    let support = at(
        thread.address,
        d.remote_debugger_support,
        "remote_debugger_support",
    )?;
    let pending_address = at(support, d.debugger_pending_call, "debugger_pending_call")?;
    let path_address = at(support, d.debugger_script_path, "debugger_script_path")?;
    let breaker_address = at(thread.address, d.eval_breaker, "eval_breaker")?;

    // A request that has not run yet (ours or another debugger's, e.g. `python -m pdb -p`) would
    // be overwritten: the target clears the flag only when it runs the script.
    if read_i32(pid, pending_address, "debugger_pending_call")? != 0 {
        return Err(Error::new(
            ErrorKind::HelperFailed,
            format!(
                "a remote-exec request is already pending in process {pid}'s main thread (an \
                 earlier one has not run yet: the thread has not executed bytecode since, or \
                 another debugger is attaching); not overwriting it"
            ),
        ));
    }

    // Same order as CPython's sender: path, then the flag, then the eval breaker. The thread only
    // looks at the flag after it sees the breaker bit, and looks at the path only when the flag is
    // 1, so it never sees the flag without the complete path (x86-64 keeps stores in order, and
    // each write below completes before the next starts).
    let mut with_nul = path.to_vec();
    with_nul.push(0);
    write_bytes(pid, path_address, &with_nul, "debugger_script_path")?;
    write_bytes(
        pid,
        pending_address,
        &1i32.to_le_bytes(),
        "debugger_pending_call",
    )?;

    // eval_breaker is an atomic uintptr_t that the target's threads change with atomic OR/AND
    // (GIL drop requests, signals, pending calls, GC) and whose bits 8 and up hold the
    // instrumentation version. Another process cannot do an atomic read-modify-write on it;
    // CPython's own sender (send_exec_to_proc_handle) also reads the word, ORs the bit and
    // writes it back with process_vm_writev. We narrow that race: all event bits, ours included,
    // are in the lowest byte (_PY_EVAL_EVENTS_BITS = 8), so we write back only that byte and
    // never a stale instrumentation version. What remains is a window of one syscall in which
    // an event bit set or cleared by the target in that same byte can be undone. A bit we
    // re-set costs one extra pass through _Py_HandlePending, which re-checks the real state; a
    // bit we clear is recomputed from the real state when the thread next takes the GIL
    // (update_eval_breaker_for_thread) or set again by its requester (a waiting thread re-sends
    // its GIL drop request every switch interval).
    let breaker = read_u64(pid, breaker_address, "eval_breaker")?;
    let low_byte = ((breaker | EVAL_PLEASE_STOP_BIT) & 0xff) as u8;
    write_bytes(pid, breaker_address, &[low_byte], "eval_breaker")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 584 bytes read with gdb from a live /root/.pyenv/versions/3.13.0/bin/python3 at
    /// `&_PyRuntime`
    /// (gdb: `p sizeof(_Py_DebugOffsets)` = 584, `dump binary memory ... &_PyRuntime ...+584`).
    const REAL_3_13_0: &[u8] = include_bytes!("../../fixtures/debug_offsets/3.13.0.bin");

    #[test]
    fn layout_sizes_match_the_headers() {
        // 3.13.0: gdb on the real libpython3.13 says sizeof(_Py_DebugOffsets) = 584 and the
        // thread_state group starts at 152, gc at 568.
        assert_eq!(layout_size(LAYOUT_3_13), 584);
        assert_eq!(field_offset(LAYOUT_3_13, "thread_state", "size"), Some(152));
        assert_eq!(field_offset(LAYOUT_3_13, "gc", "size"), Some(568));
        // 3.14.0: 8 + 94 * 8, counted by hand from the header (not checked against a real 3.14).
        assert_eq!(layout_size(LAYOUT_3_14), 760);
        assert_eq!(
            field_offset(LAYOUT_3_14, "debugger_support", "eval_breaker"),
            Some(712)
        );
        // Every field parse() reads unconditionally exists in both layouts.
        for layout in [LAYOUT_3_13, LAYOUT_3_14] {
            for (group, field) in [
                ("runtime_state", "size"),
                ("runtime_state", "finalizing"),
                ("runtime_state", "interpreters_head"),
                ("interpreter_state", "size"),
                ("interpreter_state", "id"),
                ("interpreter_state", "next"),
                ("interpreter_state", "threads_head"),
                ("thread_state", "prev"),
                ("thread_state", "next"),
                ("thread_state", "interp"),
                ("thread_state", "current_frame"),
                ("thread_state", "thread_id"),
                ("thread_state", "native_thread_id"),
                ("thread_state", "status"),
            ] {
                assert!(
                    field_offset(layout, group, field).is_some(),
                    "{group}.{field}"
                );
            }
        }
    }

    #[test]
    fn parses_a_real_3_13_0_table() {
        assert_eq!(REAL_3_13_0.len(), 584);
        let o = parse(REAL_3_13_0).unwrap();
        assert_eq!(o.version, 0x030d00f0);
        assert_eq!(o.version_string(), "3.13.0");
        assert!(!o.free_threaded);
        // Values as gdb printed them from the same process.
        assert_eq!(
            o.runtime,
            RuntimeOffsets {
                size: 0x452b8,
                finalizing: 0x260,
                interpreters_head: 0x278
            }
        );
        assert_eq!(
            o.interpreter,
            InterpreterOffsets {
                size: 0x2f998,
                id: 0x1c68,
                next: 0x1c60,
                threads_head: 0x1cb0,
                threads_main: None
            }
        );
        assert_eq!(
            o.thread,
            ThreadOffsets {
                size: 0x130,
                prev: 0,
                next: 8,
                interp: 0x10,
                current_frame: 0x48,
                thread_id: 0x98,
                native_thread_id: 0xa0,
                status: 0x20
            }
        );
        assert_eq!(o.debugger, None);
        // The table's runtime size equals the .PyRuntime section size of libpython3.13.so
        // (readelf).
        assert_eq!(o.runtime.size, 0x452b8);
    }

    /// Builds a 3.14 table field by field from `Include/internal/pycore_debug_offsets.h` (v3.14.0),
    /// independently of LAYOUT_3_14. This checks our layout against our own reading of the header,
    /// not against a real 3.14 interpreter (none was available); the values are invented but
    /// plausible, distinct so that a shifted field shows.
    fn synthetic_3_14(version: u64) -> Vec<u8> {
        let mut b = COOKIE.to_vec();
        let mut put = |v: u64| b.extend_from_slice(&v.to_le_bytes());
        put(version);
        // free_threaded
        put(0);
        // runtime_state: size, finalizing, interpreters_head (both after the 760-byte table,
        // which is the first member of _PyRuntimeState)
        put(0x4_0000);
        put(0x318);
        put(0x330);
        // interpreter_state: size, id, next, threads_head, threads_main, gc, imports_modules,
        // sysdict, builtins, ceval_gil, gil_runtime_state, gil_runtime_state_enabled,
        // gil_runtime_state_locked, gil_runtime_state_holder, code_object_generation,
        // tlbc_generation
        for v in [
            0x3_0000, 0x1d00, 0x1cf8, 0x1d40, 0x1d48, 0x1d80, 0x1e80, 0x1e70, 0x1e78, 0x10, 0x1ee0,
            0, 0x1ef0, 0x1ee8, 0x1f00, 0,
        ] {
            put(v);
        }
        // thread_state: size, prev, next, interp, current_frame, thread_id, native_thread_id,
        // datastack_chunk, status
        for v in [0x400, 0, 8, 0x10, 0x48, 0x98, 0xa0, 0xe8, 0x20] {
            put(v);
        }
        // interpreter_frame: size, previous, executable, instr_ptr, localsplus, owner,
        // stackpointer, tlbc_index
        for v in [0x50, 8, 0, 0x38, 0x50, 0x4a, 0x40, 0] {
            put(v);
        }
        // code_object: size, filename, name, qualname, linetable, firstlineno, argcount,
        // localsplusnames, localspluskinds, co_code_adaptive, co_tlbc
        for v in [
            0xd8, 0x70, 0x78, 0x80, 0x88, 0x44, 0x34, 0x60, 0x68, 0xd0, 0,
        ] {
            put(v);
        }
        for v in [0x10, 8] {
            put(v); // pyobject: size, ob_type
        }
        for v in [0x1a0, 0x18, 0x58, 0xa8] {
            put(v); // type_object: size, tp_name, tp_repr, tp_flags
        }
        for v in [0x20, 0x18, 0x10] {
            put(v); // tuple_object: size, ob_item, ob_size
        }
        for v in [0x28, 0x18, 0x10] {
            put(v); // list_object: size, ob_item, ob_size
        }
        for v in [0xc8, 0x18, 0x28, 0x20] {
            put(v); // set_object: size, used, table, mask
        }
        for v in [0x30, 0x20, 0x28] {
            put(v); // dict_object: size, ma_keys, ma_values
        }
        for v in [0x18, 0x10] {
            put(v); // float_object: size, ob_fval
        }
        for v in [0x20, 0x10, 0x18] {
            put(v); // long_object: size, lv_tag, ob_digit
        }
        for v in [0x28, 0x10, 0x20] {
            put(v); // bytes_object: size, ob_size, ob_sval
        }
        for v in [0x40, 0x20, 0x10, 0x28] {
            put(v); // unicode_object: size, state, length, asciiobject_size
        }
        for v in [0x100, 0xc8] {
            put(v); // gc: size, collecting
        }
        for v in [0x60, 0x28, 0x40, 0x3b] {
            put(v); // gen_object: size, gi_name, gi_iframe, gi_frame_state
        }
        for v in [0, 8] {
            put(v); // llist_node: next, prev
        }
        // debugger_support: eval_breaker, remote_debugger_support, remote_debugging_enabled,
        // debugger_pending_call, debugger_script_path, debugger_script_path_size
        for v in [0x18, 0x1e0, 0x2a4, 0, 4, 512] {
            put(v);
        }
        b
    }

    #[test]
    fn parses_a_3_14_table_built_from_the_header() {
        let bytes = synthetic_3_14(0x030e00f0);
        assert_eq!(bytes.len(), 760);
        let o = parse(&bytes).unwrap();
        assert_eq!(o.version_string(), "3.14.0");
        assert_eq!(o.runtime.interpreters_head, 0x330);
        assert_eq!(o.runtime.finalizing, 0x318);
        assert_eq!(o.interpreter.id, 0x1d00);
        assert_eq!(o.interpreter.next, 0x1cf8);
        assert_eq!(o.interpreter.threads_head, 0x1d40);
        assert_eq!(o.interpreter.threads_main, Some(0x1d48));
        assert_eq!(o.thread.size, 0x400);
        assert_eq!(o.thread.native_thread_id, 0xa0);
        assert_eq!(
            o.debugger,
            Some(DebuggerSupportOffsets {
                eval_breaker: 0x18,
                remote_debugger_support: 0x1e0,
                remote_debugging_enabled: 0x2a4,
                debugger_pending_call: 0,
                debugger_script_path: 4,
                debugger_script_path_size: 512,
            })
        );
        // A release candidate is read too.
        assert_eq!(
            parse(&synthetic_3_14(0x030e00c2)).unwrap().version_string(),
            "3.14.0rc2"
        );
    }

    #[test]
    fn refuses_what_it_cannot_read() {
        let kind = |bytes: &[u8]| parse(bytes).unwrap_err().kind;
        // No cookie: before 3.13 (3.12's _PyRuntime starts with `_initialized`).
        let mut old = vec![0u8; 600];
        old[0] = 1;
        assert_eq!(kind(&old), ErrorKind::UnsupportedVersion);
        // Unknown future version, and an alpha whose layout may differ.
        let err = parse(&synthetic_3_14(0x030f00f0)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::UnsupportedVersion);
        assert!(err.message.contains("3.15.0"), "{}", err.message);
        let err = parse(&synthetic_3_14(0x030e00a7)).unwrap_err();
        assert!(err.message.contains("3.14.0a7"), "{}", err.message);
        // Truncated.
        assert_eq!(kind(&REAL_3_13_0[..500]), ErrorKind::Internal);
        // Garbage in the table: free_threaded not a bool, an offset outside its struct.
        let mut bad = REAL_3_13_0.to_vec();
        bad[16] = 7;
        assert_eq!(kind(&bad), ErrorKind::UnsupportedVersion);
        let mut bad = REAL_3_13_0.to_vec();
        let native = field_offset(LAYOUT_3_13, "thread_state", "native_thread_id").unwrap();
        bad[native..native + 8].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert_eq!(kind(&bad), ErrorKind::UnsupportedVersion);
        let mut bad = synthetic_3_14(0x030e00f0);
        let size = field_offset(LAYOUT_3_14, "debugger_support", "debugger_script_path_size");
        let size = size.unwrap();
        bad[size..size + 8].copy_from_slice(&0x2000u64.to_le_bytes());
        assert_eq!(kind(&bad), ErrorKind::UnsupportedVersion);
    }

    /// A fake 3.14 target inside this test process: a `_PyRuntime` that starts with the synthetic
    /// 3.14 table, one interpreter, one thread state, laid out by the same invented offsets.
    /// Exercises the walk and the PEP 768 write sequence through process_vm_readv/writev on our
    /// own pid; like `synthetic_3_14`, it checks our code against our reading of the header, not
    /// against a real 3.14.
    struct Fake314 {
        runtime: Vec<u64>,
        interp: Vec<u64>,
        thread: Vec<u64>,
    }

    impl Fake314 {
        // Offsets from synthetic_3_14().
        const INTERPRETERS_HEAD: usize = 0x330;
        const INTERP_ID: usize = 0x1d00;
        const INTERP_NEXT: usize = 0x1cf8;
        const THREADS_HEAD: usize = 0x1d40;
        const THREADS_MAIN: usize = 0x1d48;
        const REMOTE_DEBUG: usize = 0x2a4;
        const THREAD_NEXT: usize = 8;
        const THREAD_INTERP: usize = 0x10;
        const THREAD_ID: usize = 0x98;
        const NATIVE_ID: usize = 0xa0;
        const EVAL_BREAKER: usize = 0x18;
        const SUPPORT: usize = 0x1e0;
        const PENDING: usize = Self::SUPPORT;
        const PATH: usize = Self::SUPPORT + 4;
        /// Instrumentation version 0x1234 in the high bits, GIL drop request (bit 0) pending.
        const BREAKER_BEFORE: u64 = (0x1234 << 8) | 1;

        fn new(remote_debug: i32) -> Fake314 {
            let mut fake = Fake314 {
                runtime: vec![0; 0x4_0000 / 8],
                interp: vec![0; 0x3_0000 / 8],
                thread: vec![0; 0x400 / 8],
            };
            let table = synthetic_3_14(0x030e00f0);
            fake.runtime_bytes()[..table.len()].copy_from_slice(&table);
            let (interp, thread) = (fake.interp_address(), fake.thread_address());
            put(
                fake.runtime_bytes(),
                Self::INTERPRETERS_HEAD,
                &interp.to_le_bytes(),
            );
            let i = fake.interp_bytes();
            put(i, Self::INTERP_ID, &0u64.to_le_bytes());
            put(i, Self::INTERP_NEXT, &0u64.to_le_bytes());
            put(i, Self::THREADS_HEAD, &thread.to_le_bytes());
            put(i, Self::THREADS_MAIN, &thread.to_le_bytes());
            put(i, Self::REMOTE_DEBUG, &remote_debug.to_le_bytes());
            let pid = std::process::id() as u64;
            let t = fake.thread_bytes();
            put(t, Self::THREAD_NEXT, &0u64.to_le_bytes());
            put(t, Self::THREAD_INTERP, &interp.to_le_bytes());
            put(t, Self::THREAD_ID, &77u64.to_le_bytes());
            put(t, Self::NATIVE_ID, &pid.to_le_bytes());
            put(t, Self::EVAL_BREAKER, &Self::BREAKER_BEFORE.to_le_bytes());
            fake
        }

        fn runtime_address(&mut self) -> u64 {
            self.runtime.as_mut_ptr() as u64
        }
        fn interp_address(&mut self) -> u64 {
            self.interp.as_mut_ptr() as u64
        }
        fn thread_address(&mut self) -> u64 {
            self.thread.as_mut_ptr() as u64
        }
        fn runtime_bytes(&mut self) -> &mut [u8] {
            bytes_of(&mut self.runtime)
        }
        fn interp_bytes(&mut self) -> &mut [u8] {
            bytes_of(&mut self.interp)
        }
        fn thread_bytes(&mut self) -> &mut [u8] {
            bytes_of(&mut self.thread)
        }
    }

    fn bytes_of(words: &mut [u64]) -> &mut [u8] {
        // SAFETY: u8 has no alignment or validity requirements; the length covers the same bytes.
        unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast(), words.len() * 8) }
    }

    fn put(bytes: &mut [u8], offset: usize, value: &[u8]) {
        bytes[offset..offset + value.len()].copy_from_slice(value);
    }

    #[test]
    fn remote_exec_request_on_a_fake_3_14() {
        let pid = std::process::id() as i32;
        let mut fake = Fake314::new(1);
        let runtime = fake.runtime_address();

        let report = inspect_at(pid, runtime).unwrap();
        assert_eq!(report["version"], "3.14.0");
        assert_eq!(report["remote_exec_supported"], true);
        assert_eq!(report["remote_debugging_enabled"], true);
        assert_eq!(report["threads"].as_array().unwrap().len(), 1);
        assert_eq!(report["main_thread"]["native_thread_id"], pid as u64);
        assert_eq!(report["main_thread"]["thread_id"], 77);
        let thread = format!("0x{:x}", fake.thread_address());
        assert_eq!(report["interpreter"]["threads_main"], thread);

        // Too long for the 512-byte buffer with its NUL, relative, NUL inside: refused.
        let long = format!("/{}", "x".repeat(511));
        let err = request_remote_exec_at(pid, runtime, &long).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Usage);
        assert!(request_remote_exec_at(pid, runtime, "rel.py").is_err());
        assert!(request_remote_exec_at(pid, runtime, "/a\0b").is_err());
        assert_eq!(fake.thread_bytes()[Fake314::PATH], 0, "nothing written yet");

        // The longest path that fits (511 bytes + NUL) is accepted.
        let script = format!("/{}", "y".repeat(510));
        request_remote_exec_at(pid, runtime, &script).unwrap();
        let t = fake.thread_bytes();
        assert_eq!(&t[Fake314::PATH..Fake314::PATH + 511], script.as_bytes());
        assert_eq!(t[Fake314::PATH + 511], 0);
        assert_eq!(u32_at(t, Fake314::PENDING), 1);
        // Bit 5 added; the GIL drop bit and the instrumentation version left as they were.
        assert_eq!(
            u64_at(t, Fake314::EVAL_BREAKER),
            Fake314::BREAKER_BEFORE | EVAL_PLEASE_STOP_BIT
        );

        // A second request while the first is pending is refused, and changes nothing.
        let err = request_remote_exec_at(pid, runtime, "/other.py").unwrap_err();
        assert_eq!(err.kind, ErrorKind::HelperFailed);
        assert!(err.message.contains("already pending"), "{}", err.message);
        assert_eq!(
            &fake.thread_bytes()[Fake314::PATH..Fake314::PATH + 6],
            b"/yyyyy"
        );
    }

    #[test]
    fn remote_exec_request_refused_when_disabled() {
        let pid = std::process::id() as i32;
        let mut fake = Fake314::new(0);
        let runtime = fake.runtime_address();
        assert_eq!(
            inspect_at(pid, runtime).unwrap()["remote_debugging_enabled"],
            false
        );
        let err = request_remote_exec_at(pid, runtime, "/tmp/x.py").unwrap_err();
        assert_eq!(err.kind, ErrorKind::HelperFailed);
        for needle in [
            "PYTHON_DISABLE_REMOTE_DEBUG",
            "-X disable-remote-debug",
            "--without-remote-debug",
        ] {
            assert!(err.message.contains(needle), "{}", err.message);
        }
        let t = fake.thread_bytes();
        assert_eq!(u32_at(t, Fake314::PENDING), 0);
        assert_eq!(u64_at(t, Fake314::EVAL_BREAKER), Fake314::BREAKER_BEFORE);
    }

    fn u32_at(bytes: &[u8], offset: usize) -> u32 {
        u32::from_le_bytes(bytes[offset..offset + 4].try_into().unwrap())
    }

    #[test]
    fn version_strings() {
        assert_eq!(version_string(0x030d00f0), "3.13.0");
        assert_eq!(version_string(0x030d05f0), "3.13.5");
        assert_eq!(version_string(0x030e00b1), "3.14.0b1");
    }

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps_line(
            "7f0a1c000000-7f0a1c086000 r--p 00000000 08:01 1234   /opt/my python/libpython3.13.so",
        )
        .unwrap();
        assert_eq!(m.start, 0x7f0a1c000000);
        assert_eq!(m.end, 0x7f0a1c086000);
        assert_eq!(m.range, "7f0a1c000000-7f0a1c086000");
        assert_eq!(m.offset, 0);
        assert!(!m.executable);
        assert_eq!(m.path, "/opt/my python/libpython3.13.so");
        let anon = parse_maps_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0").unwrap();
        assert_eq!(anon.path, "");
        assert!(parse_maps_line("garbage").is_none());
    }

    #[test]
    fn main_thread_is_found_by_tid_then_by_threads_main() {
        let t = |address, tid| ThreadState {
            address,
            native_thread_id: tid,
            thread_id: 1,
            interpreter: 0x1000,
        };
        let mut interp = Interpreter {
            address: 0x1000,
            id: 0,
            threads: vec![t(0x2000, 43), t(0x3000, 42)],
            threads_main: None,
        };
        assert_eq!(pick_main_thread(42, &interp).unwrap().address, 0x3000);
        assert_eq!(pick_main_thread(7, &interp), None);
        interp.threads_main = Some(0x2000);
        assert_eq!(pick_main_thread(7, &interp).unwrap().address, 0x2000);
    }
}
