//! The tracemalloc helper under hostile conditions (issue 13, items 5 and 6), against real targets
//! on every interpreter the helpers support (3.8-3.13 and Debian's 3.11):
//! - the tool SIGKILLed between its two steps: the target puts itself back by itself (tracemalloc
//!   off again if the tool started it, still on if the program had it on), with nothing of ours
//!   left in it (no attribute on the tracemalloc module, no module, no thread, no descriptor);
//! - the next run, right after a killed one, works and also leaves nothing;
//! - a target with a million live traced blocks: no snapshot is filtered, grouped or compared in
//!   it, and its main thread is held for a bounded time.
//!
//! The target (`fixtures/traced_blocks.py`) reports on itself on SIGUSR2, so every check is made
//! from the target's own view, not from the tool's word.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const FIXTURE: &str = "traced_blocks.py";

/// How soon a target must be back as it was after the tool is killed. The helper's watchdog sees
/// the tool's connection close at once (a few milliseconds here); 5 s is margin for a loaded CI
/// machine, and stays below the watchdog's 10 s lease, so passing shows the close was noticed
/// rather than the lease running out.
const RESTORED_WITHIN: Duration = Duration::from_secs(5);

/// The fixture, with its self-reports.
struct Watched {
    child: Child,
    stdout: BufReader<ChildStdout>,
}

