//! Forging hostile bundles for the hostile-input suite (`tests/tests/hostile.rs`).
//!
//! A [`Forge`] holds a bundle's outer tar as an ordered list of `(name, bytes)` members. Tests
//! edit members, then *reseal*: recompute the payload manifest, the payload description in
//! `bundle.json`, `Payload-Oxum`, the tag manifest and the signature, so that the hostile
//! bytes get past the signature and reach the deeper check they target.
//!
//! [`InnerTree`] builds the inner tar of `data/files.tar.zst` byte by byte, together with the
//! matching `files-index.jsonl` lines, so that malformed tar structures can be signed too.
//! The free functions build single tar headers, PAX records, zstd frames and SSHSIG blobs.

use std::path::Path;

use baluchon_signature::SigningKey;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256, Sha512};
use tar::{EntryType, Header};

use crate::fixture::Keys;

pub use baluchon_bundle::{FILES_INDEX, FILES_PAYLOAD, SIGNATURE_NAMESPACE};

// The other fixed member names (the crate exports only some of them).
pub const BAGIT_TXT: &str = "bagit.txt";
pub const README_TXT: &str = "README.txt";
pub const FILES_SHA256: &str = "files-sha256.txt.zst";
pub const BUNDLE_JSON: &str = "bundle.json";
pub const BAG_INFO: &str = "bag-info.txt";
pub const MANIFEST: &str = "manifest-sha256.txt";
pub const TAG_MANIFEST: &str = "tagmanifest-sha256.txt";
pub const SIGNATURE: &str = "tagmanifest-sha256.txt.sig";

/// Tag files listed in the tag manifest, in the order the exporter lists them.
const TAGGED: [&str; 7] = [
    BAGIT_TXT,
    README_TXT,
    FILES_INDEX,
    FILES_SHA256,
    BUNDLE_JSON,
    BAG_INFO,
    MANIFEST,
];

pub const BLOCK: usize = 512;
/// Two zero blocks: the end-of-archive marker.
pub const EOA: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Metadata every forged inner entry carries, in its tar header and in its index line.
pub const UID: u32 = 1000;
pub const GID: u32 = 1000;
pub const MTIME: i64 = 1_700_000_000;
pub const FILE_MODE: u32 = 0o644;
pub const DIR_MODE: u32 = 0o755;

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The outer tar of a bundle, as ordered members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forge {
    pub members: Vec<(String, Vec<u8>)>,
}

impl Forge {
    pub fn read(path: &Path) -> Self {
        Self::from_bytes(&fs_err::read(path).expect("read bundle"))
    }

    /// Parses an outer tar that baluchon wrote (regular files, names in the old name field).
    pub fn from_bytes(bytes: &[u8]) -> Self {
        let mut members = Vec::new();
        let mut pos = 0;
        while pos + BLOCK <= bytes.len() {
            let block = &bytes[pos..pos + BLOCK];
            if block.iter().all(|&b| b == 0) {
                break;
            }
            let header = Header::from_byte_slice(block);
            let name_end = block[..100].iter().position(|&b| b == 0).unwrap_or(100);
            let name = String::from_utf8(block[..name_end].to_vec()).expect("UTF-8 member name");
            let size = header.size().expect("member size") as usize;
            let data = bytes[pos + BLOCK..pos + BLOCK + size].to_vec();
            members.push((name, data));
            pos += BLOCK + size.div_ceil(BLOCK) * BLOCK;
        }
        Self { members }
    }

