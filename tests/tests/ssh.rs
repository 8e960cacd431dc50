//! SSH against a real OpenSSH sshd on loopback (tests/src/sshd.rs starts it with its own host
//! keys): host keys are checked strictly, logins and remote failures are reported clearly,
//! uploads and downloads resume after a dropped connection, and an app bundle is imported on the other
//! side of the connection.

use std::path::Path;
use std::process::Command;

use baluchon_tests::apps::{http_get, script, services, text, unique, Site};
use baluchon_tests::fixture::{baluchon_bin, Keys};
use baluchon_tests::sshd::Sshd;
use baluchon_transport::{
    ConnectOptions, Connection, Download, LocalFile, RemoteFile, SshTarget, TransportError,
    UploadReport,
};

/// The app tests one at a time: an import reloads nginx, which cuts responses in flight,
/// and another app test may be setting up its site through them at that moment.
static APPS_ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn options(sshd: &Sshd, known_hosts: &Path) -> ConnectOptions {
    let mut options = ConnectOptions::new(known_hosts.to_owned());
    options.identity = Some(sshd.client_key().to_owned());
    options.timeout = std::time::Duration::from_secs(20);
    options
}

fn target(sshd: &Sshd) -> SshTarget {
    sshd.url().parse().unwrap()
}

#[test]
fn an_unknown_host_key_is_refused_unless_accepted_explicitly() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let err = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap_err();
    match &err {
        TransportError::UnknownHostKey { fingerprint, .. } => {
            assert_eq!(fingerprint, &sshd.host_key_fingerprint());
        }
        other => panic!("expected an unknown host key, got {other}"),
    }
    assert!(!known_hosts.exists(), "nothing recorded without the flag");

    let mut accept = options(&sshd, &known_hosts);
    accept.accept_new_host_key = true;
    Connection::open(&target(&sshd), &accept).unwrap();
    let recorded = fs_err::read_to_string(&known_hosts).unwrap();
    assert!(
        recorded.contains(&format!("[127.0.0.1]:{}", sshd.port())),
        "{recorded}"
    );
    // Now known: accepted without the flag.
    Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();
}

#[test]
fn a_port_entry_in_known_hosts_is_honoured_and_a_changed_key_refused() {
    let mut sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();

    let old = sshd.host_key_fingerprint();
    sshd.rotate_host_key();
    let new = sshd.host_key_fingerprint();
    assert_ne!(old, new);
    let err = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, TransportError::ChangedHostKey { .. }),
        "{message}"
    );
    assert!(
        message.contains(&old) && message.contains(&new),
        "{message}"
    );
    // Even with trust on first use: a changed key is never "new".
    let mut accept = options(&sshd, &known_hosts);
    accept.accept_new_host_key = true;
    assert!(matches!(
        Connection::open(&target(&sshd), &accept),
        Err(TransportError::ChangedHostKey { .. })
    ));
}

/// libssh2 compares host names exactly; a known_hosts line naming the host by a pattern is
/// honoured all the same: its key is accepted, and another key is a changed key, which
/// trust on first use does not record.
#[test]
fn a_host_known_under_a_pattern_is_checked_against_that_key() {
    let sshd = Sshd::start();
    let other = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    let pattern = format!("[127.0.0.?]:{}", sshd.port());
    fs_err::write(&known_hosts, format!("{pattern} {}\n", sshd.host_key_pub())).unwrap();
    Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();

    let wrong = format!("{pattern} {}\n", other.host_key_pub());
    fs_err::write(&known_hosts, &wrong).unwrap();
    let mut accept = options(&sshd, &known_hosts);
    accept.accept_new_host_key = true;
    let err = Connection::open(&target(&sshd), &accept).unwrap_err();
    assert!(
        matches!(err, TransportError::ChangedHostKey { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&other.host_key_fingerprint()),
        "{err}"
    );
    assert_eq!(
        fs_err::read_to_string(&known_hosts).unwrap(),
        wrong,
        "nothing recorded"
    );
}

/// The key known for the host's port 22 is not taken for another port's (libssh2 would,
/// OpenSSH does not).
#[test]
fn a_key_known_for_port_22_is_not_taken_for_another_port() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    fs_err::write(&known_hosts, format!("127.0.0.1 {}\n", sshd.host_key_pub())).unwrap();
    let err = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap_err();
    assert!(
        matches!(err, TransportError::UnknownHostKey { .. }),
        "{err}"
    );
}

