//! Every failure a user can cause ends with one clear line and its documented exit code.

mod common;

use std::process::{Command, Stdio};

use common::*;

/// Runs the tool and checks exit code, that stderr is one line, and that it says `needle`.
fn expect_error(args: &[&str], code: i32, needle: &str) {
    let output = run_to_end(tool().args(args));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "args {args:?}: stderr {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got {stderr:?}");
    assert!(lines[0].starts_with("pymemtrace: error: "), "{stderr:?}");
    assert!(
        lines[0].contains(needle),
        "{stderr:?} should mention {needle:?}"
    );
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"));
}

fn any_python() -> Interpreter {
    interpreters()
        .into_iter()
        .next_back()
        .expect("a Python interpreter")
}

#[test]
fn no_such_process_exits_3() {
    // Above the largest possible PID, so it cannot exist.
    expect_error(
        &["attach", "--pid", "4194305"],
        3,
        "no process with PID 4194305",
    );
}

#[test]
fn a_process_that_is_not_python_exits_4() {
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    expect_error(
        &["attach", "--pid", &pid, "--duration", "1"],
        4,
        "is not a CPython process",
    );
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn another_users_process_exits_5_and_says_what_to_do() {
    // The tool runs as nobody against a root-owned Python: a copy of the binary where nobody can run it.
    let scratch = Scratch::new("perm");
    let binary = scratch.0.join("pymemtrace");
    std::fs::copy(env!("CARGO_BIN_EXE_pymemtrace"), &binary).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut target = Command::new(any_python().path)
        .args(["-c", "import time; time.sleep(30)"])
        .spawn()
        .unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args(["attach", "--pid", &target.id().to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    target.kill().unwrap();
    target.wait().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(5), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("permission denied")
            && stderr.contains("sudo")
            && stderr.contains("CAP_SYS_PTRACE"),
        "{stderr}"
    );
}

#[test]
fn bad_options_exit_2() {
    expect_error(&["attach", "--pid", "1", "--rate", "0"], 2, "--rate");
    expect_error(
        &["attach", "--pid", "1", "--max-rate", "10", "--rate", "100"],
        2,
        "--max-rate",
    );
    expect_error(&["attach", "--pid", "1", "--duration=-3"], 2, "--duration");
    expect_error(&["attach"], 2, "--pid");
    expect_error(
        &["attach", "--pid", "1", "-o", "/tmp/out.unknown"],
        2,
        "cannot tell the format",
    );
    // clap's own parse errors use the same code.
    let output = run_to_end(tool().args(["attach", "--pid", "notanumber"]));
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn unwritable_output_exits_7_before_sampling() {
    let python = any_python();
    let mut target = Command::new(&python.path)
        .args(["-c", "import time; time.sleep(30)"])
        .spawn()
        .unwrap();
    let pid = target.id().to_string();
    expect_error(
        &["attach", "--pid", &pid, "-o", "/nonexistent-dir/growth.svg"],
        7,
        "/nonexistent-dir/growth.svg",
    );
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn a_command_that_cannot_start_exits_8() {
    expect_error(
        &["attach", "--", "/nonexistent/python3", "x.py"],
        8,
        "cannot start `/nonexistent/python3`",
    );
}
