//! A target that corrupts its own interpreter structures (fixtures/hostile_walks.py, ctypes) and a
//! target whose stacks take seconds to read must not hold the tool past `--duration`, past Ctrl-C,
//! or take its memory: every walk of the target's structures is bounded and a loop is refused with
//! one line and exit 4.
//!
//! Margins: `--duration` is honoured within a second by the tool; the tests allow 2.5 s more on top
//! of the duration, for process start-up and the report on a loaded 2-core CI machine (the code
//! before the fix took 18-150 s on these same cases, so the margin cannot hide the flaw).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use common::{fixture, interpreters, serial, tool, Interpreter, Scratch};

/// What the tool may add to `--duration` (see the module's comment).
const MARGIN: Duration = Duration::from_millis(2500);
/// Peak RSS allowed to the tool: it needs about 40 MB; the code before the fix reached 110 MB
/// against a 100-frame loop here, and 889 MB in the report.
const MAX_RSS_KB: i64 = 80 * 1024;

/// The offsets the fixture needs, from the tool's own table (3.8-3.13).
fn offsets(python: &Interpreter) -> Option<[String; 3]> {
    let minor: u64 = python.label.rsplit('.').next()?.parse().ok()?;
    let layout = pymemtrace::dtrace::offsets::layout(3, minor).ok()?;
    let path: Vec<String> = layout.tstate_frame.iter().map(u64::to_string).collect();
    Some([
        layout.tstate_next.to_string(),
        path.join(","),
        layout.frame_previous.to_string(),
    ])
}

/// The interpreters the fixture can corrupt: 3.8-3.13 and Debian's 3.11 (ctypes, and offsets in
/// the tool's table). At least one must be here: a test that ran no case fails.
fn corruptible() -> Vec<(Interpreter, [String; 3])> {
    let found: Vec<_> = interpreters()
        .into_iter()
        .filter_map(|python| offsets(&python).map(|o| (python, o)))
        .collect();
    assert!(!found.is_empty(), "no Python 3.8-3.13 interpreter found");
    found
}

struct Fixture {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<std::process::ChildStdout>,
}

impl Fixture {
    fn start(python: &Path, args: &[&str]) -> Fixture {
        let mut child = Command::new(python)
            .arg(fixture("hostile_walks.py"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fixture");
        let stdin = child.stdin.take().unwrap();
        let mut fixture = Fixture {
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            stdin,
        };
        fixture.expect("ready");
        fixture
    }

    fn expect(&mut self, word: &str) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), word, "the fixture did not say {word}");
    }

    fn corrupt_now(&mut self) {
        self.stdin.write_all(b"go\n").unwrap();
        self.stdin.flush().unwrap();
        self.expect("corrupted");
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How a run of the tool ended.
struct Ended {
    code: Option<i32>,
    wall: Duration,
    /// Peak RSS of the tool (wait4's ru_maxrss, kB).
    peak_kb: i64,
    stdout: String,
    stderr: String,
}

/// Starts the tool; `during` runs once it printed its first line (it is sampling then), with the
/// tool's pid. The tool is killed if it runs past `limit`.
// Reaped by wait4 below (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_tool(args: &[&str], limit: Duration, during: impl FnOnce(u32)) -> Ended {
    let started = Instant::now();
    let mut child = tool()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pymemtrace");
    let pid = child.id();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    if first.starts_with("pymemtrace: sampling") || first.starts_with("pymemtrace: tracing") {
        during(pid);
    }
    let stdout_pipe = child.stdout.take().unwrap();
    let stdout_reader = std::thread::spawn(move || std::io::read_to_string(stdout_pipe).unwrap());
    let stderr_reader = std::thread::spawn(move || {
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
        rest
    });
    // Reaped here with wait4, for the peak RSS (std's wait gives no rusage).
    let (status, peak_kb) = loop {
        let mut status = 0;
        // SAFETY: rusage is plain data, filled by wait4.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid as i32, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid as i32 {
            break (status, usage.ru_maxrss);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let mut status = 0;
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::wait4(pid as i32, &mut status, 0, &mut usage) };
            break (-1, usage.ru_maxrss);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let wall = started.elapsed();
    Ended {
        code: (status >= 0 && libc::WIFEXITED(status)).then(|| libc::WEXITSTATUS(status)),
        wall,
        peak_kb,
        stdout: stdout_reader.join().unwrap(),
        stderr: first + &stderr_reader.join().unwrap(),
    }
}

