//! Export → verify → extract round trips of the fidelity tree: the index records the source
//! exactly, and stock tools rebuild it exactly.

use std::collections::BTreeMap;
use std::process::Command;

use baluchon_bundle::{EntryKind, SkipReason, FILES_INDEX, FILES_PAYLOAD};
use baluchon_tests::fixture::{export, verify, Keys};
use baluchon_tests::tree::{build_fidelity_tree, differences, walk, Observed, FULL_HASH_LIMIT};
use baluchon_tests::{index_of, outer_member};

#[test]
fn fidelity_tree_round_trips_through_the_index_and_stock_tar() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    build_fidelity_tree(&source, true);
    let keys = Keys::new(dir.path());
    let bundle = dir.path().join("fidelity.baluchon");

    let report = export(&source, &bundle, &keys);
    verify(&bundle, &keys).expect("the fresh bundle verifies");

    // The socket and the FIFO are not archived, but recorded.
    let mut skipped: Vec<_> = report
        .skipped
        .iter()
        .map(|(p, r)| (p.to_string(), *r))
        .collect();
    skipped.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        skipped,
        vec![
            ("app.sock".to_owned(), SkipReason::Socket),
            ("queue.fifo".to_owned(), SkipReason::Fifo)
        ]
    );
    assert_eq!(report.header.files.skipped, 2);

    // Every source entry is in the index with its exact metadata (nanoseconds included).
    let mut observed = walk(&source);
    let index = index_of(&bundle);
    assert_eq!(
        index.len(),
        observed.len(),
        "one index line per source entry"
    );
    for entry in &index {
        let path = entry.path.as_bytes().to_vec();
        let obs = observed
            .get(&path)
            .unwrap_or_else(|| panic!("{} is not in the source", entry.path));
        let Some(meta) = entry.meta() else {
            assert_eq!(obs.kind, "special", "{}", entry.path);
            continue;
        };
        assert_eq!((meta.uid, meta.gid), (obs.uid, obs.gid), "{}", entry.path);
        assert_eq!(
            (meta.mtime, i64::from(meta.mtime_nsec)),
            obs.mtime,
            "{}",
            entry.path
        );
        if obs.kind != "symlink" {
            assert_eq!(meta.mode, obs.mode, "{}", entry.path);
        }
        let xattrs: Vec<(String, Vec<u8>)> = meta
            .xattrs
            .iter()
            .map(|x| (x.name.clone(), x.value.clone()))
            .collect();
        assert_eq!(xattrs, obs.xattrs, "{}", entry.path);
        match &entry.kind {
            EntryKind::File {
                size,
                sha256,
                extents,
                changed,
                ..
            } => {
                assert_eq!(obs.kind, "file");
                assert_eq!(*size, obs.size, "{}", entry.path);
                if *size <= FULL_HASH_LIMIT {
                    assert_eq!(Some(sha256.to_string()), obs.sha256, "{}", entry.path);
                }
                assert_eq!(extents.is_some(), obs.sparse, "{}", entry.path);
                assert_eq!(*changed, None);
            }
            EntryKind::Hardlink { target, .. } => {
                assert_eq!(obs.kind, "file");
                assert_eq!(
                    observed[target.as_bytes()].inode_group,
                    obs.inode_group,
                    "{} shares its inode with {}",
                    entry.path,
                    target
                );
            }
            EntryKind::Symlink { target, .. } => {
                assert_eq!(Some(target), obs.target.as_ref(), "{}", entry.path);
            }
            EntryKind::Dir { .. } => assert_eq!(obs.kind, "dir"),
            EntryKind::Skipped { .. } => unreachable!("skipped entries have no metadata"),
        }
    }
    // Attributes outside user.* are not archived, but recorded.
    if rustix::process::geteuid().is_root() {
        let e = index
            .iter()
            .find(|e| e.path.as_bytes() == b"exactly-512")
            .unwrap();
        assert_eq!(
            e.meta().unwrap().xattrs_not_archived,
            vec!["trusted.baluchon-test"]
        );
        assert!(e.meta().unwrap().xattrs.is_empty());
    }
    // Names are recorded by owner name where the source host has one.
    let plain = index
        .iter()
        .find(|e| e.path.as_bytes() == b"plain.txt")
        .unwrap();
    if rustix::process::geteuid().is_root() {
        assert_eq!(plain.meta().unwrap().owner.as_deref(), Some("daemon"));
    }

    // Stock zstd + GNU tar rebuild the tree: same content, modes, owners, links, holes.
    let payload = dir.path().join("files.tar.zst");
    fs_err::write(&payload, outer_member(&bundle, FILES_PAYLOAD)).unwrap();
    let out = dir.path().join("extracted");
    fs_err::create_dir(&out).unwrap();
    let status = Command::new("sh")
        .arg("-c")
        .arg("zstd -q -dc \"$1\" | tar -xpf - --numeric-owner --xattrs --xattrs-include='user.*' -C \"$2\"")
        .arg("sh")
        .arg(&payload)
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success(), "stock extraction failed");
    observed.retain(|_, o: &mut Observed| o.kind != "special");
    let extracted = walk(&out);
    let diffs = differences(&observed, &extracted, false);
    assert!(
        diffs.is_empty(),
        "differences after extraction:\n{}",
        diffs.join("\n")
    );
    assert!(
        extracted[&b"sparse-huge"[..]].sparse,
        "the 8 GiB file stays sparse"
    );
    assert!(extracted[&b"sparse-small"[..]].sparse);
}

#[test]
fn two_exports_of_the_same_tree_list_the_same_entries() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    build_fidelity_tree(&source, false);
    let keys = Keys::new(dir.path());
    let a = dir.path().join("a.baluchon");
    let b = dir.path().join("b.baluchon");
    export(&source, &a, &keys);
    export(&source, &b, &keys);
    let names = |bundle| -> BTreeMap<usize, String> {
        index_of(bundle)
            .iter()
            .enumerate()
            .map(|(i, e)| (i, e.path.to_string()))
            .collect()
    };
    assert_eq!(names(&a), names(&b));
    assert_eq!(outer_member(&a, FILES_INDEX), outer_member(&b, FILES_INDEX));
}
