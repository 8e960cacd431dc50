//! What an import does to the host besides files: databases and their owners, packages,
//! service reloads, the health check. Programs get their arguments as a vector (no shell);
//! passwords travel in 0600 files, never on a command line.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::ImportError;

/// Where dpkg keeps the list of each installed package's files.
const DPKG_INFO: &str = "/var/lib/dpkg/info";

/// Runs a program to completion; its stdout, or its stderr in the error.
pub fn run(what: &str, command: &mut Command) -> Result<String, ImportError> {
    run_with_input(what, command, b"")
}

/// Like [`run`], with `input` on stdin: SQL that holds a password must not be an
/// argument, which any user can read in `ps`.
pub fn run_with_input(
    what: &str,
    command: &mut Command,
    input: &[u8],
) -> Result<String, ImportError> {
    let program = command.get_program().to_string_lossy().into_owned();
    let spawn_error = |source| ImportError::Spawn { program, source };
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_error)?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    let _ = writer.join();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(ImportError::Tool {
            what: what.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// SQL (on stdin) as MariaDB's root, through the local socket (Debian's default).
pub fn mariadb_admin(sql: &str) -> Result<String, ImportError> {
    run_with_input(
        "mariadb (as root)",
        Command::new("mariadb").args(["--batch", "--skip-column-names"]),
        sql.as_bytes(),
    )
}

/// SQL (on stdin) as PostgreSQL's superuser, through the local socket.
pub fn postgres_admin(sql: &str) -> Result<String, ImportError> {
    run_with_input(
        "psql (as postgres)",
        Command::new("runuser").args([
            "-u",
            "postgres",
            "--",
            "psql",
            "--no-psqlrc",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-d",
            "postgres",
        ]),
        sql.as_bytes(),
    )
}

pub fn mariadb_exists(kind: &str, name: &str) -> Result<bool, ImportError> {
    let sql = match kind {
        "database" => {
            format!("SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = '{name}'")
        }
        _ => format!("SELECT COUNT(*) FROM mysql.user WHERE user = '{name}'"),
    };
    Ok(mariadb_admin(&sql)? != "0")
}

pub fn postgres_exists(kind: &str, name: &str) -> Result<bool, ImportError> {
    let sql = match kind {
        "database" => format!("SELECT COUNT(*) FROM pg_database WHERE datname = '{name}'"),
        _ => format!("SELECT COUNT(*) FROM pg_roles WHERE rolname = '{name}'"),
    };
    Ok(postgres_admin(&sql)? != "0")
}

/// A `[client]` options file for the new database user.
pub fn mariadb_credentials(
    user: &str,
    password: &str,
) -> Result<tempfile::NamedTempFile, ImportError> {
    let mut file = tempfile::Builder::new()
        .prefix("baluchon-mariadb-")
        .tempfile()?;
    writeln!(file, "[client]\nuser=\"{user}\"\npassword=\"{password}\"")?;
    file.flush()?;
    Ok(file)
}

/// Streams `feed`'s output into `mariadb` as the new, unprivileged user, with client
/// commands that touch the filesystem disabled (`--sandbox`): the dump is data from the
/// bundle, and must be able to do no more than that user can in that database.
pub fn mariadb_restore(
    database: &str,
    user: &str,
    password: &str,
    feed: impl FnOnce(&mut dyn Write) -> Result<(), ImportError>,
) -> Result<(), ImportError> {
    let creds = mariadb_credentials(user, password)?;
    let mut child = Command::new("mariadb")
        // Only this options file (not root's ~/.my.cnf, which could make the restore run
        // as MariaDB's root); no LOAD DATA LOCAL, which would let the dump read this
        // host's files; no client commands that touch the filesystem.
        .arg(format!("--defaults-file={}", creds.path().display()))
        .args(["--local-infile=0", "--sandbox", "--batch", "--", database])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| ImportError::Spawn {
            program: "mariadb".to_owned(),
            source,
        })?;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let fed = feed(&mut stdin);
    drop(stdin);
    let status = child.wait()?;
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        return Err(ImportError::Tool {
            what: format!("restoring database {database}"),
            status: status.to_string(),
            stderr: stderr.trim().to_owned(),
        });
    }
    fed
}

