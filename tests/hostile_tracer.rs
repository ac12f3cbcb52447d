//! Attacks on the tracers `pymemtrace dtrace` and `attach --precise` start (issue 13), run for real
//! against the real binary: a target run as `nobody` whose library path is bpftrace code, links
//! and FIFOs planted in /tmp by `nobody`, SIGKILL of the tool, a target killed while the tracer
//! starts or runs, Ctrl-C while it starts, a chroot'ed target, a static non-Python target.
//!
//! The library path, /tmp and chroot cases run on Debian's /usr/bin/python3.11 only: `nobody`
//! cannot run pyenv's interpreters (0700), and what is attacked (the C library's path, the files
//! the tool writes, the processes it starts) does not depend on the Python version. Each bpftrace
//! start costs seconds, so each case starts as few as it can.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

const DEBIAN_PYTHON: &str = "/usr/bin/python3.11";

/// How long a tracer may take to disappear after the tool is SIGKILLed: the kernel detaches its
/// probes first (0.7 s for 8 uprobes, docs/reliability.md); the rest is margin for a loaded CI.
const TRACER_GONE_WITHIN: Duration = Duration::from_secs(10);

/// From a target's death to the tool's exit: the issue's "about a second", plus margin for a
/// loaded 2-core CI machine (the same allowance as tests/reliability.rs gives dtrace).
const END_AFTER_TARGET_DEATH: Duration = Duration::from_millis(2500);

/// Everything these tests need: bpftrace as root, setpriv, Debian's python3.11 (a missing one
/// fails under CI=true, see `require_tool`).
fn ready() -> bool {
    let debian = Path::new(DEBIAN_PYTHON).exists();
    assert!(
        debian || !in_ci(),
        "{DEBIAN_PYTHON} is missing (CI=true: a missing interpreter is a failure)"
    );
    bpftrace_ready() && require_tool("setpriv") && debian
}

/// A small target: allocates 64 KiB blocks (malloc calls, page faults, frees) until killed.
const ALLOCATOR: &str = "\
import sys, time
print('ready', flush=True)
blocks = []
while True:
    blocks.append(bytearray(64 * 1024))
    if len(blocks) >= 100:
        blocks = []
    time.sleep(0.002)
";

/// A scratch directory that `nobody` can enter (Scratch makes it 0755 under the umask; set it).
fn open_scratch(name: &str) -> Scratch {
    let scratch = Scratch::new(name);
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    scratch
}

/// `program args` as `nobody`.
fn as_nobody(program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--",
        program,
    ]);
    command
}

/// A target the test started: killed and reaped when dropped, even by a failing assertion.
struct Target(Child);

impl Target {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }

    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `command` (a Python running ALLOCATOR) and waits for its `ready` line.
fn start_target(mut command: Command) -> Target {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the target");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the target did not start");
    Target(child)
}

/// The tool running in the background, its stderr lines collected as they come.
struct Running {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<String>>,
    started: Instant,
}

impl Running {
    fn start(args: &[&str]) -> Running {
        let mut child = tool()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start pymemtrace");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let out = child.stdout.take().unwrap();
        let sink = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut text = sink.lock().unwrap();
                text.push_str(&line);
                text.push('\n');
            }
        });
        Running {
            child,
            lines,
            stdout,
            started: Instant::now(),
        }
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn said(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Waits until stderr has a line containing `needle`.
    fn wait_for(&mut self, needle: &str, limit: Duration) {
        while !self.said(needle) {
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "pymemtrace ended ({status}) before saying {needle:?}: {}",
                    self.stderr()
                );
            }
            assert!(
                self.started.elapsed() < limit,
                "pymemtrace did not say {needle:?} within {limit:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the end (at most `limit`), then returns the exit code and all of stderr.
    fn end(mut self, limit: Duration) -> (Option<i32>, String, String) {
        let status = wait_with_timeout(&mut self.child, limit);
        // The reader threads get the last lines once the pipes close.
        std::thread::sleep(Duration::from_millis(100));
        (
            status.code(),
            self.stderr(),
            self.stdout.lock().unwrap().clone(),
        )
    }

    fn stderr(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process by PID and start time, so that a reused PID is not mistaken for it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Process {
    pid: i32,
    start_time: u64,
    name: String,
}

/// Fields of /proc/PID/stat after the `(comm)`: state is [0], ppid [1], starttime [19].
fn stat_fields(pid: i32) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat[open + 1..close].to_string();
    Some((
        name,
        stat[close + 2..]
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    ))
}

/// The processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<Process> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Some((name, fields)) = stat_fields(pid) {
            if fields.get(1).and_then(|p| p.parse::<i32>().ok()) == Some(parent) {
                found.push(Process {
                    pid,
                    start_time: fields[19].parse().unwrap_or(0),
                    name,
                });
            }
        }
    }
    found
}

