//! Writes the inner tar: ustar headers, PAX records only where ustar cannot say it, and
//! old-GNU sparse entries (the sparse form GNU tar, bsdtar and tar-rs all read).

use std::io::{self, Write};

use tar::{EntryType, Header};

use super::{pax_record, Kind, TarMeta, BLOCK, USTAR_NAME_LEN, ZERO_BLOCK};
use crate::index::Extent;

/// Largest value an 11-digit octal ustar field holds.
const OCTAL_11_MAX: u64 = 0o777_7777_7777;
const OCTAL_7_MAX: u64 = 0o777_7777;

/// Writes tar entries to `out`; callers stream each file's data between `header` and `end`.
#[derive(Debug)]
pub struct TarWriter<W> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }

    /// Writes the header(s) of one entry: an optional PAX header, then the ustar/GNU header
    /// and, for sparse files with more than four extents, GNU extension blocks.
    pub fn header(&mut self, path: &[u8], kind: &Kind<'_>, meta: &TarMeta<'_>) -> io::Result<()> {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let sparse = matches!(
            kind,
            Kind::File {
                extents: Some(_),
                ..
            }
        );
        let mut header = if sparse {
            Header::new_gnu()
        } else {
            Header::new_ustar()
        };

        let mut name = path.to_vec();
        if matches!(kind, Kind::Dir) {
            name.push(b'/');
        }
        if name.len() > USTAR_NAME_LEN {
            pax.push(("path".into(), name.clone()));
            name.truncate(USTAR_NAME_LEN);
        }
        header.as_old_mut().name[..name.len()].copy_from_slice(&name);

        let (type_flag, stored_size) = match kind {
            Kind::Dir => (EntryType::Directory, 0),
            Kind::Symlink { .. } => (EntryType::Symlink, 0),
            Kind::Hardlink { .. } => (EntryType::Link, 0),
            Kind::File {
                size,
                extents: None,
            } => (EntryType::Regular, *size),
            Kind::File {
                extents: Some(list),
                ..
            } => (EntryType::GNUSparse, list.iter().map(|e| e.len).sum()),
        };
        header.set_entry_type(type_flag);
        header.set_size(stored_size);
        if stored_size > OCTAL_11_MAX {
            pax.push(("size".into(), stored_size.to_string().into_bytes()));
        }
        if let Kind::Symlink { target } | Kind::Hardlink { target } = kind {
            if target.len() > USTAR_NAME_LEN {
                pax.push(("linkpath".into(), target.to_vec()));
            }
            let cut = target.len().min(USTAR_NAME_LEN);
            header.as_old_mut().linkname[..cut].copy_from_slice(&target[..cut]);
        }

        header.set_mode(meta.mode);
        for (key, id, set) in [
            ("uid", meta.uid, Header::set_uid as fn(&mut Header, u64)),
            ("gid", meta.gid, Header::set_gid),
        ] {
            if u64::from(id) > OCTAL_7_MAX {
                pax.push((key.into(), id.to_string().into_bytes()));
                set(&mut header, 0);
            } else {
                set(&mut header, u64::from(id));
            }
        }
        for (key, value) in [("uname", meta.owner), ("gname", meta.group)] {
            let value = value.unwrap_or("");
            let fits = value.len() < 32
                && if key == "uname" {
                    header.set_username(value).is_ok()
                } else {
                    header.set_groupname(value).is_ok()
                };
            if !fits {
                pax.push((key.into(), value.as_bytes().to_vec()));
            }
        }
        match u64::try_from(meta.mtime) {
            Ok(secs) if secs <= OCTAL_11_MAX => header.set_mtime(secs),
            _ => {
                pax.push(("mtime".into(), meta.mtime.to_string().into_bytes()));
                header.set_mtime(0);
            }
        }

        for xattr in meta.xattrs {
            pax.push((format!("SCHILY.xattr.{}", xattr.name), xattr.value.clone()));
        }

        let mut extension_blocks = Vec::new();
        if let Kind::File {
            size,
            extents: Some(list),
        } = kind
        {
            extension_blocks = fill_sparse_map(&mut header, list, *size);
        }
        header.set_cksum();

        if !pax.is_empty() {
            self.pax_header(&pax)?;
        }
        self.out.write_all(header.as_bytes())?;
        for block in &extension_blocks {
            self.out.write_all(block)?;
        }
        Ok(())
    }

    /// The sink, for writing an entry's data in place (see `FrameCompressor::fill_from`).
    pub fn sink(&mut self) -> &mut W {
        &mut self.out
    }

    /// Writes `len` zero bytes of data.
    pub fn zeros(&mut self, mut len: u64) -> io::Result<()> {
        static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
        while len > 0 {
            let n = len.min(ZEROS.len() as u64) as usize;
            self.out.write_all(&ZEROS[..n])?;
            len -= n as u64;
        }
        Ok(())
    }

    /// Pads the data of an entry whose stored size is `stored` to a block boundary.
    pub fn end(&mut self, stored: u64) -> io::Result<()> {
        let rem = (stored % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&ZERO_BLOCK[..BLOCK - rem])?;
        }
        Ok(())
    }

    /// Writes the end-of-archive marker (two zero blocks) and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&ZERO_BLOCK)?;
        self.out.write_all(&ZERO_BLOCK)?;
        Ok(self.out)
    }

    fn pax_header(&mut self, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let mut body = Vec::new();
        // xattr values are binary by nature (GNU tar writes them raw, whatever hdrcharset).
        let binary = records
            .iter()
            .any(|(k, v)| !k.starts_with("SCHILY.xattr.") && std::str::from_utf8(v).is_err());
        if binary {
            // Tells readers not to transcode the values from UTF-8 (POSIX pax, hdrcharset).
            body.extend(pax_record("hdrcharset", b"BINARY"));
        }
        for (key, value) in records {
            body.extend(pax_record(key, value));
        }
        let mut header = Header::new_ustar();
        let name = b"././@PaxHeader";
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_entry_type(EntryType::XHeader);
        header.set_mode(0o644);
        header.set_size(body.len() as u64);
        header.set_mtime(0);
        header.set_cksum();
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(&body)?;
        self.end(body.len() as u64)
    }
}

/// Fills the GNU sparse map (4 slots in the header, 21 per extension block) and the real
/// size. A trailing hole is marked, as GNU tar does, by a zero-length extent at the end.
fn fill_sparse_map(header: &mut Header, extents: &[Extent], size: u64) -> Vec<[u8; BLOCK]> {
    let mut map: Vec<(u64, u64)> = extents.iter().map(|e| (e.offset, e.len)).collect();
    if map.last().is_none_or(|&(o, l)| o + l < size) {
        map.push((size, 0));
    }
    let gnu = header
        .as_gnu_mut()
        .unwrap_or_else(|| unreachable!("sparse entries use a GNU header"));
    gnu.set_real_size(size);
    let (first, rest) = map.split_at(map.len().min(4));
    for (slot, &(offset, len)) in gnu.sparse.iter_mut().zip(first) {
        slot.set_offset(offset);
        slot.set_length(len);
    }
    gnu.set_is_extended(!rest.is_empty());
    let chunks: Vec<&[(u64, u64)]> = rest.chunks(21).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut ext = tar::GnuExtSparseHeader::new();
            for (slot, &(offset, len)) in ext.sparse_mut().iter_mut().zip(chunk.iter()) {
                slot.set_offset(offset);
                slot.set_length(len);
            }
            ext.set_is_extended(i + 1 < chunks.len());
            *ext.as_bytes()
        })
        .collect()
}
