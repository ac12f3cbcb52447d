//! The `pymemtrace` command: parses the command line, calls the library, maps errors to exit codes.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};

use pymemtrace::attribution::Profile;
use pymemtrace::error::{Error, ErrorKind, Result};
use pymemtrace::memory::{human_bytes, human_delta, page_size};
use pymemtrace::options;
use pymemtrace::report::atomic::{self, AtomicFile};
use pymemtrace::report::cpymemtrace::LogWriter;
use pymemtrace::report::terminal::{printable, PrintableWriter};
use pymemtrace::report::{self, Format, Meta, Output, ReportOptions};
use pymemtrace::sampler::{self, Change, ChargePolicy, Observer, Progress, Settings};
use pymemtrace::target::{self, SpyOptions};
use pymemtrace::timeline::command::{run_process, ProcessOptions};

#[derive(Parser)]
#[command(
    name = "pymemtrace",
    version = pymemtrace::VERSION,
    about = "Find out where a running Python process's memory goes, from outside, without restarting it.",
    after_help = "Exit codes: 0 success (also when the target exits), 1 internal error, 2 bad option, \
                  3 no such process, 4 not a Python process, 5 permission denied, 6 unsupported Python \
                  version, 7 output not writable, 8 command could not be started, 9 input file unreadable \
                  or malformed, 10 a helper could not run inside the target, 11 no tracer (dtrace/bpftrace) \
                  or not root."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sample RSS and every thread's Python stack and charge memory growth to functions and lines.
    #[command(
        after_help = "Examples:\n  pymemtrace attach --pid 1234                     # until Ctrl-C, then a report\n  \
                      pymemtrace attach --pid 1234 --duration 30 -o growth.svg -o growth.json\n  \
                      pymemtrace attach -- python3 myscript.py         # start it and follow it\n\n\
                      Outputs (-o, format from the extension): .txt collapsed stacks, .svg flamegraph, \
                      .speedscope.json speedscope, .json everything, .log cPyMemTrace event log, .table the summary."
    )]
    Attach(AttachArgs),

    /// Log a process's RSS, page faults and CPU over time (any process, Python or not), with plots.
    #[command(
        after_help = "Examples:\n  pymemtrace process --pid 1234 --interval 0.5 -o run.jsonl --plot run.png\n  \
                      pymemtrace process --pid 1234 --children              # the whole tree\n  \
                      pymemtrace process --interval 0.1 --plot run.svg -- python3 job.py\n  \
                      pymemtrace process --input run.jsonl --plot run.svg   # re-plot an earlier log\n\n\
                      While it runs, a line typed on stdin (then Enter) labels that moment in the log and on the plot."
    )]
    Process(ProcessArgs),

    /// Take two tracemalloc snapshots inside a running Python process and show what grew, by line.
    #[command(
        after_help = "Examples:\n  pymemtrace tracemalloc --pid 1234 --duration 30\n  \
                      pymemtrace tracemalloc --pid 1234 --frames 5 --granularity traceback --json growth.json\n\n\
                      A stdlib-only helper runs in the target's main thread (between two bytecodes) for each \
                      snapshot; nothing is installed there. tracemalloc is started if it is not running, and \
                      stopped afterwards."
    )]
    Tracemalloc(TracemallocArgs),

    /// Capture sys._debugmallocstats() inside a running Python process twice and show what changed.
    #[command(
        after_help = "Examples:\n  pymemtrace mallocstats --pid 1234 --duration 10\n  \
                      pymemtrace mallocstats --pid 1234 --json stats.json"
    )]
    Mallocstats(MallocstatsArgs),

    /// Run a malloc/free or interpreter script from the catalogue with dtrace or bpftrace (root).
    #[command(
        after_help = "Examples:\n  sudo pymemtrace dtrace --pid 1234 --script malloc_count\n  \
                      sudo pymemtrace dtrace --pid 1234 --script malloc_outstanding --duration 30 --json leaks.json\n  \
                      sudo pymemtrace dtrace --pid 1234 --script malloc_count -D per_thread\n  \
                      pymemtrace dtrace --list --pid 1234          # every script, and whether it can run here\n  \
                      pymemtrace dtrace --script py_malloc --pid 1234 --print-script\n\n\
                      The backend is dtrace where it exists (macOS, FreeBSD, illumos, Oracle Linux), else bpftrace. \
                      Exit code 11: no tracer installed, or not root. See docs/dtrace.md."
    )]
    Dtrace(DtraceArgs),

    /// Run the smallest helper inside a Python process and time the round trip (tests, benchmarks).
    #[command(hide = true)]
    Ping(PingArgs),
}