/// `pg_restore` into a new database as its new owner: no ownership or privilege commands
/// from the dump, all or nothing.
pub fn postgres_restore(
    dump: &Path,
    database: &str,
    role: &str,
    password: &str,
) -> Result<(), ImportError> {
    let mut passfile = tempfile::Builder::new()
        .prefix("baluchon-pgpass-")
        .tempfile()?;
    writeln!(passfile, "*:*:*:*:{password}")?;
    passfile.flush()?;
    run(
        &format!("restoring database {database}"),
        Command::new("pg_restore")
            .args([
                "--no-owner",
                "--no-privileges",
                "--single-transaction",
                "--exit-on-error",
                "--no-password",
                "--host=127.0.0.1",
            ])
            .arg(format!("--username={role}"))
            .arg(format!("--dbname={database}"))
            .arg(dump)
            .env("PGPASSFILE", passfile.path()),
    )
    .map(|_| ())
}

/// The id of a user (`passwd`) or group (`group`), from the host's account database.
pub fn account_id(database: &str, name: &str) -> Result<u32, ImportError> {
    let line = run(
        &format!("getent {database} {name}"),
        Command::new("getent").args([database, "--", name]),
    )?;
    line.split(':')
        .nth(2)
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| ImportError::Tool {
            what: format!("getent {database} {name}"),
            status: "unexpected output".to_owned(),
            stderr: line.clone(),
        })
}

/// A random password: 32 hex digits from the system's random source.
pub fn new_password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Whether systemd manages this host's services.
fn systemd() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// Commands that check, then reload, the services an app relies on. Checks come first so
/// that a bad config fails the import before any service sees it.
pub fn reload_commands(
    nginx: bool,
    php_versions: &[String],
) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let mut checks = Vec::new();
    let mut reloads = Vec::new();
    if nginx {
        checks.push(s(&["nginx", "-t", "-q"]));
        reloads.push(if systemd() {
            s(&["systemctl", "reload", "nginx"])
        } else {
            s(&["nginx", "-s", "reload"])
        });
    }
    for version in php_versions {
        checks.push(vec![format!("php-fpm{version}"), "-t".to_owned()]);
        reloads.push(if systemd() {
            vec![
                "systemctl".to_owned(),
                "reload".to_owned(),
                format!("php{version}-fpm"),
            ]
        } else {
            // Without systemd: USR2 to the master, whose pid the pidfile holds.
            vec![
                "pkill".to_owned(),
                "-USR2".to_owned(),
                "--pidfile".to_owned(),
                format!("/run/php/php{version}-fpm.pid"),
            ]
        });
    }
    (checks, reloads)
}

/// For apt-get: wait for dpkg's lock (held by unattended-upgrades, say) instead of failing
/// at once, for five minutes at most.
pub const WAIT_FOR_DPKG_LOCK: [&str; 2] = ["-o", "DPkg::Lock::Timeout=300"];

/// How long an import waits for nginx's old workers to exit after a reload.
pub const OLD_WORKERS_WAIT: Duration = Duration::from_secs(10);

/// Where Debian's nginx.conf has the master write its pid.
const NGINX_PID_FILE: &str = "/run/nginx.pid";

/// A process as /proc shows it: its pid and start time, so that a reused pid is another.
type Process = (i32, u64);

/// Runs the reload commands. When one reloads nginx, then waits, up to [`OLD_WORKERS_WAIT`],
/// for the workers of the previous configuration to exit: until then, a new connection may
/// still reach one of them and be served the old configuration. Returns how many were still
/// running at the end (finishing long requests, say).
pub fn reload(commands: &[Vec<String>]) -> Result<usize, ImportError> {
    let reloads_nginx = commands.iter().any(|c| c.iter().any(|a| a == "nginx"));
    let old_workers = reloads_nginx.then(nginx_workers).flatten();
    run_all(commands)?;
    Ok(old_workers.map_or(0, |old| wait_for_exit(&old, OLD_WORKERS_WAIT).len()))
}

/// nginx's worker processes now: the children of the master named by its pid file, or
/// `None` where that cannot be read (nginx not running, another pid file).
fn nginx_workers() -> Option<Vec<Process>> {
    let master: i32 = std::fs::read_to_string(NGINX_PID_FILE)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let mut workers = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        if let Some((parent, started)) = parent_and_start(pid) {
            if parent == master {
                workers.push((pid, started));
            }
        }
    }
    Some(workers)
}

/// From `/proc/PID/stat`: the parent's pid and the start time, of a process not yet a
/// zombie. The name (second field) may hold spaces and parentheses: it ends at the last ')'.
fn parent_and_start(pid: i32) -> Option<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // After the name: state (3rd field), ppid (4th), …, starttime (22nd).
    if fields.first() == Some(&"Z") {
        return None;
    }
    Some((fields.get(1)?.parse().ok()?, fields.get(19)?.parse().ok()?))
}

