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

// ---- Bad input, for every subcommand where it applies (issue 7) ----

/// The subcommands that take `--pid`, each with what it needs to run on a target.
const ON_A_PID: [&[&str]; 5] = [
    &["attach"],
    &["process", "--quiet", "--no-labels"],
    &["tracemalloc"],
    &["mallocstats"],
    &["dtrace", "--script", "malloc_count"],
];

/// The State letter of /proc/PID/status (`R`, `S`, `t`, `Z`...), if the process exists.
fn state(pid: u32) -> Option<char> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("State:"))
        .and_then(|s| s.trim().chars().next())
}

/// Checks that the target is alive and not stopped.
fn assert_running(pid: u32, context: &str) {
    let state = state(pid);
    assert!(
        matches!(state, Some(s) if !matches!(s, 't' | 'T' | 'Z' | 'X')),
        "{context}: target {pid} is {state:?}, expected alive and not stopped"
    );
}

/// Runs `command` and checks: exit `code`, exactly one stderr line `pymemtrace: error: ...`
/// containing `needle`, no panic, and no file left in `dir` (when given).
fn check_failure(command: &mut Command, code: i32, needle: &str, dir: Option<&Scratch>) {
    let context = format!("{command:?}");
    let output = run_to_end(command);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(code),
        "{context}: stderr {stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{context}: expected one line, got {stderr:?}"
    );
    assert!(
        lines[0].starts_with("pymemtrace: error: "),
        "{context}: {stderr:?}"
    );
    assert!(
        lines[0].contains(needle),
        "{context}: {stderr:?} should mention {needle:?}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{context}"
    );
    if let Some(dir) = dir {
        let left: Vec<_> = std::fs::read_dir(&dir.0)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{context}: files left behind: {left:?}");
    }
}

/// A tool run against `pid` with `sub`, a one-second duration and, where it writes one, a JSON
/// output in `dir`.
fn against(sub: &[&str], pid: u32, dir: &Scratch) -> Command {
    let mut command = tool();
    command
        .args(sub)
        .args(["--pid", &pid.to_string(), "--duration", "1"]);
    match sub[0] {
        "attach" => command.args(["-o", &dir.path("out.json")]),
        "process" => command.args(["-o", &dir.path("run.jsonl"), "--plot", &dir.path("run.svg")]),
        _ => command.args(["--json", &dir.path("out.json")]),
    };
    command
}

/// A Python that runs a little and sleeps a little, forever.
fn busy_python(python: &std::path::Path) -> std::process::Child {
    let child = Command::new(python)
        .args([
            "-c",
            "import time\nwhile True:\n    sum(range(1000)); time.sleep(0.001)\n",
        ])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    child
}

#[test]
fn a_pid_that_does_not_exist_exits_3_for_every_subcommand() {
    for sub in ON_A_PID {
        let dir = Scratch::new(&format!("nopid-{}", sub[0]));
        check_failure(&mut against(sub, 4194305, &dir), 3, "4194305", Some(&dir));
    }
}

#[test]
fn a_kernel_thread_exits_4_and_pid_1_is_refused() {
    let kthreadd = std::fs::read_to_string("/proc/2/comm").is_ok_and(|c| c.trim() == "kthreadd");
    assert!(kthreadd || !in_ci(), "PID 2 is not kthreadd");
    for sub in ON_A_PID {
        let dir = Scratch::new(&format!("kthread-{}", sub[0]));
        if kthreadd {
            check_failure(&mut against(sub, 2, &dir), 4, "kernel thread", Some(&dir));
        }
        if sub[0] == "process" {
            continue; // any program can be followed, init included
        }
        // PID 1 is init: not Python (4), or, in a container whose init the host owns, not ours (5).
        let output = run_to_end(&mut against(sub, 1, &dir));
        let code = output.status.code().unwrap_or(-1);
        let expected = if code == 5 { 5 } else { 4 };
        check_failure(&mut against(sub, 1, &dir), expected, "PID 1", Some(&dir));
    }
}

