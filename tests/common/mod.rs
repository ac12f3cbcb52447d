//! Shared by the integration tests: interpreter discovery, running the real binary against real
//! Python processes, and checks on every output format.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Accuracy tests share two cores with their target: run them one at a time.
pub static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn tool() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pymemtrace"))
}

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// The line of `fixture` that contains `needle` (1-based), to check reported lines against.
pub fn line_of(name: &str, needle: &str) -> i64 {
    let text = std::fs::read_to_string(fixture(name)).unwrap();
    text.lines()
        .position(|l| l.contains(needle))
        .expect("needle in fixture") as i64
        + 1
}

#[derive(Debug, Clone)]
pub struct Interpreter {
    /// "3.11" for pyenv's, "debian-3.11" for Debian's.
    pub label: String,
    pub path: PathBuf,
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// True when the program `name` runs here (`name --version` succeeds). A missing one fails the
/// test under CI=true (.ci/run installs every one); elsewhere the test says it skipped those cases.
pub fn require_tool(name: &str) -> bool {
    let found = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found || !in_ci(),
        "{name} is missing (CI=true: a missing tool is a failure)"
    );
    if !found {
        eprintln!("NOTE: {name} is missing: the cases that need it did not run");
    }
    found
}

/// True when bpftrace can run here: installed (see `require_tool`) and we are root.
pub fn bpftrace_ready() -> bool {
    require_tool("bpftrace") && nix::unistd::geteuid().is_root()
}

/// Every supported interpreter on this machine: pyenv's 2.7 and 3.6-3.13, and Debian's python3.11.
/// A missing one is reported; under CI=true it fails the test. PYMEMTRACE_TEST_PYTHONS=3.12,3.13
/// narrows a local run.
pub fn interpreters() -> Vec<Interpreter> {
    let wanted = [
        "2.7", "3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13",
    ];
    let pyenv_root = std::env::var("PYENV_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".pyenv")
        });
    let mut installed: Vec<(String, PathBuf)> = std::fs::read_dir(pyenv_root.join("versions"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join("bin/python"),
                    )
                })
                .filter(|(_, p)| p.exists())
                .collect()
        })
        .unwrap_or_default();
    installed.sort();
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for minor in wanted {
        // The newest patch release of that minor version (plain releases only, not e.g. 3.13t).
        match installed.iter().rfind(|(v, _)| {
            v.starts_with(&format!("{minor}."))
                && v[minor.len() + 1..].chars().all(|c| c.is_ascii_digit())
        }) {
            Some((_, path)) => found.push(Interpreter {
                label: minor.to_string(),
                path: path.clone(),
            }),
            None => missing.push(format!("pyenv {minor}")),
        }
    }
    let debian = PathBuf::from("/usr/bin/python3.11");
    if debian.exists() {
        found.push(Interpreter {
            label: "debian-3.11".into(),
            path: debian,
        });
    } else {
        missing.push("Debian /usr/bin/python3.11".into());
    }
    if !missing.is_empty() {
        let message = format!(
            "interpreters missing on this machine: {}",
            missing.join(", ")
        );
        assert!(
            !in_ci(),
            "{message} (CI=true: a missing interpreter is a failure)"
        );
        eprintln!("NOTE: {message}; those cases did not run");
    }
    if let Ok(only) = std::env::var("PYMEMTRACE_TEST_PYTHONS") {
        let only: Vec<&str> = only.split(',').map(str::trim).collect();
        found.retain(|i| only.contains(&i.label.as_str()));
    }
    found
}

/// The interpreters the helpers (`tracemalloc`, `mallocstats`) are tested on: 3.8 and later,
/// Debian's 3.11 included (the injection engine's tested range; tracemalloc itself is 3.4+).
pub fn injectable() -> Vec<Interpreter> {
    interpreters()
        .into_iter()
        .filter(|i| {
            let version = i.label.trim_start_matches("debian-");
            !matches!(version, "2.7" | "3.6" | "3.7")
        })
        .collect()
}

/// A fixture started with `--wait`: it has printed "ready" and waits for a line on stdin.
pub struct WaitingTarget {
    pub child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl WaitingTarget {
    pub fn start(python: &Path, fixture_name: &str, extra: &[&str]) -> WaitingTarget {
        let mut child = Command::new(python)
            .arg(fixture(fixture_name))
            .arg("--wait")
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the fixture");
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "fixture did not start");
        WaitingTarget {
            child,
            stdin,
            stdout,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go once");
        stdin.write_all(b"go\n").unwrap();
    }

    /// Waits for the fixture's "done" line (its work is over).
    pub fn wait_done(&mut self) {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("done"), "fixture said {line:?}");
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for WaitingTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the tool in the background with its stderr captured, and waits until it samples.
pub fn start_tool<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
) -> (Child, BufReader<std::process::ChildStderr>) {
    let mut child = tool()
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pymemtrace");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(
        line.starts_with("pymemtrace: sampling PID"),
        "tool said {line:?}"
    );
    (child, stderr)
}

