//! Putting staged file sets into place: entry by entry, each creation or displacement
//! journaled first, so that undoing the journal restores the host exactly.

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use baluchon_bundle::{OwnerId, TreeNeeds};
use serde::Serialize;

use super::journal::{Change, Journal};
use crate::error::ImportError;

/// What to do with an existing path that differs from the bundle's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnConflict {
    /// Change nothing, and say what is in the way.
    Refuse,
    /// Move the existing item into the import's backup directory.
    Replace,
    /// Rename the existing item beside itself (`NAME.baluchon-old-ID`).
    Rename,
}

/// One file set: where it is staged, where it goes, and what placing it would do.
#[derive(Debug, Clone, Serialize)]
pub struct SetPlacement {
    /// The path on the source host (and inside the staged tree).
    pub from: PathBuf,
    /// The path on this host.
    pub to: PathBuf,
    pub entries: u64,
    /// Entries that do not exist here yet.
    pub creates: u64,
    /// Entries that exist here with the same content.
    pub identical: u64,
    /// Entries that exist here and differ (or are of another type).
    pub conflicts: Vec<PathBuf>,
    /// Directories that exist here and are kept with their own mode or owner, which
    /// differ from the bundle's (their content is merged).
    pub dirs_kept: Vec<PathBuf>,
}

fn staged_path(tree: &Path, from: &Path) -> PathBuf {
    tree.join(from.strip_prefix("/").unwrap_or(from))
}

enum Existing {
    Absent,
    Same,
    /// Both are directories: descend.
    Merge,
    Differs,
}

fn compare(staged: &Path, target: &Path) -> Result<Existing, ImportError> {
    let Ok(there) = fs_err::symlink_metadata(target) else {
        return Ok(Existing::Absent);
    };
    let ours = fs_err::symlink_metadata(staged)?;
    let (a, b) = (ours.file_type(), there.file_type());
    if a.is_dir() && b.is_dir() {
        return Ok(Existing::Merge);
    }
    if a.is_symlink() && b.is_symlink() {
        let same = fs_err::read_link(staged)? == fs_err::read_link(target)?;
        return Ok(if same {
            Existing::Same
        } else {
            Existing::Differs
        });
    }
    if a.is_file() && b.is_file() {
        if ours.len() != there.len() {
            return Ok(Existing::Differs);
        }
        let same = same_bytes(staged, target)?
            && ours.mode() & 0o7777 == there.mode() & 0o7777
            && (ours.uid(), ours.gid()) == (there.uid(), there.gid())
            && sorted(user_xattrs(staged)?) == sorted(user_xattrs(target)?);
        return Ok(if same {
            Existing::Same
        } else {
            Existing::Differs
        });
    }
    Ok(Existing::Differs)
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

fn same_bytes(a: &Path, b: &Path) -> Result<bool, ImportError> {
    use std::io::Read;
    let mut fa = fs_err::File::open(a)?;
    let mut fb = fs_err::File::open(b)?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(fb.read(&mut bb[..1])? == 0);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Children of a staged directory, sorted so that surveys and placements are repeatable.
fn children(dir: &Path) -> Result<Vec<std::ffi::OsString>, ImportError> {
    let mut names: Vec<_> = fs_err::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    Ok(names)
}

/// What placing `from` (staged under `tree`) at `to` would do; changes nothing.
pub fn survey(tree: &Path, from: &Path, to: &Path) -> Result<SetPlacement, ImportError> {
    let mut plan = SetPlacement {
        from: from.to_owned(),
        to: to.to_owned(),
        entries: 0,
        creates: 0,
        identical: 0,
        conflicts: Vec::new(),
        dirs_kept: Vec::new(),
    };
    let mut stack = vec![(staged_path(tree, from), to.to_owned())];
    while let Some((staged, target)) = stack.pop() {
        match compare(&staged, &target)? {
            Existing::Absent => {
                let count = count_entries(&staged)?;
                plan.entries += count;
                plan.creates += count;
            }
            Existing::Same => {
                plan.entries += 1;
                plan.identical += 1;
            }
            Existing::Differs => {
                plan.entries += count_entries(&staged)?;
                plan.conflicts.push(target);
            }
            Existing::Merge => {
                plan.entries += 1;
                plan.identical += 1;
                let attributes = |m: std::fs::Metadata| (m.mode() & 0o7777, m.uid(), m.gid());
                if attributes(fs_err::symlink_metadata(&staged)?)
                    != attributes(fs_err::symlink_metadata(&target)?)
                {
                    plan.dirs_kept.push(target.clone());
                }
                for name in children(&staged)?.into_iter().rev() {
                    stack.push((staged.join(&name), target.join(&name)));
                }
            }
        }
    }
    Ok(plan)
}

/// Bytes of the regular files of the staged set `from`, as a copy to another filesystem
/// writes them: each inode once, at its full size (holes stay holes, but whether a block
/// is one cannot be told from its size on every filesystem: ZFS counts compressed blocks).
pub fn staged_bytes(tree: &Path, from: &Path) -> Result<u64, ImportError> {
    let mut total = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![staged_path(tree, from)];
    while let Some(path) = stack.pop() {
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.is_dir() {
            stack.extend(children(&path)?.into_iter().map(|name| path.join(name)));
        } else if meta.is_file() && (meta.nlink() == 1 || seen.insert((meta.dev(), meta.ino()))) {
            total = total.saturating_add(meta.len());
        }
    }
    Ok(total)
}

fn count_entries(path: &Path) -> Result<u64, ImportError> {
    let meta = fs_err::symlink_metadata(path)?;
    if !meta.is_dir() {
        return Ok(1);
    }
    let mut n = 1;
    for name in children(path)? {
        n += count_entries(&path.join(name))?;
    }
    Ok(n)
}

/// Where things displaced by an import go, and under which suffix.
#[derive(Debug)]
pub struct Displace<'a> {
    pub policy: OnConflict,
    pub backup_dir: &'a Path,
    pub suffix: &'a str,
}

/// The first symlink above `to` (not `to` itself, which is displaced, never followed) that
/// someone other than root could have made or could change: a link not owned by root, or in
/// a directory that is not root's or that others may write. Following one, root would
/// place the bundle's files wherever an app's account points it (/etc/cron.d, say).
/// Links root made in its own directories (/var/www → /srv/www) are followed.
pub fn untrusted_link_above(to: &Path) -> Result<Option<PathBuf>, ImportError> {
    let mut ancestors: Vec<&Path> = to.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        let meta = match fs_err::symlink_metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if !meta.file_type().is_symlink() {
            continue;
        }
        let parent = fs_err::metadata(dir.parent().unwrap_or(Path::new("/")))?;
        if !only_root_can_change(meta.uid(), parent.uid(), parent.mode()) {
            return Ok(Some(dir.to_owned()));
        }
    }
    Ok(None)
}

