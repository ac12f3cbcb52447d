//! The tool's outputs and its own process in hostile surroundings (issue 13): what is at an
//! output's path (/dev/null, a FIFO with or without a reader, a link, a device, names another user
//! planted in a shared directory), stop signals in its first milliseconds, numeric options out of
//! range, and escape sequences in the names a target chooses. Each case runs the real binary
//! against real processes and checks facts: file kinds and contents before and after, exit codes,
//! deadlines, the bytes that reach the terminal.
//!
//! Needs root (device nodes, a mount namespace, files owned by `nobody`), as the rest of the suite.

mod common;

use std::ffi::CString;
use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, ErrorKind, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;

/// How long the tool waits for a FIFO's reader, or for it to read more (`SPECIAL_FILE_PATIENCE`
/// in src/report/atomic.rs).
const PATIENCE: Duration = Duration::from_secs(5);

/// What a deadline may overshoot by on a loaded 2-core CI machine (starting Python, attaching,
/// other tests in parallel): generous, since what is tested is that the tool ends at all (the
/// code before the fix never ended: it blocked in open() on a FIFO nobody reads).
const LOADED_MACHINE_MARGIN: Duration = Duration::from_secs(15);

const NOBODY: u32 = 65534;

fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run as root: they make device nodes, a mount namespace and files of nobody's"
    );
}

/// The interpreter the cases that need any Python run on: output writing, signal handling and
/// masking are the tool's own code, the same whatever the target's version.
fn python() -> Interpreter {
    interpreters()
        .into_iter()
        .rfind(|i| !matches!(i.label.as_str(), "2.7" | "3.6" | "3.7"))
        .expect("a Python 3.8+ interpreter")
}

// ---------------------------------------------------------------------------------------------
// Files of every kind

/// A copy of /dev (null, zero, urandom, the fd links) that the tool sees as /dev, in a mount
/// namespace of its own. The tool runs as root and the code before the fix renamed a regular file
/// over /dev/null: run against it (or after a regression), this test breaks a copy in its scratch
/// directory, not the /dev/null of every user of the machine.
struct PrivateDev {
    dir: PathBuf,
}

impl PrivateDev {
    fn new(scratch: &Scratch) -> PrivateDev {
        let dir = scratch.0.join("dev");
        fs::create_dir(&dir).unwrap();
        for (name, minor) in [
            ("null", 3),
            ("zero", 5),
            ("full", 7),
            ("random", 8),
            ("urandom", 9),
        ] {
            make_node(&dir.join(name), libc::S_IFCHR, 1, minor);
        }
        std::os::unix::fs::symlink("/proc/self/fd", dir.join("fd")).unwrap();
        for (fd, name) in ["stdin", "stdout", "stderr"].iter().enumerate() {
            std::os::unix::fs::symlink(format!("/proc/self/fd/{fd}"), dir.join(name)).unwrap();
        }
        PrivateDev { dir }
    }

    /// `/dev/null` as the tool sees it.
    fn null(&self) -> PathBuf {
        self.dir.join("null")
    }

