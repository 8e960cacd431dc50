//! SSH connections to other hosts, for moving bundles and running baluchon there.
//!
//! * Host keys are checked strictly: against `known_hosts` (with `[host]:port` entries), or a
//!   pinned `SHA256:` fingerprint; an unknown key is refused unless the caller explicitly
//!   accepts new keys, and a changed key is always refused, with both fingerprints.
//! * Commands run over exec channels: stdout and stderr are both drained, and the exit status
//!   is read only after the channel is closed (before that, libssh2 reports 0).
//! * Uploads stream over `cat`, not SFTP (much slower in libssh2), into a `.part` file that a
//!   later run resumes after re-hashing what the remote side has.
//!
//! This is the only crate that depends on `ssh2`. It never prints and never exits.

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, HashType, KnownHostFileKind, Session};

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
    #[error("the upload to {target}:{path} arrived with sha256 {remote}, not {local}")]
    Corrupted {
        target: String,
        path: String,
        local: String,
        remote: String,
    },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// An authenticated SSH session with a host whose key was checked.
pub struct Connection {
    session: Session,
    target: SshTarget,
    timeout: Duration,
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

/// What `ssh-keygen -l` prints for a key: `SHA256:` and unpadded base64.
fn fingerprint(hash: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(hash)
    )
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
        session.handshake().map_err(ssh)?;
        check_host_key(&session, target, options)?;

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
        Ok(Self {
            session,
            target: target.clone(),
            timeout: options.timeout,
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
        let mut channel = self.session.channel_session().map_err(|e| self.ssh(e))?;
        channel.exec(command).map_err(|e| self.ssh(e))?;
        if let Some(input) = input {
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                channel.write_all(&buf[..n])?;
            }
        }
        channel.send_eof().map_err(|e| self.ssh(e))?;
        // Both streams to their end, in turn and without blocking on either: a remote
        // stderr left unread fills the window and stalls the command. No progress for the
        // whole timeout is a stall.
        let mut stderr = Vec::new();
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
                        progressed = true;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e.into()),
                }
                match channel.stderr().read(&mut buf) {
                    Ok(0) => {}
                    Ok(n) => {
                        stderr.extend_from_slice(&buf[..n]);
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
                    return Err(TransportError::Stalled {
                        target: self.target.to_string(),
                        command: command.to_owned(),
                        seconds: self.timeout.as_secs(),
                    });
                } else {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        })();
        self.session.set_blocking(true);
        drained?;
        channel.wait_close().map_err(|e| self.ssh(e))?;
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
            stderr: String::from_utf8_lossy(&stderr).trim().to_owned(),
        })
    }

    /// Runs `command` and returns its stdout as text.
    pub fn output(&self, command: &str) -> Result<String, TransportError> {
        let mut out = Vec::new();
        self.run(command, None, &mut out)?;
        Ok(String::from_utf8_lossy(&out).trim().to_owned())
    }

    /// Uploads `local` to `remote` through `remote.part`. A `.part` left by an interrupted
    /// upload is kept if its bytes hash like the start of `local`, and the upload goes on
    /// from there. The whole file is hashed on both sides before it takes its final name.
    pub fn upload(&self, local: &Path, remote: &str) -> Result<UploadReport, TransportError> {
        let part = format!("{remote}.part");
        let qpart = shell_quote(&part);
        let size = fs_err::metadata(local)?.len();
        let existing: u64 = self
            .output(&format!(
                "if [ -f {qpart} ]; then wc -c < {qpart}; else echo 0; fi"
            ))?
            .trim()
            .parse()
            .unwrap_or(0);
        let mut resumed_from = 0;
        if existing > 0 && existing <= size {
            let theirs = self.output(&format!("sha256sum < {qpart}"))?;
            let ours = sha256_prefix(local, existing)?;
            if theirs.split_whitespace().next() == Some(ours.as_str()) {
                resumed_from = existing;
            }
        }
        let mut file = fs_err::File::open(local)?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(resumed_from))?;
        let redirect = if resumed_from > 0 { ">>" } else { ">" };
        self.run(
            &format!("umask 077 && cat {redirect} {qpart}"),
            Some(&mut file),
            &mut io::sink(),
        )?;
        let ours = sha256_prefix(local, size)?;
        let theirs = self.output(&format!("sha256sum < {qpart}"))?;
        let theirs = theirs.split_whitespace().next().unwrap_or("").to_owned();
        if theirs != ours {
            // A wrong .part must not be resumed from.
            let _ = self.output(&format!("rm -f {qpart}"));
            return Err(TransportError::Corrupted {
                target: self.target.to_string(),
                path: remote.to_owned(),
                local: ours,
                remote: theirs,
            });
        }
        self.output(&format!("mv -f {qpart} {}", shell_quote(remote)))?;
        Ok(UploadReport {
            bytes: size,
            resumed_from,
            sha256: ours,
        })
    }
}

