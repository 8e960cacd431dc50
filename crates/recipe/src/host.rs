//! What a recipe reads from a host: files, directory listings, installed packages. The
//! local host reads its own filesystem (a remote host would be read through the same trait).

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::dpkg::{self, InstalledPackage};

/// Read-only access to the host being exported from.
pub trait HostView {
    /// The text of a file, or `None` if it does not exist.
    fn read_text(&self, path: &Path) -> io::Result<Option<String>>;
    /// The names in a directory, or `None` if it does not exist.
    fn list_dir(&self, path: &Path) -> io::Result<Option<Vec<String>>>;
    /// Installed packages by name (dpkg's view).
    fn packages(&self) -> io::Result<BTreeMap<String, InstalledPackage>>;
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
        let meta = match fs_err::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if meta.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{} is a directory", path.display()),
            ));
        }
        // The path was checked as text; a symlink must not lead the read elsewhere.
        let real = fs_err::canonicalize(path)?;
        if let Err(reason) = crate::paths::check_allowed(&real.to_string_lossy()) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} leads to {}, which {reason}",
                    path.display(),
                    real.display()
                ),
            ));
        }
        if meta.len() > MAX_VALUE_FILE {
            return Err(io::Error::other(format!(
                "{}: {} bytes, more than a config file may have ({MAX_VALUE_FILE})",
                path.display(),
                meta.len()
            )));
        }
        let bytes = fs_err::read(path)?;
        Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
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
