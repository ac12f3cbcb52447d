//! Every file the tool writes for the user goes through this module, which decides once, for
//! every writer, what may be done to the thing at the output's path.
//!
//! - **Nothing there, or a regular file**: written atomically, into a hidden temporary sibling
//!   (`.NAME.tmp-PID-RANDOM`, same directory so the rename stays on one file system), synced, then
//!   renamed over the target. Readers never see a half-written file, a failed write leaves an
//!   earlier file intact, and a run that fails leaves nothing behind.
//! - **A character device or a FIFO** (`/dev/null`, a terminal, `mkfifo`, or `/dev/stdout` when
//!   it leads to a pipe or a terminal): written *into*, never replaced. Renaming a file over
//!   `/dev/null` as root would break it for every user of the host. The output is made first in
//!   a private temporary file, then copied in; the device is opened non-blocking, and a FIFO that
//!   no process reads (or stops reading) ends the write with an error after
//!   [`SPECIAL_FILE_PATIENCE`], so that it cannot hang the tool.
//! - **Anything else is refused** with a line that says why (exit code 7): a directory, a block
//!   device (a report is never written over a disk), a socket, and a symbolic link to a regular
//!   file (replacing the link would lose it; writing through it is what a planted link wants; the
//!   user gives the path it points to).
//!
//! The tool often runs as root and is pointed at shared directories such as /tmp, where other
//! users can plant names. So:
//! - the temporary name is unpredictable and claimed with `O_CREAT|O_EXCL` (which also refuses a
//!   planted symbolic link) before anything writes to it, and the final rename replaces the
//!   regular file at the target's name without following anything;
//! - a symbolic link, FIFO or socket in a directory that other users can write is used only when
//!   it belongs to the user the tool runs as or to the directory's owner, the rule the kernel
//!   applies itself with `fs.protected_symlinks` and `fs.protected_fifos`: anything else may have
//!   been planted there by another user (to read the report through a FIFO of theirs, or to
//!   point the tool at a file of their choosing) and is refused;
//! - what is opened is checked again on the open descriptor (its type, and that it is the file
//!   that was checked), so that swapping the name in between gains nothing.
//!
//! The `process -o FILE.jsonl` log is streamed and flushed every tick on purpose so that it
//! survives a crash of the tool ([`open_streamed`]): a regular file is written in place rather
//! than renamed into place, under the same rules.

use std::ffi::CString;
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind};

/// How long a FIFO (or a terminal held by flow control) may take to get a reader, or to take
/// more of the output, before the write gives up with an error: long enough for a reader started
/// alongside the tool (`cat fifo &`), short enough that a FIFO nobody reads cannot hold the tool
/// much beyond its own deadline.
pub const SPECIAL_FILE_PATIENCE: Duration = Duration::from_secs(5);

/// How an output's path is written, decided by [`destination`] from what is there now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Destination {
    /// Nothing, or a regular file: replaced by a renamed temporary sibling.
    Replace,
    /// A character device or a FIFO: written into, never replaced.
    WriteInto(Special),
}

/// A character device or FIFO at an output's path, as checked: the open must find the same one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Special {
    /// The path is a symbolic link (one that may be followed) to it.
    through_link: bool,
    fifo: bool,
    device: u64,
    inode: u64,
}

fn refused(kind: io::ErrorKind, why: impl Into<String>) -> io::Error {
    io::Error::new(kind, why.into())
}