#[derive(Args)]
struct TracemallocArgs {
    /// PID of the running Python process (3.4 or later).
    #[arg(short, long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pid: i32,

    /// Seconds between the two snapshots (default: until Ctrl-C).
    #[arg(short, long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,

    /// Frames kept per allocation when this run starts tracemalloc.
    #[arg(
        long,
        default_value_t = 1,
        value_name = "K",
        allow_negative_numbers = true
    )]
    frames: u32,

    /// Group allocations by line, by file, or by whole traceback.
    #[arg(long, value_enum, default_value_t = pymemtrace::tracemalloc::Granularity::Lineno)]
    granularity: pymemtrace::tracemalloc::Granularity,

    /// Rows in the table (and in the JSON).
    #[arg(
        long,
        default_value_t = 20,
        value_name = "N",
        allow_negative_numbers = true
    )]
    top: usize,

    /// Write the whole result as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Seconds to wait for each helper to run (the main thread must reach Python code).
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    timeout: f64,
    /// How the helper gets in: auto (a direct call when the main thread waits in a blocking call
    /// without the GIL, else a pending call), pending, direct, or gdb.
    #[arg(long, value_enum, default_value_t = pymemtrace::inject::Method::Auto)]
    method: pymemtrace::inject::Method,
}

#[derive(Clone, Copy, ValueEnum)]
enum BackendArg {
    Dtrace,
    Bpftrace,
}

#[derive(Args)]
struct DtraceArgs {
    /// PID of the process to trace (any process for malloc_count and malloc_outstanding).
    #[arg(short, long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pid: Option<i32>,

    /// The script to run (see --list).
    #[arg(short, long, value_name = "NAME")]
    script: Option<String>,

    /// List every script, what it shows, and (with --pid) whether it can run on that process.
    #[arg(long)]
    list: bool,

    /// Seconds to trace (default: until Ctrl-C or the target's exit).
    #[arg(short, long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,

    /// Script option, e.g. -D per_thread or -D min_age_ms=500 (see --list).
    #[arg(short = 'D', value_name = "NAME[=VALUE]")]
    define: Vec<String>,

    /// The tracer (default: dtrace if on PATH, else bpftrace).
    #[arg(long, value_enum)]
    backend: Option<BackendArg>,

    /// Write the whole result as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Pass the tracer's output through instead of the table.
    #[arg(long)]
    raw: bool,

    /// Print the script filled in for this process, and exit without running it.
    #[arg(long)]
    print_script: bool,

    /// Rows per list in the table.
    #[arg(
        long,
        default_value_t = 20,
        value_name = "N",
        allow_negative_numbers = true
    )]
    top: usize,
}

#[derive(Args)]
struct MallocstatsArgs {
    /// PID of the running Python process (3.3 or later).
    #[arg(short, long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pid: i32,

    /// Seconds between the two captures (default: until Ctrl-C).
    #[arg(short, long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,

    /// Write both captures and the comparison as JSON here.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// Seconds to wait for each helper to run (the main thread must reach Python code).
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    timeout: f64,
    /// How the helper gets in: auto (a direct call when the main thread waits in a blocking call
    /// without the GIL, else a pending call), pending, direct, or gdb.
    #[arg(long, value_enum, default_value_t = pymemtrace::inject::Method::Auto)]
    method: pymemtrace::inject::Method,
}

/// Checks a JSON output now, so that a bad path fails before the target is touched (nothing is
/// created until the result is written, atomically).
fn json_output(path: &Option<PathBuf>) -> Result<()> {
    match path {
        Some(path) => {
            atomic::check_writable(path).map_err(|err| atomic::not_writable(path, true, err))
        }
        None => Ok(()),
    }
}

fn write_json(path: &Option<PathBuf>, value: &serde_json::Value) -> Result<()> {
    if let Some(path) = path {
        atomic::write_stream_atomically(path, |out| {
            serde_json::to_writer_pretty(out, value).map_err(std::io::Error::from)
        })
        .map_err(|err| atomic::not_writable(path, false, err))?;
        eprintln!("pymemtrace: wrote {}", path.display());
    }
    Ok(())
}

