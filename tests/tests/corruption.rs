//! One flipped byte anywhere in a bundle makes verification fail, as a verification failure.

use baluchon_bundle::Error;
use baluchon_tests::fixture::{verify, SmallBundle};

#[test]
fn every_flipped_byte_fails_verification() {
    let SmallBundle { dir, keys, bundle } = SmallBundle::create();
    verify(&bundle, &keys).expect("the untouched bundle verifies");

    let original = fs_err::read(&bundle).unwrap();
    let flipped_path = dir.path().join("flipped.baluchon");
    let mut accepted = Vec::new();
    let mut wrong_kind = Vec::new();
    for offset in 0..original.len() {
        let mut bytes = original.clone();
        bytes[offset] ^= 0xff;
        fs_err::write(&flipped_path, &bytes).unwrap();
        match verify(&flipped_path, &keys) {
            Ok(_) => accepted.push(offset),
            Err(Error::Invalid(_)) => {}
            Err(other) => wrong_kind.push(format!("{offset}: {other:?}")),
        }
    }
    assert!(
        accepted.is_empty(),
        "accepted with a flipped byte at {accepted:?}"
    );
    assert!(
        wrong_kind.is_empty(),
        "not reported as a verification failure:\n{}",
        wrong_kind.join("\n")
    );
}

#[test]
fn truncation_at_any_block_boundary_fails_verification() {
    let SmallBundle { dir, keys, bundle } = SmallBundle::create();
    let original = fs_err::read(&bundle).unwrap();
    let cut = dir.path().join("cut.baluchon");
    for len in (0..original.len()).step_by(512) {
        fs_err::write(&cut, &original[..len]).unwrap();
        assert!(
            matches!(verify(&cut, &keys), Err(Error::Invalid(_))),
            "a bundle cut at {len} bytes must fail"
        );
    }
}