/// Whether only root can have made, or can change, a symlink owned by `link_uid` in a
/// directory owned by `dir_uid` with mode `dir_mode`: the link is root's, and so is its
/// directory, which nobody else may write.
fn only_root_can_change(link_uid: u32, dir_uid: u32, dir_mode: u32) -> bool {
    link_uid == 0 && dir_uid == 0 && dir_mode & 0o022 == 0
}

/// Places one set, journaling each change before making it. A conflict under `Refuse`
/// is an error (the plan should have caught it; the host may have changed since).
pub fn place(
    tree: &Path,
    set: &SetPlacement,
    displace: &Displace<'_>,
    journal: &mut Journal,
) -> Result<(), ImportError> {
    // The plan checked it too; the host may have changed since.
    if let Some(link) = untrusted_link_above(&set.to)? {
        return Err(ImportError::ConflictWhileApplying(format!(
            "{} is reached through {}, a link that another account than root may change",
            set.to.display(),
            link.display()
        )));
    }
    // Missing directories above the set (an app under /srv/<name> on a new host) are
    // created, root's, 0755, and journaled like the rest.
    let mut missing: Vec<&Path> = set
        .to
        .ancestors()
        .skip(1)
        .take_while(|a| fs_err::symlink_metadata(a).is_err())
        .collect();
    missing.reverse();
    for dir in missing {
        journal.record(&Change::Created {
            path: dir.to_owned(),
        })?;
        if let Err(e) = fs_err::create_dir(dir) {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                journal.record(&Change::NotMade)?;
                continue;
            }
            return Err(e.into());
        }
    }
    let mut stack = vec![(staged_path(tree, &set.from), set.to.clone())];
    // Directory times are set last: creating their entries changes them.
    let mut dir_times = Vec::new();
    let mut copied_inodes = CopiedInodes::new();
    while let Some((staged, target)) = stack.pop() {
        match compare(&staged, &target)? {
            Existing::Same => continue,
            Existing::Merge => {
                for name in children(&staged)?.into_iter().rev() {
                    stack.push((staged.join(&name), target.join(&name)));
                }
                continue;
            }
            Existing::Differs => {
                let beside = || {
                    let mut name = target.file_name().unwrap_or_default().to_owned();
                    name.push(format!(".baluchon-old-{}", displace.suffix));
                    target.with_file_name(name)
                };
                let kept = match displace.policy {
                    OnConflict::Refuse => {
                        return Err(ImportError::ConflictWhileApplying(format!(
                            "{} exists and differs from the bundle's (--on-conflict refuse)",
                            target.display()
                        )))
                    }
                    OnConflict::Replace => {
                        let inside = displace
                            .backup_dir
                            .join(target.strip_prefix("/").unwrap_or(&target));
                        // A rename cannot cross filesystems (a separate /var is common):
                        // then the old file is kept beside itself, as with `rename`.
                        if same_filesystem(&target, &inside) {
                            inside
                        } else {
                            beside()
                        }
                    }
                    OnConflict::Rename => beside(),
                };
                // Something already at the keeping place (an earlier import's backup) would
                // be overwritten, and undoing would then move the wrong thing back.
                if fs_err::symlink_metadata(&kept).is_ok() {
                    return Err(ImportError::ConflictWhileApplying(format!(
                        "{} cannot be kept aside: {} exists",
                        target.display(),
                        kept.display()
                    )));
                }
                if let Some(parent) = kept.parent() {
                    fs_err::create_dir_all(parent)?;
                }
                journal.record(&Change::MovedAside {
                    path: target.clone(),
                    kept: kept.clone(),
                })?;
                if let Err(e) = rustix::fs::renameat_with(
                    rustix::fs::CWD,
                    &target,
                    rustix::fs::CWD,
                    &kept,
                    rustix::fs::RenameFlags::NOREPLACE,
                ) {
                    journal.record(&Change::NotMade)?;
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!(
                            "moving {} aside to {}: {e}",
                            target.display(),
                            kept.display()
                        ),
                    )
                    .into());
                }
            }
            Existing::Absent => {}
        }

        journal.record(&Change::Created {
            path: target.clone(),
        })?;
        // Files for /etc get root's ownership and safe modes while still in staging, so
        // they never appear there any other way.
        if !meta_is_dir(&staged)? {
            harden_system_config(&target, &staged, &fs_err::symlink_metadata(&staged)?)?;
        }
        let meta = fs_err::symlink_metadata(&staged)?;
        let made = if meta.is_dir() {
            fs_err::create_dir(&target).map_err(ImportError::from)
        } else {
            move_entry(&staged, &target, &meta, &mut copied_inodes)
        };
        if let Err(e) = made {
            // Something appeared there since the plan: it is not ours to remove later.
            if matches!(&e, ImportError::Io(io) if io.kind() == std::io::ErrorKind::AlreadyExists) {
                journal.record(&Change::NotMade)?;
            }
            return Err(e);
        }
        if meta.is_dir() {
            chmod_no_follow(&target, meta.mode() & 0o7777)?;
            chown(&target, &meta)?;
            // The directory is made anew here, not moved: its attributes come along by hand.
            copy_user_xattrs(&staged, &target)?;
            dir_times.push((target.clone(), meta.clone()));
            for name in children(&staged)?.into_iter().rev() {
                stack.push((staged.join(&name), target.join(&name)));
            }
        }
        if meta.is_dir() {
            harden_system_config(&target, &target, &meta)?;
        }
    }
    for (dir, meta) in dir_times.into_iter().rev() {
        set_mtime(&dir, &meta)?;
    }
    Ok(())
}