fn tracemalloc(args: TracemallocArgs) -> Result<()> {
    options::optional_seconds("--duration", args.duration)?;
    options::seconds("--timeout", args.timeout, None)?;
    if args.frames == 0 || args.frames > 1000 {
        return Err(Error::usage("--frames must be between 1 and 1000"));
    }
    json_output(&args.json)?;
    let stop = pymemtrace::signals::stop_flag();
    let options = pymemtrace::tracemalloc::TracemallocOptions {
        pid: args.pid,
        duration: args.duration,
        frames: args.frames,
        granularity: args.granularity,
        top: args.top,
        timeout: args.timeout,
        method: args.method,
    };
    let result = pymemtrace::tracemalloc::compare(&options, &stop)?;
    let command = pymemtrace::memory::process::command_of(args.pid as u32).unwrap_or_default();
    // File names and the command line come from the target: shown only once printable.
    let mut stdout = PrintableWriter::new(std::io::stdout().lock());
    pymemtrace::tracemalloc::write_table(&mut stdout, &result, &printable(&command))
        .and_then(|()| stdout.flush())
        .map_err(|err| Error::internal(format!("cannot write to stdout: {err}")))?;
    write_json(
        &args.json,
        &serde_json::to_value(&result).map_err(|e| Error::internal(e.to_string()))?,
    )
}

fn mallocstats(args: MallocstatsArgs) -> Result<()> {
    options::optional_seconds("--duration", args.duration)?;
    options::seconds("--timeout", args.timeout, None)?;
    json_output(&args.json)?;
    let stop = pymemtrace::signals::stop_flag();
    let captures = pymemtrace::mallocstats::command::compare(
        args.pid,
        args.duration,
        args.timeout,
        args.method,
        &stop,
    )?;
    let command = pymemtrace::memory::process::command_of(args.pid as u32).unwrap_or_default();
    // The figures are parsed from what the target printed: shown only once printable.
    let mut stdout = PrintableWriter::new(std::io::stdout().lock());
    writeln!(
        stdout,
        "pymemtrace mallocstats: PID {} ({}), {:.1} s between captures\n{}\n\n{}",
        args.pid,
        pymemtrace::report::collapsed::truncate(&printable(&command), 60),
        captures.seconds,
        pymemtrace::mallocstats::summary(&captures.diff),
        pymemtrace::mallocstats::render_diff(&captures.diff)
    )
    .and_then(|()| stdout.flush())
    .map_err(|err| Error::internal(format!("cannot write to stdout: {err}")))?;
    write_json(
        &args.json,
        &serde_json::json!({
            "pid": args.pid,
            "seconds": captures.seconds,
            "capture_windows_seconds": captures.windows,
            "injection_round_trip_seconds": captures.round_trips,
            "summary": pymemtrace::mallocstats::summary(&captures.diff),
            "diff": captures.diff,
            "before": captures.before,
            "after": captures.after,
        }),
    )
}

#[derive(Args)]
struct PingArgs {
    /// PID of the Python process.
    #[arg(short, long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true)]
    pid: i32,

    /// Seconds to wait for the reply.
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    timeout: f64,
    /// How the helper gets in: auto (a direct call when the main thread waits in a blocking call
    /// without the GIL, else a pending call), pending, direct, or gdb.
    #[arg(long, value_enum, default_value_t = pymemtrace::inject::Method::Auto)]
    method: pymemtrace::inject::Method,
}

fn ping(args: PingArgs) -> Result<()> {
    let options = pymemtrace::inject::Options {
        timeout: options::seconds("--timeout", args.timeout, None)?,
        method: args.method,
        ..Default::default()
    };
    let request = serde_json::json!({"echo": "pymemtrace"});
    let (reply, timing) =
        pymemtrace::inject::run_helper(args.pid, &pymemtrace::inject::PING, &request, &options)?;
    println!(
        "{}",
        serde_json::json!({
            "reply": reply,
            "held_seconds": timing.held.as_secs_f64(),
            "round_trip_seconds": timing.round_trip.as_secs_f64(),
            "delivery": timing.delivery.to_string(),
        })
    );
    Ok(())
}

#[derive(Args)]
struct ProcessArgs {
    /// PID of the process to follow (any program).
    #[arg(short, long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true, conflicts_with_all = ["command", "input"])]
    pid: Option<i32>,

