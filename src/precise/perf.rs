//! The `perf_event_open` engine of `attach --precise`, for where bpftrace cannot run (not root,
//! no bpftrace, no BPF), or when asked with `--precise-engine perf`.
//!
//! A software page-fault event (`PERF_COUNT_SW_PAGE_FAULTS`, a sample every [`PAGES_PER_SAMPLE`]
//! faults carrying the thread id and time, a wakeup per sample) on each thread of the target and each CPU, with `inherit`, so
//! that every thread the target starts later is counted from its first instruction by the kernel
//! (no rescanning, no window where a new thread's faults are missed). The events of one CPU share
//! one ring buffer (PERF_EVENT_IOC_SET_OUTPUT): `inherit` forbids a buffer per thread, and one per
//! CPU keeps the locked memory small (an unprivileged user may lock 516 KiB of them in all).
//! Each wakeup drains the buffers, counts the samples per thread and, at once, reads each such
//! thread's Python stack from /proc/PID/mem (the offsets of the bpftrace program,
//! src/dtrace/offsets.rs), and charges their pages to that stack. No sample is dropped unseen (a
//! full buffer reports how many it lost, which are charged to the thread that sampled last on
//! that CPU); what can be wrong is the stack, when the thread moved on between its faults and the
//! read, and, for less than 64 KiB, which thread's faults end a sampling period.
//!
//! Releases cannot be seen this way (uprobes and syscall tracepoints need the privileges this
//! engine is for doing without), so they are inferred: every [`RECONCILE_EVERY`] the RSS is
//! compared with the start RSS plus everything charged so far; a gap larger than [`DEAD_BAND`] (a
//! release, or growth no counted fault explains) is charged to the current stacks of the threads
//! that ran since the last such charge, in proportion to their CPU time
//! (/proc/PID/task/TID/schedstat).

use std::collections::{HashMap, HashSet};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use perf_event::events::Software;
use perf_event::{Builder, Clock, Counter, SampleFlag, Sampler};

use super::{Namer, FOLDED};
use crate::attribution::{Frame, Profile, StackId};
use crate::dtrace::offsets::{FrameLayout, ThreadSelf};
use crate::error::{Error, ErrorKind, Result};
use crate::memory::RssReader;
use crate::sampler::{EndReason, Recording};
use crate::target::walk::{self, Corrupt, Walker};

/// What the report says when this engine ran and counted faults in kernel mode too.
pub const MODE: &str = "precise (perf_event_open page-fault sampling)";
/// ... and when only user-mode faults could be counted (perf_event_paranoid 2 without
/// CAP_PERFMON: faults taken inside system calls, such as read() into a fresh buffer, are then
/// only seen through the RSS reconciliation).
pub const MODE_USER: &str = "precise (perf_event_open page-fault sampling, user-mode faults)";

/// The longest sleep of the loop (for Ctrl-C, the duration and the target's exit).
const TICK: Duration = Duration::from_millis(5);
/// After a stack read, the tool sleeps this long before it looks at the buffers again: a read
/// costs about 20-30 us of the tool's CPU, and one per sample cost about 0.8 of what reading
/// stacks at full speed costs, while memory moves fast (benches/precise_cost.py).
const HOLD: Duration = Duration::from_micros(500);
/// How often the RSS is reconciled with the charged pages.
const RECONCILE_EVERY: Duration = Duration::from_millis(5);
/// A stack read for a fault this recently still takes the thread's releases.
const RECENT_NS: u64 = 50_000_000;
/// A gap between RSS and charged bytes smaller than this is left for later: reading the RSS
/// and the buffers cannot be atomic, so a few pages of difference are always in flight.
const DEAD_BAND: i64 = 256 * 1024;
/// Ring buffer per CPU (data part): 2730 samples of 24 bytes.
const RING_BYTES: usize = 64 * 1024;