#[test]
fn a_pinned_fingerprint_replaces_known_hosts() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let mut pinned = options(&sshd, &dir.path().join("absent"));
    pinned.pinned = vec![sshd.host_key_fingerprint()];
    Connection::open(&target(&sshd), &pinned).unwrap();
    pinned.pinned = vec!["SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".to_owned()];
    assert!(matches!(
        Connection::open(&target(&sshd), &pinned),
        Err(TransportError::NotPinned { .. })
    ));
}

#[test]
fn a_hashed_entry_that_no_longer_matches_names_the_old_key() {
    let mut sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    // As `HashKnownHosts yes` leaves it: the host's name is an HMAC.
    let hashed = Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&known_hosts)
        .output()
        .unwrap();
    assert!(hashed.status.success(), "{}", text(&hashed.stderr));
    let entries = fs_err::read_to_string(&known_hosts).unwrap();
    assert!(entries.starts_with("|1|"), "{entries}");
    Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();

    let old = sshd.host_key_fingerprint();
    sshd.rotate_host_key();
    let err = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap_err();
    let message = err.to_string();
    assert!(message.contains(&old), "{message}");
    assert!(message.contains(&sshd.host_key_fingerprint()), "{message}");
}

#[test]
fn revoked_keys_and_certificate_authorities_are_not_trusted() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    fs_err::write(
        &known_hosts,
        format!(
            "# the host's key, and the same key revoked\n{}\n@revoked * {}\n",
            sshd.known_hosts_line(),
            sshd.host_key_pub()
        ),
    )
    .unwrap();
    let err = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap_err();
    assert!(
        matches!(err, TransportError::RevokedHostKey { .. }),
        "{err}"
    );

    // A host vouched for only by a certificate authority: libssh2 cannot check certificates.
    let other = Sshd::start();
    fs_err::write(
        &known_hosts,
        format!(
            "@cert-authority [127.0.0.1]:{} {}\n",
            sshd.port(),
            other.host_key_pub()
        ),
    )
    .unwrap();
    let err = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap_err();
    assert!(
        matches!(err, TransportError::CertificateOnly { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains(&sshd.host_key_fingerprint()),
        "{err}"
    );

    // Accepting a new key adds its line and keeps every other one, markers included.
    let mut accept = options(&sshd, &known_hosts);
    accept.accept_new_host_key = true;
    fs_err::write(
        &known_hosts,
        "# kept\n@cert-authority *.example ssh-ed25519 AAAA\n",
    )
    .unwrap();
    Connection::open(&target(&sshd), &accept).unwrap();
    let recorded = fs_err::read_to_string(&known_hosts).unwrap();
    assert!(
        recorded.starts_with("# kept\n@cert-authority *.example ssh-ed25519 AAAA\n[127.0.0.1]:"),
        "{recorded}"
    );
    Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();
}

#[test]
fn a_wrong_key_is_refused_naming_it() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let mut wrong = options(&sshd, &known_hosts);
    wrong.identity = Some(sshd.other_client_key().to_owned());
    let err = Connection::open(&target(&sshd), &wrong).unwrap_err();
    assert!(matches!(err, TransportError::Auth { .. }), "{err}");
    assert!(err
        .to_string()
        .contains(&sshd.other_client_key().display().to_string()));
}

