//! Whole-process figures from /proc: memory (status, smaps_rollup), faults and CPU (stat), and the
//! children of a process. Used by `pymemtrace process`, for any process, Python or not.
//!
//! The files stay open between ticks and are re-read with `pread`: the kernel regenerates their text
//! on each read, and reopening them would cost more than reading. The parsers are plain functions
//! of the text, so they can be tested and fuzzed without a process.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// What `/proc/PID/stat` says, after the command name (which can hold spaces and parentheses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatFields {
    /// The command name (comm, at most 15 bytes), zero-padded.
    pub name: [u8; 16],
    pub state: char,
    pub ppid: u32,
    /// The kernel's per-task flags (field 9); see [`StatFields::exiting`].
    pub flags: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    /// In clock ticks.
    pub user_ticks: u64,
    pub system_ticks: u64,
    pub threads: u64,
    /// When the process started, in clock ticks since boot: with the PID, it tells a process
    /// apart from a later one that reused the PID.
    pub start_ticks: u64,
    /// Where the program's code starts (field 26). It changes on every exec (another binary, or
    /// the same one mapped elsewhere), where the name often does not (a `#!` script keeps its
    /// name when it execs the real interpreter). 0 when the kernel hides it from us.
    pub start_code: u64,
}

/// PF_EXITING in include/linux/sched.h: the task is in do_exit().
const PF_EXITING: u64 = 0x4;

impl StatFields {
    /// Whether the process is being torn down by the kernel: its leader is in do_exit() and no
    /// other thread carries on (a leader that called pthread_exit leaves the others running).
    /// Its memory figures then fall to 0 as the kernel frees it: they describe the exit, not the
    /// program, so a reading is treated as the process's end.
    pub fn exiting(&self) -> bool {
        self.flags & PF_EXITING != 0 && self.threads <= 1
    }

    /// What identifies the running program image: differs after an exec.
    pub fn image(&self) -> ([u8; 16], u64) {
        (self.name, self.start_code)
    }
}

/// Parses the fields of a stat line that `process` needs. None when the text is not a stat line.
pub fn parse_stat(text: &str) -> Option<StatFields> {
    // The command name is in parentheses and may itself contain ") ": the fields start after the
    // last one.
    let name_start = text.find('(')? + 1;
    let name_end = text.rfind(')')?;
    let mut name = [0u8; 16];
    let name_bytes = text.as_bytes().get(name_start..name_end)?;
    let kept = name_bytes.len().min(name.len());
    name[..kept].copy_from_slice(&name_bytes[..kept]);
    let after_name = &text[name_end + 1..];
    let fields: Vec<&str> = after_name.split_ascii_whitespace().collect();
    // Numbered as in proc(5): field 3 (state) is fields[0].
    let field = |number: usize| fields.get(number - 3).copied();
    let number = |n: usize| field(n)?.parse::<u64>().ok();
    Some(StatFields {
        name,
        state: field(3)?.chars().next()?,
        ppid: field(4)?.parse().ok()?,
        flags: number(9).unwrap_or(0),
        minor_faults: number(10)?,
        major_faults: number(12)?,
        user_ticks: number(14)?,
        system_ticks: number(15)?,
        threads: number(20)?,
        start_ticks: number(22)?,
        start_code: number(26).unwrap_or(0),
    })
}

/// The memory lines of `/proc/PID/status`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StatusFields {
    pub rss: u64,
    pub vms: u64,
    pub peak_rss: u64,
    pub swap: u64,
}

/// Parses `/proc/PID/status`. Kernel threads have no Vm lines: their figures are 0.
pub fn parse_status(text: &str) -> StatusFields {
    let mut fields = StatusFields::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let slot = match key {
            "VmRSS" => &mut fields.rss,
            "VmSize" => &mut fields.vms,
            "VmHWM" => &mut fields.peak_rss,
            "VmSwap" => &mut fields.swap,
            _ => continue,
        };
        *slot = kilobytes(value).unwrap_or(0);
    }
    fields
}

/// `   1234 kB` -> 1234 * 1024.
fn kilobytes(value: &str) -> Option<u64> {
    let mut parts = value.split_ascii_whitespace();
    let number: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => number.checked_mul(1024),
        Some(_) => None,
    }
}

