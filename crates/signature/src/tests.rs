use std::path::Path;
use std::process::Command;

use super::*;

const NS: &str = "baluchon-bundle-v1";

fn keygen(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .expect("ssh-keygen runs");
    assert!(status.success());
    path
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

#[test]
fn our_signature_verifies_against_allowed_signers() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_openssh_file(&keygen(dir.path(), "k"), || None).unwrap();
    let sig = key.sign(NS, b"hello").unwrap();
    let trust = TrustedSigners::parse(
        &format!(
            "ops@old.example namespaces=\"{NS}\" {}",
            key.public_key_line()
        ),
        Path::new("allowed_signers"),
    )
    .unwrap();
    let who = trust.verify(NS, b"hello", sig.as_bytes(), now()).unwrap();
    assert_eq!(who.principals, vec!["ops@old.example".to_owned()]);
    assert_eq!(who.fingerprint, key.fingerprint());
    assert!(matches!(
        trust.verify(NS, b"hellO", sig.as_bytes(), now()),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn a2_wrong_namespace_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_openssh_file(&keygen(dir.path(), "k"), || None).unwrap();
    let sig = key.sign("file", b"m").unwrap();
    let trust = TrustedSigners::parse(&key.public_key_line(), Path::new("k.pub")).unwrap();
    assert!(matches!(
        trust.verify(NS, b"m", sig.as_bytes(), now()),
        Err(VerifyError::WrongNamespace { .. })
    ));
}

#[test]
fn a3_unknown_key_and_namespace_restriction_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_openssh_file(&keygen(dir.path(), "a"), || None).unwrap();
    let other = SigningKey::from_openssh_file(&keygen(dir.path(), "b"), || None).unwrap();
    let sig = key.sign(NS, b"m").unwrap();
    let trust = TrustedSigners::parse(&other.public_key_line(), Path::new("b.pub")).unwrap();
    assert!(matches!(
        trust.verify(NS, b"m", sig.as_bytes(), now()),
        Err(VerifyError::UnknownSigner { .. })
    ));
    let restricted = TrustedSigners::parse(
        &format!("x namespaces=\"git\" {}", key.public_key_line()),
        Path::new("allowed_signers"),
    )
    .unwrap();
    assert!(matches!(
        restricted.verify(NS, b"m", sig.as_bytes(), now()),
        Err(VerifyError::NamespaceNotAllowed { .. })
    ));
}

#[test]
fn a4_expired_or_not_yet_valid_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_openssh_file(&keygen(dir.path(), "k"), || None).unwrap();
    let sig = key.sign(NS, b"m").unwrap();
    let expired = TrustedSigners::parse(
        &format!("x valid-before=20200101Z {}", key.public_key_line()),
        Path::new("allowed_signers"),
    )
    .unwrap();
    assert!(matches!(
        expired.verify(NS, b"m", sig.as_bytes(), now()),
        Err(VerifyError::Expired { .. })
    ));
    let future = TrustedSigners::parse(
        &format!("x valid-after=29990101Z {}", key.public_key_line()),
        Path::new("allowed_signers"),
    )
    .unwrap();
    assert!(matches!(
        future.verify(NS, b"m", sig.as_bytes(), now()),
        Err(VerifyError::NotYetValid { .. })
    ));
}

#[test]
fn a1_empty_and_truncated_signatures_are_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_openssh_file(&keygen(dir.path(), "k"), || None).unwrap();
    let sig = key.sign(NS, b"m").unwrap();
    let trust = TrustedSigners::parse(&key.public_key_line(), Path::new("k.pub")).unwrap();
    for bad in [&b""[..], &sig.as_bytes()[..sig.len() / 2]] {
        assert!(matches!(
            trust.verify(NS, b"m", bad, now()),
            Err(VerifyError::Malformed(_))
        ));
    }
}

#[test]
fn ssh_keygen_signature_verifies_and_ours_verifies_in_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = keygen(dir.path(), "k");
    let message = dir.path().join("msg");
    fs_err::write(&message, b"tag manifest bytes\n").unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", NS, "-f"])
        .arg(&key_path)
        .arg(&message)
        .status()
        .unwrap();
    assert!(status.success());
    let theirs = fs_err::read(dir.path().join("msg.sig")).unwrap();
    let key = SigningKey::from_openssh_file(&key_path, || None).unwrap();
    let trust = TrustedSigners::parse(&key.public_key_line(), Path::new("k.pub")).unwrap();
    trust
        .verify(NS, b"tag manifest bytes\n", &theirs, now())
        .unwrap();

    let ours = key.sign(NS, b"tag manifest bytes\n").unwrap();
    fs_err::write(dir.path().join("ours.sig"), ours).unwrap();
    fs_err::write(
        dir.path().join("allowed"),
        format!("me {}\n", key.public_key_line()),
    )
    .unwrap();
    let out = Command::new("ssh-keygen")
        .args(["-Y", "verify", "-I", "me", "-n", NS, "-f"])
        .arg(dir.path().join("allowed"))
        .arg("-s")
        .arg(dir.path().join("ours.sig"))
        .stdin(fs_err::File::open(&message).unwrap().into_parts().0)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn encrypted_key_needs_the_right_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc");
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "s3cret", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    assert!(matches!(
        SigningKey::from_openssh_file(&path, || None),
        Err(Error::PassphraseRequired { .. })
    ));
    assert!(matches!(
        SigningKey::from_openssh_file(&path, || Some("nope".into())),
        Err(Error::WrongPassphrase { .. })
    ));
    SigningKey::from_openssh_file(&path, || Some("s3cret".into())).unwrap();
}

#[test]
fn trust_file_errors_name_the_line() {
    let err = TrustedSigners::parse("# c\n\nx cert-authority ssh-ed25519 AAAA\n", Path::new("f"))
        .unwrap_err();
    assert!(err.to_string().starts_with("f, line 3:"), "{err}");
    assert!(matches!(
        TrustedSigners::parse("# nothing\n", Path::new("f")),
        Err(Error::EmptyTrustFile { .. })
    ));
}
