//! `pymemtrace dtrace` with the real bpftrace, as root, against real Python processes: libc malloc
//! counts and histogram buckets, leaked blocks found with the function that leaked them, malloc
//! bytes by Python function, exact garbage collections, `--list` and the not-root error.
//!
//! bpftrace must be installed (`apt-get install bpftrace`); under CI=true its absence fails.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The tool tracing `pid`, started in the background; returns once its probes are attached.
fn start_tracing(pid: i32, script: &str, extra: &[&str]) -> Result<(Child, String), String> {
    let mut child = tool()
        .args(["dtrace", "--pid", &pid.to_string(), "--script", script])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start pymemtrace");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    if !line.starts_with("pymemtrace: tracing PID") {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
        let _ = child.wait();
        return Err(format!("tool said {line:?} {rest:?}"));
    }
    // Keep draining stderr so the tool never blocks on it.
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
    });
    Ok((child, line))
}

/// Interrupts the tool as Ctrl-C would, and waits for it.
fn stop_tracing(mut child: Child) -> Result<String, String> {
    sigint(child.id());
    let status = wait_with_timeout(&mut child, Duration::from_secs(60));
    let mut stdout = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut stdout).unwrap();
    if !status.success() {
        return Err(format!("tool exited {status}: {stdout}"));
    }
    Ok(stdout)
}

/// Runs `script` on `fixture_name` under `python`: attach, let the fixture work, stop, read the JSON.
fn trace_fixture(
    python: &Path,
    fixture_name: &str,
    fixture_args: &[&str],
    script: &str,
    tool_args: &[&str],
) -> Result<(Value, String), String> {
    let scratch = Scratch::new(&format!("dtrace-{script}"));
    let json = scratch.path("out.json");
    let mut target = WaitingTarget::start(python, fixture_name, fixture_args);
    let mut args = vec!["--json", json.as_str()];
    args.extend_from_slice(tool_args);
    let (child, _) = start_tracing(target.pid(), script, &args)?;
    target.go();
    let started = Instant::now();
    target.wait_done();
    if started.elapsed() > Duration::from_secs(60) {
        return Err("fixture took over a minute".into());
    }
    std::thread::sleep(Duration::from_millis(300));
    let table = stop_tracing(child)?;
    Ok((read_json(&json), table))
}

