//! The client is never locked in: stock tools check and open a bundle, following the recipe
//! in docs/bundle-format.md, and a signature made by `ssh-keygen -Y sign` verifies in baluchon.

use std::path::Path;
use std::process::Command;

use baluchon_bundle::SIGNATURE_NAMESPACE;
use baluchon_tests::fixture::{runnable_block, verify, SmallBundle};

#[test]
fn documented_stock_tools_recipe_verifies_lists_and_extracts_a_bundle() {
    let SmallBundle { dir, keys, bundle } = SmallBundle::create();

    let script = runnable_block("bundle-format.md", "stock-verify");
    let work = dir.path().join("work");
    fs_err::create_dir(&work).unwrap();
    let output = Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(&script)
        .current_dir(&work)
        .env("B", &bundle)
        .env("ALLOWED", &keys.allowed_signers)
        .env("PRINCIPAL", &keys.principal)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "recipe failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("Good \"baluchon-bundle-v1\" signature"),
        "{stderr}"
    );
    assert!(
        stdout.contains("site/index.html"),
        "the listing shows the tree:\n{stdout}"
    );

    // The same recipe rejects a bundle whose payload was altered after signing.
    let tampered = dir.path().join("tampered.baluchon");
    let mut bytes = fs_err::read(&bundle).unwrap();
    let at = find(&bytes, b"\x28\xb5\x2f\xfd").expect("a zstd frame") + 20;
    bytes[at] ^= 0x01;
    fs_err::write(&tampered, bytes).unwrap();
    let work2 = dir.path().join("work2");
    fs_err::create_dir(&work2).unwrap();
    let status = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(&work2)
        .env("B", &tampered)
        .env("ALLOWED", &keys.allowed_signers)
        .env("PRINCIPAL", &keys.principal)
        .output()
        .unwrap()
        .status;
    assert!(
        !status.success(),
        "a tampered payload must fail the stock recipe"
    );
}

#[test]
fn ssh_keygen_signature_over_our_tag_manifest_verifies_in_baluchon() {
    let SmallBundle { dir, keys, bundle } = SmallBundle::create();

    // Re-sign the tag manifest with ssh-keygen, using the same key, and swap the signature.
    let tag_manifest = dir.path().join("tagmanifest-sha256.txt");
    fs_err::write(
        &tag_manifest,
        baluchon_tests::outer_member(&bundle, "tagmanifest-sha256.txt"),
    )
    .unwrap();
    let status = Command::new("ssh-keygen")
        .args(["-q", "-Y", "sign", "-n", SIGNATURE_NAMESPACE, "-f"])
        .arg(&keys.private)
        .arg(&tag_manifest)
        .status()
        .unwrap();
    assert!(status.success());
    let theirs = fs_err::read(dir.path().join("tagmanifest-sha256.txt.sig")).unwrap();
    // Ed25519 and SSHSIG are deterministic: the same key signs the same bytes identically.
    assert_eq!(
        theirs,
        baluchon_tests::outer_member(&bundle, "tagmanifest-sha256.txt.sig")
    );
    let resigned = dir.path().join("resigned.baluchon");
    replace_member(&bundle, &resigned, "tagmanifest-sha256.txt.sig", &theirs);
    let verified = verify(&resigned, &keys).expect("ssh-keygen's signature is accepted");
    assert_eq!(verified.signer().principals, vec![keys.principal.clone()]);
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Rewrites the outer tar with one member's content replaced (an independent tar writer).
fn replace_member(from: &Path, to: &Path, name: &str, content: &[u8]) {
    use std::io::Read;
    let mut archive = tar::Archive::new(fs_err::File::open(from).unwrap());
    let mut builder = tar::Builder::new(fs_err::File::create(to).unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if path == name {
            data = content.to_vec();
        }
        let mut header = tar::Header::new_gnu();
        header.set_path(&path).unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        builder.append(&header, &data[..]).unwrap();
    }
    builder.into_inner().unwrap();
}
