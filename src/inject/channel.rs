//! The reply channel: a unix socket in a fresh private directory of the target's own /tmp.
//!
//! The tool runs as root against processes of other users, and the target decides what its /tmp
//! is: its user owns entries there, and a target in its own user and mount namespaces can even
//! bind-mount a root-owned directory over it. So:
//! - everything the tool creates, changes or removes there (the directory, the socket, a PEP 768
//!   script, the sweep of a killed run's leftovers) is done with the target's own filesystem uid,
//!   gid and groups ([`TargetUser::run`]): the kernel allows exactly what the target's user could
//!   have done itself. A /tmp where that user may not create a directory is refused, and nothing
//!   is made there; what the tool makes belongs to the target's user from the start, so nothing is
//!   ever handed over (chown) and no name can be swapped between a creation and a chown;
//! - every path step is opened without following links (O_NOFOLLOW), the directory is made fresh
//!   (mkdir fails on anything already there, link or not) with mode 0700, and the socket is bound
//!   through the directory's file descriptor, never through a path the target's user could swap;
//! - only the target itself may connect (SO_PEERCRED), every read is bounded, and the directory is
//!   removed on every path (Drop).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::target_user::TargetUser;

/// A listening socket in `/tmp/pymemtrace-XXXXXXXX/s` as the target sees it.
pub struct Channel {
    tmp: OwnedFd,
    dir: OwnedFd,
    dir_name: String,
    listener: UnixListener,
    /// The private directory inside the target (its own view of /tmp); the socket is `s` in it.
    pub target_dir: String,
    target_pid: i32,
    /// Whose rights every change in the target's /tmp is made with.
    user: TargetUser,
}

fn os_error(what: &str) -> std::io::Error {
    let err = std::io::Error::last_os_error();
    std::io::Error::new(err.kind(), format!("{what}: {err}"))
}

