//! Encrypted bundles: readable by the client's SSH key and the new host's age key, and by
//! the stock `age` CLI; verifiable by anyone without a key; a wrong key, a cut or altered
//! ciphertext, or a recipient stanza swapped in a re-signed bundle, each refused with
//! nothing written. And an unencrypted app bundle never holds the database password.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use baluchon_tests::apps::{services, text, unique, Site};
use baluchon_tests::fixture::{baluchon_bin, Keys};
use baluchon_tests::forge::Forge;

const SEALED: &str = "data/bundle.baluchon.age";

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    client_ssh: PathBuf,
    host_age: PathBuf,
    stranger_ssh: PathBuf,
}

fn run(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    let mut command = Command::new(baluchon_bin());
    for arg in args {
        command.arg(arg);
    }
    command.output().unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    text(&out.stdout)
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let ssh_key = |name: &str| {
        let path = dir.path().join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        path
    };
    let client_ssh = ssh_key("client");
    let stranger_ssh = ssh_key("stranger");
    let host_age = dir.path().join("host.age");
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&host_age)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    Setup {
        dir,
        keys,
        client_ssh,
        host_age,
        stranger_ssh,
    }
}

fn public(setup: &Setup) -> (String, String) {
    let ssh = fs_err::read_to_string(setup.client_ssh.with_extension("pub"))
        .unwrap()
        .trim()
        .to_owned();
    let age = Command::new("age-keygen")
        .arg("-y")
        .arg(&setup.host_age)
        .output()
        .unwrap();
    (ssh, text(&age.stdout).trim().to_owned())
}

/// A small tree exported encrypted to the client's SSH key and the new host's age key.
fn sealed_tree(setup: &Setup) -> (PathBuf, PathBuf) {
    let tree = setup.dir.path().join("tree");
    fs_err::create_dir_all(tree.join("sub")).unwrap();
    fs_err::write(tree.join("index.html"), "<h1>the client's site</h1>").unwrap();
    fs_err::write(tree.join("sub/data.bin"), vec![7u8; 100_000]).unwrap();
    let bundle = setup.dir.path().join("sealed.baluchon");
    let (ssh, age) = public(setup);
    export_sealed(setup, &tree, &bundle, &[&ssh, &age]);
    (tree, bundle)
}

/// Exports `tree` into `bundle` (sequence 1), encrypted to each of `recipients`.
fn export_sealed(setup: &Setup, tree: &Path, bundle: &Path, recipients: &[&str]) {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"export",
        &"--path",
        &tree,
        &"--tenant",
        &"client-site",
        &"--sign-key",
        &setup.keys.private,
        &"--sequence",
        &"1",
        &"-o",
        &bundle,
    ];
    for recipient in recipients {
        args.extend([&"--encrypt-to" as &dyn AsRef<std::ffi::OsStr>, recipient]);
    }
    ok(&run(&args));
}

fn verify(setup: &Setup, bundle: &Path, key: Option<&Path>) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> =
        vec![&"verify", &bundle, &"--signer", &setup.keys.allowed_signers];
    if let Some(key) = &key {
        args.extend([&"--decrypt-with" as &dyn AsRef<std::ffi::OsStr>, key]);
    }
    run(&args)
}

fn import(setup: &Setup, bundle: &Path, key: &Path, dest: &Path) -> Output {
    import_command(setup, bundle, key, dest).output().unwrap()
}

/// `baluchon import BUNDLE --path DEST --decrypt-with KEY`, with no passphrase in the
/// environment.
fn import_command(setup: &Setup, bundle: &Path, key: &Path, dest: &Path) -> Command {
    let mut command = Command::new(baluchon_bin());
    command
        .arg("import")
        .arg(bundle)
        .arg("--signer")
        .arg(&setup.keys.allowed_signers)
        .arg("--path")
        .arg(dest)
        .arg("--decrypt-with")
        .arg(key)
        .env_remove("BALUCHON_DECRYPT_KEY_PASSPHRASE");
    command
}

#[test]
fn a_sealed_bundle_is_verified_without_a_key_and_opened_by_each_recipient() {
    let setup = setup();
    let (tree, bundle) = sealed_tree(&setup);

    // Anyone: the signature and the ciphertext's hash, nothing more.
    let stdout = ok(&verify(&setup, &bundle, None));
    assert!(stdout.contains("was not checked"), "{stdout}");
    // The tree's names are not visible from outside.
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(text(&listing.stdout).contains(SEALED));
    assert!(!fs_err::read(&bundle)
        .unwrap()
        .windows(b"index.html".len())
        .any(|w| w == b"index.html"));

    for key in [&setup.client_ssh, &setup.host_age] {
        let stdout = ok(&verify(&setup, &bundle, Some(key)));
        // index.html, sub and sub/data.bin, checked inside the decrypted bundle.
        assert!(stdout.contains("3 entries and 100026 bytes"), "{stdout}");
    }
    let dest = setup.dir.path().join("restored");
    ok(&import(&setup, &bundle, &setup.host_age, &dest));
    for file in ["index.html", "sub/data.bin"] {
        assert_eq!(
            fs_err::read(dest.join(file)).unwrap(),
            fs_err::read(tree.join(file)).unwrap()
        );
    }
}

