//! `pymemtrace process` from options to outputs: checks everything that can fail before the run,
//! follows the process, writes the log as it goes and the plots and summary at the end.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};

use crate::error::{Error, ErrorKind, Result};
use crate::report::jsonl::{self, JsonlWriter};
use crate::report::process_table::{print_summary, LiveTable, RunDescription};
use crate::report::{gnuplot, plot};
use crate::timeline::run::{self, EndReason, RunStats, Settings, TickObserver};
use crate::timeline::summary::Collector;
use crate::timeline::Tick;

/// What the user asked for (the CLI fills this in).
#[derive(Debug, Clone, Default)]
pub struct ProcessOptions {
    pub pid: Option<i32>,
    pub command: Vec<String>,
    pub input: Option<PathBuf>,
    pub interval: f64,
    pub duration: Option<f64>,
    pub output: Option<PathBuf>,
    pub plots: Vec<PathBuf>,
    pub gnuplot: Option<PathBuf>,
    pub children: bool,
    pub smaps: bool,
    pub quiet: bool,
    pub no_labels: bool,
}

/// The shortest interval accepted: /proc reads of a large tree take a few milliseconds.
const MIN_INTERVAL: f64 = 0.01;

fn validate(options: &ProcessOptions) -> Result<()> {
    let sources = [
        options.pid.is_some(),
        !options.command.is_empty(),
        options.input.is_some(),
    ];
    if sources.iter().filter(|&&given| given).count() != 1 {
        return Err(Error::usage(
            "give one of --pid PID (a running process), `-- COMMAND ARGS...` (start one) or \
             --input FILE.jsonl (an earlier log)",
        ));
    }
    crate::options::seconds("--interval", options.interval, Some(MIN_INTERVAL))?;
    crate::options::optional_seconds("--duration", options.duration)?;
    for path in &options.plots {
        if plot::plot_kind(path).is_none() {
            return Err(Error::usage(format!(
                "--plot `{}`: the extension must be .png or .svg",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Checks now that a file written at the end of the run (or the streamed log) can be written, so
/// a bad path fails before an hour of recording rather than after. Leaves nothing behind.
fn check_writable(path: &Path) -> Result<()> {
    crate::report::atomic::check_writable(path)
        .map_err(|err| crate::report::atomic::not_writable(path, true, err))
}

fn gnuplot_paths(prefix: &Path) -> [PathBuf; 2] {
    let with = |ext: &str| {
        let mut name = prefix.as_os_str().to_owned();
        name.push(ext);
        PathBuf::from(name)
    };
    [with(".dat"), with(".plt")]
}

/// Hands each tick to every consumer in turn.
struct Fanout<'a> {
    log: Option<JsonlWriter>,
    live: Option<LiveTable<anstream::AutoStream<std::io::Stdout>>>,
    collector: &'a mut Collector,
}

impl TickObserver for Fanout<'_> {
    fn tick(&mut self, rows: &[Tick]) -> Result<()> {
        if let Some(log) = self.log.as_mut() {
            log.tick(rows)?;
        }
        if let Some(live) = self.live.as_mut() {
            live.tick(rows)?;
        }
        self.collector.tick(rows)
    }
}

/// Lines typed on stdin become labels. Not read when it would stop the tool: a terminal that
/// belongs to another (foreground) job raises SIGTTIN on read.
fn start_label_reader() -> Option<Receiver<String>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        // SAFETY: plain queries of the process group and the terminal's foreground group.
        let foreground = unsafe { libc::tcgetpgrp(0) == libc::getpgrp() };
        if !foreground {
            return None;
        }
    }
    let (sender, receiver) = mpsc::channel();
    std::thread::Builder::new()
        .name("labels".into())
        .spawn(move || {
            for line in stdin.lock().lines() {
                let Ok(line) = line else { break };
                let label: String = line.trim().chars().filter(|c| !c.is_control()).collect();
                if !label.is_empty() && sender.send(label).is_err() {
                    break;
                }
            }
        })
        .ok()?;
    Some(receiver)
}

fn spawn(command: &[String], stdin_for_labels: bool) -> Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| Error::usage("nothing to run after `--`"))?;
    let mut builder = Command::new(program);
    builder.args(args);
    // The program is the tool's while it runs: it ends with it, even a SIGKILLed one.
    crate::children::end_with_tool(&mut builder);
    if stdin_for_labels {
        builder.stdin(Stdio::null());
    }
    builder.spawn().map_err(|err| {
        Error::new(
            ErrorKind::SpawnFailed,
            format!("cannot start `{program}`: {err}"),
        )
    })
}

