//! Errors of the bundle crate.
//!
//! Rules: a problem *with the bundle's bytes* (anything an attacker or bit rot can cause) is
//! an [`Invalid`] and reaches users as "the bundle failed verification", with its own exit
//! code. A problem *of the machine* (a path that cannot be opened, a full disk) is
//! [`Error::Io`]; `fs_err` puts the path in its message. Variants carry the facts (names,
//! offsets, expected and actual values) and keep causes in `#[source]`, not in the message.

use std::io;
use std::path::PathBuf;

use crate::digest::Sha256Digest;
use crate::index::{IndexError, PathError};
use crate::outer::OuterError;
use crate::tarfmt::TarError;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the bundle failed verification")]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error("signing the bundle failed")]
    Signing(#[from] baluchon_signature::Error),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Why a sealed (encrypted) bundle could not be made or opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("{text:?} is not a recipient: {reason}")]
    Recipient { text: String, reason: String },
    #[error("cannot decrypt with {path}: {reason}")]
    Identity {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("a sealed bundle needs at least one recipient")]
    NoRecipient,
    #[error("encryption failed: {0}")]
    Encrypt(String),
    #[error("the bundle is encrypted, and none of the given keys opens it (or its age header is damaged)")]
    Decrypt(#[source] age::DecryptError),
    #[error("the encrypted bundle is damaged or cut short")]
    Stream(#[source] io::Error),
    #[error("the bundle is encrypted: give a key that can open it (--decrypt-with)")]
    KeyNeeded,
    #[error("the encrypted bundle is for tenant {inner:?}, its envelope says {outer:?}")]
    TenantMismatch { outer: String, inner: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl From<OuterError> for Error {
    fn from(e: OuterError) -> Self {
        Self::Invalid(Invalid::Outer(e))
    }
}

impl From<TarError> for Error {
    fn from(e: TarError) -> Self {
        match e {
            // The tar stream only fails to read when the decompressor fails.
            TarError::Io(io) => Self::Invalid(Invalid::Decompress(io)),
            other => Self::Invalid(Invalid::Tar(other)),
        }
    }
}

/// Why a bundle was refused. Every variant means "do not trust this bundle".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Invalid {
    #[error("the outer tar is malformed")]
    Outer(#[source] OuterError),
    #[error("the signature over {} was not accepted", crate::layout::TAG_MANIFEST)]
    Signature(#[source] baluchon_signature::VerifyError),
    #[error("{name} is {size} bytes, over its {limit}-byte limit")]
    TooLarge { name: String, size: u64, limit: u64 },
    #[error("{file}, line {line}: {reason}")]
    Listing {
        file: &'static str,
        line: usize,
        reason: String,
    },
    #[error("{name} is not listed in {listing}")]
    Unlisted { name: String, listing: &'static str },
    #[error("{name} is listed in {listing} but absent from the bundle")]
    Absent { name: String, listing: &'static str },
    #[error("{name} is {actual} bytes, but {declared} are declared")]
    Size {
        name: String,
        declared: u64,
        actual: u64,
    },
    #[error("{name} has sha256 {actual}, but {expected} is recorded")]
    Checksum {
        name: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("bagit.txt must be exactly {:?}", crate::layout::BAGIT_TXT_CONTENT)]
    BagitDeclaration,
    #[error("bag-info.txt: {reason}")]
    BagInfo { reason: String },
    #[error("bundle.json is not a valid v1 bundle description")]
    BundleJson(#[source] serde_json::Error),
    #[error("bundle format {format:?} version {version} is not supported (this baluchon reads {} version {}); upgrade baluchon", crate::layout::FORMAT, crate::layout::FORMAT_VERSION)]
    UnsupportedFormat { format: String, version: u32 },
    #[error("bundle.json disagrees with the bag: {reason}")]
    Inconsistent { reason: String },
    #[error("the bundle is for tenant {found:?}, not {expected:?}")]
    WrongTenant { expected: String, found: String },
    #[error("the bundle is signed by {fingerprint}, which the trust file lists for {principals:?}, not for {identity:?}")]
    WrongSigner {
        identity: String,
        fingerprint: String,
        principals: String,
    },
    #[error("the bundle claims to be created at {created_at}, in the future (clock now {now})")]
    FromTheFuture {
        created_at: jiff::Timestamp,
        now: jiff::Timestamp,
    },
    #[error("the bundle exceeds a limit: {reason}")]
    Limit { reason: String },
    #[error("{}, line {line} is invalid", crate::layout::FILES_INDEX)]
    Index {
        line: u64,
        #[source]
        source: IndexError,
    },
    #[error("{} does not decompress", crate::layout::FILES_INDEX)]
    IndexDecompress(#[source] io::Error),
    #[error(
        "{}, line {line} is longer than {} bytes",
        crate::layout::FILES_INDEX,
        crate::layout::MAX_INDEX_LINE
    )]
    IndexLineTooLong { line: u64 },
    #[error("the inner tar of {} is malformed", crate::layout::FILES_PAYLOAD)]
    Tar(#[source] TarError),
    #[error("{} does not decompress", crate::layout::FILES_PAYLOAD)]
    Decompress(#[source] io::Error),
    #[error(
        "{} decompresses to more than the {declared} bytes declared",
        crate::layout::FILES_PAYLOAD
    )]
    DecompressedTooLarge { declared: u64 },
    #[error(
        "entry {path} (index line {line}): {field} is {tar} in the tar but {index} in the index"
    )]
    EntryMismatch {
        line: u64,
        path: String,
        field: &'static str,
        index: String,
        tar: String,
    },
    #[error("index line {line} lists {path}, but the tar has no more entries")]
    MissingFromTar { line: u64, path: String },
    #[error("the tar has entry {path} that the index does not list")]
    ExtraInTar { path: String },
    #[error("entry {path} (index line {line}) appears twice")]
    Duplicate { line: u64, path: String },
    #[error("entry {path} (index line {line}) is out of order: entries go depth first, each directory before its content, siblings in byte order of their names")]
    Order { line: u64, path: String },
    #[error("entry {path} (index line {line}) is not inside the directory listed before it (its parent is missing, not a directory, or already closed)")]
    Orphan { line: u64, path: String },
    #[error(
        "hardlink {path} (index line {line}) must point to an earlier regular file, not {target}"
    )]
    Hardlink {
        line: u64,
        path: String,
        target: String,
    },
    #[error("{what}: bundle.json declares {declared}, the bundle has {actual}")]
    Count {
        what: &'static str,
        declared: u64,
        actual: u64,
    },
}

/// Why an export stopped. The partial output is always removed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("{path} is not a directory (symlinks are not followed)")]
    NotADirectory { path: PathBuf },
    #[error("{name:?} cannot name an extra payload file: use data/ then letters, digits, '.', '_', '-' (100 bytes at most), once")]
    PayloadName { name: String },
    #[error("the tree was added twice to one bundle")]
    TreeTwice,
    #[error("a bundle needs its tree (data/files.tar.zst) before it is sealed")]
    NoTree,
    #[error("{path} already exists; choose another output or remove it")]
    OutputExists { path: PathBuf },
    #[error("invalid tenant name {name:?}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit")]
    InvalidTenant { name: String },
    #[error("cannot archive {dir}/{name}")]
    Name {
        dir: String,
        name: String,
        #[source]
        source: PathError,
    },
    #[error("cannot read {path}")]
    Unreadable {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} was replaced while being archived")]
    Replaced { path: String },
    #[error("{path} was removed while being archived")]
    Vanished { path: String },
    #[error(
        "{path} must be archived with its secrets left out, but {link} is a link: the file \
         would be archived as it is where the link leads"
    )]
    ReplacedThroughLink { path: String, link: String },
    #[error("{path} is nested deeper than {limit} directories")]
    TooDeep { path: String, limit: usize },
}