    pub fn names(&self) -> Vec<&str> {
        self.members.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn position(&self, name: &str) -> usize {
        self.members
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no member {name}"))
    }

    pub fn get(&self, name: &str) -> &[u8] {
        &self.members[self.position(name)].1
    }

    pub fn get_mut(&mut self, name: &str) -> &mut Vec<u8> {
        let i = self.position(name);
        &mut self.members[i].1
    }

    /// The index, decompressed.
    pub fn index_text(&self) -> String {
        String::from_utf8(zstd::decode_all(self.get(FILES_INDEX)).expect("index decompresses"))
            .expect("UTF-8 index")
    }

    /// Replaces the index with `text`, compressed as the exporter does.
    pub fn set_index_text(&mut self, text: &str) {
        self.set(FILES_INDEX, compress(text.as_bytes()));
    }

    pub fn text(&self, name: &str) -> String {
        String::from_utf8(self.get(name).to_vec()).expect("UTF-8 member")
    }

    pub fn set(&mut self, name: &str, bytes: impl Into<Vec<u8>>) {
        *self.get_mut(name) = bytes.into();
    }

    /// Replaces the first occurrence of `from` in a text member; panics if it is absent, so a
    /// test cannot silently forge nothing.
    pub fn replace_text(&mut self, name: &str, from: &str, to: &str) {
        let text = self.text(name);
        assert!(text.contains(from), "{name} does not contain {from:?}");
        self.set(name, text.replacen(from, to, 1));
    }

    pub fn insert_before(&mut self, before: &str, name: &str, bytes: impl Into<Vec<u8>>) {
        let i = self.position(before);
        self.members.insert(i, (name.to_owned(), bytes.into()));
    }

    pub fn insert_after(&mut self, after: &str, name: &str, bytes: impl Into<Vec<u8>>) {
        let i = self.position(after);
        self.members.insert(i + 1, (name.to_owned(), bytes.into()));
    }

    pub fn push(&mut self, name: &str, bytes: impl Into<Vec<u8>>) {
        self.members.push((name.to_owned(), bytes.into()));
    }

    pub fn remove(&mut self, name: &str) -> Vec<u8> {
        let i = self.position(name);
        self.members.remove(i).1
    }

    pub fn bundle_json(&self) -> Value {
        serde_json::from_slice(self.get(BUNDLE_JSON)).expect("bundle.json is JSON")
    }

    /// Writes `bundle.json` the way the exporter does (pretty, final newline).
    pub fn set_bundle_json(&mut self, value: &Value) {
        let mut bytes = serde_json::to_vec_pretty(value).expect("serialise");
        bytes.push(b'\n');
        self.set(BUNDLE_JSON, bytes);
    }

    pub fn edit_bundle_json(&mut self, edit: impl FnOnce(&mut Value)) {
        let mut value = self.bundle_json();
        edit(&mut value);
        self.set_bundle_json(&value);
    }

    fn payload_members(&self) -> Vec<(String, Vec<u8>)> {
        self.members
            .iter()
            .filter(|(n, _)| n.starts_with("data/"))
            .cloned()
            .collect()
    }

    /// `manifest-sha256.txt` from the `data/` members present.
    pub fn update_manifest(&mut self) {
        let manifest: String = self
            .payload_members()
            .iter()
            .map(|(n, d)| format!("{}  {n}\n", sha256_hex(d)))
            .collect();
        self.set(MANIFEST, manifest);
    }

    /// Size and sha256 of every payload file `bundle.json` describes, from the member bytes.
    pub fn update_bundle_json_payload(&mut self) {
        let payload = self.payload_members();
        self.edit_bundle_json(|v| {
            for described in v["payload"].as_array_mut().expect("payload array") {
                let path = described["path"].as_str().unwrap_or_default().to_owned();
                if let Some((_, data)) = payload.iter().find(|(n, _)| *n == path) {
                    described["size"] = json!(data.len());
                    described["sha256"] = json!(sha256_hex(data));
                }
            }
        });
    }

    /// Declared decompressed size of `data/files.tar.zst`.
    pub fn set_uncompressed_size(&mut self, size: u64) {
        self.edit_bundle_json(|v| {
            for described in v["payload"].as_array_mut().expect("payload array") {
                if described["path"] == FILES_PAYLOAD {
                    described["uncompressed_size"] = json!(size);
                }
            }
        });
    }

    /// `Payload-Oxum` of `bag-info.txt` from the `data/` members present.
    pub fn update_oxum(&mut self) {
        let payload = self.payload_members();
        let octets: usize = payload.iter().map(|(_, d)| d.len()).sum();
        let oxum = format!("Payload-Oxum: {octets}.{}", payload.len());
        let text: String = self
            .text(BAG_INFO)
            .lines()
            .map(|l| {
                if l.starts_with("Payload-Oxum: ") {
                    format!("{oxum}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        self.set(BAG_INFO, text);
    }

    /// The tag manifest over the tag files present (in the exporter's order).
    pub fn update_tag_manifest(&mut self) {
        let text: String = TAGGED
            .iter()
            .filter(|n| self.members.iter().any(|(m, _)| m == *n))
            .map(|n| format!("{}  {n}\n", sha256_hex(self.get(n))))
            .collect();
        self.set(TAG_MANIFEST, text);
    }

    /// Signs the current tag manifest with any key, under any namespace.
    pub fn sign(&mut self, key: &SigningKey, namespace: &str) {
        let signature = key
            .sign(namespace, self.get(TAG_MANIFEST))
            .expect("signing");
        self.set(SIGNATURE, signature);
    }

    /// Tag manifest and signature only: for hostile tag files that must stay byte for byte.
    pub fn resign(&mut self, keys: &Keys) {
        self.update_tag_manifest();
        self.sign(&keys.key, SIGNATURE_NAMESPACE);
    }

    /// Everything a legitimate exporter would recompute after the payload changed.
    pub fn reseal(&mut self, keys: &Keys) {
        self.update_manifest();
        self.update_bundle_json_payload();
        self.update_oxum();
        self.resign(keys);
    }

    /// Replaces `data/files.tar.zst` (already compressed) and its declared decompressed size.
    /// Call [`Forge::reseal`] afterwards.
    pub fn set_payload(&mut self, compressed: Vec<u8>, uncompressed_size: u64) {
        self.set(FILES_PAYLOAD, compressed);
        self.set_uncompressed_size(uncompressed_size);
    }

    /// Replaces the whole file tree: payload, index, checksum list and the counts in
    /// `bundle.json`. Call [`Forge::reseal`] afterwards.
    pub fn set_tree(&mut self, tree: &InnerTree) {
        self.set_payload(compress(&tree.tar), tree.tar.len() as u64);
        self.set(FILES_INDEX, compress(&tree.index));
        self.set(FILES_SHA256, compress(&tree.sums));
        let counts = tree.summary();
        self.edit_bundle_json(|v| {
            // Only the counts: other fields of `files` (the root's metadata) stay as exported.
            for (key, count) in counts.as_object().expect("object") {
                v["files"][key] = count.clone();
            }
        });
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_bytes_with(|_, _| {})
    }

    /// The outer tar, GNU headers like the exporter's; `tweak` may change any header (the
    /// checksum is recomputed after it).
    pub fn to_bytes_with(&self, mut tweak: impl FnMut(&str, &mut Header)) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (name, data) in &self.members {
            let mut header = Header::new_gnu();
            assert!(name.len() <= 100, "outer names fit the old name field");
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.set_entry_type(EntryType::Regular);
            header.set_mode(0o644);
            header.set_size(data.len() as u64);
            header.set_mtime(MTIME as u64);
            tweak(name, &mut header);
            header.set_cksum();
            builder.append(&header, &data[..]).expect("append");
        }
        builder.into_inner().expect("finish outer tar")
    }

    pub fn write(&self, path: &Path) {
        fs_err::write(path, self.to_bytes()).expect("write bundle");
    }
}

// ---------------------------------------------------------------------------------------------
// Inner tar

/// A hand-made inner tree: tar bytes, index lines and `files-sha256.txt`, kept in step by the
/// convenience methods and separately writable for hostile mismatches.
#[derive(Debug, Clone, Default)]
pub struct InnerTree {
    pub tar: Vec<u8>,
    pub index: Vec<u8>,
    pub sums: Vec<u8>,
    /// Counts written to `bundle.json` `files`; `line` counts entries, `file` content bytes.
    pub entries: u64,
    pub skipped: u64,
    pub changed: u64,
    pub content_bytes: u64,
}

impl InnerTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends raw bytes to the tar stream only.
    pub fn tar(&mut self, bytes: &[u8]) -> &mut Self {
        self.tar.extend_from_slice(bytes);
        self
    }

    /// Appends one raw index line (a newline is added) and counts it as an entry.
    pub fn line(&mut self, line: &str) -> &mut Self {
        self.index.extend_from_slice(line.as_bytes());
        self.index.push(b'\n');
        self.entries += 1;
        self
    }

    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.tar(&tar_dir(path.as_bytes()));
        self.line(&dir_line(path.as_bytes()))
    }

    pub fn file(&mut self, path: &[u8], content: &[u8]) -> &mut Self {
        self.tar(&tar_file(path, content));
        self.file_line_only(path, content)
    }

    /// The index line (and checksum line, content count) of a file, without its tar entry.
    pub fn file_line_only(&mut self, path: &[u8], content: &[u8]) -> &mut Self {
        self.sums
            .extend_from_slice(format!("{}  ", sha256_hex(content)).as_bytes());
        self.sums.extend_from_slice(path);
        self.sums.push(b'\n');
        self.content_bytes += content.len() as u64;
        self.line(&file_line(path, content))
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.tar(&tar_link(path, EntryType::Symlink, target));
        self.line(&link_line(path, "symlink", target))
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.tar(&tar_link(path, EntryType::Link, target));
        self.line(&link_line(path, "hardlink", target))
    }

    /// The end-of-archive marker.
    pub fn end(&mut self) -> &mut Self {
        self.tar(&EOA)
    }

    /// The counts of the `files` object of `bundle.json`.
    pub fn summary(&self) -> Value {
        json!({
            "entries": self.entries,
            "skipped": self.skipped,
            "changed": self.changed,
            "content_bytes": self.content_bytes,
        })
    }
}

/// A ustar header with the forged metadata; `name` goes raw into the name field (no check),
/// the checksum is set.
pub fn header(name: &[u8], kind: EntryType, size: u64) -> Header {
    let mut header = Header::new_ustar();
    header.as_old_mut().name[..name.len()].copy_from_slice(name);
    header.set_entry_type(kind);
    header.set_mode(if kind == EntryType::Directory {
        DIR_MODE
    } else {
        FILE_MODE
    });
    header.set_uid(u64::from(UID));
    header.set_gid(u64::from(GID));
    header.set_mtime(MTIME as u64);
    header.set_size(size);
    header.set_cksum();
    header
}

/// `bytes` zero-padded to a whole number of blocks.
pub fn pad(bytes: &[u8]) -> Vec<u8> {
    let mut out = bytes.to_vec();
    out.resize(bytes.len().div_ceil(BLOCK) * BLOCK, 0);
    out
}

/// Header and padded data of a regular file.
pub fn tar_file(path: &[u8], content: &[u8]) -> Vec<u8> {
    let mut out = header(path, EntryType::Regular, content.len() as u64)
        .as_bytes()
        .to_vec();
    out.extend(pad(content));
    out
}

/// A directory header (the name gets its trailing slash, as the exporter writes it).
pub fn tar_dir(path: &[u8]) -> Vec<u8> {
    let mut name = path.to_vec();
    name.push(b'/');
    header(&name, EntryType::Directory, 0).as_bytes().to_vec()
}

pub fn tar_link(path: &str, kind: EntryType, target: &str) -> Vec<u8> {
    let mut header = header(path.as_bytes(), kind, 0);
    header.as_old_mut().linkname[..target.len()].copy_from_slice(target.as_bytes());
    header.set_cksum();
    header.as_bytes().to_vec()
}

/// One PAX record with a correct length prefix.
pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    record
}

/// An extended header (`x`, or `g` for global) carrying `body` as is, padded.
pub fn pax_raw(flag: EntryType, body: &[u8]) -> Vec<u8> {
    let mut out = header(b"././@PaxHeader", flag, body.len() as u64)
        .as_bytes()
        .to_vec();
    out.extend(pad(body));
    out
}

/// A well-formed PAX `x` header with these records.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let body: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    pax_raw(EntryType::XHeader, &body)
}