#[test]
fn a_remote_failure_brings_back_its_stderr_and_status() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let conn = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();
    assert_eq!(conn.output("echo hello; echo noise >&2").unwrap(), "hello");
    // Much more stderr than an SSH window holds, then a failure: drained, not deadlocked.
    let err = conn
        .output("head -c 3000000 /dev/zero | tr '\\0' x >&2; echo 'the real reason' >&2; exit 7")
        .unwrap_err();
    match err {
        TransportError::Remote { code, stderr, .. } => {
            assert_eq!(code, Some(7));
            assert!(
                stderr.ends_with("the real reason"),
                "…{}",
                &stderr[stderr.len().saturating_sub(80)..]
            );
        }
        other => panic!("expected a remote failure, got {other}"),
    }
}

/// Writes 400 MB that do not compress to `path`: large enough to still be on their way when
/// the connection drops.
fn big_random_file(path: &Path) {
    let status = Command::new("head")
        .args(["-c", "400000000", "/dev/urandom"])
        .stdout(fs_err::File::create(path).unwrap().into_parts().0)
        .status()
        .unwrap();
    assert!(status.success());
}

/// Whether two files hold the same bytes, compared as streams (`cmp` is in Debian's base).
fn same_bytes(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .args([a, b])
        .status()
        .unwrap()
        .success()
}

/// Sends 400 MB, from a local file or streamed from a file on the other host, cuts every
/// connection halfway, and sends again: the second upload goes on from what arrived.
fn cut_and_resume(streamed_from_there: bool) {
    let mut sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let local = dir.path().join("big.bin");
    big_random_file(&local);
    let remote_dir = dir.path().join("remote");
    fs_err::create_dir(&remote_dir).unwrap();
    let remote = remote_dir.join("big.bin");
    let upload = {
        let (target, options, local, remote) = (
            target(&sshd),
            options(&sshd, &known_hosts),
            local.clone(),
            remote.clone(),
        );
        move || -> Result<UploadReport, TransportError> {
            let conn = Connection::open(&target, &options)?;
            if streamed_from_there {
                // Here the "other host" is this machine: the source is read through the
                // second session exactly as from a third host.
                let from = Connection::open(&target, &options)?;
                let mut source = RemoteFile::new(&from, &local.display().to_string());
                conn.upload(&mut source, &remote.display().to_string(), &mut |_| {})
            } else {
                conn.upload(
                    &mut LocalFile::new(&local),
                    &remote.display().to_string(),
                    &mut |_| {},
                )
            }
        }
    };

    let uploading = std::thread::spawn(upload.clone());
    let part = remote_dir.join("big.bin.part");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while fs_err::metadata(&part).map_or(0, |m| m.len()) < 50_000_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    sshd.kill_sessions_and_restart();
    let first = uploading.join().unwrap();
    assert!(first.is_err(), "the cut upload failed");
    let delivered = fs_err::metadata(&part).unwrap().len();
    assert!(delivered > 0 && delivered < 400_000_000, "{delivered}");

    let report = upload().unwrap();
    assert_eq!(
        report.resumed_from, delivered,
        "it went on from what was there"
    );
    assert!(same_bytes(&remote, &local), "and the file is whole");
    assert!(!part.exists());
}

#[test]
fn an_upload_cut_by_a_dropped_connection_resumes() {
    cut_and_resume(false);
}

#[test]
fn a_transfer_streamed_from_another_host_resumes_after_a_cut() {
    cut_and_resume(true);
}

