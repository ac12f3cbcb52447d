//! Reading a process's memory figures from /proc.
//!
//! RSS comes from /proc/PID/statm: the file is kept open and re-read with `pread` at offset 0,
//! which makes the kernel regenerate it (about 2 us) without a fresh `open` each tick.

pub mod process;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// The system page size in bytes (statm counts pages).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as u64
    } else {
        4096
    }
}

/// An open handle on /proc/PID/statm that yields the resident set size on each read.
pub struct RssReader {
    file: File,
    page_size: u64,
    buffer: [u8; 128],
}

/// Why an RSS read gave no figure.
#[derive(Debug)]
pub enum RssError {
    /// The process is gone or is a zombie (its address space was torn down).
    Exited,
    /// Anything else (should not happen once the file is open).
    Io(io::Error),
}

impl RssReader {
    pub fn open(pid: i32) -> io::Result<RssReader> {
        Ok(RssReader {
            file: File::open(format!("/proc/{pid}/statm"))?,
            page_size: page_size(),
            buffer: [0; 128],
        })
    }

    /// Resident set size in bytes.
    pub fn rss_bytes(&mut self) -> Result<u64, RssError> {
        let len = match self.file.read_at(&mut self.buffer, 0) {
            Ok(len) => len,
            // ESRCH: the task is gone; the open file outlives it.
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return Err(RssError::Exited),
            Err(err) => return Err(RssError::Io(err)),
        };
        let resident_pages = parse_statm_resident(&self.buffer[..len]).ok_or_else(|| {
            RssError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                "unreadable statm",
            ))
        })?;
        // A zombie has no address space: statm then reads all zeros.
        if resident_pages == 0 {
            return Err(RssError::Exited);
        }
        Ok(resident_pages * self.page_size)
    }
}