/// The first two fields of statm, in pages: (size, resident).
pub(crate) fn parse_statm(text: &str) -> Option<(u64, u64)> {
    let mut fields = text.split_ascii_whitespace();
    Some((fields.next()?.parse().ok()?, fields.next()?.parse().ok()?))
}

/// Unique and proportional set sizes from `/proc/PID/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RollupFields {
    /// Private_Clean + Private_Dirty: what the process alone holds.
    pub uss: u64,
    pub pss: u64,
}

pub fn parse_smaps_rollup(text: &str) -> RollupFields {
    let mut fields = RollupFields::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let bytes = kilobytes(value).unwrap_or(0);
        match key {
            "Pss" => fields.pss = bytes,
            "Private_Clean" | "Private_Dirty" => fields.uss = fields.uss.saturating_add(bytes),
            _ => {}
        }
    }
    fields
}

/// One reading of a process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessFigures {
    pub stat: StatFields,
    pub status: StatusFields,
    /// Only when smaps_rollup was asked for.
    pub rollup: Option<RollupFields>,
}

/// Why a process could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// It exited (or is a zombie, which holds no memory).
    Exited,
    /// We may not read it (smaps_rollup needs the ptrace access check).
    PermissionDenied,
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> ReadError {
        match err.raw_os_error() {
            Some(libc::ESRCH) | Some(libc::ENOENT) => ReadError::Exited,
            Some(libc::EACCES) | Some(libc::EPERM) => ReadError::PermissionDenied,
            _ => ReadError::Io(err),
        }
    }
}

/// Reads one process again and again, through files kept open.
///
/// RSS and VMS come from statm on every reading (1 us); status (7 us, the kernel formats some 50
/// lines) only for VmHWM and VmSwap, every `status_every` readings, and at once whenever RSS is
/// above the last peak seen (so the peak is never below the RSS shown).
pub struct ProcessReader {
    pub pid: u32,
    stat: File,
    statm: File,
    status: File,
    rollup: Option<File>,
    buffer: Vec<u8>,
    page_size: u64,
    status_every: u64,
    readings: u64,
    last_status: Option<StatusFields>,
}

/// Larger than any stat or status file; smaps_rollup is about 1 KiB. A longer text is cut, and the
/// fields that matter all come early.
const READ_LIMIT: usize = 16 * 1024;

impl ProcessReader {
    /// Opens the files of `pid`; with `rollup`, smaps_rollup as well (which needs the right to
    /// ptrace the process).
    pub fn open(pid: u32, rollup: bool) -> Result<ProcessReader, ReadError> {
        let path = |name: &str| format!("/proc/{pid}/{name}");
        Ok(ProcessReader {
            pid,
            stat: File::open(path("stat"))?,
            statm: File::open(path("statm"))?,
            status: File::open(path("status"))?,
            rollup: if rollup {
                Some(File::open(path("smaps_rollup"))?)
            } else {
                None
            },
            buffer: vec![0; READ_LIMIT],
            page_size: super::page_size(),
            status_every: 1,
            readings: 0,
            last_status: None,
        })
    }

    /// Reads status (peak RSS and swap) only every `n` readings, and when RSS passes the last peak.
    pub fn with_status_every(mut self, n: u64) -> ProcessReader {
        self.status_every = n.max(1);
        self
    }

