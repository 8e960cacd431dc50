//! What a newcomer reads: `--help` and the main error messages, pinned as insta snapshots
//! under tests/tests/snapshots/, and the docs' shell blocks marked `<!-- runnable: NAME -->`,
//! run as written.
//!
//! A snapshot that differs, or is missing, fails the test (insta writes the new text beside
//! it as `.snap.new`, except under CI). After a deliberate change, accept the new text with
//! `cargo insta review`, or `INSTA_UPDATE=always cargo test -p baluchon-tests --test cli_help`,
//! and commit the `.snap` files.

use std::path::Path;
use std::process::{Command, Output};

use baluchon_tests::fixture::{baluchon_bin, runnable_block};

/// The binary with a fixed help width and no colour, whatever the terminal or CI sets, and
/// its state (export sequence numbers) kept in `dir`.
fn baluchon(dir: &Path) -> Command {
    let mut command = Command::new(baluchon_bin());
    command
        .current_dir(dir)
        .env("COLUMNS", "100")
        .env("NO_COLOR", "1")
        .env("HOME", dir)
        .env("BALUCHON_STATE_DIR", dir)
        // clap shows an option's environment value in --help.
        .env_remove("BALUCHON_SIGN_KEY")
        .env_remove("BALUCHON_S3_CONFIG")
        .env_remove("CLICOLOR_FORCE");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("baluchon runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Exit status and stderr, for an error snapshot.
fn failure(output: &Output) -> String {
    assert!(!output.status.success(), "expected a failure");
    format!(
        "exit status: {:?}\n{}",
        output.status.code(),
        text(&output.stderr)
    )
}

/// Snapshots `value` with the temporary directory and key fingerprints redacted: they change
/// with every run.
fn assert_redacted_snapshot(name: &str, dir: &Path, value: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(&regex_escape(&dir.display().to_string()), "[TMP]");
    settings.add_filter(r"SHA256:[A-Za-z0-9+/]{43}", "SHA256:[FINGERPRINT]");
    settings.bind(|| insta::assert_snapshot!(name, value));
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = "\\.+*?()|[]{}^$#&-~".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

#[test]
fn help_of_the_main_commands() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str]); 6] = [
        ("help", &["--help"]),
        ("help_export", &["export", "--help"]),
        ("help_verify", &["verify", "--help"]),
        ("help_import", &["import", "--help"]),
        ("help_migrate", &["migrate", "--help"]),
        ("help_backup", &["backup", "--help"]),
    ];
    for (name, args) in cases {
        let output = run(baluchon(dir.path()).args(args));
        assert!(output.status.success(), "{name}: {}", text(&output.stderr));
        insta::assert_snapshot!(name, text(&output.stdout));
    }
}

#[test]
fn no_color_turns_colours_off_even_when_forced() {
    let dir = tempfile::tempdir().unwrap();
    let coloured = run(baluchon(dir.path())
        .arg("--help")
        .env_remove("NO_COLOR")
        .env("CLICOLOR_FORCE", "1"));
    assert!(
        text(&coloured.stdout).contains('\u{1b}'),
        "CLICOLOR_FORCE gives colours"
    );
    let plain = run(baluchon(dir.path())
        .arg("--help")
        .env("CLICOLOR_FORCE", "1"));
    assert!(!text(&plain.stdout).contains('\u{1b}'), "NO_COLOR wins");
}