/// What the thing at `target` is, in words.
fn kind_name(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_symlink() {
        "symbolic link"
    } else if kind.is_fifo() {
        "FIFO"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_char_device() {
        "character device"
    } else if kind.is_block_device() {
        "block device"
    } else if kind.is_dir() {
        "directory"
    } else {
        "file"
    }
}

/// The user the tool runs as, for file ownership.
fn effective_uid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Refuses `entry` (a link, FIFO or socket at `path`, not followed) when it sits in a directory
/// that users other than its owner can write and belongs neither to the tool's user nor to the
/// directory's owner: another user may have planted it there. This is the kernel's own rule for
/// following links (`fs.protected_symlinks`) and opening FIFOs (`fs.protected_fifos`) in shared
/// directories, applied whatever those settings are.
fn refuse_if_planted(path: &Path, entry: &Metadata) -> io::Result<()> {
    let directory = directory_of(path);
    let Ok(parent) = fs::metadata(directory) else {
        return Ok(());
    };
    let others_can_write = parent.mode() & 0o022 != 0;
    if others_can_write && entry.uid() != effective_uid() && entry.uid() != parent.uid() {
        return Err(refused(
            io::ErrorKind::PermissionDenied,
            format!(
                "it is a {} owned by user {} in `{}`, a directory other users can write: it may \
                 have been planted there, so it is neither followed nor written (remove it, or \
                 choose another path)",
                kind_name(entry),
                entry.uid(),
                directory.display()
            ),
        ));
    }
    Ok(())
}

/// Decides how `target` is written from what is at its path now (see the module's comment).
fn destination(target: &Path) -> io::Result<Destination> {
    let entry = match fs::symlink_metadata(target) {
        Ok(entry) => entry,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Destination::Replace),
        Err(err) => return Err(err),
    };
    if entry.is_file() {
        return Ok(Destination::Replace);
    }
    if entry.is_dir() {
        return Err(refused(io::ErrorKind::IsADirectory, "it is a directory"));
    }
    refuse_if_planted(target, &entry)?;
    let through_link = entry.file_type().is_symlink();
    let meta = if through_link {
        let meta = fs::metadata(target).map_err(|err| {
            refused(
                err.kind(),
                format!("it is a symbolic link that leads to nothing usable ({err})"),
            )
        })?;
        if meta.is_file() {
            return Err(refused(
                io::ErrorKind::InvalidInput,
                "it is a symbolic link to a regular file, which is neither replaced nor written \
                 through: give the path it points to",
            ));
        }
        // Where the link ends obeys the same rule: a link of ours must not lead the tool to a
        // FIFO another user planted. (A pipe reached through /proc/self/fd has no such path, and
        // cannot be planted.)
        if let Ok(real) = fs::canonicalize(target) {
            if let Ok(real_entry) = fs::symlink_metadata(&real) {
                refuse_if_planted(&real, &real_entry)?;
            }
        }
        meta
    } else {
        entry
    };
    let kind = meta.file_type();
    if kind.is_char_device() || kind.is_fifo() {
        return Ok(Destination::WriteInto(Special {
            through_link,
            fifo: kind.is_fifo(),
            device: meta.dev(),
            inode: meta.ino(),
        }));
    }
    Err(refused(
        io::ErrorKind::InvalidInput,
        match kind_name(&meta) {
            "block device" => "it is a block device: a report is never written over a disk",
            "socket" => "it is a socket, which cannot be written as a file",
            "directory" => "it leads to a directory",
            _ => "it is not a kind of file the tool writes",
        },
    ))
}

/// A character device or FIFO opened for writing without blocking: a write that cannot proceed
/// waits at most [`SPECIAL_FILE_PATIENCE`] for room, then fails.
#[derive(Debug)]
pub struct SpecialFile {
    file: File,
}