/// The checksum some old tars wrote: bytes summed as *signed* chars.
pub fn signed_checksum(block: &[u8]) -> i64 {
    block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                i64::from(b as i8)
            }
        })
        .sum()
}

/// Writes `value` into a header checksum field as tar does: 6 octal digits, NUL, space.
pub fn write_checksum_field(block: &mut [u8], value: u32) {
    let text = format!("{value:06o}\0 ");
    block[148..156].copy_from_slice(text.as_bytes());
}

/// Recomputes the (unsigned, valid) checksum of a raw header block.
pub fn fix_checksum(block: &mut [u8]) {
    let sum: u32 = block
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
    write_checksum_field(block, sum);
}

// ---------------------------------------------------------------------------------------------
// Index lines

fn path_fields(path: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(path) {
        Ok(text) => ("path", json!(text)),
        Err(_) => ("path_b64", json!(BASE64.encode(path))),
    }
}

fn meta_json(path: &[u8], kind: &str, mode: u32) -> Value {
    let (key, value) = path_fields(path);
    let mut line = json!({
        "type": kind,
        "mode": mode,
        "uid": UID,
        "gid": GID,
        "mtime": MTIME,
        "mtime_nsec": 0,
    });
    line[key] = value;
    line
}

pub fn file_line(path: &[u8], content: &[u8]) -> String {
    let mut line = meta_json(path, "file", FILE_MODE);
    line["size"] = json!(content.len());
    line["sha256"] = json!(sha256_hex(content));
    line.to_string()
}

