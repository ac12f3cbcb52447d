//! What a script needs to know about its target: the C library and the Python binary it has
//! mapped (as paths the tracer can open from here), the Python version, the address of
//! `_PyRuntime`, the USDT probes and the symbols the interpreter scripts attach to.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind, Result};

use super::offsets::{self, FrameLayout};

/// Everything found out about the target process.
#[derive(Debug, Clone)]
pub struct Facts {
    pub pid: i32,
    pub command_line: String,
    /// The C library (`libc.so.6`, `libc-*.so`, musl's `libc.musl-*`), if mapped.
    pub libc: Option<PathBuf>,
    /// The interpreter, when this is a CPython process; else why not.
    pub python: std::result::Result<Python, String>,
}

/// The CPython interpreter in the target.
#[derive(Debug, Clone)]
pub struct Python {
    pub version: String,
    pub major: u64,
    pub minor: u64,
    /// The file that holds the interpreter: libpython when it is mapped, else the executable.
    pub binary: PathBuf,
    /// The address of `_PyRuntime` in the target (3.7+).
    pub runtime: Option<u64>,
    /// The frame offsets for this version, or why there are none.
    pub layout: std::result::Result<&'static FrameLayout, String>,
    /// The `python` provider's USDT probes in `binary` (e.g. gc__start).
    pub usdt: BTreeSet<String>,
    /// Which of the functions the scripts attach to `binary` has symbols for.
    pub symbols: BTreeSet<String>,
}

/// The symbols looked up in the interpreter binary.
pub const WANTED_SYMBOLS: &[&str] = &[
    "PyObject_Malloc",
    "PyObject_Calloc",
    "PyObject_Realloc",
    "PyObject_Free",
    "gc_collect_main",
    "collect",
];

impl Python {
    /// Whether the Python-frame probes can run here, or why not.
    pub fn frames(&self) -> std::result::Result<(&'static FrameLayout, u64), String> {
        let layout = self.layout.clone()?;
        let runtime = self.runtime.ok_or_else(|| {
            format!(
                "_PyRuntime was not found in {} (Python {})",
                self.binary.display(),
                self.version
            )
        })?;
        if std::env::consts::ARCH != "x86_64" && layout.minor <= 10 {
            return Err(format!(
                "Python {}: 3.8-3.10 thread states are matched by FS base, which is x86-64 only",
                self.version
            ));
        }
        Ok((layout, runtime))
    }
}

/// A path as the tracer must open it: through /proc/PID/root when the target lives in another
/// mount namespace (a container), else as the target names it.
fn reachable(pid: i32, path: &str) -> PathBuf {
    let own_root = std::fs::read_link(format!("/proc/{pid}/root"))
        .map(|root| root == Path::new("/"))
        .unwrap_or(true);
    if own_root {
        PathBuf::from(path)
    } else {
        PathBuf::from(format!("/proc/{pid}/root{path}"))
    }
}

/// The file names of the target's mappings (pure: /proc/PID/maps text in, paths out, in order).
pub fn mapped_files(maps: &str) -> Vec<String> {
    let mut files: Vec<String> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let path = fields.nth(5).map(str::trim_start).unwrap_or("");
        if path.starts_with('/') && !files.iter().any(|f| f == path) {
            files.push(path.trim_end_matches(" (deleted)").to_string());
        }
    }
    files
}

/// The C library among mapped files.
pub fn find_libc(files: &[String]) -> Option<&String> {
    files.iter().find(|path| {
        let name = path.rsplit('/').next().unwrap_or("");
        name == "libc.so.6"
            || (name.starts_with("libc-") && name.ends_with(".so"))
            || name.starts_with("libc.musl-")
            || name == "libc.so"
    })
}

