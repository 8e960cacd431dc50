//! Fixed names, order and limits of the v1 bundle (docs/bundle-format.md is the reference).

/// SSHSIG namespace of bundle signatures; `ssh-keygen -Y verify -n` must be given this.
pub const SIGNATURE_NAMESPACE: &str = "baluchon-bundle-v1";
pub const FORMAT: &str = "baluchon-bundle";
pub const FORMAT_VERSION: u32 = 1;

pub const BAGIT_TXT: &str = "bagit.txt";
pub const README_TXT: &str = "README.txt";
pub const FILES_PAYLOAD: &str = "data/files.tar.zst";
pub const FILES_INDEX: &str = "files-index.jsonl.zst";
pub const FILES_SHA256: &str = "files-sha256.txt.zst";
pub const BUNDLE_JSON: &str = "bundle.json";
pub const BAG_INFO: &str = "bag-info.txt";
pub const MANIFEST: &str = "manifest-sha256.txt";
pub const TAG_MANIFEST: &str = "tagmanifest-sha256.txt";
pub const SIGNATURE: &str = "tagmanifest-sha256.txt.sig";

pub const BAGIT_TXT_CONTENT: &str = "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n";
pub const FILES_MEDIA_TYPE: &str = "application/x-tar+zstd";

/// Outer tar members before the payload, in order.
pub const LEADING_TAG_FILES: [&str; 2] = [BAGIT_TXT, README_TXT];
/// Outer tar members after the payload, in order; the signature is last (the commit marker).
pub const TRAILING_TAG_FILES: [&str; 7] = [
    FILES_INDEX,
    FILES_SHA256,
    BUNDLE_JSON,
    BAG_INFO,
    MANIFEST,
    TAG_MANIFEST,
    SIGNATURE,
];

/// Size caps checked before a tag file is read: a hostile bundle cannot make us allocate more.
pub fn tag_file_cap(name: &str) -> u64 {
    match name {
        BAGIT_TXT => 1024,
        SIGNATURE => 16 * 1024,
        README_TXT | BAG_INFO | TAG_MANIFEST => 64 * 1024,
        MANIFEST => 1024 * 1024,
        BUNDLE_JSON => 16 * 1024 * 1024,
        // Streamed line by line, never held whole: bounded only by the entry-count policy.
        _ => u64::MAX,
    }
}

/// Longest line accepted in the index: a 4 KiB path in base64 plus the largest
/// sparse map (`MAX_SPARSE_SEGMENTS` extents of up to 42 bytes each) fit.
pub const MAX_INDEX_LINE: usize = 128 * 1024;
/// Longest PAX extended header accepted in the inner tar.
pub const MAX_PAX_HEADER: u64 = 64 * 1024;
/// Most data extents of one sparse file. A file with more is archived whole (its holes
/// read as zeros), so that its index line stays under `MAX_INDEX_LINE`.
pub const MAX_SPARSE_SEGMENTS: usize = 2048;
/// Longest path component accepted, in bytes (Linux NAME_MAX).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest path accepted, in bytes (Linux PATH_MAX).
pub const MAX_PATH_BYTES: usize = 4096;
/// zstd window cap: 2^27 is the default limit of the `zstd` CLI, so stock tools can decode.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;
/// Uncompressed bytes per independent zstd frame.
pub const FRAME_BYTES: usize = 4 * 1024 * 1024;