impl SpecialFile {
    /// Opens what [`destination`] found at `target`, checking on the open descriptor that it is
    /// the same device or FIFO. A FIFO with no reader yet gets [`SPECIAL_FILE_PATIENCE`] to
    /// have one.
    fn open(target: &Path, special: Special) -> io::Result<SpecialFile> {
        let started = Instant::now();
        let no_follow = if special.through_link {
            0
        } else {
            libc::O_NOFOLLOW
        };
        let file = loop {
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | no_follow)
                .open(target)
            {
                Ok(file) => break file,
                // A FIFO nobody reads yet: O_NONBLOCK gives ENXIO instead of waiting for ever.
                Err(err) if special.fifo && err.raw_os_error() == Some(libc::ENXIO) => {
                    if started.elapsed() >= SPECIAL_FILE_PATIENCE {
                        return Err(refused(
                            io::ErrorKind::TimedOut,
                            format!(
                                "no process opened this FIFO for reading within {} s",
                                SPECIAL_FILE_PATIENCE.as_secs()
                            ),
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(err) => return Err(err),
            }
        };
        let opened = file.metadata()?;
        let same = (opened.file_type().is_char_device() || opened.file_type().is_fifo())
            && opened.dev() == special.device
            && opened.ino() == special.inode;
        if !same {
            return Err(refused(
                io::ErrorKind::Other,
                "it was replaced while being opened: not written",
            ));
        }
        Ok(SpecialFile { file })
    }

    /// Waits until the file takes more bytes, for at most [`SPECIAL_FILE_PATIENCE`].
    fn wait_for_room(&self) -> io::Result<()> {
        let deadline = Instant::now() + SPECIAL_FILE_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(refused(
                    io::ErrorKind::TimedOut,
                    format!(
                        "nothing read it for {} s, so the rest was not written",
                        SPECIAL_FILE_PATIENCE.as_secs()
                    ),
                ));
            }
            let mut poll = libc::pollfd {
                fd: self.file.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one pollfd, valid for the call.
            let ready = unsafe { libc::poll(&mut poll, 1, left.as_millis().max(1) as i32) };
            if ready > 0 {
                // Room, or an error (no reader left) that the next write reports.
                return Ok(());
            }
            if ready < 0 {
                let err = io::Error::last_os_error();
                if err.kind() != io::ErrorKind::Interrupted {
                    return Err(err);
                }
            }
        }
    }
}

impl Write for SpecialFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match (&self.file).write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.wait_for_room()?,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A file written in place as a run goes on (the `process -o` log): a regular file (created or
/// truncated, never through a link), or a character device or FIFO written into.
#[derive(Debug)]
pub enum StreamedFile {
    Regular(File),
    Special(SpecialFile),
}

impl StreamedFile {
    /// Whether this is a regular file the tool created or truncated (which it may remove again).
    pub fn is_regular_file(&self) -> bool {
        matches!(self, StreamedFile::Regular(_))
    }
}

impl Write for StreamedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            StreamedFile::Regular(file) => file.write(buf),
            StreamedFile::Special(special) => special.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            StreamedFile::Regular(file) => file.flush(),
            StreamedFile::Special(special) => special.flush(),
        }
    }
}

/// Opens `target` to be written in place as a run goes on, under the rules of this module: a
/// regular file is created or truncated (a link at its name is refused, not followed), a device
/// or FIFO is written into.
pub fn open_streamed(target: &Path) -> io::Result<StreamedFile> {
    match destination(target)? {
        Destination::Replace => {
            // O_NONBLOCK so that a FIFO swapped in since the check cannot block the open; not
            // O_TRUNC, so that what was opened is checked before anything of it is lost.
            let file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
                .open(target)?;
            let opened = file.metadata()?;
            if !opened.is_file() {
                return Err(refused(
                    io::ErrorKind::Other,
                    "it was replaced while being opened: not written",
                ));
            }
            // Written in place, an existing file is truncated: never one that is also another
            // name of a file elsewhere (a hard link another user made to a file of root's, where
            // fs.protected_hardlinks is off), nor one another user left in a shared directory
            // (the kernel's fs.protected_regular rule).
            if opened.nlink() > 1 {
                return Err(refused(
                    io::ErrorKind::PermissionDenied,
                    "it has other hard links (it may be a file from elsewhere under a second \
                     name), so it is not truncated: remove it, or choose another path",
                ));
            }
            refuse_if_planted(target, &opened)?;
            file.set_len(0)?;
            Ok(StreamedFile::Regular(file))
        }
        Destination::WriteInto(special) => {
            Ok(StreamedFile::Special(SpecialFile::open(target, special)?))
        }
    }
}