/// Whether `process` still runs (a zombie or a reused PID does not count).
fn still_running(process: &Process) -> bool {
    match stat_fields(process.pid) {
        Some((_, fields)) => {
            fields[19].parse::<u64>().ok() == Some(process.start_time)
                && !matches!(fields[0].as_str(), "Z" | "X")
        }
        None => false,
    }
}

/// SIGKILLs whatever of `processes` still runs (a failed test must not leave a root tracer).
fn kill_leftovers(processes: &[Process]) {
    for process in processes.iter().filter(|p| still_running(p)) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(process.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 1. A library path that is bpftrace code.

/// What the injected code prints, if it ever runs.
const MARKER: &str = "INJECTED-CODE-RAN";

/// The attack of issue 13: `nobody` loads the C library from a directory whose name is bpftrace
/// code. Returns the target, the secret only root may read, and a flag set when the injected code
/// opened a FIFO (its one side effect visible from outside the tracer).
struct HostileLibrary {
    target: Target,
    secret: String,
    code_ran: Arc<AtomicBool>,
    fifo: PathBuf,
    hostile_libc: String,
    _scratch: Scratch,
}

impl HostileLibrary {
    fn start() -> HostileLibrary {
        let scratch = open_scratch("hostile-libc");
        let s = scratch.0.display().to_string();
        let libc = "/usr/lib/x86_64-linux-gnu/libc.so.6";
        // The secret: a root-only file the injected code would print.
        let secret = format!("root-only-secret-{}", std::process::id());
        let secret_path = format!("{s}/secret");
        std::fs::write(&secret_path, &secret).unwrap();
        std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        // The side effect: the injected code reads this FIFO; our writer sees it being opened.
        let fifo = scratch.0.join("ran");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        // `uprobe:{s}/a:malloc{}interval:s:1{...}uprobe:{s}/b/libc.so.6:malloc /pid == N/`: each
        // probe name in the payload must exist for bpftrace to run it, so both are libc copies.
        let code_dir = format!(
            "{s}/a:malloc{{}}interval:s:1{{printf(\"{MARKER}\\n\");cat(\"{secret_path}\");cat(\"{}\")}}uprobe:{s}/b",
            fifo.display()
        );
        std::fs::create_dir_all(&code_dir).unwrap();
        std::fs::create_dir_all(format!("{s}/b")).unwrap();
        for copy in [
            format!("{s}/a"),
            format!("{s}/b/libc.so.6"),
            format!("{code_dir}/libc.so.6"),
        ] {
            std::fs::copy(libc, &copy).unwrap();
        }
        // LD_LIBRARY_PATH splits at ':', so the target names the directory through a link; the
        // kernel shows the real path in /proc/PID/maps.
        std::os::unix::fs::symlink(&code_dir, format!("{s}/lib")).unwrap();
        let status = Command::new("chmod")
            .args(["-R", "a+rX", &s])
            .status()
            .unwrap();
        assert!(status.success());
        std::fs::set_permissions(&secret_path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let script = format!("{s}/allocator.py");
        std::fs::write(&script, ALLOCATOR).unwrap();

        let code_ran = Arc::new(AtomicBool::new(false));
        {
            let (fifo, code_ran) = (fifo.clone(), code_ran.clone());
            std::thread::spawn(move || {
                // Blocks until a reader opens the FIFO: only the injected cat() would.
                if let Ok(mut writer) = std::fs::OpenOptions::new().write(true).open(&fifo) {
                    code_ran.store(true, Ordering::SeqCst);
                    let _ = writer.write_all(b"fifo read\n");
                }
            });
        }

        let mut command = as_nobody("env");
        command.args([&format!("LD_LIBRARY_PATH={s}/lib"), DEBIAN_PYTHON, &script]);
        let target = start_target(command);
        let hostile_libc = format!("{code_dir}/libc.so.6");
        let maps = std::fs::read_to_string(format!("/proc/{}/maps", target.id())).unwrap();
        assert!(
            maps.contains(&hostile_libc),
            "the attack is not set up: the target did not load {hostile_libc}"
        );
        HostileLibrary {
            target,
            secret,
            code_ran,
            fifo,
            hostile_libc,
            _scratch: scratch,
        }
    }

    /// Checks that nothing of the injected code ran and that `text` (what the tool and the
    /// tracer printed) holds neither the secret nor the marker.
    fn check(&self, what: &str, text: &str) {
        assert!(
            !self.code_ran.load(Ordering::SeqCst),
            "{what}: the target's library path ran as tracer code (it opened {})",
            self.fifo.display()
        );
        assert!(
            !text.contains(&self.secret),
            "{what}: the root-only secret was printed"
        );
        assert!(!text.contains(MARKER), "{what}: the injected printf ran");
    }
}

impl Drop for HostileLibrary {
    fn drop(&mut self) {
        let _ = self.target.kill();
        let _ = self.target.wait();
        // Release the FIFO writer thread if nothing opened the FIFO.
        use std::os::unix::fs::OpenOptionsExt;
        let _ = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.fifo);
    }
}

#[test]
fn a_library_path_made_of_tracer_code_runs_nothing() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let attack = HostileLibrary::start();
    let pid = attack.target.id().to_string();
    let scratch = open_scratch("hostile-libc-out");

    // dtrace: --raw passes everything the tracer prints through, so the secret would show.
    let json = scratch.path("count.json");
    let run = Running::start(&[
        "dtrace",
        "--pid",
        &pid,
        "--script",
        "malloc_count",
        "--duration",
        "2",
        "--raw",
        "--json",
        &json,
    ]);
    let (code, stderr, stdout) = run.end(Duration::from_secs(90));
    attack.check("dtrace", &format!("{stderr}\n{stdout}"));
    assert_eq!(code, Some(0), "dtrace: {stderr}");
    // Traced through the tool's own name for the library: malloc was counted.
    let report = read_json(&json);
    let mallocs = report["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"] == "malloc")
        .and_then(|t| t["calls"].as_u64())
        .unwrap_or(0);
    assert!(mallocs > 0, "dtrace traced no malloc: {report}");
    // The script named the library the tool's way, never the target's.
    let printed = tool()
        .args([
            "dtrace",
            "--pid",
            &pid,
            "--script",
            "malloc_count",
            "--print-script",
        ])
        .output()
        .unwrap();
    let script = String::from_utf8_lossy(&printed.stdout);
    assert!(
        script.contains(&format!("uprobe:/proc/{pid}/map_files/")),
        "{script}"
    );
    assert!(!script.contains(&attack.hostile_libc), "{script}");

    // attach --precise: its release probes are on the same library.
    let out = scratch.path("precise.json");
    let run = Running::start(&[
        "attach",
        "--precise",
        "--precise-engine",
        "bpftrace",
        "--pid",
        &pid,
        "--duration",
        "2",
        "--no-progress",
        "-o",
        &out,
    ]);
    let (code, stderr, stdout) = run.end(Duration::from_secs(90));
    attack.check("attach --precise", &format!("{stderr}\n{stdout}"));
    assert_eq!(code, Some(0), "attach --precise: {stderr}");
    let result = read_json(&out);
    assert_eq!(result["mode"], "precise (bpftrace page faults)", "{stderr}");
    assert!(
        result["samples"].as_u64().unwrap_or(0) > 0,
        "attach --precise counted no page fault: {stderr}"
    );
    attack.check("the end of the test", "");
}

