//! Two isolated hosts on one machine, for the end-to-end suite (`tests/tests/e2e.rs`): each
//! has its own network namespace (a veth pair to this machine, which is the controller), its
//! own mount namespace with an overlay root whose upper layer only it sees, its own PID,
//! UTS and IPC namespaces, and its own sshd, MariaDB, PostgreSQL, nginx and PHP-FPM,
//! started without systemd by `tests/apps/e2e-host.sh` and `tests/apps/start.sh`. The
//! controller reaches a host only over SSH (or, for checks, by entering its namespaces).
//! Needs root, iproute2, util-linux and the packages of `tests/apps/install.sh`.
//!
//! A host lives as long as the pipe to its namespace's first process: dropping the
//! [`Host`], or the test process dying in any way, closes it, and the host then stops its
//! services by PID and exits, which ends its namespaces, mounts and link.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Taken for a pair's whole life: one pair at a time on the machine, so that a link named
/// like ours is always a leftover that may be removed.
const LOCK: &str = "/run/baluchon-e2e.lock";

/// The pair's temporary directory: keys, known_hosts, the hosts' mount points and logs.
const TEMP_PREFIX: &str = "baluchon-e2e-";

/// Where a host sees `tests/apps` (e2e-host.sh mounts it there).
const APPS_IN_HOST: &str = "/usr/local/lib/baluchon-e2e/apps";

/// PATH inside a host: the tools live in the sbin directories too.
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn script_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps/e2e-host.sh")
}

/// One isolated host. Dropping it stops its services and removes every trace of it.
#[derive(Debug)]
pub struct Host {
    name: &'static str,
    addr: Ipv4Addr,
    gateway: Ipv4Addr,
    link: String,
    /// `unshare`, whose child (`init`) is the first process of the host's namespaces.
    holder: Child,
    /// Closing it ends the host (see the module's documentation).
    lifeline: Option<ChildStdin>,
    init: u32,
    host_key: String,
}

