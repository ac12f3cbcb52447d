//! Helpers run inside real targets (`tracemalloc`, `mallocstats`): every interpreter from 3.8, a
//! target in each state (busy, sleeping, waiting on a lock, reading stdin, with allocating threads),
//! the known allocation found, and the target then finishing with its own output untouched.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

const FIXTURE: &str = "inject_target.py";
const KNOWN_BYTES: f64 = 100.0 * 100_033.0; // 100 bytes objects of 100,000 bytes (+33 header)

struct Target {
    child: Child,
}

impl Target {
    /// Starts the fixture in `mode` ("nap 2" passes the seconds too; "stdin-silent" is stdin
    /// with nothing ever written, so the main thread stays blocked in read).
    fn start(python: &Interpreter, mode: &str, extra: &[&str]) -> Target {
        let mut child = Command::new(&python.path)
            .args(extra)
            .arg(fixture(FIXTURE))
            .args(mode.trim_end_matches("-silent").split(' '))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        if mode == "stdin" {
            // A line every 50 ms: the main thread returns from read and runs the helper.
            let mut stdin = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                while stdin.write_all(b"tick\n").is_ok() {
                    std::thread::sleep(Duration::from_millis(50));
                }
            });
        }
        Target { child }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.pid()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Ends the target with SIGTERM and returns what it printed after `ready`.
    fn finish(mut self) -> Result<String, String> {
        self.signal("TERM");
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(10));
        let mut rest = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut rest).unwrap();
        if !status.success() {
            return Err(format!("the target ended with {status}: {rest:?}"));
        }
        Ok(rest)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the tool, waits until its first step is done, signals the target to allocate, and
/// waits for the tool's end.
fn run_around_allocation(target: &Target, args: &[&str], first_step: &str) -> std::process::Output {
    let mut tool = tool()
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(tool.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let mut rest = String::new();
    if line.contains(first_step) {
        target.signal("USR1");
    }
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = wait_with_timeout(&mut tool, Duration::from_secs(180));
    let mut stdout = String::new();
    std::io::Read::read_to_string(tool.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    std::process::Output {
        status,
        stdout: stdout.into_bytes(),
        stderr: (line + &rest).into_bytes(),
    }
}

fn leftovers() -> Vec<String> {
    std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| is_private_directory(name))
        .collect()
}

/// The injection's private directories: `pymemtrace-<tool pid>-<16 hex digits>` (other tools'
/// scratch files in /tmp, such as the dtrace scripts, are not what these tests look for).
fn is_private_directory(name: &str) -> bool {
    name.strip_prefix("pymemtrace-")
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, suffix)| {
            pid.bytes().all(|b| b.is_ascii_digit())
                && suffix.len() == 16
                && suffix.bytes().all(|b| b.is_ascii_hexdigit())
        })
}

fn check_target_output(rest: &str) -> Result<(), String> {
    // Untouched stdout: exactly the fixture's own final line, with the 100 objects kept.
    let ok =
        rest.starts_with("result ") && rest.ends_with(" kept 100\n") && rest.lines().count() == 1;
    if ok {
        Ok(())
    } else {
        Err(format!("the target's stdout after ready: {rest:?}"))
    }
}

