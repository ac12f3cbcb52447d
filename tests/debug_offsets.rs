//! Reading `_Py_DebugOffsets` from real interpreters: pyenv's 3.13.0 (the table exists), 3.12.1
//! (it does not) and Debian's non-PIE python3.11 (no table either; exercises the executable path
//! of find_runtime).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use pymemtrace::error::ErrorKind;
use pymemtrace::inject::debug_offsets;

const PYTHON_3_13: &str = "/root/.pyenv/versions/3.13.0/bin/python3";
const PYTHON_3_12: &str = "/root/.pyenv/versions/3.12.1/bin/python3";
const PYTHON_3_11_DEBIAN: &str = "/usr/bin/python3.11";

/// Starts a second thread, prints the version, that thread's native id, then READY, and loops.
const CHILD: &str = r#"
import sys, threading, time
started = threading.Event()
native = []
def worker():
    native.append(threading.get_native_id())
    started.set()
    while True:
        time.sleep(0.05)
threading.Thread(target=worker, daemon=True).start()
started.wait()
print("VERSION %d.%d.%d" % sys.version_info[:3], flush=True)
print("THREAD %d" % native[0], flush=True)
print("READY", flush=True)
n = 0
while True:
    n += 1
    if n % 1000 == 0:
        time.sleep(0.01)
"#;

/// Kills and reaps the child however the test ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The interpreter, or None (after saying so) when it is missing outside CI.
fn interpreter(path: &str) -> Option<&str> {
    if std::path::Path::new(path).exists() {
        return Some(path);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{path} not found (CI=true: required)");
    }
    println!("skipping: {path} not found");
    None
}

/// Starts the child and returns it with the lines it printed before READY.
fn start(python: &str) -> (Guard, Vec<String>) {
    let mut child = Command::new(python)
        .args(["-c", CHILD])
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .expect("start python");
    let stdout = child.stdout.take().unwrap();
    let guard = Guard(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("child did not print READY in time");
        if line == "READY" {
            return (guard, lines);
        }
        lines.push(line);
    }
}

fn value<'a>(lines: &'a [String], key: &str) -> &'a str {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(key).map(str::trim))
        .unwrap_or_else(|| panic!("child did not print {key}: {lines:?}"))
}

#[test]
fn inspects_a_real_3_13_process() {
    let Some(python) = interpreter(PYTHON_3_13) else {
        return;
    };
    let (guard, lines) = start(python);
    let pid = guard.0.id() as i32;
    let report = debug_offsets::inspect(pid).unwrap_or_else(|e| panic!("inspect: {e}"));
    println!("{report:#}");

    assert_eq!(report["version"], value(&lines, "VERSION"), "{report:#}");
    assert_eq!(report["pid"], pid);
    assert_eq!(report["free_threaded"], false);
    assert_eq!(report["finalizing"], false);
    assert_eq!(report["interpreter"]["id"], 0);
    assert_eq!(
        report["main_thread"]["native_thread_id"], pid as u64,
        "{report:#}"
    );
    assert_eq!(report["main_thread"]["main"], true);
    let threads = report["threads"].as_array().unwrap();
    assert_eq!(threads.len(), 2, "{report:#}");
    let other: Vec<_> = threads.iter().filter(|t| t["main"] == false).collect();
    assert_eq!(other.len(), 1, "{report:#}");
    let worker_tid: u64 = value(&lines, "THREAD").parse().unwrap();
    assert_eq!(other[0]["native_thread_id"], worker_tid, "{report:#}");
    // 3.13 has no PEP 768 fields.
    assert_eq!(report["remote_exec_supported"], false);
    assert!(report["remote_debugging_enabled"].is_null());

    // The lower-level calls agree with the report.
    let runtime = debug_offsets::find_runtime(pid).unwrap();
    assert_eq!(report["runtime"], format!("0x{runtime:x}"));
    let offsets = debug_offsets::read(pid, runtime).unwrap();
    assert_eq!(offsets.version, 0x030d00f0);
    let main = debug_offsets::main_thread_state(pid, runtime, &offsets).unwrap();
    assert_eq!(main.native_thread_id, pid as u64);
    assert_eq!(
        report["main_thread"]["address"],
        format!("0x{:x}", main.address)
    );

    // PEP 768 needs 3.14: refused before anything is written.
    let err = debug_offsets::request_remote_exec(pid, "/tmp/never-run.py").unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedVersion, "{}", err.message);
    assert!(err.message.contains("3.14"), "{}", err.message);
    assert!(err.message.contains("3.13.0"), "{}", err.message);
    drop(guard);
}

#[test]
fn a_3_12_process_has_no_debug_offsets() {
    let Some(python) = interpreter(PYTHON_3_12) else {
        return;
    };
    let (guard, _) = start(python);
    let pid = guard.0.id() as i32;
    // 3.12's libpython has a .PyRuntime section too, but _PyRuntime starts with `_initialized`,
    // not the cookie.
    let runtime = debug_offsets::find_runtime(pid).unwrap();
    assert_ne!(runtime, 0);
    let err = debug_offsets::inspect(pid).unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedVersion, "{}", err.message);
    assert!(err.message.contains("xdebugpy"), "{}", err.message);
    assert!(err.message.contains("3.13"), "{}", err.message);
    let err = debug_offsets::request_remote_exec(pid, "/tmp/never-run.py").unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedVersion, "{}", err.message);
    drop(guard);
}

#[test]
fn debian_static_3_11_is_found_and_refused() {
    let Some(python) = interpreter(PYTHON_3_11_DEBIAN) else {
        return;
    };
    let (guard, _) = start(python);
    let pid = guard.0.id() as i32;
    // libpython is linked into this non-PIE executable: the runtime is found in the executable
    // itself, at its link-time address.
    let runtime = debug_offsets::find_runtime(pid).unwrap();
    assert!(runtime < 0x1_0000_0000, "0x{runtime:x}");
    println!("python3.11 _PyRuntime at 0x{runtime:x}");
    let err = debug_offsets::inspect(pid).unwrap_err();
    assert_eq!(err.kind, ErrorKind::UnsupportedVersion, "{}", err.message);
    drop(guard);
}

#[test]
fn a_non_python_process_is_not_python() {
    let child = Command::new("sleep")
        .arg("30")
        .spawn()
        .expect("start sleep");
    let guard = Guard(child);
    let err = debug_offsets::inspect(guard.0.id() as i32).unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotPython, "{}", err.message);
    drop(guard);
}
