//! Scheduled backups end to end, through the `baluchon` binary: a real S3 server (s3s-fs,
//! checking SigV4, run in this process on a free port), a directory, and the loopback sshd.
//! Faults: a run killed mid-upload, a concurrent run, a full or missing destination; and a
//! restore from S3 through `baluchon import`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use baluchon_tests::apps::{unique, Site};
use baluchon_tests::fixture::{baluchon_bin, small_tree, Keys};
use baluchon_tests::sshd::Sshd;

const ACCESS_KEY: &str = "AKBALUCHONTEST";
const SECRET_KEY: &str = "SKBALUCHONTEST0123456789";
const BUCKET: &str = "bundles";

/// s3s-fs serving a temporary directory (buckets are its subdirectories) on 127.0.0.1.
struct S3Server {
    root: tempfile::TempDir,
    port: u16,
    /// Dropping it stops the server.
    _runtime: tokio::runtime::Runtime,
}

impl S3Server {
    fn start() -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;

        let root = tempfile::tempdir().unwrap();
        fs_err::create_dir(root.path().join(BUCKET)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        runtime.spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(connection);
            }
        });
        Self {
            root,
            port,
            _runtime: runtime,
        }
    }

    /// The S3 settings as `baluchon` reads them from its environment.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ENDPOINT", format!("http://127.0.0.1:{}", self.port)),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }

    /// Where s3s-fs keeps the object `key` of the bucket.
    fn object(&self, key: &str) -> PathBuf {
        self.root.path().join(BUCKET).join(key)
    }
}

