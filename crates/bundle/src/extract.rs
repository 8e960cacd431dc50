//! Safe extraction of a bundle's tree into a fresh staging directory, and the switch of that
//! directory into place.
//!
//! Extraction is the verification pass itself (see `verify.rs`): each entry is written only
//! after its tar header matched its signed index line, and the staging directory becomes
//! usable only if every check of the pass succeeded. Inside staging, every path is opened
//! relative to the staging directory with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`; symlinks
//! are created last, so nothing is ever written through one, and metadata is applied through
//! file descriptors, never through paths.
//!
//! Next to the destination `DEST` live, in its parent directory:
//! `.baluchon-lock.NAME` (an flock against concurrent imports), `.baluchon-staging.NAME.*`
//! (extractions in progress; left over only by a killed run, and removed by the next one),
//! `.baluchon-journal.NAME` (written before the switch, so a run killed during it can be
//! recovered) and `.baluchon-previous.NAME` (the replaced tree, kept until confirmed).

use std::borrow::Cow;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    AtFlags, FileType, FlockOperation, Gid, Mode, OFlags, RenameFlags, ResolveFlags, Timespec,
    Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::error::{Error, ExtractError};
use crate::files::FileOutput;
use crate::index::{Entry, EntryKind, EntryPath, Meta, OwnerRef, Xattr};
use crate::probe::{self, OwnerId, TreeNeeds};
use crate::progress::Progress;
use crate::verify::{Authenticated, Bundle, TreeSink, Verified};

/// How much of the source metadata to restore, and how.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ExtractOptions {
    /// Keep setuid/setgid bits and world-writable modes (dropped by default).
    pub keep_special_modes: bool,
    /// Create symlinks whose target is absolute or leaves the tree (refused by default).
    /// They are created as links only; extraction never follows them.
    pub allow_outside_symlinks: bool,
    /// Owner and group renames applied before looking names up on this host: `OLD=NEW`
    /// by name, or `#N=NAME` (and `#N=#M`) for ids that had no name at the source.
    pub owner_map: Vec<(String, String)>,
    /// Give entries whose owner or group *name* this host lacks a placeholder id instead of
    /// refusing the bundle. The report lists the placeholders, so that the caller can
    /// create the accounts, then give the staged entries to them before they leave
    /// staging. (Placeholder ids are far above any real account's.)
    pub placeholder_ids_for_unknown_names: bool,
    /// Leave `user.*` extended attributes out, for a filesystem that has none (the report
    /// counts the entries that had some). Without this, such a filesystem is refused
    /// before anything is written.
    pub drop_xattrs: bool,
}

/// First placeholder id (see [`ExtractOptions::placeholder_ids_for_unknown_names`]).
pub const PLACEHOLDER_ID_BASE: u32 = 0xF000_0000;

/// An owner or group name this host lacks, and the placeholder id its entries got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder {
    pub group: bool,
    pub name: String,
    pub id: u32,
}

/// What an extraction did that the user should know.
#[derive(Debug, Clone, Default)]
pub struct ExtractReport {
    pub entries: u64,
    pub content_bytes: u64,
    /// Entries the bundle lists as not archived at the source (sockets, FIFOs, devices).
    pub skipped_in_bundle: u64,
    /// Modes changed by the special-mode policy: (path, mode in bundle, mode applied).
    pub modes_adjusted: Vec<(String, u32, u32)>,
    /// Whether owners were restored (only root can give files to other users).
    pub owners_applied: bool,
    /// Entries whose owner or group had no name at the source: their numeric id was kept.
    pub numeric_owners: u64,
    /// Owner and group names this host lacks, when asked to use placeholders for them.
    pub placeholders: Vec<Placeholder>,
    /// Entries whose extended attributes were left out, as asked.
    pub xattrs_dropped: u64,
}

/// A destination directory, locked against concurrent imports for as long as this lives.
#[derive(Debug)]
pub struct Destination {
    path: PathBuf,
    parent: OwnedFd,
    name: OsString,
    _lock: OwnedFd,
}

const STAGING: &str = ".baluchon-staging.";
const PREVIOUS: &str = ".baluchon-previous.";
const JOURNAL: &str = ".baluchon-journal.";
const LOCK: &str = ".baluchon-lock.";

impl Destination {
    /// Locks `path` (which need not exist; its parent must), finishes or undoes a switch a
    /// killed run left half done, and removes staging directories killed runs left behind.
    pub fn lock(path: &Path) -> Result<Self, Error> {
        let (parent_path, name) = split_destination(path)?;
        let parent = rustix::fs::open(
            &parent_path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_at(e, &parent_path))?;
        let lock_name = sibling(LOCK, &name);
        let lock = rustix::fs::openat(
            &parent,
            &lock_name,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| io_at(e, &parent_path.join(&lock_name)))?;
        match rustix::fs::flock(&lock, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(Errno::WOULDBLOCK) => {
                return Err(ExtractError::Locked {
                    path: path.to_owned(),
                }
                .into())
            }
            Err(e) => return Err(io_at(e, &parent_path.join(&lock_name)).into()),
        }
        let dest = Self {
            path: path.to_owned(),
            parent,
            name,
            _lock: lock,
        };
        dest.recover()?;
        dest.remove_stale_staging()?;
        Ok(dest)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn parent_path(&self) -> PathBuf {
        self.path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_owned)
    }