#[test]
fn a_zombie_exits_3_for_every_subcommand() {
    // A shell that starts a child, leaves it unreaped, and sleeps: the child is a zombie.
    let mut parent = Command::new("sh")
        .args(["-c", "sleep 0 & echo $!; exec sleep 30"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(parent.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let zombie: u32 = line.trim().parse().unwrap();
    let start = std::time::Instant::now();
    while state(zombie) != Some('Z') && start.elapsed().as_secs() < 5 {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(state(zombie), Some('Z'));
    for sub in ON_A_PID {
        let dir = Scratch::new(&format!("zombie-{}", sub[0]));
        check_failure(
            &mut against(sub, zombie, &dir),
            3,
            &zombie.to_string(),
            Some(&dir),
        );
    }
    assert_running(parent.id(), "zombie's parent");
    parent.kill().unwrap();
    parent.wait().unwrap();
}

#[test]
fn a_process_that_is_not_python_exits_4_for_the_python_tools() {
    let mut sleeper = Command::new("sleep").arg("60").spawn().unwrap();
    for sub in [
        &["tracemalloc"][..],
        &["mallocstats"],
        &["dtrace", "--script", "py_malloc"],
    ] {
        let dir = Scratch::new(&format!("notpy-{}", sub[0]));
        check_failure(&mut against(sub, sleeper.id(), &dir), 4, "", Some(&dir));
        assert_running(sleeper.id(), sub[0]);
    }
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

/// The binary copied where nobody may run it.
fn binary_for_nobody(scratch: &Scratch) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let binary = scratch.0.join("pymemtrace");
    std::fs::copy(env!("CARGO_BIN_EXE_pymemtrace"), &binary).unwrap();
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    binary
}

fn as_nobody(binary: &std::path::Path) -> Command {
    let mut command = Command::new("setpriv");
    command
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(binary);
    command
}

#[test]
fn another_users_process_exits_5_or_11_for_every_tool_that_reads_it() {
    if !require_tool("setpriv") {
        return;
    }
    let scratch = Scratch::new("perm-all");
    let binary = binary_for_nobody(&scratch);
    let mut target = busy_python(&any_python().path);
    let pid = target.id().to_string();
    for (sub, code, needle) in [
        (&["tracemalloc"][..], 5, "permission denied"),
        (&["mallocstats"], 5, "permission denied"),
        (&["dtrace", "--script", "malloc_count"], 11, "root"),
    ] {
        check_failure(
            as_nobody(&binary)
                .args(sub)
                .args(["--pid", &pid, "--duration", "1"]),
            code,
            needle,
            None,
        );
        assert_running(target.id(), sub[0]);
    }
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn python_2_7_exits_6_for_tracemalloc_and_mallocstats_without_touching_it() {
    let Some(python) = interpreters().into_iter().find(|i| i.label == "2.7") else {
        return; // interpreters() already failed under CI
    };
    let mut target = busy_python(&python.path);
    for sub in ["tracemalloc", "mallocstats"] {
        let dir = Scratch::new(&format!("py27-{sub}"));
        let started = std::time::Instant::now();
        check_failure(
            &mut against(&[sub], target.id(), &dir),
            6,
            "Python 2.7",
            Some(&dir),
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "{sub} took {:?}",
            started.elapsed()
        );
        assert_running(target.id(), sub);
    }
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn an_already_traced_target_is_refused_by_the_helpers_and_left_running() {
    if !require_tool("gdb") {
        return;
    }
    let mut target = busy_python(&any_python().path);
    let pid = target.id();
    let mut gdb = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-ex", "shell sleep 5"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = std::time::Instant::now();
    while state(pid) != Some('t') && start.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(state(pid), Some('t'), "gdb did not attach");
    for sub in ["tracemalloc", "mallocstats"] {
        let dir = Scratch::new(&format!("traced-{sub}"));
        check_failure(
            &mut against(&[sub], pid, &dir),
            10,
            "already being traced",
            Some(&dir),
        );
    }
    // attach reads without ptrace: it works on a traced target and does not stop it further.
    let dir = Scratch::new("traced-attach");
    let output = run_to_end(&mut against(&["attach"], pid, &dir));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    gdb.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_running(pid, "after gdb detached");
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn nonsense_rates_intervals_and_durations_exit_2() {
    let dir = Scratch::new("nonsense");
    let pid = std::process::id().to_string();
    for value in ["abc", "-1", "0", "inf", "nan"] {
        for sub in ON_A_PID {
            let mut command = against(sub, std::process::id(), &dir);
            command.args(["--duration", value]);
            check_failure(&mut command, 2, "--duration", Some(&dir));
        }
    }
    for (args, needle) in [
        (&["attach", "--rate", "-5"][..], "--rate"),
        (&["attach", "--rate", "nan"], "--rate"),
        (&["attach", "--max-rate", "0"], "--max-rate"),
        (&["process", "--interval", "0"], "--interval"),
        (&["process", "--interval", "-1"], "--interval"),
        (&["process", "--interval", "inf"], "--interval"),
        (&["tracemalloc", "--timeout", "0"], "--timeout"),
        (&["mallocstats", "--timeout", "nan"], "--timeout"),
    ] {
        check_failure(
            tool().args(args).args(["--pid", &pid]),
            2,
            needle,
            Some(&dir),
        );
    }
}

#[test]
fn an_unknown_dtrace_script_exits_2() {
    check_failure(
        tool().args([
            "dtrace",
            "--pid",
            &std::process::id().to_string(),
            "--script",
            "nosuch",
        ]),
        2,
        "no script named `nosuch`",
        None,
    );
}

#[test]
fn a_missing_output_directory_exits_7_and_leaves_nothing() {
    let mut target = busy_python(&any_python().path);
    let pid = target.id().to_string();
    let dir = Scratch::new("missing-out");
    let missing = dir.path("missing/out");
    for args in [
        vec!["attach", "-o", &*format!("{missing}.log")],
        vec!["attach", "-o", &*format!("{missing}.svg")],
        vec!["process", "-o", &*format!("{missing}.jsonl")],
        vec!["process", "--plot", &*format!("{missing}.png")],
        vec!["process", "--gnuplot", &*missing],
        vec!["tracemalloc", "--json", &*format!("{missing}.json")],
        vec!["mallocstats", "--json", &*format!("{missing}.json")],
        vec![
            "dtrace",
            "--script",
            "malloc_count",
            "--json",
            &*format!("{missing}.json"),
        ],
    ] {
        let mut command = tool();
        command.args(&args).args(["--pid", &pid, "--duration", "1"]);
        check_failure(&mut command, 7, "does not exist", Some(&dir));
        assert_running(target.id(), args[0]);
    }
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn an_unwritable_output_directory_exits_7_and_leaves_nothing() {
    if !require_tool("setpriv") {
        return;
    }
    // Runs as nobody: a root-owned directory (0755) is not writable for it.
    let scratch = Scratch::new("unwritable");
    let binary = binary_for_nobody(&scratch);
    let out = Scratch::new("unwritable-out");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&out.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut target = busy_python(&any_python().path);
    let pid = target.id().to_string();
    for (sub, option, file) in [
        ("attach", "-o", "out.svg"),
        ("attach", "-o", "out.log"),
        ("process", "--plot", "run.svg"),
        ("process", "-o", "run.jsonl"),
        ("tracemalloc", "--json", "out.json"),
        ("mallocstats", "--json", "out.json"),
    ] {
        check_failure(
            as_nobody(&binary).args([
                sub,
                option,
                &out.path(file),
                "--pid",
                &pid,
                "--duration",
                "1",
            ]),
            7,
            "Permission denied",
            Some(&out),
        );
    }
    assert_running(target.id(), "unwritable");
    target.kill().unwrap();
    target.wait().unwrap();
}

#[test]
fn a_malformed_input_log_exits_9_and_writes_no_plot() {
    let dir = Scratch::new("bad-input");
    let inputs = Scratch::new("bad-input-files");
    let garbage = inputs.path("garbage.jsonl");
    std::fs::write(&garbage, "this is not json\n{\"half\": \n").unwrap();
    let empty = inputs.path("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let wrong = inputs.path("wrong.jsonl");
    std::fs::write(&wrong, "{\"a\": 1}\n[1, 2, 3]\n").unwrap();
    let binary = inputs.path("binary.jsonl");
    std::fs::write(&binary, [0u8, 159, 146, 150, 255, 10]).unwrap();
    for input in [garbage, empty, wrong, binary, inputs.path("missing.jsonl")] {
        check_failure(
            tool().args(["process", "--input", &input, "--plot", &dir.path("run.svg")]),
            9,
            "",
            Some(&dir),
        );
    }
}