// ---------------------------------------------------------------------------------------------
// 2. Links and FIFOs planted in /tmp.

/// The names the tool used to write its script at: `/tmp/pymemtrace-<its pid>-<script>.bt`.
fn old_script_name(pid: u32, script: &str) -> PathBuf {
    PathBuf::from(format!("/tmp/pymemtrace-{pid}-{script}.bt"))
}

/// The next `count` PIDs the kernel will hand out (it counts up from the last one).
fn next_pids(count: u32) -> Vec<u32> {
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (1..=count)
        .map(|i| (last + i) % max)
        .filter(|&p| p > 300)
        .collect()
}

/// Removes what `nobody` planted for these PIDs (only entries of nobody's), even after a failure.
struct Planted(Vec<u32>);

impl Drop for Planted {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        for &p in &self.0 {
            for planted in [
                old_script_name(p, "malloc_count"),
                old_script_name(p, "precise"),
            ] {
                if planted.symlink_metadata().is_ok_and(|m| m.uid() == 65534) {
                    let _ = std::fs::remove_file(&planted);
                }
            }
        }
    }
}

#[test]
fn links_and_fifos_planted_in_tmp_are_left_alone() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let scratch = open_scratch("planted");
    // A root-only file a planted link points at.
    let victim = scratch.path("victim");
    let original = "root-only file: must stay as it is\n";
    std::fs::write(&victim, original).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
    let target = start_target({
        let mut command = Command::new(DEBIAN_PYTHON);
        command.arg("-c").arg(ALLOCATOR);
        command
    });
    let pid = target.id().to_string();
    let mut target = target;

    // `nobody` plants a link at the dtrace script name and a FIFO at the precise one, for each
    // of the next PIDs (other processes start meanwhile: 2,000 of them covers a busy machine).
    let pids = next_pids(2000);
    let planter = format!(
        "import os\nfor p in {pids:?}:\n    try:\n        os.symlink({victim:?}, '/tmp/pymemtrace-%d-malloc_count.bt' % p)\n    except OSError: pass\n    try:\n        os.mkfifo('/tmp/pymemtrace-%d-precise.bt' % p)\n    except OSError: pass\n"
    );
    let status = as_nobody(DEBIAN_PYTHON)
        .arg("-c")
        .arg(&planter)
        .status()
        .unwrap();
    assert!(status.success());
    let _remove = Planted(pids.clone());

    let mut tool_pids = Vec::new();
    let run = Running::start(&[
        "dtrace",
        "--pid",
        &pid,
        "--script",
        "malloc_count",
        "--duration",
        "1",
    ]);
    tool_pids.push(run.pid() as u32);
    let (dtrace_code, dtrace_stderr, _) = run.end(Duration::from_secs(60));
    let run = Running::start(&[
        "attach",
        "--precise",
        "--precise-engine",
        "bpftrace",
        "--pid",
        &pid,
        "--duration",
        "1",
        "--no-progress",
    ]);
    tool_pids.push(run.pid() as u32);
    let (precise_code, precise_stderr, _) = run.end(Duration::from_secs(60));

    let after = std::fs::read_to_string(&victim).unwrap();
    // What was planted is still there, as it was; then it goes.
    let mut intact = true;
    for &p in &pids {
        let link = old_script_name(p, "malloc_count");
        let fifo = old_script_name(p, "precise");
        intact &= std::fs::read_link(&link).is_ok_and(|t| t == Path::new(&victim));
        intact &= fifo
            .symlink_metadata()
            .is_ok_and(|m| m.file_type().is_fifo());
    }
    let _ = target.kill();
    let _ = target.wait();

    for tool_pid in &tool_pids {
        assert!(
            pids.contains(tool_pid),
            "the tool ran as PID {tool_pid}, outside the planted range: the test proved nothing (rerun)"
        );
    }
    assert_eq!(after, original, "a planted link made root overwrite a file");
    assert!(intact, "a planted link or FIFO was replaced or removed");
    assert_eq!(dtrace_code, Some(0), "dtrace: {dtrace_stderr}");
    assert_eq!(precise_code, Some(0), "attach --precise: {precise_stderr}");
    assert!(precise_stderr.contains("tracing PID"), "{precise_stderr}");
}

