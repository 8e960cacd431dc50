//! SSH connections to other hosts, for moving bundles and running baluchon there.
//!
//! * Host keys are checked strictly: against `known_hosts` (with `[host]:port` entries), or a
//!   pinned `SHA256:` fingerprint; an unknown key is refused unless the caller explicitly
//!   accepts new keys, and a changed key is always refused, with both fingerprints.
//! * Commands run over exec channels: stdout and stderr are both drained, and the exit status
//!   is read only after the channel is closed (before that, libssh2 reports 0).
//! * Uploads stream over `cat`, not SFTP (much slower in libssh2), into a `.part` file that a
//!   later run resumes after re-hashing what the remote side has. The source may itself be a
//!   file on a third host, streamed through this machine without being stored here.
//! * Downloads stream over `tail -c +N` into a hidden file beside the destination, which a
//!   new connection takes up where a cut one stopped; both sides hash while the bytes move.
//! * Keepalives (SSH and TCP) keep quiet sessions up; no progress for the timeout is a stall.
//!
//! This is the only crate that depends on `ssh2`. It never prints and never exits.

mod known_hosts;
mod transfer;

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ssh2::Session;

pub use transfer::{sha256_prefix, Download, LocalFile, RemoteFile, UploadReport, UploadSource};

/// Where to connect: `ssh://user@host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: String,
    pub host: String,
    pub port: u16,
}

impl FromStr for SshTarget {
    type Err = TransportError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| TransportError::Url {
            url: text.to_owned(),
            reason: why.to_owned(),
        };
        let rest = text
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("it must start with ssh://"))?;
        let (user, host_port) = rest
            .split_once('@')
            .ok_or_else(|| bad("it must name a user: ssh://user@host"))?;
        let host_port = host_port.trim_end_matches('/');
        let (host, port) = match host_port.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().map_err(|_| bad("the port is not a number"))?),
            None => (host_port, 22),
        };
        let plain = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
        };
        if !plain(user) || !plain(host) {
            return Err(bad("user and host are letters, digits, '.', '-' and '_'"));
        }
        Ok(Self {
            user: user.to_owned(),
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for SshTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ssh://{}@{}:{}", self.user, self.host, self.port)
    }
}

/// How often a quiet session sends an SSH keepalive.
const KEEPALIVE_SECONDS: u32 = 15;

/// How to trust and authenticate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    pub known_hosts: PathBuf,
    /// Trust on first use: record an unknown host key instead of refusing it.
    pub accept_new_host_key: bool,
    /// `SHA256:…` fingerprints to accept instead of consulting `known_hosts`.
    pub pinned: Vec<String>,
    /// A private key file; the SSH agent is used when absent.
    pub identity: Option<PathBuf>,
    pub passphrase: Option<String>,
    /// Bound on every blocking SSH operation.
    pub timeout: Duration,
    /// Bytes per second that commands' input and output may average, each way (a
    /// migration sharing a small link with the sites it serves).
    pub limit_rate: Option<u64>,
}

impl ConnectOptions {
    pub fn new(known_hosts: PathBuf) -> Self {
        Self {
            known_hosts,
            accept_new_host_key: false,
            pinned: Vec::new(),
            identity: None,
            passphrase: None,
            timeout: Duration::from_secs(60),
            limit_rate: None,
        }
    }
}