pub fn dir_line(path: &[u8]) -> String {
    meta_json(path, "dir", DIR_MODE).to_string()
}

pub fn link_line(path: &str, kind: &str, target: &str) -> String {
    let mut line = meta_json(path.as_bytes(), kind, FILE_MODE);
    line["target"] = json!(target);
    line.to_string()
}

// ---------------------------------------------------------------------------------------------
// zstd

/// What the exporter writes: one checksummed frame with its content size.
pub fn compress(bytes: &[u8]) -> Vec<u8> {
    let mut compressor = zstd::bulk::Compressor::new(3).expect("zstd");
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .expect("checksum flag");
    compressor.compress(bytes).expect("compress")
}

/// A hand-made zstd frame of raw (stored) blocks, with a window descriptor of `window_log`
/// and, if given, an 8-byte Frame_Content_Size that need not be true. No checksum.
pub fn raw_frame(data: &[u8], window_log: u8, content_size: Option<u64>) -> Vec<u8> {
    assert!((10..=41).contains(&window_log));
    let mut out = vec![0x28, 0xB5, 0x2F, 0xFD];
    // Frame_Header_Descriptor: FCS_Field_Size 3 (8 bytes) or 0 (absent), no single segment,
    // no checksum, no dictionary.
    out.push(if content_size.is_some() {
        0b1100_0000
    } else {
        0
    });
    out.push((window_log - 10) << 3); // Window_Descriptor: exponent, mantissa 0
    if let Some(size) = content_size {
        out.extend_from_slice(&size.to_le_bytes());
    }
    let max_block = 128 * 1024;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![&[]]
    } else {
        data.chunks(max_block).collect()
    };
    for (i, chunk) in chunks.iter().enumerate() {
        let last = u32::from(i + 1 == chunks.len());
        // Block_Header: Last_Block bit, Block_Type 0 (raw), Block_Size.
        let block_header = last | ((chunk.len() as u32) << 3);
        out.extend_from_slice(&block_header.to_le_bytes()[..3]);
        out.extend_from_slice(chunk);
    }
    out
}

