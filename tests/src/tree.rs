//! The fidelity tree: every kind of entry and metadata a round trip must preserve, and a
//! comparison of two trees that reports every difference.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD};
use sha2::{Digest, Sha256};

/// Size of the large sparse file: over 8 GiB, so its size needs more than ustar's 11 octal
/// digits.
pub const HUGE_SPARSE: u64 = 8 * 1024 * 1024 * 1024 + 4096;

/// Builds the fidelity tree under `root` (which must not exist). Ownership changes need
/// root; without it they are left out.
pub fn build_fidelity_tree(root: &Path, with_huge_sparse: bool) {
    let w = |p: &str, data: &[u8]| {
        let path = root.join(p);
        fs_err::create_dir_all(path.parent().unwrap()).unwrap();
        fs_err::write(path, data).unwrap();
    };
    fs_err::create_dir_all(root).unwrap();
    w("plain.txt", b"hello\n");
    w("empty", b"");
    w("exactly-512", &[7u8; 512]);
    w(
        "binary.bin",
        &(0..=255u8).cycle().take(70_000).collect::<Vec<_>>(),
    );
    w("modes/setuid", b"#!/bin/sh\n");
    w("modes/setgid", b"#!/bin/sh\n");
    w("modes/private", b"secret\n");
    w("modes/exec", b"#!/bin/sh\n");
    for (p, mode) in [
        ("modes/setuid", 0o4755),
        ("modes/setgid", 0o2755),
        ("modes/private", 0o600),
        ("modes/exec", 0o755),
    ] {
        fs_err::set_permissions(root.join(p), std::fs::Permissions::from_mode(mode)).unwrap();
    }
    fs_err::create_dir_all(root.join("modes/sticky-dir")).unwrap();
    fs_err::set_permissions(
        root.join("modes/sticky-dir"),
        std::fs::Permissions::from_mode(0o1777),
    )
    .unwrap();
    fs_err::create_dir_all(root.join("empty-dir/nested-empty")).unwrap();

    // Names that are not UTF-8, or that hold a newline, a backslash or a space.
    let odd = root.join("odd");
    fs_err::create_dir_all(&odd).unwrap();
    for name in [
        &b"caf\xe9"[..],
        b"line\nbreak",
        b"back\\slash",
        b"with space",
        b"...",
    ] {
        fs_err::write(odd.join(OsStr::from_bytes(name)), name).unwrap();
    }

    // A path over 100 bytes and a symlink target over 100 bytes (PAX path and linkpath).
    let long_dir = format!("{}/{}", "d".repeat(60), "e".repeat(60));
    w(&format!("{long_dir}/{}", "f".repeat(80)), b"deep\n");
    fs_err::os::unix::fs::symlink(
        format!("{long_dir}/{}", "f".repeat(80)),
        root.join("long-target-link"),
    )
    .unwrap();

    fs_err::os::unix::fs::symlink("plain.txt", root.join("link-relative")).unwrap();
    fs_err::os::unix::fs::symlink("/etc/hostname", root.join("link-absolute")).unwrap();
    fs_err::os::unix::fs::symlink("no/such/target", root.join("link-dangling")).unwrap();
    fs_err::hard_link(root.join("plain.txt"), root.join("hardlink-to-plain")).unwrap();
    fs_err::hard_link(root.join("binary.bin"), root.join("odd/hardlink-binary")).unwrap();

    write_sparse(
        &root.join("sparse-small"),
        64 << 20,
        &[0, 20 << 20, (64 << 20) - 10],
    );
    // 30 extents: more than the 4 a GNU sparse header holds, so extension blocks follow it.
    let many: Vec<u64> = (0..30).map(|i| (i * 2 + 1) << 20).collect();
    write_sparse(&root.join("sparse-many"), 64 << 20, &many);
    if with_huge_sparse {
        write_sparse(
            &root.join("sparse-huge"),
            HUGE_SPARSE,
            &[0, 4 << 30, HUGE_SPARSE - 100],
        );
    }

    // Entries that cannot be archived: recorded as skipped.
    std::os::unix::net::UnixListener::bind(root.join("app.sock")).unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("queue.fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();

    // Extended attributes: user.* travel (binary values too); trusted.* (root only) do not,
    // and are recorded as not archived.
    let set = |p: &str, name: &str, value: &[u8]| {
        rustix::fs::setxattr(root.join(p), name, value, rustix::fs::XattrFlags::empty()).unwrap();
    };
    set("plain.txt", "user.mime_type", b"text/plain");
    set("binary.bin", "user.checksum", &[0, 1, 2, 255, 254]);
    set("empty-dir", "user.purpose", b"kept empty on purpose");
    if rustix::process::geteuid().is_root() {
        set("exactly-512", "trusted.baluchon-test", b"never exported");
    }

    if rustix::process::geteuid().is_root() {
        // A user that has a name, and ids that have none.
        std::os::unix::fs::chown(root.join("plain.txt"), Some(1), Some(1)).unwrap();
        std::os::unix::fs::chown(root.join("modes/private"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::lchown(root.join("link-relative"), Some(4321), Some(4321)).unwrap();
    }

    // Distinct times with nanoseconds, directories last (writing into them moves theirs).
    let mut paths: Vec<_> = walk(root).into_keys().collect();
    paths.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for (i, rel) in paths.iter().enumerate() {
        let secs = 1_600_000_000 + i as i64 * 3600;
        let ts = Timespec {
            tv_sec: secs,
            tv_nsec: (i as i64 * 7919) % 1_000_000_000,
        };
        rustix::fs::utimensat(
            CWD,
            root.join(OsStr::from_bytes(rel)),
            &Timestamps {
                last_access: ts,
                last_modification: ts,
            },
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .unwrap();
    }
}

fn write_sparse(path: &Path, size: u64, data_at: &[u64]) {
    use std::os::unix::fs::FileExt;
    let file = fs_err::File::create(path).unwrap().into_parts().0;
    file.set_len(size).unwrap();
    for (i, &at) in data_at.iter().enumerate() {
        file.write_all_at(format!("data block {i}\n").as_bytes(), at)
            .unwrap();
    }
}

/// What a round trip must keep for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: (i64, i64),
    pub sha256: Option<String>,
    pub target: Option<Vec<u8>>,
    /// Stands for the inode: entries sharing one get the same value.
    pub inode_group: Option<Vec<u8>>,
    pub sparse: bool,
    /// `user.` extended attributes, sorted.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

/// The `user.` extended attributes of a path (not followed if a symlink), sorted.
pub fn user_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let mut names = vec![0u8; 64 * 1024];
    let len = rustix::fs::llistxattr(path, &mut names[..]).unwrap_or(0);
    let mut out: Vec<(String, Vec<u8>)> = names[..len]
        .split(|&b| b == 0)
        .filter_map(|n| std::str::from_utf8(n).ok())
        .filter(|n| n.starts_with("user."))
        .map(|name| {
            let mut value = vec![0u8; 64 * 1024];
            let n = rustix::fs::lgetxattr(path, name, &mut value[..]).unwrap();
            value.truncate(n);
            (name.to_owned(), value)
        })
        .collect();
    out.sort();
    out
}

/// Every entry below `root` (not `root` itself), keyed by relative path bytes.
pub fn walk(root: &Path) -> BTreeMap<Vec<u8>, Observed> {
    let mut out = BTreeMap::new();
    let mut first_by_inode: BTreeMap<(u64, u64), Vec<u8>> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for item in fs_err::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .as_os_str()
                .as_bytes()
                .to_vec();
            let meta = fs_err::symlink_metadata(&path).unwrap();
            let ft = meta.file_type();
            let kind = if ft.is_dir() {
                stack.push(path.clone());
                "dir"
            } else if ft.is_symlink() {
                "symlink"
            } else if ft.is_file() {
                "file"
            } else {
                "special"
            };
            let inode_group = (ft.is_file() && meta.nlink() > 1).then(|| {
                first_by_inode
                    .entry((meta.dev(), meta.ino()))
                    .or_insert_with(|| rel.clone())
                    .clone()
            });
            out.insert(
                rel,
                Observed {
                    kind,
                    mode: meta.mode() & 0o7777,
                    uid: meta.uid(),
                    gid: meta.gid(),
                    size: if ft.is_file() { meta.size() } else { 0 },
                    mtime: (meta.mtime(), meta.mtime_nsec()),
                    sha256: ft.is_file().then(|| content_digest(&path, meta.size())),
                    target: ft.is_symlink().then(|| {
                        fs_err::read_link(&path)
                            .unwrap()
                            .as_os_str()
                            .as_bytes()
                            .to_vec()
                    }),
                    inode_group,
                    sparse: ft.is_file() && meta.blocks() * 512 < meta.size(),
                    xattrs: user_xattrs(&path),
                },
            );
        }
    }
    // Which member of a hardlink group was met first depends on readdir order: normalise.
    let mut groups: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for (path, obs) in &out {
        if let Some(g) = &obs.inode_group {
            let smallest = groups.entry(g.clone()).or_insert_with(|| path.clone());
            if path < smallest {
                *smallest = path.clone();
            }
        }
    }
    for obs in out.values_mut() {
        if let Some(g) = &obs.inode_group {
            obs.inode_group = Some(groups[g].clone());
        }
    }
    out
}

/// Files above this size are compared by [`zero_run_digest`]: hashing their logical content
/// would read gigabytes of holes.
pub const FULL_HASH_LIMIT: u64 = 1 << 30;

fn content_digest(path: &Path, size: u64) -> String {
    if size > FULL_HASH_LIMIT {
        zero_run_digest(path, size)
    } else {
        sha256_file(path)
    }
}

/// A digest of the content that depends only on the bytes, not on where the filesystem puts
/// holes: maximal runs of zero bytes are hashed by length, other bytes as they are; only the
/// data regions reported by `SEEK_DATA` are read.
pub fn zero_run_digest(path: &Path, size: u64) -> String {
    use std::os::unix::fs::FileExt;
    let file = fs_err::File::open(path).unwrap().into_parts().0;
    let mut hasher = Sha256::new();
    let mut zeros = 0u64;
    let mut cursor = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while cursor < size {
        let data = match rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(cursor)) {
            Ok(d) => d.min(size),
            Err(_) => size,
        };
        zeros += data - cursor;
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(data))
            .unwrap()
            .min(size);
        let mut at = data;
        while at < hole {
            let n = file
                .read_at(&mut buf[..((hole - at) as usize).min(1 << 20)], at)
                .unwrap();
            for &b in &buf[..n] {
                if b == 0 {
                    zeros += 1;
                } else {
                    if zeros > 0 {
                        hasher.update(format!("Z{zeros};"));
                        zeros = 0;
                    }
                    hasher.update([b]);
                }
            }
            at += n as u64;
        }
        cursor = hole;
    }
    hasher.update(format!("Z{zeros};"));
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_file(path: &Path) -> String {
    let mut file = fs_err::File::open(path).unwrap();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Lists every difference between two observed trees, one line each.
pub fn differences(
    left: &BTreeMap<Vec<u8>, Observed>,
    right: &BTreeMap<Vec<u8>, Observed>,
    compare_nanoseconds: bool,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, l) in left {
        let shown = path.escape_ascii().to_string();
        let Some(r) = right.get(path) else {
            diffs.push(format!("{shown}: missing on the right"));
            continue;
        };
        let mut l = l.clone();
        let mut r = r.clone();
        if !compare_nanoseconds {
            l.mtime.1 = 0;
            r.mtime.1 = 0;
        }
        if l.kind == "symlink" {
            // Symlink permission bits are meaningless on Linux.
            l.mode = 0;
            r.mode = 0;
        }
        if l != r {
            diffs.push(format!("{shown}: {l:?} != {r:?}"));
        }
    }
    for path in right.keys().filter(|p| !left.contains_key(*p)) {
        diffs.push(format!("{}: extra on the right", path.escape_ascii()));
    }
    diffs
}
