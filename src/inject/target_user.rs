//! File operations made with the target's rights, not root's.
//!
//! The tool runs as root; the target runs as anyone, and the reply channel is made in the target's
//! own /tmp (through /proc/PID/root). Which directory that is, the target decides: one in its own
//! user and mount namespaces (`unshare --user --map-root-user --mount`, open to any user) can
//! bind-mount any directory it can see over its /tmp, a root-owned one included. Made by root, the
//! channel's directory would then be a directory of the target's user inside a directory where only
//! root may write. Checking /tmp's owner and mode beforehand would be a guess at what the kernel
//! allows (it misses ACLs, rootless containers whose /tmp belongs to a mapped uid, read-only
//! mounts...). So every entry the tool creates, changes or removes in the target's /tmp is made by
//! a short-lived thread that carries the target's filesystem uid, gid and supplementary groups:
//! the kernel then allows exactly what the target's user could have done itself, and refuses the
//! rest (EACCES), which the tool reports.
//!
//! Credentials are per thread in Linux; the C library's setgroups changes every thread of the
//! process, so the raw system calls are used, in a thread that ends with the job (its credentials
//! go with it). Giving up fsuid 0 also clears the capabilities that bypass file permissions
//! (CAP_DAC_OVERRIDE, CAP_FOWNER...) for that thread.

use std::io;

/// Whose rights the channel's file operations use: the target's filesystem ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
}

impl TargetUser {
    /// The filesystem uid and gid (4th figure of the Uid: and Gid: lines) and the supplementary
    /// groups of /proc/PID/status text.
    pub fn from_status(status: &str) -> Option<TargetUser> {
        let line = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
        let fourth = |key: &str| {
            line(key)
                .and_then(|v| v.split_whitespace().nth(3))
                .and_then(|v| v.parse::<u32>().ok())
        };
        let groups = line("Groups:")?
            .split_whitespace()
            .map(|g| g.parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()?;
        Some(TargetUser {
            uid: fourth("Uid:")?,
            gid: fourth("Gid:")?,
            groups,
        })
    }

    /// Runs `job` in a thread of its own that has taken this user's filesystem ids and groups,
    /// and returns what it returned. Fails (without running `job`) if the ids could not be taken.
    pub fn run<T: Send>(&self, job: impl FnOnce() -> T + Send) -> io::Result<T> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == self.uid {
            // The tool already is this user (root for a root target, or run as the target's own
            // user, which may not change its groups): its rights are the target's.
            return Ok(job());
        }
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.take_in_this_thread()?;
                    Ok(job())
                })
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("a file operation panicked")))
        })
    }

    /// Only for a thread that ends right after its job (see [`TargetUser::run`]).
    fn take_in_this_thread(&self) -> io::Result<()> {
        let groups: Vec<libc::gid_t> = self.groups.clone();
        // SAFETY: raw system calls on this thread's own credentials; the group list outlives the
        // call. (Not the libc wrappers: glibc's setgroups changes every thread of the process.)
        unsafe {
            if libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) != 0 {
                return Err(io::Error::last_os_error());
            }
            libc::syscall(libc::SYS_setfsgid, self.gid);
            libc::syscall(libc::SYS_setfsuid, self.uid);
            // setfsuid/setfsgid return the previous id whatever happens: ask again (-1 changes
            // nothing) to know that they took.
            let fsgid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
            let fsuid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
            if (fsuid, fsgid) != (self.uid, self.gid) {
                return Err(io::Error::other(format!(
                    "could not take uid {} gid {} for the file operations",
                    self.uid, self.gid
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_filesystem_ids_and_groups() {
        let status = "Name:\tpython3\nUid:\t1000\t1001\t1002\t1003\nGid:\t50\t51\t52\t53\n\
                      Groups:\t4 24 27 \nVmRSS:\t1 kB\n";
        assert_eq!(
            TargetUser::from_status(status),
            Some(TargetUser {
                uid: 1003,
                gid: 53,
                groups: vec![4, 24, 27]
            })
        );
        let no_groups =
            "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\n";
        assert!(TargetUser::from_status(no_groups)
            .unwrap()
            .groups
            .is_empty());
        assert_eq!(
            TargetUser::from_status("Uid:\t1 1 1 1\nGid:\t1 1 1 1\n"),
            None
        );
        assert_eq!(
            TargetUser::from_status("Uid:\t1 1\nGid:\t1 1 1 1\nGroups:\n"),
            None
        );
    }

    /// The job runs with the user's rights (a root-only directory refuses it), and the tool's
    /// own threads keep theirs.
    #[test]
    fn the_job_has_the_users_rights_and_no_more() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: cannot take another user's ids; skipped");
            return;
        }
        let private = tempfile::tempdir().unwrap();
        std::fs::set_permissions(
            private.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let nobody = TargetUser {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let made = nobody
            .run(|| std::fs::create_dir(private.path().join("theirs")))
            .unwrap();
        assert_eq!(made.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        let in_tmp =
            std::env::temp_dir().join(format!("pymemtrace-test-as-{}", std::process::id()));
        nobody
            .run(|| std::fs::create_dir(&in_tmp))
            .unwrap()
            .unwrap();
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&in_tmp).unwrap());
        std::fs::remove_dir(&in_tmp).unwrap();
        assert_eq!(owner, 65534);
        // This thread is still root.
        std::fs::create_dir(private.path().join("ours")).unwrap();
    }
}
