//! The `process` loop: one reading of every followed process per tick, on a fixed schedule.
//!
//! Ticks fall at start + k * interval, so a long run does not drift; a tick that comes late (the
//! machine was busy) is taken at once and the schedule continues. A label typed by the user is a
//! tick of its own, taken the moment it arrives.

use std::collections::HashMap;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, ErrorKind, Result};
use crate::memory::process::{
    children_of, clock_ticks_per_second, command_of, is_placeholder, ChildrenReader,
    ProcessFigures, ProcessReader, ReadError,
};

use super::model::Tick;

/// A process's command line is read again when its name changes, and every so many readings.
const COMMAND_REREAD_EVERY: u64 = 100;

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub interval: Duration,
    pub duration: Option<Duration>,
    /// Follow the whole tree under the root, children as they come and go.
    pub children: bool,
    /// Read USS and PSS from smaps_rollup (costs more: the kernel walks the page tables).
    pub smaps: bool,
}

pub use crate::target::EndReason;

/// Receives each tick's rows (root first, then each child under its parent, depth first).
pub trait TickObserver {
    fn tick(&mut self, rows: &[Tick]) -> Result<()>;
}

/// What the loop itself measured.
#[derive(Debug, Clone)]
pub struct RunStats {
    pub end: EndReason,
    pub ticks: u64,
    /// Process readings made (ticks times processes followed).
    pub readings: u64,
    /// Wall time spent reading /proc and handing rows on, in total.
    pub busy: Duration,
    pub elapsed: Duration,
    /// Processes seen over the run (the root included).
    pub processes_seen: u64,
}

/// A process being followed, with what its rates are computed from.
struct Followed {
    reader: ProcessReader,
    start_ticks: u64,
    depth: u32,
    command: String,
    /// The program image when `command` was read: a different one means an exec since.
    command_image: ([u8; 16], u64),
    first_seen: Instant,
    first_cpu_ticks: u64,
    last: Option<(Instant, ProcessFigures)>,
    readings: u64,
    children: ChildrenReader,
}

impl Followed {
    fn open(pid: u32, depth: u32, settings: &Settings) -> std::result::Result<Followed, ReadError> {
        // Peak RSS and swap at least once a second (every tick at intervals of a second or more).
        let status_every = (1.0 / settings.interval.as_secs_f64().max(1e-3)).ceil() as u64;
        let mut reader = ProcessReader::open(pid, settings.smaps)?.with_status_every(status_every);
        let figures = reader.read()?;
        Ok(Followed {
            reader,
            start_ticks: figures.stat.start_ticks,
            depth,
            command: command_of(pid).unwrap_or_default(),
            command_image: figures.stat.image(),
            first_seen: Instant::now(),
            first_cpu_ticks: figures.stat.user_ticks + figures.stat.system_ticks,
            last: None,
            readings: 0,
            children: ChildrenReader::new(pid),
        })
    }
}

/// Checks that `pid` can be followed and says clearly why not.
pub fn check_target(pid: i32, smaps: bool) -> Result<()> {
    if pid <= 0 {
        return Err(Error::usage(format!(
            "--pid must be a positive process id, not {pid}"
        )));
    }
    match ProcessReader::open(pid as u32, smaps).and_then(|mut r| r.read()) {
        Ok(_) => crate::target::check_not_kernel_thread(pid),
        Err(ReadError::Exited) => Err(Error::new(
            ErrorKind::NoSuchProcess,
            format!("no running process with PID {pid}: check the PID with `ps`"),
        )),
        Err(ReadError::PermissionDenied) => Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "may not read /proc/{pid}/smaps_rollup (--smaps needs the right to trace the \
                 process): run as its owner or with sudo, or leave out --smaps"
            ),
        )),
        Err(ReadError::Io(err)) => Err(Error::internal(format!("cannot read /proc/{pid}: {err}"))),
    }
}

