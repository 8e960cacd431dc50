//! Fuzzes the importer with arbitrary inner tars, signed as a trusted exporter would sign
//! them, so every input reaches the extractor and not only the signature check.
//!
//! The index is derived from what baluchon's own tar reader makes of the input, so inputs
//! that parse get extracted for real. Invariant: whatever happens, nothing is created outside
//! the destination's parent, and a failed import leaves no destination and no staging.

#![no_main]

use std::sync::OnceLock;

use baluchon_bundle::fuzzing::{Content, TarKind, TarReader};
use baluchon_bundle::{
    Bundle, Destination, Entry, EntryKind, EntryPath, ExtractOptions, Meta, NoProgress, Policy,
    Sha256Digest,
};
use sha2::{Digest as _, Sha256};
use baluchon_tests::fixture::{export, small_tree, Keys};
use baluchon_tests::forge::{Forge, InnerTree};
use libfuzzer_sys::fuzz_target;

struct Template {
    _dir: tempfile::TempDir,
    keys: Keys,
    forge: Forge,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        let source = dir.path().join("tree");
        small_tree(&source);
        let bundle = dir.path().join("template.baluchon");
        export(&source, &bundle, &keys);
        let forge = Forge::read(&bundle);
        Template { _dir: dir, keys, forge }
    })
}

/// Index lines for the entries baluchon's reader finds in `tar`, as far as it gets.
fn index_for(tar: &[u8]) -> InnerTree {
    let mut tree = InnerTree::new();
    tree.tar(tar);
    let mut reader = TarReader::new(tar);
    while let Ok(Some(entry)) = reader.next_entry() {
        let mut content = Sha256::new();
        let mut size = 0u64;
        // Holes are materialised for hashing: cap them so the fuzzer cannot ask for GiBs.
        if matches!(entry.kind, TarKind::File { size: s, .. } if s > 1 << 24) {
            break;
        }
        let read = reader.read_content(&entry, |piece| {
            match piece {
                Content::Data { bytes, .. } => content.update(bytes),
                Content::Hole { len } => content.update(vec![0u8; len as usize]),
            }
            Ok::<(), baluchon_bundle::TarError>(())
        });
        if read.is_err() {
            break;
        }
        let meta = Meta {
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            owner: String::from_utf8(entry.owner.clone()).ok().filter(|s| !s.is_empty()),
            group: String::from_utf8(entry.group.clone()).ok().filter(|s| !s.is_empty()),
            mtime: entry.mtime,
            mtime_nsec: 0,
            xattrs: entry
                .xattrs
                .iter()
                .map(|(name, value)| baluchon_bundle::Xattr {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            xattrs_not_archived: Vec::new(),
        };
        let kind = match entry.kind {
            TarKind::Dir => EntryKind::Dir { meta },
            TarKind::File { size: s, extents } => {
                size = s;
                EntryKind::File {
                    meta,
                    size: s,
                    sha256: Sha256Digest::from_hex(&format!("{:x}", content.finalize())).unwrap(),
                    extents,
                    changed: None,
                }
            }
            TarKind::Symlink { target } => EntryKind::Symlink { meta, target },
            TarKind::Hardlink { target } => match EntryPath::new(target) {
                Ok(target) => EntryKind::Hardlink { meta, target },
                Err(_) => break,
            },
        };
        let entry = Entry { path: entry.path, kind };
        tree.line(&entry.to_json_line());
        tree.content_bytes += size;
    }
    tree
}

fuzz_target!(|tar: &[u8]| {
    let template = template();
    let mut forge = template.forge.clone();
    forge.set_tree(&index_for(tar));
    forge.reseal(&template.keys);

    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("fuzz.baluchon");
    forge.write(&bundle);
    let work = dir.path().join("work");
    fs_err::create_dir(&work).unwrap();
    let dest = work.join("dest");

    let result = Bundle::open(&bundle)
        .and_then(|b| b.authenticate(&template.keys.trust(), &Policy::default(), &NoProgress))
        .and_then(|b| b.extract(Destination::lock(&dest)?, &ExtractOptions::default(), &NoProgress))
        .and_then(|(_, staged)| staged.switch(false));

    let mut names: Vec<String> = fs_err::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    match result {
        Ok(_) => assert_eq!(names, [".baluchon-lock.dest", "dest"]),
        Err(_) => assert_eq!(names, [".baluchon-lock.dest"], "a failed import leaves nothing"),
    }
});