/// The tool's own CPU time so far, in seconds.
fn own_cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0.0;
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

pub fn run_process(options: ProcessOptions) -> Result<()> {
    validate(&options)?;
    for path in options.output.iter().chain(&options.plots) {
        check_writable(path)?;
    }
    if let Some(prefix) = &options.gnuplot {
        for path in gnuplot_paths(prefix) {
            check_writable(&path)?;
        }
    }
    match options.input.clone() {
        Some(input) => replay(&options, &input),
        None => record(&options),
    }
}

/// `--input`: the summary, plots and gnuplot files of an earlier log, as the live run made them.
fn replay(options: &ProcessOptions, input: &Path) -> Result<()> {
    let mut collector: Option<Collector> = None;
    let outcome = jsonl::read_ticks(input, &mut |rows| {
        collector.get_or_insert_with(Collector::new).add_rows(rows);
    })?;
    let collector = collector.expect("read_ticks returns an error when there is no row");
    if outcome.cut_last_line {
        eprintln!(
            "pymemtrace: the last line of `{}` was cut short (the writer stopped mid-line) and is skipped",
            input.display()
        );
    }
    write_pictures(options, &collector)?;
    let seconds = collector.root().map_or(0.0, |r| r.rss.seconds());
    print_summary(
        &collector,
        &RunDescription {
            how: format!(
                "read from {}: {} ticks over {seconds:.1} s, {} rows",
                input.display(),
                outcome.ticks,
                outcome.rows
            ),
            cost: None,
        },
    )
}