    pub fn read(&mut self) -> Result<ProcessFigures, ReadError> {
        let stat = read_text(&self.stat, &mut self.buffer)?;
        let stat = parse_stat(stat).ok_or_else(|| {
            ReadError::Io(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{}/stat is not a stat line", self.pid),
            ))
        })?;
        if matches!(stat.state, 'Z' | 'X') || stat.exiting() {
            return Err(ReadError::Exited);
        }
        let (rss, vms) = parse_statm(read_text(&self.statm, &mut self.buffer)?)
            .map(|(vms, rss)| (rss * self.page_size, vms * self.page_size))
            .ok_or_else(|| {
                ReadError::Io(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("/proc/{}/statm is not a statm line", self.pid),
                ))
            })?;
        let due = self.readings.is_multiple_of(self.status_every);
        self.readings += 1;
        let status = match self.last_status {
            Some(last) if !due && rss <= last.peak_rss => last,
            _ => parse_status(read_text(&self.status, &mut self.buffer)?),
        };
        self.last_status = Some(status);
        // statm and status read a moment apart: keep the pair consistent.
        let status = StatusFields {
            rss,
            vms,
            peak_rss: status.peak_rss.max(rss),
            swap: status.swap,
        };
        let rollup = match &self.rollup {
            Some(file) => Some(parse_smaps_rollup(read_text(file, &mut self.buffer)?)),
            None => None,
        };
        Ok(ProcessFigures {
            stat,
            status,
            rollup,
        })
    }
}

fn read_text<'a>(file: &File, buffer: &'a mut [u8]) -> io::Result<&'a str> {
    let mut filled = 0;
    // A proc file is generated per read call; read until EOF or the buffer is full.
    loop {
        let n = file.read_at(&mut buffer[filled..], filled as u64)?;
        if n == 0 || filled + n == buffer.len() {
            filled += n;
            break;
        }
        filled += n;
    }
    Ok(valid_prefix(&buffer[..filled]))
}

/// The text up to the first byte that is not UTF-8. Lossy on purpose: a command name can hold any
/// bytes, and only numbers are taken from here.
pub(crate) fn valid_prefix(text: &[u8]) -> &str {
    match std::str::from_utf8(text) {
        Ok(text) => text,
        Err(err) => std::str::from_utf8(&text[..err.valid_up_to()]).unwrap_or(""),
    }
}

/// The PIDs of a `children` file ("12 34 ").
pub(crate) fn parse_children(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.split_ascii_whitespace()
        .filter_map(|pid| pid.parse::<u32>().ok())
}

/// The direct children of one process, read again and again. Its threads' `children` files stay
/// open; the thread list is read again only when the thread count changes or a file fails (a
/// directory scan and an open cost ten times the read).
pub struct ChildrenReader {
    pid: u32,
    threads: Vec<File>,
    thread_count: u64,
}

impl ChildrenReader {
    pub fn new(pid: u32) -> ChildrenReader {
        ChildrenReader {
            pid,
            threads: Vec::new(),
            thread_count: 0,
        }
    }

    fn rescan(&mut self, thread_count: u64) {
        self.threads.clear();
        self.thread_count = thread_count;
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        self.threads.extend(
            tasks
                .flatten()
                .filter_map(|task| File::open(task.path().join("children")).ok()),
        );
    }

    /// The children now; `thread_count` is the process's latest thread count (from stat).
    pub fn read(&mut self, thread_count: u64) -> Vec<u32> {
        if thread_count != self.thread_count || self.threads.is_empty() {
            self.rescan(thread_count);
        }
        let mut buffer = [0u8; 4096];
        let mut children = Vec::new();
        for attempt in 0..2 {
            children.clear();
            let mut failed = false;
            for file in &self.threads {
                match read_text(file, &mut buffer) {
                    Ok(text) => children.extend(parse_children(text)),
                    Err(_) => failed = true,
                }
            }
            // A thread ended (its file reads ESRCH) or another started with the same count.
            if !failed || attempt == 1 {
                break;
            }
            self.rescan(thread_count);
        }
        children.sort_unstable();
        children.dedup();
        children
    }
}

/// The direct children of `pid`: the union of each of its threads' `children` files (a child
/// belongs to the thread that forked it). Empty when the process is gone.
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return children;
    };
    for task in tasks.flatten() {
        let Ok(text) = std::fs::read_to_string(task.path().join("children")) else {
            continue;
        };
        children.extend(parse_children(&text));
    }
    children.sort_unstable();
    children.dedup();
    children
}

/// The command line of a process, arguments joined by spaces; for a process without one (a kernel
/// thread, or a zombie) its name in brackets, as `ps` shows it.
pub fn command_of(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    if let Some(command) = command_from_cmdline(&raw) {
        return Some(command);
    }
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    Some(format!("[{}]", comm.trim_end()))
}