    /// Seconds between ticks.
    #[arg(
        short,
        long,
        default_value_t = 1.0,
        value_name = "SECONDS",
        allow_hyphen_values = true
    )]
    interval: f64,

    /// Stop after this many seconds (default: until Ctrl-C or the process exits).
    #[arg(short, long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,

    /// Stream the log here, one JSON object per process per tick (flushed every tick).
    #[arg(short, long, value_name = "FILE.jsonl")]
    output: Option<PathBuf>,

    /// Draw RSS, CPU % and page faults over time into a .png or .svg at the end (repeat for several).
    #[arg(long = "plot", value_name = "FILE")]
    plots: Vec<PathBuf>,

    /// Write PREFIX.dat (the original pymemtrace's columns) and PREFIX.plt, a gnuplot script for it.
    #[arg(long, value_name = "PREFIX")]
    gnuplot: Option<PathBuf>,

    /// Follow the whole tree: children (and theirs) as they start and end.
    #[arg(long)]
    children: bool,

    /// Also record USS and PSS from /proc/PID/smaps_rollup (costs the kernel a page-table walk per tick).
    #[arg(long)]
    smaps: bool,

    /// Summarise and plot an earlier log instead of following a process.
    #[arg(long, value_name = "FILE.jsonl", conflicts_with_all = ["output", "children", "smaps", "duration"])]
    input: Option<PathBuf>,

    /// Do not print the live table (the summary is still printed).
    #[arg(short, long)]
    quiet: bool,

    /// Leave stdin alone: no labels (and a started command keeps the terminal's stdin).
    #[arg(long)]
    no_labels: bool,

    /// The command to start and follow (instead of --pid).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineArg {
    /// bpftrace when it can run (root, bpftrace, BPF), else perf
    Auto,
    /// bpftrace on every page fault and release (root)
    Bpftrace,
    /// perf_event_open page-fault sampling, a stack read per wakeup (no root needed)
    Perf,
}

#[derive(Clone, Copy, ValueEnum)]
enum ChargeArg {
    After,
    Before,
}

#[derive(Args)]
struct AttachArgs {
    /// PID of the running Python process to sample.
    #[arg(short, long, value_name = "PID", value_parser = clap::value_parser!(i32).range(1..), allow_negative_numbers = true, conflicts_with = "command")]
    pid: Option<i32>,

    /// Stop after this many seconds (default: until Ctrl-C or the target exits).
    #[arg(short, long, value_name = "SECONDS", allow_hyphen_values = true)]
    duration: Option<f64>,

    /// Write a report here; the format comes from the extension (repeat for several).
    #[arg(short, long = "output", value_name = "PATH")]
    outputs: Vec<PathBuf>,

    /// Format for output paths whose extension does not say it.
    #[arg(long, value_enum)]
    format: Option<Format>,

    /// Stack reads per second while RSS is flat (the floor; while RSS moves they run at full speed).
    #[arg(
        long,
        default_value_t = 100.0,
        value_name = "HZ",
        allow_hyphen_values = true
    )]
    rate: f64,

    /// Upper bound on stack reads per second (default: as fast as they go). Lowers the cost on a
    /// target whose memory moves all the time, but short bursts then go to whatever runs next.
    #[arg(long, value_name = "HZ", allow_hyphen_values = true)]
    max_rate: Option<f64>,

    /// Pause the target during each stack read: exact stacks, at a cost to the target.
    #[arg(long)]
    blocking: bool,

    /// Keep threads apart in every output (a root frame per thread).
    #[arg(long)]
    threads: bool,

    /// Charge idle threads when no running thread is seen (instead of <unattributed>).
    #[arg(long)]
    idle: bool,

    /// Collapsed stacks and flamegraphs show released bytes instead of net growth.
    #[arg(long)]
    released: bool,

    /// The .log gets a row when RSS moved at least this many bytes since the last row (default: page size).
    #[arg(long, value_name = "BYTES", allow_negative_numbers = true)]
    trigger: Option<u64>,

    /// Rows in the summary table.
    #[arg(
        long,
        default_value_t = 20,
        value_name = "N",
        allow_negative_numbers = true
    )]
    top: usize,

    /// Never show the live status line (it is shown only when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,

    /// Which stack read an RSS change is charged to (for experiments; see docs/how-it-works.md).
    #[arg(long, value_enum, default_value_t = ChargeArg::Before, hide = true)]
    charge: ChargeArg,

    /// Charge every page of growth to the Python stack of the thread that touched it, counted by
    /// the kernel (bpftrace on page faults and releases as root; else perf_event_open
    /// page-fault sampling, see --precise-engine).
    #[arg(long)]
    precise: bool,

    /// With --precise: the engine. The report's "mode" says which one ran.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto, value_name = "ENGINE", requires = "precise")]
    precise_engine: EngineArg,

    /// With --precise: innermost frames kept per stack (the rest folded).
    #[arg(
        long,
        default_value_t = 32,
        value_name = "N",
        allow_negative_numbers = true
    )]
    depth: u32,

    /// The command to start and follow (instead of --pid); sampling begins once its interpreter can be read.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// The live status line on stderr.
