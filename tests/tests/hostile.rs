//! Hostile-input suite: format-security.md §3, groups A, C, D and E, against `verify`.
//!
//! Most inputs are *resealed* (manifests, bundle.json, Payload-Oxum, tag manifest and
//! signature recomputed with the trusted key, see `baluchon_tests::forge`), so the hostile
//! bytes are signed and reach the deeper check they target instead of failing at a hash.
//! Each test asserts the specific `Invalid` variant; sub-cases are all run and every failing
//! one is reported.
//!
//! Coverage, by catalogue id:
//! * A1–A13, A16–A20: `aNN_*` below.
//!   - A3 "principal mismatch": `verify` takes no expected principal, so only unknown keys and
//!     namespace restrictions are testable (the principals are returned to the caller).
//!   - A4 "revoked (KRL)": not testable, `TrustedSigners` has no revocation list; expiry
//!     (`valid-before`) and `valid-after` are covered.
//!   - A5 "legacy ssh-rsa": not forged (that needs an RSA SHA-1 signer; ssh-keygen never makes
//!     one for SSHSIG). Version > 1 and unknown hash algorithms are covered.
//!   - A10: `fetch.txt` is tested as an unexpected outer member (the format has no fetch).
//!   - A13 "another destination": bundle.json has no destination binding; tenant only.
//!   - A16 "expired expires_at": bundle.json has no expiry; created_at in the future only.
//! * A14 (rollback) and A15 (re-import of a bundle_id): not applicable to `verify`; they need
//!   the importer's per-tenant history.
//! * C1–C12: `cNN_*`. D1–D6: `dNN_*`.
//! * D7 (age): not applicable, the format has no encryption layer.
//! * E1–E8: `eNN_*`, at bundle level (bundle.json resealed, or a hostile files-index.jsonl
//!   resealed). Line-level E1, E2, E3, E5, E6, E8 are also unit-tested in
//!   crates/bundle/src/index.rs.
//! * `forge_control_*`: the forge itself produces bundles that verify, so the hostile tests
//!   fail for the reason they target and not because of the forge.

use std::cell::Cell;
use std::path::Path;

use baluchon_bundle::{
    Bundle, Error, IndexError, Invalid, NoProgress, OuterError, PathError, Policy, TarError,
    Verified,
};
use baluchon_signature::{TrustedSigners, VerifyError};
use baluchon_tests::fixture::{self, Keys};
use baluchon_tests::forge::*;
use tar::EntryType;

type Outcome = Result<Bundle<Verified>, Error>;

/// Failed sub-cases of one test, reported together at the end.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn finish(self) {
        assert!(self.0.is_empty(), "\n{}", self.0.join("\n"));
    }
}

/// Records a failure unless `$outcome` is `Err(Error::Invalid($pat))`.
macro_rules! expect {
    ($fails:ident, $label:expr, $outcome:expr, $pat:pat $(if $guard:expr)?) => {
        let outcome = $outcome;
        // Shown with --nocapture, to review what each hostile input is refused with.
        let shown = format!("{:?}", outcome.as_ref().err());
        match outcome {
            Err(Error::Invalid($pat)) $(if $guard)? => eprintln!("{}: {shown}", $label),
            Err(other) => $fails.0.push(format!(
                "{}: expected {}, got {other:?}",
                $label,
                stringify!($pat $(if $guard)?)
            )),
            Ok(_) => $fails.0.push(format!(
                "{}: expected {}, but the bundle was ACCEPTED",
                $label,
                stringify!($pat $(if $guard)?)
            )),
        }
    };
}

macro_rules! expect_ok {
    ($fails:ident, $label:expr, $outcome:expr) => {
        if let Err(e) = $outcome {
            $fails.0.push(format!(
                "{}: expected the bundle to verify, got {e:?}",
                $label
            ));
        }
    };
}

/// A freshly exported bundle, its key, and a place to write forged variants.
struct Case {
    dir: tempfile::TempDir,
    keys: Keys,
    forge: Forge,
    written: Cell<u32>,
}

impl Case {
    /// The fixture's small tree (files, a directory, a symlink, a hardlink), exported.
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let keys = Keys::new(dir.path());
        let tree = dir.path().join("tree");
        fixture::small_tree(&tree);
        let bundle = dir.path().join("original.bag");
        fixture::export(&tree, &bundle, &keys);
        let forge = Forge::read(&bundle);
        Self {
            dir,
            keys,
            forge,
            written: Cell::new(0),
        }
    }

    /// An exported bundle whose file tree is replaced by `tree`, resealed.
    fn with_tree(tree: &InnerTree) -> Self {
        let mut case = Self::new();
        case.forge.set_tree(tree);
        case.forge.reseal(&case.keys);
        case
    }

    /// A copy of the base forge to edit.
    fn forge(&self) -> Forge {
        self.forge.clone()
    }

    fn verify(&self, forge: &Forge) -> Outcome {
        self.verify_bytes(&forge.to_bytes())
    }

    fn verify_bytes(&self, bytes: &[u8]) -> Outcome {
        self.verify_with(bytes, &self.keys.trust(), &Policy::default())
    }

    fn verify_with(&self, bytes: &[u8], trust: &TrustedSigners, policy: &Policy) -> Outcome {
        let n = self.written.get() + 1;
        self.written.set(n);
        let path = self.dir.path().join(format!("hostile-{n}.bag"));
        fs_err::write(&path, bytes).expect("write forged bundle");
        baluchon_bundle::verify(&path, trust, policy, &NoProgress)
    }

    /// The base bundle with its file tree replaced by `tree`, resealed.
    fn resealed_tree(&self, tree: &InnerTree) -> Outcome {
        let mut forge = self.forge();
        forge.set_tree(tree);
        forge.reseal(&self.keys);
        self.verify(&forge)
    }

    /// The base bundle with `bundle.json` replaced byte for byte, re-signed.
    fn with_bundle_json(&self, bytes: impl Into<Vec<u8>>) -> Outcome {
        let mut forge = self.forge();
        forge.set(BUNDLE_JSON, bytes);
        forge.resign(&self.keys);
        self.verify(&forge)
    }

    /// The base bundle with the first line of `files-index.jsonl` replaced, re-signed.
    fn with_first_index_line(&self, line: &str) -> Outcome {
        let mut forge = self.forge();
        let index = forge.index_text();
        let rest = index.split_once('\n').expect("two index lines").1;
        forge.set_index_text(&format!("{line}\n{rest}"));
        forge.resign(&self.keys);
        self.verify(&forge)
    }
}

fn trust_line(keys: &Keys, options: &str) -> TrustedSigners {
    TrustedSigners::parse(
        &format!(
            "{} {options} {}\n",
            keys.principal,
            keys.key.public_key_line()
        ),
        Path::new("allowed_signers"),
    )
    .expect("trust line")
}

/// The smallest tree the C and D tests start from: one file `a` = "hello".
fn tree_with_a() -> InnerTree {
    let mut tree = InnerTree::new();
    tree.file(b"a", b"hello").end();
    tree
}

// -------------------------------------------------------------------------------------------
// Controls

#[test]
fn forge_control_resealed_export_verifies() {
    let case = Case::new();
    let mut fails = Failures::default();
    expect_ok!(fails, "read and rewritten", case.verify(&case.forge()));
    let mut forge = case.forge();
    forge.reseal(&case.keys);
    expect_ok!(fails, "resealed", case.verify(&forge));
    // The SSHSIG codec round-trips exactly, so A5/A6 forge only what they change.
    let armored = case.forge.text(SIGNATURE);
    assert_eq!(
        SshSigBlob::parse_armored(armored.as_bytes()).armored(),
        armored
    );
    fails.finish();
}

#[test]
fn forge_control_built_tree_verifies() {
    let mut tree = InnerTree::new();
    // In the index's order: depth first, names in byte order.
    tree.dir("d")
        .file(b"d/f", b"content")
        .symlink("d/l", "f")
        .hardlink("h", "d/f")
        // A long name goes through a PAX path record, as the exporter writes it.
        .tar(&pax(&[("path", "p".repeat(150).as_bytes())]))
        .tar(&tar_file(b"p", b"long"))
        .file_line_only("p".repeat(150).as_bytes(), b"long")
        .file(b"\xffraw name", b"non-UTF-8 path, path_b64 in the index")
        .end();
    let case = Case::with_tree(&tree);
    let mut fails = Failures::default();
    expect_ok!(fails, "hand-built tree", case.verify(&case.forge()));
    fails.finish();
}

