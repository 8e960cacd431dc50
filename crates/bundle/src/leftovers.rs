//! Temporary files and directories that an export killed midway left beside its output,
//! found and removed by the next export into the same directory.
//!
//! Each export holds an advisory `flock` on its temporary file (or on a `lock` file in its
//! temporary directory) for as long as it runs. The kernel releases it when the process
//! ends, however it ends, so a temporary entry that nobody holds a lock on belongs to a
//! dead export. Entries younger than [`GRACE`] are left alone: another export may have just
//! created one and not locked it yet.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rustix::fs::FlockOperation;

/// How old an unlocked temporary entry must be before it is taken for abandoned.
pub const GRACE: Duration = Duration::from_secs(60);

/// The name of the lock file inside a temporary directory.
pub const DIR_LOCK: &str = "lock";

/// How many random characters `tempfile` puts in a name (its default).
const RANDOM_LEN: usize = 6;

/// Takes the lock that marks `file` as in use by this process (held until it is closed).
pub fn hold(file: impl std::os::fd::AsFd) -> io::Result<()> {
    rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive).map_err(io::Error::from)
}

/// Removes the entries of `dir` named `prefix`, six random letters or digits, `suffix` (as
/// `tempfile` names them) that no live process holds: regular
/// files locked themselves, directories through their [`DIR_LOCK`] file. Returns what was
/// removed. Anything else by that name (a link, a directory without a lock file, an entry
/// in use or too recent) is left as it is.
///
/// Best effort: an entry that cannot be read or removed is left, and so is everything if
/// `dir` cannot be listed. Other runs finish and remove their own entries meanwhile, and
/// cleaning up after a dead one must never fail a live one.
pub fn remove_abandoned(dir: &Path, prefix: &str, suffix: &str) -> Vec<PathBuf> {
    let Ok(entries) = fs_err::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        // The random middle that `tempfile` puts between them: anything else by a similar
        // name is not ours to remove.
        let ours = name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(suffix))
            .is_some_and(|middle| {
                middle.len() == RANDOM_LEN && middle.bytes().all(|b| b.is_ascii_alphanumeric())
            });
        if !ours {
            continue;
        }
        let path = entry.path();
        let Ok(meta) = fs_err::symlink_metadata(&path) else {
            continue;
        };
        let recent = meta
            .modified()
            .ok()
            .and_then(|m| SystemTime::now().duration_since(m).ok())
            .is_none_or(|age| age < GRACE);
        if recent {
            continue;
        }
        let lock_path = if meta.is_file() {
            path.clone()
        } else if meta.is_dir() {
            path.join(DIR_LOCK)
        } else {
            continue;
        };
        let Ok(lock) = open_no_follow(&lock_path) else {
            continue;
        };
        if hold(&lock).is_err() {
            continue; // a live export's
        }
        let gone = if meta.is_dir() {
            fs_err::remove_dir_all(&path)
        } else {
            fs_err::remove_file(&path)
        };
        if gone.is_ok() {
            removed.push(path);
        }
    }
    removed
}

fn open_no_follow(path: &Path) -> io::Result<std::fs::File> {
    use rustix::fs::{Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    let file = std::fs::File::from(rustix::fs::open(path, flags, Mode::empty())?);
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `path`'s modification time `secs` seconds back.
    fn age(path: &Path, secs: u64) {
        let then = SystemTime::now() - Duration::from_secs(secs);
        fs_err::File::options()
            .write(true)
            .open(path)
            .or_else(|_| fs_err::File::open(path))
            .unwrap()
            .set_modified(then)
            .unwrap();
    }

    #[test]
    fn only_unlocked_old_entries_by_that_name_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let at = |name: &str| dir.path().join(name);
        for name in [
            ".b.AAAAA1.partial",
            ".b.AAAAA2.partial",
            ".b.AAAAA3.partial",
            "b.partial",
            ".c.AAAAA4.partial",
            ".b.notes.partial",
        ] {
            fs_err::write(at(name), b"half a bundle").unwrap();
            age(&at(name), 3600);
        }
        // A live export's file, and one created a moment ago.
        let live = fs_err::File::open(at(".b.AAAAA2.partial")).unwrap();
        hold(live.file()).unwrap();
        fs_err::write(at(".b.AAAAA3.partial"), b"just created").unwrap();
        // A link by that name is not followed, nor removed.
        std::os::unix::fs::symlink(at(".c.AAAAA4.partial"), at(".b.AAAAA5.partial")).unwrap();
        // A directory: abandoned with its lock file, kept without one.
        for name in [".s.AAAAA1.dir", ".s.AAAAA2.dir"] {
            fs_err::create_dir(at(name)).unwrap();
            fs_err::write(at(name).join("inner.baluchon"), b"clear text").unwrap();
        }
        fs_err::write(at(".s.AAAAA1.dir").join(DIR_LOCK), b"").unwrap();
        for name in [".s.AAAAA1.dir", ".s.AAAAA2.dir"] {
            age(&at(name), 3600);
        }

        let removed = remove_abandoned(dir.path(), ".b.", ".partial");
        assert_eq!(removed, [at(".b.AAAAA1.partial")]);
        for kept in [
            ".b.AAAAA2.partial",
            ".b.AAAAA3.partial",
            "b.partial",
            ".c.AAAAA4.partial",
            ".b.AAAAA5.partial",
            // Not a name `tempfile` makes.
            ".b.notes.partial",
        ] {
            assert!(at(kept).symlink_metadata().is_ok(), "{kept}");
        }
        let removed = remove_abandoned(dir.path(), ".s.", ".dir");
        assert_eq!(removed, [at(".s.AAAAA1.dir")]);
        assert!(at(".s.AAAAA2.dir").exists());
    }
}
