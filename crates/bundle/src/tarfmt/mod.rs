//! The inner tar of `data/files.tar.zst`: a writer and a strict reader for exactly the subset
//! baluchon produces.
//!
//! tar-rs supplies the header layouts and numeric field codecs; the block loop is ours. Its
//! `Entries` iterator either skips the sparse map (raw mode) or reads PAX and GNU long-name
//! bodies with no size cap, ends silently at a lone zero block and leaves trailing bytes
//! unread; a bundle reader needs each of those to be an error.

mod read;
mod write;

pub use read::{Content, TarEntry, TarError, TarKind, TarReader};
pub use write::TarWriter;

use crate::index::Extent;

pub const BLOCK: usize = 512;
const ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];
const USTAR_NAME_LEN: usize = 100;

/// What an entry is, as written to the tar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind<'a> {
    Dir,
    /// `extents` is `Some` for a sparse file (stored as a GNU sparse entry).
    File {
        size: u64,
        extents: Option<&'a [Extent]>,
    },
    Symlink {
        target: &'a [u8],
    },
    Hardlink {
        target: &'a [u8],
    },
}

/// Header metadata of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TarMeta<'a> {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub owner: Option<&'a str>,
    pub group: Option<&'a str>,
    /// Whole seconds; the index keeps the nanoseconds.
    pub mtime: i64,
}

/// One PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // space, '=', newline
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}