impl Host {
    /// Builds host `name` (one lowercase letter) at 10.77.`subnet`.2, the controller being
    /// 10.77.`subnet`.1; `dir` holds its root's mount point and log.
    fn start(name: &'static str, subnet: u8, dir: &Path) -> Self {
        let link = format!("bl-e2e-{name}");
        // A leftover of a killed run: its namespace may still be alive, the lock says it is
        // no one's.
        let _ = Command::new("ip").args(["link", "del", &link]).output();
        let mount_point = dir.join(name);
        fs_err::create_dir_all(&mount_point).expect("mount point");
        let log = fs_err::File::create(dir.join(format!("{name}.log"))).expect("host log");
        let mut holder = Command::new("unshare")
            .args([
                "--mount",
                "--pid",
                "--fork",
                "--kill-child",
                "--net",
                "--uts",
                "--ipc",
                "bash",
            ])
            .arg(script_path())
            .arg("init")
            .arg(&mount_point)
            .arg(format!("host-{name}"))
            .env("PATH", PATH)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log.into_parts().0)
            .spawn()
            .expect("unshare runs (util-linux)");
        let lifeline = holder.stdin.take();
        let mut host = Self {
            name,
            addr: Ipv4Addr::new(10, 77, subnet, 2),
            gateway: Ipv4Addr::new(10, 77, subnet, 1),
            link,
            init: 0,
            holder,
            lifeline,
            host_key: String::new(),
        };
        host.init = host.wait_ready(dir);
        host.connect_link();
        let facts = host.run_script(&["provision", &host.addr.to_string()]);
        host.host_key = facts
            .get("host_key")
            .expect("provision prints host_key")
            .clone();
        host
    }

    /// Waits for the namespaces' first process to have built the root; returns its PID.
    fn wait_ready(&mut self, dir: &Path) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.holder.try_wait().expect("poll unshare") {
                panic!(
                    "host {} exited while starting ({status}):\n{}",
                    self.name,
                    fs_err::read_to_string(dir.join(format!("{}.log", self.name)))
                        .unwrap_or_default()
                );
            }
            if let Some(&init) = children(self.holder.id()).first() {
                if Path::new(&format!("/proc/{init}/root/run/e2e-host-ready")).exists() {
                    return init;
                }
            }
            assert!(
                Instant::now() < deadline,
                "host {} not ready after 30 s",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The veth pair: `bl-e2e-<name>` here, `eth0` there; no route beyond the controller.
    fn connect_link(&self) {
        let inside = format!("{}-in", self.link);
        run_ok(Command::new("ip").args([
            "link",
            "add",
            &self.link,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
            "netns",
            &self.init.to_string(),
        ]));
        run_ok(Command::new("ip").args([
            "addr",
            "add",
            &format!("{}/24", self.gateway),
            "dev",
            &self.link,
        ]));
        run_ok(Command::new("ip").args(["link", "set", &self.link, "up"]));
        run_ok(self.command("sh").arg("-c").arg(format!(
            "ip link set {inside} name eth0 && ip addr add {}/24 dev eth0 && ip link set eth0 up",
            self.addr
        )));
    }

    /// `program` run inside the host: in all of its namespaces, with a clean environment.
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg("--target")
            .arg(self.init.to_string())
            .args([
                "--mount", "--uts", "--ipc", "--net", "--pid", "--root", "--wd", "env", "-i",
            ])
            .arg(format!("PATH={PATH}"))
            .args(["HOME=/root", "LC_ALL=C", program]);
        command
    }

    /// Runs a shell script inside the host; panics on failure; returns stdout, trimmed.
    pub fn sh(&self, script: &str) -> String {
        run_ok(
            self.command("bash")
                .args(["-euo", "pipefail", "-c", script]),
        )
    }

    /// Runs `tests/apps/<name> args…` inside the host (where e2e-host.sh mounts them);
    /// its stdout is `key=value` lines.
    pub fn script(&self, name: &str, args: &[&str]) -> BTreeMap<String, String> {
        let path = format!("{APPS_IN_HOST}/{name}");
        facts(&run_ok(self.command("bash").arg(path).args(args)))
    }

    fn run_script(&self, args: &[&str]) -> BTreeMap<String, String> {
        self.script("e2e-host.sh", args)
    }

    /// A path of the host's file system as the controller can read it. An absolute link met
    /// on the way resolves on the controller's file system, not the host's.
    pub fn path(&self, absolute: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{absolute}", self.init))
    }

    pub fn name(&self) -> &str {
        self.name
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The controller's address on the link to this host.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    /// `ssh://root@<addr>:22`.
    pub fn url(&self) -> String {
        format!("ssh://root@{}:22", self.addr)
    }

    /// `ssh-ed25519 AAAA…` of the host's current key.
    pub fn host_key(&self) -> &str {
        &self.host_key
    }

    /// Caps what the controller sends to this host (a token bucket on the controller's end
    /// of the link), or lifts the cap.
    pub fn limit_link(&self, bits_per_second: Option<u64>) {
        match bits_per_second {
            Some(rate) => run_ok(
                Command::new("tc")
                    .args(["qdisc", "replace", "dev", &self.link])
                    .args([
                        "root",
                        "tbf",
                        "rate",
                        &format!("{rate}bit"),
                        "burst",
                        "64kb",
                        "latency",
                        "400ms",
                    ]),
            ),
            None => run_ok(Command::new("tc").args(["qdisc", "del", "dev", &self.link, "root"])),
        };
    }

    /// Brings the controller's end of the link down, as a pulled cable would, or up again.
    pub fn set_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        run_ok(Command::new("ip").args(["link", "set", &self.link, state]));
    }

    /// Gives the host a new SSH host key (sshd restarts; open sessions stay).
    pub fn rotate_host_key(&mut self) {
        self.sh(
            "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && \
             ssh-keygen -q -t ed25519 -N '' -C rotated -f /etc/ssh/ssh_host_ed25519_key",
        );
        self.reload_sshd(None);
        self.host_key = self.sh("cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub");
    }

    /// Sets `NAME=VALUE` in every later SSH session of this host (or none): how the test
    /// hooks of docs/testing.md reach a baluchon that runs there.
    pub fn set_session_env(&self, env: Option<&str>) {
        self.reload_sshd(env);
    }

    /// Restarts the host's sshd (listening again when this returns); open sessions stay.
    fn reload_sshd(&self, env: Option<&str>) {
        let addr = self.addr.to_string();
        let mut args = vec!["sshd-restart", addr.as_str()];
        args.extend(env);
        self.run_script(&args);
    }

    /// GET `http://domain/path` from inside the host (its nginx on its own 127.0.0.1:80):
    /// status and body.
    pub fn http_get(&self, domain: &str, path: &str) -> (u16, Vec<u8>) {
        // The body on stdout, the status alone on stderr.
        let out = self
            .command("curl")
            .args(["-s", "--max-time", "30", "-w", "%{stderr}%{http_code}"])
            .arg("--resolve")
            .arg(format!("{domain}:80:127.0.0.1"))
            .arg(format!("http://{domain}{path}"))
            .output()
            .expect("curl runs");
        let status = String::from_utf8_lossy(&out.stderr);
        match (out.status.success(), status.trim().parse()) {
            (true, Ok(status)) => (status, out.stdout),
            _ => panic!(
                "curl http://{domain}{path} in host {}: {} {status}",
                self.name, out.status
            ),
        }
    }

    /// Everything of the host an import may change, one line per item: the files under the
    /// apps' and services' directories (type, mode, owner, link target or content digest),
    /// the accounts, and every database and role with a digest of each database's content.
    /// baluchon's own files are not the host's state: its work directory (/var/lib/baluchon:
    /// locks, staging, journals) and its resumable uploads (/root/.cache/baluchon).
    pub fn state(&self) -> BTreeSet<String> {
        let listing = self.sh(
            r#"dirs=(/etc/nginx /etc/wordpress /etc/php/8.2/fpm /etc/dokuwiki /etc/baluchon
                   /var/lib/wordpress /var/lib/dokuwiki /srv /var/www
                   /etc/passwd /etc/group /etc/shadow)
               existing=(); for d in "${dirs[@]}"; do [ -e "$d" ] && existing+=("$d"); done
               find "${existing[@]}" -printf '%p %y %m %u:%g %l\n'
               find "${existing[@]}" -type f -exec sha256sum {} +
               # Assignments, not loops over $(…): a query that fails must fail the listing.
               dbs=$(mariadb -N -B -e "SELECT schema_name FROM information_schema.schemata
                   WHERE schema_name NOT IN ('mysql', 'information_schema', 'performance_schema', 'sys')")
               for db in $dbs; do
                   sum=$(mariadb-dump --skip-dump-date --single-transaction -- "$db" | sha256sum)
                   echo "mariadb database $db $sum"
               done
               mariadb -N -B -e "SELECT CONCAT('mariadb user ', user, '@', host) FROM mysql.user"
               dbs=$(runuser -u postgres -- psql -At -c 'SELECT datname FROM pg_database WHERE datallowconn')
               for db in $dbs; do
                   # \restrict lines carry a new random key in every dump.
                   sum=$(runuser -u postgres -- pg_dump -- "$db" | { grep -v '^\\\(un\)\?restrict ' || true; } | sha256sum)
                   echo "postgresql database $db $sum"
               done
               runuser -u postgres -- psql -At -c "SELECT 'postgresql role ' || rolname FROM pg_roles""#,
        );
        listing.lines().map(str::to_owned).collect()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // EOF: the host stops its services by PID (stop.sh) and exits.
        drop(self.lifeline.take());
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.holder.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // Still there: unshare's death SIGKILLs the first process, and with it the host.
        let _ = self.holder.kill();
        let _ = self.holder.wait();
        // The link goes with the namespace, once its last process is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while link_exists(&self.link) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
    }
}

