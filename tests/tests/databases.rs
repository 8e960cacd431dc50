//! Database dumps of app exports, against the real servers that `tests/apps/start.sh`
//! starts (nothing is mocked): a PostgreSQL dump, a MariaDB dump (InnoDB tables in one
//! transaction, MyISAM ones under a lock) and an SQLite backup taken while a writer keeps
//! committing are each one consistent snapshot, and a wrong password or an
//! unreachable server fails with the server's own message and leaves nothing behind.
//!
//! Every test names what it creates after the process id and a counter, so the tests run
//! in parallel and again on the same machine. What a test creates (instance file, /srv
//! directory, PostgreSQL role and databases) is removed on drop, best-effort, and what an
//! earlier run that crashed left behind is swept first.
//!
//! The SQLite writer is the `sqlite3` shell fed line by line from a thread, not a Python
//! script: `tests/apps/install.sh` installs `sqlite3`, and a bare CI box has no Python.
//! Run with `--nocapture` to see the counts and timings each test prints.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use baluchon_tests::apps::{baluchon, mariadb_root, payload, postgres_admin, services};
use baluchon_tests::fixture::{baluchon_bin, Keys};
use serde_json::Value;

/// Instance files, /srv directories, roles and databases of this suite start with it.
const PREFIX: &str = "dbtest";
const CUSTOM_DIR: &str = "/etc/baluchon/custom";
/// Rows in `a` and `b` before the writer starts.
const SEED: u64 = 1000;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `probe` every 20 ms until it returns `Some`, for at most `limit`.
fn poll<T>(limit: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// --- PostgreSQL as its superuser -------------------------------------------------------

/// Waits until a writer (the client `child`) has committed past `seed` rows, as `count`
/// says.
fn wait_until_writing(child: &mut Child, count: impl Fn() -> u64, seed: u64) {
    let writing = poll(Duration::from_secs(30), || {
        if let Ok(Some(status)) = child.try_wait() {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
            }
            panic!("the writer stopped ({status}): {stderr}");
        }
        (count() > seed).then_some(())
    });
    assert!(writing.is_some(), "the writer committed nothing in 30 s");
}

/// `postgres_admin` without the panic: for cleanup, which may run while unwinding.
fn try_postgres_admin(database: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "psql",
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
        ])
        .args(["-At", "-d", database, "-c", sql])
        .stdin(Stdio::null())
        .output();
    trimmed_output(out)
}

/// A command's trimmed stdout, or why it failed.
fn trimmed_output(out: std::io::Result<Output>) -> Result<String, String> {
    let out = out.map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(text(&out.stdout).trim().to_owned())
    } else {
        Err(text(&out.stderr))
    }
}

fn pg_count(database: &str, table: &str) -> u64 {
    postgres_admin(database, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .expect("a count")
}

// --- Names, cleanup, and the sweep of crashed runs -------------------------------------

/// True for a process id of an earlier run that is gone (not ours, not alive).
fn is_stale(pid: &str) -> bool {
    pid.parse::<u32>()
        .is_ok_and(|pid| pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists())
}

/// The process id in a name `<head><pid><sep>…`, if it has that shape.
fn pid_in<'n>(name: &'n str, head: &str, sep: char) -> Option<&'n str> {
    name.strip_prefix(head)?.split(sep).next()
}

/// Removes what earlier runs of this suite left when they died before their cleanup.
/// Only names whose process is gone: other test processes may be running right now.
fn sweep_crashed_runs() {
    static SWEPT: OnceLock<()> = OnceLock::new();
    SWEPT.get_or_init(|| {
        let stale_entries = |dir: &str, head: &str| -> Vec<PathBuf> {
            let Ok(entries) = fs_err::read_dir(dir) else {
                return Vec::new();
            };
            entries
                .flatten()
                .filter(|e| {
                    let name = e.file_name();
                    let name = name.to_string_lossy();
                    pid_in(&name, head, '-').is_some_and(is_stale)
                })
                .map(|e| e.path())
                .collect()
        };
        for spec in stale_entries(CUSTOM_DIR, &format!("{PREFIX}-")) {
            let _ = fs_err::remove_file(spec);
        }
        for dir in stale_entries("/srv", &format!("baluchon-test-{PREFIX}-")) {
            let _ = fs_err::remove_dir_all(dir);
        }
        let head = format!("baluchon_{PREFIX}_");
        let like = format!("baluchon\\_{PREFIX}\\_%");
        if let Ok(dbs) = try_postgres_admin(
            "postgres",
            &format!("SELECT datname FROM pg_database WHERE datname LIKE '{like}'"),
        ) {
            for db in dbs
                .lines()
                .filter(|d| pid_in(d, &head, '_').is_some_and(is_stale))
            {
                let _ = try_postgres_admin(
                    "postgres",
                    &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
                );
            }
        }
        if let Ok(roles) = try_postgres_admin(
            "postgres",
            &format!("SELECT rolname FROM pg_roles WHERE rolname LIKE '{like}'"),
        ) {
            for role in roles
                .lines()
                .filter(|r| pid_in(r, &head, '_').is_some_and(is_stale))
            {
                let _ = try_postgres_admin("postgres", &format!("DROP ROLE IF EXISTS \"{role}\""));
            }
        }
    });
}