/// The second field of statm ("size resident shared text lib data dt"), in pages.
pub(crate) fn parse_statm_resident(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Minor page faults per thread, read from /proc/PID/task/TID/stat.
///
/// RSS in statm is a batched per-CPU counter: it shows growth late and does not say which thread
/// grew. A thread's fault counter is exact and its own, so the threads whose counters moved since
/// the last poll are the threads that touched new memory.
pub struct ThreadFaults {
    pid: i32,
    threads: std::collections::HashMap<u64, (File, u64)>,
    /// Each thread's scheduler state letter at the last poll ('R' running, 'S' sleeping, ...).
    states: std::collections::HashMap<u64, char>,
    last_scan: Option<std::time::Instant>,
    buffer: Vec<u8>,
}

/// Above this many threads the per-thread reads cost more than they are worth; callers fall back.
pub const MAX_FAULT_THREADS: usize = 64;

impl ThreadFaults {
    pub fn new(pid: i32) -> ThreadFaults {
        ThreadFaults {
            pid,
            threads: std::collections::HashMap::new(),
            states: std::collections::HashMap::new(),
            last_scan: None,
            buffer: vec![0; 1024],
        }
    }

    /// Re-reads the thread list now (threads come and go); cheap enough every few tens of ms.
    pub fn rescan(&mut self) {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        let mut seen = std::collections::HashSet::new();
        for entry in entries.flatten() {
            let Some(tid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            seen.insert(tid);
            if !self.threads.contains_key(&tid) {
                if let Ok(file) = File::open(format!("/proc/{}/task/{tid}/stat", self.pid)) {
                    let mut entry = (file, 0);
                    entry.1 = read_stat(&entry.0, &mut self.buffer).map_or(0, |(_, faults)| faults);
                    self.threads.insert(tid, entry);
                }
            }
        }
        self.threads.retain(|tid, _| seen.contains(tid));
        self.states.retain(|tid, _| seen.contains(tid));
    }

    /// Whether the thread was running (or runnable) at the last poll, if it is known.
    pub fn is_running(&self, tid: u64) -> Option<bool> {
        self.states.get(&tid).map(|&state| state == 'R')
    }

    /// Whether `tid` was one of the process's threads at the last scan.
    pub fn has_thread(&self, tid: u64) -> bool {
        self.threads.contains_key(&tid)
    }

    /// How many threads the last scan found.
    pub fn thread_count(&self) -> usize {
        self.threads.len()
    }

    /// Adds each thread's new minor faults since the last poll to `into` (tid -> faults).
    /// Returns false when there are too many threads to follow this way.
    pub fn poll(&mut self, into: &mut std::collections::HashMap<u64, u64>) -> bool {
        let now = std::time::Instant::now();
        if self
            .last_scan
            .is_none_or(|t| now.duration_since(t) > std::time::Duration::from_millis(50))
        {
            self.last_scan = Some(now);
            self.rescan();
        }
        if self.threads.len() > MAX_FAULT_THREADS {
            return false;
        }
        for (tid, (file, last)) in self.threads.iter_mut() {
            if let Some((state, now)) = read_stat(file, &mut self.buffer) {
                self.states.insert(*tid, state);
                if now > *last {
                    *into.entry(*tid).or_default() += now - *last;
                }
                *last = now;
            }
        }
        true
    }
}

/// Fields 3 (state) and 10 (minflt) of a stat file, counted after the parenthesised command name.
fn read_stat(file: &File, buffer: &mut [u8]) -> Option<(char, u64)> {
    let len = file.read_at(buffer, 0).ok()?;
    parse_task_stat(std::str::from_utf8(&buffer[..len]).ok()?)
}

/// What `read_stat` takes from the text of a stat file: (state, minor faults).
pub(crate) fn parse_task_stat(text: &str) -> Option<(char, u64)> {
    let after_name = &text[text.rfind(')')? + 1..];
    // After the name: state(3) ppid pgrp session tty_nr tpgid flags minflt(10).
    let mut fields = after_name.split_ascii_whitespace();
    let state = fields.next()?.chars().next()?;
    Some((state, fields.nth(6)?.parse().ok()?))
}

/// One-off RSS read, for callers that do not poll.
pub fn rss_once(pid: i32) -> Option<u64> {
    RssReader::open(pid).ok()?.rss_bytes().ok()
}

/// Formats a byte count for people: "1.5 MiB", "-300.0 KiB", "12 B".
pub fn human_bytes(bytes: i64) -> String {
    let sign = if bytes < 0 { "-" } else { "" };
    let magnitude = bytes.unsigned_abs() as f64;
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = magnitude;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{sign}{} B", magnitude as u64)
    } else {
        format!("{sign}{value:.1} {}", UNITS[unit])
    }
}

/// Like [`human_bytes`] but always signed ("+1.0 MiB"), for changes.
pub fn human_delta(bytes: i64) -> String {
    if bytes > 0 {
        format!("+{}", human_bytes(bytes))
    } else {
        human_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_resident_pages() {
        assert_eq!(
            parse_statm_resident(b"2769 1024 512 1 0 300 0\n"),
            Some(1024)
        );
        assert_eq!(parse_statm_resident(b"garbage"), None);
    }

    #[test]
    fn reads_own_rss() {
        let rss = rss_once(std::process::id() as i32).unwrap();
        assert!(
            rss > 100_000,
            "our own RSS should be well above 100 kB, got {rss}"
        );
    }

    #[test]
    fn counts_faults_of_the_thread_that_touches_memory() {
        let mut faults = ThreadFaults::new(std::process::id() as i32);
        let mut seen = std::collections::HashMap::new();
        faults.poll(&mut seen);
        seen.clear();
        let (touched_tx, touched_rx) = std::sync::mpsc::channel();
        let (exit_tx, exit_rx) = std::sync::mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let tid = unsafe { libc::gettid() } as u64;
            // Give the poller time to see this thread, then touch 8 MiB of fresh pages.
            std::thread::sleep(std::time::Duration::from_millis(80));
            let mut touched = vec![0u8; 8 << 20];
            for i in (0..touched.len()).step_by(4096) {
                touched[i] = 1;
            }
            std::hint::black_box(&touched);
            touched_tx.send(tid).unwrap();
            // Stay alive until polled: a dead thread has no stat file to read.
            let _ = exit_rx.recv();
        });
        std::thread::sleep(std::time::Duration::from_millis(60));
        faults.poll(&mut seen);
        seen.clear();
        let tid = touched_rx.recv().unwrap();
        faults.poll(&mut seen);
        exit_tx.send(()).unwrap();
        worker.join().unwrap();
        let worker_faults = seen.get(&tid).copied().unwrap_or(0);
        // 2048 small pages, or as few as 4 where transparent huge pages back the buffer.
        assert!(
            worker_faults >= 4,
            "8 MiB of new pages must fault, saw {worker_faults}"
        );
        let others: u64 = seen
            .iter()
            .filter(|(t, _)| **t != tid)
            .map(|(_, f)| f)
            .sum();
        assert!(
            others < worker_faults,
            "the poller's own faults ({others}) exceed the worker's"
        );
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_delta(-3 * 1024 * 1024), "-3.0 MiB");
        assert_eq!(human_delta(1024), "+1.0 KiB");
    }
}