/// Files under /etc configure services that run as root: whatever the bundle says, they
/// belong to root, and nobody else may write them (their group is kept: a web server may
/// need to read a config). No setuid, setgid or sticky bit either.
fn harden_system_config(
    target: &Path,
    apply_to: &Path,
    meta: &std::fs::Metadata,
) -> Result<(), ImportError> {
    if !target.starts_with("/etc") {
        return Ok(());
    }
    rustix::fs::chownat(
        rustix::fs::CWD,
        apply_to,
        Some(rustix::fs::Uid::ROOT),
        None,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| std::io::Error::new(e.kind(), format!("chown {}: {e}", apply_to.display())))?;
    if !meta.file_type().is_symlink() {
        chmod_no_follow(apply_to, meta.mode() & 0o0755)?;
    }
    Ok(())
}

/// Sets the mode of `path` through a descriptor opened without following a final link:
/// chown, xattrs and times are set on the link itself, but chmod would follow it, and the
/// app's account may have swapped a directory it owns for a link to a file of root's.
fn chmod_no_follow(path: &Path, mode: u32) -> Result<(), ImportError> {
    use rustix::fs::{Mode, OFlags};
    let failed = |e| io_error(e, &format!("chmod {}", path.display()));
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(failed)?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(failed)?;
    Ok(())
}