#[test]
fn the_stock_age_cli_opens_it_with_the_clients_ssh_key() {
    let setup = setup();
    let (tree, bundle) = sealed_tree(&setup);
    let work = setup.dir.path().join("stock");
    fs_err::create_dir(&work).unwrap();
    let sh = |script: &str| {
        let out = Command::new("sh")
            .arg("-euc")
            .arg(script)
            .current_dir(&work)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}\n{}", text(&out.stderr));
        text(&out.stdout)
    };
    sh(&format!(
        "tar -xf {b} {SEALED} && age -d -i {k} {SEALED} > inner.baluchon && mkdir inner && tar -xf inner.baluchon -C inner && cd inner && sha256sum -c manifest-sha256.txt && mkdir tree && zstd -dc data/files.tar.zst | tar -xf - -C tree",
        b = bundle.display(),
        k = setup.client_ssh.display()
    ));
    assert_eq!(
        fs_err::read(work.join("inner/tree/index.html")).unwrap(),
        fs_err::read(tree.join("index.html")).unwrap()
    );
}

/// A client's SSH key usually has a passphrase: given (here in the environment, there is no
/// terminal), the key opens the bundle; missing or wrong, the refusal says which.
#[test]
fn an_ssh_key_with_a_passphrase_opens_the_bundle_once_given_it() {
    let setup = setup();
    let key = setup.dir.path().join("locked");
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "correct horse",
            "-C",
            "locked",
            "-f",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let public = fs_err::read_to_string(key.with_extension("pub")).unwrap();
    let tree = setup.dir.path().join("tree");
    fs_err::create_dir_all(&tree).unwrap();
    fs_err::write(tree.join("index.html"), "<h1>locked away</h1>").unwrap();
    let bundle = setup.dir.path().join("locked.baluchon");
    export_sealed(&setup, &tree, &bundle, &[public.trim()]);
    let dest = setup.dir.path().join("imported");
    let import = |passphrase: Option<&str>| {
        let mut command = import_command(&setup, &bundle, &key, &dest);
        if let Some(p) = passphrase {
            command.env("BALUCHON_DECRYPT_KEY_PASSPHRASE", p);
        }
        command.output().unwrap()
    };
    for (given, said) in [
        (None, "the SSH key has a passphrase and none was given"),
        (Some("wrong horse"), "wrong passphrase for the SSH key"),
    ] {
        let out = import(given);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(said), "{}", text(&out.stderr));
        assert!(!dest.exists(), "nothing written");
    }
    ok(&import(Some("correct horse")));
    assert_eq!(
        fs_err::read_to_string(dest.join("index.html")).unwrap(),
        "<h1>locked away</h1>"
    );
}