// ---------------------------------------------------------------------------------------------
// 4. Nothing the tool starts outlives it.

/// SIGKILLs a running tool and checks that none of `children` runs `TRACER_GONE_WITHIN` later.
fn sigkill_and_check(run: Running, what: &str) {
    let children = children_of(run.pid());
    assert!(
        children.iter().any(|c| c.name == "bpftrace"),
        "{what}: no bpftrace among the tool's children: {children:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.pid()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (_, _, _) = run.end(Duration::from_secs(10));
    let deadline = Instant::now() + TRACER_GONE_WITHIN;
    while children.iter().any(still_running) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let survivors: Vec<Process> = children
        .iter()
        .filter(|p| still_running(p))
        .cloned()
        .collect();
    kill_leftovers(&survivors);
    assert!(
        survivors.is_empty(),
        "{what}: still running {TRACER_GONE_WITHIN:?} after the tool was SIGKILLed: {survivors:?}"
    );
}

#[test]
fn a_sigkilled_tool_leaves_no_tracer_and_no_program_behind() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let scratch = open_scratch("sigkill");
    let script = scratch.path("allocator.py");
    std::fs::write(&script, ALLOCATOR).unwrap();

    // attach --precise -- CMD: two children, bpftrace and the program.
    let mut run = Running::start(&[
        "attach",
        "--precise",
        "--precise-engine",
        "bpftrace",
        "--no-progress",
        "--",
        DEBIAN_PYTHON,
        &script,
    ]);
    run.wait_for("tracing PID", Duration::from_secs(60));
    let program = children_of(run.pid());
    assert!(
        program.iter().any(|c| c.name.starts_with("python")),
        "the program is not among the tool's children: {program:?}"
    );
    sigkill_and_check(run, "attach --precise -- CMD");

    // dtrace on a target that lives on (bpftrace -p would end with its target otherwise).
    let mut target = start_target({
        let mut command = Command::new(DEBIAN_PYTHON);
        command.arg(&script);
        command
    });
    let mut run = Running::start(&[
        "dtrace",
        "--pid",
        &target.id().to_string(),
        "--script",
        "malloc_count",
    ]);
    run.wait_for("tracing PID", Duration::from_secs(60));
    sigkill_and_check(run, "dtrace");
    assert!(
        matches!(target.try_wait(), Ok(None)),
        "the target died with the tool"
    );
    let _ = target.kill();
    let _ = target.wait();
}