/// Follows `root` (and with `children`, its descendants) until `stop`, the duration, or the root's
/// exit. `child` is the root when the tool started it (reaped here so its exit is seen). `labels`
/// delivers what the user typed.
pub fn run(
    root: u32,
    mut child: Option<&mut Child>,
    settings: &Settings,
    stop: &AtomicBool,
    labels: &Receiver<String>,
    observer: &mut dyn TickObserver,
) -> Result<RunStats> {
    let ticks_per_second = clock_ticks_per_second();
    let started_wall = SystemTime::now();
    let start = Instant::now();
    let deadline = settings.duration.map(|d| start + d);
    let mut followed: HashMap<u32, Followed> = HashMap::new();
    let mut stats = RunStats {
        end: EndReason::Interrupted,
        ticks: 0,
        readings: 0,
        busy: Duration::ZERO,
        elapsed: Duration::ZERO,
        processes_seen: 0,
    };
    let mut next_tick = start;
    let mut pending_label: Option<String> = None;
    let mut labels_open = true;

    let end = loop {
        if stop.load(Ordering::Relaxed) {
            break EndReason::Interrupted;
        }
        let now = Instant::now();
        if pending_label.is_none() && now < next_tick {
            let wake = deadline.map_or(next_tick, |d| d.min(next_tick));
            // Short slices, so Ctrl-C is seen within 100 ms whatever the interval.
            let wait = wake
                .saturating_duration_since(now)
                .min(Duration::from_millis(100));
            if labels_open {
                match labels.recv_timeout(wait) {
                    Ok(label) => pending_label = Some(label),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => labels_open = false,
                }
            } else {
                std::thread::sleep(wait);
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                break EndReason::DurationReached;
            }
            continue;
        }
        if deadline.is_some_and(|d| now >= d) {
            break EndReason::DurationReached;
        }
        let work_started = Instant::now();
        if let Some(child) = child.as_deref_mut() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break EndReason::TargetExited;
            }
        }
        let seconds = now.duration_since(start).as_secs_f64();
        let time =
            humantime::format_rfc3339_millis(started_wall + now.duration_since(start)).to_string();
        let Some(order) = discover(root, settings, &mut followed, &mut stats)? else {
            break EndReason::TargetExited;
        };
        let mut rows = Vec::with_capacity(order.len());
        let label = pending_label.take();
        for pid in order {
            let Some(process) = followed.get_mut(&pid) else {
                continue;
            };
            let figures = match process.reader.read() {
                // The same process: a PID reused by a later one has another start time.
                Ok(figures) if figures.stat.start_ticks == process.start_ticks => figures,
                Ok(_) | Err(ReadError::Exited) => {
                    followed.remove(&pid);
                    if pid == root {
                        // The root exited between discovery and reading.
                        stats.end = EndReason::TargetExited;
                    }
                    continue;
                }
                Err(ReadError::PermissionDenied) => {
                    // A child that changed owner (setuid) may no longer be readable: drop it.
                    followed.remove(&pid);
                    continue;
                }
                Err(ReadError::Io(err)) => {
                    return Err(Error::internal(format!("cannot read /proc/{pid}: {err}")))
                }
            };
            stats.readings += 1;
            process.readings += 1;
            // A process started by a launcher (a pyenv shim, `env`, a shell) exec()s into the real
            // program just after it is first seen: read its command line again when the program
            // image changed, and now and then in case the kernel hides what tells.
            // (Mid-exec the command line reads empty and `[name]` stands in: try again soon.)
            let renamed = process.command_image != figures.stat.image();
            let placeholder = is_placeholder(&process.command) && process.readings < 20;
            if renamed || placeholder || process.readings.is_multiple_of(COMMAND_REREAD_EVERY) {
                if let Some(command) = command_of(pid) {
                    process.command = command;
                    process.command_image = figures.stat.image();
                }
            }
            let mut row = tick_row(pid, process, &figures, now, ticks_per_second);
            row.time.clone_from(&time);
            row.seconds = seconds;
            if pid == root {
                row.label = label.clone();
            }
            process.last = Some((now, figures));
            rows.push(row);
        }
        if !followed.contains_key(&root) {
            break EndReason::TargetExited;
        }
        stats.ticks += 1;
        observer.tick(&rows)?;
        stats.busy += work_started.elapsed();
        if now >= next_tick {
            // Catch up without a burst of ticks after a stall: the next one is the next slot ahead.
            while next_tick <= now {
                next_tick += settings.interval;
            }
        }
    };
    stats.end = end;
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// Brings the set of followed processes up to date and returns their display order (root first,
/// each child after its parent, depth first), or None when the root is gone.
fn discover(
    root: u32,
    settings: &Settings,
    followed: &mut HashMap<u32, Followed>,
    stats: &mut RunStats,
) -> Result<Option<Vec<u32>>> {
    if let std::collections::hash_map::Entry::Vacant(slot) = followed.entry(root) {
        if stats.processes_seen > 0 {
            return Ok(None);
        }
        match Followed::open(root, 0, settings) {
            Ok(process) => {
                slot.insert(process);
                stats.processes_seen += 1;
            }
            Err(ReadError::Exited) => return Ok(None),
            Err(ReadError::PermissionDenied) => {
                return Err(Error::new(
                    ErrorKind::PermissionDenied,
                    format!("may not read /proc/{root}: run as its owner or with sudo"),
                ))
            }
            Err(ReadError::Io(err)) => {
                return Err(Error::internal(format!("cannot read /proc/{root}: {err}")))
            }
        }
    }
    let mut order = vec![root];
    if !settings.children {
        return Ok(Some(order));
    }
    // Depth-first walk of the tree as it is now; processes that left it (exited, or reparented
    // away) are dropped.
    let mut depth_of: HashMap<u32, u32> = HashMap::from([(root, 0)]);
    let mut stack = vec![root];
    order.clear();
    while let Some(pid) = stack.pop() {
        order.push(pid);
        let depth = depth_of[&pid];
        let mut kids = match followed.get_mut(&pid) {
            Some(process) => {
                let threads = process.last.as_ref().map_or(0, |(_, f)| f.stat.threads);
                process.children.read(threads)
            }
            None => children_of(pid),
        };
        kids.reverse(); // popped in ascending PID order
        for kid in kids {
            if depth_of.insert(kid, depth + 1).is_none() {
                stack.push(kid);
            }
        }
    }
    followed.retain(|pid, _| depth_of.contains_key(pid));
    let mut order_kept = Vec::with_capacity(order.len());
    for pid in order {
        let depth = depth_of[&pid];
        match followed.get_mut(&pid) {
            Some(process) => process.depth = depth,
            None => match Followed::open(pid, depth, settings) {
                Ok(process) => {
                    followed.insert(pid, process);
                    stats.processes_seen += 1;
                }
                // A child that ended as it was found, or one we may not read: not followed.
                Err(_) => continue,
            },
        }
        order_kept.push(pid);
    }
    Ok(Some(order_kept))
}