struct LiveLine {
    enabled: bool,
    width: usize,
}

impl LiveLine {
    fn clear(&mut self) {
        if self.enabled && self.width > 0 {
            eprint!("\r{}\r", " ".repeat(self.width));
            self.width = 0;
        }
    }
}

/// What watches the sampler: the streamed event log and the live line.
struct AttachObserver {
    log: Option<LogWriter<std::io::BufWriter<std::fs::File>>>,
    live: LiveLine,
}

impl Observer for AttachObserver {
    fn change(&mut self, change: &Change<'_>, profile: &Profile) {
        if let Some(log) = self.log.as_mut() {
            log.change(change, profile);
        }
    }

    fn progress(&mut self, progress: &Progress, profile: &Profile) {
        if !self.live.enabled {
            return;
        }
        let top = profile
            .top_leaf()
            .filter(|(_, net)| *net != 0)
            .map(|(frame, net)| format!("  top: {} {}", frame.function, human_delta(net)))
            .unwrap_or_default();
        let line = format!(
            "{:6.1}s  samples {} (lost {})  RSS {} ({}){}",
            progress.elapsed.as_secs_f64(),
            report::table::thousands(progress.samples),
            report::table::thousands(progress.lost),
            human_bytes(progress.rss as i64),
            human_delta(progress.rss as i64 - progress.rss_start as i64),
            top
        );
        let padding = self.live.width.saturating_sub(line.chars().count());
        eprint!("\r{line}{}", " ".repeat(padding));
        let _ = std::io::stderr().flush();
        self.live.width = line.chars().count();
    }
}

fn validate(args: &AttachArgs) -> Result<()> {
    if args.pid.is_none() && args.command.is_empty() {
        return Err(Error::usage(
            "give --pid PID to attach to a running process, or `-- COMMAND ARGS...` to start one",
        ));
    }
    options::rate("--rate", args.rate)?;
    if let Some(max) = args.max_rate {
        options::rate("--max-rate", max)?;
        if max < args.rate {
            return Err(Error::usage(format!(
                "--max-rate must be at least --rate ({}), not {max}",
                args.rate
            )));
        }
    }
    options::optional_seconds("--duration", args.duration)?;
    let max_depth = pymemtrace::precise::MAX_DEPTH;
    if args.precise && !(1..=max_depth).contains(&args.depth) {
        // Checked here too, so that it fails before the target is looked at.
        return Err(Error::usage(format!(
            "--depth must be between 1 and {max_depth} with --precise, not {}",
            args.depth
        )));
    }
    Ok(())
}

fn attach(args: AttachArgs) -> Result<()> {
    // `--duration` is wall time from here, whatever finding and checking the target costs.
    let started = Instant::now();
    validate(&args)?;
    let outputs = args
        .outputs
        .iter()
        .map(|path| Output::create(path, args.format))
        .collect::<Result<Vec<_>>>()?;
    if args.precise {
        if let Some(log) = outputs.iter().find(|o| o.format == Format::Log) {
            return Err(Error::usage(format!(
                "{}: the .log event log is not written by --precise (it counts pages per stack, \
                 not RSS changes over time); use .json, .txt, .svg, .speedscope.json or .table",
                log.path.display()
            )));
        }
        pymemtrace::precise::check_engine(engine(args.precise_engine))?;
    }
    attach_and_report(&args, &outputs, started)
}