    /// The inode of the destination, if it exists; it must be a directory.
    fn current(&self) -> Result<Option<u64>, Error> {
        match rustix::fs::statat(&self.parent, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                Ok(Some(st.st_ino))
            }
            Ok(_) => Err(ExtractError::NotADirectory {
                path: self.path.clone(),
            }
            .into()),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(io_at(e, &self.path).into()),
        }
    }

    /// A journal names the staging directory being switched in, and its inode. If the
    /// destination now has that inode, the exchange happened and the staging name holds the
    /// old tree: it becomes the previous tree. Otherwise nothing was switched.
    fn recover(&self) -> Result<(), Error> {
        let journal = sibling(JOURNAL, &self.name);
        let text = match read_small_at(&self.parent, &journal) {
            Ok(Some(text)) => text,
            Ok(None) => return Ok(()),
            Err(e) => return Err(io_at(e, &self.parent_path().join(&journal)).into()),
        };
        let mut fields = text.split(|&b| b == b'\n');
        let staging = fields.next().map(|b| OsString::from_vec(b.to_vec()));
        let inode = fields
            .next()
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok());
        if let (Some(staging), Some(inode)) = (staging, inode) {
            if self.current()? == Some(inode) && exists_at(&self.parent, &staging) {
                let previous = sibling(PREVIOUS, &self.name);
                rename(&self.parent, &staging, &previous, RenameFlags::NOREPLACE)
                    .map_err(|e| io_at(e, &self.parent_path().join(&previous)))?;
            }
        }
        rustix::fs::unlinkat(&self.parent, &journal, AtFlags::empty())
            .map_err(|e| io_at(e, &self.parent_path().join(&journal)))?;
        rustix::fs::fsync(&self.parent).map_err(|e| io_at(e, &self.parent_path()))?;
        Ok(())
    }

    fn remove_stale_staging(&self) -> Result<(), Error> {
        // The trailing dot: `dest` must not claim `.baluchon-staging.dest2.*`.
        let mut prefix = sibling(STAGING, &self.name);
        prefix.push(".");
        let parent_path = self.parent_path();
        for item in fs_err::read_dir(&parent_path)? {
            let name = item?.file_name();
            if name.as_bytes().starts_with(prefix.as_bytes()) {
                // remove_dir_all does not follow symlinks (CVE-2022-21658 is fixed in std).
                fs_err::remove_dir_all(parent_path.join(name))?;
            }
        }
        Ok(())
    }

    fn new_staging(&self) -> Result<(OsString, OwnedFd), Error> {
        let mut name = sibling(STAGING, &self.name);
        name.push(format!(".{}", uuid::Uuid::new_v4().simple()));
        let at = self.parent_path().join(&name);
        rustix::fs::mkdirat(&self.parent, &name, Mode::from_raw_mode(0o700))
            .map_err(|e| io_at(e, &at))?;
        let fd = rustix::fs::openat(
            &self.parent,
            &name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_at(e, &at))?;
        Ok((name, fd))
    }

    /// Swaps the previous tree back into place and removes the imported one.
    pub fn roll_back(self) -> Result<(), Error> {
        let previous = sibling(PREVIOUS, &self.name);
        if !exists_at(&self.parent, &previous) {
            return Err(ExtractError::NoPrevious {
                path: self.path.clone(),
            }
            .into());
        }
        exchange_or_move(&self.parent, &previous, &self.name).map_err(|e| io_at(e, &self.path))?;
        rustix::fs::fsync(&self.parent).map_err(|e| io_at(e, &self.parent_path()))?;
        fs_err::remove_dir_all(self.parent_path().join(previous))?;
        Ok(())
    }

    /// Deletes the previous tree kept by the last import.
    pub fn confirm(self) -> Result<(), Error> {
        let previous = sibling(PREVIOUS, &self.name);
        if !exists_at(&self.parent, &previous) {
            return Err(ExtractError::NoPrevious {
                path: self.path.clone(),
            }
            .into());
        }
        fs_err::remove_dir_all(self.parent_path().join(previous))?;
        Ok(())
    }

    /// Where the previous tree is kept after a replacing import.
    pub fn previous_path(&self) -> PathBuf {
        self.parent_path().join(sibling(PREVIOUS, &self.name))
    }
}

/// A fully verified tree in staging, ready to be switched into place. The only way to get
/// one is [`Bundle::extract`]; dropping it removes the staging directory.
#[derive(Debug)]
pub struct Staged {
    dest: Destination,
    staging: Option<(OsString, OwnedFd)>,
    report: ExtractReport,
}