/// What the staged file set `from` asks of a filesystem it is copied to: its symlinks,
/// files with several names, entries with `user.*` extended attributes, and its owners and
/// groups (but placeholders: their accounts are made later, by the apply).
pub fn needs_of(tree: &Path, from: &Path) -> Result<(TreeNeeds, Vec<OwnerId>), ImportError> {
    let mut needs = TreeNeeds::default();
    let (mut uids, mut gids) = (BTreeSet::new(), BTreeSet::new());
    // An inode with several names in the set: the names after the first are links to it.
    let mut linked = std::collections::HashSet::new();
    let mut stack = vec![staged_path(tree, from)];
    while let Some(path) = stack.pop() {
        let meta = fs_err::symlink_metadata(&path)?;
        if meta.file_type().is_symlink() {
            needs.symlinks += 1;
        } else if meta.is_file() && meta.nlink() > 1 && !linked.insert((meta.dev(), meta.ino())) {
            needs.hardlinks += 1;
            continue;
        }
        if !user_xattrs(&path)?.is_empty() {
            needs.xattrs += 1;
        }
        uids.insert(meta.uid());
        gids.insert(meta.gid());
        if meta.is_dir() {
            for entry in fs_err::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    let owners = (uids.into_iter().map(|id| (id, false)))
        .chain(gids.into_iter().map(|id| (id, true)))
        .filter(|&(id, _)| id < baluchon_bundle::PLACEHOLDER_ID_BASE)
        .map(|(id, group)| {
            let name = if group {
                uzers::get_group_by_gid(id).map(|g| g.name().to_owned())
            } else {
                uzers::get_user_by_uid(id).map(|u| u.name().to_owned())
            };
            OwnerId {
                name: name.map_or_else(|| format!("#{id}"), |n| n.to_string_lossy().into_owned()),
                group,
                id,
            }
        });
    Ok((needs, owners.collect()))
}

/// Whether `path` and the place `to` (which may not exist yet: its nearest existing
/// ancestor then) are on one filesystem, so that a rename between them can work.
fn same_filesystem(path: &Path, to: &Path) -> bool {
    let Ok(from) = fs_err::symlink_metadata(path) else {
        return false;
    };
    filesystem_of(to).is_some_and(|(_, dev)| dev == from.dev())
}

/// The nearest existing ancestor of `path` (`path` itself if it exists) and the device of
/// its filesystem: where a file created at `path` would be stored.
pub fn filesystem_of(path: &Path) -> Option<(&Path, u64)> {
    path.ancestors()
        .find_map(|dir| std::fs::metadata(dir).ok().map(|m| (dir, m.dev())))
}

fn meta_is_dir(path: &Path) -> Result<bool, ImportError> {
    Ok(fs_err::symlink_metadata(path)?.is_dir())
}

/// Where the first name of each staged inode with several names was copied, by (device,
/// inode): across filesystems, its other names become hard links to that copy again.
type CopiedInodes = std::collections::HashMap<(u64, u64), PathBuf>;

/// Renames a staged file or link into place, never over an existing one; across
/// filesystems, copies it with its metadata, its holes, its `user.*` extended attributes
/// and its other names (`copied` remembers the first).
fn move_entry(
    staged: &Path,
    target: &Path,
    meta: &std::fs::Metadata,
    copied: &mut CopiedInodes,
) -> Result<(), ImportError> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        staged,
        rustix::fs::CWD,
        target,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => return Ok(()),
        Err(rustix::io::Errno::XDEV) => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("moving {} to {}: {e}", staged.display(), target.display()),
            )
            .into())
        }
    }
    if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs_err::read_link(staged)?, target)?;
        chown(target, meta)?;
        return set_mtime(target, meta);
    }
    let inode = (meta.dev(), meta.ino());
    if meta.nlink() > 1 {
        if let Some(first) = copied.get(&inode) {
            match rustix::fs::linkat(
                rustix::fs::CWD,
                first,
                rustix::fs::CWD,
                target,
                rustix::fs::AtFlags::empty(),
            ) {
                Ok(()) => return Ok(()),
                // The first copy is on another filesystem again (a mount inside the set).
                Err(rustix::io::Errno::XDEV) => {}
                Err(e) => {
                    return Err(std::io::Error::new(
                        e.kind(),
                        format!("linking {} to {}: {e}", target.display(), first.display()),
                    )
                    .into())
                }
            }
        }
    }
    let out = fs_err::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)?;
    copy_extents(staged, &out, meta.len())?;
    out.sync_all()?;
    drop(out);
    chmod_no_follow(target, meta.mode() & 0o7777)?;
    chown(target, meta)?;
    copy_user_xattrs(staged, target)?;
    set_mtime(target, meta)?;
    if meta.nlink() > 1 {
        copied.insert(inode, target.to_owned());
    }
    Ok(())
}