/// Fetches 400 MB, cuts every connection once 50 MB are here, and fetches again over a
/// new connection: it goes on from what arrived, and a copy altered here is refused.
#[test]
fn a_download_cut_by_a_dropped_connection_resumes() {
    let mut sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let remote = dir.path().join("there.bin");
    big_random_file(&remote);
    let here = dir.path().join("here");
    fs_err::create_dir(&here).unwrap();
    let local = here.join("fetched.bin");
    let remote_path = remote.display().to_string();
    let partial = || {
        fs_err::read_dir(&here)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".baluchon-download.")
            })
            .expect("the download's temporary file")
    };

    let first = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();
    let mut download = Download::new(&first, &remote_path, &local).unwrap();
    assert_eq!(download.size(), 400_000_000);
    let watched = partial();
    let cut = std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while fs_err::metadata(&watched).map_or(0, |m| m.len()) < 50_000_000 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the download never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            sshd.kill_sessions_and_restart();
        });
        download.fetch(&first, &mut |_| {})
    });
    let connect = || Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();
    assert!(cut.is_err(), "the cut download failed");
    let delivered = fs_err::metadata(partial()).unwrap().len();
    assert!(delivered > 0 && delivered < 400_000_000, "{delivered}");
    assert!(!local.exists(), "nothing takes the name before it is whole");

    let mut counted = 0;
    download.fetch(&connect(), &mut |n| counted += n).unwrap();
    assert_eq!(
        download.resumed_from(),
        delivered,
        "it went on from what was here"
    );
    assert_eq!(
        counted, 400_000_000,
        "progress counts what was already here"
    );
    let sha256 = download.finish().unwrap();
    assert_eq!(sha256.len(), 64);
    assert!(same_bytes(&local, &remote), "and the file is whole");
    assert_eq!(
        fs_err::read_dir(&here).unwrap().count(),
        1,
        "no temporary file left"
    );

    // A copy that differs from the other side's file is refused, and removed.
    let mut download = Download::new(&connect(), &remote_path, &here.join("again.bin")).unwrap();
    fs_err::write(partial(), b"not the start of it").unwrap();
    download.fetch(&connect(), &mut |_| {}).unwrap();
    let err = download.finish().unwrap_err();
    assert!(
        matches!(err, TransportError::DownloadCorrupted { .. }),
        "{err}"
    );
    assert_eq!(fs_err::read_dir(&here).unwrap().count(), 1, "{err}");
}

#[test]
fn an_upload_to_a_full_disk_says_so() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let local = dir.path().join("big.bin");
    fs_err::write(&local, vec![42u8; 3 << 20]).unwrap();
    // A 1 MiB tmpfs receives 3 MiB: `tee` cannot write, yet the pipeline it is in succeeds.
    let full = dir.path().join("full");
    fs_err::create_dir(&full).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    let conn = Connection::open(&target(&sshd), &options(&sshd, &known_hosts)).unwrap();
    let result = conn.upload(
        &mut LocalFile::new(&local),
        &full.join("big.bin").display().to_string(),
        &mut |_| {},
    );
    let unmounted = Command::new("umount").arg(&full).status().unwrap();
    assert!(unmounted.success());
    match result {
        Err(TransportError::Short { stored, size, .. }) => {
            assert!(stored < size, "{stored} of {size}");
        }
        other => panic!("expected a short upload, got {other:?}"),
    }
}

#[test]
fn an_app_bundle_is_imported_on_the_other_side_of_an_ssh_connection() {
    let _serial = APPS_ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let keys = Keys::new(dir.path());
    let old = format!("{}.test", unique("wp-ssh-from"));
    let new = format!("{}.test", unique("wp-ssh-to"));
    let site = Site::create("wordpress", &old);
    let canary = site.fact("canary").to_owned();
    let post = site.fact("post_id").to_owned();
    let bundle = dir.path().join("blog.baluchon");
    let out = Command::new(baluchon_bin())
        .args([
            "export",
            "--app",
            "wordpress",
            "--instance",
            &old,
            "--sign-key",
        ])
        .arg(&keys.private)
        .arg("-o")
        .arg(&bundle)
        .env("BALUCHON_STATE_DIR", dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));

    let import = |bundle: &Path, extra: &[&str]| {
        Command::new(baluchon_bin())
            .arg("import")
            .arg(bundle)
            .arg("--signer")
            .arg(&keys.allowed_signers)
            .args(["--to", &sshd.url(), "--known-hosts"])
            .arg(&known_hosts)
            .arg("--identity")
            .arg(sshd.client_key())
            .args(["--domain", &new])
            .args(extra)
            .output()
            .unwrap()
    };
    // A copy that fails verification there is reported as such here (exit code 3).
    let mut bytes = fs_err::read(&bundle).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    let damaged = dir.path().join("damaged.baluchon");
    fs_err::write(&damaged, &bytes).unwrap();
    let out = import(&damaged, &["--plan"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));

    let out = import(&bundle, &[]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    // The upload directory there (named after the bundle's digest) is gone after success.
    let digest = baluchon_transport::sha256_prefix(&bundle, u64::MAX).unwrap();
    let uploads = Path::new("/root/.cache/baluchon/uploads").join(&digest[..32]);
    assert!(!uploads.exists(), "{} was left behind", uploads.display());
    assert!(
        text(&out.stdout).contains("health check passed"),
        "{}",
        text(&out.stdout)
    );
    let (status, page) = http_get(&new, &format!("/?p={post}"));
    assert_eq!(status, 200);
    assert!(text(&page).contains(&canary));

    drop(site);
    script("wordpress-site.sh", &["remove", &new]);
}

