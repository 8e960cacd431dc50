//! The `baluchon` command: exit codes, reports, and what an export leaves behind on failure.

use std::path::Path;
use std::process::{Command, Output};

use baluchon_tests::fixture::{baluchon_bin, small_tree, Keys};

fn baluchon(args: &[&dyn AsRef<std::ffi::OsStr>], state: &Path) -> Output {
    Command::new(baluchon_bin())
        .args(args)
        .env("BALUCHON_STATE_DIR", state)
        .env_remove("BALUCHON_SIGN_KEY")
        .output()
        .unwrap()
}

/// `baluchon export --path SOURCE --tenant TENANT --sign-key KEY -o OUTPUT EXTRA…`.
fn export(
    source: &Path,
    tenant: &str,
    key: &Path,
    output: &Path,
    extra: &[&str],
    state: &Path,
) -> Output {
    let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
        &"export",
        &"--path",
        &source,
        &"--tenant",
        &tenant,
        &"--sign-key",
        &key,
        &"-o",
        &output,
    ];
    args.extend(extra.iter().map(|a| a as &dyn AsRef<std::ffi::OsStr>));
    baluchon(&args, state)
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn demo_runs_the_whole_round() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("demo");
    let out = baluchon(&[&"demo", &"--dir", &work], dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for step in ["3. exported", "4. verified", "5. inspected", "6. imported"] {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
    assert!(work.join("demo-shop.baluchon").is_file());
}

#[test]
fn exit_codes_tell_a_bad_bundle_from_other_failures() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tree");
    small_tree(&source);
    let keys = Keys::new(dir.path());
    let bundle = dir.path().join("t.baluchon");
    let state = dir.path().join("state");

    let out = export(&source, "shop", &keys.private, &bundle, &["--json"], &state);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["tenant"], "shop");
    assert_eq!(
        report["sequence"], 1,
        "the first export of a tenant is sequence 1"
    );

    let ok = baluchon(
        &[&"verify", &bundle, &"--signer", &keys.allowed_signers],
        &state,
    );
    assert_eq!(ok.status.code(), Some(0), "{}", text(&ok.stderr));
    assert!(text(&ok.stdout).starts_with("OK "));

    // A flipped byte: exit code 3, and the reason is printed.
    let mut bytes = fs_err::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    let bad = dir.path().join("bad.baluchon");
    fs_err::write(&bad, bytes).unwrap();
    let out = baluchon(
        &[&"verify", &bad, &"--signer", &keys.allowed_signers],
        &state,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("failed verification"));

    // Signed by a key the verifier does not trust: also 3.
    let other = Keys::new(&dir.path().join("other-keys").tap_mkdir());
    let out = baluchon(
        &[&"verify", &bundle, &"--signer", &other.allowed_signers],
        &state,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("not in the trusted signers"));

    // Wrong tenant expected: 3.
    let out = baluchon(
        &[
            &"verify",
            &bundle,
            &"--signer",
            &keys.allowed_signers,
            &"--tenant",
            &"other",
        ],
        &state,
    );
    assert_eq!(out.status.code(), Some(3));

    // Signed by a trusted key, but one listed for another principal than required: 3.
    let principal = |name: &str| {
        baluchon(
            &[
                &"verify",
                &bundle,
                &"--signer",
                &keys.allowed_signers,
                &"--principal",
                &name,
            ],
            &state,
        )
    };
    let out = principal("someone@else.example");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not for \"someone@else.example\""),
        "{}",
        text(&out.stderr)
    );
    let out = principal(&keys.principal);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    // Trusted, but revoked: 3.
    let revoked = dir.path().join("revoked_keys");
    fs_err::write(&revoked, keys.key.public_key_line()).unwrap();
    let out = baluchon(
        &[
            &"verify",
            &bundle,
            &"--signer",
            &keys.allowed_signers,
            &"--revoked",
            &revoked,
        ],
        &state,
    );
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is revoked"),
        "{}",
        text(&out.stderr)
    );

    // A missing file is not a bad bundle: 1.
    let out = baluchon(
        &[
            &"verify",
            &dir.path().join("nope"),
            &"--signer",
            &keys.allowed_signers,
        ],
        &state,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));

    // Usage errors: 2.
    let out = baluchon(&[&"verify"], &state);
    assert_eq!(out.status.code(), Some(2));

    // The second export of the tenant gets the next sequence number.
    let second = dir.path().join("t2.baluchon");
    let out = export(&source, "shop", &keys.private, &second, &["--json"], &state);
    assert!(out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["sequence"], 2);

    let out = baluchon(&[&"inspect", &second, &"--json"], &state);
    assert!(out.status.success());
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(shown["verified"], false);
    assert_eq!(shown["bundle"]["sequence"], 2);
    assert_eq!(shown["bundle"]["tenant"], "shop");
}