/// A skippable frame: every decoder passes over it without output.
pub fn skippable_frame(hidden: &[u8]) -> Vec<u8> {
    let mut out = 0x184D_2A50u32.to_le_bytes().to_vec();
    out.extend_from_slice(&(hidden.len() as u32).to_le_bytes());
    out.extend_from_slice(hidden);
    out
}

// ---------------------------------------------------------------------------------------------
// SSHSIG

/// The fields of an SSHSIG blob (openssh PROTOCOL.sshsig), editable and re-armorable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshSigBlob {
    pub version: u32,
    pub public_key: Vec<u8>,
    pub namespace: Vec<u8>,
    pub reserved: Vec<u8>,
    pub hash_alg: Vec<u8>,
    pub signature: Vec<u8>,
}

const SSHSIG_ARMOR_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const SSHSIG_ARMOR_END: &str = "-----END SSH SIGNATURE-----";

fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take_u32(input: &mut &[u8]) -> u32 {
    let (head, rest) = input.split_at(4);
    *input = rest;
    u32::from_be_bytes(head.try_into().expect("4 bytes"))
}

fn take_string(input: &mut &[u8]) -> Vec<u8> {
    let len = take_u32(input) as usize;
    let (head, rest) = input.split_at(len);
    *input = rest;
    head.to_vec()
}