fn engine(arg: EngineArg) -> pymemtrace::precise::Engine {
    match arg {
        EngineArg::Auto => pymemtrace::precise::Engine::Auto,
        EngineArg::Bpftrace => pymemtrace::precise::Engine::Bpftrace,
        EngineArg::Perf => pymemtrace::precise::Engine::Perf,
    }
}

fn attach_and_report(args: &AttachArgs, outputs: &[Output], started: Instant) -> Result<()> {
    let stop = pymemtrace::signals::stop_flag();

    let spy_options = SpyOptions {
        blocking: args.blocking,
        thread_names: args.threads,
    };
    let deadline = args.duration.map(|d| started + Duration::from_secs_f64(d));
    let mut target = match args.pid {
        Some(pid) => target::attach_within(pid, spy_options, deadline, &stop)?,
        None => target::spawn(&args.command, spy_options)?,
    };
    let mut meta = Meta {
        pid: target.pid,
        command_line: target.command_line.clone(),
        executable: target.executable.clone(),
        python_version: target.python_version.clone(),
        rate: args.rate,
        max_rate: args.max_rate,
        blocking: args.blocking,
        threads: args.threads,
        idle: args.idle,
        tool_version: pymemtrace::VERSION.to_string(),
        mode: args.precise.then(|| pymemtrace::precise::MODE.to_string()),
    };
    eprintln!(
        "pymemtrace: sampling PID {} ({}, Python {}){}; Ctrl-C to stop and report",
        meta.pid,
        report::collapsed::truncate(&printable(&meta.command_line), 60),
        meta.python_version,
        args.duration
            .map(|d| format!(" for {d} s"))
            .unwrap_or_default()
    );
    if let Some(warning) = target::stopped_warning(target.pid) {
        eprintln!("{warning}");
    }

    // What is left of `--duration` once the target was found, in whole milliseconds. At least
    // the shorter of the duration and MIN_SAMPLING: a target that took the whole of a short
    // duration to find still gets its first stack read (a report of 0 samples answers nothing),
    // and the run still ends well within a second of the deadline.
    const MIN_SAMPLING: f64 = 0.05;
    let remaining = args.duration.map(|d| {
        let floor = d.clamp(0.001, MIN_SAMPLING);
        (((d - started.elapsed().as_secs_f64()) * 1000.0).round() / 1000.0).max(floor)
    });
    let settings = Settings {
        rate: args.rate,
        max_rate: args.max_rate,
        duration: remaining.map(Duration::from_secs_f64),
        threads: args.threads,
        idle: args.idle,
        policy: match args.charge {
            ChargeArg::After => ChargePolicy::After,
            ChargeArg::Before => ChargePolicy::Before,
        },
        ..Settings::default()
    };

    let rss_at_attach = pymemtrace::memory::rss_once(target.pid).unwrap_or(0);
    let trigger = args.trigger.unwrap_or_else(page_size);
    // The event log is streamed into a temporary file that gets its name only when the run ends
    // well (dropped on any error, it is removed).
    let mut log = None;
    if let Some(output) = outputs.iter().find(|o| o.format == Format::Log) {
        let file = AtomicFile::create(&output.path)
            .map_err(|e| atomic::not_writable(&output.path, true, e))?;
        let stream = file.file().try_clone().map_err(|e| output.write_error(e))?;
        log = Some((
            LogWriter::start(std::io::BufWriter::new(stream), trigger, rss_at_attach)
                .map_err(|e| output.write_error(e))?,
            file,
            output,
        ));
    }
    let (log, log_file) = match log {
        Some((writer, file, output)) => (Some(writer), Some((file, output))),
        None => (None, None),
    };
    let mut observer = AttachObserver {
        log,
        live: LiveLine {
            enabled: !args.no_progress && std::io::stderr().is_terminal(),
            width: 0,
        },
    };

    let recording = if args.precise {
        pymemtrace::precise::run(
            &pymemtrace::precise::Options {
                pid: target.pid,
                duration: remaining,
                depth: args.depth,
                threads: args.threads,
                engine: engine(args.precise_engine),
            },
            &stop,
        )
        .map(|(recording, mode)| {
            meta.mode = Some(mode.to_string());
            recording
        })
    } else {
        sampler::run(&mut target, &settings, &stop, &mut observer)
    };
    observer.live.clear();
    if let Some(child) = target.child.as_mut() {
        // In spawn mode the program is ours: end it if sampling stopped first, and reap it.
        target::stop_child(child);
    }
    let recording = recording?;

    if let (Some(log), Some((file, output))) = (observer.log.take(), log_file) {
        log.finish(
            recording.samples,
            recording.elapsed.as_secs_f64(),
            recording.rss_end,
            recording.end.describe(),
        )
        .and_then(|mut stream| stream.flush())
        .and_then(|()| file.commit())
        .map_err(|e| output.write_error(e))?;
    }
    let options = ReportOptions {
        released: args.released,
        top: args.top,
    };
    for output in outputs {
        report::write_report(output, &meta, &recording, options)?;
    }

    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    report::table::write(&mut stdout, &meta, &recording, args.top)
        .and_then(|_| stdout.flush())
        .map_err(|err| Error::internal(format!("cannot write to stdout: {err}")))?;
    if recording.end == sampler::EndReason::TargetExited {
        eprintln!(
            "pymemtrace: PID {} exited; the report covers it up to its exit",
            meta.pid
        );
    }
    for output in outputs.iter() {
        eprintln!("pymemtrace: wrote {}", output.path.display());
    }
    Ok(())
}

