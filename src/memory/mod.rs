//! Reading a process's memory figures from /proc.
//!
//! RSS comes from /proc/PID/statm: the file is kept open and re-read with `pread` at offset 0,
//! which makes the kernel regenerate it (about 2 us) without a fresh `open` each tick.

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
fn parse_statm_resident(text: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(text).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
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
    fn formats_bytes() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_delta(-3 * 1024 * 1024), "-3.0 MiB");
        assert_eq!(human_delta(1024), "+1.0 KiB");
    }
}