fn open_dir_at(parent: libc::c_int, name: &str) -> std::io::Result<OwnedFd> {
    let c_name = CString::new(name).expect("no NUL in a fixed name");
    // SAFETY: openat with a valid dirfd and NUL-terminated name; the fd is owned below.
    let fd = unsafe {
        libc::openat(
            parent,
            c_name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(os_error(&format!("cannot open {name}")));
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most bytes.len() bytes.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        bytes = (nanos ^ (std::process::id() as u64) << 32).to_ne_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Channel {
    /// Makes the private directory in the target's /tmp, as the target's user, and listens in it.
    /// Fails with `PermissionDenied` when that user may not create a directory there.
    pub fn open(target_pid: i32, user: &TargetUser) -> std::io::Result<Channel> {
        let root = CString::new(format!("/proc/{target_pid}/root")).expect("no NUL");
        // SAFETY: open of a NUL-terminated path; the magic link is followed on purpose (it is the
        // target's root, not something its user can plant).
        let root_fd = unsafe {
            libc::open(
                root.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if root_fd < 0 {
            return Err(os_error(&format!("cannot open /proc/{target_pid}/root")));
        }
        // SAFETY: root_fd is a fresh descriptor we own.
        let root_fd = unsafe { OwnedFd::from_raw_fd(root_fd) };
        let tmp = open_dir_at(root_fd.as_raw_fd(), "tmp")?;
        let (dir, dir_name, listener) = user.run(|| make_private_socket(&tmp))??;
        Ok(Channel {
            target_dir: format!("/tmp/{dir_name}"),
            tmp,
            dir,
            dir_name,
            listener,
            target_pid,
            user: user.clone(),
        })
    }

    /// Writes `content` to a new file `name` in the private directory, as the target's user and
    /// readable by it only, and returns its path as the target sees it. O_EXCL|O_NOFOLLOW: nothing
    /// the target's user planted there is followed or overwritten.
    pub fn write_file(&self, name: &str, content: &[u8]) -> std::io::Result<String> {
        let c_name = CString::new(name).expect("no NUL in a fixed name");
        self.user.run(|| {
            // SAFETY: openat with a valid dirfd and NUL-terminated name; the fd is owned below.
            let fd = unsafe {
                libc::openat(
                    self.dir.as_raw_fd(),
                    c_name.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o400,
                )
            };
            if fd < 0 {
                return Err(os_error(&format!(
                    "cannot create {name} in the private directory"
                )));
            }
            // SAFETY: fd is a fresh descriptor we own.
            let mut file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            std::io::Write::write_all(&mut file, content)
        })??;
        Ok(format!("{}/{name}", self.target_dir))
    }

    /// Waits until `deadline` for the target to connect, checks that it is the target, and reads
    /// its reply (at most `max_reply` bytes, within `reply_allowance` of the connection). None
    /// when nobody connected in time. The connection is returned with the reply: a helper may
    /// keep its end open, and learns that the tool is gone when this one closes.
    pub fn receive(
        &self,
        deadline: Instant,
        reply_allowance: Duration,
        max_reply: usize,
        cancel: &AtomicBool,
    ) -> std::io::Result<Option<(Vec<u8>, UnixStream)>> {
        // The target's death is noticed within this much (a killed target never connects, and
        // the user should not wait out the whole --timeout to hear it).
        const LIVENESS_EVERY: Duration = Duration::from_millis(20);
        let mut checked = Instant::now();
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if peer_pid(&stream) == Some(self.target_pid) {
                        break stream;
                    }
                    // Someone else (another process of the target's user): not our helper.
                    continue;
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    let now = Instant::now();
                    if now >= deadline || cancel.load(Ordering::Relaxed) {
                        return Ok(None);
                    }
                    if now.duration_since(checked) >= LIVENESS_EVERY {
                        checked = now;
                        if !crate::target::is_alive(self.target_pid) {
                            return Ok(None);
                        }
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(err) => return Err(err),
            }
        };
        stream.set_nonblocking(false)?;
        // The helper is running now, between its connect and its reply: a snapshot of a large
        // heap in a target whose threads hold the GIL can take many seconds, so it gets its own
        // allowance rather than what is left of the wait for it to start.
        let reply = read_reply(&stream, reply_allowance, max_reply)?;
        Ok(Some((reply, stream)))
    }
}

/// In `tmp`, as the calling thread's user (the target's): sweeps a killed run's leftovers, makes a
/// fresh 0700 directory `pymemtrace-<tool pid>-<random>`, and binds a 0600 socket `s` in it.
fn make_private_socket(tmp: &OwnedFd) -> std::io::Result<(OwnedFd, String, UnixListener)> {
    remove_stale(tmp);
    let mut attempts = 0;
    let dir_name = loop {
        let name = format!("{DIR_PREFIX}{}-{}", std::process::id(), random_suffix());
        let c_name = CString::new(name.clone()).expect("no NUL");
        // SAFETY: mkdirat with a valid dirfd; it fails if anything of that name exists.
        if unsafe { libc::mkdirat(tmp.as_raw_fd(), c_name.as_ptr(), 0o700) } == 0 {
            break name;
        }
        let err = std::io::Error::last_os_error();
        attempts += 1;
        // Only a name already taken is worth another try (a random one: never in practice).
        if err.kind() != std::io::ErrorKind::AlreadyExists || attempts >= 8 {
            return Err(std::io::Error::new(
                err.kind(),
                format!("cannot make a private directory in the target's /tmp: {err}"),
            ));
        }
    };
    let made = (|| {
        let dir = open_dir_at(tmp.as_raw_fd(), &dir_name)?;
        // Bound through our descriptor: the path cannot be swapped under us. The socket is the
        // target's user's from its creation; its mode is set as that user, who may change only
        // what it owns.
        let bind_path = format!("/proc/self/fd/{}/s", dir.as_raw_fd());
        let listener = UnixListener::bind(&bind_path)?;
        let socket_name = CString::new("s").expect("no NUL");
        // SAFETY: fchmodat on a name in our directory.
        if unsafe { libc::fchmodat(dir.as_raw_fd(), socket_name.as_ptr(), 0o600, 0) } != 0 {
            return Err(os_error("cannot set the socket's mode"));
        }
        listener.set_nonblocking(true)?;
        Ok((dir, listener))
    })();
    match made {
        Ok((dir, listener)) => Ok((dir, dir_name, listener)),
        Err(err) => {
            if let Ok(dir) = open_dir_at(tmp.as_raw_fd(), &dir_name) {
                remove_contents(&dir);
            }
            remove_dir_at(tmp, &dir_name);
            Err(err)
        }
    }
}

/// Reads a length-prefixed reply, refusing more than `max_reply` bytes.
fn read_reply(
    stream: &UnixStream,
    timeout: Duration,
    max_reply: usize,
) -> std::io::Result<Vec<u8>> {
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = stream;
    let mut length = [0u8; 4];
    reader.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > max_reply {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the helper's reply announces {length} bytes, more than the {max_reply} allowed"
            ),
        ));
    }
    // Grown as the bytes come, not allocated from the announced length up front.
    let mut reply = Vec::new();
    reader.take(length as u64).read_to_end(&mut reply)?;
    if reply.len() < length {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!(
                "the helper's reply ended after {} of {length} bytes",
                reply.len()
            ),
        ));
    }
    Ok(reply)
}

