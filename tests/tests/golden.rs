//! The golden v1 bundle in tests/fixtures/v1 must verify and read the same forever.

use std::path::PathBuf;

use baluchon_bundle::{Entry, EntryKind, Extent, SkipReason};
use baluchon_signature::TrustedSigners;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/v1")
        .join(name)
}

#[test]
fn golden_v1_bundle_still_verifies_and_reads_the_same() {
    let trust = TrustedSigners::from_file(&fixture("allowed_signers")).unwrap();
    let verified = baluchon_bundle::verify(
        &fixture("golden.baluchon"),
        &trust,
        &baluchon_bundle::Policy::default(),
        &baluchon_bundle::NoProgress,
    )
    .expect("the golden bundle verifies");
    let header = verified.header();
    assert_eq!(header.format, "baluchon-bundle");
    assert_eq!(header.format_version, 1);
    assert_eq!(header.tenant, "golden");
    assert_eq!(header.sequence, 1);
    assert_eq!(header.files.entries, 14);
    assert_eq!(header.files.skipped, 1);
    assert_eq!(header.files.content_bytes, 10_485_803);
    assert_eq!(
        verified.signer().principals,
        vec!["golden@baluchon.test".to_owned()]
    );

    let index: Vec<Entry> = baluchon_tests::index_of(&fixture("golden.baluchon"));
    let find = |path: &[u8]| {
        index
            .iter()
            .find(|e| e.path.as_bytes() == path)
            .unwrap_or_else(|| panic!("{} missing", path.escape_ascii()))
    };
    assert!(matches!(
        find(b"caf\xe9").kind,
        EntryKind::File { size: 10, .. }
    ));
    assert!(matches!(find(b"line\nbreak").kind, EntryKind::File { .. }));
    assert!(
        matches!(&find(b"dangling").kind, EntryKind::Symlink { target, .. } if target == b"/nonexistent/dangling")
    );
    // Names are walked in byte order, so the first name met is the file, the next the link.
    assert!(matches!(
        &find(b"site/index.html").kind,
        EntryKind::Hardlink { target, .. } if target.as_bytes() == b"site/index-hardlink.html"
    ));
    assert!(matches!(
        find(b"site/index-hardlink.html").kind,
        EntryKind::File { size: 16, .. }
    ));
    assert_eq!(find(b"site/img/logo.bin").meta().unwrap().mode, 0o4755);
    match &find(b"sparse.img").kind {
        EntryKind::File {
            size,
            extents: Some(extents),
            ..
        } => {
            assert_eq!(*size, 10 * 1024 * 1024);
            let data: u64 = extents.iter().map(|e: &Extent| e.len).sum();
            assert!(data < 1024 * 1024, "only the written block is stored");
        }
        other => panic!("sparse.img is not stored sparse: {other:?}"),
    }
    assert!(matches!(
        find(b"queue.fifo").kind,
        EntryKind::Skipped {
            reason: SkipReason::Fifo
        }
    ));
    let meta = find(b"home").meta().unwrap();
    assert_eq!((meta.mtime, meta.mtime_nsec), (1_767_323_045, 123_456_789));
    let long = [&b"d".repeat(60)[..], b"/", &b"e".repeat(60), b"/file"].concat();
    assert!(matches!(find(&long).kind, EntryKind::File { size: 5, .. }));
}