/// Keeps a stream's average rate at or below a limit: told of each chunk moved, it sleeps
/// until the bytes moved so far are due. Chunks are small next to a second's worth (64 to
/// 256 KiB over SSH, one 8 MiB part to S3), so the rate is smooth at that scale.
#[derive(Debug)]
pub struct Pacer {
    bytes_per_second: u64,
    started: Option<std::time::Instant>,
    moved: u64,
}

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            started: None,
            moved: 0,
        }
    }

    /// `bytes` more were moved (the clock starts with the first chunk).
    pub fn pace(&mut self, bytes: u64) {
        let started = *self.started.get_or_insert_with(std::time::Instant::now);
        self.moved += bytes;
        let due = Duration::from_secs_f64(self.moved as f64 / self.bytes_per_second as f64);
        if let Some(early) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(early);
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("{url:?} is not an SSH address: {reason}")]
    Url { url: String, reason: String },
    #[error("cannot connect to {target}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("SSH with {target} failed")]
    Ssh {
        target: String,
        #[source]
        source: ssh2::Error,
    },
    #[error("{target} presented an unknown host key {fingerprint}; check it out of band, then add it to {known_hosts} (or pass it as a pinned fingerprint, or accept new keys explicitly)")]
    UnknownHostKey {
        target: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error("THE HOST KEY OF {target} HAS CHANGED: {known_hosts} records {old}, the host presented {new}. Someone may be intercepting the connection; if the host was reinstalled, remove the old entry and check the new key out of band")]
    ChangedHostKey {
        target: String,
        old: String,
        new: String,
        known_hosts: PathBuf,
    },
    #[error("{target} presented host key {fingerprint}, which {known_hosts} marks @revoked: do not connect; the host's administrator must replace that key")]
    RevokedHostKey {
        target: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error("{known_hosts} trusts {target} only through a @cert-authority line, and baluchon cannot check host certificates: add the host's own key {fingerprint} there after checking it out of band, or pin it with --host-key")]
    CertificateOnly {
        target: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error("{target} presented host key {presented}, which is not the pinned {pinned}")]
    NotPinned {
        target: String,
        presented: String,
        pinned: String,
    },
    #[error("on {target}, `{command}` sent nothing for {seconds} s: the connection stalled")]
    Stalled {
        target: String,
        command: String,
        seconds: u64,
    },
    #[error("{target} refused the key {key}")]
    Auth { target: String, key: String },
    #[error("on {target}, `{command}` failed ({status}): {stderr}")]
    Remote {
        target: String,
        command: String,
        status: String,
        /// The exit status, unless the command was killed by a signal.
        code: Option<i32>,
        stderr: String,
    },
    #[error("only {stored} of {size} bytes reached the disk of {target} in {path}: is it full?")]
    Short {
        target: String,
        path: String,
        stored: u64,
        size: u64,
    },
    #[error("the upload to {target}:{path} arrived with sha256 {remote}, not {local}")]
    Corrupted {
        target: String,
        path: String,
        local: String,
        remote: String,
    },
    #[error(
        "the copy of {source_host}:{path} fetched here has sha256 {local}, not {remote} as there"
    )]
    DownloadCorrupted {
        source_host: String,
        path: String,
        local: String,
        remote: String,
    },
    #[error("cannot write the download of {path} here, into {local}: {source}")]
    DownloadWrite {
        path: String,
        local: PathBuf,
        source: io::Error,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// An authenticated SSH session with a host whose key was checked.
pub struct Connection {
    session: Session,
    target: SshTarget,
    timeout: Duration,
    limit_rate: Option<u64>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A file's bytes quoted for a POSIX shell (the remote side runs commands through one).
pub fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

impl Connection {
    pub fn open(target: &SshTarget, options: &ConnectOptions) -> Result<Self, TransportError> {
        let name = target.to_string();
        let ssh = |source| TransportError::Ssh {
            target: name.clone(),
            source,
        };
        let address = (target.host.as_str(), target.port)
            .to_socket_addrs()
            .map_err(|source| TransportError::Connect {
                target: name.clone(),
                source,
            })?
            .next()
            .ok_or_else(|| TransportError::Connect {
                target: name.clone(),
                source: io::Error::other("the host name has no address"),
            })?;
        let tcp = TcpStream::connect_timeout(&address, options.timeout).map_err(|source| {
            TransportError::Connect {
                target: name.clone(),
                source,
            }
        })?;
        // A peer that vanished without a word (a host powered off, a NAT entry dropped) is
        // noticed by the kernel instead of leaving a read waiting forever.
        rustix::net::sockopt::set_socket_keepalive(&tcp, true).map_err(|e| {
            TransportError::Connect {
                target: name.clone(),
                source: e.into(),
            }
        })?;
        let mut session = Session::new().map_err(ssh)?;
        session.set_timeout(u32::try_from(options.timeout.as_millis()).unwrap_or(u32::MAX));
        session.set_tcp_stream(tcp);
        // Ask for the key types known_hosts usually records, strongest first: libssh2
        // reports a host key of another type than the recorded one as a mismatch.
        session
            .method_pref(
                ssh2::MethodType::HostKey,
                "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,rsa-sha2-256",
            )
            .map_err(ssh)?;
        // chacha20-poly1305 first, as OpenSSH does: through libssh2, downloads of 1 GiB over
        // loopback took 4.7–4.9 s with it and 5.5–5.7 s with AES-128-GCM, uploads the same
        // (bench/ssh.sh, docs/benchmarks.md).
        for direction in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
            session
                .method_pref(
                    direction,
                    "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes256-ctr",
                )
                .map_err(ssh)?;
        }
        session.handshake().map_err(ssh)?;
        known_hosts::check_host_key(&session, target, options)?;

        match &options.identity {
            Some(key) => {
                let _ = session.userauth_pubkey_file(
                    &target.user,
                    None,
                    key,
                    options.passphrase.as_deref(),
                );
            }
            None => {
                let _ = session.userauth_agent(&target.user);
            }
        }
        // The failure itself says little ("authentication failed"); what matters is which
        // key was refused.
        if !session.authenticated() {
            return Err(TransportError::Auth {
                target: name,
                key: options.identity.as_ref().map_or_else(
                    || "from the SSH agent".to_owned(),
                    |k| k.display().to_string(),
                ),
            });
        }
        // Only now: configured before the handshake, it makes libssh2's key exchange fail.
        session.set_keepalive(false, KEEPALIVE_SECONDS);
        Ok(Self {
            session,
            target: target.clone(),
            timeout: options.timeout,
            limit_rate: options.limit_rate,
        })
    }

    pub fn target(&self) -> &SshTarget {
        &self.target
    }

    fn ssh(&self, source: ssh2::Error) -> TransportError {
        TransportError::Ssh {
            target: self.target.to_string(),
            source,
        }
    }

    /// Runs `command` through the remote shell, feeding it `input` then end-of-file, and
    /// copying its stdout to `output`. A non-zero exit (or death by a signal) is an error
    /// carrying the command's stderr.
    pub fn run(
        &self,
        command: &str,
        input: Option<&mut dyn Read>,
        output: &mut dyn Write,
    ) -> Result<(), TransportError> {
        self.run_reporting(command, input, output, &mut |_| false)
    }

    /// [`Connection::run`], handing each line of the command's stderr to `event` as it
    /// arrives; lines `event` takes (returns true for) are left out of the error's stderr.
    pub fn run_reporting(
        &self,
        command: &str,
        input: Option<&mut dyn Read>,
        output: &mut dyn Write,
        event: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), TransportError> {
        let mut channel = self.session.channel_session().map_err(|e| self.ssh(e))?;
        channel.exec(command).map_err(|e| self.ssh(e))?;
        let pacer = || self.limit_rate.map(Pacer::new);
        if let Some(input) = input {
            let mut buf = vec![0u8; 256 * 1024];
            let mut pacer = pacer();
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                channel
                    .write_all(&buf[..n])
                    .map_err(|e| self.stalled_or(e, command))?;
                if let Some(pacer) = &mut pacer {
                    pacer.pace(n as u64);
                }
            }
        }
        let mut pacer = pacer();
        channel.send_eof().map_err(|e| self.ssh(e))?;
        // Both streams to their end, in turn and without blocking on either: a remote
        // stderr left unread fills the window and stalls the command. No progress for the
        // whole timeout is a stall.
        let mut stderr = Vec::new();
        let mut line = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        self.session.set_blocking(false);
        let drained = (|| -> Result<(), TransportError> {
            let mut last_progress = std::time::Instant::now();
            loop {
                let mut progressed = false;
                match channel.read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        output.write_all(&buf[..n])?;
                        if let Some(pacer) = &mut pacer {
                            pacer.pace(n as u64);
                        }
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                match channel.stderr().read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        for &byte in &buf[..n] {
                            line.push(byte);
                            if byte == b'\n' {
                                let text = String::from_utf8_lossy(&line);
                                if !event(text.trim_end()) {
                                    stderr.extend_from_slice(&line);
                                }
                                line.clear();
                            }
                        }
                        if stderr.len() > 64 * 1024 {
                            stderr.drain(..stderr.len() - 64 * 1024);
                        }
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                if progressed {
                    last_progress = std::time::Instant::now();
                } else if channel.eof() {
                    return Ok(());
                } else if last_progress.elapsed() > self.timeout {
                    return Err(self.stalled(command));
                } else {
                    // A quiet command (a long restore) must not look like a dead link to
                    // the server or to a firewall in between.
                    let _ = self.session.keepalive_send();
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })();
        self.session.set_blocking(true);
        drained?;
        stderr.extend_from_slice(&line);
        channel.wait_close().map_err(|e| self.ssh(e))?;
        self.exit_result(&channel, command, &stderr)
    }

    fn stalled(&self, command: &str) -> TransportError {
        TransportError::Stalled {
            target: self.target.to_string(),
            command: command.to_owned(),
            seconds: self.timeout.as_secs(),
        }
    }

    /// A blocking write that timed out is a stall; anything else is what it is.
    fn stalled_or(&self, error: io::Error, command: &str) -> TransportError {
        if error.kind() == io::ErrorKind::TimedOut {
            self.stalled(command)
        } else {
            error.into()
        }
    }

    fn exit_result(
        &self,
        channel: &ssh2::Channel,
        command: &str,
        stderr: &[u8],
    ) -> Result<(), TransportError> {
        let status = channel.exit_status().map_err(|e| self.ssh(e))?;
        let signal = channel.exit_signal().map_err(|e| self.ssh(e))?;
        if status == 0 && signal.exit_signal.is_none() {
            return Ok(());
        }
        Err(TransportError::Remote {
            target: self.target.to_string(),
            command: command.to_owned(),
            status: match &signal.exit_signal {
                Some(sig) => format!("killed by SIG{sig}"),
                None => format!("exit status {status}"),
            },
            code: signal.exit_signal.is_none().then_some(status),
            stderr: String::from_utf8_lossy(stderr).trim().to_owned(),
        })
    }

    /// Runs `command` and returns its stdout as text.
    pub fn output(&self, command: &str) -> Result<String, TransportError> {
        let mut out = Vec::new();
        self.run(command, None, &mut out)?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// Runs `command` (one that writes little to stderr, such as `cat`) and streams its
    /// stdout; the end of the stream is an error if the command failed.
    pub fn reader(&self, command: &str) -> Result<RemoteReader<'_>, TransportError> {
        let mut channel = self.session.channel_session().map_err(|e| self.ssh(e))?;
        channel.exec(command).map_err(|e| self.ssh(e))?;
        channel.send_eof().map_err(|e| self.ssh(e))?;
        Ok(RemoteReader {
            conn: self,
            channel,
            command: command.to_owned(),
            done: false,
        })
    }
}

/// The stdout of a command on another host; see [`Connection::reader`].
pub struct RemoteReader<'a> {
    conn: &'a Connection,
    channel: ssh2::Channel,
    command: String,
    done: bool,
}

impl std::fmt::Debug for RemoteReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteReader")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

impl Read for RemoteReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self
            .channel
            .read(buf)
            .map_err(|e| io::Error::other(self.conn.stalled_or(e, &self.command)))?;
        if n > 0 {
            return Ok(n);
        }
        self.done = true;
        let mut stderr = Vec::new();
        let _ = self.channel.stderr().read_to_end(&mut stderr);
        self.channel
            .wait_close()
            .map_err(|e| io::Error::other(self.conn.ssh(e)))?;
        self.conn
            .exit_result(&self.channel, &self.command, &stderr)
            .map_err(io::Error::other)?;
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t: SshTarget = "ssh://root@127.0.0.1:2222".parse().unwrap();
        assert_eq!(
            (t.user.as_str(), t.host.as_str(), t.port),
            ("root", "127.0.0.1", 2222)
        );
        let t: SshTarget = "ssh://deploy@host.example".parse().unwrap();
        assert_eq!(t.port, 22);
        for bad in [
            "host",
            "ssh://host",
            "ssh://u@h:x",
            "ssh://u;rm@h",
            "ssh://u@h o",
        ] {
            assert!(bad.parse::<SshTarget>().is_err(), "{bad}");
        }
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn a_pacer_holds_a_stream_to_its_rate() {
        // 1 MiB at 4 MiB/s in 64 KiB chunks: a quarter of a second at least. Only the lower
        // bound is checked, since the machine may be slow; the limit is the point.
        let mut pacer = Pacer::new(4 << 20);
        let started = std::time::Instant::now();
        for _ in 0..16 {
            pacer.pace(64 << 10);
        }
        assert!(started.elapsed() >= Duration::from_millis(250) - Duration::from_millis(16));
    }
}