fn peer_pid(stream: &UnixStream) -> Option<i32> {
    let mut credentials = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most len bytes into credentials.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut credentials as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(credentials.pid)
}

/// Private directories are named `pymemtrace-<tool pid>-<random>`.
const DIR_PREFIX: &str = "pymemtrace-";

/// Removes the private directories of earlier runs that were killed before they could clean up
/// (a killed tool cannot; its helper removes the directory when it runs, but a run killed before
/// queuing one leaves it). Only directories whose tool PID is gone, only the names the tool
/// creates in them, never following a link, and as the target's user (called from
/// [`make_private_socket`]): the directories of another user's targets are left to their runs.
fn remove_stale(tmp: &OwnedFd) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/self/fd/{}", tmp.as_raw_fd())) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((pid, suffix)) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split_once('-'))
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<i32>() else {
            continue;
        };
        let ours = suffix.len() == 16 && suffix.bytes().all(|b| b.is_ascii_hexdigit());
        // SAFETY: kill with signal 0 only checks that the process exists.
        let gone = pid > 0
            && unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if ours && gone {
            if let Ok(dir) = open_dir_at(tmp.as_raw_fd(), &name) {
                remove_contents(&dir);
                remove_dir_at(tmp, &name);
            }
        }
    }
}

/// The names the tool itself creates in the private directory: the socket and a PEP 768 script.
pub const SCRIPT_NAME: &str = "helper.py";

fn remove_contents(dir: &OwnedFd) {
    for name in ["s", SCRIPT_NAME] {
        let name = CString::new(name).expect("no NUL");
        // SAFETY: unlinkat of a name in our own directory.
        unsafe {
            libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0);
        }
    }
}