/// What the switch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Switched {
    Created,
    /// The destination existed; its former content is kept at `previous`.
    Replaced {
        previous: PathBuf,
    },
}

impl Staged {
    pub fn report(&self) -> &ExtractReport {
        &self.report
    }

    /// Makes the staged tree the destination, atomically. An existing destination is
    /// replaced only if `replace` is set, and then kept as the previous tree.
    pub fn switch(mut self, replace: bool) -> Result<Switched, Error> {
        let (name, fd) = self
            .staging
            .take()
            .ok_or_else(|| std::io::Error::other("staging already switched"))?;
        let dest = &self.dest;
        let staging_path = dest.parent_path().join(&name);
        let exchanged = std::cell::Cell::new(false);
        let result = (|| {
            rustix::fs::syncfs(&fd).map_err(|e| io_at(e, &staging_path))?;
            let Some(_) = dest.current()? else {
                rename(&dest.parent, &name, &dest.name, RenameFlags::NOREPLACE)
                    .map_err(|e| io_at(e, &dest.path))?;
                rustix::fs::fsync(&dest.parent).map_err(|e| io_at(e, &dest.parent_path()))?;
                return Ok(Switched::Created);
            };
            if !replace {
                return Err(ExtractError::Exists {
                    path: dest.path.clone(),
                }
                .into());
            }
            let previous = sibling(PREVIOUS, &dest.name);
            if exists_at(&dest.parent, &previous) {
                return Err(ExtractError::PreviousKept {
                    path: dest.path.clone(),
                    previous: dest.previous_path(),
                }
                .into());
            }
            let inode = rustix::fs::fstat(&fd)
                .map_err(|e| io_at(e, &staging_path))?
                .st_ino;
            let journal = sibling(JOURNAL, &dest.name);
            write_journal(&dest.parent, &journal, &name, inode)
                .map_err(|e| io_at(e, &dest.parent_path().join(&journal)))?;
            exchange_or_move(&dest.parent, &name, &dest.name).map_err(|e| io_at(e, &dest.path))?;
            exchanged.set(true);
            rename(&dest.parent, &name, &previous, RenameFlags::NOREPLACE)
                .map_err(|e| io_at(e, &dest.previous_path()))?;
            rustix::fs::unlinkat(&dest.parent, &journal, AtFlags::empty())
                .map_err(|e| io_at(e, &dest.parent_path().join(&journal)))?;
            rustix::fs::fsync(&dest.parent).map_err(|e| io_at(e, &dest.parent_path()))?;
            Ok(Switched::Replaced {
                previous: dest.previous_path(),
            })
        })();
        // Before the exchange, the staging name holds the new tree: drop it. After it, the
        // staging name holds the *old* tree: keep it, and the journal, for the next run's
        // recovery to make it the previous tree.
        if result.is_err() && !exchanged.get() && exists_at(&dest.parent, &name) {
            let _ = fs_err::remove_dir_all(&staging_path);
        }
        result
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let Some((name, _)) = self.staging.take() {
            let _ = fs_err::remove_dir_all(self.dest.parent_path().join(name));
        }
    }
}

impl Bundle<Authenticated> {
    /// Verifies the payload while extracting the tree into a new staging directory next to
    /// `dest`. On any failure the staging directory is removed and `dest` is untouched.
    pub fn extract(
        self,
        dest: Destination,
        options: &ExtractOptions,
        progress: &dyn Progress,
    ) -> Result<(Bundle<Verified>, Staged), Error> {
        let (name, root) = dest.new_staging()?;
        let staging_path = dest.parent_path().join(&name);
        let mut staged = Staged {
            dest,
            staging: None,
            report: ExtractReport::default(),
        };
        let root_meta = self.header().files.root.clone();
        let (root_user, root_group) = owner_keys(&root_meta);
        let mut extractor = Extractor {
            root: root.try_clone().map_err(|e| io_at(e, &staging_path))?,
            staging_path,
            options,
            root_meta,
            owner_keys: (BTreeSet::from([root_user]), BTreeSet::from([root_group])),
            // Resolved once the first pass over the index has listed every owner.
            owners: Owners {
                apply: false,
                users: HashMap::new(),
                groups: HashMap::new(),
            },
            created_as: created_as(&root),
            umask: process_umask(),
            parent: None,
            dirs: Vec::new(),
            symlinks: Vec::new(),
            report: std::mem::take(&mut staged.report),
        };
        // From here on, dropping `staged` removes the staging directory.
        staged.staging = Some((name, root));
        let verified = self.verify_into(&mut extractor, progress)?;
        staged.report = extractor.report;
        staged.report.skipped_in_bundle = verified.header().files.skipped;
        Ok((verified, staged))
    }
}

