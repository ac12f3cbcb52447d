//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz), one per family of parsers that read
//! text from outside the tool: /proc files, `sys._debugmallocstats()` captures, dtrace/bpftrace
//! output and `process --input` logs.
//!
//! Why this module is public: the fuzz crate is a separate crate and can only reach public items,
//! while most /proc parsers are private details of the module that reads the file. Each function
//! here runs the same code the tool runs on real input (the parsers were split from their file
//! reads for that, with no change of behaviour) and keeps nothing. They return `()` on any input,
//! and a panic, an overflow (the fuzz build has debug assertions) or a hang in them is a bug.
//! Not meant for other uses: the names and signatures may change without notice.

use std::io::Cursor;
use std::path::Path;

/// Every reader of /proc text, on the same input: a fuzzer mutating one stat line also tries it
/// as status, maps, cmdline, children... Bytes first go through what the readers do with bytes.
pub fn proc_files(data: &[u8]) {
    // Readers that take raw bytes.
    let _ = crate::memory::parse_statm_resident(data);
    let _ = crate::memory::process::command_from_cmdline(data);
    let _ = crate::target::join_cmdline(data);
    // The pread-and-decode path of the kept-open files, then every text parser.
    let text = crate::memory::process::valid_prefix(data);
    let _ = crate::memory::parse_task_stat(text);
    let _ = crate::memory::process::parse_stat(text);
    let _ = crate::memory::process::parse_status(text);
    let _ = crate::memory::process::parse_statm(text);
    let _ = crate::memory::process::parse_smaps_rollup(text);
    let _ = crate::memory::process::parse_children(text).count();
    let _ = crate::target::state_from_stat(text);
    let _ = crate::target::kernel_thread_stat(text);
    let _ = crate::inject::TargetUser::from_status(text);
    let _ = crate::inject::ptrace::tracer_pid(text);
    let _ = crate::precise::peak_rss_from_status(text);
    // The four readers of /proc/PID/maps.
    let _ = crate::inject::debug_offsets::parse_maps(text);
    let _ = crate::inject::ptrace::vdso_range(text);
    let files = crate::dtrace::target::mapped_files(text);
    let _ = crate::dtrace::target::find_libc(&files);
    for address in [0, 0x1000, 0x7f00_0000_0000, u64::MAX] {
        let _ = crate::dtrace::report::locate(address, text);
    }
}

/// The `sys._debugmallocstats()` parser; when the input holds a NUL byte, the two sides of it are
/// parsed as a before and an after capture, diffed, rendered and summarised as `mallocstats` does.
pub fn mallocstats(data: &[u8]) {
    use crate::mallocstats::{diff, parse_bytes, render_diff, summary};
    match data.iter().position(|&b| b == 0) {
        None => {
            let _ = parse_bytes(data);
        }
        Some(split) => {
            let before = parse_bytes(&data[..split]);
            let after = parse_bytes(&data[split + 1..]);
            if let (Ok(before), Ok(after)) = (before, after) {
                let changes = diff(&before, &after);
                let _ = render_diff(&changes);
                let _ = summary(&changes);
            }
        }
    }
}

/// The tracer output parser, then the report built from it and its table, as `dtrace` does. The
/// input is the tracer's stdout, read lossily as the tool reads it; its lines are also tried as
/// the tracer's stderr and as the target's maps (which name unresolved frames).
pub fn tracer_output(data: &[u8]) {
    use crate::dtrace::{parse, report};
    let text = String::from_utf8_lossy(data);
    let parsed = parse::parse(&text);
    let _ = crate::dtrace::tracer_errors(&text);
    let meta = report::Report {
        script: "fuzz".into(),
        backend: "bpftrace".into(),
        pid: 1,
        command: String::new(),
        python: None,
        seconds: 1.0,
        end: "duration reached".into(),
        ..report::Report::default()
    };
    let options = report::ReadOptions {
        min_age_ms: 0,
        maps: text.to_string(),
    };
    let built = report::build(&parsed, meta, &options);
    let _ = report::write_table(&mut std::io::sink(), &built, 20);
    let _ = serde_json::to_string(&built);
}

/// The `process --input` reader, then what the replay does with its rows: the live table, the
/// collector and its summary (the plots need files and are left out).
pub fn process_log(data: &[u8]) {
    use crate::report::process_table::{write_summary, LiveTable, RunDescription};
    use crate::timeline::run::TickObserver;
    use crate::timeline::summary::Collector;
    let mut collector = Collector::new();
    let mut table = LiveTable::new(std::io::sink());
    let outcome = crate::report::jsonl::read_ticks_from(
        &mut Cursor::new(data),
        Path::new("fuzz.jsonl"),
        &mut |rows| {
            collector.add_rows(rows);
            let _ = table.tick(rows);
        },
    );
    if outcome.is_ok() {
        let run = RunDescription {
            how: "fuzz".into(),
            cost: None,
        };
        let _ = write_summary(&mut std::io::sink(), &collector, &run);
    }
}