/// Copies the data of `from` into the new, empty file `out`, leaving its holes as holes
/// (a sparse disk image stays sparse); `len` is its size.
fn copy_extents(from: &Path, out: &fs_err::File, len: u64) -> Result<(), ImportError> {
    use fs_err::os::unix::fs::FileExt;
    use rustix::fs::SeekFrom;
    let source = fs_err::File::open(from)?;
    let failed = |e: std::io::Error| {
        std::io::Error::new(e.kind(), format!("copying {}: {e}", from.display()))
    };
    let mut buf = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
    let mut pos = 0;
    while pos < len {
        let (start, end) = match rustix::fs::seek(&source, SeekFrom::Data(pos)) {
            Ok(start) => {
                let end = rustix::fs::seek(&source, SeekFrom::Hole(start))
                    .map_err(|e| failed(e.into()))?;
                (start, end.min(len))
            }
            // No data after `pos`: the rest is a hole.
            Err(rustix::io::Errno::NXIO) => break,
            // A filesystem that cannot tell: copy everything.
            Err(rustix::io::Errno::INVAL | rustix::io::Errno::OPNOTSUPP) => (pos, len),
            Err(e) => return Err(failed(e.into()).into()),
        };
        let mut at = start;
        while at < end {
            let want = usize::try_from(end - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = source.read_at(&mut buf[..want], at).map_err(failed)?;
            if n == 0 {
                return Err(failed(std::io::ErrorKind::UnexpectedEof.into()).into());
            }
            out.write_all_at(&buf[..n], at)?;
            at += n as u64;
        }
        pos = end;
    }
    out.set_len(len)?;
    Ok(())
}

/// Copies the `user.*` extended attributes of `from` onto `to` (Linux allows none on
/// symlinks). A filesystem that keeps none fails the placement rather than losing them.
fn copy_user_xattrs(from: &Path, to: &Path) -> Result<(), ImportError> {
    for (name, value) in user_xattrs(from)? {
        rustix::fs::lsetxattr(to, &name, &value, rustix::fs::XattrFlags::empty())
            .map_err(|e| xattr_error("writing", to, e))?;
    }
    Ok(())
}

/// The `user.*` extended attributes of `path` (not followed if a symlink), in the
/// filesystem's order; none where the filesystem keeps none.
fn user_xattrs(path: &Path) -> Result<Vec<(std::ffi::OsString, Vec<u8>)>, ImportError> {
    use std::os::unix::ffi::OsStrExt;
    // The kernel's limits: 64 KiB for the list of names, and for one value.
    let mut names = vec![0u8; 64 * 1024];
    let len = match rustix::fs::llistxattr(path, &mut names[..]) {
        Ok(len) => len,
        // A filesystem without extended attributes has none to list.
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => return Err(xattr_error("listing", path, e).into()),
    };
    let mut value = vec![0u8; 64 * 1024];
    let mut found = Vec::new();
    for name in names[..len]
        .split(|&b| b == 0)
        .filter(|name| name.starts_with(b"user."))
    {
        let name = std::ffi::OsStr::from_bytes(name);
        let n = rustix::fs::lgetxattr(path, name, &mut value[..])
            .map_err(|e| xattr_error("reading", path, e))?;
        found.push((name.to_owned(), value[..n].to_vec()));
    }
    Ok(found)
}

fn xattr_error(what: &str, path: &Path, e: rustix::io::Errno) -> std::io::Error {
    std::io::Error::new(
        std::io::Error::from(e).kind(),
        format!("{what} the extended attributes of {}: {e}", path.display()),
    )
}

fn chown(path: &Path, meta: &std::fs::Metadata) -> Result<(), ImportError> {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| std::io::Error::new(e.kind(), format!("chown {}: {e}", path.display())))?;
    Ok(())
}

