//! The attach loop: RSS every millisecond, Python stacks as fast as they come while memory moves.
//!
//! Why adaptive: a stack read costs 50-400 us, an RSS read about 2 us. Charging each RSS change to
//! the stack seen at the next tick of a fixed 1 kHz clock puts much of a burst's growth on whatever
//! ran after it; reading stacks back to back while RSS is moving keeps the charged stack within a
//! stack read of the change. When RSS has been flat for [`Settings::hot_window`], the loop falls
//! back to polling RSS only, with stack reads at the `--rate` floor, so a quiet target costs little.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use py_spy::StackTrace;

mod recover;
mod thread_ids;
mod worker;

use std::collections::HashMap;

use crate::attribution::{
    chargeable, fault_weighted, Frame, FrameId, Profile, StackId, ThreadSample,
};
use crate::error::{Error, Result};
use crate::memory::{RssError, RssReader, ThreadFaults};
use crate::report::terminal::printable_owned;
use crate::target::Target;

/// Which stack read an RSS change is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChargePolicy {
    /// The stack read right after the change was seen (a fixed-clock sampler's rule; kept for
    /// comparison, see docs/how-it-works.md).
    After,
    /// Growth and release to the stack read just before the change was seen, i.e. the read that
    /// ran while the change happened.
    Before,
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Stack reads per second while RSS is flat (the floor).
    pub rate: f64,
    /// Upper bound on stack reads per second; None reads as fast as they go.
    pub max_rate: Option<f64>,
    pub duration: Option<Duration>,
    /// Keep threads apart (a root frame per thread).
    pub threads: bool,
    /// Charge idle threads when no running thread is seen.
    pub idle: bool,
    /// How long after the last RSS change stacks keep being read at full speed.
    pub hot_window: Duration,
    /// RSS poll period while flat.
    pub rss_poll: Duration,
    pub policy: ChargePolicy,
    /// Use per-thread page faults to find the thread that grew (falls back to the GIL rule).
    pub thread_faults: bool,
    /// How often progress is reported to the observer.
    pub progress_every: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            rate: 100.0,
            max_rate: None,
            duration: None,
            threads: false,
            idle: false,
            hot_window: Duration::from_millis(100),
            rss_poll: Duration::from_millis(1),
            policy: ChargePolicy::Before,
            thread_faults: true,
            progress_every: Duration::from_millis(250),
        }
    }
}

pub use crate::target::EndReason;

/// One RSS change and what it was charged to, for streamed event logs.
#[derive(Debug)]
pub struct Change<'a> {
    /// Number of the stack read that carried the change (1-based).
    pub sample: u64,
    /// Seconds since sampling started.
    pub clock: f64,
    pub rss: u64,
    pub delta: i64,
    /// The stacks charged (empty: `<unattributed>`).
    pub charged: &'a [StackId],
    /// The stack read just before this one, when it succeeded.
    pub previous: Option<PreviousSample<'a>>,
}

/// The stack read before a change: what ran just before the change was seen.
#[derive(Debug)]
pub struct PreviousSample<'a> {
    pub clock: f64,
    pub rss: u64,
    pub charged: &'a [StackId],
}

/// Live figures for the status line.
#[derive(Debug, Clone)]
pub struct Progress {
    pub elapsed: Duration,
    pub samples: u64,
    pub lost: u64,
    pub rss: u64,
    pub rss_start: u64,
}

