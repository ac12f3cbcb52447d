//! `pymemtrace attach` against real Python processes on every interpreter: attribution against
//! known truth, every way a run can end, every output format, every user error.

mod common;

use std::time::Duration;

use common::*;

fn within(actual: f64, truth: f64, points: f64) -> bool {
    (actual - truth).abs() <= points / 100.0
}

/// (a) keep_big retains 200 MB and keep_small 100 MB (2/3 and 1/3), churn nets zero over 300 MB
/// of traffic, burn_cpu nothing. Attach mode, default settings; the target exits at the end.
/// Every function is held to the 10 points; typical errors are under 1 point (a release at
/// churn's end seen only after it returned can put a few points on burn_cpu: how-it-works.md).
#[test]
fn retained_memory_is_charged_to_the_functions_that_keep_it() {
    let _serial = serial();
    let fixture_name = "leak_by_function.py";
    on_every_interpreter("leak_by_function", |python| {
        let scratch = Scratch::new("truth-a");
        let json = scratch.path("result.json");
        let mut target = WaitingTarget::start(&python.path, fixture_name, &[]);
        let pid = target.pid().to_string();
        let (mut run, _stderr) = start_tool(&["attach", "--pid", &pid, "-o", &json]);
        target.go();
        let status = wait_with_timeout(&mut run, Duration::from_secs(60));
        if !status.success() {
            return Err(format!("exit status {status}"));
        }
        let result = read_json(&json);
        let version = result["target"]["python_version"].as_str().unwrap_or("");
        let expected_version = python.label.trim_start_matches("debian-");
        if !version.starts_with(expected_version) {
            return Err(format!("reported Python {version}"));
        }
        if result["end"] != "target exited" {
            return Err(format!("end: {}", result["end"]));
        }
        let (big, small) = (share(&result, "keep_big"), share(&result, "keep_small"));
        let churn_grown = self_bytes(&result, "churn", "grown");
        let churn_released = self_bytes(&result, "churn", "released");
        let churn_share = share(&result, "churn");
        let cpu_share = share(&result, "burn_cpu");
        let figures = format!(
            "keep_big {:.1}%, keep_small {:.1}%, churn grown {} MB released {} MB share {:.1}%, burn_cpu {:.1}%, lost {}",
            big * 100.0, small * 100.0, churn_grown / 1_000_000, churn_released / 1_000_000,
            churn_share * 100.0, cpu_share * 100.0, result["lost"]
        );
        let big_line = common::line_of(fixture_name, "b\"B\" * CHUNK");
        let reported_line =
            function(&result, "keep_big").map_or(0, |f| f["line"].as_i64().unwrap());
        if !within(big, 2.0 / 3.0, 10.0) || !within(small, 1.0 / 3.0, 10.0) {
            return Err(judged(&result, format!("shares off: {figures}")));
        }
        if churn_grown < 200_000_000
            || churn_released < 200_000_000
            || !within(churn_share, 0.0, 10.0)
        {
            return Err(judged(
                &result,
                format!("churn should move 300 MB and net about zero: {figures}"),
            ));
        }
        if !within(cpu_share, 0.0, 10.0) {
            return Err(judged(
                &result,
                format!("burn_cpu should get about nothing: {figures}"),
            ));
        }
        if reported_line != big_line {
            return Err(format!(
                "keep_big reported at line {reported_line}, allocates at {big_line}"
            ));
        }
        if result["lost_fraction"].as_f64().unwrap() > 0.01 {
            return Err(format!("lost more than 1% of reads: {figures}"));
        }
        Ok(figures)
    });
}