fn set_mtime(path: &Path, meta: &std::fs::Metadata) -> Result<(), ImportError> {
    let time = rustix::fs::Timespec {
        tv_sec: meta.mtime(),
        tv_nsec: meta.mtime_nsec() as _,
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &rustix::fs::Timestamps {
            last_access: time,
            last_modification: time,
        },
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(|e| std::io::Error::new(e.kind(), format!("utimensat {}: {e}", path.display())))?;
    Ok(())
}

/// Undoes one journaled change of the file sets. Each undo checks the state first, so
/// running it twice, or for a change that was recorded but never made, is harmless. It works
/// through directory descriptors: since the apply, the app's own code (reloaded, serving the
/// health check) may have swapped one of its directories for a link, and undoing through
/// that link would remove or move root's files elsewhere. A link that only root can have
/// made is followed; any other stops this undo with an error.
pub fn undo_file_change(change: &Change) -> Result<(), ImportError> {
    match change {
        Change::Created { path } => remove_at(path),
        Change::MovedAside { path, kept } => {
            let (kept_dir, kept_name) = parent_and_name(kept)?;
            let kept_dir = match open_dir_trusted(kept_dir) {
                Ok(dir) => dir,
                Err(ImportError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            };
            if !exists_at(&kept_dir, kept_name, kept)? {
                return Ok(());
            }
            remove_at(path)?;
            let (dir, name) = parent_and_name(path)?;
            let dir = open_dir_trusted(dir)?;
            rustix::fs::renameat(&kept_dir, kept_name, &dir, name).map_err(|e| {
                io_error(
                    e,
                    &format!("moving {} back to {}", kept.display(), path.display()),
                )
            })?;
            Ok(())
        }
        _ => Ok(()),
    }
}

fn io_error(e: rustix::io::Errno, what: &str) -> ImportError {
    std::io::Error::new(std::io::Error::from(e).kind(), format!("{what}: {e}")).into()
}

fn parent_and_name(path: &Path) -> Result<(&Path, &std::ffi::OsStr), ImportError> {
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => Ok((parent, name)),
        _ => Err(io_error(
            rustix::io::Errno::INVAL,
            &format!("undoing {}", path.display()),
        )),
    }
}

fn exists_at(
    dir: &rustix::fd::OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
) -> Result<bool, ImportError> {
    match rustix::fs::statat(dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => Ok(true),
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(io_error(e, &shown.display().to_string())),
    }
}

/// Removes `path` (a whole tree if it is a directory), without following a link on the
/// way to it or inside it.
fn remove_at(path: &Path) -> Result<(), ImportError> {
    let (dir, name) = parent_and_name(path)?;
    let dir = match open_dir_trusted(dir) {
        Ok(dir) => dir,
        // Nothing left to remove below a directory that is gone.
        Err(ImportError::Io(e)) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    remove_tree_at(&dir, name, path)
}

fn remove_tree_at(
    dir: &rustix::fd::OwnedFd,
    name: &std::ffi::OsStr,
    shown: &Path,
) -> Result<(), ImportError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let stat = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) => stat,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(io_error(e, &shown.display().to_string())),
    };
    if FileType::from_raw_mode(stat.st_mode) != FileType::Directory {
        return rustix::fs::unlinkat(dir, name, AtFlags::empty())
            .map_err(|e| io_error(e, &format!("removing {}", shown.display())));
    }
    let inner = rustix::fs::openat(
        dir,
        name,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_error(e, &shown.display().to_string()))?;
    let mut names = Vec::new();
    for entry in
        rustix::fs::Dir::read_from(&inner).map_err(|e| io_error(e, &shown.display().to_string()))?
    {
        let entry = entry.map_err(|e| io_error(e, &shown.display().to_string()))?;
        let child = entry.file_name().to_bytes();
        if child != b"." && child != b".." {
            names.push(std::ffi::OsStr::from_bytes(child).to_owned());
        }
    }
    for child in names {
        remove_tree_at(&inner, &child, &shown.join(&child))?;
    }
    rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
        .map_err(|e| io_error(e, &format!("removing {}", shown.display())))
}