/// Faults per sample: each sample stands for this many pages of its thread, charged to the stack
/// read when it wakes the tool. One sample per fault (and so a wakeup per fault) slowed an
/// allocation-heavy target 6-10x on this 2-core machine (benches/precise_cost.py): the wakeup,
/// not the count, is the cost. 16 pages (64 KiB) cut that 3-4x with no loss of accuracy
/// measurable under the machine's noise on the bursty fixtures, whose bursts are 0.5-2 MB.
const PAGES_PER_SAMPLE: u64 = 16;

const RECORD_LOST: u32 = 2;
const RECORD_SAMPLE: u32 = 9;

/// The events of one CPU: the buffer's own (on the main thread) and the other threads'.
struct Cpu {
    buffer: Sampler,
    _others: Vec<Counter>,
    /// Its owner's thread exited: polling it would return at once, so it is only drained.
    hung_up: bool,
    /// The thread of the last sample, charged with samples the buffer reports lost.
    last_tid: Option<i32>,
}

/// Opens the fault event of thread `tid` (and, inherited, of the threads it starts) on `cpu`.
fn open_event(tid: i32, cpu: usize, user_only: bool) -> std::io::Result<Counter> {
    Builder::new(Software::PAGE_FAULTS)
        .observe_pid(tid)
        .one_cpu(cpu)
        .inherit(true)
        .sample_period(PAGES_PER_SAMPLE)
        .sample(SampleFlag::TID | SampleFlag::TIME)
        .clockid(Clock::MONOTONIC)
        .wakeup_events(1)
        .exclude_kernel(user_only)
        .exclude_hv(true)
        .enabled(true)
        .build()
}

/// Whether this engine can run on `pid` (one event on its main thread), and in which mode.
pub fn probe(pid: i32) -> std::result::Result<&'static str, String> {
    match open_event(pid, 0, false) {
        Ok(_) => Ok(MODE),
        Err(first) => match open_event(pid, 0, true) {
            Ok(_) => Ok(MODE_USER),
            Err(_) => Err(format!(
                "perf_event_open on PID {pid} failed: {first} (kernel.perf_event_paranoid is {})",
                std::fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_else(|_| "unknown".into())
            )),
        },
    }
}

