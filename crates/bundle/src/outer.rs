//! The outer, uncompressed tar that carries the bag: regular files with fixed names only.
//!
//! The writer streams the payload and patches its header (whose size is known only at the
//! end) with a positioned write. The reader checks every header and records where each
//! member's data lies, so tag files can be read before any payload byte is parsed.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

use tar::{EntryType, Header};

use crate::layout::{self, LEADING_TAG_FILES, TRAILING_TAG_FILES};
use crate::tarfmt::BLOCK;

const ZERO_BLOCK: [u8; BLOCK] = [0; BLOCK];

/// Writes the outer tar into a file, keeping track of the position.
#[derive(Debug)]
pub struct OuterWriter {
    out: BufWriter<File>,
    pos: u64,
    mtime: u64,
}

/// A member whose header is written before its size is known.
#[derive(Debug)]
pub struct OpenMember {
    name: String,
    header_at: u64,
}

impl OuterWriter {
    pub fn new(file: File, mtime: u64) -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
            mtime,
        }
    }

    fn header(&self, name: &str, size: u64) -> Header {
        let mut header = Header::new_gnu();
        // Tag file names are constants; payload names are checked against 100 bytes by the
        // bundle writer.
        let cut = name.len().min(100);
        header.as_old_mut().name[..cut].copy_from_slice(&name.as_bytes()[..cut]);
        header.set_entry_type(EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(size);
        header.set_mtime(self.mtime);
        header.set_cksum();
        header
    }

    pub fn append(&mut self, name: &str, bytes: &[u8]) -> io::Result<()> {
        self.append_from(name, bytes.len() as u64, &mut &bytes[..])
    }

    /// Appends a member of known size whose content comes from `data`.
    pub fn append_from(&mut self, name: &str, size: u64, data: &mut dyn Read) -> io::Result<()> {
        let header = self.header(name, size);
        self.out.write_all(header.as_bytes())?;
        let copied = io::copy(&mut data.take(size), &mut self.out)?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        self.pos += BLOCK as u64 + size;
        self.pad(size)
    }

    /// Starts a member of unknown size: the caller streams its data to the returned file,
    /// then calls [`OuterWriter::end_member`].
    pub fn begin_member(mut self, name: &str) -> io::Result<(OpenMember, BufWriter<File>)> {
        let header_at = self.pos;
        self.out.write_all(&ZERO_BLOCK)?;
        Ok((
            OpenMember {
                name: name.to_owned(),
                header_at,
            },
            self.out,
        ))
    }

    pub fn end_member(
        out: BufWriter<File>,
        member: OpenMember,
        size: u64,
        mtime: u64,
    ) -> io::Result<Self> {
        let mut me = Self {
            out,
            pos: member.header_at + BLOCK as u64 + size,
            mtime,
        };
        me.out.flush()?;
        let header = me.header(&member.name, size);
        me.out
            .get_ref()
            .write_all_at(header.as_bytes(), member.header_at)?;
        me.pad(size)?;
        Ok(me)
    }

    fn pad(&mut self, size: u64) -> io::Result<()> {
        let rem = (size % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&ZERO_BLOCK[..BLOCK - rem])?;
            self.pos += (BLOCK - rem) as u64;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker, flushes and syncs; returns the file and its size.
    pub fn finish(mut self) -> io::Result<(File, u64)> {
        self.out.write_all(&ZERO_BLOCK)?;
        self.out.write_all(&ZERO_BLOCK)?;
        self.pos += 2 * BLOCK as u64;
        let file = self
            .out
            .into_inner()
            .map_err(io::IntoInnerError::into_error)?;
        file.sync_all()?;
        Ok((file, self.pos))
    }
}

/// Where one member's data lies in the bundle file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub size: u64,
}

