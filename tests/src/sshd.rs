//! A real OpenSSH `sshd` on 127.0.0.1, for the SSH transport's end-to-end tests: its own
//! host key, client keys, config and log in a private temporary directory, on a free port
//! (never 22, never the machine's own sshd or its config). Needs root and
//! `openssh-server`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

/// Absolute: sshd re-executes itself for each connection and refuses a relative path.
const SSHD: &str = "/usr/sbin/sshd";

/// How long [`Sshd::start`] and the restarts wait for the port to answer.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `sshd -D -e` that logs root in with [`Sshd::client_key`]. Dropping it kills
/// the listener and every session, then removes the directory.
#[derive(Debug)]
pub struct Sshd {
    dir: tempfile::TempDir,
    port: u16,
    /// `None` only between a kill and the restart.
    child: Option<Child>,
    config: PathBuf,
    host_key: PathBuf,
    client_key: PathBuf,
    other_client_key: PathBuf,
    /// sshd's stderr, appended to by every (re)start; quoted when it fails.
    log: PathBuf,
}

impl Sshd {
    /// Generates the keys, writes the config and starts sshd; panics with its stderr if
    /// the port does not answer an SSH banner within 10 s.
    pub fn start() -> Self {
        // The privilege-separation chroot; sshd exits without it ("Missing privilege
        // separation directory"), and without systemd nothing creates it.
        fs_err::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
        fs_err::set_permissions("/run/sshd", std::fs::Permissions::from_mode(0o755))
            .expect("chmod /run/sshd");

        let dir = tempfile::Builder::new()
            .prefix("baluchon-sshd-")
            .tempdir()
            .expect("temporary directory");
        fs_err::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))
            .expect("chmod the sshd directory");
        let host_key = dir.path().join("ssh_host_ed25519_key");
        let client_key = dir.path().join("client_ed25519");
        let other_client_key = dir.path().join("other_client_ed25519");
        for key in [&host_key, &client_key, &other_client_key] {
            keygen(key);
        }
        let authorized_keys = dir.path().join("authorized_keys");
        fs_err::copy(pub_path(&client_key), &authorized_keys).expect("write authorized_keys");
        fs_err::set_permissions(&authorized_keys, std::fs::Permissions::from_mode(0o600))
            .expect("chmod authorized_keys");

        let mut sshd = Self {
            config: dir.path().join("sshd_config"),
            log: dir.path().join("sshd.log"),
            dir,
            port: 0,
            child: None,
            host_key,
            client_key,
            other_client_key,
        };
        // The free port is only free until sshd binds it: another process may take it in
        // between, so a bind failure picks another one.
        for attempt in 1.. {
            sshd.port = free_port();
            sshd.write_config();
            match sshd.spawn() {
                Ok(()) => break,
                Err(why) if attempt < 5 && why.contains("bind") => continue,
                Err(why) => panic!("{why}"),
            }
        }
        sshd
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ssh://root@127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ssh://root@127.0.0.1:{}", self.port)
    }

    /// The current host public key, `ssh-ed25519 AAAA…` (without the comment).
    pub fn host_key_pub(&self) -> String {
        let line = fs_err::read_to_string(pub_path(&self.host_key)).expect("read host key");
        let fields: Vec<&str> = line.split_whitespace().take(2).collect();
        assert_eq!(fields.len(), 2, "malformed host public key: {line}");
        fields.join(" ")
    }

    /// The current host key's fingerprint, `SHA256:…`, as `ssh-keygen -lf` prints it.
    pub fn host_key_fingerprint(&self) -> String {
        let out = run_ok(
            Command::new("ssh-keygen")
                .arg("-lf")
                .arg(pub_path(&self.host_key)),
        );
        // "256 SHA256:… comment (ED25519)"
        out.split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("unexpected ssh-keygen -l output: {out}"))
            .to_owned()
    }

    /// An ed25519 private key without passphrase, authorized for root.
    pub fn client_key(&self) -> &Path {
        &self.client_key
    }

    /// An ed25519 private key without passphrase that sshd does not accept.
    pub fn other_client_key(&self) -> &Path {
        &self.other_client_key
    }

    /// `[127.0.0.1]:<port> ssh-ed25519 AAAA…`: the known_hosts form for a non-22 port.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}", self.port, self.host_key_pub())
    }

    /// Writes a known_hosts file holding only [`Sshd::known_hosts_line`].
    pub fn write_known_hosts(&self, path: &Path) {
        fs_err::write(path, format!("{}\n", self.known_hosts_line())).expect("write known_hosts");
    }

    /// Replaces the host key and restarts sshd on the same port; open sessions are killed
    /// too (they would otherwise outlive the listener unnoticed).
    pub fn rotate_host_key(&mut self) {
        self.kill_all();
        // ssh-keygen asks before overwriting; remove both halves first.
        fs_err::remove_file(&self.host_key).expect("remove old host key");
        fs_err::remove_file(pub_path(&self.host_key)).expect("remove old host public key");
        keygen(&self.host_key);
        self.spawn().unwrap_or_else(|why| panic!("{why}"));
    }

    /// Kills the listener and every session at once (SIGKILL, as a crash or a dropped
    /// link would), then starts sshd again on the same port with the same keys.
    pub fn kill_sessions_and_restart(&mut self) {
        self.kill_all();
        self.spawn().unwrap_or_else(|why| panic!("{why}"));
    }

    /// Kills (SIGKILL) every per-connection process under the listener, which keeps
    /// accepting; returns once they are dead.
    pub fn kill_sessions(&self) {
        let listener = self.child.as_ref().expect("sshd is running").id();
        kill_tree(listener, false);
    }

    fn write_config(&self) {
        let dir = self.dir.path().display();
        // StrictModes no: authorized_keys lives under /tmp, which is world-writable, and
        // sshd would refuse it. Only the key generated here is a host key: the machine's
        // own /etc/ssh keys and config are never read.
        let config = format!(
            "ListenAddress 127.0.0.1\n\
             Port {port}\n\
             HostKey {host_key}\n\
             PidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             Subsystem sftp internal-sftp\n\
             LogLevel ERROR\n\
             MaxStartups 100\n\
             MaxSessions 100\n",
            port = self.port,
            host_key = self.host_key.display(),
        );
        fs_err::write(&self.config, config).expect("write sshd_config");
        fs_err::set_permissions(&self.config, std::fs::Permissions::from_mode(0o600))
            .expect("chmod sshd_config");
    }

    /// Starts the listener and waits for its banner; on failure, kills it and says why.
    fn spawn(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "sshd is already running");
        let log = fs_err::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open sshd.log");
        let mut child = Command::new(SSHD)
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log.into_parts().0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {SSHD} (is openssh-server installed?): {e}"));
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        loop {
            if let Some(status) = child.try_wait().expect("poll sshd") {
                return Err(format!(
                    "sshd on port {} exited ({status}):\n{}",
                    self.port,
                    self.log_text()
                ));
            }
            // The banner, not just the connect: another process may hold the port.
            if ssh_banner(addr) {
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > READY_TIMEOUT {
                kill_tree(child.id(), true);
                let _ = child.wait();
                return Err(format!(
                    "sshd on port {} did not answer within {READY_TIMEOUT:?}:\n{}",
                    self.port,
                    self.log_text()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the listener and its sessions, and reaps the listener.
    fn kill_all(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id(), true);
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        fs_err::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill_all();
    }
}

fn pub_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

/// `ssh-keygen -q -t ed25519 -N '' -f <path>`: `path` (0600) and `path.pub`.
fn keygen(path: &Path) {
    run_ok(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "baluchon-test", "-f"])
            .arg(path),
    );
}

fn run_ok(command: &mut Command) -> String {
    let out = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether `addr` accepts a connection and greets with `SSH-2.0-`.
fn ssh_banner(addr: SocketAddr) -> bool {
    let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("set read timeout");
    let mut banner = Vec::new();
    let _ = std::io::BufReader::new((&stream).take(256)).read_until(b'\n', &mut banner);
    // Answering with an identification before closing: sshd logs a probe that hangs up
    // during the banner exchange as an error, noise in the log quoted on failures.
    let _ = (&stream).write_all(b"SSH-2.0-baluchon-probe\r\n");
    banner.starts_with(b"SSH-2.0-") && banner.ends_with(b"\n")
}

/// Parent and state of every process, from `/proc/<pid>/stat`.
fn processes() -> BTreeMap<u32, (u32, char)> {
    let mut table = BTreeMap::new();
    for entry in fs_err::read_dir("/proc").expect("read /proc") {
        let entry = entry.expect("/proc entry");
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // Gone since the listing: fine.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // "pid (comm) state ppid …"; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        let ppid = fields.next().and_then(|p| p.parse().ok());
        if let (Some(state), Some(ppid)) = (state, ppid) {
            table.insert(pid, (ppid, state));
        }
    }
    table
}

fn descendants(root: u32, table: &BTreeMap<u32, (u32, char)>) -> BTreeSet<u32> {
    let mut found = BTreeSet::new();
    let mut todo = vec![root];
    while let Some(parent) = todo.pop() {
        for (&pid, &(ppid, _)) in table {
            if ppid == parent && found.insert(pid) {
                todo.push(pid);
            }
        }
    }
    found
}

fn signal(pid: u32, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(pid).expect("pid fits i32")).expect("pid is not 0");
    // ESRCH: it died meanwhile, which is what we want anyway.
    let _ = kill_process(pid, sig);
}

/// SIGKILLs every descendant of `root` (and `root` itself if `include_root`).
///
/// Each connection's processes call setsid(), so no process group covers them: the tree
/// is walked instead. Stopping it first freezes it, so no process forks a child the walk
/// would miss (a `sleep` left behind, orphaned, after its session died); a killed parent
/// would orphan its children to init, out of the walk's reach.
fn kill_tree(root: u32, include_root: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut frozen = BTreeSet::new();
    if include_root {
        signal(root, Signal::STOP);
        frozen.insert(root);
    }
    loop {
        let table = processes();
        let tree = descendants(root, &table);
        let new: Vec<u32> = tree.difference(&frozen).copied().collect();
        for &pid in &new {
            signal(pid, Signal::STOP);
        }
        frozen.extend(new.iter().copied());
        // Stopped ('T'), or already dead ('Z', 'X', or gone): nothing can fork any more.
        let settled = frozen.iter().all(|pid| {
            table
                .get(pid)
                .is_none_or(|&(_, state)| matches!(state, 'T' | 't' | 'Z' | 'X'))
        });
        if (new.is_empty() && settled) || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for &pid in &frozen {
        signal(pid, Signal::KILL);
    }
    // Dead means reaped, or a zombie whose parent has not reaped it yet.
    while Instant::now() < deadline {
        let table = processes();
        let alive = frozen.iter().any(|pid| {
            table
                .get(pid)
                .is_some_and(|&(_, state)| !matches!(state, 'Z' | 'X'))
        });
        if !alive {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the system `ssh` client against `sshd` with only the given key and known_hosts.
    fn ssh(sshd: &Sshd, key: &Path, known_hosts: &Path) -> Command {
        let mut command = Command::new("ssh");
        command
            // -F none: no ~/.ssh/config, and ssh does not create ~/.ssh.
            .args(["-F", "none", "-p", &sshd.port().to_string(), "-i"])
            .arg(key)
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args([
                "-o",
                "GlobalKnownHostsFile=/dev/null",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "IdentityAgent=none",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=10",
                "root@127.0.0.1",
            ])
            .stdin(Stdio::null());
        command
    }

    fn echo_ok(sshd: &Sshd, key: &Path, known_hosts: &Path) -> std::process::Output {
        ssh(sshd, key, known_hosts)
            .args(["echo", "ok"])
            .output()
            .expect("ssh runs")
    }

    fn text(bytes: &[u8]) -> String {
        String::from_utf8_lossy(bytes).into_owned()
    }

    /// Starts `sleep 30` over ssh and returns once the remote side runs it.
    fn long_session(sshd: &Sshd, known_hosts: &Path) -> Child {
        let mut client = ssh(sshd, sshd.client_key(), known_hosts)
            .arg("echo started; sleep 30")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh runs");
        let mut started = [0u8; 8];
        client
            .stdout
            .as_mut()
            .expect("piped stdout")
            .read_exact(&mut started)
            .expect("the session starts");
        assert_eq!(&started, b"started\n");
        client
    }

    /// Waits for a client whose session was killed: it must fail, and quickly.
    fn wait_cut(mut client: Child) {
        let cut = Instant::now();
        let status = loop {
            if let Some(status) = client.try_wait().expect("poll ssh") {
                break status;
            }
            if cut.elapsed() > Duration::from_secs(5) {
                let _ = client.kill();
                panic!("ssh still runs 5 s after its session was killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert!(!status.success(), "a killed session ends in an error");
    }

    /// The harness against the system OpenSSH client: key authentication, host key
    /// checking, rotation, and sessions killed with or without the listener.
    #[test]
    fn system_ssh_client_against_the_harness() {
        let started = Instant::now();
        let mut sshd = Sshd::start();
        let startup = started.elapsed();
        assert!(startup < READY_TIMEOUT, "start took {startup:?}");
        let scratch = tempfile::tempdir().expect("temporary directory");
        let known_hosts = scratch.path().join("known_hosts");
        sshd.write_known_hosts(&known_hosts);
        assert_eq!(sshd.url(), format!("ssh://root@127.0.0.1:{}", sshd.port()));
        assert!(sshd.host_key_pub().starts_with("ssh-ed25519 AAAA"));
        assert!(sshd.host_key_fingerprint().starts_with("SHA256:"));
        // ssh-keygen reads the known_hosts line back to the same fingerprint.
        let listed = run_ok(Command::new("ssh-keygen").arg("-lf").arg(&known_hosts));
        assert!(listed.contains(&sshd.host_key_fingerprint()), "{listed}");

        let out = echo_ok(&sshd, sshd.client_key(), &known_hosts);
        assert!(out.status.success(), "ssh failed: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "ok\n");

        let out = echo_ok(&sshd, sshd.other_client_key(), &known_hosts);
        assert!(!out.status.success(), "an unauthorized key got in");
        assert!(
            text(&out.stderr).contains("Permission denied"),
            "{}",
            text(&out.stderr)
        );

        // Sessions killed, listener up: new connections still work.
        let client = long_session(&sshd, &known_hosts);
        sshd.kill_sessions();
        wait_cut(client);
        let out = echo_ok(&sshd, sshd.client_key(), &known_hosts);
        assert!(
            out.status.success(),
            "after kill_sessions: {}",
            text(&out.stderr)
        );

        // Everything killed and restarted: same port, same host key.
        let port = sshd.port();
        let client = long_session(&sshd, &known_hosts);
        sshd.kill_sessions_and_restart();
        wait_cut(client);
        assert_eq!(sshd.port(), port);
        let out = echo_ok(&sshd, sshd.client_key(), &known_hosts);
        assert!(
            out.status.success(),
            "after the restart: {}",
            text(&out.stderr)
        );

        // A new host key: the old known_hosts is refused, a rewritten one accepted.
        let old_fingerprint = sshd.host_key_fingerprint();
        sshd.rotate_host_key();
        assert_ne!(sshd.host_key_fingerprint(), old_fingerprint);
        assert_eq!(sshd.port(), port);
        let out = echo_ok(&sshd, sshd.client_key(), &known_hosts);
        assert!(!out.status.success(), "a changed host key was accepted");
        assert!(
            text(&out.stderr).contains("Host key verification failed"),
            "{}",
            text(&out.stderr)
        );
        sshd.write_known_hosts(&known_hosts);
        let out = echo_ok(&sshd, sshd.client_key(), &known_hosts);
        assert!(
            out.status.success(),
            "with the new key: {}",
            text(&out.stderr)
        );

        // Dropped: nothing listens, and the directory is gone.
        let listener = sshd.child.as_ref().expect("running").id();
        let dir = sshd.dir.path().to_owned();
        drop(sshd);
        assert!(!ssh_banner(SocketAddr::from(([127, 0, 0, 1], port))));
        assert!(!Path::new(&format!("/proc/{listener}")).exists());
        assert!(!dir.exists());
    }
}