#[test]
fn man_pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().unwrap();
    let top = run(baluchon(dir.path()).arg("man"));
    assert!(top.status.success());
    let top = text(&top.stdout);
    assert!(top.contains(".TH baluchon 1"), "{top}");
    assert!(
        top.contains("baluchon\\-export(1)"),
        "refers to the subcommands' pages"
    );

    let export = run(baluchon(dir.path()).args(["man", "export"]));
    assert!(export.status.success());
    let export = text(&export.stdout);
    assert!(export.contains(".TH baluchon-export 1"), "{export}");
    assert!(export.contains("\\-\\-encrypt\\-to"), "lists the options");

    let unknown = run(baluchon(dir.path()).args(["man", "exprot"]));
    assert_eq!(unknown.status.code(), Some(1));
    assert!(text(&unknown.stderr).contains("no subcommand \"exprot\""));

    for (shell, marker) in [
        ("bash", "_baluchon()"),
        ("zsh", "#compdef baluchon"),
        ("fish", "complete -c baluchon"),
    ] {
        let out = run(baluchon(dir.path()).args(["completions", shell]));
        assert!(out.status.success(), "{shell}");
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("encrypt-to"), "{shell} completes options");
    }
}

/// A signing key, its allowed_signers file, a client's SSH key in `dir/.ssh`, a small tree
/// `dir/shop`, and two bundles of it made by the binary: `shop.baluchon` and
/// `shop-sealed.baluchon` (encrypted to the client's key). These are the names the client's
/// guide uses.
fn client_guide_setup(dir: &Path) {
    fs_err::create_dir_all(dir.join("shop/site")).unwrap();
    fs_err::write(dir.join("shop/site/index.html"), "<h1>shop</h1>\n").unwrap();
    fs_err::write(dir.join("shop/notes.txt"), "hello\n").unwrap();
    signing_key(
        dir,
        "host_key",
        "exports@oldhost.example",
        "allowed_signers",
    );
    fs_err::create_dir(dir.join(".ssh")).unwrap();
    ssh_key(&dir.join(".ssh/id_ed25519"));

    for (output, extra) in [
        ("shop.baluchon", &[][..]),
        (
            "shop-sealed.baluchon",
            &["--encrypt-to", ".ssh/id_ed25519.pub"][..],
        ),
    ] {
        let export = run(baluchon(dir)
            .args(["export", "--path", "shop", "--tenant", "shop"])
            .args(["--sign-key", "host_key", "-o", output])
            .args(extra));
        assert!(export.status.success(), "{}", text(&export.stderr));
    }
    // The guide's import writes ./shop: it is the client's new directory, not the source.
    fs_err::remove_dir_all(dir.join("shop")).unwrap();
}

/// `baluchon keygen -o KEY`, with the allowed_signers line it prints saved as `signers`.
fn signing_key(dir: &Path, key: &str, principal: &str, signers: &str) {
    let keygen = run(baluchon(dir).args(["keygen", "-o", key, "--principal", principal]));
    assert!(keygen.status.success(), "{}", text(&keygen.stderr));
    let line = text(&keygen.stdout).lines().last().unwrap().to_owned();
    fs_err::write(dir.join(signers), format!("{line}\n")).unwrap();
}

/// An SSH key pair without passphrase, as a client has one.
fn ssh_key(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Runs the block `name` of docs/`doc` with bash in `dir`, with this build's baluchon first
/// in PATH and HOME at `dir`.
fn run_block(doc: &str, name: &str, dir: &Path) -> Output {
    let bin_dir = baluchon_bin().parent().unwrap().to_owned();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::split_paths(&std::env::var_os("PATH").unwrap())),
    )
    .unwrap();
    let mut command = Command::new("bash");
    command
        .args(["-euo", "pipefail", "-c", &runnable_block(doc, name)])
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env("BALUCHON_STATE_DIR", dir)
        .env("NO_COLOR", "1");
    run(&mut command)
}