/// The checks on a run against a corrupted target: exit 4, one line naming the loop, within the
/// duration, in bounded memory.
fn refused(ended: &Ended, duration: f64) -> Result<String, String> {
    let lines: Vec<&str> = ended
        .stderr
        .lines()
        .filter(|l| !l.starts_with("pymemtrace: sampling") && !l.starts_with("pymemtrace: tracing"))
        .collect();
    let figures = format!(
        "exit {:?} in {:.2} s, peak RSS {} MB, stderr {:?}",
        ended.code,
        ended.wall.as_secs_f64(),
        ended.peak_kb / 1024,
        lines
    );
    let within = Duration::from_secs_f64(duration) + MARGIN;
    if ended.code != Some(4)
        || lines.len() != 1
        || !lines[0].contains("its memory is corrupt or crafted")
    {
        return Err(format!("not refused with exit 4 and one line: {figures}"));
    }
    if ended.wall > within || ended.peak_kb > MAX_RSS_KB {
        return Err(format!(
            "not bounded ({within:?}, {MAX_RSS_KB} kB): {figures}"
        ));
    }
    Ok(figures)
}

/// The cases: (fixture mode, corrupted before the tool starts, or while it samples).
const CASES: &[(&str, bool)] = &[
    ("self-loop", true),
    ("two-cycle", false),
    ("frame-loop", false),
    ("frame-loop", true),
];

/// Attach against a thread list or frame chain that loops: refused at once, whether the loop is
/// there when the tool attaches (py-spy's own interpreter search then scanned for minutes) or
/// appears while it samples (each read re-read the stack 4096 times).
#[test]
fn looping_structures_are_refused_within_the_duration() {
    let _serial = serial();
    let duration = 5.0;
    let mut failures = Vec::new();
    let mut ran = 0;
    for (python, [next, path, previous]) in corruptible() {
        for &(mode, before) in CASES {
            let delay = if before { "0" } else { "stdin" };
            // 100 frames deep: each walk of the loop re-reads them all.
            let mut target = Fixture::start(
                &python.path,
                &[
                    mode,
                    next.as_str(),
                    path.as_str(),
                    previous.as_str(),
                    delay,
                    "100",
                ],
            );
            if before {
                target.expect("corrupted");
            }
            let pid = target.pid();
            let ended = run_tool(
                &["attach", "--pid", &pid, "--duration", "5"],
                Duration::from_secs_f64(duration) + MARGIN * 4,
                |_| {
                    if !before {
                        std::thread::sleep(Duration::from_millis(300));
                        target.corrupt_now();
                    }
                },
            );
            ran += 1;
            let when = if before {
                "before attach"
            } else {
                "while sampling"
            };
            match refused(&ended, duration) {
                Ok(figures) => eprintln!("[{}] {mode} {when} ok: {figures}", python.label),
                Err(why) => {
                    eprintln!("[{}] {mode} {when} FAILED: {why}", python.label);
                    failures.push(format!("{} {mode} {when}: {why}", python.label));
                }
            }
        }
    }
    assert!(ran > 0, "no case ran");
    assert!(failures.is_empty(), "failed: {failures:#?}");
}

/// `attach --precise` first finds the target the same way: a looping list is refused before any
/// tracer starts (one interpreter: the path is the same for all, and bpftrace costs seconds).
#[test]
fn precise_refuses_a_looping_list() {
    let _serial = serial();
    let (python, [next, path, previous]) = corruptible().pop().unwrap();
    let mut target = Fixture::start(
        &python.path,
        &["self-loop", &next, &path, &previous, "0", "100"],
    );
    target.expect("corrupted");
    let ended = run_tool(
        &[
            "attach",
            "--precise",
            "--pid",
            &target.pid(),
            "--duration",
            "5",
        ],
        Duration::from_secs(5) + MARGIN * 4,
        |_| {},
    );
    let figures = refused(&ended, 5.0).unwrap_or_else(|why| panic!("[{}] {why}", python.label));
    eprintln!("[{}] precise self-loop ok: {figures}", python.label);
}

/// The slow-read figures of a run: from the table on stdout, and from the JSON.
fn slow_reads(ended: &Ended, json: &str) -> Result<(u64, u64, f64), String> {
    let line = ended
        .stdout
        .lines()
        .find(|l| l.starts_with("slow stack reads: "))
        .ok_or_else(|| format!("no slow-read line in the table:\n{}", ended.stdout))?;
    let in_table: u64 = line["slow stack reads: ".len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.replace(',', "").parse().ok())
        .ok_or_else(|| format!("unreadable line {line:?}"))?;
    let result = common::read_json(json);
    let in_json = result["slow_reads"]
        .as_u64()
        .ok_or("no slow_reads in the JSON")?;
    let longest = result["longest_read_seconds"]
        .as_f64()
        .ok_or("no longest_read_seconds in the JSON")?;
    Ok((in_table, in_json, longest))
}