#[test]
fn an_app_is_exported_on_the_other_side_and_the_bundle_comes_back() {
    let _serial = APPS_ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let keys = Keys::new(dir.path());
    let domain = format!("{}.test", unique("wp-ssh-export"));
    let site = Site::create("wordpress", &domain);
    let export = |instance: &str, output: &Path| {
        Command::new(baluchon_bin())
            .args(["export", "--app", "wordpress", "--instance", instance])
            .args(["--from", &sshd.url(), "--known-hosts"])
            .arg(&known_hosts)
            .arg("--identity")
            .arg(sshd.client_key())
            // A key file on the other host (here the same machine).
            .arg("--sign-key")
            .arg(&keys.private)
            .arg("-o")
            .arg(output)
            .output()
            .unwrap()
    };
    let bundle = dir.path().join("fetched.baluchon");
    let out = export(&domain, &bundle);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verified = Command::new(baluchon_bin())
        .args(["verify", "--signer"])
        .arg(&keys.allowed_signers)
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{}", text(&verified.stderr));
    assert_eq!(
        baluchon_tests::apps::tree_file(&bundle, site.fact("upload_path")),
        fs_err::read(site.fact("upload_path")).unwrap()
    );

    // A failure there comes back with its message, and nothing is written here.
    let missing = dir.path().join("missing.baluchon");
    let out = export("absent.example", &missing);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no instance \"absent.example\""),
        "{}",
        text(&out.stderr)
    );
    assert!(!missing.exists());
}

