//! A strict reader for the inner tar. Anything baluchon does not write is an error.

use std::io::{self, BufRead};

use tar::Header;

use super::{parse_number, BLOCK, USTAR_NAME_LEN};
use crate::index::{EntryPath, Extent, PathError};
use crate::layout::{MAX_PATH_BYTES, MAX_PAX_HEADER, MAX_SPARSE_SEGMENTS};

/// Why the inner tar was refused. `offset` is the byte offset of the offending header in the
/// decompressed stream.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TarError {
    #[error("reading the tar stream failed")]
    Io(#[source] io::Error),
    #[error("the tar stream ends at byte {offset} without its end-of-archive marker")]
    Truncated { offset: u64 },
    #[error("lone zero block at byte {offset} (an end-of-archive marker is two)")]
    LoneZeroBlock { offset: u64 },
    #[error("data follows the end-of-archive marker at byte {offset}")]
    TrailingData { offset: u64 },
    #[error("header checksum mismatch at byte {offset}")]
    Checksum { offset: u64 },
    #[error("header at byte {offset} is neither ustar nor a GNU sparse header")]
    Magic { offset: u64 },
    #[error("entry type {flag:?} at byte {offset} is not allowed (only files, directories, symlinks, hardlinks)")]
    EntryType { offset: u64, flag: char },
    #[error("PAX global header at byte {offset} is not allowed")]
    GlobalPax { offset: u64 },
    #[error("GNU long-name header at byte {offset} is not allowed (baluchon writes PAX)")]
    GnuLongName { offset: u64 },
    #[error("PAX header at byte {offset} is {size} bytes, over the {MAX_PAX_HEADER}-byte limit")]
    PaxTooLarge { offset: u64, size: u64 },
    #[error("malformed PAX header at byte {offset}: {reason}")]
    PaxMalformed { offset: u64, reason: String },
    #[error("PAX header at byte {offset} has unsupported key {key:?}")]
    PaxKey { offset: u64, key: String },
    #[error("two extended headers in a row at byte {offset}")]
    TwoExtensionHeaders { offset: u64 },
    #[error("extended header at byte {offset} is not followed by an entry")]
    DanglingExtension { offset: u64 },
    #[error("PAX size {pax} disagrees with the header size {header} at byte {offset}")]
    PaxSizeMismatch { offset: u64, pax: u64, header: u64 },
    #[error("invalid numeric field {field} at byte {offset}")]
    Numeric { offset: u64, field: &'static str },
    #[error("entry at byte {offset} has an invalid path ({path})")]
    Path {
        offset: u64,
        path: String,
        #[source]
        source: PathError,
    },
    #[error("entry {path} at byte {offset}: a name ending in '/' must be a directory, and a directory's must")]
    TrailingSlash { offset: u64, path: String },
    #[error("entry at byte {offset} uses the ustar prefix field, which baluchon never writes")]
    Prefix { offset: u64 },
    #[error("{kind} entry {path} at byte {offset} carries {size} bytes of data")]
    DataOnNonFile {
        offset: u64,
        path: String,
        kind: &'static str,
        size: u64,
    },
    #[error("link entry {path} at byte {offset} has an empty or invalid target")]
    LinkTarget { offset: u64, path: String },
    #[error("sparse map of {path} at byte {offset} is invalid: {reason}")]
    Sparse {
        offset: u64,
        path: String,
        reason: &'static str,
    },
    #[error("non-zero padding after the data of the entry at byte {offset}")]
    Padding { offset: u64 },
}

impl From<io::Error> for TarError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The type-specific part of a tar entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TarKind {
    Dir,
    File {
        size: u64,
        extents: Option<Vec<Extent>>,
    },
    Symlink {
        target: Vec<u8>,
    },
    Hardlink {
        target: Vec<u8>,
    },
}

/// One entry's header, after PAX records are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TarEntry {
    pub offset: u64,
    pub path: EntryPath,
    pub kind: TarKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub owner: Vec<u8>,
    pub group: Vec<u8>,
    pub mtime: i64,
    /// `user.` extended attributes, in the order of their PAX records.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Bytes of data that follow the header in the tar (the extents only, if sparse).
    stored: u64,
}