// -------------------------------------------------------------------------------------------
// A. Signature, manifest and bundle metadata

#[test]
fn a01_missing_or_truncated_signature() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut forge = case.forge();
    forge.remove(SIGNATURE);
    expect!(fails, "no .sig member", case.verify(&forge),
        Invalid::Outer(OuterError::Missing(name)) if name == SIGNATURE);

    let mut forge = case.forge();
    forge.set(SIGNATURE, Vec::new());
    expect!(
        fails,
        "empty .sig",
        case.verify(&forge),
        Invalid::Signature(VerifyError::Malformed(_))
    );

    let mut forge = case.forge();
    let sig = forge.get(SIGNATURE).to_vec();
    forge.set(SIGNATURE, &sig[..sig.len() / 2]);
    expect!(
        fails,
        "truncated armored block",
        case.verify(&forge),
        Invalid::Signature(VerifyError::Malformed(_))
    );

    let mut forge = case.forge();
    let text = forge.text(SIGNATURE);
    forge.set(SIGNATURE, text.replace("-----END SSH SIGNATURE-----\n", ""));
    expect!(
        fails,
        "armor without its END line",
        case.verify(&forge),
        Invalid::Signature(VerifyError::Malformed(_))
    );
    fails.finish();
}

#[test]
fn a02_wrong_namespace() {
    let case = Case::new();
    let mut fails = Failures::default();
    for namespace in ["file", "git", "baluchon-bundle-v2"] {
        let mut forge = case.forge();
        forge.sign(&case.keys.key, namespace);
        expect!(fails, namespace, case.verify(&forge),
            Invalid::Signature(VerifyError::WrongNamespace { found, .. }) if found == namespace);
    }
    fails.finish();
}

#[test]
fn a03_unknown_signer_or_namespace_not_allowed() {
    let case = Case::new();
    let mut fails = Failures::default();

    let other_dir = case.dir.path().join("other");
    fs_err::create_dir(&other_dir).expect("mkdir");
    let other = Keys::new(&other_dir);
    let mut forge = case.forge();
    forge.sign(&other.key, SIGNATURE_NAMESPACE);
    expect!(
        fails,
        "signed by an untrusted key",
        case.verify(&forge),
        Invalid::Signature(VerifyError::UnknownSigner { .. })
    );

    // The right key, but trusted only for git signatures.
    let git_only = trust_line(&case.keys, "namespaces=\"git\"");
    expect!(
        fails,
        "key trusted for another namespace",
        case.verify_with(&case.forge.to_bytes(), &git_only, &Policy::default()),
        Invalid::Signature(VerifyError::NamespaceNotAllowed { .. })
    );

    // A trusted key, but listed for another principal than the one required.
    let trust = case.keys.trust();
    let requiring = |identity: &str| {
        let mut policy = Policy::default();
        policy.expected_signer = Some(identity.to_owned());
        policy
    };
    expect!(
        fails,
        "key listed for another principal",
        case.verify_with(&case.forge.to_bytes(), &trust, &requiring("shop@new-host.example")),
        Invalid::WrongSigner { identity, .. } if identity == "shop@new-host.example"
    );
    fails.finish();
}

#[test]
fn a03_principal_patterns_decide_as_ssh_keygen_does() {
    let case = Case::new();
    let line = |principals: &str| {
        TrustedSigners::parse(
            &format!("{principals} {}\n", case.keys.key.public_key_line()),
            Path::new("allowed_signers"),
        )
        .expect("trust line")
    };
    let requiring = |identity: &str| {
        let mut policy = Policy::default();
        policy.expected_signer = Some(identity.to_owned());
        policy
    };
    let bytes = case.forge.to_bytes();
    for (principals, identity, accepted) in [
        ("exports@old-host.example", "exports@old-host.example", true),
        ("*@old-host.example", "exports@old-host.example", true),
        (
            "a@x,exports@old-host.exampl?",
            "exports@old-host.example",
            true,
        ),
        (
            "*@old-host.example,!exports@*",
            "exports@old-host.example",
            false,
        ),
        ("*@other.example", "exports@old-host.example", false),
    ] {
        let outcome = case.verify_with(&bytes, &line(principals), &requiring(identity));
        assert_eq!(
            outcome.is_ok(),
            accepted,
            "{principals} for {identity}: {outcome:?}"
        );
    }
}

#[test]
fn a04_expired_or_not_yet_valid_key() {
    let case = Case::new();
    let mut fails = Failures::default();
    let bytes = case.forge.to_bytes();
    let expired = trust_line(&case.keys, "valid-before=20200101Z");
    expect!(
        fails,
        "valid-before in the past",
        case.verify_with(&bytes, &expired, &Policy::default()),
        Invalid::Signature(VerifyError::Expired { .. })
    );
    let future = trust_line(&case.keys, "valid-after=29990101Z");
    expect!(
        fails,
        "valid-after in the future",
        case.verify_with(&bytes, &future, &Policy::default()),
        Invalid::Signature(VerifyError::NotYetValid { .. })
    );
    // Trusted by the signers file, but listed as revoked (as `ssh-keygen -Y verify -r`).
    let revoked = case.dir.path().join("revoked_keys");
    fs_err::write(
        &revoked,
        format!(
            "# leaked on 2026-11-01\n\n{}\n",
            case.keys.key.public_key_line()
        ),
    )
    .expect("write revoked keys");
    let mut trust = case.keys.trust();
    trust.revoke_from_file(&revoked).expect("revocation file");
    expect!(
        fails,
        "revoked key",
        case.verify_with(&bytes, &trust, &Policy::default()),
        Invalid::Signature(VerifyError::Revoked { .. })
    );
    // Another key's revocation leaves this one trusted.
    let other_dir = case.dir.path().join("other");
    fs_err::create_dir(&other_dir).expect("mkdir");
    let other = Keys::new(&other_dir);
    fs_err::write(&revoked, other.key.public_key_line()).expect("write revoked keys");
    let mut trust = case.keys.trust();
    trust.revoke_from_file(&revoked).expect("revocation file");
    expect_ok!(
        fails,
        "another key revoked",
        case.verify_with(&bytes, &trust, &Policy::default())
    );
    // A binary KRL is not read: refused, not ignored.
    fs_err::write(&revoked, b"SSHKRL\n\0\x01\0\0").expect("write krl");
    assert!(case.keys.trust().revoke_from_file(&revoked).is_err());
    fails.finish();
}

#[test]
fn a05_sshsig_version_2_or_unknown_hash() {
    let case = Case::new();
    let mut fails = Failures::default();
    let original = SshSigBlob::parse_armored(case.forge.get(SIGNATURE));

    // The version is not covered by the signature: only the parser can refuse it.
    let mut blob = original.clone();
    blob.version = 2;
    let mut forge = case.forge();
    forge.set(SIGNATURE, blob.armored());
    expect!(
        fails,
        "SSHSIG version 2",
        case.verify(&forge),
        Invalid::Signature(VerifyError::Malformed(_))
    );

    for hash in ["sha1", "sha384", "md5"] {
        let mut blob = original.clone();
        blob.hash_alg = hash.as_bytes().to_vec();
        let mut forge = case.forge();
        forge.set(SIGNATURE, blob.armored());
        expect!(
            fails,
            format!("hash algorithm {hash}"),
            case.verify(&forge),
            Invalid::Signature(VerifyError::Malformed(_))
        );
    }
    fails.finish();
}

/// PROTOCOL.sshsig: a non-empty `reserved` field is to be ignored, not refused (it is signed).
#[test]
fn a06_nonempty_reserved_field_is_accepted() {
    let case = Case::new();
    let mut fails = Failures::default();
    let message = case.forge.get(TAG_MANIFEST).to_vec();
    for reserved in [&b""[..], b"future extension"] {
        let mut blob = SshSigBlob::parse_armored(case.forge.get(SIGNATURE));
        blob.reserved = reserved.to_vec();
        blob.resign(&case.keys.private, &message);
        let mut forge = case.forge();
        forge.set(SIGNATURE, blob.armored());
        expect_ok!(
            fails,
            format!("reserved = {:?}", reserved.escape_ascii().to_string()),
            case.verify(&forge)
        );
    }
    fails.finish();
}