pub fn wait_with_timeout(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process {} did not end within {limit:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn sigint(pid: u32) {
    let status = Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A scratch directory removed at drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("pymemtrace-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, file: &str) -> String {
        self.0.join(file).to_string_lossy().into_owned()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn read_json(path: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The function row named `name` in an attach JSON result.
pub fn function<'a>(result: &'a Value, name: &str) -> Option<&'a Value> {
    result["functions"]
        .as_array()?
        .iter()
        .find(|f| f["function"] == name)
}

pub fn share(result: &Value, name: &str) -> f64 {
    function(result, name).map_or(0.0, |f| f["share"].as_f64().unwrap())
}

pub fn self_bytes(result: &Value, name: &str, field: &str) -> i64 {
    function(result, name).map_or(0, |f| f["self"][field].as_i64().unwrap())
}

/// Checks every output format written with base path `base` (base.json, .txt, .svg, .speedscope.json,
/// .log) parses and is consistent, and that `expect_function` carries growth in each.
pub fn check_all_outputs(base: &str, expect_function: &str) -> Result<(), String> {
    // JSON: the whole result.
    let json = read_json(&format!("{base}.json"));
    if json["samples"].as_u64().unwrap_or(0) == 0 {
        return Err("JSON: no samples".into());
    }
    if self_bytes(&json, expect_function, "net") <= 0 {
        return Err(format!("JSON: {expect_function} has no net growth"));
    }

    // Collapsed stacks: `frame;frame VALUE`, each frame `function (file:line)` or `<bucket>`.
    let collapsed = std::fs::read_to_string(format!("{base}.txt")).unwrap();
    let mut total = 0i64;
    let mut mentioned = false;
    for line in collapsed.lines() {
        let (stack, value) = line
            .rsplit_once(' ')
            .ok_or(format!("collapsed: no value in {line:?}"))?;
        let value: i64 = value
            .parse()
            .map_err(|_| format!("collapsed: bad value in {line:?}"))?;
        if value <= 0 {
            return Err(format!("collapsed: non-positive value in {line:?}"));
        }
        for frame in stack.split(';') {
            let ok = (frame.starts_with('<') && frame.ends_with('>'))
                || (frame.ends_with(')')
                    && frame.contains(" (")
                    && frame
                        .rsplit(':')
                        .next()
                        .unwrap()
                        .trim_end_matches(')')
                        .parse::<i64>()
                        .is_ok());
            if !ok {
                return Err(format!("collapsed: bad frame {frame:?}"));
            }
        }
        mentioned |= stack
            .rsplit(';')
            .next()
            .unwrap()
            .starts_with(&format!("{expect_function} ("));
        total += value;
    }
    if total <= 0 || !mentioned {
        return Err(format!(
            "collapsed: total {total}, {expect_function} as a leaf: {mentioned}"
        ));
    }

    // speedscope: a sampled profile whose indexes are in range and weights are bytes.
    let speedscope = read_json(&format!("{base}.speedscope.json"));
    let frames = speedscope["shared"]["frames"]
        .as_array()
        .ok_or("speedscope: no frames")?;
    let profile = &speedscope["profiles"][0];
    let samples = profile["samples"]
        .as_array()
        .ok_or("speedscope: no samples")?;
    let weights = profile["weights"]
        .as_array()
        .ok_or("speedscope: no weights")?;
    if profile["unit"] != "bytes" || samples.len() != weights.len() || samples.is_empty() {
        return Err("speedscope: malformed profile".into());
    }
    for sample in samples {
        for index in sample.as_array().unwrap() {
            if index.as_u64().unwrap() as usize >= frames.len() {
                return Err("speedscope: frame index out of range".into());
            }
        }
    }
    let weight_sum: i64 = weights.iter().map(|w| w.as_i64().unwrap()).sum();
    if weight_sum != total {
        return Err(format!(
            "speedscope weights {weight_sum} != collapsed total {total}"
        ));
    }

    // SVG: well-formed XML with an <svg> root that names the function.
    let svg = std::fs::read_to_string(format!("{base}.svg")).unwrap();
    let options = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    let document =
        roxmltree::Document::parse_with_options(&svg, options).map_err(|e| format!("svg: {e}"))?;
    if document.root_element().tag_name().name() != "svg" || !svg.contains(expect_function) {
        return Err("svg: not an svg flamegraph naming the function".into());
    }

    // cPyMemTrace log: SOF, HDR, FRST, NEXT rows whose dRSS chain adds up, LAST, EOF.
    let log = std::fs::read_to_string(format!("{base}.log")).unwrap();
    let lines: Vec<&str> = log.lines().collect();
    if lines.len() < 5
        || lines[0] != "SOF"
        || !lines[1].starts_with("HDR: Event")
        || !lines[2].starts_with("FRST: ")
        || !lines[lines.len() - 2].starts_with("LAST: ")
        || lines[lines.len() - 1] != "EOF"
    {
        return Err("log: not SOF/HDR/FRST/.../LAST/EOF".into());
    }
    let rss_and_delta = |row: &str| -> (i64, i64) {
        let fields: Vec<&str> = row.split_whitespace().collect();
        let n = fields.len();
        (
            fields[n - 2].parse().unwrap(),
            fields[n - 1].parse().unwrap(),
        )
    };
    let mut reported = rss_and_delta(lines[2]).0;
    let mut next_rows = 0;
    for row in &lines[3..lines.len() - 1] {
        if row.starts_with("NEXT: ") || row.starts_with("LAST: ") {
            let (rss, delta) = rss_and_delta(row);
            if rss - delta != reported {
                return Err(format!("log: dRSS chain broken at {row:?}"));
            }
            reported = rss;
            next_rows += row.starts_with("NEXT: ") as usize;
        } else if !row.starts_with("PREV: ") {
            return Err(format!("log: unexpected row {row:?}"));
        }
    }
    if next_rows == 0 || !log.contains(expect_function) {
        return Err(format!(
            "log: {next_rows} NEXT rows, {expect_function} named: {}",
            log.contains(expect_function)
        ));
    }
    Ok(())
}

pub fn output_args(base: &str) -> Vec<String> {
    ["json", "txt", "svg", "speedscope.json", "log"]
        .iter()
        .flat_map(|ext| ["-o".to_string(), format!("{base}.{ext}")])
        .collect()
}

pub fn run_to_end(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .expect("run pymemtrace")
}

/// Marks a failed attribution check whose run the tool itself reported as starved of CPU.
const BUSY: &str = "[busy machine:";
/// Attempts per interpreter when the tool reports a busy machine (one, plus these retries).
const BUSY_RETRIES: usize = 2;

/// Runs `check` on each interpreter, prints a line per interpreter, fails with all failures listed.
/// A check that failed on a run the tool reported as starved of CPU (see [`judged`]) is run again,
/// at most [`BUSY_RETRIES`] times: the tool's warning is its own verdict that the shares of that
/// run are approximate, and these shared 2-core machines have busy spells. Any other failure fails
/// at once, and a busy failure on the last attempt still fails.
pub fn on_every_interpreter(
    case: &str,
    mut check: impl FnMut(&Interpreter) -> Result<String, String>,
) {
    let mut failures = Vec::new();
    let interpreters = interpreters();
    assert!(!interpreters.is_empty(), "no Python interpreter found");
    for python in &interpreters {
        for attempt in 0..=BUSY_RETRIES {
            match check(python) {
                Ok(figures) => eprintln!("{case} [{}] ok: {figures}", python.label),
                Err(why) if why.contains(BUSY) && attempt < BUSY_RETRIES => {
                    eprintln!("{case} [{}] retried: {why}", python.label);
                    continue;
                }
                Err(why) => {
                    eprintln!("{case} [{}] FAILED: {why}", python.label);
                    failures.push(format!("{}: {why}", python.label));
                }
            }
            break;
        }
    }
    assert!(failures.is_empty(), "{case} failed on: {failures:#?}");
}

/// An attribution failure, marked with the tool's own report when it saw much of the change only
/// after being starved of CPU (its summary then warns that the shares are approximate).
pub fn judged(result: &serde_json::Value, why: String) -> String {
    let late = result["late_fraction"].as_f64().unwrap_or(0.0);
    if late > 0.05 {
        format!(
            "{why} {BUSY} the tool saw {:.0}% of the change late, after up to {:.0} ms without CPU]",
            late * 100.0,
            result["longest_gap_seconds"].as_f64().unwrap_or(0.0) * 1000.0
        )
    } else {
        why
    }
}