/// Receives what happens while sampling. Both methods default to doing nothing.
pub trait Observer {
    fn change(&mut self, _change: &Change<'_>, _profile: &Profile) {}
    fn progress(&mut self, _progress: &Progress, _profile: &Profile) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// Everything a sampling run produced.
#[derive(Debug)]
pub struct Recording {
    pub profile: Profile,
    /// Successful stack reads (partial ones included).
    pub samples: u64,
    /// Stack reads that failed even after retries and reading thread by thread: lost ticks.
    pub lost: u64,
    /// How the samples were got under thread churn (see [`ReadRecovery`]).
    pub recovery: ReadRecovery,
    pub rss_polls: u64,
    pub rss_start: u64,
    pub rss_end: u64,
    pub rss_peak: u64,
    pub started: SystemTime,
    pub elapsed: Duration,
    /// Time spent with stacks read at full speed, and the reads made then.
    pub hot_time: Duration,
    pub hot_samples: u64,
    /// Thread samples whose kernel thread id stayed unknown (those fall back to the GIL rule).
    pub threads_without_id: u64,
    /// Bytes of change (grown plus released) first seen after the tool itself went more than
    /// [`STARVED`] without running: the machine was too busy to watch, so where they were charged
    /// is a guess. A high share means the shares in the report are approximate.
    pub late_bytes: u64,
    /// Bytes of change (grown plus released) charged in all.
    pub changed_bytes: u64,
    /// The longest the RSS poll loop went without running (1 ms when the tool gets a core).
    pub longest_gap: Duration,
    pub end: EndReason,
}

/// Samples that needed more than one whole read (a thread ended while py-spy walked it), and reads
/// that took longer than they should.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadRecovery {
    /// Stack reads that took longer than the sampling interval (1 / `--rate`): while one runs,
    /// no other stack is read, so the ticks it covers are lost to it. A read abandoned at the
    /// deadline or at Ctrl-C counts.
    pub slow_reads: u64,
    /// The longest stack read (an abandoned one up to when it was abandoned).
    pub longest_read: Duration,
    /// Samples got by a whole read after one or more whole reads failed.
    pub retried: u64,
    /// Samples read from the threads after one that could not be read (the rest left out).
    pub partial: u64,
    /// Thread states left out of partial samples in all.
    pub threads_skipped: u64,
    /// Whether reading thread by thread was possible: the thread-list offsets for this Python
    /// were checked on the target (off: unknown version, or fewer than two threads ever seen).
    pub by_thread: bool,
}

impl Recording {
    /// The share of all change that was seen late (see [`Recording::late_bytes`]).
    pub fn late_fraction(&self) -> f64 {
        if self.changed_bytes == 0 {
            0.0
        } else {
            self.late_bytes as f64 / self.changed_bytes as f64
        }
    }

    pub fn lost_fraction(&self) -> f64 {
        let attempts = self.samples + self.lost;
        if attempts == 0 {
            0.0
        } else {
            self.lost as f64 / attempts as f64
        }
    }