/// Creates the hidden sibling `target` is written to before the rename, `.NAME.tmp-PID-RANDOM`
/// followed by `temporary_suffix` (some encoders pick their format from the extension), and
/// returns it open. The name cannot be guessed and is made fresh (`O_EXCL`): nothing planted there
/// in advance is followed or reused. The mode is the usual 0666 less the umask, as a plain create.
fn claim_temporary(target: &Path, temporary_suffix: &str) -> io::Result<(File, PathBuf)> {
    let name = target.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` does not name a file", target.display()),
        )
    })?;
    let prefix = format!(".{}.tmp-{}-", name.to_string_lossy(), std::process::id());
    remove_temporaries_of_killed_runs(target);
    let temporary = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(temporary_suffix)
        .rand_bytes(8)
        .permissions(Permissions::from_mode(0o666))
        .tempfile_in(directory_of(target))?;
    temporary.keep().map_err(|err| err.error)
}

/// The private file an output bound for a device or FIFO is made in before it is copied there
/// (in the system's temporary directory, mode 0600, a fresh unguessable name).
fn claim_private_temporary(temporary_suffix: &str) -> io::Result<(File, PathBuf)> {
    let temporary = tempfile::Builder::new()
        .prefix(".pymemtrace-output-")
        .suffix(temporary_suffix)
        .rand_bytes(8)
        .tempfile()?;
    temporary.keep().map_err(|err| err.error)
}

/// Copies the finished output at `temporary` into the device or FIFO at `target`.
fn copy_into_special(temporary: &Path, target: &Path) -> io::Result<()> {
    let Destination::WriteInto(special) = destination(target)? else {
        return Err(refused(
            io::ErrorKind::Other,
            "it was a device or FIFO when the run began and is no longer one: not written",
        ));
    };
    let mut into = SpecialFile::open(target, special)?;
    io::copy(&mut File::open(temporary)?, &mut into)?;
    Ok(())
}

/// Removes the temporary siblings of `target` that runs killed before their rename left behind
/// (`.NAME.tmp-PID-RANDOM...` whose PID is gone). Only regular files owned by this user: in a
/// shared directory, a name of that shape can be anyone's, and a link is never followed.
fn remove_temporaries_of_killed_runs(target: &Path) {
    let Some(name) = target.file_name() else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(directory_of(target)) else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    for entry in entries.flatten() {
        let entry_name = entry.file_name();
        let Some(pid) = entry_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|rest| rest.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<i32>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        let ours = entry
            .metadata() // of the entry itself: read_dir's metadata does not follow links
            .is_ok_and(|meta| meta.file_type().is_file() && meta.uid() == me);
        if gone && ours {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// The directory `target` is written in ("." for a bare file name).
fn directory_of(target: &Path) -> &Path {
    match target.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    }
}

/// Checks now that `target` can be written at the end of a run, so that a bad path fails before a
/// long recording rather than after it. For a new or regular file, creates and removes the
/// temporary file the final write will use: nothing is left behind, and an earlier file at
/// `target` is not touched. A device or FIFO is not opened (closing a FIFO would end its reader's
/// stream), only checked for kind, ownership and permission.
pub fn check_writable(target: &Path) -> io::Result<()> {
    let directory = directory_of(target);
    match fs::metadata(directory) {
        Ok(meta) if !meta.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("`{}` is not a directory", directory.display()),
            ))
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the directory `{}` does not exist", directory.display()),
            ))
        }
        _ => {}
    }
    match destination(target)? {
        Destination::Replace => {
            let (_, temporary) = claim_temporary(target, "")?;
            fs::remove_file(&temporary)
        }
        Destination::WriteInto(_) => writable_by_this_user(target),
    }
}

/// Whether the tool's user may open `target` for writing (`faccessat` with the effective ids).
fn writable_by_this_user(target: &Path) -> io::Result<()> {
    let path = CString::new(target.as_os_str().as_bytes())
        .map_err(|_| refused(io::ErrorKind::InvalidInput, "the path holds a NUL byte"))?;
    // SAFETY: a valid C string; faccessat only reads it.
    let allowed =
        unsafe { libc::faccessat(libc::AT_FDCWD, path.as_ptr(), libc::W_OK, libc::AT_EACCESS) };
    if allowed == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Writes `target` by way of a temporary file: `write` is given the temporary path, already
/// created (empty) by us, so that a writer which opens it by name opens our file. For a new or
/// regular file, the temporary is a hidden sibling (see [`claim_temporary`]), synced and renamed
/// over `target` once `write` succeeded; for a device or FIFO, a private file whose content is
/// then copied in. The temporary is removed if anything failed.
pub fn write_atomically(
    target: &Path,
    temporary_suffix: &str,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let result = match destination(target)? {
        Destination::Replace => {
            let (claimed, temporary) = claim_temporary(target, temporary_suffix)?;
            drop(claimed);
            let result = write(&temporary)
                .and_then(|()| File::open(&temporary)?.sync_all())
                .and_then(|()| fs::rename(&temporary, target));
            (result, temporary)
        }
        Destination::WriteInto(_) => {
            let (claimed, temporary) = claim_private_temporary(temporary_suffix)?;
            drop(claimed);
            let result = write(&temporary).and_then(|()| copy_into_special(&temporary, target));
            // Copied or not, the private file has served.
            let _ = fs::remove_file(&temporary);
            (result, temporary)
        }
    };
    let (result, temporary) = result;
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result
}

/// [`write_atomically`] for writers that want a buffered stream rather than a path.
pub fn write_stream_atomically(
    target: &Path,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    write_atomically(target, "", |temporary| {
        let mut out = BufWriter::new(File::create(temporary)?);
        write(&mut out)?;
        out.flush()
    })
}

/// A file streamed while a run goes on (the `attach` event log) that appears under its name only
/// when [`AtomicFile::commit`] is called; dropped uncommitted, its temporary file is removed. Bound
/// for a device or FIFO, it is streamed into a private file and copied there on commit.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temporary: PathBuf,
    file: File,
    into_special: bool,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file now (which also checks that `target` can be written).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        check_writable(target)?;
        let into_special = matches!(destination(target)?, Destination::WriteInto(_));
        let (file, temporary) = if into_special {
            claim_private_temporary("")?
        } else {
            claim_temporary(target, "")?
        };
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temporary,
            file,
            into_special,
            committed: false,
        })
    }

    /// The open temporary file, to write to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs what was written and gives the file its name (or copies it into the device or FIFO).
    pub fn commit(mut self) -> io::Result<()> {
        if self.into_special {
            // Dropped right after, copied or not: the private file is removed either way.
            return copy_into_special(&self.temporary, &self.target);
        }
        self.file.sync_all()?;
        fs::rename(&self.temporary, &self.target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.temporary);
        }
    }
}

/// The error for an output that cannot be written before the run (`cannot write`) or at its end
/// (`writing ... failed`): exit code 7 either way.
pub fn not_writable(path: &Path, early: bool, err: io::Error) -> Error {
    let what = if early { "cannot write" } else { "writing" };
    let tail = if early { "" } else { " failed" };
    Error::new(
        ErrorKind::OutputNotWritable,
        format!("{what} `{}`{tail}: {err}", path.display()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pymemtrace-atomic-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_failed_write_leaves_the_earlier_file_and_no_temporary() {
        let dir = scratch("fail");
        let target = dir.join("out.json");
        fs::write(&target, "old").unwrap();
        let err = write_stream_atomically(&target, |out| {
            out.write_all(b"half")?;
            Err(io::Error::other("disk full"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(entries(&dir), ["out.json"]);
        write_stream_atomically(&target, |out| out.write_all(b"new")).unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(entries(&dir), ["out.json"]);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_writability_check_leaves_nothing_behind() {
        let dir = scratch("check");
        check_writable(&dir.join("out.svg")).unwrap();
        assert!(entries(&dir).is_empty());
        let missing = check_writable(&dir.join("missing/out.svg")).unwrap_err();
        assert!(missing.to_string().contains("does not exist"), "{missing}");
        let is_dir = check_writable(&dir).unwrap_err();
        assert!(is_dir.to_string().contains("directory"), "{is_dir}");
        fs::write(dir.join("file"), "").unwrap();
        let not_dir = check_writable(&dir.join("file/out.svg")).unwrap_err();
        assert!(not_dir.to_string().contains("not a directory"), "{not_dir}");
        fs::remove_dir_all(dir).unwrap();
    }

    /// What another user could plant in a shared directory under the names a run of this PID
    /// used to pick: a link to a file of root's, a plain file. Neither is followed, truncated or
    /// removed, and the output is still written.
    #[test]
    fn planted_temporary_names_are_neither_followed_nor_reused() {
        let dir = scratch("planted");
        let victim = dir.join("victim");
        fs::write(&victim, "root's own").unwrap();
        let pid = std::process::id();
        std::os::unix::fs::symlink(&victim, dir.join(format!(".out.json.tmp-{pid}"))).unwrap();
        fs::write(dir.join(format!(".out.svg.tmp-{pid}")), "theirs").unwrap();
        let target = dir.join("out.json");
        write_stream_atomically(&target, |out| out.write_all(b"ours")).unwrap();
        check_writable(&dir.join("out.svg")).unwrap();
        write_atomically(&dir.join("out.svg"), "", |temporary| {
            fs::write(temporary, "svg")
        })
        .unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's own");
        assert_eq!(fs::read_to_string(&target).unwrap(), "ours");
        assert_eq!(fs::read_to_string(dir.join("out.svg")).unwrap(), "svg");
        assert_eq!(
            fs::read_to_string(dir.join(format!(".out.svg.tmp-{pid}"))).unwrap(),
            "theirs"
        );
        let mode = fs::metadata(&target).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode & 0o600,
            0o600,
            "the owner can read and write: {mode:o}"
        );
        assert_eq!(entries(&dir).len(), 5, "{:?}", entries(&dir));
        fs::remove_dir_all(dir).unwrap();
    }

    /// A run killed before its rename leaves `.NAME.tmp-PID-RANDOM`; the next write of NAME removes
    /// it once that PID is gone, but never a live run's, a link, or another name's.
    #[test]
    fn temporaries_of_killed_runs_are_swept_by_the_next_write() {
        let dir = scratch("sweep");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let stale = dir.join(format!(".run.log.tmp-{dead}-0123abcd"));
        let live = dir.join(format!(".run.log.tmp-{}-0123abcd", std::process::id()));
        let link = dir.join(format!(".run.log.tmp-{dead}-link0000"));
        let other = dir.join(format!(".other.log.tmp-{dead}-0123abcd"));
        for path in [&stale, &live, &other] {
            fs::write(path, "half").unwrap();
        }
        std::os::unix::fs::symlink(&other, &link).unwrap();
        let file = AtomicFile::create(&dir.join("run.log")).unwrap();
        file.commit().unwrap();
        assert!(!stale.exists(), "the killed run's temporary is still there");
        assert!(live.exists() && other.exists());
        assert!(link.symlink_metadata().is_ok());
        fs::remove_dir_all(dir).unwrap();
    }

    /// `/dev/null` is written into: it stays the character device it was, and no temporary is
    /// left anywhere (neither in /dev nor in the private temporary directory).
    #[test]
    fn a_character_device_is_written_into_never_replaced() {
        use std::os::unix::fs::FileTypeExt;
        let null = Path::new("/dev/null");
        let before = fs::symlink_metadata(null).unwrap();
        check_writable(null).unwrap();
        write_stream_atomically(null, |out| out.write_all(&[b'x'; 100_000])).unwrap();
        write_atomically(null, ".png", |temporary| fs::write(temporary, "png")).unwrap();
        let file = AtomicFile::create(null).unwrap();
        (&mut file.file()).write_all(b"rows").unwrap();
        file.commit().unwrap();
        let mut streamed = open_streamed(null).unwrap();
        assert!(!streamed.is_regular_file());
        streamed.write_all(b"row\n").unwrap();
        let after = fs::symlink_metadata(null).unwrap();
        assert!(after.file_type().is_char_device());
        assert_eq!((before.ino(), before.rdev()), (after.ino(), after.rdev()));
        let left: Vec<String> = fs::read_dir("/dev")
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(".null.tmp-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// The streamed log truncates an existing file in place: never one with another name
    /// elsewhere (a hard link to a file of root's).
    #[test]
    fn a_streamed_log_never_truncates_a_file_with_other_links() {
        let dir = scratch("hardlink");
        let victim = dir.join("victim");
        fs::write(&victim, "root's own").unwrap();
        let log = dir.join("run.jsonl");
        fs::hard_link(&victim, &log).unwrap();
        let err = open_streamed(&log).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's own");
        fs::remove_file(&log).unwrap();
        fs::write(&log, "an earlier log").unwrap();
        let mut streamed = open_streamed(&log).unwrap();
        streamed.write_all(b"row\n").unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "row\n");
        fs::remove_dir_all(dir).unwrap();
    }

    /// A link to a regular file is neither replaced nor written through; a link of ours to a
    /// device is followed; a directory, a block device and a socket are refused.
    #[test]
    fn links_and_other_kinds_are_refused_or_followed_by_what_they_lead_to() {
        let dir = scratch("kinds");
        let victim = dir.join("victim");
        fs::write(&victim, "root's own").unwrap();
        let link = dir.join("out.json");
        std::os::unix::fs::symlink(&victim, &link).unwrap();
        let err = check_writable(&link).unwrap_err();
        assert!(
            err.to_string().contains("symbolic link to a regular file"),
            "{err}"
        );
        let err = write_stream_atomically(&link, |out| out.write_all(b"ours")).unwrap_err();
        assert!(err.to_string().contains("give the path"), "{err}");
        assert!(open_streamed(&link).is_err());
        assert_eq!(fs::read_to_string(&victim).unwrap(), "root's own");
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());

        let to_null = dir.join("null.svg");
        std::os::unix::fs::symlink("/dev/null", &to_null).unwrap();
        write_stream_atomically(&to_null, |out| out.write_all(b"svg")).unwrap();
        assert!(fs::symlink_metadata(&to_null)
            .unwrap()
            .file_type()
            .is_symlink());

        let socket = dir.join("socket.json");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = check_writable(&socket).unwrap_err();
        assert!(err.to_string().contains("socket"), "{err}");
        let err = check_writable(&dir).unwrap_err();
        assert!(err.to_string().contains("directory"), "{err}");
        if let Some(disk) = fs::read_dir("/dev").unwrap().flatten().find(|e| {
            use std::os::unix::fs::FileTypeExt;
            e.file_type().is_ok_and(|t| t.is_block_device())
        }) {
            let err = check_writable(&disk.path()).unwrap_err();
            assert!(err.to_string().contains("block device"), "{err}");
        }
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_atomic_file_appears_only_when_committed() {
        let dir = scratch("stream");
        let target = dir.join("run.log");
        {
            let file = AtomicFile::create(&target).unwrap();
            (&mut file.file()).write_all(b"rows").unwrap();
            assert!(!target.exists());
        }
        assert!(entries(&dir).is_empty(), "{:?}", entries(&dir));
        let file = AtomicFile::create(&target).unwrap();
        (&mut file.file()).write_all(b"rows").unwrap();
        file.commit().unwrap();
        assert_eq!(fs::read_to_string(&target).unwrap(), "rows");
        assert_eq!(entries(&dir), ["run.log"]);
        fs::remove_dir_all(dir).unwrap();
    }
}
