//! Shared helpers for the end-to-end suites in `tests/tests/`.

pub mod fixture;
pub mod forge;
pub mod tree;

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
