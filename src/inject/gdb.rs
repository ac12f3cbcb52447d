//! `--method gdb`: the same pending call, queued by gdb instead of our own ptrace code.
//!
//! For machines where a user trusts gdb more than a new tool, or where our ptrace path is refused
//! for a reason gdb works around. It is the same safe call (docs/inject.md, "Why this method"): gdb maps
//! a page with `mmap`, writes the bootstrap into it and calls
//! `Py_AddPendingCall(PyRun_SimpleString, page)`; the interpreter runs it at its next bytecode
//! boundary. It is slower (gdb reads the interpreter's symbols first) and gdb stops every thread,
//! not just the main one, while it is attached.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};

/// How long gdb may take to attach, queue the call and detach (symbol loading dominates).
const GDB_TIMEOUT: Duration = Duration::from_secs(60);

/// The gdb-side script: gdb's embedded Python, so every step is checked before the next one and
/// an error leaves the target as gdb found it (gdb detaches on exit in batch mode).
const GDB_SCRIPT: &str = r#"
import gdb
data = open(@CODE@, "rb").read()
length = (len(data) + 4095) // 4096 * 4096
page = int(gdb.parse_and_eval(
    "(long) mmap((void *) 0, (unsigned long) %d, 3, 0x22, -1, (long) 0)" % length))
if page < 0:
    raise gdb.GdbError("mmap failed in the target: %d" % page)
gdb.selected_inferior().write_memory(page, data)
queued = int(gdb.parse_and_eval(
    "(int) Py_AddPendingCall((void *) PyRun_SimpleString, (void *) %d)" % page))
print("pymemtrace-gdb page=%d queued=%d" % (page, queued))
gdb.execute("detach")
"#;

fn failed(message: String) -> Error {
    Error::new(ErrorKind::HelperFailed, message)
}

/// Queues `snippet` as a pending call in `pid` with gdb.
pub fn queue_pending_call(pid: i32, snippet: &str) -> Result<()> {
    let gdb = which_gdb().ok_or_else(|| {
        failed(
            "--method gdb needs gdb on PATH (Debian/Ubuntu: apt-get install gdb); the default \
             method needs nothing"
                .into(),
        )
    })?;
    // Our own files, in our own private directory: gdb runs here, not in the target.
    let scratch = tempfile::Builder::new()
        .prefix("pymemtrace-gdb-")
        .tempdir()
        .map_err(|e| failed(format!("cannot make a scratch directory for gdb: {e}")))?;
    let code_path = scratch.path().join("bootstrap.py");
    let mut code = snippet.as_bytes().to_vec();
    code.push(0);
    std::fs::write(&code_path, &code)
        .map_err(|e| failed(format!("cannot write {}: {e}", code_path.display())))?;
    let script_path = scratch.path().join("queue.py");
    let script = GDB_SCRIPT.replace("@CODE@", &format!("{:?}", code_path.display().to_string()));
    std::fs::File::create(&script_path)
        .and_then(|mut f| f.write_all(script.as_bytes()))
        .map_err(|e| failed(format!("cannot write {}: {e}", script_path.display())))?;

    // No death signal for gdb (src/children.rs says why): killed mid-call it would leave the
    // target to crash; in batch mode it detaches and exits by itself when its short script ends.
    let mut child = Command::new(gdb)
        .args(["-nx", "-batch", "-q"])
        // Never reach for the network or load project scripts: this runs as root on production.
        .args([
            "-iex",
            "set debuginfod enabled off",
            "-iex",
            "set auto-load off",
        ])
        .args(["-p", &pid.to_string(), "-x"])
        .arg(&script_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(format!("cannot start gdb: {e}")))?;
    let deadline = std::time::Instant::now() + GDB_TIMEOUT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20))
            }
            _ => {
                // SIGINT lets gdb detach (and undo an unfinished call) rather than leave the
                // target stopped.
                // SAFETY: kill only sends a signal.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let _ = child.wait();
                return Err(failed(format!(
                    "gdb did not finish within {} s; it was interrupted and detached",
                    GDB_TIMEOUT.as_secs()
                )));
            }
        }
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("gdb: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let queued = stdout
        .lines()
        .find_map(|l| l.strip_prefix("pymemtrace-gdb "))
        .and_then(|l| l.split_whitespace().find_map(|w| w.strip_prefix("queued=")))
        .and_then(|v| v.parse::<i32>().ok());
    match queued {
        Some(0) => Ok(()),
        Some(_) => Err(failed(format!(
            "PID {pid}'s interpreter refused the pending call (its queue is full): try again"
        ))),
        None => {
            let why = stderr
                .lines()
                .chain(stdout.lines())
                .rfind(|l| !l.trim().is_empty() && !l.starts_with("warning:"))
                .unwrap_or("no output")
                .to_string();
            Err(failed(format!(
                "gdb could not queue the helper in PID {pid}: {why}"
            )))
        }
    }
}

fn which_gdb() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("gdb"))
            .find(|candidate| candidate.is_file())
    })
}