/// One test's names and scratch space; everything is removed on drop.
struct Scratch {
    /// The instance name, `dbtest-<pid>-<n>`: the file `/etc/baluchon/custom/<name>.toml`.
    name: String,
    spec: PathBuf,
    /// `/srv/baluchon-test-<name>`: exported sources must be under an allowed root, and
    /// `/tmp` is not one.
    srv: PathBuf,
    /// The PostgreSQL role and database, `baluchon_dbtest_<pid>_<n>`; the restored copy is
    /// `<sql>_restored`.
    sql: String,
    /// The signing key and the sequence counters (outputs go to `out_dir`, which may be
    /// under /tmp: only sources are restricted).
    work: tempfile::TempDir,
    keys: Keys,
    out_dir: PathBuf,
}

impl Scratch {
    fn new() -> Self {
        sweep_crashed_runs();
        // Built once, here: the first call builds it, which must not count in timings.
        baluchon_bin();
        static N: AtomicU32 = AtomicU32::new(0);
        let (pid, n) = (std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let name = format!("{PREFIX}-{pid}-{n}");
        let work = tempfile::tempdir().expect("temporary directory");
        let keys = Keys::new(work.path());
        let out_dir = work.path().join("out");
        fs_err::create_dir(&out_dir).expect("mkdir out");
        let scratch = Self {
            spec: PathBuf::from(format!("{CUSTOM_DIR}/{name}.toml")),
            srv: PathBuf::from(format!("/srv/baluchon-test-{name}")),
            sql: format!("baluchon_{PREFIX}_{pid}_{n}"),
            name,
            work,
            keys,
            out_dir,
        };
        // The same names from an earlier run whose process id was reused.
        scratch.remove_all();
        fs_err::create_dir_all(scratch.srv.join("data")).expect("mkdir /srv/…/data");
        fs_err::write(scratch.srv.join("data/notes.txt"), "kept\n").expect("write");
        scratch
    }

    fn remove_all(&self) {
        let _ = fs_err::remove_file(&self.spec);
        let _ = fs_err::remove_dir_all(&self.srv);
        for db in [format!("{}_restored", self.sql), self.sql.clone()] {
            let _ = try_postgres_admin(
                "postgres",
                &format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"),
            );
        }
        let _ = try_postgres_admin("postgres", &format!("DROP ROLE IF EXISTS \"{}\"", self.sql));
        for db in [format!("{}_restored", self.sql), self.sql.clone()] {
            let _ = try_mariadb_root(&format!("DROP DATABASE IF EXISTS `{db}`"));
        }
        let _ = try_mariadb_root(&format!("DROP USER IF EXISTS '{}'@'localhost'", self.sql));
    }

    /// Writes the instance file: `domain` and `data_dir`, then `rest`.
    fn write_instance(&self, rest: &str) {
        fs_err::create_dir_all(CUSTOM_DIR).expect("mkdir /etc/baluchon/custom");
        fs_err::write(
            &self.spec,
            format!(
                "domain = \"{}.test\"\ndata_dir = \"{}/data\"\n{rest}",
                self.name,
                self.srv.display()
            ),
        )
        .expect("write the instance file");
    }

    /// A role with `password` and a database it owns.
    fn create_postgres(&self, password: &str) {
        postgres_admin(
            "postgres",
            &format!("CREATE ROLE \"{}\" LOGIN PASSWORD '{password}'", self.sql),
        );
        postgres_admin(
            "postgres",
            &format!("CREATE DATABASE \"{0}\" OWNER \"{0}\"", self.sql),
        );
    }

    fn bundle(&self) -> PathBuf {
        self.out_dir.join(format!("{}.baluchon", self.name))
    }

    /// `baluchon export --app custom --instance <name>` into [`Self::bundle`], timed.
    fn export(&self) -> (Output, Duration) {
        let start = Instant::now();
        let out = baluchon(
            &[
                &"export",
                &"--app",
                &"custom",
                &"--instance",
                &self.name,
                &"--sign-key",
                &self.keys.private,
                &"-o",
                &self.bundle(),
                // The spec names no env_file: an import could not give the app a new
                // password, so the old one stays in the bundle, in clear only when asked.
                &"--allow-clear-secrets",
            ],
            &self.work.path().join("state"),
        );
        (out, start.elapsed())
    }

    /// The names left in the output directory: only the bundle after a success, nothing
    /// at all after a failure (no `.partial`, no SQLite scratch copy).
    fn outputs(&self) -> Vec<String> {
        let mut names: Vec<String> = fs_err::read_dir(&self.out_dir)
            .expect("read the output directory")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// The description of the bundle's databases.
    fn databases(&self) -> Vec<Value> {
        let description: Value =
            serde_json::from_slice(&payload(&self.bundle(), "data/app/app.json"))
                .expect("app.json is JSON");
        description["databases"]
            .as_array()
            .expect("app.json lists databases")
            .clone()
    }

    /// An export that must fail: exit code 1, `expected` in stderr, nothing written.
    fn assert_failed_cleanly(&self, out: &Output, expected: &[&str]) -> String {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
        let lower = stderr.to_lowercase();
        assert!(
            expected.iter().any(|e| lower.contains(&e.to_lowercase())),
            "none of {expected:?} in stderr:\n{stderr}"
        );
        assert!(!self.bundle().exists(), "a failed export left its output");
        assert_eq!(
            self.outputs(),
            Vec::<String>::new(),
            "a failed export left files in the output directory"
        );
        stderr
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.remove_all();
    }
}

// --- PostgreSQL ------------------------------------------------------------------------

/// Rows of `a_padding`, a table the dump reads between `a` and `b` (pg_dump writes table
/// data in name order): a dump that was not one snapshot would then show more rows in `b`
/// than in `a`, and the dump lasts long enough for "dumped < after" to have a wide margin.
/// Measured on the 2-CPU dev box: pg_dump alone takes 0.13 s without padding and 0.33 s
/// with 300 000 rows (31 MB of dump); the whole export 0.15-0.23 s and 0.47 s. The writer
/// commits 1 500-7 000 transactions/s, so "after" exceeded "dumped" by ~700 rows in either
/// case, and "dumped" exceeded "before" by 80-770: enough not to be flaky, and the padding
/// keeps a margin when a loaded machine slows the writer down.
const PADDING_ROWS: u64 = 300_000;

/// A `psql` running `CALL churn(…)` as the app's role; its backend is terminated on drop
/// (killing psql alone would leave the procedure running in the server).
struct PgWriter {
    child: Child,
    app_name: String,
}

impl PgWriter {
    fn start(database: &str, role: &str, password: &str) -> Self {
        let app_name = format!("{database}_writer");
        let child = Command::new("psql")
            .args(["--no-psqlrc", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .args(["-U", role, "-d", database, "-c", "CALL churn(2000000000)"])
            .env("PGPASSWORD", password)
            .env("PGAPPNAME", &app_name)
            .env_remove("PGPASSFILE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("psql starts");
        Self { child, app_name }
    }

    fn wait_until_writing(&mut self, database: &str, seed: u64) {
        wait_until_writing(&mut self.child, || pg_count(database, "a"), seed);
    }

    fn stop(&mut self) {
        let _ = try_postgres_admin(
            "postgres",
            &format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = '{}'",
                self.app_name
            ),
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PgWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Restores a custom-format dump into a new database `target`, as the superuser, without
/// the source's owners (the app's role is not needed on the new side).
fn pg_restore(dump: Vec<u8>, target: &str) {
    postgres_admin("postgres", &format!("CREATE DATABASE \"{target}\""));
    let mut child = Command::new("runuser")
        .args([
            "-u",
            "postgres",
            "--",
            "pg_restore",
            "--no-owner",
            "--exit-on-error",
        ])
        .args(["-d", target])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pg_restore starts");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let feeder = std::thread::spawn(move || stdin.write_all(&dump));
    let out = child.wait_with_output().expect("pg_restore runs");
    let fed = feeder.join().expect("the feeder thread");
    assert!(
        out.status.success(),
        "pg_restore failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    fed.expect("pg_restore read the whole dump");
}

#[test]
fn postgres_dump_is_one_snapshot_while_a_writer_commits() {
    let t0 = Instant::now();
    services();
    let s = Scratch::new();
    let (db, role) = (&s.sql, &s.sql);
    // `:` and `\` need escaping in the password file baluchon hands to libpq.
    let password = format!("pw:{}\\end", s.name);
    s.create_postgres(&password);
    postgres_admin(
        db,
        &format!(
            r#"SET ROLE "{role}";
            CREATE TABLE a (id bigint PRIMARY KEY);
            CREATE TABLE b (id bigint PRIMARY KEY);
            CREATE TABLE a_padding (id bigint, filler text);
            INSERT INTO a SELECT g FROM generate_series(1, {SEED}) g;
            INSERT INTO b SELECT g FROM generate_series(1, {SEED}) g;
            INSERT INTO a_padding
                SELECT g, md5(g::text) || repeat('x', 60) FROM generate_series(1, {PADDING_ROWS}) g;
            CREATE PROCEDURE churn(n int) LANGUAGE plpgsql AS $$
            DECLARE
                last_id bigint;
            BEGIN
                SELECT coalesce(max(id), 0) INTO last_id FROM a;
                FOR i IN 1..n LOOP
                    last_id := last_id + 1;
                    INSERT INTO a VALUES (last_id);
                    INSERT INTO b VALUES (last_id);
                    COMMIT;
                END LOOP;
            END $$;"#
        ),
    );
    let setup = t0.elapsed();

    let mut writer = PgWriter::start(db, role, &password);
    writer.wait_until_writing(db, SEED);
    s.write_instance(&format!(
        "[postgresql]\nname = \"{db}\"\nuser = \"{role}\"\npassword = '{password}'\n\
         host = \"127.0.0.1\"\n"
    ));

    let before = pg_count(db, "a");
    let (out, export_time) = s.export();
    let after = pg_count(db, "a");
    writer.stop();
    assert!(
        out.status.success(),
        "export failed:\n{}",
        text(&out.stderr)
    );
    assert_eq!(s.outputs(), [format!("{}.baluchon", s.name)]);

    let restore_start = Instant::now();
    let restored = format!("{db}_restored");
    pg_restore(
        payload(&s.bundle(), "data/db/postgresql.pgdump.zst"),
        &restored,
    );
    let restore_time = restore_start.elapsed();
    let dumped = pg_count(&restored, "a");
    eprintln!(
        "postgres: before {before}, dumped {dumped}, after {after} (rows of a); export {:.2?}, \
         setup {setup:.2?}, restore {restore_time:.2?}",
        export_time
    );
    assert_eq!(
        pg_count(&restored, "b"),
        dumped,
        "a and b dumped at different moments"
    );
    assert_eq!(
        postgres_admin(
            &restored,
            "SELECT count(*) FROM (SELECT id FROM a EXCEPT SELECT id FROM b) d"
        ),
        "0",
        "the same ids in a and b"
    );
    assert_eq!(pg_count(&restored, "a_padding"), PADDING_ROWS);
    assert!(
        dumped > before,
        "the dump ({dumped} rows) is older than the export ({before} rows before it started)"
    );
    assert!(
        dumped < after,
        "the dump ({dumped} rows) is not a snapshot taken while the writer ran \
         ({after} rows once the export ended)"
    );

    let databases = s.databases();
    assert_eq!(databases.len(), 1, "{databases:?}");
    let d = &databases[0];
    assert_eq!(d["id"], "postgresql");
    assert_eq!(d["engine"], "postgresql");
    assert_eq!(d["dump"], "data/db/postgresql.pgdump.zst");
    assert_eq!(d["name"], db.as_str());
    assert_eq!(d["user"], role.as_str());
    assert_eq!(d["host"], "127.0.0.1");
    let version = d["server_version"].as_str().expect("server_version");
    assert!(version.starts_with("15"), "server_version {version:?}");
    let description = text(&payload(&s.bundle(), "data/app/app.json"));
    assert!(
        !description.contains(&password),
        "the password is in app.json"
    );
    assert!(!text(&out.stdout).contains(&password) && !text(&out.stderr).contains(&password));
    eprintln!("postgres: the whole test took {:.2?}", t0.elapsed());
}

#[test]
fn wrong_postgres_password_fails_with_the_servers_message_and_writes_nothing() {
    services();
    let s = Scratch::new();
    s.create_postgres("the-right-password");
    s.write_instance(&format!(
        "[postgresql]\nname = \"{0}\"\nuser = \"{0}\"\npassword = \"not-the-password\"\n\
         host = \"127.0.0.1\"\n",
        s.sql
    ));
    let (out, took) = s.export();
    let stderr = s.assert_failed_cleanly(&out, &["password authentication failed"]);
    assert!(stderr.contains("database postgresql"), "{stderr}");
    assert!(
        !stderr.contains("not-the-password"),
        "the password is shown:\n{stderr}"
    );
    eprintln!("wrong password: failed in {took:.2?}: {}", stderr.trim());
}

/// In clear, a custom app's database password leaves the bundle only when the spec names
/// the app's env_file (where an import writes the new one); without it the export refuses.
#[test]
fn postgres_password_is_left_out_of_a_clear_bundle_only_with_the_apps_env_file() {
    services();
    let s = Scratch::new();
    let password = format!("pw-{}-secret", s.name);
    s.create_postgres(&password);
    let section = format!(
        "[postgresql]\nname = \"{0}\"\nuser = \"{0}\"\npassword = \"{password}\"\nhost = \"127.0.0.1\"\n",
        s.sql
    );
    let export = || {
        baluchon(
            &[
                &"export",
                &"--app",
                &"custom",
                &"--instance",
                &s.name,
                &"--sign-key",
                &s.keys.private,
                &"-o",
                &s.bundle(),
            ],
            &s.work.path().join("state"),
        )
    };
    s.write_instance(&section);
    let out = export();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("postgresql_password would be stored in clear"),
        "{}",
        text(&out.stderr)
    );
    assert!(!s.bundle().exists(), "no bundle after a refusal");

    let env = s.srv.join("etc/db.env");
    fs_err::create_dir_all(s.srv.join("etc")).expect("mkdir etc");
    fs_err::write(
        &env,
        format!(
            "PGDATABASE={0}\nPGUSER={0}\nPGPASSWORD='{password}'\n",
            s.sql
        ),
    )
    .expect("write db.env");
    // Another name for the same file: it must not carry the password either.
    fs_err::hard_link(&env, s.srv.join("etc/db.env.link")).expect("link db.env");
    s.write_instance(&format!(
        "config_dir = \"{}/etc\"\n{section}env_file = \"{}\"\n",
        s.srv.display(),
        env.display()
    ));
    let out = export();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout)
            .contains("left out of the bundle (the import makes new ones): postgresql_password"),
        "{}",
        text(&out.stdout)
    );
    let tar = String::from_utf8_lossy(&payload(&s.bundle(), "data/files.tar.zst")).into_owned();
    assert!(
        tar.contains("PGPASSWORD='BALUCHON-REDACTED'"),
        "the app's copy left out"
    );
    assert!(
        tar.contains("password = \"BALUCHON-REDACTED\""),
        "the spec's copy left out"
    );
    assert!(
        !tar.contains(&password),
        "no copy of the password is in the bundle"
    );
    let index =
        String::from_utf8_lossy(&payload(&s.bundle(), "files-index.jsonl.zst")).into_owned();
    let link = index
        .lines()
        .find(|l| l.contains("etc/db.env.link"))
        .unwrap_or_else(|| panic!("db.env.link is in the index:\n{index}"));
    assert!(link.contains("\"hardlink\""), "still a hard link: {link}");
}

#[test]
fn unreachable_postgres_fails_clearly() {
    services();
    let s = Scratch::new();
    s.write_instance(
        "[postgresql]\nname = \"app\"\nuser = \"app\"\npassword = \"x\"\n\
         host = \"127.0.0.1:1\"\n",
    );
    let (out, took) = s.export();
    let stderr = s.assert_failed_cleanly(&out, &["connection refused", "could not connect"]);
    assert!(stderr.contains("database postgresql"), "{stderr}");
    eprintln!("unreachable: failed in {took:.2?}: {}", stderr.trim());
}

// --- SQLite ----------------------------------------------------------------------------

/// Rows of 200 random bytes in `a_padding` (about 5 MB), so that the backup copies more
/// than a handful of pages. The export still takes only ~0.1 s, during which the writer
/// (about 45 transactions/s, each holding the write lock for [`HOLD`]) commits ~5: the
/// backup starts while a transaction is open, almost surely, but "dumped" may equal
/// "before" or "after", so only the range is checked.
const SQLITE_PADDING_ROWS: u64 = 20_000;
/// How long the writer holds each transaction open between its two inserts.
const HOLD: Duration = Duration::from_millis(20);

/// Runs SQL with the `sqlite3` shell, waiting up to 30 s for locks.
fn sqlite(path: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3")
        .args(["-batch", "-bail", "-cmd", ".timeout 30000"])
        .arg(path)
        .arg(sql)
        .stdin(Stdio::null())
        .output()
        .expect("sqlite3 runs");
    assert!(
        out.status.success(),
        "sqlite3 {} {sql:?} failed: {}",
        path.display(),
        text(&out.stderr)
    );
    text(&out.stdout).trim().to_owned()
}

fn sqlite_count(path: &Path, table: &str) -> u64 {
    sqlite(path, &format!("SELECT count(*) FROM {table}"))
        .parse()
        .expect("a count")
}

/// An `sqlite3` shell that a thread feeds, line by line: `BEGIN IMMEDIATE`, an insert into
/// `a`, [`HOLD`] with the write lock held, the same id into `b`, `COMMIT`; until stopped.
struct SqliteWriter {
    child: Child,
    feeder: Option<JoinHandle<std::io::Result<()>>>,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
}

impl SqliteWriter {
    fn start(path: &Path, first_id: u64) -> Self {
        let mut child = Command::new("sqlite3")
            .args(["-batch", "-bail"])
            .arg(path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sqlite3 starts");
        let stdin = child.stdin.take().expect("stdin is piped");
        let stop = Arc::new(AtomicBool::new(false));
        let committed = Arc::new(AtomicU64::new(0));
        let feeder = {
            let (stop, committed) = (Arc::clone(&stop), Arc::clone(&committed));
            std::thread::spawn(move || feed(stdin, first_id, &stop, &committed))
        };
        Self {
            child,
            feeder: Some(feeder),
            stop,
            committed,
        }
    }

    /// Stops after the transaction in progress; the shell must have had no error.
    fn stop(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let fed = self
            .feeder
            .take()
            .map(|f| f.join().expect("the feeder thread"));
        let out = self
            .child
            .stderr
            .take()
            .map(|mut e| {
                let mut s = String::new();
                let _ = std::io::Read::read_to_string(&mut e, &mut s);
                s
            })
            .unwrap_or_default();
        let status = self.child.wait().expect("sqlite3 exits");
        assert!(
            status.success() && matches!(fed, Some(Ok(()))),
            "the SQLite writer failed ({status}, {fed:?}): {out}"
        );
        self.committed.load(Ordering::Relaxed)
    }
}

fn feed(
    mut stdin: ChildStdin,
    first_id: u64,
    stop: &AtomicBool,
    committed: &AtomicU64,
) -> std::io::Result<()> {
    // Each write ends with a newline: the shell runs a statement as soon as its line is
    // complete, so the transaction really stays open while this thread sleeps.
    writeln!(stdin, ".timeout 60000")?;
    let mut id = first_id;
    while !stop.load(Ordering::Relaxed) {
        writeln!(stdin, "BEGIN IMMEDIATE;\nINSERT INTO a VALUES ({id});")?;
        std::thread::sleep(HOLD);
        writeln!(stdin, "INSERT INTO b VALUES ({id});\nCOMMIT;")?;
        committed.fetch_add(1, Ordering::Relaxed);
        id += 1;
    }
    writeln!(stdin, ".quit")?;
    Ok(())
}

impl Drop for SqliteWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sqlite_backup_is_consistent(journal_mode: &str) {
    let t0 = Instant::now();
    services();
    let s = Scratch::new();
    let dir = s.srv.join("db");
    fs_err::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("app.sqlite3");
    let mode = sqlite(
        &path,
        &format!(
            "PRAGMA journal_mode = {journal_mode};
            CREATE TABLE a (id INTEGER PRIMARY KEY);
            CREATE TABLE b (id INTEGER PRIMARY KEY);
            CREATE TABLE a_padding (id INTEGER PRIMARY KEY, filler BLOB);
            WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SEED})
                INSERT INTO a SELECT i FROM n;
            INSERT INTO b SELECT id FROM a;
            WITH RECURSIVE n(i) AS
                (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {SQLITE_PADDING_ROWS})
                INSERT INTO a_padding SELECT i, randomblob(200) FROM n;"
        ),
    );
    assert_eq!(mode, journal_mode.to_lowercase(), "the journal mode took");

    let mut writer = SqliteWriter::start(&path, SEED + 1);
    let writing = poll(Duration::from_secs(30), || {
        (sqlite_count(&path, "a") > SEED).then_some(())
    });
    assert!(
        writing.is_some(),
        "the SQLite writer committed nothing in 30 s"
    );
    s.write_instance(&format!("[sqlite]\npath = \"{}\"\n", path.display()));

    let before = sqlite_count(&path, "a");
    let (out, export_time) = s.export();
    let after = sqlite_count(&path, "a");
    let committed = writer.stop();
    assert!(
        out.status.success(),
        "export failed:\n{}",
        text(&out.stderr)
    );
    // The backup's scratch copy, made next to the output, is gone.
    assert_eq!(s.outputs(), [format!("{}.baluchon", s.name)]);

    let copy = s.work.path().join("restored.sqlite3");
    fs_err::write(&copy, payload(&s.bundle(), "data/db/sqlite.sqlite3.zst")).expect("write");
    assert_eq!(sqlite(&copy, "PRAGMA integrity_check"), "ok");
    let dumped = sqlite_count(&copy, "a");
    eprintln!(
        "sqlite {journal_mode}: before {before}, dumped {dumped}, after {after} (rows of a); \
         export {export_time:.2?}; the writer committed {committed} transactions in all"
    );
    assert_eq!(
        sqlite_count(&copy, "b"),
        dumped,
        "a and b copied at different moments"
    );
    assert_eq!(
        sqlite(
            &copy,
            "SELECT count(*) FROM (SELECT id FROM a EXCEPT SELECT id FROM b)"
        ),
        "0",
        "the same ids in a and b"
    );
    assert_eq!(sqlite_count(&copy, "a_padding"), SQLITE_PADDING_ROWS);
    assert!(
        (before..=after).contains(&dumped),
        "the copy ({dumped} rows) was not taken during the export ({before}..={after})"
    );

    let databases = s.databases();
    assert_eq!(databases.len(), 1, "{databases:?}");
    let d = &databases[0];
    assert_eq!(d["id"], "sqlite");
    assert_eq!(d["engine"], "sqlite");
    assert_eq!(d["dump"], "data/db/sqlite.sqlite3.zst");
    assert_eq!(d["path"], path.display().to_string());
    eprintln!(
        "sqlite {journal_mode}: the whole test took {:.2?}",
        t0.elapsed()
    );
}

#[test]
fn sqlite_backup_is_consistent_while_a_writer_holds_transactions_open() {
    sqlite_backup_is_consistent("DELETE");
}

#[test]
fn sqlite_backup_is_consistent_in_wal_mode_while_a_writer_holds_transactions_open() {
    sqlite_backup_is_consistent("WAL");
}

/// A FIFO where SQLite looks for a hot journal, put there by the app's account: SQLite
/// would open it by name and wait forever for a writer. The export says so instead. Should
/// it open the FIFO anyway, a writer comes after a minute, and the test fails.
#[test]
fn a_fifo_beside_an_sqlite_database_fails_the_export_instead_of_hanging_it() {
    let s = Scratch::new();
    let dir = s.srv.join("db");
    fs_err::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("app.sqlite3");
    sqlite(&path, "CREATE TABLE a (id INTEGER PRIMARY KEY);");
    let journal = dir.join("app.sqlite3-journal");
    baluchon_tests::fixture::fifo(&journal);
    s.write_instance(&format!("[sqlite]\npath = \"{}\"\n", path.display()));

    let done = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let (journal, done) = (journal.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done.load(Ordering::Relaxed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if !done.load(Ordering::Relaxed) {
                use fs_err::os::unix::fs::OpenOptionsExt as _;
                let _ = fs_err::OpenOptions::new()
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
                    .open(&journal);
            }
        })
    };
    let (out, took) = s.export();
    done.store(true, Ordering::Relaxed);
    watchdog.join().expect("the watchdog thread");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} is not a regular file", journal.display())),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(60), "the export waited {took:?}");
    assert_eq!(s.outputs(), Vec::<String>::new(), "nothing left");
}

// --- MariaDB -----------------------------------------------------------------------------

/// `mariadb_root` without the panic: for cleanup, which may run while unwinding.
fn try_mariadb_root(sql: &str) -> Result<String, String> {
    trimmed_output(
        Command::new("mariadb")
            .args(["--batch", "--skip-column-names", "-e", sql])
            .output(),
    )
}

fn mariadb_count(database: &str, table: &str) -> u64 {
    mariadb_root(&format!("SELECT COUNT(*) FROM `{database}`.`{table}`"))
        .trim()
        .parse()
        .expect("a count")
}

/// A `mariadb` client running `CALL churn(…)` as the app's user; its server threads are
/// killed on drop (a procedure outlives its client until it next writes to it).
struct MariadbWriter {
    child: Child,
    user: String,
}

impl MariadbWriter {
    fn start(database: &str, user: &str, password: &str) -> Self {
        let child = Command::new("mariadb")
            .args(["-u", user, database, "-e", "CALL churn(2000000000)"])
            .env("MYSQL_PWD", password)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mariadb starts");
        Self {
            child,
            user: user.to_owned(),
        }
    }

    fn wait_until_writing(&mut self, database: &str, seed: u64) {
        wait_until_writing(&mut self.child, || mariadb_count(database, "a"), seed);
    }

    fn stop(&mut self) {
        if let Ok(ids) = try_mariadb_root(&format!(
            "SELECT id FROM information_schema.processlist WHERE user = '{}'",
            self.user
        )) {
            for id in ids.lines() {
                let _ = try_mariadb_root(&format!("KILL {id}"));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MariadbWriter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Tables `a` and `b` in `engine` that a writer fills in step (one row each, in one
/// transaction where the engine has them), `a_padding` dumped between them, and an export
/// while the writer runs. Returns the rows of `a` before, in the dump and after, and the
/// dump's rows of `b`.
fn mariadb_export_while_writing(s: &Scratch, engine: &str) -> (u64, u64, u64, u64, Value) {
    let (db, user) = (&s.sql, &s.sql);
    let password = format!("pw-{}", s.name);
    mariadb_root(&format!(
        "CREATE DATABASE `{db}`; CREATE USER '{user}'@'localhost' IDENTIFIED BY '{password}'; \
         GRANT ALL PRIVILEGES ON `{db}`.* TO '{user}'@'localhost';"
    ));
    mariadb_root(&format!(
        "USE `{db}`;
        CREATE TABLE a (id BIGINT PRIMARY KEY) ENGINE={engine};
        CREATE TABLE b (id BIGINT PRIMARY KEY) ENGINE={engine};
        CREATE TABLE a_padding (id BIGINT, filler TEXT) ENGINE={engine};
        INSERT INTO a SELECT seq FROM seq_1_to_{SEED};
        INSERT INTO b SELECT seq FROM seq_1_to_{SEED};
        INSERT INTO a_padding SELECT seq, REPEAT('x', 100) FROM seq_1_to_{PADDING_ROWS};
        DELIMITER //
        CREATE DEFINER = '{user}'@'localhost' PROCEDURE churn(n INT)
        BEGIN
            DECLARE i INT DEFAULT 0;
            DECLARE last BIGINT;
            SELECT COALESCE(MAX(id), 0) INTO last FROM a;
            WHILE i < n DO
                SET last = last + 1;
                START TRANSACTION;
                INSERT INTO a VALUES (last);
                INSERT INTO b VALUES (last);
                COMMIT;
                SET i = i + 1;
            END WHILE;
        END //
        DELIMITER ;"
    ));
    let mut writer = MariadbWriter::start(db, user, &password);
    writer.wait_until_writing(db, SEED);
    s.write_instance(&format!(
        "[mariadb]\nname = \"{db}\"\nuser = \"{user}\"\npassword = \"{password}\"\n"
    ));
    let before = mariadb_count(db, "a");
    let (out, _) = s.export();
    let after = mariadb_count(db, "a");
    writer.stop();
    assert!(
        out.status.success(),
        "export failed:\n{}",
        text(&out.stderr)
    );

    let restored = format!("{db}_restored");
    mariadb_root(&format!("CREATE DATABASE `{restored}`"));
    let mut child = Command::new("mariadb")
        .arg(&restored)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mariadb starts");
    let dump = payload(&s.bundle(), "data/db/mariadb.sql.zst");
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let feeder = std::thread::spawn(move || stdin.write_all(&dump));
    let restore = child.wait_with_output().expect("mariadb runs");
    feeder
        .join()
        .expect("the feeder")
        .expect("the dump was read");
    assert!(
        restore.status.success(),
        "restore: {}",
        text(&restore.stderr)
    );
    let dumped = mariadb_count(&restored, "a");
    assert_eq!(mariadb_count(&restored, "a_padding"), PADDING_ROWS);
    let databases = s.databases();
    eprintln!("mariadb {engine}: before {before}, dumped {dumped}, after {after} (rows of a)");
    (
        before,
        dumped,
        after,
        mariadb_count(&restored, "b"),
        databases[0].clone(),
    )
}

#[test]
fn mariadb_dump_of_innodb_tables_is_one_snapshot_while_a_writer_commits() {
    services();
    let s = Scratch::new();
    let (before, dumped, after, dumped_b, description) = mariadb_export_while_writing(&s, "InnoDB");
    assert_eq!(dumped_b, dumped, "a and b dumped at different moments");
    assert!(
        dumped > before && dumped < after,
        "{before} < {dumped} < {after}"
    );
    let method = description["method"].as_str().unwrap();
    assert!(method.contains("--single-transaction"), "{method}");
    assert!(description.get("note").is_none(), "{description}");
}

#[test]
fn mariadb_dump_of_myisam_tables_is_taken_under_a_lock_while_a_writer_writes() {
    services();
    let s = Scratch::new();
    let (before, dumped, after, dumped_b, description) = mariadb_export_while_writing(&s, "MyISAM");
    // MyISAM has no transactions: the writer may have been stopped between its two
    // inserts, never further apart (one transaction would have read `b` a padding later).
    assert!(
        dumped_b == dumped || dumped_b + 1 == dumped,
        "a {dumped}, b {dumped_b}"
    );
    assert!(
        dumped > before && dumped <= after,
        "{before} < {dumped} <= {after}"
    );
    let method = description["method"].as_str().unwrap();
    assert!(
        method.contains("--lock-tables") && !method.contains("--single-transaction"),
        "{method}"
    );
    let note = description["note"].as_str().unwrap();
    assert!(
        note.contains("a (MyISAM), a_padding (MyISAM), b (MyISAM)"),
        "{note}"
    );
}