#[test]
fn a07_edited_bundle_json_after_signing() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut forge = case.forge();
    forge.replace_text(BUNDLE_JSON, "\"sequence\": 1,", "\"sequence\": 9,");
    expect!(fails, "bundle.json edited", case.verify(&forge),
        Invalid::Checksum { name, .. } if name == BUNDLE_JSON);

    // Every other tag file too: each is hashed before anything is parsed.
    for name in [
        BAGIT_TXT,
        README_TXT,
        FILES_INDEX,
        FILES_SHA256,
        BAG_INFO,
        MANIFEST,
    ] {
        let mut forge = case.forge();
        forge.get_mut(name).push(b'\n');
        expect!(fails, format!("{name} edited"), case.verify(&forge),
            Invalid::Checksum { name: n, .. } if n == name);
    }

    let mut forge = case.forge();
    forge.get_mut(TAG_MANIFEST).push(b'\n');
    expect!(
        fails,
        "tag manifest edited",
        case.verify(&forge),
        Invalid::Signature(VerifyError::BadSignature { .. })
    );
    fails.finish();
}

#[test]
fn a08_payload_missing_extra_or_listed_twice() {
    let case = Case::new();
    let mut fails = Failures::default();
    let payload_line = case.forge.text(MANIFEST);

    let mut forge = case.forge();
    forge.remove(FILES_PAYLOAD);
    forge.resign(&case.keys);
    expect!(fails, "payload member missing", case.verify(&forge),
        Invalid::Outer(OuterError::Unexpected { name, .. }) if name == FILES_INDEX);

    let mut forge = case.forge();
    forge.insert_after(FILES_PAYLOAD, "data/extra.bin", b"smuggled".to_vec());
    forge.resign(&case.keys);
    expect!(fails, "extra payload file, unlisted", case.verify(&forge),
        Invalid::Unlisted { name, listing } if name == "data/extra.bin" && listing == MANIFEST);

    // Listed in the manifest, but bundle.json does not describe it.
    let mut forge = case.forge();
    forge.insert_after(FILES_PAYLOAD, "data/extra.bin", b"smuggled".to_vec());
    forge.update_manifest();
    forge.update_oxum();
    forge.resign(&case.keys);
    expect!(fails, "extra payload file, undescribed", case.verify(&forge),
        Invalid::Inconsistent { reason } if reason.contains("payload files described"));

    let mut forge = case.forge();
    forge.set(
        MANIFEST,
        format!("{payload_line}{}  data/ghost.bin\n", sha256_hex(b"ghost")),
    );
    forge.resign(&case.keys);
    expect!(fails, "manifest lists an absent file", case.verify(&forge),
        Invalid::Absent { name, listing } if name == "data/ghost.bin" && listing == MANIFEST);

    let mut forge = case.forge();
    forge.set(MANIFEST, format!("{payload_line}{payload_line}"));
    forge.resign(&case.keys);
    expect!(fails, "duplicate manifest line", case.verify(&forge),
        Invalid::Listing { file, line: 2, reason } if file == MANIFEST && reason.contains("twice"));

    let mut forge = case.forge();
    forge.set(
        MANIFEST,
        format!("{payload_line}{}  {FILES_PAYLOAD}\n", sha256_hex(b"other")),
    );
    forge.resign(&case.keys);
    expect!(fails, "same path with two hashes", case.verify(&forge),
        Invalid::Listing { file, line: 2, reason } if file == MANIFEST && reason.contains("twice"));

    let mut forge = case.forge();
    forge.update_tag_manifest();
    let tags = forge.text(TAG_MANIFEST);
    let first = tags.lines().next().expect("a line");
    forge.set(TAG_MANIFEST, format!("{tags}{first}\n"));
    forge.sign(&case.keys.key, SIGNATURE_NAMESPACE);
    expect!(fails, "duplicate tag manifest line", case.verify(&forge),
        Invalid::Listing { file, reason, .. } if file == TAG_MANIFEST && reason.contains("twice"));
    fails.finish();
}

#[test]
fn a09_manifest_path_escaping_the_bag() {
    let case = Case::new();
    let mut fails = Failures::default();
    let payload_line = case.forge.text(MANIFEST);
    let hash = sha256_hex(b"x");

    let mut forge = case.forge();
    forge.set(MANIFEST, format!("{payload_line}{hash}  /etc/passwd\n"));
    forge.resign(&case.keys);
    expect!(fails, "absolute path", case.verify(&forge),
        Invalid::Listing { file, reason, .. } if file == MANIFEST && reason == "invalid name");

    // Listing names are only compared with the outer member names (which are validated),
    // never resolved on a filesystem: an escaping name is a name that is not in the bag.
    for escaping in [
        "data/../../x",
        "~/.bashrc",
        "C:\\Windows\\x",
        "data/./files.tar.zst",
    ] {
        let mut forge = case.forge();
        forge.set(MANIFEST, format!("{payload_line}{hash}  {escaping}\n"));
        forge.resign(&case.keys);
        expect!(fails, escaping, case.verify(&forge),
            Invalid::Absent { name, listing } if name == escaping && listing == MANIFEST);
    }

    let mut forge = case.forge();
    forge.update_tag_manifest();
    let tags = forge.text(TAG_MANIFEST);
    forge.set(
        TAG_MANIFEST,
        format!("{tags}{hash}  ../../.ssh/authorized_keys\n"),
    );
    forge.sign(&case.keys.key, SIGNATURE_NAMESPACE);
    expect!(fails, "tag manifest escaping name", case.verify(&forge),
        Invalid::Absent { listing, .. } if listing == TAG_MANIFEST);

    // The outer tar itself may not carry such a name either.
    for name in ["data/../x", "data//x", "data/./x", "/data/x"] {
        let mut forge = case.forge();
        forge.insert_after(FILES_PAYLOAD, name, b"x".to_vec());
        expect!(fails, format!("outer member {name}"), case.verify(&forge),
            Invalid::Outer(OuterError::Unexpected { name: n, .. }) if n == name);
    }
    fails.finish();
}

#[test]
fn a10_fetch_txt_is_an_unexpected_member() {
    let case = Case::new();
    let mut fails = Failures::default();
    let fetch = b"https://evil.example/payload 123 data/files.tar.zst\n".to_vec();
    for (label, place) in [
        ("after bagit.txt", 0),
        ("before the signature", 1),
        ("after the signature", 2),
    ] {
        let mut forge = case.forge();
        match place {
            0 => forge.insert_after(BAGIT_TXT, "fetch.txt", fetch.clone()),
            1 => forge.insert_before(SIGNATURE, "fetch.txt", fetch.clone()),
            _ => forge.push("fetch.txt", fetch.clone()),
        }
        expect!(fails, label, case.verify(&forge),
            Invalid::Outer(OuterError::Unexpected { name, .. }) if name == "fetch.txt");
    }
    fails.finish();
}

#[test]
fn a11_strict_bagit_txt() {
    let case = Case::new();
    let mut fails = Failures::default();
    for (label, text) in [
        (
            "BOM",
            "\u{feff}BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\n",
        ),
        (
            "CRLF",
            "BagIt-Version: 1.0\r\nTag-File-Character-Encoding: UTF-8\r\n",
        ),
        (
            "extra line",
            "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8\nExtra: x\n",
        ),
        (
            "version 2.0",
            "BagIt-Version: 2.0\nTag-File-Character-Encoding: UTF-8\n",
        ),
        (
            "no final newline",
            "BagIt-Version: 1.0\nTag-File-Character-Encoding: UTF-8",
        ),
        ("empty", ""),
    ] {
        let mut forge = case.forge();
        forge.set(BAGIT_TXT, text);
        forge.resign(&case.keys);
        expect!(fails, label, case.verify(&forge), Invalid::BagitDeclaration);
    }
    fails.finish();
}

#[test]
fn a12_payload_oxum_wrong_repeated_or_huge() {
    let case = Case::new();
    let mut fails = Failures::default();
    let info = case.forge.text(BAG_INFO);
    let oxum_line = info
        .lines()
        .find(|l| l.starts_with("Payload-Oxum: "))
        .expect("Payload-Oxum line")
        .to_owned();
    for (label, text, expected) in [
        (
            "wrong",
            info.replace(&oxum_line, "Payload-Oxum: 1.1"),
            "the payload is",
        ),
        (
            "huge",
            info.replace(&oxum_line, "Payload-Oxum: 99999999999999.1"),
            "the payload is",
        ),
        (
            "not a number",
            info.replace(&oxum_line, "Payload-Oxum: lots"),
            "the payload is",
        ),
        ("repeated", format!("{info}{oxum_line}\n"), "appears twice"),
        (
            "missing",
            info.replace(&format!("{oxum_line}\n"), ""),
            "missing",
        ),
    ] {
        let mut forge = case.forge();
        forge.set(BAG_INFO, text);
        forge.resign(&case.keys);
        expect!(fails, label, case.verify(&forge),
            Invalid::BagInfo { reason } if reason.contains(expected));
    }
    fails.finish();
}