/// clap's parse error as the tool's one line: its first line without clap's own `error: `, and
/// where to look next.
fn one_line_usage_error(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .find(|line| !line.trim().is_empty())
        .unwrap_or("bad command line")
        .trim();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    format!("{first} (see `pymemtrace --help`)")
}

/// Blocks the stop signals before any code of the tool runs: an ELF constructor runs before
/// Rust's runtime and `main`. `main` installs their handler first thing, then unblocks them, so
/// that a Ctrl-C in the first milliseconds is handled, not fatal half-way (see signals.rs).
#[used]
#[link_section = ".init_array"]
static BLOCK_STOP_SIGNALS_AT_START: extern "C" fn() = block_stop_signals_at_start;

extern "C" fn block_stop_signals_at_start() {
    pymemtrace::signals::block_stop_signals();
}

fn main() {
    // Before anything else: from here on SIGINT, SIGTERM and SIGHUP ask for a stop and a report.
    if let Err(err) = pymemtrace::signals::install_stop_handler() {
        eprintln!("pymemtrace: error: {err}");
        std::process::exit(err.kind.exit_code());
    }
    // Whatever happens, the user gets one line, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!(
            "pymemtrace: internal error: {info}; please report this at the project's issue tracker"
        );
    }));
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            if !err.use_stderr() {
                // --help and --version.
                let _ = err.print();
                std::process::exit(0);
            }
            eprintln!("pymemtrace: error: {}", one_line_usage_error(&err));
            std::process::exit(ErrorKind::Usage.exit_code());
        }
    };
    let outcome = std::panic::catch_unwind(|| match cli.command {
        Command::Attach(args) => attach(args),
        Command::Ping(args) => ping(args),
        Command::Tracemalloc(args) => tracemalloc(args),
        Command::Mallocstats(args) => mallocstats(args),
        Command::Dtrace(args) => {
            pymemtrace::dtrace::command::run_command(pymemtrace::dtrace::command::CommandOptions {
                pid: args.pid,
                script: args.script,
                backend: args.backend.map(|b| match b {
                    BackendArg::Dtrace => pymemtrace::dtrace::Backend::Dtrace,
                    BackendArg::Bpftrace => pymemtrace::dtrace::Backend::Bpftrace,
                }),
                duration: args.duration,
                defines: args.define,
                json: args.json,
                raw: args.raw,
                print_script: args.print_script,
                list: args.list,
                top: args.top,
            })
        }
        Command::Process(args) => run_process(ProcessOptions {
            pid: args.pid,
            command: args.command,
            input: args.input,
            interval: args.interval,
            duration: args.duration,
            output: args.output,
            plots: args.plots,
            gnuplot: args.gnuplot,
            children: args.children,
            smaps: args.smaps,
            quiet: args.quiet,
            no_labels: args.no_labels,
        }),
    });
    let code = match outcome {
        Ok(Ok(())) => 0,
        Ok(Err(err)) => {
            // A message can quote the target's paths or names.
            eprintln!("pymemtrace: error: {}", printable(&err.message));
            err.kind.exit_code()
        }
        Err(_) => ErrorKind::Internal.exit_code(),
    };
    std::process::exit(code);
}
