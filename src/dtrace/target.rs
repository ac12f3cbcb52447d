//! What a script needs to know about its target: the C library and the Python binary it has
//! mapped (as paths the tracer can open from here), the Python version, the address of
//! `_PyRuntime`, the USDT probes and the symbols the interpreter scripts attach to.
//!
//! The target is untrusted, and so are the names of its files: /proc/PID/maps shows whatever path
//! the target loaded a library from, and a directory name can be tracer code
//! (`/tmp/x:malloc{}interval:s:1{cat("/etc/shadow")}uprobe:/tmp/x/libc.so.6`). So a script never
//! names a file the way the target does: it names it the tool's way, [`MappedFile::path`]
//! (`/proc/PID/map_files/START-END` or `/proc/PID/exe`), made of digits and hex only, which the
//! kernel resolves to the very file mapped there, in whatever chroot or mount namespace the target
//! lives. The target's own name is kept for people ([`MappedFile::shown`]) and never reaches a
//! script or a command line.

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
    pub libc: Option<MappedFile>,
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
    pub binary: MappedFile,
    /// The address of `_PyRuntime` in the target (3.7+).
    pub runtime: Option<u64>,
    /// The frame offsets for this version, or why there are none.
    pub layout: std::result::Result<&'static FrameLayout, String>,
    /// Which of the functions the scripts attach to `binary` has symbols for.
    pub symbols: BTreeSet<String>,
}

impl Python {
    /// The `python` provider's USDT probes in `binary` (e.g. gc__start). Read on demand, not by
    /// [`inspect`]: it reads the whole binary, and `attach` inspects every target before py-spy
    /// reads it (a spawned one every millisecond until its interpreter is up) without needing them.
    pub fn usdt_probes(&self) -> BTreeSet<String> {
        usdt_probes(&self.binary.path)
    }
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
                self.binary, self.version
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

/// A file the target has mapped, named twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    /// The name the target gave it (/proc/PID/maps, /proc/PID/exe): for people only. It may hold
    /// any byte but NUL and newline, so it never goes into a script or a command line.
    pub shown: String,
    /// The tool's own name for it: `/proc/PID/map_files/START-END` (the mapping's addresses in
    /// hex) or `/proc/PID/exe`. Made of digits, hex and `/`, `_`, `-` only (checked), so it can be
    /// pasted into a probe name; the kernel resolves it to the mapped inode itself, so a chroot or
    /// a container needs no /proc/PID/root prefix, and a file renamed or deleted since still works.
    pub path: PathBuf,
}

impl MappedFile {
    /// The file mapped at `mapping` in `pid`.
    pub fn mapping(pid: i32, mapping: &Mapping) -> MappedFile {
        MappedFile {
            shown: mapping.name.clone(),
            path: PathBuf::from(format!(
                "/proc/{pid}/map_files/{:x}-{:x}",
                mapping.start, mapping.end
            )),
        }
    }

    /// The executable of `pid`.
    pub fn executable(pid: i32) -> std::result::Result<MappedFile, String> {
        let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
            .map_err(|e| format!("cannot read /proc/{pid}/exe: {e}"))?;
        Ok(MappedFile {
            shown: exe.to_string_lossy().into_owned(),
            path: PathBuf::from(format!("/proc/{pid}/exe")),
        })
    }

    /// [`MappedFile::path`] as it goes into a script. Built from numbers only, it always passes the
    /// check; the check is there so that no later change can let a target's name through.
    pub fn tracer_name(&self) -> std::result::Result<String, String> {
        let name = self.path.to_string_lossy();
        if inert_path(&name) {
            Ok(name.into_owned())
        } else {
            Err(format!(
                "refusing to name {:?} in a tracer script: only letters, digits and / _ . - are allowed",
                name
            ))
        }
    }
}

impl std::fmt::Display for MappedFile {
    /// The target's name for the file (what a person recognises).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Whether `path` can be pasted into a probe name without being read as code: an absolute path
/// of ASCII letters, digits and `/`, `_`, `.`, `-` (no `:`, which ends a probe's path, no space,
/// brace, quote or wildcard).
pub fn inert_path(path: &str) -> bool {
    path.starts_with('/')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'.' | b'-'))
}