#[test]
fn a13_bundle_for_another_tenant() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut policy = Policy::default();
    policy.expected_tenant = Some("other".to_owned());
    expect!(fails, "demo bundle, importing for other",
        case.verify_with(&case.forge.to_bytes(), &case.keys.trust(), &policy),
        Invalid::WrongTenant { expected, found } if expected == "other" && found == "demo");

    // A genuinely signed bundle of tenant "evil", replayed at tenant "demo".
    let mut forge = case.forge();
    forge.edit_bundle_json(|v| v["tenant"] = "evil".into());
    forge.replace_text(
        BAG_INFO,
        "External-Identifier: demo",
        "External-Identifier: evil",
    );
    forge.resign(&case.keys);
    let mut policy = Policy::default();
    policy.expected_tenant = Some("demo".to_owned());
    expect!(fails, "evil bundle, importing for demo",
        case.verify_with(&forge.to_bytes(), &case.keys.trust(), &policy),
        Invalid::WrongTenant { found, .. } if found == "evil");
    fails.finish();
}

#[test]
fn a16_created_at_far_in_the_future() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut forge = case.forge();
    forge.edit_bundle_json(|v| v["created_at"] = "2999-01-01T00:00:00Z".into());
    forge.resign(&case.keys);
    expect!(
        fails,
        "created in 2999",
        case.verify(&forge),
        Invalid::FromTheFuture { .. }
    );

    // Same check seen from the other side: the verifier's clock is years behind.
    let mut policy = Policy::default();
    policy.now = "2020-01-01T00:00:00Z".parse().expect("timestamp");
    expect!(
        fails,
        "verifier clock in 2020",
        case.verify_with(&case.forge.to_bytes(), &case.keys.trust(), &policy),
        Invalid::FromTheFuture { .. }
    );
    fails.finish();
}

#[test]
fn a17_payload_from_another_bundle() {
    let case = Case::new();
    let mut fails = Failures::default();
    // Bundle Y: another tree, signed by the same trusted key.
    let tree_y = case.dir.path().join("tree-y");
    fixture::small_tree(&tree_y);
    fs_err::write(tree_y.join("more.txt"), "y".repeat(5000)).expect("write");
    let bundle_y = case.dir.path().join("y.bag");
    fixture::export(&tree_y, &bundle_y, &case.keys);
    let y = Forge::read(&bundle_y);

    // Y has one more file, so its payload cannot have X's signed size.
    assert_ne!(
        y.get(FILES_PAYLOAD).len(),
        case.forge.get(FILES_PAYLOAD).len()
    );
    let mut forge = case.forge();
    forge.set(FILES_PAYLOAD, y.get(FILES_PAYLOAD).to_vec());
    expect!(fails, "files.tar.zst of Y in X", case.verify(&forge),
        Invalid::Size { name, .. } if name == FILES_PAYLOAD);

    let mut forge = case.forge();
    forge.set(FILES_INDEX, y.get(FILES_INDEX).to_vec());
    expect!(fails, "files-index.jsonl of Y in X", case.verify(&forge),
        Invalid::Checksum { name, .. } if name == FILES_INDEX);

    // Y's own payload and index together: X's signed tag manifest still disagrees.
    let mut forge = case.forge();
    forge.set(FILES_PAYLOAD, y.get(FILES_PAYLOAD).to_vec());
    forge.set(FILES_INDEX, y.get(FILES_INDEX).to_vec());
    forge.set(BUNDLE_JSON, y.get(BUNDLE_JSON).to_vec());
    expect!(fails, "payload, index and bundle.json of Y in X", case.verify(&forge),
        Invalid::Checksum { name, .. } if name == FILES_INDEX);

    let mut forge = case.forge();
    forge.set(SIGNATURE, y.get(SIGNATURE).to_vec());
    expect!(
        fails,
        "signature of Y on X",
        case.verify(&forge),
        Invalid::Signature(VerifyError::BadSignature { .. })
    );
    fails.finish();
}

#[test]
fn a18_format_version_higher_than_supported() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut forge = case.forge();
    forge.edit_bundle_json(|v| v["format_version"] = 2.into());
    forge.resign(&case.keys);
    expect!(
        fails,
        "format_version 2",
        case.verify(&forge),
        Invalid::UnsupportedFormat { version: 2, .. }
    );

    let mut forge = case.forge();
    forge.edit_bundle_json(|v| v["format"] = "tenant-bundle".into());
    forge.resign(&case.keys);
    expect!(fails, "another format name", case.verify(&forge),
        Invalid::UnsupportedFormat { format, version: 1 } if format == "tenant-bundle");
    fails.finish();
}

#[test]
fn a19_absurd_declared_sizes() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut forge = case.forge();
    forge.edit_bundle_json(|v| v["files"]["entries"] = 1_000_000_000u64.into());
    forge.resign(&case.keys);
    expect!(fails, "10^9 entries", case.verify(&forge),
        Invalid::Limit { reason } if reason.contains("entries"));

    let mut forge = case.forge();
    forge.set_uncompressed_size(1 << 50);
    forge.resign(&case.keys);
    expect!(fails, "1 PiB uncompressed", case.verify(&forge),
        Invalid::Limit { reason } if reason.contains("uncompressed"));

    // An importer's quota, set through the policy.
    let bytes = case.forge.to_bytes();
    let mut policy = Policy::default();
    policy.max_uncompressed_bytes = 1000;
    expect!(fails, "payload over quota",
        case.verify_with(&bytes, &case.keys.trust(), &policy),
        Invalid::Limit { reason } if reason.contains("uncompressed"));
    let mut policy = Policy::default();
    policy.max_entries = 2;
    expect!(fails, "entries over quota",
        case.verify_with(&bytes, &case.keys.trust(), &policy),
        Invalid::Limit { reason } if reason.contains("entries"));

    let long = format!("{}/x", "d".repeat(5000));
    expect!(
        fails,
        "path over PATH_MAX",
        case.with_first_index_line(&dir_line(long.as_bytes())),
        Invalid::Index {
            line: 1,
            source: IndexError::Path(PathError::TooLong(5002))
        }
    );
    fails.finish();
}

#[test]
fn a20_outer_tar_with_links_dirs_or_other_names() {
    let case = Case::new();
    let mut fails = Failures::default();
    let with_type = |forge: &Forge, member: &str, kind: EntryType| {
        forge.to_bytes_with(|name, header| {
            if name == member {
                header.set_entry_type(kind);
            }
        })
    };

    for (member, kind, flag) in [
        (README_TXT, EntryType::Symlink, '2'),
        (FILES_PAYLOAD, EntryType::Link, '1'),
        (BUNDLE_JSON, EntryType::GNULongName, 'L'),
        (BAG_INFO, EntryType::Char, '3'),
    ] {
        let bytes = with_type(&case.forge, member, kind);
        expect!(fails, format!("{member} as type {flag}"), case.verify_bytes(&bytes),
            Invalid::Outer(OuterError::NotAFile { name, flag: f, .. })
                if name == member && f == flag);
    }

    for (name, kind, flag) in [
        ("data", EntryType::Symlink, '2'),
        ("data/", EntryType::Directory, '5'),
    ] {
        let mut forge = case.forge();
        forge.insert_after(README_TXT, name, Vec::new());
        let bytes = with_type(&forge, name, kind);
        expect!(fails, format!("{name:?} as type {flag}"), case.verify_bytes(&bytes),
            Invalid::Outer(OuterError::NotAFile { name: n, flag: f, .. })
                if n == name && f == flag);
    }

    let mut forge = case.forge();
    forge.insert_after(README_TXT, "install.sh", b"#!/bin/sh\n".to_vec());
    expect!(fails, "another name", case.verify(&forge),
        Invalid::Outer(OuterError::Unexpected { name, .. }) if name == "install.sh");
    fails.finish();
}

// -------------------------------------------------------------------------------------------
// C. Inner tar container and parser differentials (all resealed: signature valid)

