//! The typed metadata of a bundle: `bundle.json` and the lines of the index (`files-index.jsonl.zst`).
//!
//! Parsing is strict on purpose (hostile-input catalogue, group E): typed structs only, unknown
//! fields and duplicate keys rejected, every path validated, each field required or forbidden
//! according to the entry type.

use std::borrow::Cow;
use std::fmt;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::digest::Sha256Digest;
use crate::layout::{MAX_NAME_BYTES, MAX_PATH_BYTES};

/// `bundle.json`: what the bundle is, whose, and the sizes and hashes of its parts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleHeader {
    pub format: String,
    pub format_version: u32,
    pub bundle_id: String,
    pub tenant: String,
    /// Per-tenant counter kept by the exporter; an importer refuses to go backwards.
    pub sequence: u64,
    pub created_at: jiff::Timestamp,
    pub producer: Producer,
    pub payload: Vec<PayloadFile>,
    pub files: FilesSummary,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Producer {
    pub tool: String,
    pub version: String,
    pub host: String,
    /// The exported directory on the source host, for the record (lossy if not UTF-8).
    pub source_path: String,
}

/// One file under `data/`, mirrored from `manifest-sha256.txt` with its size and type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PayloadFile {
    pub path: String,
    pub media_type: String,
    pub size: u64,
    pub sha256: Sha256Digest,
    /// For compressed payloads: the exact decompressed size (a decompression cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncompressed_size: Option<u64>,
}

/// Counts describing the index (`files-index.jsonl.zst`) and the tar it indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSummary {
    /// Metadata of the exported directory itself (the tree's root has no index line).
    pub root: Meta,
    /// Entries present in the tar (files, directories, links), in index order.
    pub entries: u64,
    /// Entries recorded but not archived (sockets, FIFOs, devices).
    pub skipped: u64,
    /// Regular files whose content changed while they were read.
    pub changed: u64,
    /// Sum of the logical sizes of regular files.
    pub content_bytes: u64,
}

/// Whether `name` is acceptable as a tenant name: it ends up in file names and log lines.
pub fn is_valid_tenant(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 64
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// A path relative to the tenant root: raw bytes, non-empty, no NUL, no `.`/`..`/empty
/// component, no leading or trailing `/`, at most `MAX_PATH_BYTES` long.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EntryPath(Vec<u8>);

impl EntryPath {
    pub fn new(bytes: Vec<u8>) -> Result<Self, PathError> {
        if bytes.is_empty() {
            return Err(PathError::Empty);
        }
        if bytes.len() > MAX_PATH_BYTES {
            return Err(PathError::TooLong(bytes.len()));
        }
        if bytes.contains(&0) {
            return Err(PathError::Nul);
        }
        if bytes[0] == b'/' {
            return Err(PathError::Absolute);
        }
        for component in bytes.split(|&b| b == b'/') {
            if component.len() > MAX_NAME_BYTES {
                return Err(PathError::NameTooLong(component.len()));
            }
            match component {
                b"" => return Err(PathError::EmptyComponent),
                b"." => return Err(PathError::DotComponent),
                b".." => return Err(PathError::ParentComponent),
                _ => {}
            }
        }
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Components, parents first.
    pub fn components(&self) -> impl Iterator<Item = &[u8]> {
        self.0.split(|&b| b == b'/')
    }

    /// The parent directory, or `None` at the tenant root.
    pub fn parent(&self) -> Option<EntryPath> {
        let cut = self.0.iter().rposition(|&b| b == b'/')?;
        Some(Self(self.0[..cut].to_vec()))
    }

    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|&b| b == b'/') {
            Some(cut) => &self.0[cut + 1..],
            None => &self.0,
        }
    }

    pub fn join(&self, name: &[u8]) -> Result<EntryPath, PathError> {
        let mut bytes = self.0.clone();
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        Self::new(bytes)
    }
}

impl fmt::Display for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Escaped so that newlines or control bytes in hostile names cannot forge log lines.
        write!(f, "{}", self.0.escape_ascii())
    }
}

impl fmt::Debug for EntryPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("empty path")]
    Empty,
    #[error("path of {0} bytes exceeds the limit")]
    TooLong(usize),
    #[error("a path component of {0} bytes exceeds the 255-byte limit")]
    NameTooLong(usize),
    #[error("path contains a NUL byte")]
    Nul,
    #[error("absolute path")]
    Absolute,
    #[error("path has an empty component")]
    EmptyComponent,
    #[error("path has a '.' component")]
    DotComponent,
    #[error("path has a '..' component")]
    ParentComponent,
}