impl Connection {
    /// Downloads `remote` into a new file `local` (which must not exist), through a hidden
    /// temporary file beside it, and checks it against the remote side's sha256 before it
    /// takes its name. Returns the sha256.
    pub fn download(&self, remote: &str, local: &Path) -> Result<String, TransportError> {
        let quoted = shell_quote(remote);
        let theirs = self.output(&format!("sha256sum < {quoted}"))?;
        let theirs = theirs.split_whitespace().next().unwrap_or("").to_owned();
        let dir = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let mut partial = tempfile::Builder::new()
            .prefix(".baluchon-download.")
            .tempfile_in(&dir)?;
        self.run(&format!("cat {quoted}"), None, partial.as_file_mut())?;
        partial.as_file().sync_all()?;
        let ours = sha256_prefix(partial.path(), u64::MAX)?;
        if ours != theirs {
            return Err(TransportError::Corrupted {
                target: self.target.to_string(),
                path: remote.to_owned(),
                local: ours,
                remote: theirs,
            });
        }
        partial
            .persist_noclobber(local)
            .map_err(|e| TransportError::Io(e.error))?;
        Ok(ours)
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub bytes: u64,
    /// Bytes a previous, interrupted upload had already delivered.
    pub resumed_from: u64,
    pub sha256: String,
}

/// The sha256 (hex) of the first `len` bytes of a file.
pub fn sha256_prefix(path: &Path, len: u64) -> Result<String, TransportError> {
    let mut hasher = Sha256::new();
    let mut file = fs_err::File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn check_host_key(
    session: &Session,
    target: &SshTarget,
    options: &ConnectOptions,
) -> Result<(), TransportError> {
    let name = target.to_string();
    let ssh = |source| TransportError::Ssh {
        target: name.clone(),
        source,
    };
    let (key, key_type) = session.host_key().ok_or_else(|| TransportError::Connect {
        target: name.clone(),
        source: io::Error::other("the host presented no key"),
    })?;
    let presented = fingerprint(session.host_key_hash(HashType::Sha256).ok_or_else(|| {
        TransportError::Connect {
            target: name.clone(),
            source: io::Error::other("the host key cannot be hashed"),
        }
    })?);
    if !options.pinned.is_empty() {
        return if options.pinned.iter().any(|p| p == &presented) {
            Ok(())
        } else {
            Err(TransportError::NotPinned {
                target: name,
                presented,
                pinned: options.pinned.join(", "),
            })
        };
    }
    let mut known = session.known_hosts().map_err(ssh)?;
    if options.known_hosts.exists() {
        known
            .read_file(&options.known_hosts, KnownHostFileKind::OpenSSH)
            .map_err(ssh)?;
    }
    // How OpenSSH names the host in known_hosts.
    let entry = if target.port == 22 {
        target.host.clone()
    } else {
        format!("[{}]:{}", target.host, target.port)
    };
    // check_port, not check: the latter ignores `[host]:port` entries.
    match known.check_port(&target.host, target.port, key) {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound if options.accept_new_host_key => {
            known
                .add(
                    &entry,
                    key,
                    "added by baluchon --accept-new-host-key",
                    key_type.into(),
                )
                .map_err(ssh)?;
            known
                .write_file(&options.known_hosts, KnownHostFileKind::OpenSSH)
                .map_err(ssh)?;
            Ok(())
        }
        CheckResult::NotFound => Err(TransportError::UnknownHostKey {
            target: name,
            fingerprint: presented,
            known_hosts: options.known_hosts.clone(),
        }),
        CheckResult::Mismatch => {
            let old: Vec<String> = known
                .hosts()
                .map_err(ssh)?
                .iter()
                .filter(|h| h.name() == Some(entry.as_str()))
                .filter_map(|h| {
                    let blob = base64::engine::general_purpose::STANDARD
                        .decode(h.key())
                        .ok()?;
                    Some(fingerprint(&Sha256::digest(blob)))
                })
                .collect();
            Err(TransportError::ChangedHostKey {
                target: name,
                old: if old.is_empty() {
                    "another key".to_owned()
                } else {
                    old.join(", ")
                },
                new: presented,
                known_hosts: options.known_hosts.clone(),
            })
        }
        CheckResult::Failure => Err(TransportError::Connect {
            target: name,
            source: io::Error::other(format!(
                "cannot check the host key against {}",
                options.known_hosts.display()
            )),
        }),
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
}