/// Why the outer tar was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OuterError {
    #[error("the bundle ends inside the member at byte {offset}")]
    Truncated { offset: u64 },
    #[error("header checksum mismatch at byte {offset}")]
    Checksum { offset: u64 },
    #[error("member {name:?} at byte {offset} is not a regular file (type {flag:?})")]
    NotAFile {
        offset: u64,
        name: String,
        flag: char,
    },
    #[error("header at byte {offset} uses a format feature baluchon never writes ({what})")]
    Unsupported { offset: u64, what: &'static str },
    #[error("unexpected member {name:?} at byte {offset} (expected {expected})")]
    Unexpected {
        offset: u64,
        name: String,
        expected: String,
    },
    #[error("the bundle has no {0} member")]
    Missing(&'static str),
    #[error("non-zero padding at byte {offset}")]
    Padding { offset: u64 },
    #[error("lone zero block at byte {offset}")]
    LoneZeroBlock { offset: u64 },
    #[error("non-zero bytes after the end-of-archive marker at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("the bundle has no end-of-archive marker")]
    NoEnd,
}

/// Whether `name` may name a payload file: `data/` then safe ASCII components.
pub fn is_payload_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("data/") else {
        return false;
    };
    !rest.is_empty()
        && rest.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

/// Reads and checks every outer header; returns members in order (payload members between
/// the leading and trailing tag files).
pub fn scan(file: &mut File) -> Result<Vec<Member>, crate::Error> {
    let file_len = file.seek(SeekFrom::End(0))?;
    let mut members = Vec::new();
    let mut pos = 0u64;
    let mut block = [0u8; BLOCK];
    loop {
        if pos + BLOCK as u64 > file_len {
            return Err(crate::Error::from(if pos == 0 {
                OuterError::Missing(layout::BAGIT_TXT)
            } else {
                OuterError::NoEnd
            }));
        }
        file.read_exact_at(&mut block, pos)?;
        if block.iter().all(|&b| b == 0) {
            let mut second = [0u8; BLOCK];
            if pos + 2 * BLOCK as u64 > file_len {
                return Err(crate::Error::from(OuterError::NoEnd));
            }
            file.read_exact_at(&mut second, pos + BLOCK as u64)?;
            if second.iter().any(|&b| b != 0) {
                return Err(crate::Error::from(OuterError::LoneZeroBlock {
                    offset: pos,
                }));
            }
            // Tools that re-tar pad to a record size with zeros; anything else is smuggled.
            let mut at = pos + 2 * BLOCK as u64;
            let mut chunk = vec![0u8; 64 * 1024];
            while at < file_len {
                let n = chunk.len().min((file_len - at) as usize);
                file.read_exact_at(&mut chunk[..n], at)?;
                if let Some(i) = chunk[..n].iter().position(|&b| b != 0) {
                    return Err(crate::Error::from(OuterError::TrailingData {
                        offset: at + i as u64,
                    }));
                }
                at += n as u64;
            }
            break;
        }
        if !crate::tarfmt::checksum_ok(&block) {
            return Err(crate::Error::from(OuterError::Checksum { offset: pos }));
        }
        let name_end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = String::from_utf8_lossy(&block[..name_end]).into_owned();
        if block[156] != b'0' {
            return Err(crate::Error::from(OuterError::NotAFile {
                offset: pos,
                name,
                flag: char::from(block[156]),
            }));
        }
        if &block[257..265] != b"ustar  \0" && &block[257..265] != b"ustar\x0000" {
            return Err(crate::Error::from(OuterError::Unsupported {
                offset: pos,
                what: "not a ustar or GNU header",
            }));
        }
        if &block[257..263] == b"ustar\0" && block[345..500].iter().any(|&b| b != 0) {
            return Err(crate::Error::from(OuterError::Unsupported {
                offset: pos,
                what: "ustar name prefix",
            }));
        }
        let Some(size) = crate::tarfmt::parse_number(&block[124..136]) else {
            return Err(crate::Error::from(OuterError::Unsupported {
                offset: pos,
                what: "invalid size field",
            }));
        };
        if let Err(expected) = expect_next(&members, &name) {
            return Err(crate::Error::from(OuterError::Unexpected {
                offset: pos,
                name,
                expected,
            }));
        }
        let data = pos + BLOCK as u64;
        let padded = size.div_ceil(BLOCK as u64) * BLOCK as u64;
        if data.checked_add(padded).is_none_or(|end| end > file_len) {
            return Err(crate::Error::from(OuterError::Truncated { offset: pos }));
        }
        // Padding is zeros: no byte of the file may escape both the hashes and this check.
        let mut padding = [0u8; BLOCK];
        let pad_len = (padded - size) as usize;
        file.read_exact_at(&mut padding[..pad_len], data + size)?;
        if padding[..pad_len].iter().any(|&b| b != 0) {
            return Err(crate::Error::from(OuterError::Padding {
                offset: data + size,
            }));
        }
        members.push(Member {
            name,
            offset: data,
            size,
        });
        pos = data + padded;
    }
    if members.last().map(|m| m.name.as_str()) != Some(layout::SIGNATURE) {
        let missing = TRAILING_TAG_FILES
            .iter()
            .chain(LEADING_TAG_FILES.iter())
            .find(|n| !members.iter().any(|m| m.name == **n))
            .copied()
            .unwrap_or(layout::SIGNATURE);
        return Err(crate::Error::from(OuterError::Missing(missing)));
    }
    Ok(members)
}

/// The member order: leading tag files, then at least one payload file, then the trailing
/// tag files. Returns a description of what was expected on mismatch.
fn expect_next(members: &[Member], name: &str) -> Result<(), String> {
    let count = members.len();
    if count < LEADING_TAG_FILES.len() {
        let want = LEADING_TAG_FILES[count];
        return if name == want {
            Ok(())
        } else {
            Err(want.to_owned())
        };
    }
    let payloads = members[LEADING_TAG_FILES.len()..]
        .iter()
        .take_while(|m| is_payload_name(&m.name))
        .count();
    let trailing_done = count - LEADING_TAG_FILES.len() - payloads;
    if trailing_done == 0 {
        if is_payload_name(name) && !members.iter().any(|m| m.name == name) {
            return Ok(());
        }
        if payloads > 0 && name == TRAILING_TAG_FILES[0] {
            return Ok(());
        }
        return Err(if payloads == 0 {
            "a payload file under data/".to_owned()
        } else {
            format!("another payload file or {}", TRAILING_TAG_FILES[0])
        });
    }
    match TRAILING_TAG_FILES.get(trailing_done) {
        Some(want) if *want == name => Ok(()),
        Some(want) => Err((*want).to_owned()),
        None => Err("the end of the archive".to_owned()),
    }
}