fn remove_dir_at(tmp: &OwnedFd, name: &str) {
    let c_name = CString::new(name).expect("no NUL");
    // SAFETY: unlinkat of our directory's name in /tmp (AT_REMOVEDIR: only an empty directory).
    unsafe {
        libc::unlinkat(tmp.as_raw_fd(), c_name.as_ptr(), libc::AT_REMOVEDIR);
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // As the target's user, like everything else here. Should even that fail, the helper
        // (when it runs) or the next run's sweep removes the directory.
        let _ = self.user.run(|| {
            remove_contents(&self.dir);
            remove_dir_at(&self.tmp, &self.dir_name);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::Path;

    /// A PID that existed and is gone: a child that ran `true` and was reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// Removes what a test planted in /tmp, even when an assertion fails first: a leftover
    /// `pymemtrace-<pid>-<hex>` would fail the integration tests' leftover checks.
    struct Planted(Vec<std::path::PathBuf>);

    impl Drop for Planted {
        fn drop(&mut self) {
            for path in &self.0 {
                let _ = std::fs::remove_dir_all(path).or_else(|_| std::fs::remove_file(path));
            }
        }
    }

    fn root() -> TargetUser {
        TargetUser {
            uid: 0,
            gid: 0,
            groups: vec![0],
        }
    }

    fn own_channel() -> Channel {
        // Root's own process as the "target": its /tmp is ours.
        Channel::open(std::process::id() as i32, &root()).expect("a channel in our own /tmp")
    }

    /// Names the stale sweep might take for a killed run's directory, planted by a target's user:
    /// a link to a directory, a plain file, and a directory whose `s` links to a file of root's
    /// and which holds a file of its own. Nothing planted is followed, emptied or overwritten.
    #[test]
    fn the_stale_sweep_never_follows_or_removes_what_it_did_not_make() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: the channel cannot be made for uid 0; skipped");
            return;
        }
        let dead = dead_pid();
        let tmp = Path::new("/tmp");
        let victim = tmp.join(format!("pymemtrace-test-victim-{}", random_suffix()));
        std::fs::create_dir(&victim).unwrap();
        for name in ["s", SCRIPT_NAME, "precious"] {
            std::fs::write(victim.join(name), "root's own\n").unwrap();
        }
        let link = tmp.join(format!("{DIR_PREFIX}{dead}-{}", random_suffix()));
        symlink(&victim, &link).unwrap();
        let file = tmp.join(format!("{DIR_PREFIX}{dead}-{}", random_suffix()));
        std::fs::write(&file, "a plain file\n").unwrap();
        let planted_dir = tmp.join(format!("{DIR_PREFIX}{dead}-{}", random_suffix()));
        std::fs::create_dir(&planted_dir).unwrap();
        symlink(victim.join("precious"), planted_dir.join("s")).unwrap();
        std::fs::write(planted_dir.join("theirs"), "kept\n").unwrap();
        let _cleanup = Planted(vec![
            victim.clone(),
            link.clone(),
            file.clone(),
            planted_dir.clone(),
        ]);

        drop(own_channel());

        let survived = |p: &Path| std::fs::read_to_string(p).ok();
        for name in ["s", SCRIPT_NAME, "precious"] {
            assert_eq!(
                survived(&victim.join(name)).as_deref(),
                Some("root's own\n"),
                "{name} behind the planted link was touched"
            );
        }
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(survived(&file).as_deref(), Some("a plain file\n"));
        // Our own names go (only the link itself, never what it points to); theirs stay.
        assert!(planted_dir.join("s").symlink_metadata().is_err());
        assert_eq!(
            survived(&planted_dir.join("theirs")).as_deref(),
            Some("kept\n")
        );
    }

    /// A PEP 768 script name already taken in the private directory (a link to root's file, or a
    /// file of the target user's) makes the write fail; neither is followed or overwritten.
    #[test]
    fn a_planted_script_name_is_refused_not_followed() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: the channel cannot be made for uid 0; skipped");
            return;
        }
        let victim = std::env::temp_dir().join(format!("pymemtrace-test-file-{}", random_suffix()));
        std::fs::write(&victim, "root's own\n").unwrap();
        let _cleanup = Planted(vec![victim.clone()]);
        for plant_link in [true, false] {
            let channel = own_channel();
            let planted = Path::new(&channel.target_dir).join(SCRIPT_NAME);
            if plant_link {
                symlink(&victim, &planted).unwrap();
            } else {
                std::fs::write(&planted, "theirs\n").unwrap();
            }
            let written = channel.write_file(SCRIPT_NAME, b"print('ours')\n");
            assert!(
                written.is_err(),
                "the planted {SCRIPT_NAME} was overwritten"
            );
            assert_eq!(std::fs::read_to_string(&victim).unwrap(), "root's own\n");
            if !plant_link {
                assert_eq!(std::fs::read_to_string(&planted).unwrap(), "theirs\n");
            }
            let dir = channel.target_dir.clone();
            drop(channel);
            assert!(!Path::new(&dir).exists(), "{dir} was left behind");
        }
    }

    /// A reply that announces more than allowed is refused from its 4-byte header, before any
    /// buffer of that size is made; one cut short fails instead of waiting for ever.
    #[test]
    fn replies_are_bounded_in_size_and_time() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut writer = &theirs;
        std::io::Write::write_all(&mut writer, &u32::MAX.to_be_bytes()).unwrap();
        let err = read_reply(&ours, Duration::from_secs(1), 1 << 20).unwrap_err();
        assert!(
            err.to_string().contains("more than the 1048576 allowed"),
            "{err}"
        );

        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut writer = &theirs;
        std::io::Write::write_all(&mut writer, &10u32.to_be_bytes()).unwrap();
        std::io::Write::write_all(&mut writer, b"four").unwrap();
        let started = Instant::now();
        assert!(read_reply(&ours, Duration::from_millis(200), 1 << 20).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));

        let (ours, theirs) = UnixStream::pair().unwrap();
        let mut writer = &theirs;
        std::io::Write::write_all(&mut writer, &4u32.to_be_bytes()).unwrap();
        std::io::Write::write_all(&mut writer, b"four").unwrap();
        assert_eq!(
            read_reply(&ours, Duration::from_secs(1), 4).unwrap(),
            b"four"
        );
    }
}