// ---------------------------------------------------------------------------------------------
// 9. Stops: a killed target, Ctrl-C while the tracer starts.

/// Runs `args` (with `{pid}` for the target's PID) against a fresh target, kills the target
/// `when` (right after the start, or once tracing), and checks the tool's exit code and deadline.
fn kill_target_and_time(args: &[&str], wait_for_tracing: bool, expect: Option<i32>, what: &str) {
    let mut target = start_target({
        let mut command = Command::new(DEBIAN_PYTHON);
        command.arg("-c").arg(ALLOCATOR);
        command
    });
    let pid = target.id().to_string();
    let args: Vec<&str> = args
        .iter()
        .map(|a| if *a == "{pid}" { pid.as_str() } else { a })
        .collect();
    let mut run = Running::start(&args);
    if wait_for_tracing {
        run.wait_for("tracing PID", Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(300));
    } else {
        // Killed while the tracer compiles and attaches (seconds on this machine): wait for the
        // tracer to exist, so that the tool is past its own start.
        while !children_of(run.pid()).iter().any(|c| c.name == "bpftrace") {
            assert!(
                run.started.elapsed() < Duration::from_secs(30),
                "{what}: no tracer"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            !run.said("tracing PID"),
            "{what}: the tracer started too fast to test this"
        );
    }
    let tracers = children_of(run.pid());
    target.kill().unwrap();
    let killed = Instant::now();
    target.wait().unwrap();
    let status = wait_with_timeout(&mut run.child, Duration::from_secs(90));
    let took = killed.elapsed();
    kill_leftovers(&tracers);
    let (_, stderr, _) = run.end(Duration::from_secs(1));
    assert!(
        took <= END_AFTER_TARGET_DEATH,
        "{what}: ended {took:?} after the target was killed (allowed {END_AFTER_TARGET_DEATH:?}): {stderr}"
    );
    assert_eq!(status.code(), expect, "{what}: {stderr}");
    assert!(
        stderr.contains(&format!("PID {pid} exited")),
        "{what}: {stderr}"
    );
    eprintln!("{what}: ended {took:?} after the target was killed");
}

#[test]
fn a_killed_target_ends_the_tracers_within_the_deadline() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let precise = [
        "attach",
        "--precise",
        "--precise-engine",
        "bpftrace",
        "--no-progress",
        "--pid",
        "{pid}",
    ];
    let dtrace = ["dtrace", "--script", "malloc_count", "--pid", "{pid}"];
    // Before the probes are attached nothing was traced: exit 3, "exited before the probes were
    // attached". Once tracing: exit 0 and the report up to the exit.
    kill_target_and_time(
        &precise,
        false,
        Some(3),
        "attach --precise, killed while it starts",
    );
    kill_target_and_time(&dtrace, false, Some(3), "dtrace, killed while it starts");
    kill_target_and_time(
        &precise,
        true,
        Some(0),
        "attach --precise, killed while tracing",
    );
    kill_target_and_time(&dtrace, true, Some(0), "dtrace, killed while tracing");
}

