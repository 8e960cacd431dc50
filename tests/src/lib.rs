//! Shared helpers for the end-to-end suites in `tests/tests/`.

pub mod apps;
pub mod fixture;
pub mod forge;
pub mod hosts;
pub mod sshd;
pub mod tree;

/// The lines of a bundle's index, decompressed and parsed.
pub fn index_of(bundle: &std::path::Path) -> Vec<baluchon_bundle::Entry> {
    let bytes = zstd::decode_all(&outer_member(bundle, baluchon_bundle::FILES_INDEX)[..])
        .expect("index decompresses");
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| baluchon_bundle::Entry::from_json_line(line).expect("valid index line"))
        .collect()
}

/// Reads one member of a bundle's outer tar with the `tar` crate (an independent reader).
pub fn outer_member(bundle: &std::path::Path, name: &str) -> Vec<u8> {
    use std::io::Read;
    let mut archive = tar::Archive::new(fs_err::File::open(bundle).expect("open bundle"));
    for entry in archive.entries().expect("outer tar") {
        let mut entry = entry.expect("outer entry");
        if entry.path_bytes().as_ref() == name.as_bytes() {
            let mut data = Vec::new();
            entry.read_to_end(&mut data).expect("read member");
            return data;
        }
    }
    panic!("{name} not in {}", bundle.display());
}