/// 300 threads 500 frames deep: one read takes seconds (finding the interpreter includes one).
/// `--duration 3` ends within a second of 3 s (plus the margin): with a report whose reads that
/// outlasted the sampling interval are counted, the same in the table and the JSON, not passed
/// off as "lost 0"; or, when the first read was still running at the deadline, with exit 4 and
/// one line that says so.
#[test]
fn deep_target_keeps_the_duration() {
    let _serial = serial();
    let scratch = Scratch::new("hostile-walks-deep");
    let mut failures = Vec::new();
    let mut ran = 0;
    for (python, [next, path, previous]) in corruptible() {
        let target = Fixture::start(
            &python.path,
            &["deep", &next, &path, &previous, "0", "500", "300"],
        );
        let json = scratch.path(&format!("deep-{}.json", python.label));
        let ended = run_tool(
            &[
                "attach",
                "--pid",
                &target.pid(),
                "--duration",
                "3",
                "-o",
                &json,
            ],
            Duration::from_secs(3) + MARGIN * 8,
            |_| {},
        );
        drop(target);
        ran += 1;
        let verdict = (|| {
            if ended.wall > Duration::from_secs(3) + MARGIN {
                return Err(format!(
                    "ran {:.1} s for --duration 3",
                    ended.wall.as_secs_f64()
                ));
            }
            match ended.code {
                Some(0) => {
                    let (table, json, longest) = slow_reads(&ended, &json)?;
                    if table == 0 || table != json {
                        return Err(format!("slow reads: table {table}, JSON {json}"));
                    }
                    Ok(format!(
                        "report in {:.2} s, {table} slow reads, longest {longest:.2} s",
                        ended.wall.as_secs_f64()
                    ))
                }
                Some(4)
                    if ended.stderr.lines().count() == 1
                        && ended.stderr.contains(
                            "--duration reached before its Python stacks could be read",
                        ) =>
                {
                    Ok(format!(
                        "first read unfinished at the deadline, exit 4 in {:.2} s",
                        ended.wall.as_secs_f64()
                    ))
                }
                code => Err(format!("exit {code:?}: {}", ended.stderr)),
            }
        })();
        match verdict {
            Ok(figures) => eprintln!("[{}] deep ok: {figures}", python.label),
            Err(why) => {
                eprintln!("[{}] deep FAILED: {why}", python.label);
                failures.push(format!("{}: {why}", python.label));
            }
        }
    }
    assert!(ran > 0, "no case ran");
    assert!(failures.is_empty(), "failed: {failures:#?}");
}

/// Ctrl-C while a read of seconds runs: the tool stops within a second (plus the margin) and
/// still writes its report (exit 0), instead of finishing the read first; the report counts the
/// abandoned read as slow, the same in the table and the JSON.
#[test]
fn ctrl_c_during_a_slow_read_is_honoured_and_reported() {
    let _serial = serial();
    let scratch = Scratch::new("hostile-walks-ctrl-c");
    let json = scratch.path("interrupted.json");
    let (python, [next, path, previous]) = corruptible().pop().unwrap();
    let target = Fixture::start(
        &python.path,
        &["deep", &next, &path, &previous, "0", "500", "300"],
    );
    let mut interrupted = None;
    let ended = run_tool(
        &[
            "attach",
            "--pid",
            &target.pid(),
            "--duration",
            "60",
            "-o",
            &json,
        ],
        Duration::from_secs(40),
        |pid| {
            // Sampling has begun, and with it a read of seconds.
            std::thread::sleep(Duration::from_millis(1000));
            common::sigint(pid);
            interrupted = Some(Instant::now());
        },
    );
    let after = interrupted.expect("the tool started sampling").elapsed();
    assert_eq!(ended.code, Some(0), "stderr: {}", ended.stderr);
    assert!(
        ended.stdout.contains("(interrupted)"),
        "no report: {}",
        ended.stdout
    );
    assert!(
        after < Duration::from_secs(1) + MARGIN,
        "ended {after:?} after Ctrl-C"
    );
    let (table, in_json, longest) = slow_reads(&ended, &json).unwrap();
    assert!(
        table > 0 && table == in_json,
        "slow reads: table {table}, JSON {in_json}"
    );
    eprintln!(
        "[{}] Ctrl-C ok: ended {after:?} after it; {table} slow reads, longest {longest:.2} s",
        python.label
    );
}