#[test]
fn ctrl_c_while_the_tracer_starts_ends_with_exit_0_and_every_output() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let scratch = open_scratch("ctrl-c");
    let mut target = start_target({
        let mut command = Command::new(DEBIAN_PYTHON);
        command.arg("-c").arg(ALLOCATOR);
        command
    });
    let pid = target.id().to_string();
    let dtrace_json = scratch.path("dtrace.json");
    let precise_json = scratch.path("precise.json");
    let cases: [(&str, Vec<&str>, &str); 2] = [
        (
            "dtrace",
            vec![
                "dtrace",
                "--pid",
                &pid,
                "--script",
                "malloc_count",
                "--json",
                &dtrace_json,
            ],
            &dtrace_json,
        ),
        (
            "attach --precise",
            vec![
                "attach",
                "--precise",
                "--precise-engine",
                "bpftrace",
                "--no-progress",
                "--pid",
                &pid,
                "-o",
                &precise_json,
            ],
            &precise_json,
        ),
    ];
    for (what, args, json) in cases {
        let run = Running::start(&args);
        // Once bpftrace exists the tool's Ctrl-C handler is in place; it is still compiling.
        while !children_of(run.pid()).iter().any(|c| c.name == "bpftrace") {
            assert!(
                run.started.elapsed() < Duration::from_secs(30),
                "{what}: no tracer"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        let tracers = children_of(run.pid());
        assert!(
            !run.said("tracing PID"),
            "{what}: the tracer started too fast to test this"
        );
        sigint(run.child.id());
        let (code, stderr, _) = run.end(Duration::from_secs(30));
        kill_leftovers(&tracers);
        assert_eq!(code, Some(0), "{what}: {stderr}");
        assert!(
            stderr.contains("interrupted before the probes were attached"),
            "{what}: {stderr}"
        );
        let result = read_json(json);
        let end = result["end"].as_str().unwrap_or_default().to_string();
        assert!(end.contains("interrupted"), "{what}: end {end:?}");
    }
    let _ = target.kill();
    let _ = target.wait();
}

// ---------------------------------------------------------------------------------------------
// A chroot'ed target (1: the library reached through the tool's name needs no /proc/PID/root).

#[test]
fn a_chrooted_target_is_traced_by_both_tracers() {
    let _serial = serial();
    if !ready() {
        return;
    }
    let scratch = open_scratch("chroot");
    let root = scratch.path("root");
    std::fs::create_dir(&root).unwrap();
    let script = scratch.path("allocator.py");
    std::fs::write(&script, ALLOCATOR).unwrap();
    let dtrace_json = scratch.path("dtrace.json");
    let precise_json = scratch.path("precise.json");
    // In a private mount namespace (nothing leaks to the host): the host's / bound at `root`, the
    // target chroot'ed there, and the tool beside it; /proc/PID/maps then shows the library as
    // ROOT/usr/lib/..., and the old /proc/PID/root prefix doubled the root.
    let shell = format!(
        r#"set -e
mount --bind / {root}
chroot {root} {DEBIAN_PYTHON} {script} > /dev/null 2>&1 &
target=$!
trap 'kill $target' EXIT
sleep 0.5
grep -q '{root}/usr/lib/x86_64-linux-gnu/libc.so.6' /proc/$target/maps
{tool} dtrace --pid $target --script malloc_count --duration 1 --json {dtrace_json} > /dev/null
{tool} attach --precise --pid $target --duration 1 --no-progress -o {precise_json} > /dev/null
"#,
        tool = env!("CARGO_BIN_EXE_pymemtrace"),
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &shell])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let report = read_json(&dtrace_json);
    assert_eq!(report["complete"], true, "dtrace: {stderr}");
    let result = read_json(&precise_json);
    assert_eq!(
        result["mode"], "precise (bpftrace page faults)",
        "attach --precise fell back: {stderr}"
    );
    assert!(!stderr.contains("falling back"), "{stderr}");
}

// ---------------------------------------------------------------------------------------------
// 9. A static binary that is not Python: exit 4 (not a CPython process).

#[test]
fn dtrace_on_a_static_non_python_binary_is_exit_4() {
    let _serial = serial();
    if !ready() || !require_tool("cc") {
        return;
    }
    let scratch = open_scratch("static");
    let source = scratch.path("sleeper.c");
    let binary = scratch.path("sleeper");
    std::fs::write(
        &source,
        "#include <unistd.h>\nint main(void) { for (;;) pause(); }\n",
    )
    .unwrap();
    let built = Command::new("cc")
        .args(["-static", "-O1", "-o", &binary, &source])
        .status()
        .unwrap();
    assert!(
        built.success(),
        "cc -static failed (glibc's libc.a is needed)"
    );
    let mut sleeper = Command::new(&binary).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let output = tool()
        .args([
            "dtrace",
            "--pid",
            &sleeper.id().to_string(),
            "--script",
            "malloc_count",
        ])
        .output()
        .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("pymemtrace: error: "), "{stderr}");
}