/// Opens the directory `path` from `/`, one component at a time. A link met on the way is
/// followed only if root alone can have made it (see [`untrusted_link_above`]).
fn open_dir_trusted(path: &Path) -> Result<rustix::fd::OwnedFd, ImportError> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open("/", flags, Mode::empty()).map_err(|e| io_error(e, "/"))?;
    let mut walked = PathBuf::from("/");
    for part in path.components() {
        let name = match part {
            std::path::Component::Normal(name) => name,
            std::path::Component::RootDir | std::path::Component::CurDir => continue,
            std::path::Component::ParentDir | std::path::Component::Prefix(_) => {
                return Err(io_error(
                    rustix::io::Errno::INVAL,
                    &path.display().to_string(),
                ))
            }
        };
        walked.push(name);
        let shown = walked.display().to_string();
        let stat = rustix::fs::statat(&dir, name, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| io_error(e, &shown))?;
        let follow = if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink {
            let parent = rustix::fs::fstat(&dir).map_err(|e| io_error(e, &shown))?;
            if !only_root_can_change(stat.st_uid, parent.st_uid, parent.st_mode) {
                return Err(ImportError::UndoThroughLink { link: walked });
            }
            OFlags::empty()
        } else {
            OFlags::NOFOLLOW
        };
        dir = rustix::fs::openat(&dir, name, flags | follow, Mode::empty())
            .map_err(|e| io_error(e, &shown))?;
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// An existing directory whose mode differs from the bundle's is merged into, and the
    /// survey names it: its mode stays as it is.
    #[test]
    fn an_existing_directory_kept_with_another_mode_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("srv/app/sub")).unwrap();
        let target = dir.path().join("app");
        fs_err::create_dir_all(target.join("sub")).unwrap();
        for (path, mode) in [
            (tree.join("srv/app"), 0o755),
            (target.clone(), 0o755),
            (tree.join("srv/app/sub"), 0o750),
            (target.join("sub"), 0o700),
        ] {
            fs_err::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
        let plan = survey(&tree, Path::new("/srv/app"), &target).unwrap();
        assert_eq!(plan.dirs_kept, vec![target.join("sub")]);
        assert!(plan.conflicts.is_empty());
    }

    /// A directory the apply has just made, swapped for a link to root's file before its
    /// mode is set: the mode is not set through the link.
    #[test]
    fn a_mode_is_never_set_through_a_link() {
        let dir = tempfile::tempdir().unwrap();
        let (made, roots) = (dir.path().join("made"), dir.path().join("shadow"));
        fs_err::write(&roots, "root's\n").unwrap();
        fs_err::set_permissions(&roots, std::fs::Permissions::from_mode(0o600)).unwrap();
        fs_err::os::unix::fs::symlink(&roots, &made).unwrap();
        assert!(chmod_no_follow(&made, 0o755).is_err());
        assert_eq!(fs_err::metadata(&roots).unwrap().mode() & 0o7777, 0o600);
        fs_err::remove_file(&made).unwrap();
        fs_err::create_dir(&made).unwrap();
        chmod_no_follow(&made, 0o750).unwrap();
        assert_eq!(fs_err::metadata(&made).unwrap().mode() & 0o7777, 0o750);
    }

    /// After the apply, the app's account (owning a directory the import made) swapped a
    /// directory for a link to root's files: undoing does not go through it. Without such a
    /// link, a created tree is removed and a displaced file comes back.
    #[test]
    fn undoing_never_goes_through_a_link_the_app_may_have_made() {
        let dir = tempfile::tempdir().unwrap();
        let (app, victim) = (dir.path().join("app"), dir.path().join("victim"));
        fs_err::create_dir_all(app.join("uploads")).unwrap();
        fs_err::create_dir_all(&victim).unwrap();
        fs_err::write(app.join("uploads/passwd"), "placed\n").unwrap();
        fs_err::write(victim.join("passwd"), "root's\n").unwrap();
        // Writable by others, as a directory the app's account owns.
        fs_err::set_permissions(&app, std::fs::Permissions::from_mode(0o777)).unwrap();
        fs_err::rename(app.join("uploads"), app.join("moved")).unwrap();
        fs_err::os::unix::fs::symlink(&victim, app.join("uploads")).unwrap();

        let placed = Change::Created {
            path: app.join("uploads/passwd"),
        };
        match undo_file_change(&placed) {
            Err(ImportError::UndoThroughLink { link }) => assert_eq!(link, app.join("uploads")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            fs_err::read_to_string(victim.join("passwd")).unwrap(),
            "root's\n"
        );

        fs_err::remove_file(app.join("uploads")).unwrap();
        fs_err::rename(app.join("moved"), app.join("uploads")).unwrap();
        fs_err::create_dir_all(app.join("uploads/deep/er")).unwrap();
        fs_err::os::unix::fs::symlink(&victim, app.join("uploads/deep/link")).unwrap();
        undo_file_change(&Change::Created {
            path: app.join("uploads"),
        })
        .unwrap();
        assert!(!app.join("uploads").exists());
        assert!(
            victim.join("passwd").exists(),
            "a link inside is removed, not followed"
        );

        fs_err::write(app.join("config"), "the bundle's\n").unwrap();
        fs_err::write(dir.path().join("kept"), "the host's\n").unwrap();
        undo_file_change(&Change::MovedAside {
            path: app.join("config"),
            kept: dir.path().join("kept"),
        })
        .unwrap();
        assert_eq!(
            fs_err::read_to_string(app.join("config")).unwrap(),
            "the host's\n"
        );
        undo_file_change(&Change::Created {
            path: dir.path().join("gone/below"),
        })
        .unwrap();
    }

    fn set_xattr(path: &Path, name: &str, value: &[u8]) {
        rustix::fs::lsetxattr(path, name, value, rustix::fs::XattrFlags::empty()).unwrap();
    }

    /// A file with the bundle's content, mode and owner but not its extended attributes is
    /// not the bundle's file: the survey calls it a conflict, not identical.
    #[test]
    fn a_file_without_the_bundles_xattrs_is_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let staged = tree.join("srv/app");
        fs_err::create_dir_all(&staged).unwrap();
        fs_err::write(staged.join("a.txt"), "same\n").unwrap();
        set_xattr(&staged.join("a.txt"), "user.origin", b"old-host");
        let target = dir.path().join("app");
        fs_err::create_dir_all(&target).unwrap();
        fs_err::write(target.join("a.txt"), "same\n").unwrap();

        let survey_now = || survey(&tree, Path::new("/srv/app"), &target).unwrap();
        assert_eq!(survey_now().conflicts, vec![target.join("a.txt")]);
        set_xattr(&target.join("a.txt"), "user.origin", b"old-host");
        let plan = survey_now();
        assert_eq!(plan.conflicts, Vec::<PathBuf>::new());
        assert_eq!((plan.entries, plan.identical), (2, 2));
    }

    /// A set's needs count each symlink, each name after an inode's first, and each inode
    /// with `user.*` attributes once; its owners are the ids its entries have.
    #[test]
    fn a_sets_needs_count_links_once_and_name_its_owners() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let staged = tree.join("srv/app");
        fs_err::create_dir_all(staged.join("sub")).unwrap();
        fs_err::write(staged.join("a.txt"), "a\n").unwrap();
        set_xattr(&staged.join("a.txt"), "user.origin", b"old-host");
        fs_err::hard_link(staged.join("a.txt"), staged.join("sub/b.txt")).unwrap();
        fs_err::hard_link(staged.join("a.txt"), staged.join("sub/c.txt")).unwrap();
        std::os::unix::fs::symlink("a.txt", staged.join("link")).unwrap();
        set_xattr(&staged.join("sub"), "user.kind", b"folder");
        // Outside the set: not counted.
        std::os::unix::fs::symlink("app", tree.join("srv/elsewhere")).unwrap();

        let (needs, owners) = needs_of(&tree, Path::new("/srv/app")).unwrap();
        assert_eq!(
            needs,
            TreeNeeds {
                symlinks: 1,
                hardlinks: 2,
                xattrs: 2,
            }
        );
        let meta = fs_err::metadata(&staged).unwrap();
        let ids: Vec<(bool, u32)> = owners.iter().map(|o| (o.group, o.id)).collect();
        assert_eq!(ids, [(false, meta.uid()), (true, meta.gid())]);
    }

    /// The copy writes the data and leaves the holes: the same bytes, fewer blocks.
    #[test]
    fn a_copy_keeps_the_holes_of_a_sparse_file() {
        use fs_err::os::unix::fs::FileExt;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("image");
        let source = fs_err::File::create(&from).unwrap();
        source.set_len(32 << 20).unwrap();
        source.write_all_at(b"start", 0).unwrap();
        source.write_all_at(b"middle", 20 << 20).unwrap();
        source.sync_all().unwrap();
        let to = dir.path().join("copy");
        let out = fs_err::File::create(&to).unwrap();
        copy_extents(&from, &out, 32 << 20).unwrap();
        out.sync_all().unwrap();

        assert_eq!(fs_err::read(&from).unwrap(), fs_err::read(&to).unwrap());
        let blocks = fs_err::metadata(&to).unwrap().blocks() * 512;
        assert!(
            blocks < 1 << 20,
            "the copy is dense: {blocks} bytes allocated"
        );
    }
}