#[test]
fn an_app_migrates_from_one_host_to_another_through_this_machine() {
    let _serial = APPS_ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let keys = Keys::new(dir.path());
    let old = format!("{}.test", unique("wp-migrate-from"));
    let new = format!("{}.test", unique("wp-migrate-to"));
    let site = Site::create("wordpress", &old);
    let migrate = |extra: &[&dyn AsRef<std::ffi::OsStr>]| {
        // Source and target are both this machine, reached through the loopback sshd.
        let mut command = Command::new(baluchon_bin());
        command
            .args(["migrate", "--from", &sshd.url(), "--to", &sshd.url()])
            .args(["--app", "wordpress", "--instance", &old])
            .arg("--sign-key")
            .arg(&keys.private)
            .arg("--signer")
            .arg(&keys.allowed_signers)
            .arg("--known-hosts")
            .arg(&known_hosts)
            .arg("--identity")
            .arg(sshd.client_key());
        for arg in extra {
            command.arg(arg);
        }
        command.output().unwrap()
    };

    let out = migrate(&[&"--plan", &"--json", &"--domain", &new]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Standard output is the target's plan alone, as JSON.
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", text(&out.stdout)));
    assert_eq!(plan["domain"]["to"], new.as_str(), "{plan}");
    let (status, _) = http_get(&new, "/");
    assert_ne!(status, 200, "a plan changes nothing");

    let kept = dir.path().join("kept.baluchon");
    let out = migrate(&[&"--keep", &kept, &"--domain", &new]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    // The other side's progress is rendered here, as lines when stderr is not a terminal.
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("baluchon: 127.0.0.1: verifying payload"),
        "{stderr}"
    );
    // The source still serves (checked below): what it takes from now on is not moved.
    assert!(
        stderr.contains(&format!(
            "note: 127.0.0.1 still serves {old}; what is written there after the export began ("
        )) && stderr.contains(") is not on 127.0.0.1"),
        "{stderr}"
    );
    assert!(
        text(&out.stdout).contains("health check passed"),
        "{}",
        text(&out.stdout)
    );
    // The unencrypted bundle left the password, keys and salts out; the target made new ones.
    assert!(
        text(&out.stdout).contains("regenerated (the bundle left them out): auth_key"),
        "{}",
        text(&out.stdout)
    );
    let (status, page) = http_get(&new, &format!("/?p={}", site.fact("post_id")));
    assert_eq!(status, 200);
    assert!(text(&page).contains(site.fact("canary")));
    let (status, page) = http_get(&old, &format!("/?p={}", site.fact("post_id")));
    assert_eq!(
        (status, text(&page).contains(site.fact("canary"))),
        (200, true),
        "the source still serves its site"
    );
    assert_eq!(
        baluchon_tests::apps::tree_file(&kept, site.fact("upload_path")),
        fs_err::read(site.fact("upload_path")).unwrap(),
        "the kept copy holds the tenant"
    );
    // The target's upload directory (named after the bundle's digest) is gone.
    let digest = baluchon_transport::sha256_prefix(&kept, u64::MAX).unwrap();
    let uploads = Path::new("/root/.cache/baluchon/uploads").join(&digest[..32]);
    assert!(!uploads.exists(), "{} was left behind", uploads.display());

    // Encrypted on the source to the new host's key, decrypted only there.
    let third = format!("{}.test", unique("wp-migrate-sealed"));
    let host_key = dir.path().join("new-host.age");
    let generated = Command::new("age-keygen")
        .arg("-o")
        .arg(&host_key)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", text(&generated.stderr));
    let recipient = Command::new("age-keygen")
        .arg("-y")
        .arg(&host_key)
        .output()
        .unwrap();
    let kept_sealed = dir.path().join("kept-sealed.baluchon");
    let out = migrate(&[
        &"--domain",
        &third,
        &"--encrypt-to",
        &text(&recipient.stdout).trim(),
        &"--decrypt-with",
        &host_key,
        &"--keep",
        &kept_sealed,
    ]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let (status, page) = http_get(&third, &format!("/?p={}", site.fact("post_id")));
    assert_eq!(status, 200);
    assert!(text(&page).contains(site.fact("canary")));
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&kept_sealed)
        .output()
        .unwrap();
    assert!(
        text(&listing.stdout).contains("data/bundle.baluchon.age"),
        "what crossed this machine was encrypted"
    );

    drop(site);
    script("wordpress-site.sh", &["remove", &new]);
    script("wordpress-site.sh", &["remove", &third]);
}

#[test]
fn transfers_keep_to_the_rate_limit_each_way() {
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let known_hosts = dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let mut options = options(&sshd, &known_hosts);
    options.limit_rate = Some(1 << 20);
    let conn = Connection::open(&target(&sshd), &options).unwrap();
    let bytes = baluchon_tests::fixture::noise(2 << 20);
    let here = dir.path().join("here.bin");
    fs_err::write(&here, &bytes).unwrap();
    let there = dir.path().join("there.bin").display().to_string();
    let back = dir.path().join("back.bin");
    // 2 MiB at 1 MiB/s: two seconds at least each way (only the bound the limit sets is
    // checked; a slow machine may take longer).
    let at_least = std::time::Duration::from_millis(1900);

    let started = std::time::Instant::now();
    conn.upload(&mut LocalFile::new(&here), &there, &mut |_| {})
        .unwrap();
    assert!(
        started.elapsed() >= at_least,
        "upload took {:?}",
        started.elapsed()
    );
    assert!(fs_err::read(&there).unwrap() == bytes);

    let started = std::time::Instant::now();
    conn.download(&there, &back).unwrap();
    assert!(
        started.elapsed() >= at_least,
        "download took {:?}",
        started.elapsed()
    );
    assert!(fs_err::read(&back).unwrap() == bytes);
}