    /// The tool, with this directory mounted over /dev (in a mount namespace of its own).
    fn tool(&self) -> Command {
        let dev = CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        let mut command = tool();
        // SAFETY: only system calls between fork and exec, on strings made before the fork.
        unsafe {
            command.pre_exec(move || {
                let check = |result: libc::c_int| {
                    if result == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                check(libc::mount(
                    dev.as_ptr(),
                    c"/dev".as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))
            });
        }
        command
    }
}

/// `mknod` of a character or block device node, mode 0666.
fn make_node(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid C string.
    let made = unsafe { libc::mknod(name.as_ptr(), kind | 0o666, libc::makedev(major, minor)) };
    assert_eq!(
        made,
        0,
        "mknod {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).unwrap();
}

fn make_fifo(path: &Path) {
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
}

/// Gives `path` itself (a link is not followed) to `uid`.
fn give_to(path: &Path, uid: u32) {
    nix::unistd::fchownat(
        None,
        path,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(uid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

/// What a file is, as `lstat` sees it, to compare before and after a run.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Kind {
    kind: &'static str,
    inode: u64,
    device_number: u64,
    owner: u32,
    link: Option<PathBuf>,
}

fn kind_of(path: &Path) -> Kind {
    let meta =
        fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{} is gone: {e}", path.display()));
    let t = meta.file_type();
    let kind = if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_file() {
        "regular file"
    } else {
        "other"
    };
    Kind {
        kind,
        inode: meta.ino(),
        device_number: meta.rdev(),
        owner: meta.uid(),
        link: fs::read_link(path).ok(),
    }
}

/// Checks that every path still is exactly what it was.
fn unchanged(before: &[(PathBuf, Kind)]) -> Result<(), String> {
    for (path, kind) in before {
        let now = kind_of(path);
        if &now != kind {
            return Err(format!(
                "{} was a {} and is now a {} ({now:?})",
                path.display(),
                kind.kind,
                now.kind
            ));
        }
    }
    Ok(())
}

/// Reads a FIFO from the other end, as a user's `cat fifo` would, until its writer closes it or
/// `give_up` passes. The read end is open (non-blocking) from the start, so the tool finds a
/// reader there.
fn read_fifo(path: &Path, give_up: Duration) -> JoinHandle<Vec<u8>> {
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .unwrap();
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut data = Vec::new();
        let mut buffer = vec![0u8; 1 << 16];
        while started.elapsed() < give_up {
            match file.read(&mut buffer) {
                // No writer yet, or the writer closed after writing: done once something came.
                Ok(0) if !data.is_empty() => break,
                Ok(0) => std::thread::sleep(Duration::from_millis(10)),
                Ok(n) => data.extend_from_slice(&buffer[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => panic!("reading the FIFO: {e}"),
            }
        }
        data
    })
}

/// A Python process that allocates a little all the time, started by the test.
struct Target {
    child: Child,
    _stdout: BufReader<ChildStdout>,
}

impl Target {
    fn start(program: &Path, args: &[&str]) -> Target {
        Target::start_in(program, args, Path::new("/"))
    }

    fn start_in(program: &Path, args: &[&str], dir: &Path) -> Target {
        let mut child = Command::new(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the target");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "the target did not start");
        Target {
            child,
            _stdout: stdout,
        }
    }

    fn pid(&self) -> String {
        self.child.id().to_string()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const GROWER: &str = "import time\nkept = []\nprint('ready', flush=True)\nwhile True:\n    \
                      kept.append(bytearray(4096))\n    del kept[:-2000]\n    time.sleep(0.002)\n";

/// Runs `command` to its end (within `limit`), returning its status, stdout and stderr.
fn run(command: &mut Command, limit: Duration) -> (ExitStatus, String, String, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pymemtrace");
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let err = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_with_timeout(&mut child, limit);
    let elapsed = started.elapsed();
    (status, out.join().unwrap(), err.join().unwrap(), elapsed)
}

/// Names of the temporary files an interrupted or failed write could leave in `dir`.
fn temporaries_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.contains(".tmp-"))
                .collect()
        })
        .unwrap_or_default()
}

/// `attach` writes every format into a FIFO with a reader, into /dev/null (directly and through
/// links of ours), and into a character device node: each stays what it was, the FIFO's reader
/// gets the whole output. Then `process` (-o, --plot, --gnuplot) the same way.
#[test]
fn attach_and_process_write_into_dev_null_fifos_and_devices_never_replacing_them() {
    require_root();
    let python = python();
    let scratch = Scratch::new("hostile-into");
    let dev = PrivateDev::new(&scratch);
    let dir = scratch.0.join("out");
    fs::create_dir(&dir).unwrap();
    let mut failures = Vec::new();

    // attach: the JSON into a FIFO being read, the event log (streamed during the run) into a
    // FIFO being read, the others into /dev/null through links, the table into a device node.
    let json_fifo = dir.join("growth.json");
    let log_fifo = dir.join("events.log");
    make_fifo(&json_fifo);
    make_fifo(&log_fifo);
    let mut paths = vec![json_fifo.clone(), log_fifo.clone()];
    for ext in ["txt", "svg", "speedscope.json"] {
        let link = dir.join(format!("null.{ext}"));
        std::os::unix::fs::symlink("/dev/null", &link).unwrap();
        paths.push(link);
    }
    let table = dir.join("growth.table");
    make_node(&table, libc::S_IFCHR, 1, 3);
    paths.push(table.clone());
    let mut before: Vec<(PathBuf, Kind)> = paths.iter().map(|p| (p.clone(), kind_of(p))).collect();
    before.push((dev.null(), kind_of(&dev.null())));
    let json_reader = read_fifo(&json_fifo, Duration::from_secs(60));
    let log_reader = read_fifo(&log_fifo, Duration::from_secs(60));
    let script = scratch.0.join("grower.py");
    fs::write(&script, GROWER).unwrap();
    let mut args: Vec<String> = ["attach", "--duration", "1", "--no-progress"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for path in &paths {
        args.extend(["-o".to_string(), path.display().to_string()]);
    }
    args.extend([
        "--".to_string(),
        python.path.display().to_string(),
        script.display().to_string(),
    ]);
    let (status, _, stderr, _) = run(dev.tool().args(&args), Duration::from_secs(60));
    let json = json_reader.join().unwrap();
    let log = log_reader.join().unwrap();
    let verdict = (|| {
        if !status.success() {
            return Err(format!("attach: {status}: {stderr}"));
        }
        unchanged(&before)?;
        let parsed: serde_json::Value = serde_json::from_slice(&json)
            .map_err(|e| format!("the JSON read from the FIFO ({} bytes): {e}", json.len()))?;
        if parsed["samples"].as_u64().unwrap_or(0) == 0 {
            return Err("the JSON read from the FIFO has no samples".into());
        }
        let log = String::from_utf8_lossy(&log);
        if !log.starts_with("HDR:") && !log.contains("EOF") {
            return Err(format!("the event log read from the FIFO: {log:?}"));
        }
        let left = temporaries_in(&dir);
        if !left.is_empty() {
            return Err(format!("temporary files left: {left:?}"));
        }
        Ok(format!(
            "JSON {} bytes and event log {} bytes through FIFOs",
            json.len(),
            log.len()
        ))
    })();
    record(&mut failures, "attach -o (every format)", verdict);

    // The issue's own case: --format json -o /dev/null, and /dev/null stays a device.
    let null_before = vec![(dev.null(), kind_of(&dev.null()))];
    let (status, _, stderr, _) = run(
        dev.tool().args([
            "attach",
            "--duration",
            "0.5",
            "--no-progress",
            "--format",
            "json",
            "-o",
            "/dev/null",
            "--",
            &python.path.display().to_string(),
            &script.display().to_string(),
        ]),
        Duration::from_secs(60),
    );
    let verdict = if status.success() {
        unchanged(&null_before).map(|()| "/dev/null is still the character device".to_string())
    } else {
        Err(format!("attach -o /dev/null: {status}: {stderr}"))
    };
    record(&mut failures, "attach --format json -o /dev/null", verdict);

    // process: the streamed log into /dev/null, the plot through a link to it, the gnuplot data
    // into a FIFO being read and the script into a device node.
    let sleeper = Target::start(
        &python.path,
        &[
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    let plot = dir.join("run.svg");
    std::os::unix::fs::symlink("/dev/null", &plot).unwrap();
    let dat = dir.join("run.dat");
    make_fifo(&dat);
    let plt = dir.join("run.plt");
    make_node(&plt, libc::S_IFCHR, 1, 3);
    let before: Vec<(PathBuf, Kind)> = [dev.null(), plot.clone(), dat.clone(), plt.clone()]
        .iter()
        .map(|p| (p.clone(), kind_of(p)))
        .collect();
    let dat_reader = read_fifo(&dat, Duration::from_secs(60));
    let (status, _, stderr, _) = run(
        dev.tool().args([
            "process",
            "--pid",
            &sleeper.pid(),
            "--interval",
            "0.05",
            "--duration",
            "0.5",
            "-q",
            "--no-labels",
            "-o",
            "/dev/null",
            "--plot",
            &plot.display().to_string(),
            "--gnuplot",
            &dir.join("run").display().to_string(),
        ]),
        Duration::from_secs(60),
    );
    let dat = String::from_utf8_lossy(&dat_reader.join().unwrap()).into_owned();
    let verdict = (|| {
        if !status.success() {
            return Err(format!("process: {status}: {stderr}"));
        }
        unchanged(&before)?;
        if !dat.starts_with("#t(s) RSS") || dat.lines().count() < 5 {
            return Err(format!("the .dat read from the FIFO: {dat:?}"));
        }
        let left = temporaries_in(&dir);
        if !left.is_empty() {
            return Err(format!("temporary files left: {left:?}"));
        }
        Ok(format!(
            "{} .dat lines through the FIFO",
            dat.lines().count()
        ))
    })();
    record(&mut failures, "process -o, --plot, --gnuplot", verdict);
    assert!(failures.is_empty(), "{failures:#?}");
}

fn record(failures: &mut Vec<String>, case: &str, verdict: Result<String, String>) {
    match verdict {
        Ok(figures) => eprintln!("{case}: ok, {figures}"),
        Err(why) => {
            eprintln!("{case}: FAILED: {why}");
            failures.push(format!("{case}: {why}"));
        }
    }
}

/// tracemalloc, mallocstats and dtrace write their --json into /dev/null and into a FIFO with a
/// reader: both stay what they were, the reader gets the whole JSON.
#[test]
fn json_of_tracemalloc_mallocstats_and_dtrace_goes_into_dev_null_and_fifos() {
    require_root();
    let python = python();
    let scratch = Scratch::new("hostile-json");
    let dev = PrivateDev::new(&scratch);
    let script = scratch.0.join("grower.py");
    fs::write(&script, GROWER).unwrap();
    let target = Target::start(&python.path, &[&script.display().to_string()]);
    let mut failures = Vec::new();
    let mut cases: Vec<(&str, Vec<String>)> = vec![
        (
            "tracemalloc",
            vec!["tracemalloc".into(), "--duration".into(), "0.5".into()],
        ),
        (
            "mallocstats",
            vec!["mallocstats".into(), "--duration".into(), "0.5".into()],
        ),
    ];
    if bpftrace_ready() {
        cases.push((
            "dtrace",
            ["dtrace", "--script", "malloc_count", "--duration", "1"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
        ));
    }
    for (name, base) in &cases {
        for into_fifo in [false, true] {
            let fifo = scratch.0.join(format!("{name}.json"));
            let path = if into_fifo {
                make_fifo(&fifo);
                fifo.clone()
            } else {
                dev.null()
            };
            let before = vec![(path.clone(), kind_of(&path))];
            let reader = into_fifo.then(|| read_fifo(&fifo, Duration::from_secs(90)));
            let shown = if into_fifo {
                path.display().to_string()
            } else {
                "/dev/null".to_string()
            };
            let (status, _, stderr, _) = run(
                dev.tool()
                    .args(base)
                    .args(["--pid", &target.pid(), "--json", &shown]),
                Duration::from_secs(90),
            );
            let received = reader.map(|r| r.join().unwrap());
            let verdict = (|| {
                if !status.success() {
                    return Err(format!("{status}: {stderr}"));
                }
                unchanged(&before)?;
                if let Some(json) = &received {
                    serde_json::from_slice::<serde_json::Value>(json).map_err(|e| {
                        format!("the JSON read from the FIFO ({} bytes): {e}", json.len())
                    })?;
                    return Ok(format!("{} bytes of JSON through the FIFO", json.len()));
                }
                Ok("/dev/null is still the character device".into())
            })();
            record(&mut failures, &format!("{name} --json {shown}"), verdict);
        }
    }
    assert!(
        bpftrace_ready() || !in_ci(),
        "dtrace could not run (CI=true)"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

/// In a shared directory (mode 1777, like /tmp), another user planted a link to a file of root's
/// and a FIFO at the output paths; elsewhere, an output path is a link to a regular file or a
/// block device. Every writer refuses each at once (exit 7, before the target is touched), and
/// nothing is followed, written, replaced or left behind.
#[test]
fn planted_links_and_fifos_and_block_devices_are_refused_by_every_writer() {
    require_root();
    let python = python();
    let scratch = Scratch::new("hostile-planted");
    let shared = scratch.0.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = scratch.0.join("victim");
    fs::write(&victim, "root's own").unwrap();
    fs::set_permissions(&victim, fs::Permissions::from_mode(0o600)).unwrap();
    let own = scratch.0.join("own");
    fs::create_dir(&own).unwrap();
    let target = Target::start(
        &python.path,
        &[
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    let pid = target.pid();

    // Every writer, given the output path `path` (its name must end as the writer expects).
    type Writer = (&'static str, &'static str, fn(&str, &str) -> Vec<String>);
    let mut writers: Vec<Writer> = vec![
        ("attach -o .json", "json", |pid, path| {
            to_args(&["attach", "--pid", pid, "--duration", "1", "-o", path])
        }),
        ("attach -o .log", "log", |pid, path| {
            to_args(&["attach", "--pid", pid, "--duration", "1", "-o", path])
        }),
        ("process -o", "jsonl", |pid, path| {
            to_args(&[
                "process",
                "--pid",
                pid,
                "--duration",
                "1",
                "-q",
                "--no-labels",
                "-o",
                path,
            ])
        }),
        ("process --plot", "png", |pid, path| {
            to_args(&[
                "process",
                "--pid",
                pid,
                "--duration",
                "1",
                "-q",
                "--no-labels",
                "--plot",
                path,
            ])
        }),
        ("process --gnuplot", "dat", |pid, path| {
            let prefix = path.strip_suffix(".dat").unwrap();
            to_args(&[
                "process",
                "--pid",
                pid,
                "--duration",
                "1",
                "-q",
                "--no-labels",
                "--gnuplot",
                prefix,
            ])
        }),
        ("tracemalloc --json", "json", |pid, path| {
            to_args(&[
                "tracemalloc",
                "--pid",
                pid,
                "--duration",
                "1",
                "--json",
                path,
            ])
        }),
        ("mallocstats --json", "json", |pid, path| {
            to_args(&[
                "mallocstats",
                "--pid",
                pid,
                "--duration",
                "1",
                "--json",
                path,
            ])
        }),
    ];
    if bpftrace_ready() {
        writers.push(("dtrace --json", "json", |pid, path| {
            to_args(&[
                "dtrace",
                "--pid",
                pid,
                "--script",
                "malloc_count",
                "--duration",
                "1",
                "--json",
                path,
            ])
        }));
    }
    let mut failures = Vec::new();
    let mut cases = 0;
    for (index, (writer, ext, args_for)) in writers.iter().enumerate() {
        // What is at the output path, and what the refusal must say.
        let planted_link = shared.join(format!("link{index}.{ext}"));
        std::os::unix::fs::symlink(&victim, &planted_link).unwrap();
        give_to(&planted_link, NOBODY);
        let planted_fifo = shared.join(format!("fifo{index}.{ext}"));
        make_fifo(&planted_fifo);
        give_to(&planted_fifo, NOBODY);
        let link_to_file = own.join(format!("link{index}.{ext}"));
        std::os::unix::fs::symlink(&victim, &link_to_file).unwrap();
        let disk = own.join(format!("disk{index}.{ext}"));
        // A loop device number no loop device uses: opened, it would fail, but renamed over,
        // the node is gone, which is what is checked.
        make_node(&disk, libc::S_IFBLK, 7, 250);
        for (what, path, says) in [
            (
                "a link another user planted",
                &planted_link,
                "may have been planted there",
            ),
            (
                "a FIFO another user planted",
                &planted_fifo,
                "may have been planted there",
            ),
            (
                "a link to a regular file",
                &link_to_file,
                "symbolic link to a regular file",
            ),
            ("a block device", &disk, "block device"),
        ] {
            cases += 1;
            let before = vec![
                (path.clone(), kind_of(path)),
                (victim.clone(), kind_of(&victim)),
            ];
            let (status, _, stderr, elapsed) = run(
                tool().args(args_for(&pid, &path.display().to_string())),
                Duration::from_secs(60),
            );
            let verdict = (|| {
                if status.code() != Some(7) {
                    return Err(format!("{status} (not exit 7): {stderr}"));
                }
                if !stderr.contains(says) {
                    return Err(format!("the refusal does not say {says:?}: {stderr}"));
                }
                unchanged(&before)?;
                let content = fs::read_to_string(&victim).unwrap();
                if content != "root's own" {
                    return Err(format!("the victim now holds {content:?}"));
                }
                for dir in [&shared, &own] {
                    let left = temporaries_in(dir);
                    if !left.is_empty() {
                        return Err(format!("temporary files left: {left:?}"));
                    }
                }
                Ok(format!("refused in {:.1} s", elapsed.as_secs_f64()))
            })();
            record(&mut failures, &format!("{writer} at {what}"), verdict);
        }
    }
    // The streamed log (process -o) is written in place, so an existing regular file is
    // truncated: never one another user left in the shared directory (they would read root's
    // log), nor a hard link to a file of root's.
    let planted_file = shared.join("planted.jsonl");
    fs::write(&planted_file, "nobody's").unwrap();
    fs::set_permissions(&planted_file, fs::Permissions::from_mode(0o666)).unwrap();
    give_to(&planted_file, NOBODY);
    let hard_link = own.join("hardlink.jsonl");
    fs::hard_link(&victim, &hard_link).unwrap();
    for (what, path, says, content) in [
        (
            "a file another user planted",
            &planted_file,
            "may have been planted there",
            "nobody's",
        ),
        (
            "a hard link to root's file",
            &hard_link,
            "other hard links",
            "root's own",
        ),
    ] {
        cases += 1;
        let (status, _, stderr, _) = run(
            tool().args([
                "process",
                "--pid",
                &pid,
                "--duration",
                "1",
                "-q",
                "--no-labels",
                "-o",
                &path.display().to_string(),
            ]),
            Duration::from_secs(60),
        );
        let now = fs::read_to_string(path).unwrap_or_default();
        let verdict = if status.code() == Some(7) && stderr.contains(says) && now == content {
            Ok("refused, not truncated".to_string())
        } else {
            Err(format!("{status}: {stderr}; the file now holds {now:?}"))
        };
        record(&mut failures, &format!("process -o at {what}"), verdict);
    }
    assert!(cases >= 30, "only {cases} cases ran");
    assert!(
        bpftrace_ready() || !in_ci(),
        "dtrace could not run (CI=true)"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}

fn to_args(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A FIFO of the user's own that nobody reads: the run ends within its duration plus the
/// patience for a reader (exit 7, the FIFO still there), both for an output written at the end
/// (attach -o) and for the log streamed from the start (process -o, which used to block in
/// open() for ever).
#[test]
fn a_fifo_nobody_reads_ends_the_run_within_its_deadline() {
    require_root();
    let python = python();
    let scratch = Scratch::new("hostile-fifo");
    let target = Target::start(
        &python.path,
        &[
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    let mut failures = Vec::new();
    let duration = Duration::from_secs(1);
    for (name, ext) in [("attach", "json"), ("process", "jsonl")] {
        let fifo = scratch.0.join(format!("unread.{ext}"));
        make_fifo(&fifo);
        let before = vec![(fifo.clone(), kind_of(&fifo))];
        let path = fifo.display().to_string();
        let seconds = duration.as_secs_f64().to_string();
        let args = if name == "attach" {
            to_args(&[
                "attach",
                "--pid",
                &target.pid(),
                "--duration",
                &seconds,
                "--no-progress",
                "-o",
                &path,
            ])
        } else {
            to_args(&[
                "process",
                "--pid",
                &target.pid(),
                "--duration",
                &seconds,
                "-q",
                "--no-labels",
                "-o",
                &path,
            ])
        };
        let deadline = duration + PATIENCE + LOADED_MACHINE_MARGIN;
        let (status, _, stderr, elapsed) = run(tool().args(&args), deadline);
        let verdict = (|| {
            if status.code() != Some(7) || !stderr.contains("no process opened this FIFO") {
                return Err(format!("{status}: {stderr}"));
            }
            unchanged(&before)?;
            Ok(format!(
                "ended after {:.1} s (deadline {:.0} s)",
                elapsed.as_secs_f64(),
                deadline.as_secs_f64()
            ))
        })();
        record(&mut failures, &format!("{name} -o an unread FIFO"), verdict);
        fs::remove_file(&fifo).unwrap();
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// Stop signals in the first milliseconds

/// A bit of a /proc/PID/status signal mask line.
fn status_mask(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok()
}

fn bit(signal: i32) -> u64 {
    1 << (signal - 1)
}

/// SIGINT or SIGTERM sent 0, 2, 5, 10 and 20 ms after the tool started, many times, to `process`
/// (log, plot and gnuplot files) and `attach` (JSON, SVG and event log). The documented outcome:
/// exit 0 with complete outputs, and no `.NAME.tmp-*` left. At the moment the signal is sent, the
/// test reads the tool's signal masks: once any of the tool's code runs (Rust's runtime has
/// installed its SIGSEGV handler), the signal must be blocked or caught. Only before that, while
/// the program is still being loaded, may it end the tool the default way, which must then have
/// created nothing.
#[test]
fn early_sigint_and_sigterm_end_as_documented_and_leave_no_temporary() {
    require_root();
    let _serial = serial();
    let python = python();
    let scratch = Scratch::new("hostile-early");
    let target = Target::start(
        &python.path,
        &[
            "-c",
            "import time\nprint('ready', flush=True)\ntime.sleep(600)",
        ],
    );
    let out = scratch.0.join("out");
    let mut failures = Vec::new();
    let mut handled = 0;
    let mut before_any_code = 0;
    let delays_ms = [0u64, 2, 5, 10, 20];
    for (tool_name, rounds) in [("process", 4), ("attach", 2)] {
        for round in 0..rounds {
            for delay in delays_ms {
                let signal = if (round + delay as usize).is_multiple_of(2) {
                    libc::SIGINT
                } else {
                    libc::SIGTERM
                };
                let _ = fs::remove_dir_all(&out);
                fs::create_dir(&out).unwrap();
                let file = |name: &str| out.join(name).display().to_string();
                let args = if tool_name == "process" {
                    to_args(&[
                        "process",
                        "--pid",
                        &target.pid(),
                        "--interval",
                        "0.05",
                        "-q",
                        "--no-labels",
                        "-o",
                        &file("run.jsonl"),
                        "--plot",
                        &file("run.svg"),
                        "--gnuplot",
                        &file("run"),
                    ])
                } else {
                    to_args(&[
                        "attach",
                        "--pid",
                        &target.pid(),
                        "--no-progress",
                        "-o",
                        &file("run.json"),
                        "-o",
                        &file("run.svg"),
                        "-o",
                        &file("run.log"),
                    ])
                };
                let mut child = tool()
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                std::thread::sleep(Duration::from_millis(delay));
                let blocked = status_mask(child.id(), "SigBlk:").unwrap_or(0);
                let caught = status_mask(child.id(), "SigCgt:").unwrap_or(0);
                // SAFETY: kill only sends a signal, to our own child.
                unsafe { libc::kill(child.id() as i32, signal) };
                let status = wait_with_timeout(&mut child, Duration::from_secs(60));
                let mut stderr = String::new();
                let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
                let protected = (blocked | caught) & bit(signal) != 0;
                let tool_code_ran = caught & bit(libc::SIGSEGV) != 0;
                let case = format!("{tool_name}, signal {signal} after {delay} ms (round {round})");
                let verdict = (|| {
                    let left = temporaries_in(&out);
                    if !left.is_empty() {
                        return Err(format!("temporary files left: {left:?}"));
                    }
                    if tool_code_ran && !protected {
                        return Err(format!(
                            "the tool's code was running with signal {signal} neither blocked nor \
                             caught (SigBlk {blocked:x}, SigCgt {caught:x}); it ended with {status}"
                        ));
                    }
                    if status.signal() == Some(signal) && !protected {
                        let created: Vec<_> = fs::read_dir(&out).unwrap().flatten().collect();
                        if !created.is_empty() {
                            return Err(format!("killed by the signal after creating {created:?}"));
                        }
                        return Ok("ended by the signal before any of its code ran".to_string());
                    }
                    if !status.success() {
                        return Err(format!("{status}: {stderr}"));
                    }
                    complete_outputs(tool_name, &out)
                })();
                match &verdict {
                    Ok(how) if how.starts_with("ended by the signal") => before_any_code += 1,
                    Ok(_) => handled += 1,
                    Err(_) => {}
                }
                if let Err(why) = verdict {
                    eprintln!("{case}: FAILED: {why}");
                    failures.push(format!("{case}: {why}"));
                }
            }
        }
    }
    eprintln!(
        "early signals: {handled} handled (exit 0, complete outputs), {before_any_code} arrived \
         before any of the tool's code ran"
    );
    assert!(failures.is_empty(), "{failures:#?}");
    assert!(handled > 0, "no signal was handled");
}

/// The outputs of an interrupted run, complete.
fn complete_outputs(tool_name: &str, out: &Path) -> Result<String, String> {
    let read = |name: &str| fs::read_to_string(out.join(name)).map_err(|e| format!("{name}: {e}"));
    let svg = read("run.svg")?;
    if !svg.trim_end().ends_with("</svg>") {
        return Err(format!("run.svg is cut short ({} bytes)", svg.len()));
    }
    if tool_name == "process" {
        for line in read("run.jsonl")?.lines() {
            serde_json::from_str::<serde_json::Value>(line)
                .map_err(|e| format!("run.jsonl: {e}: {line}"))?;
        }
        if !read("run.dat")?.starts_with("#t(s)") || read("run.plt")?.is_empty() {
            return Err("the gnuplot files are incomplete".into());
        }
    } else {
        serde_json::from_str::<serde_json::Value>(&read("run.json")?)
            .map_err(|e| format!("run.json: {e}"))?;
        if !read("run.log")?.contains("EOF") {
            return Err("run.log has no end line".into());
        }
    }
    Ok("exit 0, complete outputs".into())
}

// ---------------------------------------------------------------------------------------------
// Numeric options

/// Every numeric option, given a value out of range, NaN or infinite: one line, exit 2, no panic,
/// before the target is looked at (the target here is not Python, so a check that came after
/// looking at it would give exit 4).
#[test]
fn numeric_options_out_of_range_get_one_line_and_exit_2() {
    let mut sleeper = Command::new("sleep").arg("120").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let seconds_options: &[(&[&str], &str)] = &[
        (&["attach", "--duration"], "--duration"),
        (&["process", "--interval"], "--interval"),
        (&["process", "--duration"], "--duration"),
        (&["tracemalloc", "--duration"], "--duration"),
        (&["tracemalloc", "--timeout"], "--timeout"),
        (&["mallocstats", "--duration"], "--duration"),
        (&["mallocstats", "--timeout"], "--timeout"),
        (
            &["dtrace", "--script", "malloc_count", "--duration"],
            "--duration",
        ),
        (&["ping", "--timeout"], "--timeout"),
    ];
    let rate_options: &[(&[&str], &str)] = &[
        (&["attach", "--rate"], "--rate"),
        (&["attach", "--max-rate"], "--max-rate"),
    ];
    let mut cases: Vec<(Vec<String>, String)> = Vec::new();
    for (options, values) in [
        (
            seconds_options,
            &["1e19", "1e300", "2e9", "nan", "inf", "-inf", "-1", "0"][..],
        ),
        (
            rate_options,
            &["1e19", "1e300", "1e7", "nan", "inf", "-inf", "-1", "0"][..],
        ),
    ] {
        for (prefix, flag) in options {
            for value in values {
                let mut args = vec![prefix[0].to_string(), "--pid".into(), pid.clone()];
                args.extend(prefix[1..].iter().map(|s| s.to_string()));
                args.push(value.to_string());
                cases.push((args, flag.to_string()));
            }
        }
    }
    for subcommand in [
        "attach",
        "process",
        "tracemalloc",
        "mallocstats",
        "dtrace",
        "ping",
    ] {
        for value in ["0", "-1", "99999999999"] {
            let mut args = to_args(&[subcommand, "--pid", value]);
            if subcommand == "dtrace" {
                args.extend(to_args(&["--script", "malloc_count"]));
            }
            cases.push((args, "--pid".into()));
        }
    }
    for (args, flag) in [
        (&["attach", "--top", "-1"][..], "--top"),
        (&["attach", "--trigger", "-1"], "--trigger"),
        (&["attach", "--depth", "-1"], "--depth"),
        (&["attach", "--precise", "--depth", "0"], "--depth"),
        (&["attach", "--precise", "--depth", "4294967295"], "--depth"),
        (&["tracemalloc", "--frames", "0"], "--frames"),
        (&["tracemalloc", "--frames", "1e19"], "--frames"),
        (&["tracemalloc", "--top", "-1"], "--top"),
        (
            &["dtrace", "--script", "malloc_count", "--top", "-1"],
            "--top",
        ),
    ] {
        let mut full = vec![args[0].to_string(), "--pid".into(), pid.clone()];
        full.extend(args[1..].iter().map(|s| s.to_string()));
        cases.push((full, flag.to_string()));
    }
    let mut failures = Vec::new();
    for (args, flag) in &cases {
        let (status, _, stderr, _) = run(tool().args(args), Duration::from_secs(30));
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let value = args.last().unwrap();
        let ok = status.code() == Some(2)
            && lines.len() == 1
            && lines[0].starts_with("pymemtrace: error: ")
            && (lines[0].contains(flag.as_str()) || lines[0].contains(value.as_str()))
            && !stderr.contains("panicked");
        if !ok {
            failures.push(format!("{}: {status}: {stderr:?}", args.join(" ")));
        }
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    eprintln!(
        "{} numeric option cases, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(cases.len() > 100, "only {} cases", cases.len());
    assert!(failures.is_empty(), "{failures:#?}");
}

// ---------------------------------------------------------------------------------------------
// Escape sequences in target-chosen names

/// An OSC sequence that retitles the terminal, and one that clears it.
const TITLE: &str = "\x1b]0;pwned\x07";
const CLEAR: &str = "\x1b[2J";

/// The same two, as Python source.
const PYTHON_TITLE: &str = r"\x1b]0;pwned\x07";
const PYTHON_CLEAR: &str = r"\x1b[2J";

/// A target whose file name, function name (its code object's name) and command line carry
/// escape sequences, and which allocates in that function all the time. It runs in the scratch
/// directory with short names, so that the headers (which cut command lines at 60 characters)
/// show them.
fn escape_target(scratch: &Scratch, python: &Interpreter) -> Target {
    let name = format!("e{TITLE}.py");
    let function = format!("'{PYTHON_TITLE}grow{PYTHON_CLEAR}'");
    fs::write(
        scratch.0.join(&name),
        format!(
            "import sys, time\n\
             def grow(kept):\n    kept.append(bytearray(4096))\n    del kept[:-3000]\n\
             fields = {{'co_name': {function}}}\n\
             if sys.version_info >= (3, 11):\n    fields['co_qualname'] = {function}\n\
             grow.__code__ = grow.__code__.replace(**fields)\n\
             kept = []\n\
             grow(kept)\n\
             print('ready', flush=True)\n\
             while True:\n    for _ in range(20):\n        grow(kept)\n    time.sleep(0.005)\n"
        ),
    )
    .unwrap();
    Target::start_in(
        &python.path,
        &[&name, &format!("a{TITLE}{CLEAR}")],
        &scratch.0,
    )
}

/// No escape sequence of the target's reaches the terminal from any subcommand: what each prints
/// (its table on stdout, its header and messages on stderr) holds no ESC, BEL or C1 control, and
/// shows the names masked (`?]0;pwned?`, or with spaces in a command line). tracemalloc's JSON
/// keeps the exact file name.
#[test]
fn escape_sequences_in_target_names_never_reach_the_terminal() {
    require_root();
    let python = python();
    let scratch = Scratch::new("hostile-escapes");
    let target = escape_target(&scratch, &python);
    let pid = target.pid();
    let json = scratch.path("tracemalloc.json");
    let mut runs: Vec<(&str, Vec<String>)> = vec![
        (
            "attach",
            to_args(&["attach", "--pid", &pid, "--duration", "1", "--no-progress"]),
        ),
        (
            "process",
            to_args(&[
                "process",
                "--pid",
                &pid,
                "--duration",
                "0.3",
                "--interval",
                "0.1",
                "--no-labels",
            ]),
        ),
        (
            "tracemalloc",
            to_args(&[
                "tracemalloc",
                "--pid",
                &pid,
                "--duration",
                "0.5",
                "--json",
                &json,
            ]),
        ),
        (
            "mallocstats",
            to_args(&["mallocstats", "--pid", &pid, "--duration", "0.3"]),
        ),
    ];
    if bpftrace_ready() {
        runs.push((
            "dtrace",
            to_args(&[
                "dtrace",
                "--pid",
                &pid,
                "--script",
                "py_malloc",
                "--duration",
                "2",
            ]),
        ));
        runs.push((
            "dtrace --raw",
            to_args(&[
                "dtrace",
                "--pid",
                &pid,
                "--script",
                "py_malloc",
                "--duration",
                "2",
                "--raw",
            ]),
        ));
    }
    let mut failures = Vec::new();
    for (name, args) in &runs {
        let (status, stdout, stderr, _) = run(tool().args(args), Duration::from_secs(90));
        let both = format!("{stdout}{stderr}");
        let verdict = (|| {
            if !status.success() {
                return Err(format!("{status}: {stderr}"));
            }
            let raw: Vec<char> = both
                .chars()
                .filter(|&c| c == '\x1b' || c == '\x07' || ('\u{80}'..='\u{9f}').contains(&c))
                .collect();
            if !raw.is_empty() {
                return Err(format!(
                    "{} control characters reached the terminal: {both:?}",
                    raw.len()
                ));
            }
            // The names are shown, masked (the /proc reader already turns the command line's
            // control characters into spaces; the rest become `?`): the command line in every
            // header, the file and function names in the tables that list them.
            if !both.contains("]0;pwned") {
                return Err(format!("no masked name in the output: {both:?}"));
            }
            Ok("nothing raw".to_string())
        })();
        record(&mut failures, name, verdict);
    }
    // JSON keeps the truth: the file name with its escape sequence, escaped by JSON itself.
    let text = fs::read_to_string(&json).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !text.contains("\\u001b]0;pwned\\u0007") || !value.to_string().contains("\\u001b") {
        failures.push(format!(
            "tracemalloc JSON does not keep the exact file name: {text:.400}"
        ));
    }
    assert!(
        bpftrace_ready() || !in_ci(),
        "dtrace could not run (CI=true)"
    );
    assert!(failures.is_empty(), "{failures:#?}");
}