/// The owner every entry gets when created under staging `root`: ours, provided the root
/// has it and no setgid bit (directories are created without one, so their children, and
/// theirs, get the same, even on a filesystem mounted `grpid`).
fn created_as(root: &OwnedFd) -> Option<(u32, u32)> {
    let stat = rustix::fs::fstat(root).ok()?;
    let ours = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    ((stat.st_uid, stat.st_gid) == ours && stat.st_mode & 0o2000 == 0).then_some(ours)
}

/// The process's umask, from `/proc/self/status` (reading it with `umask(2)` would change it
/// for every thread for a moment).
fn process_umask() -> Option<u32> {
    let status = fs_err::read_to_string("/proc/self/status").ok()?;
    let value = status
        .lines()
        .find_map(|line| line.strip_prefix("Umask:"))?;
    u32::from_str_radix(value.trim(), 8).ok()
}

/// Owner and group keys (see [`Owners::resolve`]) resolved to ids on this host.
#[derive(Debug)]
struct Owners {
    apply: bool,
    users: HashMap<String, u32>,
    groups: HashMap<String, u32>,
}

impl Owners {
    /// Resolves every owner and group key of the tree on this host. A key is the source's
    /// name, or `#N` for an id that had no name; `--map-owner` renames keys first. A nameless
    /// id keeps its number, except 0: a file is given to root only if the bundle says `root`
    /// by name, or the operator maps `#0` explicitly.
    fn resolve(
        keys: &(BTreeSet<String>, BTreeSet<String>),
        options: &ExtractOptions,
        placeholders: &mut Vec<Placeholder>,
    ) -> Result<Self, Error> {
        let map: HashMap<String, String> = options.owner_map.iter().cloned().collect();
        let mut owners = Self {
            apply: rustix::process::geteuid().is_root(),
            users: HashMap::new(),
            groups: HashMap::new(),
        };
        if !owners.apply {
            return Ok(owners);
        }
        let mut missing_users = Vec::new();
        let mut missing_groups = Vec::new();
        for (keys, ids, missing, lookup, group) in [
            (
                &keys.0,
                &mut owners.users,
                &mut missing_users,
                user_id as fn(&str) -> Option<u32>,
                false,
            ),
            (
                &keys.1,
                &mut owners.groups,
                &mut missing_groups,
                group_id,
                true,
            ),
        ] {
            for key in keys {
                let mapped = map.get(key);
                let local = mapped.unwrap_or(key);
                let id = match local.strip_prefix('#') {
                    Some(number) => number
                        .parse::<u32>()
                        .ok()
                        .filter(|&n| n != 0 || mapped.is_some()),
                    None => lookup(local),
                };
                match id {
                    Some(id) => {
                        ids.insert(key.clone(), id);
                    }
                    None if options.placeholder_ids_for_unknown_names
                        && !local.starts_with('#') =>
                    {
                        let id = PLACEHOLDER_ID_BASE + placeholders.len() as u32;
                        placeholders.push(Placeholder {
                            group,
                            name: local.clone(),
                            id,
                        });
                        ids.insert(key.clone(), id);
                    }
                    None => missing.push(local.clone()),
                }
            }
        }
        if !missing_users.is_empty() || !missing_groups.is_empty() {
            return Err(ExtractError::UnknownOwners {
                users: missing_users,
                groups: missing_groups,
            }
            .into());
        }
        Ok(owners)
    }

    /// The ids to give an entry here, and whether its owner or group had no name.
    fn ids(&self, meta: &Meta) -> (u32, u32, bool) {
        let (user, group) = owner_keys(meta);
        (
            self.users.get(&user).copied().unwrap_or(meta.uid),
            self.groups.get(&group).copied().unwrap_or(meta.gid),
            meta.owner.is_none() || meta.group.is_none(),
        )
    }
}

fn user_id(name: &str) -> Option<u32> {
    uzers::get_user_by_name(name).map(|u| u.uid())
}

fn group_id(name: &str) -> Option<u32> {
    uzers::get_group_by_name(name).map(|g| g.gid())
}

/// The owner and group keys of an entry: names, or `#N` for ids without one.
fn owner_keys(meta: &Meta) -> (String, String) {
    (
        owner_key(meta.owner.as_deref(), meta.uid).into_owned(),
        owner_key(meta.group.as_deref(), meta.gid).into_owned(),
    )
}

fn owner_key(name: Option<&str>, id: u32) -> Cow<'_, str> {
    name.map_or_else(|| Cow::Owned(format!("#{id}")), Cow::Borrowed)
}