fn write_pictures(options: &ProcessOptions, collector: &Collector) -> Result<()> {
    let not_writable = |path: &Path, err: std::io::Error| {
        Error::new(
            ErrorKind::OutputNotWritable,
            format!("writing `{}` failed: {err}", path.display()),
        )
    };
    for path in &options.plots {
        plot::write_plot(collector.timeline(), path).map_err(|err| not_writable(path, err))?;
        eprintln!("pymemtrace: wrote {}", path.display());
    }
    if let Some(prefix) = &options.gnuplot {
        let (dat, plt) = gnuplot::write_gnuplot(collector.timeline(), prefix)
            .map_err(|err| not_writable(prefix, err))?;
        eprintln!(
            "pymemtrace: wrote {} and {} (run `gnuplot {}` in its directory for a PNG)",
            dat.display(),
            plt.display(),
            plt.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    Ok(())
}

fn record(options: &ProcessOptions) -> Result<()> {
    let settings = Settings {
        interval: crate::options::seconds("--interval", options.interval, Some(MIN_INTERVAL))?,
        duration: crate::options::optional_seconds("--duration", options.duration)?,
        children: options.children,
        smaps: options.smaps,
    };
    if let Some(pid) = options.pid {
        run::check_target(pid, options.smaps)?;
    }
    let stop = crate::signals::stop_flag();
    let labels = if options.no_labels {
        None
    } else {
        start_label_reader()
    };
    let mut child = if options.command.is_empty() {
        None
    } else {
        Some(spawn(&options.command, labels.is_some())?)
    };
    // The log is created only now that the run can start (its path was checked before), so that a
    // failure before the first tick leaves no empty file.
    let log = match &options.output {
        Some(path) => match JsonlWriter::create(path) {
            Ok(log) => Some(log),
            Err(err) => {
                if let Some(child) = child.as_mut() {
                    crate::target::stop_child(child);
                }
                return Err(err);
            }
        },
        None => None,
    };
    let root = options
        .pid
        .map(|p| p as u32)
        .or_else(|| child.as_ref().map(Child::id))
        .expect("validated: a pid or a command");
    // A child we just started can still be inside exec(): its command line then reads empty and
    // `[name]` stands in (the tool's own name, even). The header shows what we ran instead.
    // (Without a child, `options.command` is empty.)
    let command = crate::memory::process::command_of(root)
        .filter(|read| child.is_none() || !crate::memory::process::is_placeholder(read))
        .unwrap_or_else(|| options.command.join(" "));
    eprintln!(
        "pymemtrace: following PID {root} ({}) every {} s{}{}; {}Ctrl-C to stop",
        crate::report::collapsed::truncate(&crate::report::terminal::printable(&command), 60),
        options.interval,
        if options.children {
            " with its children"
        } else {
            ""
        },
        options
            .duration
            .map(|d| format!(" for {d} s"))
            .unwrap_or_default(),
        if labels.is_some() {
            "type a line and Enter to label this moment; "
        } else {
            ""
        },
    );
    if let Some(warning) = crate::target::stopped_warning(root as i32) {
        eprintln!("{warning}");
    }

    let mut collector = Collector::new();
    let log_path = log.as_ref().map(|l| l.path().to_path_buf());
    let log_is_regular_file = log.as_ref().is_some_and(JsonlWriter::is_regular_file);
    let mut fanout = Fanout {
        log,
        live: (!options.quiet).then(|| LiveTable::new(anstream::stdout())),
        collector: &mut collector,
    };
    // Without a label reader, a channel that never delivers.
    let (_keep_open, no_labels) = mpsc::channel::<String>();
    let cpu_before = own_cpu_seconds();
    let outcome = run::run(
        root,
        child.as_mut(),
        &settings,
        &stop,
        labels.as_ref().unwrap_or(&no_labels),
        &mut fanout,
    );
    let cpu_used = own_cpu_seconds() - cpu_before;
    let log_rows = fanout.log.as_ref().map_or(0, JsonlWriter::rows);
    drop(fanout);
    if let Some(child) = child.as_mut() {
        // The program is ours: end it if the run stopped first, and reap it.
        crate::target::stop_child(child);
    }
    if outcome.is_err() && log_rows == 0 && log_is_regular_file {
        if let Some(path) = &log_path {
            // Nothing was recorded: leave no empty log behind (a device or FIFO is left alone).
            let _ = std::fs::remove_file(path);
        }
    }
    let stats = outcome?;
    if let Some(path) = &log_path {
        eprintln!("pymemtrace: wrote {}", path.display());
    }
    write_pictures(options, &collector)?;
    print_summary(
        &collector,
        &RunDescription {
            how: describe_run(&stats, options.interval),
            cost: Some(cost_line(&stats, cpu_used)),
        },
    )?;
    if stats.end == EndReason::TargetExited {
        eprintln!("pymemtrace: PID {root} exited; the log and summary cover it up to its exit");
    }
    Ok(())
}

fn describe_run(stats: &RunStats, interval: f64) -> String {
    format!(
        "{:.1} s ({}), {} ticks every {interval} s",
        stats.elapsed.as_secs_f64(),
        stats.end.describe(),
        stats.ticks
    )
}

fn cost_line(stats: &RunStats, cpu_used: f64) -> String {
    let per_reading = if stats.readings > 0 {
        stats.busy.as_secs_f64() / stats.readings as f64 * 1e6
    } else {
        0.0
    };
    let elapsed = stats.elapsed.as_secs_f64().max(1e-9);
    format!(
        "tool: {} process readings, {per_reading:.0} us each; its own CPU {:.3} s, {:.2}% of a core",
        stats.readings,
        cpu_used,
        cpu_used / elapsed * 100.0
    )
}
