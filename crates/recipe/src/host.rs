//! What a recipe reads from a host: files, directory listings, installed packages. The
//! local host reads its own filesystem (a remote host would be read through the same trait).

use std::collections::BTreeMap;
use std::io::{self, Read as _};
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::dpkg::{self, InstalledPackage};

/// Read-only access to the host being exported from.
pub trait HostView {
    /// The text of a file, or `None` if it does not exist.
    fn read_text(&self, path: &Path) -> io::Result<Option<String>>;
    /// The names in a directory, or `None` if it does not exist.
    fn list_dir(&self, path: &Path) -> io::Result<Option<Vec<String>>>;
    /// Installed packages by name (dpkg's view).
    fn packages(&self) -> io::Result<BTreeMap<String, InstalledPackage>>;
    /// The first symlink met on the way to `path` (`path` itself included), if any.
    fn link_on_the_way(&self, path: &Path) -> io::Result<Option<PathBuf>>;
}

/// Largest file a recipe reads to extract a value: config files, not data.
pub const MAX_VALUE_FILE: u64 = 4 << 20;

/// This machine.
#[derive(Debug, Default)]
pub struct LocalHost {
    packages: std::sync::OnceLock<BTreeMap<String, InstalledPackage>>,
}

impl LocalHost {
    pub fn new() -> Self {
        Self::default()
    }
}

impl HostView for LocalHost {
    fn read_text(&self, path: &Path) -> io::Result<Option<String>> {
        read_config(path, |real| {
            crate::paths::check_allowed(&real.to_string_lossy())
        })
    }

    fn list_dir(&self, path: &Path) -> io::Result<Option<Vec<String>>> {
        let entries = match fs_err::read_dir(path) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            if let Ok(name) = entry?.file_name().into_string() {
                names.push(name);
            }
        }
        names.sort();
        Ok(Some(names))
    }

    fn packages(&self) -> io::Result<BTreeMap<String, InstalledPackage>> {
        if let Some(p) = self.packages.get() {
            return Ok(p.clone());
        }
        let status = match fs_err::read_to_string(dpkg::STATUS_FILE) {
            Ok(s) => s,
            // Not a Debian system: no packages are known installed.
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let parsed = dpkg::installed(&status);
        Ok(self.packages.get_or_init(|| parsed).clone())
    }

    fn link_on_the_way(&self, path: &Path) -> io::Result<Option<PathBuf>> {
        for step in path.ancestors().collect::<Vec<_>>().into_iter().rev() {
            match fs_err::symlink_metadata(step) {
                Ok(meta) if meta.file_type().is_symlink() => return Ok(Some(step.to_owned())),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}

/// Reads a config file for its values. What is checked is what is read: the file is
/// located without being opened (`O_PATH`: opening a device can have effects), its real
/// path is judged by `allowed` and its type and size checked, and only then is that same
/// inode opened and read, at most up to the cap. So a link swapped in after the check cannot
/// lead the read elsewhere, a FIFO cannot hang it, and a file that grows cannot exceed the cap.
fn read_config(
    path: &Path,
    allowed: impl Fn(&Path) -> Result<(), String>,
) -> io::Result<Option<String>> {
    let named = |e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    let located = match rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => return Ok(None),
        Err(e) => return Err(named(e.into())),
    };
    let stat = rustix::fs::fstat(&located).map_err(|e| named(e.into()))?;
    let fd_path = format!("/proc/self/fd/{}", located.as_raw_fd());
    let real = fs_err::read_link(&fd_path)?;
    if let Err(reason) = allowed(&real) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} leads to {}, which {reason}",
                path.display(),
                real.display()
            ),
        ));
    }
    match FileType::from_raw_mode(stat.st_mode) {
        FileType::RegularFile => {}
        FileType::Directory => {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", path.display()),
            ))
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a regular file but a {other:?}", path.display()),
            ))
        }
    }
    let too_big = |len: u64| {
        io::Error::other(format!(
            "{}: {len} bytes or more, more than a config file may have ({MAX_VALUE_FILE})",
            path.display()
        ))
    };
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if size > MAX_VALUE_FILE {
        return Err(too_big(size));
    }
    // Opening the descriptor's /proc entry opens the inode it holds, not the path again.
    let opened = rustix::fs::open(&fd_path, OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| named(e.into()))?;
    let file = std::fs::File::from(opened);
    let mut bytes = Vec::new();
    file.take(MAX_VALUE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(named)?;
    if bytes.len() as u64 > MAX_VALUE_FILE {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// The files in `dir` whose name matches `pattern`, a glob without `/`.
pub fn glob_in(host: &dyn HostView, dir: &Path, pattern: &str) -> io::Result<Vec<PathBuf>> {
    let matcher = globset::Glob::new(pattern)
        .map_err(|e| io::Error::other(format!("bad glob {pattern:?}: {e}")))?
        .compile_matcher();
    Ok(host
        .list_dir(dir)?
        .unwrap_or_default()
        .into_iter()
        .filter(|name| matcher.is_match(name))
        .map(|name| dir.join(name))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    /// Reads `path` on another thread, allowing only paths under `root`, so that a read that
    /// hangs fails the test instead of stalling it.
    fn read_under(root: &Path, path: PathBuf) -> io::Result<Option<String>> {
        let root = root.to_owned();
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let read = read_config(&path, |real| {
                real.starts_with(&root)
                    .then_some(())
                    .ok_or_else(|| format!("is outside {}", root.display()))
            });
            let _ = sender.send(read);
        });
        receiver
            .recv_timeout(Duration::from_secs(10))
            .expect("the read returned within 10 s")
    }

    #[test]
    fn a_config_file_is_read_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("wp-config.php");
        fs_err::write(&file, "define('DB_NAME', 'blog');\n").unwrap();
        fs_err::os::unix::fs::symlink(&file, dir.path().join("link.php")).unwrap();
        let read = |name: &str| read_under(dir.path(), dir.path().join(name)).unwrap();
        assert_eq!(
            read("wp-config.php").unwrap(),
            "define('DB_NAME', 'blog');\n"
        );
        assert_eq!(read("link.php").unwrap(), "define('DB_NAME', 'blog');\n");
        assert_eq!(read("missing.php"), None);
        fs_err::os::unix::fs::symlink("nowhere", dir.path().join("dangling.php")).unwrap();
        assert_eq!(read("dangling.php"), None);
    }

    #[test]
    fn a_link_out_of_the_allowed_roots_is_refused() {
        let allowed = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let secret = elsewhere.path().join("secret");
        fs_err::write(&secret, "root's own").unwrap();
        let link = allowed.path().join("config.php");
        fs_err::os::unix::fs::symlink(&secret, &link).unwrap();
        let error = read_under(allowed.path(), link).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::PermissionDenied);
        let message = error.to_string();
        assert!(
            message.contains("leads to") && message.contains(&*secret.to_string_lossy()),
            "{message}"
        );
    }

    #[test]
    fn a_fifo_a_directory_or_an_oversized_file_is_refused_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.php");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let error = read_under(dir.path(), fifo).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{error}");
        assert!(error.to_string().contains("not a regular file"), "{error}");

        let error = read_under(dir.path(), dir.path().to_owned()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::IsADirectory, "{error}");

        let big = dir.path().join("big.php");
        fs_err::File::create(&big)
            .unwrap()
            .set_len(MAX_VALUE_FILE + 1)
            .unwrap();
        let error = read_under(dir.path(), big).unwrap_err();
        assert!(
            error.to_string().contains("more than a config file"),
            "{error}"
        );
    }
}