#[test]
fn c01_pax_size_disagrees_with_header() {
    let case = Case::new();
    let mut fails = Failures::default();
    for (label, pax_size, header_size) in [("PAX larger", 100u64, 5u64), ("PAX smaller", 0, 5)] {
        let mut tree = InnerTree::new();
        tree.tar(&pax(&[("size", pax_size.to_string().as_bytes())]))
            .file(b"a", b"hello")
            .end();
        expect!(fails, label, case.resealed_tree(&tree),
            Invalid::Tar(TarError::PaxSizeMismatch { pax, header, .. })
                if pax == pax_size && header == header_size);
    }
    fails.finish();
}

#[test]
fn c02_truncated_at_entry_boundary() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut tree = InnerTree::new();
    tree.file(b"a", b"hello");
    expect!(
        fails,
        "no end-of-archive marker",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::Truncated { .. })
    );
    tree.tar(&[0; BLOCK]);
    expect!(
        fails,
        "half an end-of-archive marker",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::Truncated { .. })
    );
    fails.finish();
}

#[test]
fn c03_lone_zero_block_hides_members() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut tree = InnerTree::new();
    tree.file(b"a", b"hello")
        .tar(&[0; BLOCK])
        .tar(&tar_file(b"hidden", b"not in the index"))
        .end();
    expect!(
        fails,
        "zero block then a member",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::LoneZeroBlock { .. })
    );
    fails.finish();
}

#[test]
fn c04_data_after_end_of_archive() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut tree = tree_with_a();
    tree.tar(b"garbage after the marker");
    expect!(
        fails,
        "garbage",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::TrailingData { .. })
    );

    let mut tree = tree_with_a();
    tree.tar(&tar_file(b"b", b"second archive")).end();
    expect!(
        fails,
        "a second tar appended",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::TrailingData { .. })
    );

    // Data hidden in the padding of an entry, another place no index line describes.
    let mut tree = InnerTree::new();
    let mut entry = tar_file(b"a", b"hello");
    entry[BLOCK + 5..BLOCK + 20].copy_from_slice(b"hidden in pad!!");
    tree.tar(&entry).file_line_only(b"a", b"hello").end();
    expect!(
        fails,
        "non-zero padding",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::Padding { .. })
    );
    fails.finish();
}

#[test]
fn c05_header_checksum_wrong_or_signed() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut entry = tar_file(b"a", b"hello");
    entry[0] = b'b'; // name changed, checksum not updated
    let mut tree = InnerTree::new();
    tree.tar(&entry).file_line_only(b"a", b"hello").end();
    expect!(
        fails,
        "stale checksum",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::Checksum { .. })
    );

    // A name byte >= 0x80 makes the signed and unsigned sums differ; only unsigned is valid.
    let path = b"caf\xe9";
    let mut entry = tar_file(path, b"hello");
    let signed = signed_checksum(&entry[..BLOCK]);
    write_checksum_field(&mut entry[..BLOCK], signed as u32);
    let mut tree = InnerTree::new();
    tree.tar(&entry).file_line_only(path, b"hello").end();
    expect!(
        fails,
        "signed checksum",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::Checksum { .. })
    );
    fails.finish();
}

#[test]
fn c06_huge_long_name_or_pax_header() {
    let case = Case::new();
    let mut fails = Failures::default();
    // Only the header is needed: the size must be refused before any of it is read.
    for (label, kind) in [
        ("GNU long name", EntryType::GNULongName),
        ("GNU long link", EntryType::GNULongLink),
    ] {
        let mut tree = InnerTree::new();
        tree.tar(header(b"././@LongLink", kind, 1 << 30).as_bytes())
            .file_line_only(b"a", b"hello");
        expect!(
            fails,
            label,
            case.resealed_tree(&tree),
            Invalid::Tar(TarError::GnuLongName { .. })
        );
    }
    let mut tree = InnerTree::new();
    tree.tar(header(b"././@PaxHeader", EntryType::XHeader, 1 << 30).as_bytes())
        .file_line_only(b"a", b"hello");
    expect!(fails, "1 GiB PAX header", case.resealed_tree(&tree),
        Invalid::Tar(TarError::PaxTooLarge { size, .. }) if size == 1 << 30);
    fails.finish();
}

#[test]
fn c07_two_extension_headers_or_dangling() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut tree = InnerTree::new();
    tree.tar(&pax(&[("path", b"a")]))
        .tar(&pax(&[("path", b"other")]))
        .file(b"a", b"hello")
        .end();
    expect!(
        fails,
        "two PAX headers for one member",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::TwoExtensionHeaders { .. })
    );

    let mut tree = tree_with_a();
    tree.tar = pax(&[("path", b"a")]);
    tree.end();
    expect!(
        fails,
        "PAX header then end-of-archive",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::DanglingExtension { .. })
    );

    let mut tree = tree_with_a();
    tree.tar = pax(&[("path", b"a")]);
    expect!(
        fails,
        "PAX header then end of stream",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::DanglingExtension { .. })
    );
    fails.finish();
}

#[test]
fn c08_malformed_pax_records() {
    let case = Case::new();
    let mut fails = Failures::default();
    let malformed: [(&str, Vec<u8>, &str); 7] = [
        ("length too long", b"99 path=a\n".to_vec(), "does not match"),
        ("length too short", b"5 path=a\n".to_vec(), "does not match"),
        ("no length", b"path=a\n".to_vec(), "length"),
        ("no '='", b"8 patha\n".to_vec(), "'='"),
        ("non-UTF-8 key", b"10 p\xffth=a\n".to_vec(), "non-UTF-8 key"),
        (
            "non-UTF-8 value without hdrcharset",
            pax_record("path", b"a\xff"),
            "hdrcharset",
        ),
        (
            "duplicate key",
            [pax_record("path", b"a"), pax_record("path", b"b")].concat(),
            "duplicate",
        ),
    ];
    for (label, body, reason_part) in malformed {
        let mut tree = InnerTree::new();
        tree.tar(&pax_raw(EntryType::XHeader, &body))
            .file(b"a", b"hello")
            .end();
        expect!(fails, label, case.resealed_tree(&tree),
            Invalid::Tar(TarError::PaxMalformed { reason, .. }) if reason.contains(reason_part));
    }
    for key in ["hdrcharset", "SCHILY.xattr.security.capability", "comment"] {
        let value: &[u8] = if key == "hdrcharset" {
            b"ISO-IR 10646 2000 UTF-8"
        } else {
            b"x"
        };
        let mut tree = InnerTree::new();
        tree.tar(&pax(&[(key, value)])).file(b"a", b"hello").end();
        expect!(fails, format!("key {key}"), case.resealed_tree(&tree),
            Invalid::Tar(TarError::PaxKey { key: k, .. }) if k == key);
    }
    fails.finish();
}

#[test]
fn c09_pax_global_header() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut tree = InnerTree::new();
    tree.tar(&pax_raw(
        EntryType::XGlobalHeader,
        &[pax_record("path", b"evil"), pax_record("size", b"0")].concat(),
    ))
    .file(b"a", b"hello")
    .end();
    expect!(
        fails,
        "global header",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::GlobalPax { .. })
    );
    fails.finish();
}

/// Fails at the time of writing: the reader takes numeric fields from `tar::Header::size()` /
/// `mtime()`, which keep only the low 64 bits of a 12-byte base-256 field.
#[test]
fn c10_base256_numeric_fields() {
    let case = Case::new();
    let mut fails = Failures::default();
    // (label, field offset, field bytes, expected failing field or "size mismatch")
    let mut big_63 = [0u8; 12];
    big_63[0] = 0x80;
    big_63[4] = 0x80; // 2^63
    let mut over_64 = [0u8; 12];
    over_64[0] = 0x80;
    over_64[3] = 0x01; // 2^64 + 5: its low 64 bits say 5
    over_64[11] = 5;
    let mut uid_33 = [0u8; 8];
    uid_33[0] = 0x80;
    uid_33[3] = 0x01; // 2^32
    let mut mtime_over_64 = [0u8; 12];
    mtime_over_64[0] = 0x80;
    mtime_over_64[3] = 0x01; // 2^64 + MTIME: its low 64 bits say MTIME
    mtime_over_64[4..].copy_from_slice(&(MTIME as u64).to_be_bytes());
    // GNU tar refuses the values beyond 64 bits ("base-256 value is out of off_t range"):
    // reading only their low bits would make baluchon and stock tools see different archives.
    let cases: [(&str, usize, &[u8], &str); 7] = [
        ("size >= 2^63", 124, &big_63, "size"),
        ("size 2^64 + 5 read as 5", 124, &over_64, "size"),
        ("negative size", 124, &[0xff; 12], "size"),
        ("mtime >= 2^63", 136, &big_63, "mtime"),
        (
            "mtime 2^64 + MTIME read as MTIME",
            136,
            &mtime_over_64,
            "mtime",
        ),
        ("negative mtime", 136, &[0xff; 12], "mtime"),
        ("uid >= 2^32", 108, &uid_33, "uid"),
    ];
    for (label, at, field, expected) in cases {
        let mut entry = tar_file(b"a", b"hello");
        entry[at..at + field.len()].copy_from_slice(field);
        fix_checksum(&mut entry[..BLOCK]);
        let mut tree = InnerTree::new();
        tree.tar(&entry).file_line_only(b"a", b"hello").end();
        let outcome = case.resealed_tree(&tree);
        if expected == "size mismatch" {
            // Representable, but beyond what the signed index says.
            expect!(
                fails,
                label,
                outcome,
                Invalid::EntryMismatch { field: "size", .. }
            );
        } else {
            expect!(fails, label, outcome,
                Invalid::Tar(TarError::Numeric { field, .. }) if field == expected);
        }
    }
    fails.finish();
}