#[test]
fn failed_export_leaves_nothing_behind_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let state = dir.path().join("state");
    let out_dir = dir.path().join("out");
    fs_err::create_dir(&out_dir).unwrap();

    // A source path that is a symlink is refused before anything is written.
    let real = dir.path().join("real");
    small_tree(&real);
    let link = dir.path().join("link");
    fs_err::os::unix::fs::symlink(&real, &link).unwrap();
    let target = out_dir.join("x.baluchon");
    let out = export(&link, "t", &keys.private, &target, &[], &state);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not a directory"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        fs_err::read_dir(&out_dir).unwrap().count(),
        0,
        "nothing left in the output dir"
    );

    // An existing output is never overwritten.
    fs_err::write(&target, b"precious").unwrap();
    let out = export(&real, "t", &keys.private, &target, &[], &state);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(fs_err::read(&target).unwrap(), b"precious");
    assert_eq!(fs_err::read_dir(&out_dir).unwrap().count(), 1);
}

/// A full disk in the middle of the payload: clear error, no partial file, no bundle.
#[test]
fn export_onto_a_full_disk_fails_cleanly() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let source = dir.path().join("tree");
    small_tree(&source);
    // Incompressible, so the payload cannot fit in 256 KiB.
    fs_err::write(
        source.join("noise.bin"),
        baluchon_tests::fixture::noise(2_000_000),
    )
    .unwrap();
    let small = dir.path().join("small");
    fs_err::create_dir(&small).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&small)
        .status()
        .unwrap();
    assert!(mounted.success());
    let target = small.join("x.baluchon");
    let out = export(
        &source,
        "t",
        &keys.private,
        &target,
        &[],
        &dir.path().join("state"),
    );
    let left: Vec<_> = fs_err::read_dir(&small)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let _ = Command::new("umount").arg(&small).status();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("No space left on device"),
        "{}",
        text(&out.stderr)
    );
    assert!(left.is_empty(), "left behind: {left:?}");
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        fs_err::create_dir_all(&self).unwrap();
        self
    }
}

/// Adds inode flags to a path, and takes them off again when dropped: an immutable file
/// could not be removed with its temporary directory.
struct Flagged {
    path: std::path::PathBuf,
    before: rustix::fs::IFlags,
}

impl Flagged {
    fn add(path: &Path, flags: rustix::fs::IFlags) -> std::io::Result<Self> {
        let file = fs_err::File::open(path)?;
        let before = rustix::fs::ioctl_getflags(&file)?;
        rustix::fs::ioctl_setflags(&file, before | flags)?;
        Ok(Self {
            path: path.to_owned(),
            before,
        })
    }
}

impl Drop for Flagged {
    fn drop(&mut self) {
        if let Ok(file) = fs_err::File::open(&self.path) {
            let _ = rustix::fs::ioctl_setflags(&file, self.before);
        }
    }
}

/// Inode flags (`chattr`) have no place in a bundle: the export names each entry that had
/// some, with its flags, in its human report and in `--json`, instead of dropping them
/// silently.
#[test]
fn an_export_reports_the_inode_flags_it_cannot_keep() {
    use rustix::fs::IFlags;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("tree");
    small_tree(&source);
    fs_err::write(source.join("locked.conf"), "do not touch\n").unwrap();
    fs_err::create_dir(source.join("cache")).unwrap();
    // Immutable needs CAP_LINUX_IMMUTABLE, as root has.
    let Ok(_locked) = Flagged::add(&source.join("locked.conf"), IFlags::IMMUTABLE) else {
        eprintln!("skipped: cannot make a file immutable here (not root?)");
        return;
    };
    let _cache = Flagged::add(&source.join("cache"), IFlags::NODUMP | IFlags::NOATIME).unwrap();
    let keys = Keys::new(dir.path());
    let state = dir.path().join("state");
    let exported = |output: &str, extra: &[&str]| {
        let bundle = dir.path().join(output);
        let out = export(&source, "shop", &keys.private, &bundle, extra, &state);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };

    let report: serde_json::Value =
        serde_json::from_str(&exported("a.baluchon", &["--json"])).unwrap();
    assert_eq!(report["inode_flags_not_kept"], 2, "{report}");
    let mut flagged: Vec<(String, String)> = report["inode_flags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["path"].as_str().unwrap().into(),
                e["flags"].as_str().unwrap().into(),
            )
        })
        .collect();
    flagged.sort();
    assert_eq!(
        flagged,
        [
            ("cache".into(), "dA".into()),
            ("locked.conf".into(), "i".into())
        ]
    );
    let human = exported("b.baluchon", &[]);
    assert!(
        human.contains("2 entries have inode flags (chattr), which bundles do not keep; set them again after import:")
            && human.contains("\n  i locked.conf\n")
            && human.contains("\n  dA cache\n"),
        "{human}"
    );
}
