//! Every file the tool writes for the user is written atomically: into a hidden temporary sibling
//! (`.NAME.tmp-PID-RANDOM`, same directory so the rename stays on one file system), synced, then
//! renamed over the target. Readers never see a half-written file, a failed write leaves an earlier
//! file intact, and a run that fails leaves nothing behind.
//!
//! The tool often runs as root and is pointed at shared directories such as /tmp, where other
//! users can plant names. So the temporary name is unpredictable and claimed with
//! `O_CREAT|O_EXCL` (which also refuses a planted symbolic link) before anything writes to it, and
//! the final rename replaces whatever is at the target's name without following it.
//!
//! The one exception is the `process -o FILE.jsonl` log, streamed and flushed every tick on purpose
//! so that it survives a crash of the tool (see [`super::jsonl`]).

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, ErrorKind};

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
/// long recording rather than after it. Creates and removes the temporary file the final write
/// will use: nothing is left behind, and an earlier file at `target` is not touched.
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
    if target.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        ));
    }
    let (_, temporary) = claim_temporary(target, "")?;
    fs::remove_file(&temporary)
}

/// Writes `target` by way of its temporary sibling (see [`claim_temporary`]): `write` is given the
/// temporary path, already created (empty) by us, so that a writer which opens it by name opens
/// our file; the file is synced and renamed over `target` once `write` succeeded, and removed if
/// anything failed.
pub fn write_atomically(
    target: &Path,
    temporary_suffix: &str,
    write: impl FnOnce(&Path) -> io::Result<()>,
) -> io::Result<()> {
    let (claimed, temporary) = claim_temporary(target, temporary_suffix)?;
    drop(claimed);
    let result = write(&temporary)
        .and_then(|()| File::open(&temporary)?.sync_all())
        .and_then(|()| fs::rename(&temporary, target));
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
/// when [`AtomicFile::commit`] is called; dropped uncommitted, its temporary file is removed.
#[derive(Debug)]
pub struct AtomicFile {
    target: PathBuf,
    temporary: PathBuf,
    file: File,
    committed: bool,
}

impl AtomicFile {
    /// Creates the temporary file now (which also checks that `target` can be written).
    pub fn create(target: &Path) -> io::Result<AtomicFile> {
        check_writable(target)?;
        let (file, temporary) = claim_temporary(target, "")?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temporary,
            file,
            committed: false,
        })
    }

    /// The open temporary file, to write to.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs what was written and gives the file its name.
    pub fn commit(mut self) -> io::Result<()> {
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