/// Hosts A (10.77.1.2) and B (10.77.2.2), a client key both let log in as root, and a
/// known_hosts file that knows both host keys.
#[derive(Debug)]
pub struct Hosts {
    pub a: Host,
    pub b: Host,
    pub dir: tempfile::TempDir,
    client_key: PathBuf,
    known_hosts: PathBuf,
    /// When this pair had the machine to itself and began to build.
    started: Instant,
    /// Last: released once both hosts are gone.
    _lock: fs_err::File,
}

impl Hosts {
    /// Builds both hosts, in parallel. Waits for any other pair on this machine to end.
    pub fn start() -> Self {
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK)
            .expect("open the e2e lock");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("e2e lock");
        let started = Instant::now();
        // Left by a run that was killed (its hosts ended with it): no pair is alive now.
        for entry in fs_err::read_dir(std::env::temp_dir())
            .expect("the temporary directory")
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let _ = fs_err::remove_dir_all(entry.path());
            }
        }
        let dir = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempdir()
            .expect("temporary directory");
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| Host::start("a", 1, dir.path()));
            let b = s.spawn(|| Host::start("b", 2, dir.path()));
            (a.join(), b.join())
        });
        let (a, b) = match (a, b) {
            (Ok(a), Ok(b)) => (a, b),
            (Err(panic), _) | (_, Err(panic)) => std::panic::resume_unwind(panic),
        };
        let client_key = dir.path().join("client_ed25519");
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", "controller", "-f"])
                .arg(&client_key),
        );
        let public = fs_err::read_to_string(dir.path().join("client_ed25519.pub"))
            .expect("client public key");
        for host in [&a, &b] {
            let authorized = host.path("/root/.ssh/authorized_keys");
            fs_err::write(&authorized, &public).expect("authorized_keys");
            fs_err::set_permissions(&authorized, std::fs::Permissions::from_mode(0o600))
                .expect("chmod authorized_keys");
        }
        let hosts = Self {
            known_hosts: dir.path().join("known_hosts"),
            a,
            b,
            client_key,
            dir,
            started,
            _lock: lock,
        };
        hosts.write_known_hosts(&hosts.known_hosts, &[]);
        hosts
    }

    /// Writes a known_hosts file with both hosts' current keys, and `extra` lines.
    pub fn write_known_hosts(&self, path: &Path, extra: &[String]) {
        let mut lines = vec![
            format!("{} {}", self.a.addr, self.a.host_key),
            format!("{} {}", self.b.addr, self.b.host_key),
        ];
        lines.extend_from_slice(extra);
        fs_err::write(path, lines.join("\n") + "\n").expect("write known_hosts");
    }

    pub fn known_hosts(&self) -> &Path {
        &self.known_hosts
    }

    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// When the pair began to build, once no other pair was left on the machine.
    pub fn started(&self) -> Instant {
        self.started
    }
}