/// An old-GNU sparse header (`S`) for `a` with the given map.
fn sparse_entry(real: u64, stored: u64, map: &[(u64, u64)]) -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..1].copy_from_slice(b"a");
    h.set_entry_type(EntryType::GNUSparse);
    h.set_mode(FILE_MODE);
    h.set_uid(u64::from(UID));
    h.set_gid(u64::from(GID));
    h.set_mtime(MTIME as u64);
    h.set_size(stored);
    let gnu = h.as_gnu_mut().expect("GNU header");
    gnu.set_real_size(real);
    for (slot, &(offset, len)) in gnu.sparse.iter_mut().zip(map) {
        slot.set_offset(offset);
        slot.set_length(len);
    }
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend(pad(&vec![b'x'; stored as usize]));
    out
}

#[test]
fn c11_invalid_gnu_sparse_or_pax_sparse() {
    let case = Case::new();
    let mut fails = Failures::default();
    let logical = [vec![b'x'; 10], vec![0; 90]].concat();

    // Control: a valid sparse entry (10 data bytes, then a 90-byte hole) verifies.
    let mut line: serde_json::Value =
        serde_json::from_str(&file_line(b"a", &logical)).expect("JSON");
    line["sparse"] = serde_json::json!([[0, 10]]);
    let mut tree = InnerTree::new();
    tree.tar(&sparse_entry(100, 10, &[(0, 10)]))
        .line(&line.to_string())
        .end();
    tree.content_bytes = 100;
    expect_ok!(fails, "valid sparse entry", case.resealed_tree(&tree));

    type BadMap<'a> = (&'a str, u64, &'a [(u64, u64)], &'a str);
    let bad_maps: [BadMap; 4] = [
        ("overlapping", 20, &[(0, 10), (5, 10)], "ordered"),
        ("out of order", 20, &[(50, 10), (0, 10)], "ordered"),
        ("past the real size", 10, &[(95, 10)], "inside the file"),
        ("stored size is not the sum", 30, &[(0, 10)], "add up"),
    ];
    for (label, stored, map, reason_part) in bad_maps {
        let mut tree = InnerTree::new();
        tree.tar(&sparse_entry(100, stored, map))
            .line(&line.to_string())
            .end();
        expect!(fails, label, case.resealed_tree(&tree),
            Invalid::Tar(TarError::Sparse { reason, .. }) if reason.contains(reason_part));
    }

    // PAX sparse 1.0: the data would extract as a GNUSparseFile.0/ file of map + data.
    let mut tree = InnerTree::new();
    tree.tar(&pax(&[
        ("GNU.sparse.major", b"1"),
        ("GNU.sparse.minor", b"0"),
        ("GNU.sparse.name", b"a"),
        ("GNU.sparse.realsize", b"100"),
    ]))
    .tar(&tar_file(b"GNUSparseFile.0/a", b"1\n0\n10\nxxxxxxxxxx"))
    .line(&line.to_string())
    .end();
    expect!(fails, "PAX sparse 1.0", case.resealed_tree(&tree),
        Invalid::Tar(TarError::PaxKey { key, .. }) if key.starts_with("GNU.sparse."));
    fails.finish();
}

#[test]
fn c12_regular_file_with_trailing_slash() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut tree = InnerTree::new();
    tree.tar(header(b"a/", EntryType::Regular, 0).as_bytes())
        .file_line_only(b"a", b"")
        .end();
    expect!(
        fails,
        "regular file a/",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::TrailingSlash { .. })
    );

    let mut tree = InnerTree::new();
    tree.tar(header(b"d", EntryType::Directory, 0).as_bytes())
        .line(&dir_line(b"d"))
        .end();
    expect!(
        fails,
        "directory without its slash",
        case.resealed_tree(&tree),
        Invalid::Tar(TarError::TrailingSlash { .. })
    );
    fails.finish();
}

// -------------------------------------------------------------------------------------------
// D. Compression layer

#[test]
fn d01_decompression_bomb() {
    let case = Case::new();
    let mut fails = Failures::default();
    let zeros = vec![0u8; 8 << 20];
    let mut tree = InnerTree::new();
    tree.file(b"zeros", &zeros).end();
    let mut forge = case.forge();
    forge.set_tree(&tree);
    forge.set_uncompressed_size(1 << 20); // the signed cap is 1 MiB, the stream 8 MiB
    forge.reseal(&case.keys);
    assert!(forge.get(FILES_PAYLOAD).len() < 64 << 10, "a bomb is small");
    expect!(fails, "8 MiB from a 1 MiB declaration", case.verify(&forge),
        Invalid::DecompressedTooLarge { declared } if declared == 1 << 20);
    fails.finish();
}

#[test]
fn d02_huge_frame_content_size() {
    let case = Case::new();
    let mut fails = Failures::default();
    let tar = tree_with_a().tar;
    let tree = tree_with_a();
    let with_frame = |frame: Vec<u8>| {
        let mut forge = case.forge();
        forge.set_tree(&tree);
        forge.set_payload(frame, tar.len() as u64);
        forge.reseal(&case.keys);
        case.verify(&forge)
    };
    expect_ok!(
        fails,
        "control: true content size",
        with_frame(raw_frame(&tar, 20, Some(tar.len() as u64)))
    );
    expect_ok!(
        fails,
        "control: no content size",
        with_frame(raw_frame(&tar, 20, None))
    );
    // 1 TiB announced: nothing may be allocated from it; the lie itself is corruption.
    expect!(
        fails,
        "1 TiB Frame_Content_Size",
        with_frame(raw_frame(&tar, 20, Some(1 << 40))),
        Invalid::Decompress(_)
    );
    fails.finish();
}

#[test]
fn d03_window_over_128_mib() {
    let case = Case::new();
    let mut fails = Failures::default();
    let tree = tree_with_a();
    // With a declared content size the frame is small enough to be decoded in one call,
    // which must apply the same limit.
    let with_window = |log: u8, content_size: Option<u64>| {
        let mut forge = case.forge();
        forge.set_tree(&tree);
        forge.set_payload(
            raw_frame(&tree.tar, log, content_size),
            tree.tar.len() as u64,
        );
        forge.reseal(&case.keys);
        case.verify(&forge)
    };
    for size in [None, Some(tree.tar.len() as u64)] {
        expect_ok!(
            fails,
            format!("control: window 2^27 (the zstd CLI default limit), content size {size:?}"),
            with_window(27, size)
        );
        for log in [28, 31] {
            expect!(fails, format!("window 2^{log}, content size {size:?}"), with_window(log, size),
                Invalid::Decompress(e) if e.to_string().contains("too much memory"));
        }
    }
    fails.finish();
}