/// One row from a reading and the process's previous one.
fn tick_row(
    pid: u32,
    process: &mut Followed,
    figures: &ProcessFigures,
    now: Instant,
    ticks_per_second: f64,
) -> Tick {
    let stat = &figures.stat;
    let cpu_ticks = stat.user_ticks + stat.system_ticks;
    let (minor_rate, major_rate, cpu_percent) = match &process.last {
        Some((then, last)) => {
            let dt = now.duration_since(*then).as_secs_f64().max(1e-6);
            let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / dt;
            (
                rate(stat.minor_faults, last.stat.minor_faults),
                rate(stat.major_faults, last.stat.major_faults),
                rate(cpu_ticks, last.stat.user_ticks + last.stat.system_ticks) * 100.0
                    / ticks_per_second,
            )
        }
        _ => (0.0, 0.0, 0.0),
    };
    let watched = now.duration_since(process.first_seen).as_secs_f64();
    let cpu_percent_mean = if watched > 0.0 {
        cpu_ticks.saturating_sub(process.first_cpu_ticks) as f64 / ticks_per_second / watched
            * 100.0
    } else {
        0.0
    };
    Tick {
        time: String::new(),
        seconds: 0.0,
        pid,
        ppid: stat.ppid,
        depth: process.depth,
        command: process.command.clone(),
        rss: figures.status.rss,
        vms: figures.status.vms,
        peak_rss: figures.status.peak_rss,
        swap: figures.status.swap,
        minor_faults_per_second: minor_rate,
        major_faults_per_second: major_rate,
        user_seconds: stat.user_ticks as f64 / ticks_per_second,
        system_seconds: stat.system_ticks as f64 / ticks_per_second,
        cpu_percent_mean,
        cpu_percent,
        threads: stat.threads,
        uss: figures.rollup.map(|r| r.uss),
        pss: figures.rollup.map(|r| r.pss),
        label: None,
    }
}