/// One set of events per online CPU, each set covering every current thread of `pid` (the main
/// thread first: its event owns the buffer).
fn open_all(pid: i32, user_only: bool) -> std::io::Result<Vec<Cpu>> {
    let mut tids = task_ids(pid);
    tids.sort_by_key(|&tid| (tid != pid, tid));
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: sysconf has no preconditions.
    let configured = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize;
    let mut out = Vec::new();
    let mut first_error = None;
    for cpu in 0..configured.max(cpus) {
        let mut events = Vec::new();
        for &tid in &tids {
            match open_event(tid, cpu, user_only) {
                Ok(counter) => events.push(counter),
                // A thread that just exited, or an offline CPU.
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        if events.is_empty() {
            continue;
        }
        let buffer = events.remove(0).sampled(RING_BYTES)?;
        for other in &events {
            // SAFETY: both are open perf event descriptors on the same CPU.
            let redirected = unsafe {
                perf_event_open_sys::ioctls::SET_OUTPUT(other.as_raw_fd(), buffer.as_raw_fd())
            };
            if redirected != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        out.push(Cpu {
            buffer,
            _others: events,
            hung_up: false,
            last_tid: None,
        });
    }
    match (out.is_empty(), first_error) {
        (true, Some(e)) => Err(e),
        _ => Ok(out),
    }
}

fn task_ids(pid: i32) -> Vec<i32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn thread_alive(pid: i32, tid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}/task/{tid}")).exists()
}

fn cpu_ns(pid: i32, tid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A record's body as little-endian... native-endian u32/u64 fields.
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// Reads thread states and stacks from the live target.
struct Reader {
    namer: Namer,
    runtime: u64,
    depth: u32,
    /// Where glibc's `struct pthread` keeps the kernel thread id (3.8-3.10, whose thread states
    /// know only the pthread_t); found by [`Reader::calibrate`].
    pthread_tid: Option<u64>,
    walker: Walker,
}

impl Reader {
    fn layout(&self) -> &'static FrameLayout {
        self.namer.layout
    }

    /// (thread id field, thread state) of every thread state of the main interpreter. The list
    /// is the target's: walked with a visited set and a cap, and a loop is an error once seen on
    /// a few walks in a row (src/target/walk.rs).
    fn thread_states(&mut self) -> std::result::Result<Vec<(u64, u64)>, Corrupt> {
        let layout = self.layout();
        let Some(interp) = self.namer.u64_at(self.runtime + layout.runtime_interp_main) else {
            return Ok(Vec::new());
        };
        let namer = &self.namer;
        let walker = &mut self.walker;
        let mut read = |address| namer.u64_at(address);
        let mut states = Vec::new();
        walk::confirmed(|| {
            walker.thread_states(
                &mut read,
                interp + layout.interp_threads_head,
                layout.tstate_next,
                &mut states,
            )
        })?;
        Ok(states
            .into_iter()
            .map_while(|ts| Some((namer.u64_at(ts + layout.tstate_thread_id)?, ts)))
            .collect())
    }

    /// 3.8-3.10: finds the offset of `tid` in glibc's `struct pthread` (0x2d0 on x86-64 glibc
    /// 2.x) by checking that every thread state's pthread_t holds one of the target's thread ids
    /// there.
    fn calibrate(&mut self, tids: &HashSet<i32>) {
        if self.layout().thread_self != ThreadSelf::PthreadFsBase || self.pthread_tid.is_some() {
            return;
        }
        let states: Vec<u64> = self
            .thread_states()
            .unwrap_or_default()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|&id| id != 0)
            .collect();
        if states.is_empty() {
            return;
        }
        let fits = |offset: u64| {
            states.iter().all(|&pthread| {
                self.namer
                    .read(pthread + offset, 4)
                    .and_then(|b| Some(i32::from_ne_bytes(b.get(..4)?.try_into().ok()?)))
                    .is_some_and(|tid| tids.contains(&tid))
            })
        };
        self.pthread_tid = std::iter::once(0x2d0)
            .chain((0..0x1000).step_by(4))
            .find(|&offset| fits(offset));
    }

    /// Thread state of each kernel thread id that has one.
    fn states_by_tid(&mut self) -> Result<HashMap<i32, u64>> {
        let mut out = HashMap::new();
        let states = self
            .thread_states()
            .map_err(|corrupt| corrupt.error(self.namer.pid))?;
        for (id, ts) in states {
            let tid = match self.layout().thread_self {
                ThreadSelf::NativeId => Some(id as i32),
                ThreadSelf::PthreadFsBase => self.pthread_tid.and_then(|offset| {
                    let bytes = self.namer.read(id + offset, 4)?;
                    Some(i32::from_ne_bytes(bytes.get(..4)?.try_into().ok()?))
                }),
            };
            if let Some(tid) = tid {
                out.insert(tid, ts);
            }
        }
        Ok(out)
    }

    /// The code objects of thread state `ts`'s frames, innermost first (up to the depth), and
    /// whether deeper frames were left out.
    fn codes(&self, ts: u64) -> (Vec<u64>, bool) {
        let layout = self.layout();
        let mut frame = ts;
        for &offset in layout.tstate_frame {
            frame = match self.namer.u64_at(frame + offset) {
                Some(next) if next != 0 => next,
                _ => return (Vec::new(), false),
            };
        }
        let mut codes = Vec::new();
        let mut steps = 0;
        while frame != 0 && steps < self.depth {
            steps += 1;
            let entry = layout.frame_owner.is_some_and(|owner| {
                self.namer
                    .read(frame + owner, 1)
                    .is_some_and(|b| b.first() == Some(&3))
            });
            if !entry {
                match self.namer.u64_at(frame + layout.frame_code) {
                    Some(code) if code != 0 => codes.push(code),
                    _ => {}
                }
            }
            frame = self
                .namer
                .u64_at(frame + layout.frame_previous)
                .unwrap_or(0);
        }
        (codes, frame != 0)
    }

    /// The thread's name now, read each time since a thread may name itself after its first
    /// faults (pthread_setname_np), as bpftrace's `comm` at each fault would see; the last name
    /// read once it has exited.
    fn comm(&mut self, pid: i32, tid: i32) -> String {
        match std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")) {
            Ok(name) => {
                let name = name.trim().to_string();
                self.namer.thread_names.insert(tid as u64, name.clone());
                name
            }
            Err(_) => self
                .namer
                .thread_names
                .get(&(tid as u64))
                .cloned()
                .unwrap_or_default(),
        }
    }

    /// The profile stack thread `tid` is in now.
    fn stack(
        &mut self,
        profile: &mut Profile,
        states: &HashMap<i32, u64>,
        tid: i32,
        threads: bool,
    ) -> StackId {
        let pid = self.namer.pid;
        let (codes, more) = states
            .get(&tid)
            .map(|&ts| self.codes(ts))
            .unwrap_or_default();
        let mut frames = Vec::new();
        if threads {
            let name = self.comm(pid, tid);
            frames.push(
                profile.thread_root(tid as u64, Some(name.as_str()).filter(|n| !n.is_empty())),
            );
        }
        if codes.is_empty() {
            // No Python frame: the thread is named, as the bpftrace engine does.
            let name = self.comm(pid, tid);
            let label = if name.is_empty() {
                "<native>".to_string()
            } else {
                format!("<native {name}>")
            };
            frames.push(profile.intern_frame(Frame::synthetic(&label)));
        } else {
            if more {
                frames.push(profile.intern_frame(Frame::synthetic(FOLDED)));
            }
            for &code in codes.iter().rev() {
                let frame = match self.namer.names.get(&code) {
                    Some(frame) => frame.clone(),
                    None => {
                        let frame = self.namer.frame_of(code);
                        self.namer.names.insert(code, frame.clone());
                        frame
                    }
                };
                frames.push(profile.intern_frame(frame));
            }
        }
        profile.intern_stack(frames)
    }
}