/// A TCP relay on the controller, used as a host's address: it forwards every connection
/// to `to`, and can cut them all, flip one byte going to the host, or slow either direction.
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    shared: Arc<RelayState>,
    accept: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct RelayState {
    stop: AtomicBool,
    /// Bytes sent towards the host, over all connections.
    forwarded: AtomicU64,
    /// The byte at this offset (of `forwarded`) is flipped; `u64::MAX`: none.
    flip_at: AtomicU64,
    flipped: AtomicBool,
    /// Towards the host; 0: as fast as it goes.
    bytes_per_second: AtomicU64,
    /// From the host; 0: as fast as it goes.
    back_bytes_per_second: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
}

impl Relay {
    /// Listens on `listen`:(free port), forwarding to `to`.
    pub fn start(listen: Ipv4Addr, to: SocketAddr) -> Self {
        let listener = TcpListener::bind((listen, 0)).expect("bind the relay");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let addr = listener.local_addr().expect("relay address");
        let shared = Arc::new(RelayState {
            flip_at: AtomicU64::new(u64::MAX),
            ..RelayState::default()
        });
        let state = Arc::clone(&shared);
        let accept = std::thread::spawn(move || {
            while !state.stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).expect("blocking socket");
                        let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                        else {
                            continue;
                        };
                        let mut open = state.open.lock().expect("relay lock");
                        open.push(client.try_clone().expect("clone socket"));
                        open.push(server.try_clone().expect("clone socket"));
                        drop(open);
                        let up = Arc::clone(&state);
                        let (c, s) = (
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        let down = Arc::clone(&state);
                        std::thread::spawn(move || pump(c, s, &up, true));
                        std::thread::spawn(move || pump(server, client, &down, false));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                    Err(e) => panic!("relay accept: {e}"),
                }
            }
        });
        Self {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Flips the byte at offset `n` of what goes to the host from now on (counted over
    /// all connections), once.
    pub fn flip_after(&self, n: u64) {
        self.shared.flipped.store(false, Ordering::SeqCst);
        let at = self.shared.forwarded.load(Ordering::SeqCst) + n;
        self.shared.flip_at.store(at, Ordering::SeqCst);
    }

    /// Whether the flip asked for last has happened.
    pub fn flipped(&self) -> bool {
        self.shared.flipped.load(Ordering::SeqCst)
    }

    /// Caps what goes to the host (0: no cap).
    pub fn limit(&self, bytes_per_second: u64) {
        self.shared
            .bytes_per_second
            .store(bytes_per_second, Ordering::SeqCst);
    }

    /// Caps what comes from the host (0: no cap).
    pub fn limit_back(&self, bytes_per_second: u64) {
        self.shared
            .back_bytes_per_second
            .store(bytes_per_second, Ordering::SeqCst);
    }

    /// Cuts every open connection at once, as a dropped link would; new ones still pass.
    pub fn cut(&self) {
        for stream in self.shared.open.lock().expect("relay lock").drain(..) {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

/// Copies `from` to `to` until either end closes, at the pace set for its direction; towards
/// the host, also counts and flips.
fn pump(mut from: TcpStream, mut to: TcpStream, state: &RelayState, to_host: bool) {
    let mut buf = [0u8; 16 * 1024];
    let started = Instant::now();
    let mut sent = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to_host {
            let offset = state.forwarded.fetch_add(n as u64, Ordering::SeqCst);
            let at = state.flip_at.load(Ordering::SeqCst);
            if (offset..offset + n as u64).contains(&at)
                && !state.flipped.swap(true, Ordering::SeqCst)
            {
                let i = usize::try_from(at - offset).expect("offset in buffer");
                buf[i] ^= 0x01;
            }
        }
        sent += n as u64;
        let rate = if to_host {
            &state.bytes_per_second
        } else {
            &state.back_bytes_per_second
        }
        .load(Ordering::SeqCst);
        if rate > 0 {
            let due = Duration::from_secs_f64(sent as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let _ = from.shutdown(std::net::Shutdown::Read);
}

/// The PIDs whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in fs_err::read_dir("/proc").expect("read /proc") {
        let entry = entry.expect("/proc entry");
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// `key=value` lines into a map.
fn facts(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn run_ok(command: &mut Command) -> String {
    let out: Output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}