/// Waits until every process of `old` has exited, or `within` has passed, and returns those
/// still running then.
fn wait_for_exit(old: &[Process], within: Duration) -> Vec<Process> {
    let deadline = Instant::now() + within;
    loop {
        let running: Vec<Process> = old
            .iter()
            .copied()
            .filter(|&(pid, started)| parent_and_start(pid).is_some_and(|(_, s)| s == started))
            .collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn run_all(commands: &[Vec<String>]) -> Result<(), ImportError> {
    for command in commands {
        if let Some((program, args)) = command.split_first() {
            run(&command.join(" "), Command::new(program).args(args))?;
        }
    }
    Ok(())
}

/// GETs `url` from this host's web server (port 80 of 127.0.0.1, with the URL's host as
/// `Host`), until it answers `status` with `contains` in the body, or `within` elapses:
/// a reload takes a moment to reach every worker.
pub fn health_check(
    url: &str,
    status: u16,
    contains: Option<&str>,
    within: Duration,
) -> Result<(), ImportError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| ImportError::Health(format!("{url}: only http:// is checked locally")))?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        match get(host, &path) {
            Ok((got, body)) => {
                let body = String::from_utf8_lossy(&body);
                if got == status && contains.is_none_or(|c| body.contains(c)) {
                    return Ok(());
                }
                last = match contains {
                    Some(c) if got == status => {
                        format!("GET {url}: the page does not contain {c:?}")
                    }
                    _ => format!("GET {url}: status {got}, expected {status}"),
                };
            }
            Err(e) => last = format!("GET {url}: {e}"),
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(ImportError::Health(last))
}

fn get(host: &str, path: &str) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(
        &"127.0.0.1:80".parse().map_err(std::io::Error::other)?,
        Duration::from_secs(5),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: baluchon-health-check\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.take(16 << 20).read_to_end(&mut response)?;
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
    let status = String::from_utf8_lossy(&response[..head_end])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("no HTTP status"))?;
    Ok((status, response[head_end + 4..].to_vec()))
}

/// Installed version of a package, if any.
pub fn installed_version(package: &str) -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status} ${Version}", package])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.strip_prefix("installed ").map(str::to_owned)
}

/// The version apt would install, if the package is known at all.
pub fn candidate_version(package: &str) -> Option<String> {
    let out = Command::new("apt-cache")
        .args(["policy", package])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.trim().strip_prefix("Candidate: ").map(str::to_owned))
        .filter(|v| v != "(none)")
}

/// `dpkg --compare-versions a gt b`.
/// `None` when dpkg cannot compare them (a version that is not one).
pub fn version_newer(a: &str, b: &str) -> Option<bool> {
    let status = Command::new("dpkg")
        .args(["--compare-versions", "--", a, "gt", b])
        .stderr(Stdio::null())
        .status()
        .ok()?;
    match status.code() {
        Some(0) => Some(true),
        Some(1) => Some(false),
        _ => None,
    }
}

/// Whether anything is at `path` itself (a link counts, whatever it points to).
pub fn is_there(path: &Path) -> Result<bool, ImportError> {
    match fs_err::symlink_metadata(path) {
        Ok(_) => Ok(true),
        // A file where a directory on the way should be: nothing there either.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e.into()),
    }
}

/// Every path (directories included) that the given installed packages put on this host,
/// from dpkg's lists; a package that is not installed has none.
pub fn package_paths(packages: &[String]) -> BTreeSet<PathBuf> {
    let mut paths = BTreeSet::new();
    let Ok(lists) = fs_err::read_dir(DPKG_INFO) else {
        return paths;
    };
    let names: Vec<_> = lists
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    for package in packages {
        let plain = format!("{package}.list");
        let with_arch = format!("{package}:");
        for name in &names {
            let Some(name) = name.to_str() else { continue };
            if name == plain || (name.starts_with(&with_arch) && name.ends_with(".list")) {
                if let Ok(text) = fs_err::read(Path::new(DPKG_INFO).join(name)) {
                    paths.extend(
                        text.split(|&b| b == b'\n')
                            .filter(|line| line.starts_with(b"/"))
                            .map(|line| PathBuf::from(std::ffi::OsStr::from_bytes(line))),
                    );
                }
            }
        }
    }
    paths
}