/// Permission bits, owner and modification time of an archived entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// `st_mode & 0o7777`: permission, setuid, setgid and sticky bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Owner and group names on the source host; importers map owners by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub mtime: i64,
    pub mtime_nsec: u32,
    /// Extended attributes of the `user.` namespace, sorted by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
    /// Names of extended attributes outside `user.` (security, trusted, system: SELinux
    /// labels, capabilities, ACLs) that were not archived, so that their loss is visible.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs_not_archived: Vec<String>,
}

/// Most extended attributes one entry may carry.
pub const MAX_XATTRS: usize = 128;
/// Largest extended attribute value (the Linux limit).
pub const MAX_XATTR_VALUE: usize = 64 * 1024;

/// An extended attribute of the `user.` namespace. In JSON: `["user.name", "<base64>"]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Xattr {
    pub name: String,
    pub value: Vec<u8>,
}

impl Xattr {
    /// Only `user.` attributes travel: the others grant privileges (capabilities) or belong
    /// to the source host's policy (SELinux labels, ACL ids).
    pub fn is_valid_name(name: &str) -> bool {
        name.len() > 5 && name.len() <= 255 && name.starts_with("user.") && !name.contains('\0')
    }
}

impl Serialize for Xattr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (&self.name, BASE64.encode(&self.value)).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Xattr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        let (name, value) = <(String, String)>::deserialize(d)?;
        if !Xattr::is_valid_name(&name) {
            return Err(D::Error::custom(
                "xattr name must be user.* and at most 255 bytes",
            ));
        }
        let value = BASE64
            .decode(value.as_bytes())
            .map_err(|_| D::Error::custom("xattr value is not base64"))?;
        if value.len() > MAX_XATTR_VALUE {
            return Err(D::Error::custom("xattr value over 64 KiB"));
        }
        Ok(Self { name, value })
    }
}

/// Attributes must be few, sorted by name and unique (no "last one wins").
pub(crate) fn validate_xattrs(xattrs: &[Xattr]) -> Result<(), &'static str> {
    if xattrs.len() > MAX_XATTRS {
        return Err("too many extended attributes");
    }
    if xattrs.windows(2).any(|w| w[0].name >= w[1].name) {
        return Err("extended attributes must be sorted by name and unique");
    }
    Ok(())
}

/// A data extent of a sparse file: everything outside the extents reads as zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// The file got shorter while it was read: the archive holds zeros past the new end.
    Shrank,
    /// The file got longer: the archive holds the first `size` bytes.
    Grew,
    /// Same size, but its modification or change time moved while it was read.
    Modified,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SkipReason {
    Socket,
    Fifo,
    CharDevice,
    BlockDevice,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Socket => "socket",
            Self::Fifo => "FIFO",
            Self::CharDevice => "character device",
            Self::BlockDevice => "block device",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir {
        meta: Meta,
    },
    File {
        meta: Meta,
        size: u64,
        sha256: Sha256Digest,
        /// `Some` when archived as a sparse file.
        extents: Option<Vec<Extent>>,
        changed: Option<Change>,
    },
    Symlink {
        meta: Meta,
        /// Raw target bytes; may be absolute or dangling (import policy decides).
        target: Vec<u8>,
    },
    /// Another name for an earlier regular file of the same bundle.
    Hardlink {
        meta: Meta,
        target: EntryPath,
    },
    /// Seen during export but not archived (and therefore not in the tar).
    Skipped {
        reason: SkipReason,
    },
}

/// One line of the index (`files-index.jsonl.zst`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: EntryPath,
    pub kind: EntryKind,
}

impl Entry {
    pub fn meta(&self) -> Option<&Meta> {
        match &self.kind {
            EntryKind::Dir { meta }
            | EntryKind::File { meta, .. }
            | EntryKind::Symlink { meta, .. }
            | EntryKind::Hardlink { meta, .. } => Some(meta),
            EntryKind::Skipped { .. } => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EntryKind::Dir { .. } => "dir",
            EntryKind::File { .. } => "file",
            EntryKind::Symlink { .. } => "symlink",
            EntryKind::Hardlink { .. } => "hardlink",
            EntryKind::Skipped { .. } => "skipped",
        }
    }