#[test]
fn client_guide_blocks_run_as_written() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    client_guide_setup(dir);

    // Each block, in the guide's order (later ones use what earlier ones left), and what
    // its standard output must show.
    let blocks: [(&str, &[&str]); 7] = [
        ("client-verify", &["OK shop.baluchon: tenant shop"]),
        (
            "client-verify-encrypted",
            &[
                "The content itself was not checked",
                "signed by exports@oldhost.example",
            ],
        ),
        (
            "client-stock-verify",
            &[
                "Good \"baluchon-bundle-v1\" signature for exports@oldhost.example",
                "site/index.html: OK",
            ],
        ),
        ("client-stock-decrypt", &[]),
        ("client-inspect", &["tenant        shop"]),
        (
            "client-stock-read",
            &["site/index.html", "\"path\":\"notes.txt\""],
        ),
        ("client-import-tree", &["installed 3 entries"]),
    ];
    for (name, shows) in blocks {
        let output = run_block("client-guide.md", name, dir);
        let (stdout, stderr) = (text(&output.stdout), text(&output.stderr));
        assert!(
            output.status.success(),
            "{name} failed:\n{stdout}\n{stderr}"
        );
        for expected in shows {
            assert!(
                stdout.contains(expected),
                "{name}: no {expected:?} in\n{stdout}"
            );
        }
    }
    assert_eq!(
        fs_err::read_to_string(dir.join("tree/site/index.html")).unwrap(),
        "<h1>shop</h1>\n",
        "the stock commands extracted the tree"
    );
    let inner = run(baluchon(dir).args([
        "verify",
        "shop-inner.baluchon",
        "--signer",
        "allowed_signers",
    ]));
    assert!(
        inner.status.success(),
        "age decrypted the inner bundle: {}",
        text(&inner.stderr)
    );
    assert_eq!(
        fs_err::read_to_string(dir.join("shop/notes.txt")).unwrap(),
        "hello\n",
        "the import installed the tree"
    );

    // The stock check is a check: it fails on a bundle altered after signing.
    let work = dir.join("tampered");
    fs_err::create_dir(&work).unwrap();
    fs_err::copy(dir.join("allowed_signers"), work.join("allowed_signers")).unwrap();
    let mut bytes = fs_err::read(dir.join("shop.baluchon")).unwrap();
    let frame = bytes
        .windows(4)
        .position(|w| w == b"\x28\xb5\x2f\xfd")
        .expect("a zstd frame");
    bytes[frame + 20] ^= 1;
    fs_err::write(work.join("shop.baluchon"), bytes).unwrap();
    let output = run_block("client-guide.md", "client-stock-verify", &work);
    assert!(
        !output.status.success(),
        "a tampered bundle must fail the stock check"
    );
}

/// Every block marked runnable in docs/ is run by a test: this list names them, and the test
/// fails when a marker is added without one.
#[test]
fn every_runnable_block_in_docs_is_run_by_a_test() {
    const RUN: &[(&str, &str)] = &[
        // tests/tests/stock_tools.rs
        ("bundle-format.md", "stock-verify"),
        // client_guide_blocks_run_as_written, above
        ("client-guide.md", "client-verify"),
        ("client-guide.md", "client-verify-encrypted"),
        ("client-guide.md", "client-stock-verify"),
        ("client-guide.md", "client-stock-decrypt"),
        ("client-guide.md", "client-inspect"),
        ("client-guide.md", "client-stock-read"),
        ("client-guide.md", "client-import-tree"),
    ];
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut found = Vec::new();
    for entry in fs_err::read_dir(&docs).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "md") {
            continue;
        }
        let doc = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = fs_err::read_to_string(&path).unwrap();
        for rest in text.split("<!-- runnable: ").skip(1) {
            let name = rest.split_once(" -->").expect("a closed marker").0;
            found.push((doc.clone(), name.to_owned()));
        }
    }
    found.sort();
    let mut expected: Vec<(String, String)> = RUN
        .iter()
        .map(|(d, n)| ((*d).to_owned(), (*n).to_owned()))
        .collect();
    expected.sort();
    assert_eq!(found, expected);
}