/// The USDT probes of the `python` provider in an ELF file.
fn usdt_probes(path: &Path) -> BTreeSet<String> {
    let mut probes = BTreeSet::new();
    let Ok(data) = std::fs::read(path) else {
        return probes;
    };
    let Ok(elf) = goblin::elf::Elf::parse(&data) else {
        return probes;
    };
    if let Some(notes) = elf.iter_note_sections(&data, Some(".note.stapsdt")) {
        for note in notes.flatten() {
            // stapsdt note (type 3): pc, base, semaphore (3 addresses), then provider\0name\0args\0.
            if note.name != "stapsdt" || note.n_type != 3 || note.desc.len() < 24 {
                continue;
            }
            let mut strings = note.desc[24..].split(|&b| b == 0);
            let provider = strings.next().unwrap_or_default();
            let name = strings.next().unwrap_or_default();
            if provider == b"python" {
                probes.insert(String::from_utf8_lossy(name).into_owned());
            }
        }
    }
    probes
}

fn find_python(pid: i32, files: &[String]) -> std::result::Result<Python, String> {
    let process = remoteprocess::Process::new(pid).map_err(|e| format!("{e}"))?;
    let info = py_spy::python_process_info::PythonProcessInfo::new(&process)
        .map_err(|e| format!("no CPython interpreter found ({e:#})"))?;
    let version = py_spy::python_process_info::get_python_version(&info, &process)
        .map_err(|e| format!("the Python version could not be read ({e:#})"))?;
    let libpython = files.iter().find(|path| {
        path.rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("libpython"))
    });
    let binary = match libpython {
        Some(path) => reachable(pid, path),
        None => {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
                .map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
            reachable(pid, &exe.to_string_lossy())
        }
    };
    let runtime = info.get_symbol("_PyRuntime").copied().or_else(|| {
        [&info.libpython_binary, &info.python_binary]
            .into_iter()
            .flatten()
            .map(|b| b.pyruntime_addr)
            .find(|&a| a != 0)
    });
    let holder = info
        .libpython_binary
        .as_ref()
        .or(info.python_binary.as_ref());
    let symbols = WANTED_SYMBOLS
        .iter()
        .filter(|name| holder.is_some_and(|b| b.symbols.contains_key(**name)))
        .map(|name| name.to_string())
        .collect();
    Ok(Python {
        version: format!("{}.{}.{}", version.major, version.minor, version.patch),
        major: version.major,
        minor: version.minor,
        usdt: usdt_probes(&binary),
        binary,
        runtime,
        layout: offsets::layout(version.major, version.minor),
        symbols,
    })
}

/// Finds out what the scripts need to know about `pid`.
pub fn inspect(pid: i32) -> Result<Facts> {
    crate::target::check_process(pid)?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map_err(|err| {
        Error::new(
            ErrorKind::NoSuchProcess,
            format!("cannot read /proc/{pid}/maps: {err}"),
        )
    })?;
    let files = mapped_files(&maps);
    let libc = find_libc(&files).map(|path| reachable(pid, path));
    Ok(Facts {
        pid,
        command_line: crate::target::command_line(pid),
        libc,
        python: find_python(pid, &files),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_files_and_libc() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 08:01 1 /usr/bin/python3.11
7f00-7f01 r--p 00000000 08:01 2                          /usr/lib/x86_64-linux-gnu/libc.so.6
7f01-7f02 r-xp 00001000 08:01 2                          /usr/lib/x86_64-linux-gnu/libc.so.6
7f02-7f03 rw-p 00000000 00:00 0
7f03-7f04 rw-p 00000000 00:00 0                          [heap]
7f05-7f06 r--p 00000000 08:01 3                          /tmp/my lib.so (deleted)
";
        let files = mapped_files(maps);
        assert_eq!(
            files,
            [
                "/usr/bin/python3.11",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp/my lib.so"
            ]
        );
        assert_eq!(
            find_libc(&files).unwrap(),
            "/usr/lib/x86_64-linux-gnu/libc.so.6"
        );
        assert!(find_libc(&["/lib/libcrypt.so.1".to_string()]).is_none());
        assert!(find_libc(&[
            "/lib/ld-musl-x86_64.so.1".to_string(),
            "/lib/libc.musl-x86_64.so.1".to_string()
        ])
        .is_some());
    }
}