/// A work area: keys, a tenant tree, and baluchon's state directory (its locks).
struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    tree: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        let tree = dir.path().join("tree");
        small_tree(&tree);
        Self { dir, keys, tree }
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn command(&self, env: &[(&str, String)]) -> Command {
        let mut command = Command::new(baluchon_bin());
        command
            .env("BALUCHON_STATE_DIR", self.state())
            .env("TMPDIR", self.dir.path())
            .arg("--no-progress");
        for (k, v) in env {
            command.env(k, v);
        }
        command
    }

    fn backup_args(&self, tenant: &str, to: &str) -> Vec<String> {
        [
            "backup",
            "--path",
            &self.tree.display().to_string(),
            "--tenant",
            tenant,
            "--to",
            to,
            "--sign-key",
            &self.keys.private.display().to_string(),
        ]
        .map(str::to_owned)
        .to_vec()
    }

    fn run(&self, env: &[(&str, String)], args: &[String]) -> Output {
        self.command(env).args(args).output().unwrap()
    }

    fn ok(&self, env: &[(&str, String)], args: &[String]) -> String {
        let out = self.run(env, args);
        assert!(
            out.status.success(),
            "baluchon {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `backups list DEST --json`: the keys of the complete backups, and the incomplete ones.
    fn listed(&self, env: &[(&str, String)], to: &str, extra: &[&str]) -> (Vec<String>, usize) {
        let mut args = vec!["backups", "list", to, "--json"];
        args.extend(extra);
        let value: serde_json::Value =
            serde_json::from_str(&self.ok(env, &strings(&args))).unwrap();
        let keys = value["backups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["key"].as_str().unwrap().to_owned())
            .collect();
        (keys, value["incomplete"].as_array().unwrap().len())
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn s3_backups_are_listed_verified_checked_pruned_and_restored_through_import() {
    let s3 = S3Server::start();
    let env = s3.env();
    let setup = Setup::new();
    let to = format!("s3://{BUCKET}/nightly");
    let first: serde_json::Value = serde_json::from_str(&setup.ok(
        &env,
        &[setup.backup_args("shop", &to), strings(&["--json"])].concat(),
    ))
    .unwrap();
    setup.ok(&env, &setup.backup_args("shop", &to));
    setup.ok(&env, &setup.backup_args("blog", &to));

    let (keys, incomplete) = setup.listed(&env, &to, &["--tenant", "shop"]);
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(incomplete, 0);
    assert_eq!(keys[0], first["key"].as_str().unwrap(), "oldest first");
    // Stored as the bundle, then a `sha256sum -c` line beside it.
    let bundle = s3.object(&format!("nightly/{}", keys[0]));
    let marker = fs_err::read_to_string(bundle.with_extension("baluchon.sha256")).unwrap();
    let name = bundle.file_name().unwrap().to_str().unwrap();
    assert!(marker.ends_with(&format!("  {name}\n")), "{marker}");
    let check = Command::new("sha256sum")
        .arg("-c")
        .arg("--quiet")
        .current_dir(bundle.parent().unwrap())
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(marker.as_bytes())?;
            child.wait()
        })
        .unwrap();
    assert!(check.success());

    let signer = setup.keys.allowed_signers.display().to_string();
    let verified = setup.ok(
        &env,
        &strings(&["backups", "verify", &to, "--signer", &signer]),
    );
    assert!(verified.contains("3 backups verified"), "{verified}");
    // Signed by a key listed for another principal than the one required: refused.
    let principal = |name: &str| {
        setup.run(
            &env,
            &strings(&[
                "backups",
                "verify",
                &to,
                "--signer",
                &signer,
                "--principal",
                name,
            ]),
        )
    };
    let refused = principal("someone@else.example");
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("not for \"someone@else.example\""),
        "{}",
        stderr(&refused)
    );
    assert!(principal(&setup.keys.principal).status.success());

    let report: serde_json::Value = serde_json::from_str(&setup.ok(
        &env,
        &strings(&[
            "backups",
            "check",
            &to,
            "--signer",
            &signer,
            "--max-age",
            "26h",
            "--json",
        ]),
    ))
    .unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["tenants"].as_array().unwrap().len(), 2);

    // Restore: the newest backup of shop, fetched and checked, then imported.
    let fetched = setup.dir.path().join("restored.baluchon");
    setup.ok(
        &env,
        &strings(&[
            "backups",
            "get",
            &to,
            "--tenant",
            "shop",
            "-o",
            &fetched.display().to_string(),
        ]),
    );
    let target = setup.dir.path().join("restored");
    setup.ok(
        &[],
        &strings(&[
            "import",
            &fetched.display().to_string(),
            "--signer",
            &signer,
            "--path",
            &target.display().to_string(),
        ]),
    );
    assert_eq!(
        fs_err::read_to_string(target.join("site/index.html")).unwrap(),
        "<h1>hello</h1>\n"
    );
    assert_eq!(
        fs_err::read_link(target.join("home")).unwrap(),
        Path::new("site/index.html")
    );

    // Prune per tenant: shop keeps its newest, blog its only one.
    let dry = setup.ok(
        &env,
        &strings(&["backups", "prune", &to, "--keep-last", "1", "--dry-run"]),
    );
    assert!(dry.contains(&format!("would remove {}", keys[0])), "{dry}");
    assert_eq!(
        setup.listed(&env, &to, &[]).0.len(),
        3,
        "dry run removes nothing"
    );
    setup.ok(
        &env,
        &strings(&["backups", "prune", &to, "--keep-last", "1"]),
    );
    let (left, _) = setup.listed(&env, &to, &[]);
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&keys[0]));
    assert!(!bundle.exists() && !bundle.with_extension("baluchon.sha256").exists());

    // A bundle altered at rest fails the check, which says why and exits non-zero.
    let newest = s3.object(&format!("nightly/{}", keys[1]));
    let mut bytes = fs_err::read(&newest).unwrap();
    bytes[600] ^= 1;
    fs_err::write(&newest, bytes).unwrap();
    let out = setup.run(
        &env,
        &strings(&[
            "backups", "check", &to, "--signer", &signer, "--tenant", "shop", "--json",
        ]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let problem = report["tenants"][0]["problem"].as_str().unwrap();
    assert!(problem.contains("sha256"), "{problem}");
}

#[test]
fn check_fails_when_the_newest_backup_is_too_old_or_missing() {
    let setup = Setup::new();
    let to = setup.dir.path().join("backups").display().to_string();
    let signer = setup.keys.allowed_signers.display().to_string();
    setup.ok(&[], &setup.backup_args("shop", &to));
    std::thread::sleep(Duration::from_millis(1100));
    let out = setup.run(
        &[],
        &strings(&[
            "backups",
            "check",
            &to,
            "--signer",
            &signer,
            "--max-age",
            "1s",
        ]),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL shop:") && text.contains("old"),
        "{text}"
    );
    assert!(
        stderr(&out).contains("need attention: shop"),
        "{}",
        stderr(&out)
    );

    let out = setup.run(
        &[],
        &strings(&[
            "backups", "check", &to, "--signer", &signer, "--tenant", "blog",
        ]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL blog: no backup"));

    // An empty destination (a wrong prefix, backups that never ran) is no success either.
    let empty = setup.dir.path().join("empty").display().to_string();
    let out = setup.run(
        &[],
        &strings(&["backups", "check", &empty, "--signer", &signer]),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("no backup"));
}

/// A backup named by a clock years ahead would rank newest for ever: `keep-last 1` would
/// then remove every real one. prune refuses that tenant, and check says so.
#[test]
fn a_backup_dated_in_the_future_stops_prune_and_fails_check() {
    let setup = Setup::new();
    let store = setup.dir.path().join("backups");
    let to = store.display().to_string();
    let signer = setup.keys.allowed_signers.display().to_string();
    setup.ok(&[], &setup.backup_args("shop", &to));
    let real: Vec<PathBuf> = fs_err::read_dir(store.join("shop"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(real.len(), 2, "the bundle and its marker: {real:?}");
    for file in &real {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let (_, rest) = name.split_once('-').unwrap();
        fs_err::copy(
            file,
            file.with_file_name(format!("20991231T000000.000Z-{rest}")),
        )
        .unwrap();
    }

    let out = setup.run(
        &[],
        &strings(&["backups", "prune", &to, "--keep-last", "1"]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not pruning shop") && stderr(&out).contains("in the future"),
        "{}",
        stderr(&out)
    );
    for file in &real {
        assert!(file.exists(), "{} was removed", file.display());
    }

    let out = setup.run(
        &[],
        &strings(&["backups", "check", &to, "--signer", &signer]),
    );
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAIL shop:") && text.contains("in the future"),
        "{text}"
    );
}

/// Random bytes: incompressible, so the bundle is as large as the tree.
fn random_file(path: &Path, bytes: usize) {
    let mut out = fs_err::File::create(path).unwrap();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut buf = vec![0u8; 1 << 20];
    for _ in 0..bytes.div_ceil(buf.len()) {
        for chunk in buf.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
        }
        out.write_all(&buf).unwrap();
    }
}

#[test]
fn a_backup_killed_mid_upload_leaves_nothing_listed_and_the_next_run_succeeds() {
    let s3 = S3Server::start();
    let env = s3.env();
    let setup = Setup::new();
    random_file(&setup.tree.join("big.bin"), 96 << 20);
    let to = format!("s3://{BUCKET}/nightly");

    let mut child = setup
        .command(&env)
        .args(setup.backup_args("shop", &to))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // s3s-fs writes each received part of a multipart upload as `.upload_id-…` in its root.
    let deadline = Instant::now() + Duration::from_secs(120);
    let uploading = loop {
        let part = fs_err::read_dir(s3.root.path())
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with(".upload_id-"));
        if part || Instant::now() > deadline {
            break part;
        }
        if child.try_wait().unwrap().is_some() {
            panic!("the backup ended before its upload could be interrupted");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    assert!(uploading, "no multipart upload started");
    child.kill().unwrap();
    child.wait().unwrap();

    let (keys, _) = setup.listed(&env, &to, &[]);
    assert_eq!(keys, Vec::<String>::new(), "a killed run lists nothing");

    // The lock died with the process: the next run goes through.
    setup.ok(&env, &setup.backup_args("shop", &to));
    let (keys, _) = setup.listed(&env, &to, &[]);
    assert_eq!(keys.len(), 1);
    let signer = setup.keys.allowed_signers.display().to_string();
    setup.ok(
        &env,
        &strings(&["backups", "verify", &to, "--signer", &signer]),
    );
}

/// Writes `path` as an unfinished upload last written `age` ago.
fn unfinished_upload(path: &Path, age: Duration) {
    fs_err::write(path, b"half a bundle").unwrap();
    fs_err::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .file()
        .set_modified(std::time::SystemTime::now() - age)
        .unwrap();
}

#[test]
fn prune_removes_our_uploads_abandoned_for_a_day_and_nothing_else_at_every_destination() {
    let s3 = S3Server::start();
    let sshd = Sshd::start();
    let setup = Setup::new();
    let known_hosts = setup.dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let ssh = strings(&[
        "--known-hosts",
        &known_hosts.display().to_string(),
        "--identity",
        &sshd.client_key().display().to_string(),
    ]);
    let remote = tempfile::tempdir().unwrap();
    let directory = setup.dir.path().join("store");
    // Each kind of destination, where its objects lie on this machine, and the names its
    // own unfinished uploads take: a directory's temporary file carries no time, and a
    // name's time says nothing of when the upload last wrote.
    let cases = [
        (
            format!("s3://{BUCKET}/nightly"),
            s3.object("nightly"),
            s3.env(),
            vec![],
            [
                "20261101T000000.000Z-aa.baluchon",
                "20200101T000000.000Z-bb.baluchon",
            ],
        ),
        (
            directory.display().to_string(),
            directory.clone(),
            vec![],
            vec![],
            [
                ".baluchon-upload.Xy12Zq",
                "20200101T000000.000Z-bb.baluchon",
            ],
        ),
        (
            format!("{}{}/store", sshd.url(), remote.path().display()),
            remote.path().join("store"),
            vec![],
            ssh,
            [
                "20261101T000000.000Z-aa.baluchon.part",
                "20200101T000000.000Z-bb.baluchon.part",
            ],
        ),
    ];
    for (to, stored, env, options, [abandoned, going_on]) in cases {
        setup.ok(
            &env,
            &[setup.backup_args("shop", &to), options.clone()].concat(),
        );
        unfinished_upload(
            &stored.join("shop").join(abandoned),
            Duration::from_secs(25 * 3600),
        );
        unfinished_upload(&stored.join("shop").join(going_on), Duration::from_secs(60));
        // Someone else's, as old: not ours to remove.
        unfinished_upload(&stored.join("shop/README"), Duration::from_secs(25 * 3600));
        let list = [
            strings(&["backups", "list", &to, "--json"]),
            options.clone(),
        ]
        .concat();
        let listed: serde_json::Value = serde_json::from_str(&setup.ok(&env, &list)).unwrap();
        assert_eq!(
            listed["backups"].as_array().unwrap().len(),
            1,
            "{to}: {listed}"
        );
        assert_eq!(
            listed["incomplete"].as_array().unwrap().len(),
            3,
            "{to}: {listed}"
        );

        let prune = [
            strings(&["backups", "prune", &to, "--keep-last", "1"]),
            options.clone(),
        ]
        .concat();
        let out = setup.ok(&env, &prune);
        assert!(
            out.contains(&format!("remove unfinished upload shop/{abandoned}")),
            "{to}: {out}"
        );
        assert!(
            !out.contains(going_on) && !out.contains("README"),
            "{to}: {out}"
        );
        assert!(!stored.join("shop").join(abandoned).exists(), "{to}");
        assert!(stored.join("shop").join(going_on).exists(), "{to}");
        let listed: serde_json::Value = serde_json::from_str(&setup.ok(&env, &list)).unwrap();
        assert_eq!(
            listed["backups"].as_array().unwrap().len(),
            1,
            "{to}: {listed}"
        );
        assert_eq!(
            listed["incomplete"],
            serde_json::json!([format!("shop/{going_on}"), "shop/README"]),
            "{to}"
        );
    }
}

#[test]
fn a_second_run_for_the_same_tenant_is_refused_while_one_holds_the_lock() {
    let setup = Setup::new();
    let to = setup.dir.path().join("backups").display().to_string();
    let held = baluchon_backup::TenantLock::acquire(&setup.state().join("locks"), "shop").unwrap();
    let out = setup.run(&[], &setup.backup_args("shop", &to));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("another backup of tenant shop is running"),
        "{}",
        stderr(&out)
    );
    // Another tenant is not held up, and shop goes through once the lock is released.
    setup.ok(&[], &setup.backup_args("blog", &to));
    drop(held);
    setup.ok(&[], &setup.backup_args("shop", &to));
    assert_eq!(setup.listed(&[], &to, &[]).0.len(), 2);
}

#[test]
fn a_full_directory_or_a_missing_bucket_is_a_clear_error() {
    let setup = Setup::new();
    // A 1 MiB tmpfs cannot hold a 4 MiB bundle: ENOSPC, as on a full backup disk.
    let full = setup.dir.path().join("full");
    fs_err::create_dir(&full).unwrap();
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(&full)
        .status()
        .unwrap();
    assert!(mounted.success(), "mounting a tmpfs needs root");
    random_file(&setup.tree.join("big.bin"), 4 << 20);
    let out = setup.run(&[], &setup.backup_args("shop", &full.display().to_string()));
    let unmounted = Command::new("umount").arg(&full).status().unwrap();
    assert!(unmounted.success());
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("cannot write shop/"), "{message}");
    assert!(message.contains("No space left on device"), "{message}");

    let s3 = S3Server::start();
    let out = setup.run(
        &s3.env(),
        &setup.backup_args("shop", "s3://no-such-bucket/x"),
    );
    assert_eq!(out.status.code(), Some(1));
    let message = stderr(&out);
    assert!(message.contains("s3://no-such-bucket/x"), "{message}");
    assert!(message.contains("NoSuchBucket"), "{message}");
}

#[test]
fn backups_over_ssh_are_stored_listed_and_verified() {
    let sshd = Sshd::start();
    let setup = Setup::new();
    let known_hosts = setup.dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    let remote_dir = tempfile::tempdir().unwrap();
    let to = format!("{}{}/store", sshd.url(), remote_dir.path().display());
    let ssh = strings(&[
        "--known-hosts",
        &known_hosts.display().to_string(),
        "--identity",
        &sshd.client_key().display().to_string(),
    ]);
    setup.ok(&[], &[setup.backup_args("shop", &to), ssh.clone()].concat());
    let listed: serde_json::Value = serde_json::from_str(&setup.ok(
        &[],
        &[strings(&["backups", "list", &to, "--json"]), ssh.clone()].concat(),
    ))
    .unwrap();
    let key = listed["backups"][0]["key"].as_str().unwrap();
    assert!(remote_dir.path().join("store").join(key).exists());
    let signer = setup.keys.allowed_signers.display().to_string();
    let verified = setup.ok(
        &[],
        &[
            strings(&["backups", "verify", &to, "--signer", &signer]),
            ssh,
        ]
        .concat(),
    );
    assert!(verified.contains("1 backups verified"), "{verified}");
}

#[test]
fn a_fleet_tenant_on_another_host_is_backed_up_by_the_baluchon_there() {
    let sshd = Sshd::start();
    let setup = Setup::new();
    let known_hosts = setup.dir.path().join("known_hosts");
    sshd.write_known_hosts(&known_hosts);
    // The loopback host is this machine: the same paths, as that host sees them.
    let to = setup.dir.path().join("backups");
    let inventory = setup.dir.path().join("fleet.toml");
    fs_err::write(
        &inventory,
        format!(
            r#"
[defaults]
to = "{to}"
sign_key = "{key}"

[[tenant]]
host = "{host}"
baluchon = "{bin}"
path = "{tree}"
tenant = "remote-shop"
"#,
            to = to.display(),
            key = setup.keys.private.display(),
            host = sshd.url(),
            bin = baluchon_bin().display(),
            tree = setup.tree.display(),
        ),
    )
    .unwrap();
    let table = setup.ok(
        &[],
        &strings(&[
            "fleet",
            "backup",
            "--inventory",
            &inventory.display().to_string(),
            "--known-hosts",
            &known_hosts.display().to_string(),
            "--identity",
            &sshd.client_key().display().to_string(),
        ]),
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("remote-shop@"))
        .unwrap_or_else(|| panic!("no row in:\n{table}"));
    assert!(
        row.contains(" ok ") && row.contains("remote-shop/"),
        "{row}"
    );
    let (keys, _) = setup.listed(&[], &to.display().to_string(), &[]);
    assert_eq!(keys.len(), 1);
    assert!(row.ends_with(&keys[0]), "{row}");
}

#[test]
fn schedule_install_writes_a_timer_and_offers_cron_without_systemd() {
    let setup = Setup::new();
    let units = setup.dir.path().join("units");
    let args = strings(&[
        "schedule",
        "install",
        "--path",
        "/srv/www/shop",
        "--tenant",
        "shop",
        "--to",
        "s3://bundles/nightly",
        "--sign-key",
        "/etc/baluchon/sign key",
        "--unit-dir",
        &units.display().to_string(),
    ]);
    let dry = setup.ok(&[], &[args.clone(), strings(&["--dry-run"])].concat());
    assert!(!units.exists(), "a dry run writes nothing");
    for line in [
        "OnCalendar=daily",
        "RandomizedDelaySec=1h",
        "Persistent=true",
        "Type=oneshot",
        "WantedBy=timers.target",
    ] {
        assert!(dry.contains(line), "{line} missing from:\n{dry}");
    }
    let exec = dry.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert!(
        exec.ends_with(
            "--no-progress backup --path /srv/www/shop --tenant shop --to s3://bundles/nightly --sign-key \"/etc/baluchon/sign key\""
        ),
        "{exec}"
    );

    setup.ok(
        &[],
        &[args.clone(), strings(&["--", "--work-dir", "/var/tmp"])].concat(),
    );
    let service = fs_err::read_to_string(units.join("baluchon-backup-shop.service")).unwrap();
    assert!(service.contains("--work-dir /var/tmp"), "{service}");
    assert!(units.join("baluchon-backup-shop.timer").exists());

    let cron = setup.ok(&[], &[args.clone(), strings(&["--cron"])].concat());
    let line = cron.lines().find(|l| !l.starts_with('#')).unwrap();
    assert!(line.contains(" * * * root "), "{line}");
    assert!(
        line.contains("'--sign-key' '/etc/baluchon/sign key'"),
        "{line}"
    );

    // A newline would start a unit directive or a root cron job of its own.
    for extra in [
        &["--", "--work-dir", "/var/tmp\nExecStartPre=/bin/sh -c id"][..],
        &["--cron", "--", "--work-dir", "/x\n* * * * * root id"][..],
    ] {
        let out = setup.run(&[], &[args.clone(), strings(extra)].concat());
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
        assert!(
            stderr(&out).contains("control character"),
            "{}",
            stderr(&out)
        );
    }
}

/// A new age identity in `path`, with its recipient (`age1…`).
fn age_key(path: &Path) -> (PathBuf, String) {
    let generated = Command::new("age-keygen")
        .arg("-o")
        .arg(path)
        .output()
        .unwrap();
    assert!(generated.status.success(), "{}", stderr(&generated));
    let recipient = Command::new("age-keygen")
        .arg("-y")
        .arg(path)
        .output()
        .unwrap();
    (
        path.to_owned(),
        String::from_utf8(recipient.stdout)
            .unwrap()
            .trim()
            .to_owned(),
    )
}

#[test]
fn a_fleet_run_backs_up_tenants_in_parallel_and_fails_if_one_fails() {
    let setup = Setup::new();
    let to = setup.dir.path().join("backups");
    let other = setup.dir.path().join("other");
    small_tree(&other);
    // A FIFO in each tree: each backup reports it as not archived, the encrypted one too.
    for tree in [&setup.tree, &other] {
        baluchon_tests::fixture::fifo(&tree.join("queue"));
    }
    let (_, recipient) = age_key(&setup.dir.path().join("fleet.age"));
    let inventory = setup.dir.path().join("fleet.toml");
    // Backups are encrypted by default; blog's are not.
    fs_err::write(
        &inventory,
        format!(
            r#"
[defaults]
to = "{to}"
sign_key = "{key}"
encrypt_to = ["{recipient}"]

[[tenant]]
path = "{tree}"
tenant = "shop"

[[tenant]]
path = "{other}"
tenant = "blog"
encrypt_to = []

[[tenant]]
path = "{missing}"
tenant = "gone"
"#,
            to = to.display(),
            key = setup.keys.private.display(),
            tree = setup.tree.display(),
            other = other.display(),
            missing = setup.dir.path().join("missing").display(),
            recipient = recipient.trim(),
        ),
    )
    .unwrap();
    let out = setup.run(
        &[],
        &strings(&[
            "fleet",
            "backup",
            "--inventory",
            &inventory.display().to_string(),
            "--jobs",
            "2",
        ]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let row = |tenant: &str| {
        table
            .lines()
            .find(|l| l.starts_with(tenant))
            .unwrap_or_else(|| panic!("no row for {tenant} in:\n{table}"))
            .to_owned()
    };
    assert!(row("shop").contains(" ok "), "{table}");
    assert!(row("blog").contains(" ok "), "{table}");
    assert!(row("gone").contains("FAILED"), "{table}");
    for tenant in ["shop", "blog"] {
        assert!(
            table.contains(&format!("{tenant}: 1 entries not archived (sockets, FIFOs, devices), 0 files changed while read")),
            "{table}"
        );
    }
    assert!(
        stderr(&out).contains("1 of 3 tenants failed"),
        "{}",
        stderr(&out)
    );
    let (keys, _) = setup.listed(&[], &to.display().to_string(), &[]);
    assert_eq!(keys.len(), 2, "{keys:?}");
    for key in &keys {
        let members = Command::new("tar")
            .arg("-tf")
            .arg(to.join(key))
            .output()
            .unwrap();
        let sealed = String::from_utf8_lossy(&members.stdout).contains("data/bundle.baluchon.age");
        assert_eq!(
            sealed,
            key.starts_with("shop/"),
            "{key} encrypted: {sealed}"
        );
    }

    // The same summary for a script: one object per tenant, and still exit 1.
    let out = setup.run(
        &[],
        &strings(&[
            "fleet",
            "backup",
            "--inventory",
            &inventory.display().to_string(),
            "--json",
        ]),
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ok: Vec<bool> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["ok"].as_bool().unwrap())
        .collect();
    assert_eq!(ok.iter().filter(|o| **o).count(), 2, "{rows}");
    assert!(rows.to_string().contains("\"tenant\":\"gone\""), "{rows}");
    for row in rows.as_array().unwrap().iter().filter(|r| r["ok"] == true) {
        assert_eq!(row["skipped_count"], 1, "{row}");
        assert_eq!(
            row["skipped"],
            serde_json::json!([{"path": "queue", "reason": "FIFO"}]),
            "{row}"
        );
    }
}

#[test]
fn a_wordpress_tenant_is_backed_up_to_s3_and_verifies() {
    let domain = format!("{}.test", unique("wp-backup"));
    let site = Site::create("wordpress", &domain);
    let s3 = S3Server::start();
    let env = s3.env();
    let setup = Setup::new();
    let to = format!("s3://{BUCKET}/nightly");
    // Built (or found up to date) outside the timed run.
    baluchon_bin();
    let started = Instant::now();
    let report: serde_json::Value = serde_json::from_str(&setup.ok(
        &env,
        &strings(&[
            "backup",
            "--app",
            "wordpress",
            "--instance",
            &domain,
            "--to",
            &to,
            "--sign-key",
            &setup.keys.private.display().to_string(),
            "--json",
        ]),
    ))
    .unwrap();
    // The figures docs/backups.md quotes; shown with --nocapture.
    eprintln!(
        "WordPress test tenant: {} bytes in {:.2} s (export {:.2} s, upload {:.2} s)",
        report["size"],
        started.elapsed().as_secs_f64(),
        report["export_seconds"].as_f64().unwrap(),
        report["upload_seconds"].as_f64().unwrap()
    );
    assert_eq!(report["tenant"], domain.as_str());
    let key = report["key"].as_str().unwrap();
    assert!(key.starts_with(&format!("{domain}/")), "{key}");

    let signer = setup.keys.allowed_signers.display().to_string();
    setup.ok(
        &env,
        &strings(&["backups", "verify", &to, "--signer", &signer]),
    );
    // The post is in the stored bundle's database dump.
    let bundle = s3.object(&format!("nightly/{key}"));
    let dump = zstd::decode_all(&baluchon_tests::outer_member(&bundle, "data/db/main.sql.zst")[..])
        .unwrap();
    assert!(String::from_utf8_lossy(&dump).contains(site.fact("canary")));
}

#[test]
fn an_encrypted_backup_is_verified_without_the_key_and_restored_with_it() {
    let setup = Setup::new();
    let to = setup.dir.path().join("backups").display().to_string();
    let signer = setup.keys.allowed_signers.display().to_string();
    let (key, recipient) = age_key(&setup.dir.path().join("restore.age"));
    let mut args = setup.backup_args("vault", &to);
    args.extend(strings(&["--encrypt-to", recipient.trim()]));
    setup.ok(&[], &args);

    let (keys, _) = setup.listed(&[], &to, &[]);
    assert_eq!(keys.len(), 1, "{keys:?}");
    let stored = Path::new(&to).join(&keys[0]);
    let members = Command::new("tar")
        .arg("-tf")
        .arg(&stored)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&members.stdout).contains("data/bundle.baluchon.age"),
        "the stored bundle is encrypted"
    );
    // Monitoring needs no key: signature and ciphertext are checked.
    setup.ok(
        &[],
        &strings(&["backups", "verify", &to, "--signer", &signer]),
    );
    let restored = setup.dir.path().join("restored");
    setup.ok(
        &[],
        &strings(&[
            "import",
            &stored.display().to_string(),
            "--signer",
            &signer,
            "--path",
            &restored.display().to_string(),
            "--decrypt-with",
            &key.display().to_string(),
        ]),
    );
    let original = Command::new("diff")
        .arg("-r")
        .arg(&setup.tree)
        .arg(&restored)
        .output()
        .unwrap();
    assert!(
        original.status.success(),
        "{}",
        String::from_utf8_lossy(&original.stdout)
    );
}
