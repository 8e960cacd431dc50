//! What the destination's filesystem can hold, found before the first entry is written.
//!
//! Without this, a tree with extended attributes imported into a filesystem that has none
//! (ramfs, NFSv3, many FUSE mounts), or with owners into one where root cannot give files
//! away (NFS with `root_squash`, a rootless container), fails at its first such entry with
//! a bare "Operation not supported", possibly after gigabytes were written. The probe
//! tries each feature the tree needs on scratch entries in the empty staging directory
//! (the same filesystem, the same mount options), and lists everything missing at once.

use std::fmt;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::fs::{Mode, OFlags, XattrFlags};
use rustix::io::Errno;

use crate::leftovers;

/// What a tree asks of the filesystem: counted in the first pass over a bundle's index, or
/// over a staged tree before it is copied to another filesystem.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TreeNeeds {
    pub symlinks: u64,
    pub hardlinks: u64,
    /// Entries with `user.*` extended attributes.
    pub xattrs: u64,
}

/// A feature the tree needs and the destination's filesystem refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lack {
    Symlinks {
        entries: u64,
    },
    Hardlinks {
        entries: u64,
    },
    UserXattrs {
        entries: u64,
    },
    /// Root here cannot give files to these owners and groups of the tree's entries.
    Owners {
        names: Vec<String>,
    },
}

/// An owner or group that entries of the tree get, by name (or `#ID`) and id here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerId {
    pub name: String,
    pub group: bool,
    pub id: u32,
}

impl fmt::Display for Lack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Symlinks { entries } => write!(f, "symbolic links ({entries} in the tree)"),
            Self::Hardlinks { entries } => write!(f, "hard links ({entries} in the tree)"),
            Self::UserXattrs { entries } => write!(
                f,
                "user.* extended attributes ({entries} {} in the tree {} some)",
                if *entries == 1 { "entry" } else { "entries" },
                if *entries == 1 { "has" } else { "have" },
            ),
            Self::Owners { names } => write!(
                f,
                "giving files to {}, even as root (as under NFS root_squash, or in a user \
                 namespace that does not map them)",
                names.join(", ")
            ),
        }
    }
}

/// Names the probe's scratch entries take in the empty staging directory, removed before
/// the tree's own entries are created there.
const FILE: &str = ".baluchon-probe";
const LINK: &str = ".baluchon-probe-link";

/// Tries, in the empty directory `dir`, each feature of `needs` and giving a file to each
/// of `owners`, and returns what the filesystem refused.
pub(crate) fn lacking(
    dir: BorrowedFd<'_>,
    needs: &TreeNeeds,
    owners: &[OwnerId],
) -> Result<Vec<Lack>, Errno> {
    let file = rustix::fs::openat(
        dir,
        FILE,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let result = (|| {
        let mut lacking = Vec::new();
        if needs.xattrs > 0
            && refused(rustix::fs::fsetxattr(
                file.as_fd(),
                "user.baluchon-probe",
                b"1",
                XattrFlags::CREATE,
            ))?
        {
            lacking.push(Lack::UserXattrs {
                entries: needs.xattrs,
            });
        }
        if needs.hardlinks > 0 {
            let linked = rustix::fs::linkat(dir, FILE, dir, LINK, rustix::fs::AtFlags::empty());
            if refused(linked)? {
                lacking.push(Lack::Hardlinks {
                    entries: needs.hardlinks,
                });
            } else {
                rustix::fs::unlinkat(dir, LINK, rustix::fs::AtFlags::empty())?;
            }
        }
        if needs.symlinks > 0 {
            let linked = rustix::fs::symlinkat(FILE, dir, LINK);
            if refused(linked)? {
                lacking.push(Lack::Symlinks {
                    entries: needs.symlinks,
                });
            } else {
                rustix::fs::unlinkat(dir, LINK, rustix::fs::AtFlags::empty())?;
            }
        }
        // Each id on its own: a user namespace may map some and not others, and under
        // root_squash even root's id is refused (files are created as nobody's).
        let mut refused_names = Vec::new();
        for owner in owners {
            let (uid, gid) = if owner.group {
                (None, Some(rustix::fs::Gid::from_raw(owner.id)))
            } else {
                (Some(rustix::fs::Uid::from_raw(owner.id)), None)
            };
            if refused(rustix::fs::fchown(file.as_fd(), uid, gid))? {
                refused_names.push(owner.name.clone());
            }
        }
        refused_names.sort();
        refused_names.dedup();
        if !refused_names.is_empty() {
            lacking.push(Lack::Owners {
                names: refused_names,
            });
        }
        Ok(lacking)
    })();
    drop(file);
    let removed = rustix::fs::unlinkat(dir, FILE, rustix::fs::AtFlags::empty());
    let lacking = result?;
    removed?;
    Ok(lacking)
}

/// What the filesystem holding the existing directory `dir` refuses of `needs` and
/// `owners`, tried in a scratch directory made there and removed again. Its lock file lets
/// the next probe there remove it if this process is killed meanwhile. `dir`'s times are
/// put back where the filesystem allows, so that a probe leaves no trace but its ctime.
pub fn probe_directory(
    dir: &Path,
    needs: &TreeNeeds,
    owners: &[OwnerId],
) -> std::io::Result<Vec<Lack>> {
    const PREFIX: &str = ".baluchon-probe.";
    // Before anything reads the directory, which moves its atime.
    let times = fs_err::metadata(dir)?;
    leftovers::remove_abandoned(dir, PREFIX, "");
    let named = |e: std::io::Error, path: &Path| {
        std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
    };
    let scratch = tempfile::Builder::new()
        .prefix(PREFIX)
        .tempdir_in(dir)
        .map_err(|e| named(e, dir))?;
    let lacking = (|| {
        let lock = fs_err::File::create_new(scratch.path().join(leftovers::DIR_LOCK))?;
        // Best effort too (NFS may lack flock): a probe lasts far less than the grace
        // period in which another run leaves an unlocked directory alone.
        let _ = leftovers::hold(&lock);
        let handle = fs_err::File::open(scratch.path())?;
        lacking(handle.as_fd(), needs, owners).map_err(|e| named(e.into(), scratch.path()))
    })();
    let removed = scratch.close().map_err(|e| named(e, dir));
    use std::os::unix::fs::MetadataExt as _;
    let at = |sec, nsec| rustix::fs::Timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    // Best effort: where only the owner may set times (NFS with root_squash), the apply
    // would still work, so this is no reason to refuse it.
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        dir,
        &rustix::fs::Timestamps {
            last_access: at(times.atime(), times.atime_nsec()),
            last_modification: at(times.mtime(), times.mtime_nsec()),
        },
        rustix::fs::AtFlags::empty(),
    );
    let lacking = lacking?;
    removed?;
    Ok(lacking)
}