#[test]
fn d04_appended_or_concatenated_frames() {
    let case = Case::new();
    let mut fails = Failures::default();
    let tree = tree_with_a();
    let base = {
        let mut forge = case.forge();
        forge.set_tree(&tree);
        forge.reseal(&case.keys);
        forge
    };

    // Appended after signing: the signed size (and hash) cover the whole member.
    let mut forge = base.clone();
    forge
        .get_mut(FILES_PAYLOAD)
        .extend(skippable_frame(b"hidden"));
    expect!(fails, "skippable frame appended after signing", case.verify(&forge),
        Invalid::Size { name, .. } if name == FILES_PAYLOAD);

    let mut forge = base.clone();
    let second = [tar_file(b"b", b"smuggled"), EOA.to_vec()].concat();
    forge.get_mut(FILES_PAYLOAD).extend(compress(&second));
    forge.set_uncompressed_size((tree.tar.len() + second.len()) as u64);
    forge.reseal(&case.keys);
    expect!(
        fails,
        "signed second frame with a second tar",
        case.verify(&forge),
        Invalid::Tar(TarError::TrailingData { .. })
    );

    // By design: a skippable frame the signer included is covered by the hash and produces
    // no output (seek tables are skippable frames), so it is accepted.
    let mut forge = base.clone();
    forge
        .get_mut(FILES_PAYLOAD)
        .extend(skippable_frame(b"signed metadata"));
    forge.reseal(&case.keys);
    expect_ok!(fails, "signed skippable frame", case.verify(&forge));

    // Frames that declare and hold no content: each must give its buffer back, or a few
    // of them would leave the decoder waiting for one forever.
    let mut forge = case.forge();
    forge.set_tree(&tree);
    let empty_frames = (0..20).flat_map(|_| raw_frame(b"", 20, Some(0)));
    let payload: Vec<u8> = empty_frames.chain(compress(&tree.tar)).collect();
    forge.set_payload(payload, tree.tar.len() as u64);
    forge.reseal(&case.keys);
    expect_ok!(
        fails,
        "twenty empty frames, then the tar",
        case.verify(&forge)
    );
    fails.finish();
}

#[test]
fn d05_truncated_zstd_stream() {
    let case = Case::new();
    let mut fails = Failures::default();
    let tree = tree_with_a();
    let compressed = compress(&tree.tar);
    for (label, keep) in [
        ("last 3 bytes cut", compressed.len() - 3),
        ("cut in half", compressed.len() / 2),
        ("frame header only", 6),
    ] {
        let mut forge = case.forge();
        forge.set_tree(&tree);
        forge.set(FILES_PAYLOAD, compressed[..keep].to_vec());
        forge.reseal(&case.keys);
        expect!(fails, label, case.verify(&forge),
            Invalid::Decompress(e) if e.kind() == std::io::ErrorKind::UnexpectedEof);
    }
    fails.finish();
}

/// The index is zstd-compressed too: a truncated, bit-flipped or non-zstd index, signed as
/// it is, is refused as an index that does not decompress.
#[test]
fn d05_index_that_does_not_decompress() {
    let case = Case::new();
    let mut fails = Failures::default();
    let tree = tree_with_a();
    let good = compress(&tree.index);
    let mut flipped = good.clone();
    *flipped.last_mut().expect("bytes") ^= 0x01;
    for (label, bytes) in [
        ("index cut in half", good[..good.len() / 2].to_vec()),
        ("index frame checksum flipped", flipped),
        ("index not zstd at all", tree.index.clone()),
    ] {
        let mut forge = case.forge();
        forge.set_tree(&tree);
        forge.set(FILES_INDEX, bytes);
        forge.reseal(&case.keys);
        expect!(
            fails,
            label,
            case.verify(&forge),
            Invalid::IndexDecompress(_)
        );
    }
    fails.finish();
}

#[test]
fn d06_frame_checksum_mismatch() {
    let case = Case::new();
    let mut fails = Failures::default();
    let tree = tree_with_a();
    let mut forge = case.forge();
    forge.set_tree(&tree);
    *forge.get_mut(FILES_PAYLOAD).last_mut().expect("bytes") ^= 0x01;
    forge.reseal(&case.keys);
    expect!(fails, "frame checksum bit flipped", case.verify(&forge),
        Invalid::Decompress(e) if e.to_string().contains("checksum"));
    fails.finish();
}

// -------------------------------------------------------------------------------------------
// E. JSON and metadata parsing (bundle level)

#[test]
fn e01_deep_nesting() {
    let case = Case::new();
    let mut fails = Failures::default();
    // Typed structs never descend into a nested array where they expect a string or a
    // struct: parsing stops at the first bracket that does not fit (column <= 10), long
    // before serde_json's recursion limit, and without any stack growth.
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    expect!(fails, "bundle.json", case.with_bundle_json(deep(100_000)),
        Invalid::BundleJson(e) if e.line() == 1 && e.column() <= 10);
    let mut value = case.forge.bundle_json();
    value["payload"] = serde_json::Value::Null;
    let nested_payload = serde_json::to_string(&value).expect("JSON").replacen(
        "\"payload\":null",
        &format!("\"payload\":{}", deep(100_000)),
        1,
    );
    expect!(fails, "bundle.json payload", case.with_bundle_json(nested_payload),
        Invalid::BundleJson(e) if e.is_data() || e.to_string().contains("recursion limit"));
    let nested = format!(r#"{{"path":{}}}"#, deep(10_000));
    expect!(fails, "index line", case.with_first_index_line(&nested),
        Invalid::Index { source: IndexError::Json(e), .. } if e.column() <= 10);
    fails.finish();
}

#[test]
fn e02_duplicate_json_keys() {
    let case = Case::new();
    let mut fails = Failures::default();
    let json = case.forge.text(BUNDLE_JSON);
    for (label, from, to) in [
        (
            "tenant twice",
            "\"tenant\": \"demo\"",
            "\"tenant\": \"demo\", \"tenant\": \"evil\"",
        ),
        (
            "payload size twice",
            "\"media_type\":",
            "\"size\": 1, \"media_type\":",
        ),
        (
            "entries twice",
            "\"entries\":",
            "\"entries\": 1, \"entries\":",
        ),
    ] {
        assert!(json.contains(from), "{from}");
        expect!(fails, label, case.with_bundle_json(json.replacen(from, to, 1)),
            Invalid::BundleJson(e) if e.to_string().contains("duplicate field"));
    }
    let line = dir_line(b"x").replacen("\"mode\":", "\"mode\":511,\"mode\":", 1);
    expect!(fails, "index line", case.with_first_index_line(&line),
        Invalid::Index { source: IndexError::Json(e), .. }
            if e.to_string().contains("duplicate field"));
    fails.finish();
}

#[test]
fn e03_unknown_fields() {
    let case = Case::new();
    let mut fails = Failures::default();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit); 4] = [
        ("top level", |v| v["preserve_ownership"] = true.into()),
        ("payload file", |v| v["payload"][0]["exec"] = "sh".into()),
        ("files summary", |v| v["files"]["xattrs"] = true.into()),
        ("producer", |v| v["producer"]["trusted"] = true.into()),
    ];
    for (label, edit) in edits {
        let mut value = case.forge.bundle_json();
        edit(&mut value);
        expect!(fails, label, case.with_bundle_json(serde_json::to_vec(&value).expect("JSON")),
            Invalid::BundleJson(e) if e.to_string().contains("unknown field"));
    }
    let line = dir_line(b"x").replacen('{', "{\"preserve_ownership\":true,", 1);
    expect!(fails, "index line", case.with_first_index_line(&line),
        Invalid::Index { source: IndexError::Json(e), .. }
            if e.to_string().contains("unknown field"));
    fails.finish();
}

#[test]
fn e04_huge_bundle_json_or_index_line() {
    let case = Case::new();
    let mut fails = Failures::default();
    let limit = 16u64 << 20;
    let mut huge = b"{\"pad\":\"".to_vec();
    huge.resize(limit as usize - 1, b'x');
    huge.extend_from_slice(b"\"}");
    expect!(fails, "bundle.json one byte over 16 MiB", case.with_bundle_json(huge),
        Invalid::TooLarge { name, size, limit: l }
            if name == BUNDLE_JSON && size == limit + 1 && l == limit);

    let long = dir_line("n".repeat(140_000).as_bytes());
    expect!(
        fails,
        "140 kB index line",
        case.with_first_index_line(&long),
        Invalid::IndexLineTooLong { line: 1 }
    );
    fails.finish();
}