/// Why an extraction or a switch was refused. The destination is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    #[error("another import into {path} is running")]
    Locked { path: PathBuf },
    #[error("{path} exists and is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} already exists; pass --replace to replace it (its content is kept until you confirm)")]
    Exists { path: PathBuf },
    #[error("the previous content of {path} is still kept at {previous}; run `baluchon confirm` or `baluchon rollback` first")]
    PreviousKept { path: PathBuf, previous: PathBuf },
    #[error("there is no previous content of {path} to roll back to or to confirm")]
    NoPrevious { path: PathBuf },
    #[error("symlink {path} points outside the tree (to {target}); pass --allow-outside-symlinks to create such links anyway")]
    OutsideSymlink { path: String, target: String },
    #[error("owners missing on this host: users {users:?}, groups {groups:?}; create them, or map them with --map-owner OLD=NEW")]
    UnknownOwners {
        users: Vec<String>,
        groups: Vec<String>,
    },
    #[error("{}", filesystem_lacks(dir, lacking))]
    FilesystemLacks {
        dir: PathBuf,
        lacking: Vec<crate::probe::Lack>,
    },
}

fn filesystem_lacks(dir: &std::path::Path, lacking: &[crate::probe::Lack]) -> String {
    use crate::probe::Lack;
    let list: Vec<String> = lacking.iter().map(ToString::to_string).collect();
    let mut text = format!(
        "the filesystem holding {} cannot keep this tree as it is; it refused {}. Nothing was \
         written",
        dir.display(),
        list.join("; ")
    );
    if lacking.iter().any(|l| matches!(l, Lack::UserXattrs { .. })) {
        text.push_str(" (--drop-xattrs leaves the extended attributes out)");
    }
    if lacking.iter().any(|l| matches!(l, Lack::Owners { .. })) {
        text.push_str(" (--map-owner NAME=OTHER gives an owner's entries to another)");
    }
    text
}