/// A piece of a file's logical content, in order.
#[derive(Debug)]
pub enum Content<'a> {
    /// `offset` in the file; `at` in the tar stream.
    Data {
        offset: u64,
        at: u64,
        bytes: &'a [u8],
    },
    Hole {
        len: u64,
    },
}

/// Reads entries one at a time; each entry's content must be read before the next header.
/// Content is handed out straight from the source's buffer, without a copy.
#[derive(Debug)]
pub struct TarReader<R> {
    inner: R,
    offset: u64,
}

#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    uname: Option<Vec<u8>>,
    gname: Option<Vec<u8>>,
    mtime: Option<i64>,
    xattrs: Vec<(String, Vec<u8>)>,
}

impl<R: BufRead> TarReader<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, offset: 0 }
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next entry, or `None` after the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>, TarError> {
        let mut pax: Option<(u64, Pax)> = None;
        loop {
            let offset = self.offset;
            let mut block = [0u8; BLOCK];
            if !self.read_block(&mut block)? {
                return Err(match pax {
                    Some((at, _)) => TarError::DanglingExtension { offset: at },
                    None => TarError::Truncated { offset },
                });
            }
            if block.iter().all(|&b| b == 0) {
                if let Some((at, _)) = pax {
                    return Err(TarError::DanglingExtension { offset: at });
                }
                let mut second = [0u8; BLOCK];
                if !self.read_block(&mut second)? {
                    return Err(TarError::Truncated {
                        offset: self.offset,
                    });
                }
                if second.iter().any(|&b| b != 0) {
                    return Err(TarError::LoneZeroBlock { offset });
                }
                return Ok(None);
            }
            check_checksum(&block, offset)?;
            let flag = block[156];
            match flag {
                b'x' => {
                    if pax.is_some() {
                        return Err(TarError::TwoExtensionHeaders { offset });
                    }
                    check_ustar(&block, offset)?;
                    let size = numeric(&block[124..136], offset, "size")?;
                    if size > MAX_PAX_HEADER {
                        return Err(TarError::PaxTooLarge { offset, size });
                    }
                    let mut body = vec![0u8; size as usize];
                    self.read_exact_counted(&mut body)?;
                    self.skip_padding(size, offset)?;
                    pax = Some((offset, parse_pax(&body, offset)?));
                }
                b'g' => return Err(TarError::GlobalPax { offset }),
                b'L' | b'K' => return Err(TarError::GnuLongName { offset }),
                b'0' | b'5' | b'2' | b'1' | b'S' => {
                    let pax = pax.map(|(_, p)| p).unwrap_or_default();
                    return self.parse_entry(&block, offset, pax).map(Some);
                }
                other => {
                    return Err(TarError::EntryType {
                        offset,
                        flag: char::from(other),
                    })
                }
            }
        }
    }

    fn parse_entry(
        &mut self,
        block: &[u8; BLOCK],
        offset: u64,
        pax: Pax,
    ) -> Result<TarEntry, TarError> {
        let header = Header::from_byte_slice(block);
        let flag = block[156];
        if flag == b'S' {
            if &block[257..265] != b"ustar  \0" {
                return Err(TarError::Magic { offset });
            }
        } else {
            check_ustar(block, offset)?;
            if block[345..500].iter().any(|&b| b != 0) {
                return Err(TarError::Prefix { offset });
            }
        }
        let mut raw_path = pax
            .path
            .unwrap_or_else(|| field_bytes(&block[..USTAR_NAME_LEN]));
        let lossy = |p: &[u8]| p.escape_ascii().to_string();
        let slash = raw_path.last() == Some(&b'/');
        if slash != (flag == b'5') {
            return Err(TarError::TrailingSlash {
                offset,
                path: lossy(&raw_path),
            });
        }
        if slash {
            raw_path.pop();
        }
        let shown = lossy(&raw_path);
        let path = EntryPath::new(raw_path).map_err(|source| TarError::Path {
            offset,
            path: shown.clone(),
            source,
        })?;

        // The stored size: for sparse entries the logical size is in the GNU realsize field.
        let header_size = numeric(&block[124..136], offset, "size")?;
        if let Some(pax_size) = pax.size {
            if pax_size != header_size {
                return Err(TarError::PaxSizeMismatch {
                    offset,
                    pax: pax_size,
                    header: header_size,
                });
            }
        }
        let mode = numeric(&block[100..108], offset, "mode")?;
        if mode > 0o7777 {
            return Err(TarError::Numeric {
                offset,
                field: "mode",
            });
        }
        let id = |value: Option<u32>, parsed: &[u8], field| match value {
            Some(v) => Ok(v),
            None => u32::try_from(numeric(parsed, offset, field)?)
                .map_err(|_| TarError::Numeric { offset, field }),
        };
        let uid = id(pax.uid, &block[108..116], "uid")?;
        let gid = id(pax.gid, &block[116..124], "gid")?;
        let mtime = match pax.mtime {
            Some(t) => t,
            None => i64::try_from(numeric(&block[136..148], offset, "mtime")?).map_err(|_| {
                TarError::Numeric {
                    offset,
                    field: "mtime",
                }
            })?,
        };
        let owner = pax
            .uname
            .unwrap_or_else(|| field_bytes(header.username_bytes().unwrap_or_default()));
        let group = pax
            .gname
            .unwrap_or_else(|| field_bytes(header.groupname_bytes().unwrap_or_default()));

        let link_target = || -> Result<Vec<u8>, TarError> {
            let target = pax
                .linkpath
                .clone()
                .unwrap_or_else(|| field_bytes(&block[157..257]));
            if target.is_empty() || target.contains(&0) || target.len() > MAX_PATH_BYTES {
                return Err(TarError::LinkTarget {
                    offset,
                    path: shown.clone(),
                });
            }
            Ok(target)
        };
        let no_data = |kind: &'static str| {
            if header_size == 0 {
                Ok(())
            } else {
                Err(TarError::DataOnNonFile {
                    offset,
                    path: shown.clone(),
                    kind,
                    size: header_size,
                })
            }
        };
        let kind = match flag {
            b'5' => {
                no_data("directory")?;
                TarKind::Dir
            }
            b'2' => {
                no_data("symlink")?;
                TarKind::Symlink {
                    target: link_target()?,
                }
            }
            b'1' => {
                no_data("hardlink")?;
                TarKind::Hardlink {
                    target: link_target()?,
                }
            }
            b'0' => TarKind::File {
                size: header_size,
                extents: None,
            },
            _ => {
                let (size, extents) = self.read_sparse_map(block, offset, header_size, &shown)?;
                TarKind::File {
                    size,
                    extents: Some(extents),
                }
            }
        };
        Ok(TarEntry {
            offset,
            path,
            kind,
            mode: mode as u32,
            uid,
            gid,
            owner,
            group,
            mtime,
            xattrs: pax.xattrs,
            stored: header_size,
        })
    }

    /// Reads the GNU sparse map (header slots, then extension blocks) and checks it against
    /// the stored size. Returns the logical size and the non-empty extents.
    fn read_sparse_map(
        &mut self,
        block: &[u8; BLOCK],
        offset: u64,
        stored: u64,
        shown: &str,
    ) -> Result<(u64, Vec<Extent>), TarError> {
        let bad = |reason| TarError::Sparse {
            offset,
            path: shown.to_owned(),
            reason,
        };
        let gnu = Header::from_byte_slice(block)
            .as_gnu()
            .ok_or_else(|| bad("not a GNU header"))?;
        let real_size = numeric(&gnu.realsize, offset, "realsize")?;
        let mut map: Vec<(u64, u64)> = Vec::new();
        let ended = std::cell::Cell::new(false);
        let mut push = |slot: &tar::GnuSparseHeader| -> Result<(), TarError> {
            // The map ends at the first unused slot (NUL-led), as in GNU tar; anything after
            // it would be read differently by different tars.
            if slot.offset[0] == 0 || slot.numbytes[0] == 0 {
                ended.set(true);
                return Ok(());
            }
            if ended.get() {
                return Err(bad("extent after the end of the map"));
            }
            // One more than the extents: the end marker.
            if map.len() > MAX_SPARSE_SEGMENTS {
                return Err(bad("too many extents"));
            }
            map.push((
                numeric(&slot.offset, offset, "sparse offset")?,
                numeric(&slot.numbytes, offset, "sparse length")?,
            ));
            Ok(())
        };
        for slot in &gnu.sparse {
            push(slot)?;
        }
        let mut extended = gnu.is_extended();
        while extended {
            if ended.get() {
                return Err(bad("extension block after the end of the map"));
            }
            let mut ext = tar::GnuExtSparseHeader::new();
            if !self.read_block(ext.as_mut_bytes())? {
                return Err(TarError::Truncated {
                    offset: self.offset,
                });
            }
            for slot in ext.sparse() {
                push(slot)?;
            }
            extended = ext.is_extended();
        }
        // A zero-length extent is only meaningful as GNU's end marker at the real size.
        if let Some(&(o, 0)) = map.last() {
            if o != real_size {
                return Err(bad("zero-length extent before the end"));
            }
            map.pop();
        }
        let mut end = 0u64;
        let mut total = 0u64;
        let mut extents = Vec::with_capacity(map.len());
        for (o, len) in map {
            let stop = o.checked_add(len).ok_or_else(|| bad("extent overflows"))?;
            if len == 0 || o < end || stop > real_size {
                return Err(bad(
                    "extents must be non-empty, ordered, disjoint and inside the file",
                ));
            }
            end = stop;
            total += len;
            extents.push(Extent { offset: o, len });
        }
        if total != stored {
            return Err(bad("extents do not add up to the stored size"));
        }
        Ok((real_size, extents))
    }

    /// Streams the entry's logical content to `f`, then consumes the padding.
    pub fn read_content<E: From<TarError>>(
        &mut self,
        entry: &TarEntry,
        mut f: impl FnMut(Content<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        match &entry.kind {
            TarKind::File {
                extents: Some(extents),
                size,
            } => {
                let mut cursor = 0u64;
                for extent in extents {
                    if extent.offset > cursor {
                        f(Content::Hole {
                            len: extent.offset - cursor,
                        })?;
                    }
                    self.stream(extent.offset, extent.len, &mut f)?;
                    cursor = extent.offset + extent.len;
                }
                if *size > cursor {
                    f(Content::Hole { len: size - cursor })?;
                }
            }
            TarKind::File { size, .. } => self.stream(0, *size, &mut f)?,
            _ => {}
        }
        self.skip_padding(entry.stored, entry.offset)?;
        Ok(())
    }

    /// After `next_entry` returned `None`: the stream must end right there.
    pub fn finish(mut self) -> Result<R, TarError> {
        let mut probe = [0u8; 1];
        loop {
            match self.inner.read(&mut probe) {
                Ok(0) => return Ok(self.inner),
                Ok(_) => {
                    return Err(TarError::TrailingData {
                        offset: self.offset,
                    })
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
    }

    fn stream<E: From<TarError>>(
        &mut self,
        start: u64,
        len: u64,
        f: &mut impl FnMut(Content<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut done = 0u64;
        while done < len {
            let available = loop {
                match self.inner.fill_buf() {
                    Ok(bytes) => break bytes,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(TarError::Io(e).into()),
                }
            };
            if available.is_empty() {
                return Err(TarError::Truncated {
                    offset: self.offset,
                }
                .into());
            }
            let n = (len - done).min(available.len() as u64) as usize;
            f(Content::Data {
                offset: start + done,
                at: self.offset,
                bytes: &available[..n],
            })?;
            self.inner.consume(n);
            self.offset += n as u64;
            done += n as u64;
        }
        Ok(())
    }

    fn skip_padding(&mut self, stored: u64, offset: u64) -> Result<(), TarError> {
        let rem = (stored % BLOCK as u64) as usize;
        if rem != 0 {
            let mut pad = [0u8; BLOCK];
            self.read_exact_counted(&mut pad[..BLOCK - rem])?;
            if pad[..BLOCK - rem].iter().any(|&b| b != 0) {
                return Err(TarError::Padding { offset });
            }
        }
        Ok(())
    }

    fn read_exact_counted(&mut self, buf: &mut [u8]) -> Result<(), TarError> {
        match self.inner.read_exact(buf) {
            Ok(()) => {
                self.offset += buf.len() as u64;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(TarError::Truncated {
                offset: self.offset,
            }),
            Err(e) => Err(TarError::Io(e)),
        }
    }

    /// Reads one block; `Ok(false)` on a clean end of stream before its first byte.
    fn read_block(&mut self, block: &mut [u8; BLOCK]) -> Result<bool, TarError> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => {
                    return Err(TarError::Truncated {
                        offset: self.offset,
                    })
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(TarError::Io(e)),
            }
        }
        self.offset += BLOCK as u64;
        Ok(true)
    }
}

fn numeric(raw: &[u8], offset: u64, field: &'static str) -> Result<u64, TarError> {
    parse_number(raw).ok_or(TarError::Numeric { offset, field })
}

fn check_checksum(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    if super::checksum_ok(block) {
        Ok(())
    } else {
        Err(TarError::Checksum { offset })
    }
}

fn check_ustar(block: &[u8; BLOCK], offset: u64) -> Result<(), TarError> {
    if &block[257..265] == b"ustar\x0000" {
        Ok(())
    } else {
        Err(TarError::Magic { offset })
    }
}

/// A NUL-terminated header field.
fn field_bytes(field: &[u8]) -> Vec<u8> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field[..end].to_vec()
}

fn parse_pax(body: &[u8], offset: u64) -> Result<Pax, TarError> {
    let malformed = |reason: &str| TarError::PaxMalformed {
        offset,
        reason: reason.to_owned(),
    };
    let mut pax = Pax::default();
    let mut rest = body;
    let mut binary = false;
    let mut seen = std::collections::HashSet::new();
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| malformed("record without length"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| malformed("invalid record length"))?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(malformed("record length does not match its content"));
        }
        let record = &rest[space + 1..len - 1];
        rest = &rest[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| malformed("record without '='"))?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| malformed("non-UTF-8 key"))?;
        let value = &record[eq + 1..];
        if !seen.insert(key.to_owned()) {
            return Err(malformed("duplicate key"));
        }
        let text = || std::str::from_utf8(value).map_err(|_| malformed("non-UTF-8 number"));
        // Plain decimal digits only: no sign, no leading zeros, as our writer produces.
        let number = || -> Result<u64, TarError> {
            let digits = text()?;
            let canonical = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && (digits == "0" || !digits.starts_with('0'));
            if !canonical {
                return Err(malformed("invalid number"));
            }
            digits
                .parse::<u64>()
                .map_err(|_| malformed("invalid number"))
        };
        match key {
            "hdrcharset" if value == b"BINARY" => binary = true,
            "path" => pax.path = Some(value.to_vec()),
            "linkpath" => pax.linkpath = Some(value.to_vec()),
            "size" => pax.size = Some(number()?),
            "uid" => pax.uid = Some(u32::try_from(number()?).map_err(|_| malformed("uid"))?),
            "gid" => pax.gid = Some(u32::try_from(number()?).map_err(|_| malformed("gid"))?),
            "uname" => pax.uname = Some(value.to_vec()),
            "gname" => pax.gname = Some(value.to_vec()),
            "mtime" => {
                let digits = text()?;
                let magnitude = digits.strip_prefix('-').unwrap_or(digits);
                if magnitude.is_empty() || !magnitude.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(malformed("mtime must be whole seconds"));
                }
                pax.mtime = Some(
                    digits
                        .parse::<i64>()
                        .map_err(|_| malformed("mtime must be whole seconds"))?,
                )
            }
            other => match other.strip_prefix("SCHILY.xattr.") {
                // Only user.* attributes travel; security.capability and the like are refused.
                Some(name) if crate::index::Xattr::is_valid_name(name) => {
                    pax.xattrs.push((name.to_owned(), value.to_vec()));
                }
                _ => {
                    return Err(TarError::PaxKey {
                        offset,
                        key: other.to_owned(),
                    })
                }
            },
        }
    }
    // Without hdrcharset=BINARY, POSIX says values are UTF-8; a mismatch is a differential.
    for value in [&pax.path, &pax.linkpath, &pax.uname, &pax.gname]
        .into_iter()
        .flatten()
    {
        if !binary && std::str::from_utf8(value).is_err() {
            return Err(malformed("non-UTF-8 value without hdrcharset=BINARY"));
        }
    }
    Ok(pax)
}