    /// One JSON line, without the newline.
    pub fn to_json_line(&self) -> String {
        let mut wire = WireEntry::default();
        (wire.path, wire.path_b64) = split_bytes(self.path.as_bytes());
        wire.kind = Some(self.type_name().to_owned());
        if let Some(meta) = self.meta() {
            wire.mode = Some(meta.mode);
            wire.uid = Some(meta.uid);
            wire.gid = Some(meta.gid);
            wire.owner.clone_from(&meta.owner);
            wire.group.clone_from(&meta.group);
            wire.mtime = Some(meta.mtime);
            wire.mtime_nsec = Some(meta.mtime_nsec);
            wire.xattrs = (!meta.xattrs.is_empty()).then(|| meta.xattrs.clone());
            wire.xattrs_not_archived =
                (!meta.xattrs_not_archived.is_empty()).then(|| meta.xattrs_not_archived.clone());
        }
        match &self.kind {
            EntryKind::Dir { .. } => {}
            EntryKind::File {
                size,
                sha256,
                extents,
                changed,
                ..
            } => {
                wire.size = Some(*size);
                wire.sha256 = Some(*sha256);
                wire.sparse = extents
                    .as_ref()
                    .map(|list| list.iter().map(|e| [e.offset, e.len]).collect());
                wire.changed = *changed;
            }
            EntryKind::Symlink { target, .. } => {
                (wire.target, wire.target_b64) = split_bytes(target);
            }
            EntryKind::Hardlink { target, .. } => {
                (wire.target, wire.target_b64) = split_bytes(target.as_bytes());
            }
            EntryKind::Skipped { reason } => wire.reason = Some(*reason),
        }
        // Serialising plain strings and numbers cannot fail.
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// Parses and validates one line of the index (`files-index.jsonl.zst`).
    pub fn from_json_line(line: &[u8]) -> Result<Self, IndexError> {
        let wire: WireEntry = serde_json::from_slice(line).map_err(IndexError::Json)?;
        wire.into_entry()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("invalid JSON")]
    Json(#[source] serde_json::Error),
    #[error("invalid path")]
    Path(#[source] PathError),
    #[error("exactly one of {0:?} and {0:?}_b64 must be present")]
    OneOf(&'static str),
    #[error("invalid base64 in {0}_b64")]
    Base64(&'static str),
    #[error("unknown entry type {0:?}")]
    UnknownType(String),
    #[error("field {field:?} is required for type {kind}")]
    Missing {
        field: &'static str,
        kind: &'static str,
    },
    #[error("field {field:?} is not allowed for type {kind}")]
    Forbidden {
        field: &'static str,
        kind: &'static str,
    },
    #[error("invalid field {field:?}: {reason}")]
    Invalid {
        field: &'static str,
        reason: &'static str,
    },
}

fn split_bytes(bytes: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Some(text.to_owned()), None),
        Err(_) => (None, Some(BASE64.encode(bytes))),
    }
}

fn join_bytes(
    field: &'static str,
    text: Option<String>,
    b64: Option<String>,
) -> Result<Vec<u8>, IndexError> {
    match (text, b64) {
        (Some(text), None) => Ok(text.into_bytes()),
        (None, Some(b64)) => {
            let bytes = BASE64
                .decode(b64.as_bytes())
                .map_err(|_| IndexError::Base64(field))?;
            // Canonical form only: valid UTF-8 must be written as text, not base64.
            if std::str::from_utf8(&bytes).is_ok() {
                return Err(IndexError::Invalid {
                    field,
                    reason: "base64 used for a UTF-8 value",
                });
            }
            Ok(bytes)
        }
        _ => Err(IndexError::OneOf(field)),
    }
}

/// The little of an index line that the first pass over the index needs, read without
/// building the entry: the owner and group of an ordinary entry, its type, and whether it
/// has extended attributes. Anything else (a hardlink, a line without ids, one this cannot
/// read) takes the full parse, and the second pass parses every line in full anyway.
#[derive(Deserialize)]
pub(crate) struct Outline<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    uid: Option<u32>,
    gid: Option<u32>,
    #[serde(borrow)]
    owner: Option<Cow<'a, str>>,
    #[serde(borrow)]
    group: Option<Cow<'a, str>>,
    /// Only whether it is there and not empty.
    #[serde(default)]
    xattrs: Option<Vec<serde::de::IgnoredAny>>,
}

/// An owner or group as an index line gives it: a name if it has one, and the id.
pub(crate) type OwnerRef<'a> = (Option<&'a str>, u32);

impl Outline<'_> {
    pub(crate) fn parse(line: &[u8]) -> Option<Outline<'_>> {
        serde_json::from_slice(line).ok()
    }

    pub(crate) fn is_symlink(&self) -> bool {
        self.kind == "symlink"
    }

    pub(crate) fn has_xattrs(&self) -> bool {
        self.xattrs.as_ref().is_some_and(|x| !x.is_empty())
    }

    /// Owner and group of a directory, file or symlink that has both ids.
    pub(crate) fn owners(&self) -> Option<(OwnerRef<'_>, OwnerRef<'_>)> {
        matches!(&*self.kind, "dir" | "file" | "symlink").then_some(())?;
        Some((
            (self.owner.as_deref(), self.uid?),
            (self.group.as_deref(), self.gid?),
        ))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireEntry {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_b64: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtime: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mtime_nsec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<Sha256Digest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sparse: Option<Vec<[u64; 2]>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<Change>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<SkipReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xattrs: Option<Vec<Xattr>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xattrs_not_archived: Option<Vec<String>>,
}

impl WireEntry {
    fn into_entry(mut self) -> Result<Entry, IndexError> {
        let path = EntryPath::new(join_bytes("path", self.path.take(), self.path_b64.take())?)
            .map_err(IndexError::Path)?;
        let kind_name = self.kind.take().ok_or(IndexError::Missing {
            field: "type",
            kind: "any",
        })?;
        let kind: &'static str = match kind_name.as_str() {
            "dir" => "dir",
            "file" => "file",
            "symlink" => "symlink",
            "hardlink" => "hardlink",
            "skipped" => "skipped",
            _ => return Err(IndexError::UnknownType(kind_name)),
        };
        let forbid = |present: bool, field: &'static str| {
            if present {
                Err(IndexError::Forbidden { field, kind })
            } else {
                Ok(())
            }
        };
        fn need<T>(
            value: Option<T>,
            field: &'static str,
            kind: &'static str,
        ) -> Result<T, IndexError> {
            value.ok_or(IndexError::Missing { field, kind })
        }
        if kind == "skipped" {
            for (present, field) in [
                (self.mode.is_some(), "mode"),
                (self.uid.is_some(), "uid"),
                (self.gid.is_some(), "gid"),
                (self.owner.is_some(), "owner"),
                (self.group.is_some(), "group"),
                (self.mtime.is_some(), "mtime"),
                (self.mtime_nsec.is_some(), "mtime_nsec"),
                (self.size.is_some(), "size"),
                (self.sha256.is_some(), "sha256"),
                (self.sparse.is_some(), "sparse"),
                (self.changed.is_some(), "changed"),
                (self.target.is_some() || self.target_b64.is_some(), "target"),
                (self.xattrs.is_some(), "xattrs"),
                (self.xattrs_not_archived.is_some(), "xattrs_not_archived"),
            ] {
                forbid(present, field)?;
            }
            let reason = need(self.reason, "reason", kind)?;
            return Ok(Entry {
                path,
                kind: EntryKind::Skipped { reason },
            });
        }
        forbid(self.reason.is_some(), "reason")?;
        let mode = need(self.mode, "mode", kind)?;
        if mode > 0o7777 {
            return Err(IndexError::Invalid {
                field: "mode",
                reason: "more than permission bits",
            });
        }
        let mtime_nsec = need(self.mtime_nsec, "mtime_nsec", kind)?;
        if mtime_nsec >= 1_000_000_000 {
            return Err(IndexError::Invalid {
                field: "mtime_nsec",
                reason: "not below one second",
            });
        }
        let meta = Meta {
            mode,
            uid: need(self.uid, "uid", kind)?,
            gid: need(self.gid, "gid", kind)?,
            owner: self.owner,
            group: self.group,
            mtime: need(self.mtime, "mtime", kind)?,
            mtime_nsec,
            xattrs: self.xattrs.unwrap_or_default(),
            xattrs_not_archived: self.xattrs_not_archived.unwrap_or_default(),
        };
        validate_xattrs(&meta.xattrs).map_err(|reason| IndexError::Invalid {
            field: "xattrs",
            reason,
        })?;
        let is_file = kind == "file";
        forbid(!is_file && self.size.is_some(), "size")?;
        forbid(!is_file && self.sha256.is_some(), "sha256")?;
        forbid(!is_file && self.sparse.is_some(), "sparse")?;
        forbid(!is_file && self.changed.is_some(), "changed")?;
        let has_target = self.target.is_some() || self.target_b64.is_some();
        forbid(matches!(kind, "dir" | "file") && has_target, "target")?;
        let kind = match kind {
            "dir" => EntryKind::Dir { meta },
            "file" => {
                let size = need(self.size, "size", kind)?;
                let extents = self
                    .sparse
                    .map(|list| validate_extents(&list, size))
                    .transpose()?;
                EntryKind::File {
                    meta,
                    size,
                    sha256: need(self.sha256, "sha256", kind)?,
                    extents,
                    changed: self.changed,
                }
            }
            "symlink" => {
                let target = join_bytes("target", self.target, self.target_b64)?;
                if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH_BYTES {
                    return Err(IndexError::Invalid {
                        field: "target",
                        reason: "empty, too long or contains NUL",
                    });
                }
                EntryKind::Symlink { meta, target }
            }
            _ => EntryKind::Hardlink {
                meta,
                target: EntryPath::new(join_bytes("target", self.target, self.target_b64)?)
                    .map_err(IndexError::Path)?,
            },
        };
        Ok(Entry { path, kind })
    }
}