/// Whether `command_of` fell back to `[comm]`: a kernel thread, a zombie, or a process still
/// inside exec(), whose command line reads empty for a moment.
pub fn is_placeholder(command: &str) -> bool {
    command.starts_with('[')
}

/// The arguments of a cmdline file joined by spaces, control characters blanked; None when it
/// holds no argument.
pub(crate) fn command_from_cmdline(raw: &[u8]) -> Option<String> {
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|part| !part.is_empty())
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect();
    if !args.is_empty() {
        // An argument can hold newlines (`python -c "..."`): one line per process in tables.
        let joined = args.join(" ");
        return Some(if joined.chars().any(char::is_control) {
            joined
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        } else {
            joined
        });
    }
    None
}

/// Clock ticks per second, the unit of CPU times in stat.
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis() {
        let line = "4242 (a (weird) name) S 17 4242 4242 0 -1 4194560 1500 0 3 0 250 40 0 0 20 0 \
                    5 0 987654 123456789 2000 18446744073709551615";
        let stat = parse_stat(line).unwrap();
        assert_eq!(
            stat,
            StatFields {
                name: *b"a (weird) name\0\0",
                state: 'S',
                ppid: 17,
                flags: 4194560,
                minor_faults: 1500,
                major_faults: 3,
                user_ticks: 250,
                system_ticks: 40,
                threads: 5,
                start_ticks: 987654,
                start_code: 0,
            }
        );
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (short) S 0"), None);
    }

    #[test]
    fn a_leader_in_do_exit_is_exiting_unless_other_threads_carry_on() {
        // 4194564 = PF_EXITING (0x4) with the flags of the line above.
        let exiting = |threads: u32| {
            let line = format!(
                "4242 (python3) R 17 4242 4242 0 -1 4194564 1500 0 3 0 250 40 0 0 20 0 \
                 {threads} 0 987654 123456789 0 18446744073709551615"
            );
            parse_stat(&line).unwrap().exiting()
        };
        assert!(exiting(1));
        assert!(
            !exiting(4),
            "a leader that called pthread_exit leaves a live process"
        );
        let running = "4242 (python3) R 17 4242 4242 0 -1 4194560 1500 0 3 0 250 40 0 0 20 0 \
                       1 0 987654 123456789 0 18446744073709551615";
        assert!(!parse_stat(running).unwrap().exiting());
    }

    #[test]
    fn status_and_rollup_give_bytes() {
        let status = "Name:\tpython3\nVmPeak:\t  300 kB\nVmSize:\t  200 kB\nVmHWM:\t  150 kB\n\
                      VmRSS:\t  100 kB\nVmSwap:\t    2 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            StatusFields {
                rss: 102400,
                vms: 204800,
                peak_rss: 153600,
                swap: 2048
            }
        );
        let rollup = "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:  100 kB\nPss:  80 kB\n\
                      Private_Clean:  10 kB\nPrivate_Dirty:  60 kB\n";
        assert_eq!(
            parse_smaps_rollup(rollup),
            RollupFields {
                uss: 70 * 1024,
                pss: 80 * 1024
            }
        );
    }

    #[test]
    fn reads_itself() {
        let mut reader = ProcessReader::open(std::process::id(), true).unwrap();
        let figures = reader.read().unwrap();
        assert!(figures.status.rss > 0 && figures.status.vms >= figures.status.rss);
        assert!(figures.status.peak_rss >= figures.status.rss);
        assert!(figures.stat.threads >= 1);
        assert_eq!(figures.stat.ppid, std::os::unix::process::parent_id());
        let rollup = figures.rollup.unwrap();
        assert!(rollup.pss > 0 && rollup.uss > 0);
    }

    #[test]
    fn finds_a_child() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let children = children_of(std::process::id());
        let mut reader = ChildrenReader::new(std::process::id());
        let threads = ProcessReader::open(std::process::id(), false)
            .unwrap()
            .read()
            .unwrap()
            .stat
            .threads;
        let read_again = reader.read(threads);
        let _ = child.kill();
        let _ = child.wait();
        assert!(children.contains(&child.id()), "{children:?}");
        assert!(read_again.contains(&child.id()), "{read_again:?}");
    }
}