    /// Stack reads per second while memory was moving.
    pub fn hot_rate(&self) -> Option<f64> {
        let secs = self.hot_time.as_secs_f64();
        (secs > 0.01).then(|| self.hot_samples as f64 / secs)
    }
}

/// Turns one stack read into interned thread samples. Names are made printable here, for every
/// output: the target chooses them (escape sequences for the user's terminal), a nonblocking read
/// can race a frame being torn down and return garbage, and a NUL byte would make the SVG invalid
/// XML.
fn intern_traces(
    profile: &mut Profile,
    traces: Vec<StackTrace>,
    threads: bool,
) -> Vec<ThreadSample> {
    traces
        .into_iter()
        .map(|trace| {
            let mut ids: Vec<FrameId> = Vec::with_capacity(trace.frames.len() + 1);
            if threads {
                let tid = trace.os_thread_id.unwrap_or(trace.thread_id);
                let name = trace.thread_name.clone().map(printable_owned);
                ids.push(profile.thread_root(tid, name.as_deref()));
            }
            // py-spy lists frames innermost first; the profile keeps them outermost first.
            for frame in trace.frames.into_iter().rev() {
                ids.push(profile.intern_frame(Frame {
                    function: printable_owned(frame.name),
                    file: printable_owned(frame.short_filename.unwrap_or(frame.filename)),
                    line: frame.line,
                }));
            }
            ThreadSample {
                stack: profile.intern_stack(ids),
                owns_gil: trace.owns_gil,
                active: trace.active,
                os_thread_id: trace.os_thread_id,
            }
        })
        .collect()
}

/// A poll loop that went this long without running was not scheduled (it sleeps 1 ms): a change
/// seen after such a gap happened at some unknown point in it, while no stack was being read.
pub const STARVED: Duration = Duration::from_millis(3);

/// How old a thread's last GIL-holding stack may be and still stand for a burst no read caught.
const LONGEST_GIL_MEMORY: Duration = Duration::from_secs(5);

/// Each thread's last stack while holding the GIL, per kernel thread id, with when it was seen.
#[derive(Default)]
struct RecentStacks {
    holding_gil: HashMap<u64, (StackId, Instant)>,
}

impl RecentStacks {
    fn record(&mut self, threads: &[ThreadSample], now: Instant) {
        for thread in threads.iter().filter(|t| t.owns_gil) {
            if let Some(tid) = thread.os_thread_id {
                self.holding_gil.insert(tid, (thread.stack, now));
            }
        }
        if self.holding_gil.len() > 4 * threads.len() + 64 {
            // Forget threads that ended long ago.
            self.holding_gil
                .retain(|_, (_, seen)| now.duration_since(*seen) < LONGEST_GIL_MEMORY);
        }
    }
}

/// The stack to charge each kernel thread with, given the read that overlapped the change (`basis`)
/// and the read just made (`current`). Python objects are only allocated with the GIL held, so the
/// thread's stack while it held the GIL comes first: in `basis`, in `current`, or its last one within
/// `recent` (a thread that allocated in a short burst and then slept, or now waits for the GIL, is
/// charged with what it ran, not with where it waits). Then, for native code that released the GIL,
/// its stack while running: in `basis`, in `current`. Then its last GIL-holding stack of the last
/// few seconds. Else its stack in `basis` as it was.
fn stacks_by_thread(
    basis: &[ThreadSample],
    current: &[ThreadSample],
    recent_stacks: &RecentStacks,
    now: Instant,
    recent: Duration,
) -> HashMap<u64, StackId> {
    let mut chosen: HashMap<u64, StackId> = HashMap::new();
    let find = |threads: &[ThreadSample], tid: u64, wanted: fn(&ThreadSample) -> bool| {
        threads
            .iter()
            .find(|t| t.os_thread_id == Some(tid) && wanted(t))
            .map(|t| t.stack)
    };
    for thread in basis.iter().chain(current) {
        let Some(tid) = thread.os_thread_id else {
            continue;
        };
        if chosen.contains_key(&tid) {
            continue;
        }
        let held_gil_within = |limit: Duration| {
            recent_stacks
                .holding_gil
                .get(&tid)
                .filter(|(_, seen)| now.duration_since(*seen) <= limit)
                .map(|(stack, _)| *stack)
        };
        let stack = find(basis, tid, |t| t.owns_gil)
            .or_else(|| find(current, tid, |t| t.owns_gil))
            .or_else(|| held_gil_within(recent))
            .or_else(|| find(basis, tid, |t| t.active))
            .or_else(|| find(current, tid, |t| t.active))
            // The thread faulted, so it ran, but no read caught it: where it last ran Python code is
            // better evidence than where it sleeps now. (On a loaded machine the tool can miss a short
            // burst many times in a row when it shares a core with the thread.)
            .or_else(|| held_gil_within(LONGEST_GIL_MEMORY))
            .unwrap_or(thread.stack);
        chosen.insert(tid, stack);
    }
    chosen
}

/// Gives kernel thread ids to the traces that lack them (CPython < 3.11), and takes their activity
/// from the scheduler state, where py-spy could only guess it from the frames.
fn fill_thread_ids(
    traces: &mut [StackTrace],
    target: &Target,
    resolver: &mut thread_ids::ThreadIdResolver,
    faults: &mut ThreadFaults,
) {
    let missing: Vec<u64> = traces
        .iter()
        .filter(|t| t.os_thread_id.is_none())
        .map(|t| t.thread_id)
        .collect();
    if missing.is_empty() {
        return;
    }
    let pid = target.pid as u64;
    // No read is running (the loop waits for each), so the lock is free.
    let spy = target
        .spy
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut found = resolver.resolve(&spy.process, pid, &missing, faults);
    if found.len() < missing.len() {
        // A thread newer than the last scan of the thread list: scan now.
        faults.rescan();
        found = resolver.resolve(&spy.process, pid, &missing, faults);
    }
    for trace in traces.iter_mut().filter(|t| t.os_thread_id.is_none()) {
        trace.os_thread_id = found.get(&trace.thread_id).copied();
        if let Some(running) = trace.os_thread_id.and_then(|tid| faults.is_running(tid)) {
            trace.active = running;
        }
    }
}

/// Runs the loop until `stop` is set, the duration passes or the target exits.
pub fn run(
    target: &mut Target,
    settings: &Settings,
    stop: &Arc<AtomicBool>,
    observer: &mut dyn Observer,
) -> Result<Recording> {
    let mut rss_reader = RssReader::open(target.pid)
        .map_err(|err| Error::internal(format!("cannot open /proc/{}/statm: {err}", target.pid)))?;
    let rss_start = match rss_reader.rss_bytes() {
        Ok(rss) => rss,
        Err(RssError::Exited) => {
            return Err(Error::new(
                crate::error::ErrorKind::NoSuchProcess,
                format!("PID {} exited before sampling started", target.pid),
            ))
        }
        Err(RssError::Io(err)) => return Err(Error::internal(format!("cannot read RSS: {err}"))),
    };

    let started = SystemTime::now();
    let start = Instant::now();
    let deadline = settings.duration.map(|d| start + d);
    let floor_interval = Duration::from_secs_f64(1.0 / settings.rate.max(0.001));
    let min_interval = settings
        .max_rate
        .map(|rate| Duration::from_secs_f64(1.0 / rate.max(0.001)))
        .unwrap_or(Duration::ZERO);

    let mut profile = Profile::new();
    let mut rec = Recording {
        profile: Profile::new(),
        samples: 0,
        lost: 0,
        recovery: ReadRecovery::default(),
        rss_polls: 1,
        rss_start,
        rss_end: rss_start,
        rss_peak: rss_start,
        started,
        elapsed: Duration::ZERO,
        hot_time: Duration::ZERO,
        hot_samples: 0,
        threads_without_id: 0,
        late_bytes: 0,
        changed_bytes: 0,
        longest_gap: Duration::ZERO,
        end: EndReason::Interrupted,
    };
    let mut last_rss = rss_start;
    let mut pending: i64 = 0;
    // Whether part of `pending` was first seen after the tool had been starved of CPU.
    let mut pending_late = false;
    let mut last_change: Option<Instant> = None;
    let mut last_read: Option<Instant> = None;
    // The previous successful stack read (the one that ran while a newly seen change happened),
    // with its time and RSS.
    let mut previous_threads: Option<Vec<ThreadSample>> = None;
    let mut previous_charge: Vec<StackId> = Vec::new();
    let mut previous_clock = 0.0;
    let mut previous_rss = rss_start;
    let mut faults = ThreadFaults::new(target.pid);
    let mut pending_faults: HashMap<u64, u64> = HashMap::new();
    let mut faults_usable = settings.thread_faults;
    // Each thread's most recent stacks: a thread that faulted in a short burst and went back to
    // sleep before the next read is charged with what it ran, not with its sleep.
    let mut recent_stacks = RecentStacks::default();
    let mut thread_ids = thread_ids::ThreadIdResolver::default();
    let mut reader = worker::ReadThread::start(target.spy.clone());
    let mut by_thread = false;
    let mut last_progress = start;
    let mut last_loop = start;

    let end = loop {
        let now = Instant::now();
        if stop.load(Ordering::Relaxed) {
            break EndReason::Interrupted;
        }
        if deadline.is_some_and(|d| now >= d) {
            break EndReason::DurationReached;
        }
        if let Some(child) = target.child.as_mut() {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break EndReason::TargetExited;
            }
        }

        let rss = match rss_reader.rss_bytes() {
            Ok(rss) => rss,
            Err(RssError::Exited) => break EndReason::TargetExited,
            Err(RssError::Io(err)) => {
                return Err(Error::internal(format!(
                    "cannot read RSS of PID {}: {err}",
                    target.pid
                )))
            }
        };
        rec.rss_polls += 1;
        let gap = now.duration_since(last_loop);
        rec.longest_gap = rec.longest_gap.max(gap);
        if rss != last_rss {
            pending += rss as i64 - last_rss as i64;
            last_rss = rss;
            last_change = Some(now);
            pending_late |= gap > STARVED;
        }
        rec.rss_end = rss;
        rec.rss_peak = rec.rss_peak.max(rss);

        let hot = last_change.is_some_and(|t| now.duration_since(t) < settings.hot_window);
        if hot {
            rec.hot_time += now.duration_since(last_loop);
        }
        last_loop = now;
        if faults_usable {
            faults_usable = faults.poll(&mut pending_faults);
            if !hot && pending == 0 {
                // Faults while RSS stayed flat were offset by frees: they say nothing about the next change.
                pending_faults.clear();
            }
        }
        let since_read = last_read.map(|t| now.duration_since(t));
        let floor_due = since_read.is_none_or(|d| d >= floor_interval);
        let cap_allows = since_read.is_none_or(|d| d >= min_interval);

        if (pending != 0 || hot || floor_due) && cap_allows {
            last_read = Some(now);
            // Retried, then read thread by thread: a thread ending mid-read fails py-spy's
            // whole read (recover.rs). On a thread of its own, so that a read of a huge target
            // cannot hold the loop past the deadline or Ctrl-C (worker.rs).
            let outcome = match reader.read(deadline, stop) {
                worker::Waited::Done(outcome) => outcome,
                worker::Waited::Deadline(took) | worker::Waited::Stopped(took) => {
                    // Abandoned: a tick lost to a slow read, unless it had only just begun.
                    if took > floor_interval {
                        rec.recovery.slow_reads += 1;
                        rec.lost += 1;
                    }
                    rec.recovery.longest_read = rec.recovery.longest_read.max(took);
                    continue;
                }
            };
            rec.recovery.longest_read = rec.recovery.longest_read.max(outcome.took);
            if outcome.took > floor_interval {
                rec.recovery.slow_reads += 1;
            }
            by_thread = outcome.by_thread;
            match outcome.result {
                Ok(read) => {
                    let mut traces = read.traces;
                    if read.skipped > 0 {
                        rec.recovery.partial += 1;
                        rec.recovery.threads_skipped += read.skipped as u64;
                    } else if read.failed_attempts > 0 {
                        rec.recovery.retried += 1;
                    }
                    if faults_usable {
                        fill_thread_ids(&mut traces, target, &mut thread_ids, &mut faults);
                    }
                    rec.threads_without_id +=
                        traces.iter().filter(|t| t.os_thread_id.is_none()).count() as u64;
                    rec.samples += 1;
                    if hot {
                        rec.hot_samples += 1;
                    }
                    let threads = intern_traces(&mut profile, traces, settings.threads);
                    let charged = chargeable(&threads, settings.idle);
                    let clock = now.duration_since(start).as_secs_f64();
                    if pending != 0 {
                        let use_previous = settings.policy == ChargePolicy::Before;
                        let (basis, basis_charge) = match (&previous_threads, use_previous) {
                            (Some(previous), true) => (previous.as_slice(), &previous_charge),
                            _ => (threads.as_slice(), &charged),
                        };
                        // Growth comes from page faults, so the faulting threads are the growers.
                        let weights = (pending > 0 && faults_usable && !pending_faults.is_empty())
                            .then(|| {
                                let stacks = stacks_by_thread(
                                    basis,
                                    &threads,
                                    &recent_stacks,
                                    now,
                                    settings.hot_window,
                                );
                                fault_weighted(&stacks, &pending_faults)
                            })
                            .flatten();
                        let to: Vec<StackId> = match &weights {
                            Some(weights) => {
                                profile.charge_weighted(pending, weights);
                                weights.iter().filter_map(|(stack, _)| *stack).collect()
                            }
                            None => {
                                profile.charge(pending, basis_charge);
                                basis_charge.clone()
                            }
                        };
                        observer.change(
                            &Change {
                                sample: rec.samples,
                                clock,
                                rss,
                                delta: pending,
                                charged: &to,
                                previous: previous_threads.is_some().then_some(PreviousSample {
                                    clock: previous_clock,
                                    rss: previous_rss,
                                    charged: &previous_charge,
                                }),
                            },
                            &profile,
                        );
                        rec.changed_bytes += pending.unsigned_abs();
                        if pending_late {
                            rec.late_bytes += pending.unsigned_abs();
                        }
                        pending = 0;
                        pending_late = false;
                        // These faults are accounted for. (statm lags by up to a batch of pages per
                        // CPU, so a little of their growth can show in a later change; that one goes
                        // by the faults seen by then.)
                        pending_faults.clear();
                    }
                    recent_stacks.record(&threads, now);
                    previous_charge = charged;
                    previous_threads = Some(threads);
                    previous_clock = clock;
                    previous_rss = rss;
                }
                Err(recover::ReadError::Corrupt(corrupt)) => {
                    return Err(corrupt.error(target.pid));
                }
                Err(recover::ReadError::Failed) => {
                    if !crate::target::is_alive(target.pid) {
                        break EndReason::TargetExited;
                    }
                    // The change stays pending and goes to the next stack that can be read.
                    rec.lost += 1;
                    previous_threads = None;
                }
            }
        } else {
            let wait = if pending != 0 {
                // Capped: wait just until the next read is allowed.
                min_interval.saturating_sub(since_read.unwrap_or_default())
            } else {
                settings.rss_poll
            };
            std::thread::sleep(wait.min(settings.rss_poll));
        }

        if now.duration_since(last_progress) >= settings.progress_every {
            last_progress = now;
            observer.progress(
                &Progress {
                    elapsed: now.duration_since(start),
                    samples: rec.samples,
                    lost: rec.lost,
                    rss,
                    rss_start,
                },
                &profile,
            );
        }
    };

    // A change seen after the last stack read belongs to nobody we saw.
    if pending != 0 {
        profile.charge(pending, &[]);
        rec.changed_bytes += pending.unsigned_abs();
    }
    profile.name_threads();
    rec.recovery.by_thread = by_thread;
    rec.end = end;
    rec.elapsed = start.elapsed();
    rec.profile = profile;
    Ok(rec)
}