#[test]
fn main_error_messages() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    client_guide_setup(dir);

    // A bundle signed by a key that the signer file does not list.
    signing_key(dir, "other_key", "other@example", "other_signers");
    let untrusted = run(baluchon(dir).args([
        "verify",
        "shop.baluchon",
        "--signer",
        "other_signers",
        "--no-progress",
    ]));
    assert_redacted_snapshot("error_untrusted_signer", dir, &failure(&untrusted));

    // An existing output is never overwritten.
    fs_err::create_dir(dir.join("src")).unwrap();
    let exists = run(baluchon(dir).args([
        "export",
        "--path",
        "src",
        "--tenant",
        "shop",
        "--sign-key",
        "host_key",
        "-o",
        "shop.baluchon",
    ]));
    assert_redacted_snapshot("error_output_exists", dir, &failure(&exists));

    // A key that is not one of the recipients.
    ssh_key(&dir.join("wrong_key"));
    let wrong_key = run(baluchon(dir).args([
        "verify",
        "shop-sealed.baluchon",
        "--signer",
        "allowed_signers",
        "--decrypt-with",
        "wrong_key",
        "--no-progress",
    ]));
    assert_redacted_snapshot("error_wrong_decryption_key", dir, &failure(&wrong_key));

    // An absolute path in a cause, to show that the redaction holds.
    let missing = dir.join("missing.baluchon");
    let missing = run(baluchon(dir).arg("verify").arg(&missing).args([
        "--signer",
        "allowed_signers",
        "--no-progress",
    ]));
    assert_redacted_snapshot("error_missing_bundle", dir, &failure(&missing));
}

/// Runs `baluchon ARGS` in `dir`, expects success, and parses standard output as JSON.
fn json_of(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = run(baluchon(dir).args(args));
    assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", text(&out.stdout)))
}

#[test]
fn reporting_commands_speak_json() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = json_of(
        d,
        &[
            "keygen",
            "-o",
            "key",
            "--principal",
            "ops@host.example",
            "--json",
        ],
    );
    assert!(key["allowed_signers"]
        .as_str()
        .unwrap()
        .starts_with("ops@host.example namespaces="));
    fs_err::write(
        d.join("signers"),
        format!("{}\n", key["allowed_signers"].as_str().unwrap()),
    )
    .unwrap();

    let recovered = json_of(
        d,
        &[
            "recover",
            "--tenant",
            "shop",
            "--work-dir",
            "work",
            "--json",
        ],
    );
    assert_eq!(recovered["interrupted_import"], false);

    let units = json_of(
        d,
        &[
            "schedule",
            "install",
            "--path",
            "/srv/shop",
            "--tenant",
            "shop",
            "--to",
            "/backups",
            "--sign-key",
            "key",
            "--unit-dir",
            "units",
            "--dry-run",
            "--json",
        ],
    );
    assert!(units["timer"]["content"]
        .as_str()
        .unwrap()
        .contains("Persistent=true"));
    assert_eq!(units["written"], false);
    assert!(!d.join("units").exists());

    // A tree imported over another, then rolled back and imported again and confirmed.
    fs_err::create_dir_all(d.join("tree")).unwrap();
    fs_err::write(d.join("tree/index.html"), "new").unwrap();
    fs_err::create_dir_all(d.join("site")).unwrap();
    fs_err::write(d.join("site/index.html"), "old").unwrap();
    json_of(
        d,
        &[
            "export",
            "--path",
            "tree",
            "--tenant",
            "shop",
            "--sign-key",
            "key",
            "-o",
            "b.baluchon",
            "--json",
        ],
    );
    let import = [
        "import",
        "b.baluchon",
        "--signer",
        "signers",
        "--path",
        "site",
        "--replace",
        "--json",
    ];
    json_of(d, &import);
    let rolled_back = json_of(d, &["rollback", "--path", "site", "--json"]);
    assert_eq!(rolled_back["action"], "restored");
    assert_eq!(
        fs_err::read_to_string(d.join("site/index.html")).unwrap(),
        "old"
    );
    json_of(d, &import);
    let confirmed = json_of(d, &["confirm", "--path", "site", "--json"]);
    assert_eq!(confirmed["action"], "confirmed");
    assert_eq!(
        fs_err::read_to_string(d.join("site/index.html")).unwrap(),
        "new"
    );
}