#[test]
fn e05_numbers_out_of_type() {
    let case = Case::new();
    let mut fails = Failures::default();
    let json = case.forge.text(BUNDLE_JSON);
    for bad in [
        "-1",
        "1.5",
        "1e999",
        "18446744073709551616",
        "\"1\"",
        "null",
    ] {
        let text = json.replacen("\"sequence\": 1,", &format!("\"sequence\": {bad},"), 1);
        assert_ne!(text, json);
        expect!(
            fails,
            format!("sequence {bad}"),
            case.with_bundle_json(text),
            Invalid::BundleJson(_)
        );
    }
    let size = format!("\"size\": {},", case.forge.get(FILES_PAYLOAD).len());
    let text = json.replacen(
        &size,
        &format!("\"size\": {}.0,", case.forge.get(FILES_PAYLOAD).len()),
        1,
    );
    assert_ne!(text, json);
    expect!(
        fails,
        "payload size as a float",
        case.with_bundle_json(text),
        Invalid::BundleJson(_)
    );
    let line = file_line(b"x", b"").replacen("\"size\":0", "\"size\":-1", 1);
    expect!(
        fails,
        "index size -1",
        case.with_first_index_line(&line),
        Invalid::Index {
            source: IndexError::Json(_),
            ..
        }
    );
    fails.finish();
}

#[test]
fn e06_hostile_paths_in_json() {
    let case = Case::new();
    let mut fails = Failures::default();
    let dir = |path: &str| dir_line(path.as_bytes());
    let with_path =
        |fields: &str| dir_line(b"PLACEHOLDER").replacen("\"path\":\"PLACEHOLDER\"", fields, 1);
    type Check = fn(&IndexError) -> bool;
    let cases: Vec<(&str, String, Check)> = vec![
        ("..", dir("../x"), |e| {
            matches!(e, IndexError::Path(PathError::ParentComponent))
        }),
        ("absolute", dir("/etc/cron.d/x"), |e| {
            matches!(e, IndexError::Path(PathError::Absolute))
        }),
        ("NUL", dir("a\0b"), |e| {
            matches!(e, IndexError::Path(PathError::Nul))
        }),
        ("empty", dir(""), |e| {
            matches!(e, IndexError::Path(PathError::Empty))
        }),
        ("trailing slash", dir("a/"), |e| {
            matches!(e, IndexError::Path(PathError::EmptyComponent))
        }),
        (
            "path and path_b64",
            with_path(r#""path":"a","path_b64":"/w==""#),
            |e| matches!(e, IndexError::OneOf("path")),
        ),
        (
            "neither path form",
            dir_line(b"PLACEHOLDER").replacen("\"path\":\"PLACEHOLDER\",", "", 1),
            |e| matches!(e, IndexError::OneOf("path")),
        ),
        ("invalid base64", with_path(r#""path_b64":"!!""#), |e| {
            matches!(e, IndexError::Base64("path"))
        }),
        (
            "base64 of a UTF-8 name",
            with_path(r#""path_b64":"YQ==""#),
            |e| matches!(e, IndexError::Invalid { field: "path", .. }),
        ),
        (
            "hardlink target escaping",
            link_line("h", "hardlink", "../../etc/shadow"),
            |e| matches!(e, IndexError::Path(PathError::ParentComponent)),
        ),
    ];
    for (label, line, check) in cases {
        expect!(fails, label, case.with_first_index_line(&line),
            Invalid::Index { line: 1, source } if check(&source));
    }

    // A payload path in bundle.json that escapes: it can only fail to name a member.
    let mut value = case.forge.bundle_json();
    value["payload"][0]["path"] = "data/../data/files.tar.zst".into();
    expect!(fails, "payload path with ..",
        case.with_bundle_json(serde_json::to_vec(&value).expect("JSON")),
        Invalid::Absent { name, listing }
            if name == "data/../data/files.tar.zst" && listing == BUNDLE_JSON);
    fails.finish();
}

/// The index's order is a format rule (depth first, siblings in byte order of their names):
/// it is what lets a verifier catch duplicates and orphans with memory that does not grow
/// with the tree. Entries out of that order are refused, even when tar and index agree.
#[test]
fn e07_entries_out_of_the_index_order() {
    let case = Case::new();
    let mut fails = Failures::default();
    let mut tree = InnerTree::new();
    tree.file(b"b", b"2").file(b"a", b"1").end();
    expect!(fails, "siblings not in byte order", case.resealed_tree(&tree),
        Invalid::Order { line: 2, path } if path == "b" || path == "a");
    let mut tree = InnerTree::new();
    tree.file(b"a", b"1")
        .file(b"b", b"2")
        .file(b"a", b"3")
        .end();
    expect!(fails, "a duplicate further down", case.resealed_tree(&tree),
        Invalid::Order { line: 3, path } if path == "a");
    let mut tree = InnerTree::new();
    tree.dir("d").file(b"e", b"1").file(b"d/late", b"2").end();
    expect!(fails, "back into a closed directory", case.resealed_tree(&tree),
        Invalid::Orphan { line: 3, path } if path == "d/late");
    fails.finish();
}

#[test]
fn e07_index_and_tar_disagree() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut tree = InnerTree::new();
    tree.tar(&tar_file(b"a", b"1"))
        .tar(&tar_file(b"b", b"2"))
        .file_line_only(b"b", b"2")
        .file_line_only(b"a", b"1")
        .end();
    expect!(
        fails,
        "index order differs from tar order",
        case.resealed_tree(&tree),
        Invalid::EntryMismatch {
            line: 1,
            field: "path",
            ..
        }
    );

    let mut tree = InnerTree::new();
    tree.file(b"a", b"1").file_line_only(b"b", b"2").end();
    expect!(fails, "index lists an entry missing from the tar", case.resealed_tree(&tree),
        Invalid::MissingFromTar { path, .. } if path == "b");

    let mut tree = InnerTree::new();
    tree.file(b"a", b"1").tar(&tar_file(b"b", b"2")).end();
    expect!(fails, "tar has an entry the index lacks", case.resealed_tree(&tree),
        Invalid::ExtraInTar { path } if path == "b");

    // A "skipped" (never archived) entry that is in the tar after all.
    let mut tree = InnerTree::new();
    tree.tar(&tar_file(b"s", b"fifo data"))
        .line(r#"{"path":"s","type":"skipped","reason":"fifo"}"#)
        .end();
    tree.entries = 0;
    tree.skipped = 1;
    expect!(fails, "skipped entry present in the tar", case.resealed_tree(&tree),
        Invalid::ExtraInTar { path } if path == "s");

    // Content that is not what the index's digest says, between files that cross the
    // decoder's chunks: the file is named, whatever was read after it.
    let big: Vec<u8> = (0..5u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut tree = InnerTree::new();
    tree.file(b"a", &big)
        .file(b"b", b"1")
        .file(b"c", &big[..3 << 20])
        .end();
    expect_ok!(
        fails,
        "control: contents as the index says",
        case.resealed_tree(&tree)
    );
    let mut tree = InnerTree::new();
    tree.file(b"a", &big)
        .tar(&tar_file(b"b", b"1"))
        .file_line_only(b"b", b"2")
        .file(b"c", &big[..3 << 20])
        .end();
    expect!(fails, "a file's content differs from its digest", case.resealed_tree(&tree),
        Invalid::Checksum { name, .. } if name == "b");
    fails.finish();
}

#[test]
fn e08_type_confusion() {
    let case = Case::new();
    let mut fails = Failures::default();

    let mut tree = InnerTree::new();
    tree.tar(&tar_dir(b"d")).file_line_only(b"d", b"").end();
    expect!(fails, "index file, tar dir", case.resealed_tree(&tree),
        Invalid::EntryMismatch { field: "type", index, tar, .. }
            if index == "file" && tar == "dir");

    let mut tree = InnerTree::new();
    tree.tar(&tar_file(b"d", b"")).line(&dir_line(b"d")).end();
    expect!(fails, "index dir, tar file", case.resealed_tree(&tree),
        Invalid::EntryMismatch { field: "type", index, tar, .. }
            if index == "dir" && tar == "file");

    let mut tree = InnerTree::new();
    tree.file(b"f", b"x")
        .tar(&tar_link("l", EntryType::Link, "f"))
        .line(&link_line("l", "symlink", "f"))
        .end();
    expect!(fails, "index symlink, tar hardlink", case.resealed_tree(&tree),
        Invalid::EntryMismatch { field: "type", index, tar, .. }
            if index == "symlink" && tar == "hardlink");

    // Consistent on both sides, but a hardlink may only name an earlier regular file.
    let mut tree = InnerTree::new();
    tree.dir("d").hardlink("h", "d").end();
    expect!(fails, "hardlink to a directory", case.resealed_tree(&tree),
        Invalid::Hardlink { path, target, .. } if path == "h" && target == "d");
    fails.finish();
}