impl Watched {
    fn start(python: &Interpreter, args: &[&str]) -> Watched {
        let mut child = Command::new(&python.path)
            .arg(fixture(FIXTURE))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fixture");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(
            line, "ready\n",
            "[{}] the fixture did not start",
            python.label
        );
        Watched { child, stdout }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }

    /// What the target says about itself now (and its longest main-thread gap since the last).
    fn report(&mut self) -> Value {
        let sent = Command::new("kill")
            .args(["-USR2", &self.pid()])
            .status()
            .unwrap();
        assert!(sent.success(), "the target is gone");
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("report {line:?}: {e}"))
    }

    /// Polls the target's reports until it is as `baseline` says, with tracemalloc `tracing`.
    fn back_as_found(&mut self, baseline: &Value, tracing: bool) -> Result<Duration, String> {
        let started = Instant::now();
        loop {
            let now = self.report();
            let as_found = now["tracing"] == tracing
                && now["state"] == serde_json::json!([])
                && now["modules"] == serde_json::json!([])
                && now["threads"] == baseline["threads"]
                && now["fds"] == baseline["fds"];
            if as_found {
                return Ok(started.elapsed());
            }
            if started.elapsed() > RESTORED_WITHIN {
                return Err(format!(
                    "not back as found within {RESTORED_WITHIN:?}: {now} (before the tool: \
                     {baseline}, tracing {tracing})"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `pymemtrace tracemalloc` with no duration and returns it once its first step is done.
fn tool_after_first_step(pid: &str) -> Result<Child, String> {
    let mut tool = tool()
        .args(["tracemalloc", "--pid", pid])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(tool.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    if !line.contains("first snapshot taken") {
        let _ = tool.kill();
        let _ = tool.wait();
        return Err(format!("the first step failed: {line}"));
    }
    Ok(tool)
}

/// A whole run that must succeed; returns its JSON.
fn full_run(pid: &str, json: &str) -> Result<Value, String> {
    let output = run_to_end(tool().args([
        "tracemalloc",
        "--pid",
        pid,
        "--duration",
        "0.5",
        "--json",
        json,
    ]));
    if !output.status.success() {
        return Err(format!(
            "the run failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(read_json(json))
}

/// One kill between the steps, then the next run. `traced`: the program started tracemalloc
/// itself before any tool came.
fn kill_between_steps(python: &Interpreter, traced: bool, json: &str) -> Result<String, String> {
    let mut target = Watched::start(python, if traced { &["--trace"][..] } else { &[] });
    let pid = target.pid();
    let baseline = target.report();
    let mut tool = tool_after_first_step(&pid)?;
    let between = target.report();
    // The tool's state is there to be seen between the steps (the checks below can fail).
    if between["tracing"] != true || between["state"] == serde_json::json!([]) {
        let _ = tool.kill();
        return Err(format!(
            "no sign of the first step in the target: {between}"
        ));
    }
    tool.kill().unwrap(); // SIGKILL
    tool.wait().unwrap();
    let took = target.back_as_found(&baseline, traced)?;
    let next = full_run(&pid, json)?;
    if next["started_by_us"] != !traced {
        return Err(format!(
            "the next run's started_by_us: {}",
            next["started_by_us"]
        ));
    }
    target.back_as_found(&baseline, traced)?;
    Ok(format!(
        "threads between the steps {}, back as found {:.0} ms after the kill, next run ok",
        between["threads"],
        took.as_secs_f64() * 1e3
    ))
}

/// (a) and (b): on every interpreter, a tool killed between its steps leaves the target as it
/// found it, and the next run works and does too. Fails on the code before the watchdog: the
/// target kept tracing, and kept the first snapshot on the tracemalloc module, for ever.
#[test]
fn a_killed_tool_leaves_the_target_as_it_found_it() {
    let _serial = serial();
    let pythons = injectable();
    assert!(!pythons.is_empty(), "no interpreter 3.8 or later");
    let scratch = Scratch::new("hostile-helper");
    let mut failures = Vec::new();
    let mut cases = 0;
    for python in &pythons {
        for traced in [false, true] {
            let json = scratch.path(&format!("{}-{traced}.json", python.label));
            let case = format!(
                "[{}] tracemalloc {}",
                python.label,
                if traced { "on before" } else { "off before" }
            );
            cases += 1;
            match kill_between_steps(python, traced, &json) {
                Ok(figures) => eprintln!("{case}: ok ({figures})"),
                Err(why) => {
                    eprintln!("{case}: FAILED: {why}");
                    failures.push(format!("{case}: {why}"));
                }
            }
        }
    }
    assert!(cases > 0, "no case ran");
    assert!(failures.is_empty(), "failures: {failures:#?}");
}

/// The longest the target's main thread may be held by one step with a million live blocks. What
/// the helper does there is two C calls (about 1-3 s here on a loaded 2-core machine); 30 s is
/// margin for a slow CI machine. The old in-target comparison took 30-40 s on the same data in a
/// plain process and minutes on a real job, but a faster machine could bring it under any fixed
/// bound, so the test also checks the cause itself: none of tracemalloc's snapshot machinery
/// (take_snapshot, filter_traces, _group_by, compare_to) is called in the target.
const LONGEST_HOLD: f64 = 30.0;

/// (c) A million live traced blocks (tracemalloc on before the tool): the helper's work in the
/// target is bounded, no Snapshot machinery runs there, and the figures still come out.
#[test]
fn a_million_live_blocks_hold_the_main_thread_briefly() {
    let _serial = serial();
    let python = injectable()
        .into_iter()
        .last()
        .expect("an interpreter 3.8 or later");
    let scratch = Scratch::new("hostile-helper-million");
    let json = scratch.path("million.json");
    let mut target = Watched::start(
        &python,
        &["--blocks", "1000000", "--trace", "--watch-calls"],
    );
    let pid = target.pid();
    let baseline = target.report();
    let started = Instant::now();
    let mut run = tool()
        .args([
            "tracemalloc",
            "--pid",
            &pid,
            "--duration",
            "1",
            "--json",
            &json,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_with_timeout(&mut run, Duration::from_secs(300));
    let mut stderr = String::new();
    std::io::Read::read_to_string(run.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let wall = started.elapsed();
    let after = target.report();
    let gap = after["max_gap"].as_f64().unwrap();
    eprintln!(
        "[{}] 1,000,000 live blocks: tool {:.1} s ({status}), longest main-thread gap {gap:.2} s, \
         snapshot functions called in the target: {}",
        python.label,
        wall.as_secs_f64(),
        after["tracemalloc_calls"]
    );
    // The facts in the target first: they are the point, whatever the tool said.
    assert_eq!(
        after["tracemalloc_calls"],
        serde_json::json!([]),
        "Snapshot work ran inside the target"
    );
    assert!(
        gap < LONGEST_HOLD,
        "the main thread was held {gap:.1} s (bound {LONGEST_HOLD} s)"
    );
    assert!(status.success(), "{status}: {stderr}");
    let result = read_json(&json);
    assert_eq!(result["started_by_us"], false);
    assert!(result["groups"].as_u64().unwrap() > 0, "{result}");
    target
        .back_as_found(&baseline, true)
        .expect("left as found");
}