struct Extractor<'o> {
    root: OwnedFd,
    staging_path: PathBuf,
    options: &'o ExtractOptions,
    /// The tree root's own metadata, from the bundle header.
    root_meta: Meta,
    /// Owner and group keys met in the index, resolved into `owners` before any entry.
    owner_keys: (BTreeSet<String>, BTreeSet<String>),
    owners: Owners,
    /// What every entry is owned by when created, if known for sure: then a `chown` to
    /// the same owner is left out (one system call fewer per entry).
    created_as: Option<(u32, u32)>,
    /// Known: a file created with a mode the umask leaves whole needs no `chmod`.
    umask: Option<u32>,
    /// The directory of the last entry, which is usually the next one's too.
    parent: Option<(EntryPath, OwnedFd)>,
    /// Directory metadata is applied at the end: creating children changes mtimes, and a
    /// read-only mode would forbid creating them.
    dirs: Vec<(EntryPath, Meta)>,
    /// Symlinks are created at the end, so nothing is ever written through one.
    symlinks: Vec<(EntryPath, Vec<u8>, Meta)>,
    report: ExtractReport,
}

impl Extractor<'_> {
    fn at(&self, path: &EntryPath) -> PathBuf {
        self.staging_path.join(OsStr::from_bytes(path.as_bytes()))
    }

    fn fail(&self, path: &EntryPath) -> impl Fn(Errno) -> Error {
        let at = self.at(path);
        move |e| io_at(e, &at).into()
    }

    /// Opens a directory of the tree, never through a symlink, never outside staging.
    fn open_dir(&self, path: &EntryPath) -> Result<OwnedFd, Error> {
        rustix::fs::openat2(
            &self.root,
            OsStr::from_bytes(path.as_bytes()),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        )
        .map_err(self.fail(path))
    }

    fn parent_of(&mut self, path: &EntryPath) -> Result<BorrowedFd<'_>, Error> {
        let Some(parent) = path.parent() else {
            return Ok(self.root.as_fd());
        };
        if self.parent.as_ref().is_none_or(|(p, _)| *p != parent) {
            let fd = self.open_dir(&parent)?;
            self.parent = Some((parent, fd));
        }
        Ok(self
            .parent
            .as_ref()
            .map_or_else(|| self.root.as_fd(), |(_, fd)| fd.as_fd()))
    }

    /// The mode to apply; `path` is `None` for the tree's root.
    fn mode(&mut self, path: Option<&EntryPath>, mode: u32) -> u32 {
        if self.options.keep_special_modes {
            return mode;
        }
        let allowed = mode & !0o6000 & !0o002;
        if allowed != mode && self.report.modes_adjusted.len() < 1000 {
            let shown = path.map_or_else(|| ".".to_owned(), ToString::to_string);
            self.report.modes_adjusted.push((shown, mode, allowed));
        }
        allowed
    }

    /// What applying `meta` takes; `mode_set` if the entry was created with `mode`.
    fn plan_meta(&mut self, meta: &Meta, (mode, mode_set): (u32, bool)) -> MetaPlan {
        let (uid, gid, numeric) = self.owners.ids(meta);
        self.report.numeric_owners += u64::from(numeric);
        MetaPlan {
            owner: (self.owners.apply && self.created_as != Some((uid, gid))).then_some((uid, gid)),
            mode: (!mode_set).then_some(mode),
            xattrs: if self.options.drop_xattrs {
                Vec::new()
            } else {
                meta.xattrs.clone()
            },
            times: times(meta),
        }
    }

    /// `path` is `None` for the tree's root.
    fn apply_meta(
        &mut self,
        fd: BorrowedFd<'_>,
        path: Option<&EntryPath>,
        meta: &Meta,
    ) -> Result<(), Error> {
        let mode = self.mode(path, meta.mode);
        let at = path.map_or_else(|| self.staging_path.clone(), |p| self.at(p));
        self.plan_meta(meta, (mode, false)).apply(fd, &at)
    }

    /// Creates the deferred symlinks, then applies directory metadata, deepest first, then
    /// the root's.
    fn finish(&mut self) -> Result<(), Error> {
        if !self.options.allow_outside_symlinks {
            let links: HashSet<&[u8]> =
                self.symlinks.iter().map(|(p, _, _)| p.as_bytes()).collect();
            for (path, target, _) in &self.symlinks {
                if passes_through_link(path, target, &links) {
                    return Err(ExtractError::OutsideSymlink {
                        path: path.to_string(),
                        target: target.escape_ascii().to_string(),
                    }
                    .into());
                }
            }
        }
        for (path, target, meta) in std::mem::take(&mut self.symlinks) {
            let name = OsString::from_vec(path.file_name().to_vec());
            let (uid, gid, numeric) = self.owners.ids(&meta);
            self.report.numeric_owners += u64::from(numeric);
            let apply = self.owners.apply;
            let fail = self.fail(&path);
            let dir = match path.parent() {
                Some(parent) => Some(self.open_dir(&parent)?),
                None => None,
            };
            let dir = dir.as_ref().map_or(self.root.as_fd(), AsFd::as_fd);
            rustix::fs::symlinkat(OsStr::from_bytes(&target), dir, &name).map_err(&fail)?;
            if apply {
                rustix::fs::chownat(
                    dir,
                    &name,
                    Some(Uid::from_raw(uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::SYMLINK_NOFOLLOW,
                )
                .map_err(&fail)?;
            }
            rustix::fs::utimensat(dir, &name, &times(&meta), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(&fail)?;
        }
        self.parent = None;
        for (path, meta) in std::mem::take(&mut self.dirs).into_iter().rev() {
            let fd = self.open_dir(&path)?;
            self.apply_meta(fd.as_fd(), Some(&path), &meta)?;
        }
        let root = self
            .root
            .try_clone()
            .map_err(|e| io_at(e, &self.staging_path))?;
        let root_meta = self.root_meta.clone();
        self.apply_meta(root.as_fd(), None, &root_meta)
    }
}

impl TreeSink for Extractor<'_> {
    fn prepare(&mut self, owner: OwnerRef<'_>, group: OwnerRef<'_>) {
        for (keys, (name, id)) in [
            (&mut self.owner_keys.0, owner),
            (&mut self.owner_keys.1, group),
        ] {
            let key = owner_key(name, id);
            if !keys.contains(&*key) {
                keys.insert(key.into_owned());
            }
        }
    }

    /// Every owner must exist here, and the filesystem must hold what the tree needs,
    /// before the first entry is created.
    fn prepared(&mut self, needs: &TreeNeeds) -> Result<(), Error> {
        self.owners = Owners::resolve(
            &self.owner_keys,
            self.options,
            &mut self.report.placeholders,
        )?;
        self.report.owners_applied = self.owners.apply;
        let mut owners = Vec::new();
        if self.owners.apply {
            for (ids, group) in [(&self.owners.users, false), (&self.owners.groups, true)] {
                owners.extend(ids.iter().map(|(name, &id)| OwnerId {
                    name: name.clone(),
                    group,
                    id,
                }));
            }
        }
        let mut needs = needs.clone();
        // The tree's root has no index line: its attributes come from the bundle's header.
        needs.xattrs += u64::from(!self.root_meta.xattrs.is_empty());
        if self.options.drop_xattrs {
            self.report.xattrs_dropped = std::mem::take(&mut needs.xattrs);
        }
        let lacking = probe::lacking(self.root.as_fd(), &needs, &owners)
            .map_err(|e| io_at(e, &self.staging_path))?;
        if lacking.is_empty() {
            Ok(())
        } else {
            Err(ExtractError::FilesystemLacks {
                dir: self
                    .staging_path
                    .parent()
                    .unwrap_or(&self.staging_path)
                    .to_owned(),
                lacking,
            }
            .into())
        }
    }

    fn begin(&mut self, entry: &Entry) -> Result<Option<Box<dyn FileOutput>>, Error> {
        let name = OsString::from_vec(entry.path.file_name().to_vec());
        match &entry.kind {
            EntryKind::Dir { meta } => {
                let fail = self.fail(&entry.path);
                let dir = self.parent_of(&entry.path)?;
                rustix::fs::mkdirat(dir, &name, Mode::from_raw_mode(0o700)).map_err(fail)?;
                self.dirs.push((entry.path.clone(), meta.clone()));
            }
            EntryKind::File {
                meta,
                size,
                extents,
                ..
            } => {
                let mode = self.mode(Some(&entry.path), meta.mode);
                // Created with its mode when the umask leaves it whole: no chmod then. Special
                // bits always come by chmod, after the chown that would clear them.
                let mode_set = self.umask.is_some_and(|umask| mode & (umask | 0o7000) == 0);
                let fail = self.fail(&entry.path);
                let dir = self.parent_of(&entry.path)?;
                let fd = rustix::fs::openat(
                    dir,
                    &name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(if mode_set { mode } else { 0o600 }),
                )
                .map_err(fail)?;
                self.report.content_bytes += size;
                return Ok(Some(Box::new(FileWriter {
                    file: File::from(fd),
                    at: self.at(&entry.path),
                    // Holes are never written: setting the length keeps them holes.
                    truncate_to: extents.is_some().then_some(*size),
                    meta: self.plan_meta(meta, (mode, mode_set)),
                })));
            }
            EntryKind::Hardlink { target, .. } => {
                // The verifier checked that the target is an earlier regular file.
                let fail = self.fail(&entry.path);
                let target_dir = match target.parent() {
                    Some(parent) => self.open_dir(&parent)?,
                    None => self
                        .root
                        .try_clone()
                        .map_err(|e| io_at(e, &self.staging_path))?,
                };
                let target_name = OsString::from_vec(target.file_name().to_vec());
                let dir = self.parent_of(&entry.path)?;
                rustix::fs::linkat(&target_dir, &target_name, dir, &name, AtFlags::empty())
                    .map_err(fail)?;
            }
            EntryKind::Symlink { meta, target } => {
                if !self.options.allow_outside_symlinks && !stays_inside(&entry.path, target) {
                    return Err(ExtractError::OutsideSymlink {
                        path: entry.path.to_string(),
                        target: target.escape_ascii().to_string(),
                    }
                    .into());
                }
                self.symlinks
                    .push((entry.path.clone(), target.clone(), meta.clone()));
            }
            EntryKind::Skipped { .. } => {}
        }
        Ok(None)
    }

    fn end(&mut self, _: &Entry) -> Result<(), Error> {
        self.report.entries += 1;
        Ok(())
    }

    /// Files only change their own metadata from here on, never their directory's.
    fn walked(&mut self) -> Result<(), Error> {
        self.finish()
    }
}

/// Metadata to apply to an entry, worked out beforehand: owner, then mode (chown clears
/// setuid bits), then extended attributes, then times; all through the descriptor.
struct MetaPlan {
    /// `None` when the entry already has it.
    owner: Option<(u32, u32)>,
    mode: Option<u32>,
    xattrs: Vec<Xattr>,
    times: Timestamps,
}

impl MetaPlan {
    fn apply(&self, fd: BorrowedFd<'_>, at: &Path) -> Result<(), Error> {
        let fail = |e: Errno| Error::from(io_at(e, at));
        if let Some((uid, gid)) = self.owner {
            rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
                .map_err(fail)?;
        }
        if let Some(mode) = self.mode {
            rustix::fs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(fail)?;
        }
        for xattr in &self.xattrs {
            // Only user.* names get this far (the index and the tar reader refuse others).
            rustix::fs::fsetxattr(fd, xattr.name.as_str(), &xattr.value, XattrFlags::empty())
                .map_err(fail)?;
        }
        rustix::fs::futimens(fd, &self.times).map_err(fail)
    }
}

/// A file being extracted: the file thread writes its content, then finishes it.
struct FileWriter {
    file: File,
    at: PathBuf,
    truncate_to: Option<u64>,
    meta: MetaPlan,
}

impl FileOutput for FileWriter {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Error> {
        self.file
            .write_all_at(bytes, offset)
            .map_err(|e| io_at(e, &self.at).into())
    }

    fn finish(self: Box<Self>) -> Result<(), Error> {
        if let Some(size) = self.truncate_to {
            rustix::fs::ftruncate(&self.file, size).map_err(|e| io_at(e, &self.at))?;
        }
        self.meta.apply(self.file.as_fd(), &self.at)
    }
}

/// Whether a symlink target, read from the link's own directory, stays inside the tree at
/// every step (so `a/../b` is fine, `../x` at the top is not, and absolute never is).
fn stays_inside(link: &EntryPath, target: &[u8]) -> bool {
    if target.first() == Some(&b'/') {
        return false;
    }
    let mut depth = link.components().count() - 1;
    for component in target.split(|&b| b == b'/') {
        match component {
            b"" | b"." => {}
            b".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    true
}

/// Whether resolving `target` from the link's directory goes *through* another symlink of
/// the tree (`self -> .` then `up -> self/..`): each link is inside on its own, but the
/// combination may not be, so any such path is refused. A link to a link (the last
/// component) is fine: that link is judged by itself.
fn passes_through_link(link: &EntryPath, target: &[u8], links: &HashSet<&[u8]>) -> bool {
    let mut stack: Vec<&[u8]> = link.components().collect();
    stack.pop();
    let components: Vec<&[u8]> = target
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .collect();
    for (i, component) in components.iter().enumerate() {
        if *component == b".." {
            stack.pop();
            continue;
        }
        stack.push(component);
        if i + 1 < components.len() && links.contains(stack.join(&b'/').as_slice()) {
            return true;
        }
    }
    false
}

fn times(meta: &Meta) -> Timestamps {
    let ts = Timespec {
        tv_sec: meta.mtime,
        tv_nsec: i64::from(meta.mtime_nsec),
    };
    Timestamps {
        last_access: ts,
        last_modification: ts,
    }
}

fn io_at(e: impl Into<std::io::Error>, path: &Path) -> std::io::Error {
    let e: std::io::Error = e.into();
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn split_destination(path: &Path) -> Result<(PathBuf, OsString), Error> {
    let name = path
        .file_name()
        .filter(|n| *n != ".." && *n != ".")
        .ok_or_else(|| ExtractError::NotADirectory {
            path: path.to_owned(),
        })?;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map_or_else(|| PathBuf::from("."), Path::to_owned);
    Ok((parent, name.to_owned()))
}

fn sibling(prefix: &str, name: &OsStr) -> OsString {
    let mut out = OsString::from(prefix);
    out.push(name);
    out
}

fn exists_at(dir: &OwnedFd, name: &OsStr) -> bool {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
}

fn rename(dir: &OwnedFd, from: &OsStr, to: &OsStr, flags: RenameFlags) -> Result<(), Errno> {
    rustix::fs::renameat_with(dir, from, dir, to, flags)
}

/// Atomic exchange where the filesystem has it; otherwise two renames, with a moment in
/// between where `b` does not exist.
fn exchange_or_move(dir: &OwnedFd, a: &OsStr, b: &OsStr) -> Result<(), Errno> {
    match rename(dir, a, b, RenameFlags::EXCHANGE) {
        Err(Errno::INVAL | Errno::NOSYS | Errno::OPNOTSUPP) => {
            let mut aside = OsString::from(b);
            aside.push(".baluchon-swap");
            rename(dir, b, &aside, RenameFlags::NOREPLACE)?;
            rename(dir, a, b, RenameFlags::NOREPLACE)?;
            rename(dir, &aside, a, RenameFlags::NOREPLACE)
        }
        other => other,
    }
}

fn write_journal(dir: &OwnedFd, name: &OsStr, staging: &OsStr, inode: u64) -> Result<(), Errno> {
    let fd = rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    let mut text = staging.as_bytes().to_vec();
    text.extend_from_slice(format!("\n{inode}\n").as_bytes());
    let file = File::from(fd);
    file.write_all_at(&text, 0)
        .map_err(|e| Errno::from_io_error(&e).unwrap_or(Errno::IO))?;
    rustix::fs::fsync(&file)?;
    rustix::fs::fsync(dir)
}

fn read_small_at(dir: &OwnedFd, name: &OsStr) -> std::io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let mut text = Vec::new();
            File::from(fd).take(64 * 1024).read_to_end(&mut text)?;
            Ok(Some(text))
        }
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// What an import of the bundle's tree would do to the destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// In the bundle, not at the destination.
    pub create: Vec<String>,
    /// At both: the bundle's version replaces the destination's.
    pub replace: Vec<String>,
    /// At the destination, not in the bundle: gone after the switch (kept in the previous
    /// tree until confirmed).
    pub remove: Vec<String>,
    pub destination_exists: bool,
}

impl Bundle<Authenticated> {
    /// Compares the bundle's tree with `dest` without writing anything.
    pub fn plan(&self, dest: &Path) -> Result<Plan, Error> {
        let mut existing = BTreeSet::new();
        let destination_exists = match fs_err::symlink_metadata(dest) {
            Ok(meta) if meta.is_dir() => true,
            Ok(_) => {
                return Err(ExtractError::NotADirectory {
                    path: dest.to_owned(),
                }
                .into())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e.into()),
        };
        if destination_exists {
            list_tree(dest, &[], &mut existing)?;
        }
        let mut plan = Plan {
            destination_exists,
            ..Plan::default()
        };
        self.for_each_index_entry(|entry| {
            if matches!(entry.kind, EntryKind::Skipped { .. }) {
                return;
            }
            let shown = entry.path.to_string();
            if existing.remove(entry.path.as_bytes()) {
                plan.replace.push(shown);
            } else {
                plan.create.push(shown);
            }
        })?;
        plan.remove = existing
            .into_iter()
            .map(|p| p.escape_ascii().to_string())
            .collect();
        Ok(plan)
    }
}

/// Every path below `dir`, relative, descending only into real directories.
fn list_tree(dir: &Path, prefix: &[u8], out: &mut BTreeSet<Vec<u8>>) -> Result<(), Error> {
    for item in fs_err::read_dir(dir)? {
        let item = item?;
        let mut path = prefix.to_vec();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(item.file_name().as_bytes());
        // DirEntry::file_type does not follow symlinks.
        if item.file_type()?.is_dir() {
            list_tree(&item.path(), &path, out)?;
        }
        out.insert(path);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::stays_inside;
    use crate::index::EntryPath;

    #[test]
    fn targets_through_other_links_are_caught() {
        let at = |p: &str| EntryPath::new(p.as_bytes().to_vec()).unwrap();
        let links: std::collections::HashSet<&[u8]> = [&b"self"[..], b"a/b/up"].into();
        assert!(super::passes_through_link(&at("esc"), b"self/..", &links));
        assert!(super::passes_through_link(
            &at("esc"),
            b"a/b/up/../x",
            &links
        ));
        assert!(
            !super::passes_through_link(&at("ok"), b"self", &links),
            "a link to a link"
        );
        assert!(!super::passes_through_link(&at("ok"), b"a/b/file", &links));
    }

    #[test]
    fn symlink_targets_are_judged_lexically_from_the_link() {
        let at = |p: &str| EntryPath::new(p.as_bytes().to_vec()).unwrap();
        assert!(stays_inside(&at("a/link"), b"../b"));
        assert!(stays_inside(&at("a/b/link"), b"../../c"));
        assert!(stays_inside(&at("link"), b"x/../y"));
        assert!(!stays_inside(&at("link"), b"../x"));
        assert!(!stays_inside(&at("a/link"), b"../../x"));
        assert!(!stays_inside(&at("a/link"), b"/etc/passwd"));
        assert!(!stays_inside(&at("link"), b"x/../../y"));
    }
}