/// (b) Bursts between CPU-only work plus an allocating worker thread; spawn mode.
///
/// Main-thread functions are held to 10 points each. The worker thread is held to 10 points as a
/// whole (`worker` and the `worker_alloc` and `worker_idle` it calls): its 0.5 MB steps often
/// complete between two stack reads, and sampling cannot then tell `worker_alloc` from the
/// `worker_idle` it ran next or the loop between them (docs/how-it-works.md, "Limits").
#[test]
fn bursty_program_with_a_worker_thread_is_attributed_within_ten_points() {
    let _serial = serial();
    let main_thread_truth = [("burst_big", 0.50), ("burst_small", 0.25), ("compute", 0.0)];
    on_every_interpreter("bursty", |python| {
        let scratch = Scratch::new("truth-b");
        let json = scratch.path("result.json");
        let output = run_to_end(
            tool()
                .args(["attach", "-o", &json, "--"])
                .arg(&python.path)
                .arg(fixture("bursty.py")),
        );
        if !output.status.success() {
            return Err(format!(
                "exit {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let result = read_json(&json);
        // The worker thread's own code: its loop and the two functions it calls.
        let worker = share(&result, "worker")
            + share(&result, "worker_alloc")
            + share(&result, "worker_idle");
        let mut figures: Vec<String> = main_thread_truth
            .iter()
            .map(|(name, _)| format!("{name} {:.1}%", share(&result, name) * 100.0))
            .collect();
        figures.push(format!(
            "worker thread {:.1}% (worker_alloc {:.1}%)",
            worker * 100.0,
            share(&result, "worker_alloc") * 100.0
        ));
        let figures = figures.join(", ");
        for (name, expected) in main_thread_truth {
            if !within(share(&result, name), expected, 10.0) {
                return Err(judged(
                    &result,
                    format!("{name} off by more than 10 points: {figures}"),
                ));
            }
        }
        if !within(worker, 0.25, 10.0) {
            return Err(judged(
                &result,
                format!("worker thread off by more than 10 points: {figures}"),
            ));
        }
        Ok(figures)
    });
}

/// Ctrl-C (SIGINT to the tool) in attach mode: complete outputs, exit 0, the target untouched.
#[test]
fn interrupt_in_attach_mode_writes_every_output_and_leaves_the_target_running() {
    let _serial = serial();
    on_every_interpreter("sigint-attach", |python| {
        let scratch = Scratch::new("sigint");
        let base = scratch.path("run");
        let mut target = WaitingTarget::start(
            &python.path,
            "leak_by_function.py",
            &["--linger", "--scale", "0.3"],
        );
        let pid = target.pid().to_string();
        let mut args = vec!["attach".to_string(), "--pid".into(), pid];
        args.extend(output_args(&base));
        let (mut run, _stderr) = start_tool(&args);
        target.go();
        target.wait_done();
        sigint(run.id());
        let status = wait_with_timeout(&mut run, Duration::from_secs(30));
        if !status.success() {
            return Err(format!("exit status {status}"));
        }
        if !target.is_running() {
            return Err("the target did not survive".into());
        }
        check_all_outputs(&base, "keep_big")?;
        let result = read_json(&format!("{base}.json"));
        if result["end"] != "interrupted" {
            return Err(format!("end: {}", result["end"]));
        }
        Ok(format!(
            "keep_big {:.1}%",
            share(&result, "keep_big") * 100.0
        ))
    });
}

/// --duration in attach mode: stops by itself, target untouched; spawn mode with target exit and
/// with SIGINT: complete outputs, and a spawned child never outlives the tool.
#[test]
fn duration_spawn_and_target_exit_each_end_with_complete_outputs() {
    let _serial = serial();
    on_every_interpreter("modes", |python| {
        let scratch = Scratch::new("modes");

        // --duration while the target keeps running.
        let base = scratch.path("duration");
        let mut target = WaitingTarget::start(
            &python.path,
            "leak_by_function.py",
            &["--linger", "--scale", "0.3"],
        );
        let pid = target.pid().to_string();
        let mut args = vec![
            "attach".to_string(),
            "--pid".into(),
            pid,
            "--duration".into(),
            "1.5".into(),
        ];
        args.extend(output_args(&base));
        let (mut run, _stderr) = start_tool(&args);
        target.go();
        let status = wait_with_timeout(&mut run, Duration::from_secs(30));
        if !status.success() || !target.is_running() {
            return Err(format!(
                "--duration: exit {status}, target alive {}",
                target.is_running()
            ));
        }
        check_all_outputs(&base, "keep_big").map_err(|e| format!("--duration: {e}"))?;
        let duration = read_json(&format!("{base}.json"));
        if duration["end"] != "duration reached" {
            return Err(format!("--duration: end {}", duration["end"]));
        }

        // Spawn mode, the program exits by itself.
        let base = scratch.path("spawn");
        let output = run_to_end(
            tool()
                .arg("attach")
                .args(output_args(&base))
                .arg("--")
                .arg(&python.path)
                .arg(fixture("leak_by_function.py"))
                .args(["--scale", "0.3"]),
        );
        if !output.status.success() {
            return Err(format!(
                "spawn: exit {}: {}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        check_all_outputs(&base, "keep_big").map_err(|e| format!("spawn: {e}"))?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !stdout.contains("target exited")
            || !stdout
                .lines()
                .any(|l| l.contains("keep_big") && l.contains("leak_by_function.py:"))
        {
            return Err(format!(
                "spawn: summary table lacks the exit or keep_big row:\n{stdout}"
            ));
        }
        // Below the 20 rows of the table, a function that released 5% or more of all released
        // bytes (here the interpreter freeing its heap at exit, under `<no Python frame>`) is
        // shown anyway, largest first, at most 3; the JSON has every function in table order.
        let functions = read_json(&format!("{base}.json"))["functions"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let released = |f: &serde_json::Value| f["self"]["released"].as_u64().unwrap_or(0);
        let all_released: u64 = functions.iter().map(released).sum();
        let mut large: Vec<&serde_json::Value> = functions
            .iter()
            .skip(20)
            .filter(|f| released(f) > 0 && released(f) as f64 >= 0.05 * all_released as f64)
            .collect();
        large.sort_by_key(|f| std::cmp::Reverse(released(f)));
        large.truncate(3);
        let shown: Vec<&str> = stdout
            .lines()
            .skip_while(|l| *l != "of those, the largest releases:")
            .skip(1)
            .collect();
        let expected: Vec<&str> = large
            .iter()
            .map(|f| f["function"].as_str().unwrap_or("?"))
            .collect();
        if shown.len() != expected.len()
            || !shown
                .iter()
                .zip(&expected)
                .all(|(l, name)| l.contains(name))
        {
            return Err(format!(
                "spawn: the largest releases below the top should be {expected:?}, the table \
                 shows {shown:?}"
            ));
        }

        let releases_shown = expected.join(", ");

        // Spawn mode, interrupted while the program lingers: outputs written, child ended.
        let base = scratch.path("spawn-int");
        let mut args = vec!["attach".to_string()];
        args.extend(output_args(&base));
        args.extend([
            "--".into(),
            python.path.to_string_lossy().into_owned(),
            fixture("leak_by_function.py")
                .to_string_lossy()
                .into_owned(),
            "--linger".into(),
            "--scale".into(),
            "0.3".into(),
        ]);
        let (mut run, _stderr) = start_tool(&args);
        std::thread::sleep(Duration::from_secs(3));
        let json_before = std::path::Path::new(&format!("{base}.json"))
            .metadata()
            .map(|m| m.len())
            .unwrap_or(0);
        sigint(run.id());
        let status = wait_with_timeout(&mut run, Duration::from_secs(30));
        if !status.success() || json_before != 0 {
            return Err(format!("spawn+SIGINT: exit {status}"));
        }
        check_all_outputs(&base, "keep_big").map_err(|e| format!("spawn+SIGINT: {e}"))?;
        let child_pid = read_json(&format!("{base}.json"))["target"]["pid"]
            .as_i64()
            .unwrap();
        if std::path::Path::new(&format!("/proc/{child_pid}")).exists() {
            return Err(format!("spawn+SIGINT: child {child_pid} outlived the tool"));
        }
        Ok(format!(
            "duration, spawn, spawn+SIGINT complete; below the top rows: [{releases_shown}]"
        ))
    });
}

/// Every (root, leaf) total over 100 kB, largest first: what a failure message needs to be diagnosed.
fn breakdown(
    by_root: &std::collections::HashMap<String, std::collections::HashMap<String, i64>>,
) -> String {
    let mut rows: Vec<(&String, &String, i64)> = by_root
        .iter()
        .flat_map(|(root, leaves)| leaves.iter().map(move |(leaf, v)| (root, leaf, *v)))
        .filter(|(_, _, v)| v.abs() > 100_000)
        .collect();
    rows.sort_by_key(|(_, _, v)| -v);
    rows.iter()
        .map(|(root, leaf, v)| format!("{root} {leaf} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// --threads keeps threads apart (a root frame per thread, each thread's functions under its own
/// root); --blocking (the target paused for each read) gives the same truth on fixture (a).
#[test]
fn threads_are_kept_apart_and_blocking_reads_agree_with_the_truth() {
    let _serial = serial();
    on_every_interpreter("threads+blocking", |python| {
        let scratch = Scratch::new("threads");
        let collapsed = scratch.path("threads.txt");
        let threads_json = scratch.path("threads.json");
        let output = run_to_end(
            tool()
                .args([
                    "attach",
                    "--threads",
                    "-o",
                    &collapsed,
                    "-o",
                    &threads_json,
                    "--",
                ])
                .arg(&python.path)
                .arg(fixture("bursty.py")),
        );
        if !output.status.success() {
            return Err(format!("--threads: exit {}", output.status));
        }
        let text = std::fs::read_to_string(&collapsed).unwrap();
        // Bytes per (root frame, leaf function).
        let mut by_root: std::collections::HashMap<String, std::collections::HashMap<String, i64>> =
            std::collections::HashMap::new();
        for line in text.lines() {
            let (stack, value) = line.rsplit_once(' ').unwrap();
            let root = stack.split(';').next().unwrap().to_string();
            let leaf = stack.rsplit(';').next().unwrap();
            let leaf = leaf.split(" (").next().unwrap().to_string();
            *by_root.entry(root).or_default().entry(leaf).or_default() +=
                value.parse::<i64>().unwrap();
        }
        if !by_root
            .keys()
            .all(|root| root.starts_with("<thread ") || root.starts_with("<unattributed"))
        {
            return Err(format!(
                "--threads: a stack without a thread root: {:?}",
                by_root.keys()
            ));
        }
        let bytes = |root: &str, leaf: &str| by_root[root].get(leaf).copied().unwrap_or(0);
        // The worker thread's code: its loop (`worker`, caught between two calls) and the two
        // functions it calls. Which of the three a step lands on is sampling luck (see the bursty
        // test); the thread it lands under is what --threads must get right.
        let worker_bytes = |root: &str| {
            bytes(root, "worker") + bytes(root, "worker_alloc") + bytes(root, "worker_idle")
        };
        let main_root = by_root
            .keys()
            .max_by_key(|r| bytes(r, "burst_big"))
            .unwrap()
            .clone();
        let worker_root = by_root
            .keys()
            .max_by_key(|r| worker_bytes(r))
            .unwrap()
            .clone();
        let (main_bytes, worker_total) =
            (bytes(&main_root, "burst_big"), worker_bytes(&worker_root));
        let misplaced = worker_bytes(&main_root)
            + bytes(&worker_root, "burst_big")
            + bytes(&worker_root, "burst_small");
        // 60 MB by burst_big and 30 MB by the worker: most of each under its own thread, none crossed.
        if main_root == worker_root
            || main_bytes < 40_000_000
            || worker_total < 20_000_000
            || misplaced != 0
        {
            return Err(judged(
                &read_json(&threads_json),
                format!(
                    "--threads: {main_root} burst_big {main_bytes}, {worker_root} worker {worker_total}, misplaced {misplaced}; all: {}",
                    breakdown(&by_root)
                ),
            ));
        }
        // py-spy reads thread names on 3.x only; on 2.7 roots are `<thread TID>`.
        if !python.label.starts_with("2.")
            && (!main_root.starts_with("<thread MainThread ")
                || !worker_root.starts_with("<thread worker "))
        {
            return Err(format!(
                "--threads: roots {main_root} and {worker_root} lack the thread names"
            ));
        }
        let roots = by_root.keys().filter(|r| r.starts_with("<thread ")).count();
        if roots != 2 {
            return Err(format!(
                "--threads: {roots} thread roots for 2 threads: {:?}",
                by_root.keys()
            ));
        }
        let (main_root, worker_root) = (main_bytes, worker_total);

        let json = scratch.path("blocking.json");
        let output = run_to_end(
            tool()
                .args(["attach", "--blocking", "-o", &json, "--"])
                .arg(&python.path)
                .arg(fixture("leak_by_function.py"))
                .args(["--scale", "0.5"]),
        );
        if !output.status.success() {
            return Err(format!("--blocking: exit {}", output.status));
        }
        let result = read_json(&json);
        let (big, small) = (share(&result, "keep_big"), share(&result, "keep_small"));
        if result["settings"]["blocking"] != true
            || !within(big, 2.0 / 3.0, 10.0)
            || !within(small, 1.0 / 3.0, 10.0)
        {
            return Err(judged(
                &result,
                format!(
                    "--blocking: keep_big {:.1}%, keep_small {:.1}%",
                    big * 100.0,
                    small * 100.0
                ),
            ));
        }
        Ok(format!(
            "worker thread {} MB under its root, MainThread burst_big {} MB; --blocking keep_big {:.1}% keep_small {:.1}%",
            worker_root / 1_000_000,
            main_root / 1_000_000,
            big * 100.0,
            small * 100.0
        ))
    });
}