/// Extents must be ordered, non-overlapping, non-empty and inside the file.
fn validate_extents(list: &[[u64; 2]], size: u64) -> Result<Vec<Extent>, IndexError> {
    let bad = |reason| IndexError::Invalid {
        field: "sparse",
        reason,
    };
    if list.len() > crate::layout::MAX_SPARSE_SEGMENTS {
        return Err(bad("too many extents"));
    }
    let mut end_of_previous = 0u64;
    let mut out = Vec::with_capacity(list.len());
    for &[offset, len] in list {
        let end = offset.checked_add(len).ok_or(bad("extent overflows"))?;
        if len == 0 || offset < end_of_previous || end > size {
            return Err(bad(
                "extents must be non-empty, ordered, disjoint and inside the file",
            ));
        }
        end_of_previous = end;
        out.push(Extent { offset, len });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> Meta {
        Meta {
            mode: 0o644,
            uid: 1000,
            gid: 1000,
            owner: Some("alice".into()),
            group: None,
            mtime: 1_700_000_000,
            mtime_nsec: 5,
            xattrs: vec![Xattr {
                name: "user.mime_type".into(),
                value: b"text/plain\0\xff".to_vec(),
            }],
            xattrs_not_archived: vec!["security.selinux".into()],
        }
    }

    #[test]
    fn entries_round_trip_through_json_lines() {
        let entries = [
            Entry {
                path: EntryPath::new(b"a/\xffname\n".to_vec()).unwrap(),
                kind: EntryKind::File {
                    meta: meta(),
                    size: 10,
                    sha256: Sha256Digest::of(b"x"),
                    extents: Some(vec![Extent { offset: 2, len: 3 }]),
                    changed: Some(Change::Shrank),
                },
            },
            Entry {
                path: EntryPath::new(b"l".to_vec()).unwrap(),
                kind: EntryKind::Symlink {
                    meta: meta(),
                    target: b"/abs\xfe".to_vec(),
                },
            },
            Entry {
                path: EntryPath::new(b"s".to_vec()).unwrap(),
                kind: EntryKind::Skipped {
                    reason: SkipReason::Fifo,
                },
            },
        ];
        for entry in entries {
            let line = entry.to_json_line();
            assert!(!line.contains('\n'));
            assert_eq!(Entry::from_json_line(line.as_bytes()).unwrap(), entry);
        }
    }

    /// The first pass's outline of a line gives the owners the full parse gives, or sends
    /// the line to the full parse.
    #[test]
    fn outline_owners_agree_with_the_full_parse() {
        let named = meta();
        let unnamed = Meta {
            owner: None,
            group: Some("g \"quoted\" \u{e9}".into()),
            uid: 7,
            gid: 8,
            ..meta()
        };
        let target = EntryPath::new(b"a".to_vec()).unwrap();
        let kinds = |meta: Meta| {
            [
                EntryKind::Dir { meta: meta.clone() },
                EntryKind::File {
                    meta: meta.clone(),
                    size: 1,
                    sha256: Sha256Digest::of(b"x"),
                    extents: None,
                    changed: None,
                },
                EntryKind::Symlink {
                    meta: meta.clone(),
                    target: b"t".to_vec(),
                },
                EntryKind::Hardlink {
                    meta,
                    target: target.clone(),
                },
            ]
        };
        for kind in kinds(named).into_iter().chain(kinds(unnamed)) {
            let entry = Entry {
                path: EntryPath::new(b"d/x".to_vec()).unwrap(),
                kind,
            };
            let line = entry.to_json_line();
            let outline = Outline::parse(line.as_bytes()).unwrap();
            let meta = entry.meta().unwrap();
            let expected = (
                (meta.owner.as_deref(), meta.uid),
                (meta.group.as_deref(), meta.gid),
            );
            match entry.kind {
                // Its target must be read in full.
                EntryKind::Hardlink { .. } => assert_eq!(outline.owners(), None),
                _ => assert_eq!(outline.owners(), Some(expected), "{line}"),
            }
        }
        let skipped = Entry {
            path: EntryPath::new(b"s".to_vec()).unwrap(),
            kind: EntryKind::Skipped {
                reason: SkipReason::Fifo,
            },
        };
        let line = skipped.to_json_line();
        assert_eq!(Outline::parse(line.as_bytes()).unwrap().owners(), None);
        assert!(Outline::parse(b"{\"type\":\"file\",\"uid\":\"0\"}").is_none());
    }

    #[test]
    fn hostile_paths_are_rejected() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"a/../../x",
            b"..",
            b"a//b",
            b"a/./b",
            b"a/",
            b"a\0b",
        ] {
            assert!(
                EntryPath::new(bad.to_vec()).is_err(),
                "{:?}",
                bad.escape_ascii()
            );
        }
        assert!(EntryPath::new(b".../x".to_vec()).is_ok());
    }

    #[test]
    fn e2_duplicate_keys_are_rejected() {
        let line = r#"{"path":"a","type":"dir","mode":493,"mode":511,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0}"#;
        assert!(matches!(
            Entry::from_json_line(line.as_bytes()),
            Err(IndexError::Json(_))
        ));
    }

    #[test]
    fn e3_unknown_fields_are_rejected() {
        let line = r#"{"path":"a","type":"dir","mode":493,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0,"preserve_ownership":true}"#;
        assert!(matches!(
            Entry::from_json_line(line.as_bytes()),
            Err(IndexError::Json(_))
        ));
    }

    #[test]
    fn e5_numbers_out_of_type_are_rejected() {
        for size in ["-1", "1.5", "1e999", "18446744073709551616"] {
            let line = format!(
                r#"{{"path":"a","type":"file","mode":420,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0,"size":{size},"sha256":"{}"}}"#,
                Sha256Digest::of(b"")
            );
            assert!(Entry::from_json_line(line.as_bytes()).is_err(), "{size}");
        }
    }

    #[test]
    fn e6_both_path_forms_or_bad_base64_are_rejected() {
        let both = r#"{"path":"a","path_b64":"YQ==","type":"dir","mode":493,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0}"#;
        assert!(matches!(
            Entry::from_json_line(both.as_bytes()),
            Err(IndexError::OneOf("path"))
        ));
        let bad =
            r#"{"path_b64":"!!","type":"dir","mode":493,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0}"#;
        assert!(matches!(
            Entry::from_json_line(bad.as_bytes()),
            Err(IndexError::Base64("path"))
        ));
        let dotdot =
            r#"{"path":"../x","type":"dir","mode":493,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0}"#;
        assert!(matches!(
            Entry::from_json_line(dotdot.as_bytes()),
            Err(IndexError::Path(_))
        ));
    }

    #[test]
    fn e8_fields_of_another_type_are_rejected() {
        let dir_with_size = format!(
            r#"{{"path":"a","type":"dir","mode":493,"uid":0,"gid":0,"mtime":0,"mtime_nsec":0,"size":1,"sha256":"{}"}}"#,
            Sha256Digest::of(b"")
        );
        assert!(matches!(
            Entry::from_json_line(dir_with_size.as_bytes()),
            Err(IndexError::Forbidden { field: "size", .. })
        ));
    }

    #[test]
    fn e1_deep_nesting_is_rejected_without_overflow() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(Entry::from_json_line(deep.as_bytes()).is_err());
        assert!(serde_json::from_str::<BundleHeader>(&deep).is_err());
    }
}