impl SshSigBlob {
    pub fn parse_armored(armored: &[u8]) -> Self {
        let text = std::str::from_utf8(armored).expect("armored text");
        let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
        let blob = BASE64.decode(b64).expect("base64");
        let mut rest = &blob[..];
        assert_eq!(&rest[..6], b"SSHSIG");
        rest = &rest[6..];
        let sig = Self {
            version: take_u32(&mut rest),
            public_key: take_string(&mut rest),
            namespace: take_string(&mut rest),
            reserved: take_string(&mut rest),
            hash_alg: take_string(&mut rest),
            signature: take_string(&mut rest),
        };
        assert!(rest.is_empty(), "trailing bytes in the SSHSIG blob");
        sig
    }

    pub fn to_blob(&self) -> Vec<u8> {
        let mut out = b"SSHSIG".to_vec();
        out.extend_from_slice(&self.version.to_be_bytes());
        for field in [
            &self.public_key,
            &self.namespace,
            &self.reserved,
            &self.hash_alg,
            &self.signature,
        ] {
            put_string(&mut out, field);
        }
        out
    }

    /// Armored as ssh-keygen and ssh-key write it: 70-column base64.
    pub fn armored(&self) -> String {
        let b64 = BASE64.encode(self.to_blob());
        let mut out = format!("{SSHSIG_ARMOR_BEGIN}\n");
        for line in b64.as_bytes().chunks(70) {
            out.push_str(std::str::from_utf8(line).expect("ASCII"));
            out.push('\n');
        }
        out.push_str(SSHSIG_ARMOR_END);
        out.push('\n');
        out
    }

    /// What the key signs: magic, namespace, reserved, hash algorithm, H(message).
    pub fn signed_data(&self, message: &[u8]) -> Vec<u8> {
        let hash = match self.hash_alg.as_slice() {
            b"sha256" => Sha256::digest(message).to_vec(),
            b"sha512" => Sha512::digest(message).to_vec(),
            other => panic!("no hash {}", other.escape_ascii()),
        };
        let mut out = b"SSHSIG".to_vec();
        put_string(&mut out, &self.namespace);
        put_string(&mut out, &self.reserved);
        put_string(&mut out, &self.hash_alg);
        put_string(&mut out, &hash);
        out
    }

    /// Re-signs the (possibly edited) fields over `message` with the ed25519 key at `key`.
    pub fn resign(&mut self, key: &Path, message: &[u8]) {
        let private = ssh_key::PrivateKey::read_openssh_file(key).expect("read private key");
        let raw = raw_sign(&private, &self.signed_data(message));
        let mut signature = Vec::new();
        put_string(&mut signature, b"ssh-ed25519");
        put_string(&mut signature, &raw);
        self.signature = signature;
    }
}

fn raw_sign<K: ssh_key::SigningKey>(key: &K, data: &[u8]) -> Vec<u8> {
    key.try_sign(data).expect("sign").as_bytes().to_vec()
}
