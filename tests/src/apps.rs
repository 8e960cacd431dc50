//! Real services and real app instances for the app suites, through the scripts in
//! `tests/apps/` (which `./dev.sh test` and CI install and which start daemons by hand:
//! the machines have no systemd).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::fixture::baluchon_bin;

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// Runs `tests/apps/<script> args…`; its stdout is `key=value` lines.
pub fn script(name: &str, args: &[&str]) -> BTreeMap<String, String> {
    let out = Command::new("bash")
        .arg(scripts_dir().join(name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
    assert!(
        out.status.success(),
        "{name} {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// MariaDB, PostgreSQL, PHP-FPM and nginx, started once per test process. The packages
/// must be installed (`tests/apps/install.sh`; `./dev.sh test` runs it): a missing one
/// fails the test with the script's message rather than skipping it.
pub fn services() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        script("start.sh", &[]);
    });
}

/// An app instance created by `tests/apps/<kind>-site.sh create`, removed on drop.
#[derive(Debug)]
pub struct Site {
    kind: &'static str,
    pub facts: BTreeMap<String, String>,
}

impl Site {
    /// `kind`: `wordpress` or `dokuwiki`.
    pub fn create(kind: &'static str, domain: &str) -> Self {
        services();
        let facts = script(&format!("{kind}-site.sh"), &["create", domain]);
        Self { kind, facts }
    }

    pub fn fact(&self, key: &str) -> &str {
        self.facts
            .get(key)
            .unwrap_or_else(|| panic!("{}-site.sh printed no {key}", self.kind))
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        if let Some(domain) = self.facts.get("domain") {
            let _ = Command::new("bash")
                .arg(scripts_dir().join(format!("{}-site.sh", self.kind)))
                .args(["remove", domain])
                .output();
        }
    }
}

/// GET `path` from the local nginx with `Host: domain`: status and body. Holds the site
/// scripts' lock shared meanwhile: a reload by a concurrent test's script cuts responses in
/// flight.
pub fn http_get(domain: &str, path: &str) -> (u16, Vec<u8>) {
    let lock = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open("/run/baluchon-test-apps.lock")
        .expect("open the site scripts' lock");
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockShared).expect("shared lock");
    let out = Command::new("curl")
        .args(["-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "30"])
        .arg("--resolve")
        .arg(format!("{domain}:80:127.0.0.1"))
        .arg(format!("http://{domain}{path}"))
        .output()
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl http://{domain}{path}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut body = out.stdout;
    let split = body.iter().rposition(|&b| b == b'\n').expect("status line");
    let status = String::from_utf8_lossy(&body[split + 1..])
        .trim()
        .parse()
        .expect("HTTP status");
    body.truncate(split);
    (status, body)
}

/// Runs SQL as MariaDB's root (unix socket authentication); returns the output.
pub fn mariadb_root(sql: &str) -> String {
    run_ok(Command::new("mariadb").args(["--batch", "--skip-column-names", "-e", sql]))
}

/// Runs SQL as PostgreSQL's superuser, in `database`.
pub fn postgres_admin(database: &str, sql: &str) -> String {
    run_ok(Command::new("runuser").args([
        "-u",
        "postgres",
        "--",
        "psql",
        "--no-psqlrc",
        "-v",
        "ON_ERROR_STOP=1",
        "-At",
        "-d",
        database,
        "-c",
        sql,
    ]))
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("command runs");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Output bytes as text, for assertions.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A name no other test of this process, nor an earlier run, uses.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// `baluchon args…` with its sequence counters in `state`.
pub fn baluchon(args: &[&dyn AsRef<std::ffi::OsStr>], state: &Path) -> Output {
    Command::new(baluchon_bin())
        .args(args)
        .env("BALUCHON_STATE_DIR", state)
        .env_remove("BALUCHON_SIGN_KEY")
        .output()
        .expect("baluchon runs")
}

/// A file of the bundle's tree, read with stock tools only (tar and zstd), by its
/// absolute path on the source host.
pub fn tree_file(bundle: &Path, absolute: &str) -> Vec<u8> {
    let out = Command::new("bash")
        .arg("-c")
        .arg("set -o pipefail; tar -xOf \"$1\" data/files.tar.zst | zstd -dc | tar -xOf - \"$2\"")
        .arg("bash")
        .arg(bundle)
        .arg(absolute.trim_start_matches('/'))
        .output()
        .expect("tar runs");
    assert!(
        out.status.success(),
        "{absolute} not in the tree of {}: {}",
        bundle.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A payload member of the bundle, decompressed when it is `.zst`.
pub fn payload(bundle: &Path, member: &str) -> Vec<u8> {
    let raw = crate::outer_member(bundle, member);
    if member.ends_with(".zst") {
        zstd::decode_all(&raw[..]).expect("payload decompresses")
    } else {
        raw
    }
}
