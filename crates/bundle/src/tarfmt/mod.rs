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

use crate::index::{Extent, Xattr};

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
    /// `user.` extended attributes, written as `SCHILY.xattr.NAME` PAX records.
    pub xattrs: &'a [Xattr],
}

/// Decodes a numeric header field strictly: octal digits (leading spaces, then NUL or space
/// terminated), or GNU base-256 (first byte exactly 0x80) whose value fits in 63 bits. tar-rs silently keeps the low 64 bits of a wider base-256 value, which would let
/// a header mean one size here and another in GNU tar.
pub(crate) fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first()? & 0x80 != 0 {
        if field[0] != 0x80 {
            return None;
        }
        let body = &field[1..];
        let high = body.len().saturating_sub(8);
        if body[..high].iter().any(|&b| b != 0) {
            return None;
        }
        let value = body[high..]
            .iter()
            .fold(0u64, |acc, &b| acc << 8 | u64::from(b));
        return (value <= i64::MAX as u64).then_some(value);
    }
    let text = field
        .iter()
        .position(|&b| b != b' ')
        .map_or(&field[..0], |start| &field[start..]);
    let end = text
        .iter()
        .position(|&b| b == 0 || b == b' ')
        .unwrap_or(text.len());
    let (digits, rest) = text.split_at(end);
    if digits.is_empty()
        || !digits.iter().all(|b| (b'0'..=b'7').contains(b))
        || rest.iter().any(|&b| b != 0 && b != b' ')
    {
        return None;
    }
    let value = u64::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok()?;
    (value <= i64::MAX as u64).then_some(value)
}

/// Whether a header's checksum field holds the unsigned sum of its bytes (the checksum
/// field counted as spaces). The signed variant some old tars wrote is refused.
pub(crate) fn checksum_ok(block: &[u8; BLOCK]) -> bool {
    let computed: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    tar::Header::from_byte_slice(block).cksum().ok() == Some(computed)
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

#[cfg(test)]
mod tests {
    use super::{parse_number, pax_record};

    #[test]
    fn numbers_are_strict_octal_or_bounded_base_256() {
        assert_eq!(parse_number(b"00000000012\0"), Some(10));
        assert_eq!(parse_number(b"   12 \0\0\0\0\0\0"), Some(10));
        assert_eq!(parse_number(b"0000009\0"), None, "9 is not octal");
        assert_eq!(parse_number(b"\0\0\0\0\0\0\0\0"), None, "no digits");
        let mut wide = [0u8; 12];
        wide[0] = 0x80;
        wide[11] = 5;
        assert_eq!(parse_number(&wide), Some(5));
        wide[3] = 1; // 2^64 + 5: must not wrap to 5
        assert_eq!(parse_number(&wide), None);
        assert_eq!(parse_number(&[0xff; 12]), None, "negative");
        let mut id = [0u8; 8];
        id[0] = 0x80;
        id[5] = 0x01;
        assert_eq!(parse_number(&id), Some(0x1_0000));
        let mut header = tar::Header::new_gnu();
        header.set_size(9 << 30);
        assert_eq!(parse_number(&header.as_bytes()[124..136]), Some(9 << 30));
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("path", b"a"), b"9 path=a\n");
        // 98 bytes without the length: "99 " would make 101, so the length is "101".
        let long = pax_record("path", &[b'x'; 91]);
        assert_eq!(long.len(), 101);
        assert!(long.starts_with(b"101 path="));
    }
}