/// One file-backed line of /proc/PID/maps: where it is mapped and the name the target gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub name: String,
}

/// The files the target has mapped, the first mapping of each (pure: /proc/PID/maps text in,
/// mappings out, in order).
pub fn mapped_files(maps: &str) -> Vec<Mapping> {
    let mut files: Vec<Mapping> = Vec::new();
    for line in maps.lines() {
        let mut fields = line.splitn(6, ' ');
        let range = fields.next().unwrap_or("");
        let path = fields.nth(4).map(str::trim_start).unwrap_or("");
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        if !path.starts_with('/') {
            continue;
        }
        let name = path.trim_end_matches(" (deleted)");
        if !files.iter().any(|f| f.name == name) {
            files.push(Mapping {
                start,
                end,
                name: name.to_string(),
            });
        }
    }
    files
}

/// The C library among mapped files.
pub fn find_libc(files: &[Mapping]) -> Option<&Mapping> {
    files.iter().find(|file| {
        let name = file.name.rsplit('/').next().unwrap_or("");
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

fn find_python(pid: i32, files: &[Mapping]) -> std::result::Result<Python, String> {
    let process = remoteprocess::Process::new(pid).map_err(|e| format!("{e}"))?;
    let info = py_spy::python_process_info::PythonProcessInfo::new(&process)
        .map_err(|e| format!("no CPython interpreter found ({e:#})"))?;
    let version = py_spy::python_process_info::get_python_version(&info, &process)
        .map_err(|e| format!("the Python version could not be read ({e:#})"))?;
    let libpython = files.iter().find(|file| {
        file.name
            .rsplit('/')
            .next()
            .is_some_and(|name| name.starts_with("libpython"))
    });
    let binary = match libpython {
        Some(mapping) => MappedFile::mapping(pid, mapping),
        None => MappedFile::executable(pid)?,
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
    let libc = find_libc(&files).map(|mapping| MappedFile::mapping(pid, mapping));
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
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "/usr/bin/python3.11",
                "/usr/lib/x86_64-linux-gnu/libc.so.6",
                "/tmp/my lib.so"
            ]
        );
        let libc = find_libc(&files).unwrap();
        assert_eq!(libc.name, "/usr/lib/x86_64-linux-gnu/libc.so.6");
        assert_eq!((libc.start, libc.end), (0x7f00, 0x7f01));
        let named = |names: &[&str]| -> Vec<Mapping> {
            names
                .iter()
                .map(|n| Mapping {
                    start: 0,
                    end: 1,
                    name: n.to_string(),
                })
                .collect()
        };
        assert!(find_libc(&named(&["/lib/libcrypt.so.1"])).is_none());
        assert!(find_libc(&named(&[
            "/lib/ld-musl-x86_64.so.1",
            "/lib/libc.musl-x86_64.so.1"
        ]))
        .is_some());
    }

    /// A library loaded from a directory whose name is bpftrace code (the attack in
    /// tests/hostile_tracer.rs): the tool's name for it is inert, the target's is not.
    #[test]
    fn a_hostile_library_path_never_becomes_the_tracer_name() {
        let hostile =
            r#"/tmp/t/a:malloc{}interval:s:1{cat("/etc/shadow")}uprobe:/tmp/t/b/libc.so.6"#;
        let maps = format!("7f2593224000-7f259324a000 r--p 00000000 fe:00 326279 {hostile}\n");
        let files = mapped_files(&maps);
        let libc = MappedFile::mapping(4242, find_libc(&files).unwrap());
        assert_eq!(libc.shown, hostile);
        assert_eq!(
            libc.tracer_name().unwrap(),
            "/proc/4242/map_files/7f2593224000-7f259324a000"
        );
        assert!(!inert_path(hostile));
        let forged = MappedFile {
            shown: String::new(),
            path: PathBuf::from(hostile),
        };
        assert!(forged.tracer_name().is_err());
        assert!(!inert_path("relative/path"));
        assert!(!inert_path("/a b"));
        assert!(!inert_path("/a*"));
    }
}