fn labels(python: &Interpreter) -> (u32, u32) {
    let version = Command::new(&python.path)
        .args(["-c", "import sys; print('%d %d' % sys.version_info[:2])"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&version.stdout);
    let mut parts = text.split_whitespace().map(|p| p.parse::<u32>().unwrap());
    (parts.next().unwrap(), parts.next().unwrap())
}

/// Python frames are readable on 3.8-3.13 (the offset table).
fn frames_readable(python: &Interpreter) -> bool {
    matches!(labels(python), (3, 8..=13))
}

fn bucket_count(histogram: &Value, low: i64) -> u64 {
    histogram["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["low"].as_i64() == Some(low))
        .map(|b| b["count"].as_u64().unwrap())
        .sum()
}

/// 1000 mallocs each of 700, 3000 and 100,000 bytes through ctypes: malloc_count counts at least
/// that many, and each size lands in its log2 bucket ([512, 1K), [2K, 4K), [64K, 128K)) at least
/// 1000 times, the 100,000-byte bucket (where the interpreter itself hardly allocates) at most 1050.
#[test]
fn malloc_count_counts_known_mallocs_in_their_log2_buckets() {
    if !bpftrace_ready() {
        return;
    }
    let _serial = serial();
    on_every_interpreter("malloc_count", |python| {
        let (json, table) = trace_fixture(
            &python.path,
            "native_mallocs.py",
            &["--count", "1000"],
            "malloc_count",
            &[],
        )?;
        let malloc = json["totals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["function"] == "malloc")
            .ok_or(format!("no malloc row:\n{table}"))?;
        let calls = malloc["calls"].as_i64().unwrap();
        let bytes = malloc["bytes"].as_i64().unwrap();
        if calls < 3000 || bytes < 1000 * (700 + 3000 + 100_000) {
            return Err(format!("malloc: {calls} calls, {bytes} bytes"));
        }
        let histogram = json["histograms"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["function"] == "malloc")
            .ok_or("no malloc histogram")?;
        let small = bucket_count(histogram, 512);
        let medium = bucket_count(histogram, 2048);
        let large = bucket_count(histogram, 65536);
        if small < 1000 || medium < 1000 || !(1000..=1050).contains(&large) {
            return Err(format!(
                "buckets [512,1K) {small}, [2K,4K) {medium}, [64K,128K) {large}"
            ));
        }
        if json["complete"] != true || json["end"] != "interrupted" {
            return Err(format!("complete {} end {}", json["complete"], json["end"]));
        }
        let per_second: i64 = json["per_second"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["calls"]["malloc"].as_i64().unwrap_or(0))
            .sum();
        if per_second > calls {
            return Err(format!("per-second calls {per_second} > total {calls}"));
        }
        Ok(format!(
            "{calls} mallocs, buckets {small}/{medium}/{large}, {per_second} in whole seconds"
        ))
    });
}

/// native_leak.py leaks 100 blocks of 4242 bytes from leak_blocks() and mallocs and frees 200
/// more of that size: malloc_outstanding reports exactly 100 live blocks of 4242 bytes, in one
/// group whose caller is libffi (ctypes' call; the copy inside _ctypes on some builds) and, where Python frames are readable (3.8-3.13),
/// whose Python function is leak_blocks in native_leak.py.
#[test]
fn malloc_outstanding_finds_the_leaked_blocks_and_the_function_that_leaked_them() {
    if !bpftrace_ready() {
        return;
    }
    let _serial = serial();
    on_every_interpreter("malloc_outstanding", |python| {
        let (json, table) = trace_fixture(
            &python.path,
            "native_leak.py",
            &["--count", "100", "--size", "4242"],
            "malloc_outstanding",
            &["-D", "min_age_ms=100"],
        )?;
        let outstanding = &json["outstanding"];
        let groups = outstanding["groups"].as_array().ok_or("no groups")?;
        let of_size = |g: &Value| g["sizes"]["4242"].as_i64().unwrap_or(0);
        let total: i64 = groups.iter().map(of_size).sum();
        if total != 100 {
            return Err(format!(
                "{total} live blocks of 4242 bytes, not 100:\n{table}"
            ));
        }
        let group = groups
            .iter()
            .find(|g| of_size(g) == 100)
            .ok_or(format!("the 100 blocks are split over groups:\n{table}"))?;
        let caller = group["caller"].as_str().unwrap_or("");
        // ctypes calls malloc from libffi's ffi_call_unix64: the system's libffi, or the copy
        // bundled into _ctypes (pyenv's 2.7 and 3.7).
        if !caller.contains("libffi") && !caller.contains("_ctypes") {
            return Err(format!(
                "caller {caller:?}, not libffi or _ctypes:\n{table}"
            ));
        }
        if frames_readable(python) {
            let function = group["python"]["function"].as_str().unwrap_or("");
            let file = group["python"]["file"].as_str().unwrap_or("");
            if function != "leak_blocks" || !file.ends_with("native_leak.py") {
                return Err(format!(
                    "Python function {function:?} in {file:?}:\n{table}"
                ));
            }
        }
        Ok(format!(
            "100 x 4242 B from {caller}, Python {}",
            group["python"]["function"]
        ))
    });
}

/// py_allocs.py: grow_buffers makes 200 bytearrays of 200,000 bytes (malloc with the GIL held),
/// native_calls 200 ctypes mallocs of 300,000 bytes (the GIL released), small_objects only
/// small tuples: py_malloc charges 40 MB (within 5%) to grow_buffers and 60 MB to native_calls,
/// both in py_allocs.py, and under a tenth of that to small_objects. On 3.8-3.13 and Debian's 3.11.
#[test]
fn py_malloc_names_the_allocating_python_functions() {
    if !bpftrace_ready() {
        return;
    }
    let _serial = serial();
    on_every_interpreter("py_malloc", |python| {
        if !frames_readable(python) {
            return Ok("not supported (no offset table): checked by the --list test".into());
        }
        let (json, table) = trace_fixture(
            &python.path,
            "py_allocs.py",
            &["--count", "200"],
            "py_malloc",
            &[],
        )?;
        let rows = json["python_functions"].as_array().ok_or("no rows")?;
        let bytes_of = |name: &str| -> Result<i64, String> {
            let row = rows
                .iter()
                .find(|r| r["function"] == name)
                .ok_or(format!("{name} not in the report:\n{table}"))?;
            if !row["file"].as_str().unwrap_or("").ends_with("py_allocs.py") {
                return Err(format!("{name} in {}", row["file"]));
            }
            Ok(row["bytes"].as_i64().unwrap())
        };
        let grow = bytes_of("grow_buffers")?;
        let native = bytes_of("native_calls")?;
        let small = rows
            .iter()
            .find(|r| r["function"] == "small_objects")
            .map_or(0, |r| r["bytes"].as_i64().unwrap());
        let within = |value: i64, truth: i64| (truth..=truth + truth / 20).contains(&value);
        if !within(grow, 40_000_000) || !within(native, 60_000_000) || small * 10 > grow {
            return Err(format!(
                "grow_buffers {grow}, native_calls {native}, small_objects {small}:\n{table}"
            ));
        }
        Ok(format!(
            "grow_buffers {grow} B, native_calls {native} B, small_objects {small} B"
        ))
    });
}

/// gc_cycles.py turns automatic collection off and calls gc.collect() 5 times: py_gc sees exactly
/// 5 collections, all of generation 2, each with the count that gc.collect() returned. Debian's 3.11
/// through its USDT probes (required); pyenv's 3.9-3.13 through the collection function.
#[test]
fn py_gc_sees_exactly_the_explicit_collections() {
    if !bpftrace_ready() {
        return;
    }
    let _serial = serial();
    let interpreters = interpreters();
    assert!(
        interpreters.iter().any(|p| p.label == "debian-3.11") || !in_ci(),
        "Debian's python3.11 (USDT gc probes) is required under CI"
    );
    on_every_interpreter("py_gc", |python| {
        if !(python.label == "debian-3.11" || matches!(labels(python), (3, 9..=13))) {
            return Ok("not supported: checked by the --list test".into());
        }
        let scratch = Scratch::new("gc");
        let json_path = scratch.path("gc.json");
        let mut target = Command::new(&python.path)
            .arg(fixture("gc_cycles.py"))
            .args(["--wait", "--collections", "5", "--cycles", "1000"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(target.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let pid = target.id() as i32;
        let result = (|| {
            let (child, _) = start_tracing(pid, "py_gc", &["--json", &json_path])?;
            drop(target.stdin.take());
            let mut done = String::new();
            stdout.read_line(&mut done).unwrap();
            let expected: Vec<i64> = done
                .trim()
                .trim_start_matches("done collected=")
                .split(',')
                .map(|c| c.parse().unwrap())
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let table = stop_tracing(child)?;
            let json = read_json(&json_path);
            let collections = json["collections"].as_array().unwrap();
            let seen: Vec<(i64, i64)> = collections
                .iter()
                .map(|c| {
                    (
                        c["generation"].as_i64().unwrap(),
                        c["collected"].as_i64().unwrap(),
                    )
                })
                .collect();
            let wanted: Vec<(i64, i64)> = expected.iter().map(|&c| (2, c)).collect();
            if seen != wanted {
                return Err(format!(
                    "saw {seen:?}, the fixture did {wanted:?}:\n{table}"
                ));
            }
            Ok(format!(
                "{} collections of generation 2, collected {expected:?}",
                seen.len()
            ))
        })();
        let _ = target.kill();
        let _ = target.wait();
        result
    });
}

/// `--list --pid`: every catalogue entry is listed, and whether it runs matches what each
/// interpreter allows: malloc_count and malloc_outstanding everywhere; py_malloc on 3.8-3.13;
/// py_gc with USDT (Debian) or on 3.9-3.13; pymalloc wherever PyObject_Malloc is a symbol. Every
/// script that runs prints a filled script with no placeholder left.
#[test]
fn list_says_which_scripts_run_on_each_interpreter() {
    let names = [
        "malloc_count",
        "malloc_outstanding",
        "py_malloc",
        "py_flow_malloc_free",
        "pymalloc",
        "py_gc",
    ];
    on_every_interpreter("list", |python| {
        let mut target = WaitingTarget::start(&python.path, "native_mallocs.py", &[]);
        let scratch = Scratch::new("list");
        let json_path = scratch.path("list.json");
        let output = run_to_end(tool().args([
            "dtrace",
            "--list",
            "--pid",
            &target.pid().to_string(),
            "--json",
            &json_path,
        ]));
        if !output.status.success() {
            return Err(format!("exit {}", output.status));
        }
        let json = read_json(&json_path);
        let rows = json["scripts"].as_array().unwrap();
        let listed: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
        if listed != names {
            return Err(format!("listed {listed:?}"));
        }
        let (major, minor) = labels(python);
        let frames = major == 3 && (8..=13).contains(&minor);
        let gc = python.label == "debian-3.11" || (major == 3 && (9..=13).contains(&minor));
        let expected = [true, true, frames, frames, true, gc];
        for (row, want) in rows.iter().zip(expected) {
            let runs = row["runs_here"].as_bool().unwrap();
            if runs != want {
                return Err(format!(
                    "{}: runs_here {runs}, expected {want}: {}",
                    row["name"], row["why_not"]
                ));
            }
            if runs {
                let script = run_to_end(tool().args([
                    "dtrace",
                    "--print-script",
                    "--pid",
                    &target.pid().to_string(),
                    "--script",
                    row["name"].as_str().unwrap(),
                ]));
                let text = String::from_utf8_lossy(&script.stdout);
                let left = text.split('@').skip(1).step_by(1).any(|part| {
                    let word: String = part
                        .chars()
                        .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                        .collect();
                    word.len() > 2 && part[word.len()..].starts_with('@')
                });
                if !script.status.success()
                    || left
                    || !text.contains(&format!("pid {}", target.pid()))
                {
                    return Err(format!(
                        "{}: --print-script exit {}, placeholder left {left}",
                        row["name"], script.status
                    ));
                }
            } else if row["why_not"].as_str().is_none_or(|w| w.is_empty()) {
                return Err(format!("{}: no reason given", row["name"]));
            }
        }
        target.go();
        Ok(format!(
            "{} of 6 run here",
            expected.iter().filter(|&&e| e).count()
        ))
    });
}

/// Not root: exit code 11 and a message saying to use sudo.
#[test]
fn not_root_exits_11_and_says_to_use_sudo() {
    let scratch = Scratch::new("dtrace-root");
    let binary = scratch.0.join("pymemtrace");
    std::fs::copy(env!("CARGO_BIN_EXE_pymemtrace"), &binary).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let output = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&binary)
        .args([
            "dtrace",
            "--pid",
            "1",
            "--script",
            "malloc_count",
            "--backend",
            "bpftrace",
        ])
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(11), "{stderr}");
    assert!(
        stderr.contains("root") && (stderr.contains("sudo") || stderr.contains("install")),
        "{stderr}"
    );
}