/// Runs `tool` against a fresh target in each of `modes` on every injectable interpreter: the tool
/// starts, the target allocates once the tool's first step is done (`first_step` on its stderr),
/// `judge` checks the tool's output and JSON, and the target must then finish with its own output
/// untouched and nothing left in /tmp. Fails with every failing case listed.
fn on_every_state(
    tool: &str,
    extra_args: &[&str],
    modes: &[&str],
    duration: &str,
    first_step: &str,
    judge: impl Fn(&std::process::Output, &serde_json::Value) -> Result<String, String>,
) {
    let pythons = injectable();
    assert!(!pythons.is_empty(), "no interpreter 3.8 or later");
    let mut failures = Vec::new();
    for python in &pythons {
        for &mode in modes {
            let scratch = Scratch::new(tool);
            let json = scratch.path("result.json");
            let target = Target::start(python, mode, &[]);
            let pid = target.pid();
            let output = run_around_allocation(
                &target,
                &[
                    &[tool, "--pid", &pid, "--duration", duration, "--json", &json],
                    extra_args,
                ]
                .concat(),
                first_step,
            );
            let verdict = if output.status.success() {
                judge(&output, &read_json(&json))
            } else {
                Err(format!(
                    "exit {}: {}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                ))
            };
            let finished = target.finish().and_then(|rest| check_target_output(&rest));
            let left = leftovers();
            match (verdict, finished) {
                (Ok(figures), Ok(())) if left.is_empty() => {
                    eprintln!("{tool} [{}] {mode} ok: {figures}", python.label)
                }
                (verdict, finished) => {
                    let why = format!("{verdict:?} / target {finished:?} / left in /tmp {left:?}");
                    eprintln!("{tool} [{}] {mode} FAILED: {why}", python.label);
                    failures.push(format!("{} {mode}: {why}", python.label));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{tool} failed: {failures:#?}");
}

/// The top group must be the fixture's allocating line with its known size, and tracemalloc
/// must have been started by this run.
fn judge_tracemalloc(result: &serde_json::Value, line: i64) -> Result<String, String> {
    let top = &result["top"][0];
    let (file, at) = (
        top["frames"][0][0].as_str().unwrap_or(""),
        top["frames"][0][1].as_i64().unwrap_or(0),
    );
    let grown = top["size_diff"].as_f64().unwrap_or(0.0);
    if !file.ends_with(FIXTURE) || at != line || (grown - KNOWN_BYTES).abs() > 0.1 * KNOWN_BYTES {
        return Err(format!(
            "top group {file}:{at} grew {grown} B, truth line {line} {KNOWN_BYTES} B"
        ));
    }
    if result["started_by_us"] != true {
        return Err("tracemalloc reported as already running".into());
    }
    Ok(format!(
        "line {at} +{:.2} MB via {}",
        grown / 1e6,
        result["injection_methods"]
    ))
}

#[test]
fn tracemalloc_finds_the_allocating_line_in_every_state() {
    let _serial = serial();
    let line = line_of(FIXTURE, "kept.append(b\"k\"");
    on_every_state(
        "tracemalloc",
        &[],
        &["busy", "sleep", "lock", "stdin", "threads"],
        "1.5",
        "first snapshot taken",
        |_, result| judge_tracemalloc(result, line),
    );
}

#[test]
fn tracemalloc_through_gdb() {
    let _serial = serial();
    if !require_tool("gdb") {
        return;
    }
    let line = line_of(FIXTURE, "kept.append(b\"k\"");
    on_every_state(
        "tracemalloc",
        &["--method", "gdb"],
        &["threads"],
        "1.5",
        "first snapshot taken",
        |_, result| {
            let methods = &result["injection_methods"];
            if methods[0] != "pending call queued by gdb" || methods[1] != methods[0] {
                return Err(format!("delivered by {methods}, not by gdb"));
            }
            judge_tracemalloc(result, line)
        },
    );
}

fn ping(pid: &str, args: &[&str]) -> std::process::Output {
    tool()
        .args(["ping", "--pid", pid])
        .args(args)
        .output()
        .unwrap()
}

/// The next line the target prints.
fn next_line(target: &mut Target) -> String {
    let mut line = String::new();
    let stdout = target.child.stdout.as_mut().unwrap();
    // Byte by byte, so nothing after the line is taken from the pipe.
    let mut byte = [0u8];
    while std::io::Read::read(stdout, &mut byte).unwrap_or(0) == 1 {
        line.push(byte[0] as char);
        if byte[0] == b'\n' {
            break;
        }
    }
    line
}

/// A main thread in a long sleep or a read that never returns: the default method calls the
/// helper at once (a direct call), the sleep still lasts exactly as long as asked, the read still
/// gets its line, and nothing is left behind. `--method pending` waits instead and says why;
/// `--method direct` refuses a busy main thread.
#[test]
fn a_main_thread_asleep_or_reading_gets_a_direct_call() {
    let _serial = serial();
    let mut failures = Vec::new();
    for python in injectable() {
        let label = &python.label;
        let mut check = |case: &str, result: Result<String, String>| match result {
            Ok(figures) if leftovers().is_empty() => eprintln!("[{label}] {case} ok: {figures}"),
            Ok(_) => failures.push(format!("{label} {case}: left in /tmp {:?}", leftovers())),
            Err(why) => failures.push(format!("{label} {case}: {why}")),
        };
        let direct = |output: &std::process::Output, syscall_kinds: &[&str]| {
            let stdout = String::from_utf8_lossy(&output.stdout);
            let reply: serde_json::Value = serde_json::from_str(stdout.trim())
                .map_err(|_| format!("no reply: {}", String::from_utf8_lossy(&output.stderr)))?;
            let delivery = reply["delivery"].as_str().unwrap_or("");
            if !delivery.starts_with("direct call")
                || !syscall_kinds.iter().any(|k| delivery.contains(k))
                || reply["reply"]["thread"] != "MainThread"
            {
                return Err(format!("not a direct call in the main thread: {reply}"));
            }
            Ok(format!(
                "{delivery} in {:.1} ms",
                reply["round_trip_seconds"].as_f64().unwrap_or(0.0) * 1e3
            ))
        };

        // A 2 s sleep: the helper replies well inside the nap, which then ends on time.
        let mut target = Target::start(&python, "nap 2", &[]);
        std::thread::sleep(Duration::from_millis(300));
        let output = ping(&target.pid(), &["--timeout", "2"]);
        let replied = direct(&output, &["select", "clock_nanosleep"]);
        let slept = next_line(&mut target);
        let slept_seconds: f64 = slept
            .trim()
            .strip_prefix("slept ")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        check(
            "nap",
            replied.and_then(|figures| {
                if (2.0..2.5).contains(&slept_seconds) {
                    Ok(format!(
                        "{figures}; the 2 s sleep took {slept_seconds:.3} s"
                    ))
                } else {
                    Err(format!("the 2 s sleep took {slept:?}"))
                }
            }),
        );
        drop(target);

        // A read with nothing to read: the helper runs; the read then gets its line.
        let mut target = Target::start(&python, "stdin-silent", &[]);
        std::thread::sleep(Duration::from_millis(300));
        let output = ping(&target.pid(), &["--timeout", "2"]);
        let replied = direct(&output, &["read"]);
        let mut stdin = target.child.stdin.take().unwrap();
        stdin.write_all(b"one line\n").unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let rest = target.finish();
        check(
            "read",
            replied.and_then(|figures| match rest {
                Ok(rest) if rest == "result 1 kept 0\n" => {
                    Ok(format!("{figures}; the read then got its line"))
                }
                other => Err(format!("the target then printed {other:?}")),
            }),
        );
        drop(stdin);

        // --method pending: the helper waits for the nap to end; the tool says so and leaves.
        let mut target = Target::start(&python, "nap 2", &[]);
        std::thread::sleep(Duration::from_millis(300));
        let output = ping(&target.pid(), &["--timeout", "1", "--method", "pending"]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let slept = next_line(&mut target);
        check(
            "pending",
            if output.status.code() == Some(10)
                && (stderr.contains("blocked in sleep") || stderr.contains("blocked in pselect"))
                && stderr.contains("stays queued")
                && slept.starts_with("slept 2.")
            {
                Ok(format!("exit 10 and then {}", slept.trim()))
            } else {
                Err(format!("{}: {stderr} / target: {slept:?}", output.status))
            },
        );
        drop(target);

        // --method direct on a busy main thread: refused, nothing done.
        let target = Target::start(&python, "busy", &[]);
        let output = ping(&target.pid(), &["--method", "direct"]);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        let rest = target.finish();
        check(
            "direct refused",
            match rest {
                Ok(rest)
                    if output.status.code() == Some(10)
                        && stderr.contains("refused")
                        && rest.starts_with("result ")
                        && rest.ends_with(" kept 0\n") =>
                {
                    Ok("exit 10, the target went on".into())
                }
                rest => Err(format!("{}: {stderr} / target {rest:?}", output.status)),
            },
        );
    }
    assert!(failures.is_empty(), "failures: {failures:#?}");
}

#[test]
fn mallocstats_sees_the_small_objects() {
    let _serial = serial();
    on_every_state(
        "mallocstats",
        &[],
        &["sleep", "lock", "threads"],
        "1",
        "first capture taken",
        |output, result| {
            let allocated = result["summary"]["allocated_bytes"].as_f64().unwrap_or(0.0);
            // 100,000 2-tuples of two ints: at least 5 MB of small blocks in every version.
            if allocated < 5e6 {
                return Err(format!("allocated blocks grew {allocated} B"));
            }
            let stdout = String::from_utf8_lossy(&output.stdout);
            if !stdout.contains("# bytes in allocated blocks") {
                return Err(format!("no allocated-blocks line in:\n{stdout}"));
            }
            Ok(format!("allocated blocks +{:.1} MB", allocated / 1e6))
        },
    );
}

/// tracemalloc already running (-X tracemalloc=5) is used and left running; a target that exits
/// between the snapshots ends the tool with exit 3; a non-Python process is refused with 4.
#[test]
fn already_running_exited_and_not_python() {
    let _serial = serial();
    let python = injectable()
        .into_iter()
        .next()
        .expect("an interpreter 3.8 or later");
    let scratch = Scratch::new("inject-cases");
    let json = scratch.path("tm.json");

    let target = Target::start(&python, "sleep", &["-X", "tracemalloc=5"]);
    let pid = target.pid();
    for round in 0..2 {
        let output = run_around_allocation(
            &target,
            &[
                "tracemalloc",
                "--pid",
                &pid,
                "--duration",
                "0.5",
                "--json",
                &json,
            ],
            "first snapshot taken",
        );
        assert!(
            output.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let result = read_json(&json);
        assert_eq!(
            result["started_by_us"], false,
            "round {round}: tracemalloc was running"
        );
        assert_eq!(
            result["frames"], 5,
            "round {round}: the target's own frame limit"
        );
    }
    drop(target);

    // A fresh path: a failed run leaves an existing file alone, and writes no new one.
    let json = scratch.path("exited.json");
    let target = Target::start(&python, "sleep", &[]);
    let pid = target.pid();
    let mut run = tool()
        .args([
            "tracemalloc",
            "--pid",
            &pid,
            "--duration",
            "2",
            "--json",
            &json,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(run.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("first snapshot taken"), "{line}");
    drop(target); // killed
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = wait_with_timeout(&mut run, Duration::from_secs(30));
    assert_eq!(status.code(), Some(3), "{rest}");
    assert!(rest.contains("exited"), "{rest}");
    assert!(!std::path::Path::new(&json).exists(), "no half result left");
    assert!(leftovers().is_empty(), "{:?}", leftovers());

    let mut sleeper = Command::new("sleep").arg("10").spawn().unwrap();
    let output = run_to_end(tool().args(["mallocstats", "--pid", &sleeper.id().to_string()]));
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        output.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A target of another user (nobody): the helper runs there, the reply channel is handed to that
/// user and removed after; and 200 injections in a row into one target with four allocating
/// threads all succeed, with the target's own work finishing undisturbed.
#[test]
fn another_users_target_and_200_injections_in_a_row() {
    let _serial = serial();
    let debian = std::path::Path::new("/usr/bin/python3.11");
    if debian.exists() {
        let mut target = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(debian)
            .arg(fixture(FIXTURE))
            .arg("sleep")
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux)");
        let mut line = String::new();
        BufReader::new(target.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "ready\n");
        let output = run_to_end(tool().args(["ping", "--pid", &target.id().to_string()]));
        let _ = target.kill();
        let _ = target.wait();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(reply["reply"]["pid"], target.id());
        assert!(leftovers().is_empty(), "{:?}", leftovers());
        eprintln!(
            "another user's target: ok ({})",
            reply["round_trip_seconds"]
        );
    } else {
        assert!(!in_ci(), "Debian's python3.11 is missing in CI");
        eprintln!(
            "no /usr/bin/python3.11 (readable by nobody): the other-user case is not run here"
        );
    }

    // PYMEMTRACE_INJECTIONS raises the count for a soak run (docs/inject.md).
    let count: usize = std::env::var("PYMEMTRACE_INJECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let python = injectable()
        .into_iter()
        .last()
        .expect("an interpreter 3.8 or later");
    let target = Target::start(&python, "threads", &[]);
    let pid = target.pid();
    let mut slowest = 0.0f64;
    for i in 0..count {
        let output = run_to_end(tool().args(["ping", "--pid", &pid]));
        assert!(
            output.status.success(),
            "injection {i} of {count}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        slowest = slowest.max(reply["round_trip_seconds"].as_f64().unwrap());
    }
    target.signal("USR1");
    std::thread::sleep(Duration::from_millis(300));
    let rest = target.finish().expect("the target finishes");
    check_target_output(&rest).unwrap();
    assert!(leftovers().is_empty(), "{:?}", leftovers());
    eprintln!(
        "{count} injections into {} (threads): all answered, slowest {slowest:.3} s",
        python.label
    );
}

/// A target whose user attacks the reply channel, run as `nobody` with Debian's python3.11: a
/// forged reply and a 2 GB announcement are refused with exit 10 and one clear line; a socket
/// swapped for a link to a root-owned file leaves that file untouched. Nothing is left in /tmp.
#[test]
fn a_hostile_target_cannot_forge_flood_or_redirect() {
    let _serial = serial();
    let debian = std::path::Path::new("/usr/bin/python3.11");
    if !debian.exists() {
        assert!(!in_ci(), "Debian's python3.11 is missing in CI");
        eprintln!("no /usr/bin/python3.11: the hostile-target cases are not run here");
        return;
    }
    let scratch = Scratch::new("hostile");
    let canary = scratch.path("canary");
    std::fs::write(&canary, "root's own file\n").unwrap();
    for (mode, expect) in [
        ("forge", "not what the helper sends"),
        ("huge", "more than the"),
        ("swap", "did not run within"),
    ] {
        let mut target = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
            .arg(debian)
            .arg(fixture("hostile_target.py"))
            .args([mode, &canary])
            .stdout(Stdio::piped())
            .spawn()
            .expect("setpriv (util-linux)");
        let mut stdout = BufReader::new(target.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n");
        // A pending call: the main thread sleeps, so the genuine helper never runs in time and
        // the attacker has the channel to itself (a direct call would answer first).
        let output = run_to_end(tool().args([
            "ping",
            "--pid",
            &target.id().to_string(),
            "--timeout",
            "2",
            "--method",
            "pending",
        ]));
        let mut attacked = String::new();
        stdout.read_line(&mut attacked).unwrap();
        let _ = target.kill();
        let _ = target.wait();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            attacked.starts_with("attacked"),
            "{mode}: the attack did not happen"
        );
        assert_eq!(output.status.code(), Some(10), "{mode}: {stderr}");
        assert!(stderr.contains(expect), "{mode}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{mode}: one line: {stderr}");
        assert_eq!(
            std::fs::read_to_string(&canary).unwrap(),
            "root's own file\n",
            "{mode}: the canary changed"
        );
        assert!(leftovers().is_empty(), "{mode}: left {:?}", leftovers());
        eprintln!("hostile {mode}: refused ({})", stderr.trim());
    }
}

/// The tool is killed (SIGKILL, which nothing can block) while it holds the target's main thread
/// at each of the stub's stops: before a pending call is queued, after a GIL check, after a direct
/// call. The stub then puts the thread back by itself: the target lives on, its sleep, read or
/// lock wait carries on as it was, it still handles signals and allocates, and the private
/// directory is gone once the helper or the next run has cleaned up.
#[test]
fn the_target_lives_on_when_the_tool_is_killed_mid_injection() {
    let _serial = serial();
    let mut failures = Vec::new();
    let cases: [(&str, &str); 5] = [
        ("busy", "pending"),
        ("lock", "pending"),
        ("nap 2", "check"),
        ("nap 2", "direct"),
        ("stdin-silent", "direct"),
    ];
    for python in injectable() {
        for (mode, stage) in cases {
            let mut target = Target::start(&python, mode, &[]);
            std::thread::sleep(Duration::from_millis(300));
            let mut killed = tool()
                .args(["ping", "--pid", &target.pid(), "--timeout", "3"])
                .env("PYMEMTRACE_TEST_STALL", format!("{stage}:10000"))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let mut stderr = BufReader::new(killed.stderr.take().unwrap());
            let mut said = String::new();
            stderr.read_line(&mut said).unwrap();
            killed.kill().unwrap();
            killed.wait().unwrap();
            let stalled = said.contains(&format!("at the {stage} stop"));
            std::thread::sleep(Duration::from_millis(500));
            let alive = Command::new("kill")
                .args(["-0", &target.pid()])
                .status()
                .is_ok_and(|s| s.success());
            target.signal("USR1");
            let mut outcome = Ok(String::new());
            if mode.starts_with("nap") {
                let slept = next_line(&mut target);
                let seconds: f64 = slept
                    .trim()
                    .strip_prefix("slept ")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0.0);
                // 3.10 and older sleep with a relative select(): the time held is added.
                outcome = if (2.0..2.8).contains(&seconds) {
                    Ok(format!("slept {seconds:.3} s"))
                } else {
                    Err(format!("the 2 s sleep printed {slept:?}"))
                };
            }
            // Kept open until the end: EOF would end the fixture's read loop.
            let mut stdin = target.child.stdin.take().unwrap();
            let expected_work = if mode == "stdin-silent" {
                stdin.write_all(b"one line\n").unwrap();
                stdin.flush().unwrap();
                Some("result 1 kept 100\n")
            } else {
                None
            };
            std::thread::sleep(Duration::from_millis(300));
            // The target still answers, and this run removes the private directory that the
            // killed one left if its helper never ran.
            let again = ping(&target.pid(), &["--timeout", "5"]);
            let rest = target.finish();
            drop(stdin);
            let left = leftovers();
            if !again.status.success() {
                outcome = Err(format!(
                    "a later run failed: {}",
                    String::from_utf8_lossy(&again.stderr)
                ));
            }
            let verdict = match (&outcome, &rest) {
                _ if !stalled => Err(format!("the tool did not stall: {said:?}")),
                _ if !alive => Err("the target died".into()),
                (Err(why), _) => Err(why.clone()),
                (_, Err(why)) => Err(why.clone()),
                (Ok(_), Ok(rest)) if expected_work.is_some_and(|w| rest != w) => {
                    Err(format!("the target then printed {rest:?}"))
                }
                (Ok(_), Ok(rest)) if check_target_output(rest).is_err() => {
                    Err(format!("the target then printed {rest:?}"))
                }
                _ if !left.is_empty() => Err(format!("left in /tmp: {left:?}")),
                (Ok(figures), Ok(rest)) => Ok(format!("{figures} {}", rest.trim())),
            };
            match verdict {
                Ok(figures) => {
                    eprintln!("[{}] {mode} killed at {stage}: ok {figures}", python.label)
                }
                Err(why) => {
                    failures.push(format!("{} {mode} killed at {stage}: {why}", python.label))
                }
            }
        }
    }
    assert!(failures.is_empty(), "failures: {failures:#?}");
}