/// Whether an operation failed because the filesystem does not do it (as opposed to
/// failing for a reason that stops the import anyway, such as a full disk).
fn refused(result: Result<(), Errno>) -> Result<bool, Errno> {
    match result {
        Ok(()) => Ok(false),
        // EPERM: no links on FAT, no chown under root_squash; EINVAL: an id this user
        // namespace does not map, EOVERFLOW: one the filesystem's mount does not map;
        // ENOTSUP (EOPNOTSUPP on Linux): no xattrs (ramfs, NFSv3).
        Err(Errno::NOTSUP | Errno::PERM | Errno::INVAL | Errno::OVERFLOW | Errno::NOSYS) => {
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe_dir() -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        let handle = fs_err::File::open(dir.path()).unwrap().into_parts().0;
        (dir, handle)
    }

    /// On a filesystem that has everything (the test's temporary directory), nothing is
    /// missing and the probe leaves the directory empty.
    #[test]
    fn a_complete_filesystem_lacks_nothing_and_the_probe_leaves_no_trace() {
        let (dir, handle) = probe_dir();
        let needs = TreeNeeds {
            symlinks: 2,
            hardlinks: 1,
            xattrs: 3,
        };
        // Root can give a file to anyone; anyone can give it to themselves.
        let owners = [
            OwnerId {
                name: "us".into(),
                group: false,
                id: rustix::process::geteuid().as_raw(),
            },
            OwnerId {
                name: "our group".into(),
                group: true,
                id: rustix::process::getegid().as_raw(),
            },
        ];
        let lacking = lacking(handle.as_fd(), &needs, &owners).unwrap();
        assert_eq!(lacking, Vec::new());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    /// The probe of a directory leaves it as it found it: no entry, the same times.
    #[test]
    fn probing_a_directory_leaves_no_entry_and_its_times() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(dir.path().join("kept"), "kept").unwrap();
        let past = rustix::fs::Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 123,
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            dir.path(),
            &rustix::fs::Timestamps {
                last_access: past,
                last_modification: past,
            },
            rustix::fs::AtFlags::empty(),
        )
        .unwrap();
        let needs = TreeNeeds {
            symlinks: 1,
            hardlinks: 1,
            xattrs: 1,
        };
        assert_eq!(
            probe_directory(dir.path(), &needs, &[]).unwrap(),
            Vec::new()
        );
        // Before listing it, which moves its atime.
        let meta = fs_err::metadata(dir.path()).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 123));
        assert_eq!((meta.atime(), meta.atime_nsec()), (1_000_000_000, 123));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["kept"]);
    }

    /// A probe killed midway leaves its scratch directory, unlocked: the next probe in the
    /// same directory removes it once it is older than the grace period.
    #[test]
    fn a_killed_probes_scratch_directory_is_removed_by_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join(".baluchon-probe.Ab12Cd");
        fs_err::create_dir(&left).unwrap();
        fs_err::write(left.join(leftovers::DIR_LOCK), "").unwrap();
        let old = std::time::SystemTime::now() - 2 * leftovers::GRACE;
        fs_err::File::open(&left)
            .unwrap()
            .file()
            .set_modified(old)
            .unwrap();
        assert_eq!(
            probe_directory(dir.path(), &TreeNeeds::default(), &[]).unwrap(),
            Vec::new()
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn refusals_are_told_apart_from_failures() {
        assert!(refused(Err(Errno::OPNOTSUPP)).unwrap());
        assert!(refused(Err(Errno::NOTSUP)).unwrap());
        assert!(refused(Err(Errno::PERM)).unwrap());
        assert!(refused(Err(Errno::INVAL)).unwrap());
        assert!(refused(Err(Errno::OVERFLOW)).unwrap());
        assert!(!refused(Ok(())).unwrap());
        assert_eq!(refused(Err(Errno::NOSPC)), Err(Errno::NOSPC));
        assert_eq!(refused(Err(Errno::IO)), Err(Errno::IO));
    }

    #[test]
    fn each_lack_says_what_and_how_much() {
        let owners = Lack::Owners {
            names: vec!["alice".into(), "www-data".into()],
        };
        assert_eq!(
            owners.to_string(),
            "giving files to alice, www-data, even as root (as under NFS root_squash, or in a \
             user namespace that does not map them)"
        );
        assert_eq!(
            Lack::UserXattrs { entries: 3 }.to_string(),
            "user.* extended attributes (3 entries in the tree have some)"
        );
        assert_eq!(
            Lack::UserXattrs { entries: 1 }.to_string(),
            "user.* extended attributes (1 entry in the tree has some)"
        );
    }
}