/// Runs the engine on `options.pid` until Ctrl-C (`stop`), the duration or the target's exit.
/// `mode` is what [`probe`] said.
pub fn run(options: &super::Options, mode: &'static str, stop: &AtomicBool) -> Result<Recording> {
    let (layout, runtime) = super::frame_layout(options.pid)?;
    let pid = options.pid;
    let user_only = mode == MODE_USER;
    let page = crate::memory::page_size() as i64;
    let sample_bytes = page * PAGES_PER_SAMPLE as i64;
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(|e| {
        Error::new(
            ErrorKind::PermissionDenied,
            format!("attach --precise cannot read the memory of PID {pid}: {e}"),
        )
    })?;
    let mut reader = Reader {
        namer: Namer {
            mem: Some(mem),
            layout,
            names: HashMap::new(),
            thread_names: HashMap::new(),
            stacks: HashMap::new(),
            pid,
        },
        runtime,
        depth: options.depth,
        pthread_tid: None,
        walker: Walker::default(),
    };
    let mut rss = RssReader::open(pid).map_err(|e| {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("PID {pid}: cannot read its RSS: {e}"),
        )
    })?;
    let mut profile = Profile::new();
    let mut cpus = open_all(pid, user_only).map_err(|e| {
        Error::new(
            ErrorKind::TracerUnavailable,
            format!("attach --precise: perf_event_open on the threads of PID {pid} failed: {e}"),
        )
    })?;
    reader.calibrate(&task_ids(pid).into_iter().collect());
    let started = SystemTime::now();
    let clock = Instant::now();
    let rss_start = rss.rss_bytes().unwrap_or(0);
    eprintln!(
        "pymemtrace: tracing PID {pid} with {mode}{}; Ctrl-C to stop and report",
        options
            .duration
            .map(|d| format!(" for {d} s"))
            .unwrap_or_default()
    );
    let mut faults = 0u64;
    let mut lost = 0u64;
    // Per thread: the last stack read and when (monotonic ns), and its CPU time at the last
    // reconciliation charge.
    let mut last_read: HashMap<i32, (StackId, u64)> = HashMap::new();
    let mut last_fault: HashMap<i32, (StackId, u64)> = HashMap::new();
    let mut cpu_seen: HashMap<i32, u64> = task_ids(pid)
        .into_iter()
        .map(|tid| (tid, cpu_ns(pid, tid)))
        .collect();
    let mut last_reconcile = Instant::now();
    let mut rss_end = rss_start;
    let mut rss_peak = rss_start;
    let mut pollfds: Vec<libc::pollfd> = Vec::new();
    let mut pending: HashMap<i32, Vec<u64>> = HashMap::new();
    let mut lateness: Vec<u64> = Vec::new();
    let end = loop {
        let finishing = if stop.load(Ordering::Relaxed) {
            Some(EndReason::Interrupted)
        } else if options
            .duration
            .is_some_and(|d| clock.elapsed().as_secs_f64() >= d)
        {
            Some(EndReason::DurationReached)
        } else if !crate::target::is_alive(pid) {
            Some(EndReason::TargetExited)
        } else {
            None
        };

        if finishing.is_none() {
            pollfds.clear();
            let polled: Vec<usize> = (0..cpus.len()).filter(|&i| !cpus[i].hung_up).collect();
            for &index in &polled {
                pollfds.push(libc::pollfd {
                    fd: cpus[index].buffer.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: pollfds is a valid array of pollfd of the given length.
            unsafe {
                libc::poll(
                    pollfds.as_mut_ptr(),
                    pollfds.len() as libc::nfds_t,
                    TICK.as_millis() as libc::c_int,
                )
            };
            for (fd, &index) in pollfds.iter().zip(&polled) {
                if fd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
                    cpus[index].hung_up = true;
                }
            }
        }

        // Faults per thread since the last wakeup (their times), then each thread's stack,
        // read now.
        for times in pending.values_mut() {
            times.clear();
        }
        for cpu in cpus.iter_mut() {
            while let Some(record) = cpu.buffer.next_record() {
                match record.ty() {
                    RECORD_SAMPLE => {
                        let body = record.to_contiguous();
                        if let (Some(tid), Some(time)) = (u32_at(&body, 4), u64_at(&body, 8)) {
                            pending.entry(tid as i32).or_default().push(time);
                            cpu.last_tid = Some(tid as i32);
                        }
                    }
                    RECORD_LOST => {
                        let body = record.to_contiguous();
                        let count = u64_at(&body, 8).unwrap_or(0);
                        lost += count;
                        if let Some(tid) = cpu.last_tid {
                            // Time unknown: charged to the stack read now.
                            let times = pending.entry(tid).or_default();
                            times.extend(std::iter::repeat_n(u64::MAX, count as usize));
                        }
                    }
                    _ => {}
                }
            }
        }
        let read_any = pending.values().any(|times| !times.is_empty());
        if read_any {
            let states = reader.states_by_tid()?;
            for (&tid, times) in pending.iter().filter(|(_, t)| !t.is_empty()) {
                let now = monotonic_ns();
                if let Some(&oldest) = times.iter().min() {
                    if oldest < now {
                        lateness.push(now - oldest);
                    }
                }
                faults += times.len() as u64 * PAGES_PER_SAMPLE;
                let previous = last_read.get(&tid).copied();
                // A thread that exited keeps the stack it last had.
                let stack = match previous {
                    Some((stack, _)) if !states.contains_key(&tid) && !thread_alive(pid, tid) => {
                        stack
                    }
                    _ => reader.stack(&mut profile, &states, tid, options.threads),
                };
                // Each fault goes to the nearer in time of this read and the thread's previous
                // one: when the tool got the CPU late, the thread may have left the code that
                // faulted, and a fault just after the previous read is more likely to have been
                // taken where that read saw the thread.
                let mut to_previous = 0i64;
                if let Some((_, at)) = previous {
                    to_previous = times
                        .iter()
                        .filter(|&&t| t != u64::MAX && t >= at && t < now && t - at < now - t)
                        .count() as i64;
                }
                if let Some((earlier, _)) = previous.filter(|_| to_previous > 0) {
                    profile.charge(to_previous * sample_bytes, &[earlier]);
                }
                let to_now = times.len() as i64 - to_previous;
                profile.charge(to_now * sample_bytes, &[stack]);
                last_read.insert(tid, (stack, now));
                // The stack that took the thread's newest fault (the later faults go to the later
                // read, so it is this read's unless all went to the previous one).
                let newest = match previous {
                    Some((earlier, _)) if to_now == 0 => earlier,
                    _ => stack,
                };
                last_fault.insert(tid, (newest, now));
            }
        }

        if finishing.is_some() || last_reconcile.elapsed() >= RECONCILE_EVERY {
            last_reconcile = Instant::now();
            if let Ok(now) = rss.rss_bytes() {
                rss_end = now;
                rss_peak = rss_peak.max(now);
                let expected = rss_start as i64 + profile.overall().net();
                let gap = now as i64 - expected;
                if gap.abs() >= DEAD_BAND {
                    let states = reader.states_by_tid()?;
                    let now = monotonic_ns();
                    let mut weights = Vec::new();
                    for tid in task_ids(pid) {
                        let cpu = cpu_ns(pid, tid);
                        let before = cpu_seen.insert(tid, cpu).unwrap_or(0);
                        let ran = cpu.saturating_sub(before);
                        if ran == 0 {
                            continue;
                        }
                        // A release goes to where the thread last took pages, if that was
                        // recent: memory is mostly given back by the code that took it (a
                        // function's temporaries, freed and trimmed as it returns), and by the
                        // time the RSS shows the drop the thread has often moved on.
                        let recent = last_fault
                            .get(&tid)
                            .filter(|(_, at)| gap < 0 && now.saturating_sub(*at) < RECENT_NS)
                            .map(|(stack, _)| *stack);
                        let stack = recent.unwrap_or_else(|| {
                            reader.stack(&mut profile, &states, tid, options.threads)
                        });
                        weights.push((Some(stack), ran));
                    }
                    profile.charge_weighted(gap, &weights);
                }
            }
        }

        if let Some(end) = finishing {
            break end;
        }
        if read_any && finishing.is_none() {
            // After the reconciliation, which must see the RSS just after the buffers were
            // drained. Samples that come in meanwhile wait in the buffers, waking nobody (their
            // pages are in the RSS but not charged yet); the next read shares them with this one
            // by time (the rule above). This caps stack reads at 1/HOLD per second while memory
            // moves, instead of one per sample.
            std::thread::sleep(HOLD);
        }
    };

    if std::env::var_os("PYMEMTRACE_PRECISE_LATENESS").is_some() && !lateness.is_empty() {
        lateness.sort_unstable();
        let at = |q: f64| lateness[((lateness.len() - 1) as f64 * q) as usize] as f64 / 1000.0;
        eprintln!(
            "pymemtrace: stack reads after the oldest fault they charge: median {:.0} us, p90 {:.0} us, \
             p99 {:.0} us, max {:.0} us ({} reads)",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0),
            lateness.len()
        );
    }
    if lost > 0 {
        eprintln!(
            "pymemtrace: the ring buffers overflowed: {lost} fault samples were charged to the \
             thread that faulted before them on the same CPU"
        );
    }
    profile.name_threads();
    let overall = profile.overall();
    let alive = crate::target::is_alive(pid);
    Ok(Recording {
        profile,
        samples: faults,
        lost,
        recovery: Default::default(),
        rss_polls: 0,
        rss_start,
        rss_end: if alive {
            rss_end
        } else {
            (rss_start as i64 + overall.net()).max(0) as u64
        },
        rss_peak: super::peak_rss(pid).unwrap_or(0).max(rss_peak),
        started,
        elapsed: clock.elapsed(),
        hot_time: Duration::ZERO,
        hot_samples: 0,
        threads_without_id: 0,
        late_bytes: 0,
        changed_bytes: overall.grown + overall.released,
        longest_gap: Duration::ZERO,
        end,
    })
}