#[test]
fn a_wrong_key_or_a_damaged_ciphertext_is_refused_and_nothing_is_written() {
    let setup = setup();
    let (_, bundle) = sealed_tree(&setup);
    let dest = setup.dir.path().join("never");

    let out = import(&setup, &bundle, &setup.stranger_ssh, &dest);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("none of the given keys opens it"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dest.exists());

    // No key at all: said so.
    let out = run(&[
        &"import",
        &bundle,
        &"--signer",
        &setup.keys.allowed_signers,
        &"--path",
        &dest,
    ]);
    assert!(
        text(&out.stderr).contains("--decrypt-with"),
        "{}",
        text(&out.stderr)
    );
    assert!(!dest.exists());

    // Cut short, or a byte changed: the signed hash of the ciphertext no longer matches,
    // before any decryption (exit 3, the bundle failed verification).
    let bytes = fs_err::read(&bundle).unwrap();
    let forge = Forge::from_bytes(&bytes);
    let mut cut = forge.clone();
    let len = cut.get(SEALED).len();
    cut.get_mut(SEALED).truncate(len - 100);
    let mut flipped = forge.clone();
    let middle = flipped.get(SEALED).len() / 2;
    flipped.get_mut(SEALED)[middle] ^= 1;
    for (name, forged) in [("cut", cut), ("flipped", flipped)] {
        let path = setup.dir.path().join(format!("{name}.baluchon"));
        forged.write(&path);
        let out = import(&setup, &path, &setup.host_age, &dest);
        assert_eq!(out.status.code(), Some(3), "{name}: {}", text(&out.stderr));
        assert!(!dest.exists(), "{name}");
    }

    // Signed again by the trusted key after tampering (an insider, or a stolen key): the
    // recipients' stanzas swapped, or the stream cut, are caught by age itself.
    let sealed = forge.get(SEALED).to_vec();
    let header_end = sealed
        .windows(4)
        .position(|w| w == b"\n---")
        .expect("an age header");
    let header = String::from_utf8_lossy(&sealed[..header_end]).into_owned();
    // The version line, then our two recipients' stanzas (and any grease age adds).
    let mut stanzas: Vec<&str> = header.split("\n-> ").collect();
    assert!(stanzas.len() >= 3, "two recipients: {header}");
    stanzas.swap(1, 2);
    let swapped = stanzas.join("\n-> ");
    let mut reordered = forge.clone();
    let mut body = swapped.into_bytes();
    body.extend_from_slice(&sealed[header_end..]);
    reordered.set(SEALED, body);
    reordered.reseal(&setup.keys);
    let mut short = forge.clone();
    short.get_mut(SEALED).truncate(sealed.len() - 20);
    short.reseal(&setup.keys);
    for (name, forged) in [("swapped stanzas", reordered), ("cut and re-signed", short)] {
        let path = setup.dir.path().join(format!("{name}.baluchon"));
        forged.write(&path);
        // The envelope itself verifies: the damage is inside the encryption.
        ok(&verify(&setup, &path, None));
        let out = import(&setup, &path, &setup.host_age, &dest);
        assert_eq!(out.status.code(), Some(1), "{name}: {}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("none of the given keys") || stderr.contains("damaged or cut short"),
            "{name}: {stderr}"
        );
        assert!(!dest.exists(), "{name}");
    }
}

/// Every byte a bundle holds, decompressed: the outer members, the tree's tar and the
/// dumps, so that a grep sees what a reader of the bundle would.
fn all_plaintext(bundle: &Path) -> Vec<u8> {
    let forge = Forge::read(bundle);
    let mut all = Vec::new();
    for name in forge.names() {
        let member = forge.get(name);
        all.extend_from_slice(member);
        if name.ends_with(".zst") {
            let out = Command::new("zstd")
                .args(["-dc"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut child| {
                    use std::io::Write as _;
                    child.stdin.take().unwrap().write_all(member)?;
                    child.wait_with_output()
                })
                .unwrap();
            assert!(out.status.success(), "{name}");
            all.extend_from_slice(&out.stdout);
        }
    }
    all
}

#[test]
fn an_unencrypted_app_bundle_leaves_the_database_password_out() {
    services();
    let setup = setup();
    let domain = format!("{}.test", unique("wp-secret"));
    let site = Site::create("wordpress", &domain);
    let config = fs_err::read_to_string(site.fact("config_path")).unwrap();
    let password = php_define(&config, "DB_PASSWORD");
    assert!(password.len() >= 8, "{password}");
    let export = |extra: &[&dyn AsRef<std::ffi::OsStr>], out: &Path| {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"export",
            &"--app",
            &"wordpress",
            &"--instance",
            &domain,
            &"--sign-key",
            &setup.keys.private,
            &"-o",
        ];
        args.push(&out);
        args.extend_from_slice(extra);
        let mut command = Command::new(baluchon_bin());
        command.env("BALUCHON_STATE_DIR", setup.dir.path());
        for arg in args {
            command.arg(arg);
        }
        command.output().unwrap()
    };
    let plain = setup.dir.path().join("plain.baluchon");
    let stdout = ok(&export(&[], &plain));
    assert!(stdout.contains("left out of the bundle"), "{stdout}");
    let bytes = all_plaintext(&plain);
    let found = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    assert!(!found(password.as_bytes()), "the password is in the bundle");
    assert!(
        found(b"BALUCHON-REDACTED"),
        "the placeholder is where it was"
    );

    // Encrypted, the config travels whole, and only the recipients can read it.
    let (_, age) = public(&setup);
    let sealed = setup.dir.path().join("sealed.baluchon");
    ok(&export(&[&"--encrypt-to", &age], &sealed));
    assert!(!found_in(&all_plaintext(&sealed), password.as_bytes()));
    drop(site);
}

/// The value of `define('NAME', 'value')`, as the test sites write it.
fn php_define(config: &str, name: &str) -> String {
    let after = config
        .split_once(&format!("'{name}'"))
        .unwrap_or_else(|| panic!("{name} in {config}"))
        .1;
    let open = after.find('\'').expect("an opening quote") + 1;
    let len = after[open..].find('\'').expect("a closing quote");
    after[open..open + len].to_owned()
}

fn found_in(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
