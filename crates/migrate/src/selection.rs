//! Which entries of the host's tree an app bundle holds: the recipe's file sets, minus
//! their exclusions and the unmodified files that packages installed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use baluchon_bundle::{EntryPath, Select, Selection};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use md5::{Digest, Md5};

use crate::error::CaptureError;

/// One file set, as the walker sees it: a path relative to `/`.
#[derive(Debug)]
struct SetRoot {
    rel: Vec<u8>,
    exclude: GlobSet,
    patterns: Vec<String>,
    skip_package_files: bool,
}

/// The file sets of one instance, as a [`Selection`] over `/`.
#[derive(Debug)]
pub struct AppSelection {
    roots: Vec<SetRoot>,
    /// Files installed by the code packages: relative path → (package, md5 hex).
    package_files: BTreeMap<Vec<u8>, (String, String)>,
    /// Entries archived per set (the deepest set containing each entry).
    counts: RefCell<Vec<u64>>,
    /// Relative path → the content archived instead of the file's (secrets left out).
    replacements: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl AppSelection {
    /// `sets`: absolute path, exclude globs, skip_package_files.
    pub fn new(
        sets: &[(&Path, &[String], bool)],
        package_files: BTreeMap<Vec<u8>, (String, String)>,
    ) -> Result<Self, CaptureError> {
        let mut roots = Vec::new();
        for (path, exclude, skip_package_files) in sets {
            let mut builder = GlobSetBuilder::new();
            for pattern in *exclude {
                let glob = GlobBuilder::new(pattern)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| std::io::Error::other(format!("exclude {pattern:?}: {e}")))?;
                builder.add(glob);
            }
            let rel = path.as_os_str().as_bytes();
            roots.push(SetRoot {
                rel: rel.strip_prefix(b"/").unwrap_or(rel).to_vec(),
                exclude: builder
                    .build()
                    .map_err(|e| std::io::Error::other(e.to_string()))?,
                patterns: exclude.to_vec(),
                skip_package_files: *skip_package_files,
            });
        }
        let counts = RefCell::new(vec![0; roots.len()]);
        Ok(Self {
            roots,
            package_files,
            counts,
            replacements: BTreeMap::new(),
        })
    }

    /// Archives `content` instead of the file at each absolute path.
    pub fn replace(&mut self, files: BTreeMap<std::path::PathBuf, Vec<u8>>) {
        for (path, content) in files {
            let bytes = path.as_os_str().as_bytes();
            let rel = bytes.strip_prefix(b"/").unwrap_or(bytes).to_vec();
            self.replacements.insert(rel, content);
        }
    }

    /// The deepest set that contains `path` (relative to `/`).
    pub fn set_of(&self, path: &[u8]) -> Option<usize> {
        self.roots
            .iter()
            .enumerate()
            .filter(|(_, root)| below(path, &root.rel).is_some())
            .max_by_key(|(_, root)| root.rel.len())
            .map(|(i, _)| i)
    }

    /// Entries archived under each set, in the order the sets were given.
    pub fn counts(&self) -> Vec<u64> {
        self.counts.borrow().clone()
    }
}

/// `path` relative to `base` if it is `base` or below it.
fn below<'p>(path: &'p [u8], base: &[u8]) -> Option<&'p [u8]> {
    let rest = path.strip_prefix(base)?;
    if rest.is_empty() {
        Some(rest)
    } else {
        rest.strip_prefix(b"/")
    }
}

impl Selection for AppSelection {
    fn replacement(&self, path: &EntryPath) -> Option<Vec<u8>> {
        self.replacements.get(path.as_bytes()).cloned()
    }

    fn replaced_paths(&self) -> Vec<EntryPath> {
        self.replacements
            .keys()
            .filter_map(|p| EntryPath::new(p.clone()).ok())
            .collect()
    }

    fn select(&self, path: &EntryPath, is_dir: bool) -> Select {
        let bytes = path.as_bytes();
        let mut deepest: Option<usize> = None;
        let mut skip_package_files = false;
        for (i, root) in self.roots.iter().enumerate() {
            let Some(rel) = below(bytes, &root.rel) else {
                continue;
            };
            if !rel.is_empty() {
                let rel_path = Path::new(std::ffi::OsStr::from_bytes(rel));
                if let Some(&i) = root.exclude.matches(rel_path).first() {
                    return Select::Exclude(format!(
                        "excluded by the recipe ({:?} in /{})",
                        root.patterns[i],
                        String::from_utf8_lossy(&root.rel)
                    ));
                }
            }
            skip_package_files |= root.skip_package_files;
            if deepest.is_none_or(|d| self.roots[d].rel.len() < root.rel.len()) {
                deepest = Some(i);
            }
        }
        if let Some(set) = deepest {
            if skip_package_files && !is_dir {
                if let Some((package, md5)) = self.package_files.get(bytes) {
                    if file_md5(bytes).is_some_and(|actual| &actual == md5) {
                        return Select::Exclude(format!("unmodified file of package {package}"));
                    }
                }
            }
            self.counts.borrow_mut()[set] += 1;
            return Select::Archive;
        }
        // A directory on the way to a set: archived (with its own metadata) so the tree
        // extracts as it was, but only the selected part of it is descended into.
        let on_the_way = self.roots.iter().any(|root| {
            root.rel.len() > bytes.len()
                && root.rel.starts_with(bytes)
                && root.rel[bytes.len()] == b'/'
        });
        if on_the_way && is_dir {
            Select::Archive
        } else {
            Select::Omit
        }
    }
}

/// The md5 of a file given relative to `/`; `None` if it cannot be read (it is then
/// archived, and the archiver reports any real read error).
fn file_md5(rel: &[u8]) -> Option<String> {
    let mut abs = b"/".to_vec();
    abs.extend_from_slice(rel);
    // Never through a link (on the way either: the walk does not follow one, so a
    // directory swapped for a link would have another file hashed than the one archived),
    // never blocking on a FIFO: only a regular file is hashed.
    let fd = rustix::fs::openat2(
        rustix::fs::CWD,
        std::ffi::OsStr::from_bytes(&abs),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
        rustix::fs::ResolveFlags::NO_SYMLINKS,
    )
    .ok()?;
    if !rustix::fs::FileType::from_raw_mode(rustix::fs::fstat(&fd).ok()?.st_mode).is_file() {
        return None;
    }
    let mut file = std::fs::File::from(fd);
    let mut hasher = Md5::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Some(
        hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// Files the given packages installed, from dpkg's md5sums lists.
pub fn package_files(
    packages: &[String],
    info_dir: &Path,
) -> Result<BTreeMap<Vec<u8>, (String, String)>, CaptureError> {
    let mut files = BTreeMap::new();
    for package in packages {
        let candidates = fs_err::read_dir(info_dir)?
            .filter_map(Result::ok)
            .map(|e| e.file_name())
            .filter(|n| {
                let n = n.as_bytes();
                n == format!("{package}.md5sums").as_bytes()
                    || (n.starts_with(format!("{package}:").as_bytes()) && n.ends_with(b".md5sums"))
            })
            .collect::<Vec<_>>();
        for name in candidates {
            let path = info_dir.join(name);
            let text = fs_err::read(&path)?;
            for line in text.split(|&b| b == b'\n') {
                // "<32 hex>  <path without leading slash>"
                if line.len() > 34 && &line[32..34] == b"  " {
                    let md5 = String::from_utf8_lossy(&line[..32]).into_owned();
                    files.insert(line[34..].to_vec(), (package.clone(), md5));
                }
            }
        }
    }
    Ok(files)
}