/// Bytes free for an unprivileged writer on `path`'s filesystem; `None` for one that
/// reports no size at all (ramfs, some FUSE filesystems), whose room cannot be known.
pub fn free_bytes(path: &Path) -> Result<Option<u64>, ImportError> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("statvfs {}: {e}", path.display())))?;
    Ok((st.f_blocks > 0).then(|| st.f_bavail.saturating_mul(st.f_frsize)))
}

/// The PHP versions whose PHP-FPM is installed here (`/etc/php/X.Y/fpm`), oldest first.
pub(super) fn installed_php_versions() -> Vec<String> {
    let mut versions: Vec<String> = fs_err::read_dir("/etc/php")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().join("fpm").is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    versions.sort_by_key(|v| {
        v.split('.')
            .map(|p| p.parse::<u32>().unwrap_or(0))
            .collect::<Vec<_>>()
    });
    versions
}

/// Bytes installing `packages` would take, as apt plans it (dependencies included): what
/// it downloads into its cache, and what the packages take once unpacked. Read without a
/// lock: `apt-get -s` lists what it would install, `apt-cache show` their sizes. `None`
/// when apt says nothing usable.
pub(super) fn package_bytes(packages: &[String]) -> Option<(u64, u64)> {
    if packages.is_empty() {
        return Some((0, 0));
    }
    let simulated = Command::new("apt-get")
        .args(["-s", "-q", "--no-remove", "install", "--"])
        .args(packages)
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    let names = simulated_installs(&String::from_utf8_lossy(&simulated.stdout));
    if names.is_empty() {
        return None;
    }
    let shown = Command::new("apt-cache")
        .args(["show", "--no-all-versions", "--"])
        .args(&names)
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    Some(package_sizes(&String::from_utf8_lossy(&shown.stdout)))
}

/// The packages of `apt-get -s` output's `Inst NAME …` lines.
fn simulated_installs(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter_map(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The sum of `Size` (bytes, downloaded) and of `Installed-Size` (KiB, unpacked) over the
/// stanzas of `apt-cache show` output.
fn package_sizes(text: &str) -> (u64, u64) {
    let field = |name: &str| -> u64 {
        text.lines()
            .filter_map(|l| l.strip_prefix(name))
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum()
    };
    (field("Size:"), field("Installed-Size:") * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process is waited for until it exits (a zombie counts as gone), and one that
    /// outlasts the wait is returned.
    #[test]
    fn processes_are_waited_for_until_they_exit() {
        let spawn = |seconds: &str| Command::new("sleep").arg(seconds).spawn().unwrap();
        let ours = std::process::id() as i32;
        // Long enough to be read in /proc before it ends, on a busy machine too.
        let (mut short, mut long) = (spawn("1"), spawn("30"));
        let process = |child: &std::process::Child| {
            let pid = child.id() as i32;
            let (parent, started) = parent_and_start(pid).unwrap();
            assert_eq!(parent, ours);
            (pid, started)
        };
        let (short_one, long_one) = (process(&short), process(&long));
        assert_eq!(wait_for_exit(&[short_one], Duration::from_secs(10)), []);
        let started = Instant::now();
        assert_eq!(
            wait_for_exit(&[short_one, long_one], Duration::from_millis(200)),
            [long_one]
        );
        assert!(started.elapsed() >= Duration::from_millis(200));
        long.kill().unwrap();
        long.wait().unwrap();
        short.wait().unwrap();
        // A pid now free, or reused by another process, is not the one waited for.
        assert_eq!(
            wait_for_exit(&[(long_one.0, long_one.1 + 1)], Duration::ZERO),
            []
        );
    }

    #[test]
    fn apt_plans_are_read_for_names_and_sizes() {
        let simulated = "NOTE: This is only a simulation!\nReading package lists...\n\
                         Inst libfoo1 (1.2-3 Debian:12/stable [amd64])\n\
                         Inst foo (1.2-3 Debian:12/stable [amd64]) []\n\
                         Conf libfoo1 (1.2-3 Debian:12/stable [amd64])\n";
        assert_eq!(simulated_installs(simulated), ["libfoo1", "foo"]);
        let shown = "Package: libfoo1\nInstalled-Size: 100\nSize: 40000\n\n\
                     Package: foo\nInstalled-Size: 20\nSize: 5000\nDescription: Size: 9\n";
        assert_eq!(package_sizes(shown), (45_000, 120 * 1024));
    }
}
