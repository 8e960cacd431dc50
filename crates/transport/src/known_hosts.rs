//! Strict host-key checking against an OpenSSH `known_hosts` file or pinned fingerprints.
//!
//! The file is read here, line by line, rather than by libssh2 alone: libssh2 knows neither
//! the `@revoked` nor the `@cert-authority` marker, and cannot say which key a hashed entry
//! recorded when the host presents another one.

use std::io::{self, Write as _};
use std::path::Path;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use ssh2::{CheckResult, KnownHostFileKind, Session};

use crate::{ConnectOptions, SshTarget, TransportError};

/// What `ssh-keygen -l` prints for a key: `SHA256:` and unpadded base64 of its sha256.
pub(crate) fn fingerprint(key_blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(key_blob))
    )
}

/// One useful line of a known_hosts file.
#[derive(Debug)]
struct Line<'a> {
    marker: Option<&'a str>,
    hosts: &'a str,
    key_type: &'a str,
    key: Vec<u8>,
    text: &'a str,
}

fn parse_line(text: &str) -> Option<Line<'_>> {
    let trimmed = text.trim();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    let mut fields = trimmed.split_whitespace();
    let first = fields.next()?;
    let (marker, hosts) = if first.starts_with('@') {
        (Some(first), fields.next()?)
    } else {
        (None, first)
    };
    let key_type = fields.next()?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(fields.next()?)
        .ok()?;
    Some(Line {
        marker,
        hosts,
        key_type,
        key,
        text: trimmed,
    })
}

/// Whether a known_hosts host field names `entry` (`host` or `[host]:port`): a
/// comma-separated list of patterns (`*` and `?` as wildcards, `!` to exclude, compared
/// without regard to case, as OpenSSH does), or one hashed name `|1|salt|hash` (HMAC-SHA1
/// of the name). libssh2 compares names exactly: the patterns are judged here.
fn names(hosts: &str, entry: &str) -> bool {
    if let Some(hashed) = hosts.strip_prefix("|1|") {
        let Some((salt, hash)) = hashed.split_once('|') else {
            return false;
        };
        let engine = base64::engine::general_purpose::STANDARD;
        let (Ok(salt), Ok(hash)) = (engine.decode(salt), engine.decode(hash)) else {
            return false;
        };
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
            return false;
        };
        mac.update(entry.as_bytes());
        return mac.verify_slice(&hash).is_ok();
    }
    let entry = entry.to_ascii_lowercase();
    let mut named = false;
    for pattern in hosts.split(',').map(str::to_ascii_lowercase) {
        match pattern.strip_prefix('!') {
            Some(excluded) if glob(excluded, &entry) => return false,
            Some(_) => {}
            None => named |= glob(&pattern, &entry),
        }
    }
    named
}

/// `*` matches any run of characters, `?` any one character.
fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) =
        (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // Where the last `*` was, and how much of the text it has taken.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == '?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_at, taken)) => {
                    p = star_at + 1;
                    t = taken + 1;
                    star = Some((star_at, taken + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

/// The key's type name, the first string of its SSH wire encoding.
fn key_type_name(blob: &[u8]) -> Option<&str> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    std::str::from_utf8(blob.get(4..4 + len)?).ok()
}

pub(crate) fn check_host_key(
    session: &Session,
    target: &SshTarget,
    options: &ConnectOptions,
) -> Result<(), TransportError> {
    let name = target.to_string();
    let ssh = |source| TransportError::Ssh {
        target: name.clone(),
        source,
    };
    let (key, _) = session.host_key().ok_or_else(|| TransportError::Connect {
        target: name.clone(),
        source: io::Error::other("the host presented no key"),
    })?;
    let presented = fingerprint(key);
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

    let text = match fs_err::read_to_string(&options.known_hosts) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e.into()),
    };
    let lines: Vec<Line<'_>> = text.lines().filter_map(parse_line).collect();
    // Stricter than OpenSSH, which revokes a key only for the hosts its line names: a key
    // someone revoked is not trusted for any host.
    if lines
        .iter()
        .any(|l| l.marker == Some("@revoked") && l.key == key)
    {
        return Err(TransportError::RevokedHostKey {
            target: name,
            fingerprint: presented,
            known_hosts: options.known_hosts.clone(),
        });
    }
    let mut known = session.known_hosts().map_err(ssh)?;
    for line in lines.iter().filter(|l| l.marker.is_none()) {
        // A line libssh2 cannot parse (a key type it does not know) cannot match either;
        // OpenSSH skips such lines too.
        let _ = known.read_str(line.text, KnownHostFileKind::OpenSSH);
    }
    // How OpenSSH names the host in known_hosts.
    let entry = if target.port == 22 {
        target.host.clone()
    } else {
        format!("[{}]:{}", target.host, target.port)
    };
    // Lines whose patterns name the host (libssh2 only matches exact names).
    let naming: Vec<&Line> = lines
        .iter()
        .filter(|l| l.marker.is_none() && names(l.hosts, &entry))
        .collect();
    // check_port, not check: the latter ignores `[host]:port` entries.
    let checked = match known.check_port(&target.host, target.port, key) {
        // libssh2 falls back to the plain `host` line for another port; OpenSSH, whose
        // file this is, does not: the key of port 22 says nothing of another port's.
        CheckResult::Match if target.port != 22 && !naming.iter().any(|l| l.key == key) => {
            CheckResult::NotFound
        }
        other => other,
    };
    match checked {
        CheckResult::Match => Ok(()),
        CheckResult::NotFound if naming.iter().any(|l| l.key == key) => Ok(()),
        // Known under a pattern, with another key: changed, even with trust on first use.
        CheckResult::NotFound if !naming.is_empty() => Err(TransportError::ChangedHostKey {
            target: name,
            old: naming
                .iter()
                .map(|l| format!("{} {}", l.key_type, fingerprint(&l.key)))
                .collect::<Vec<_>>()
                .join(", "),
            new: format!(
                "{} {presented}",
                key_type_name(key).unwrap_or("unknown-type")
            ),
            known_hosts: options.known_hosts.clone(),
        }),
        CheckResult::NotFound
            if lines
                .iter()
                .any(|l| l.marker == Some("@cert-authority") && names(l.hosts, &entry)) =>
        {
            Err(TransportError::CertificateOnly {
                target: name,
                fingerprint: presented,
                known_hosts: options.known_hosts.clone(),
            })
        }
        CheckResult::NotFound if options.accept_new_host_key => {
            record(&options.known_hosts, &entry, key)?;
            Ok(())
        }
        CheckResult::NotFound => Err(TransportError::UnknownHostKey {
            target: name,
            fingerprint: presented,
            known_hosts: options.known_hosts.clone(),
        }),
        CheckResult::Mismatch => {
            let old: Vec<String> = lines
                .iter()
                .filter(|l| l.marker.is_none() && names(l.hosts, &entry))
                .map(|l| format!("{} {}", l.key_type, fingerprint(&l.key)))
                .collect();
            Err(TransportError::ChangedHostKey {
                target: name,
                old: if old.is_empty() {
                    "another key (under a wildcard pattern)".to_owned()
                } else {
                    old.join(", ")
                },
                new: format!(
                    "{} {presented}",
                    key_type_name(key).unwrap_or("unknown-type")
                ),
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

/// Appends `entry`'s key to known_hosts, leaving every other line (comments, markers, keys
/// libssh2 cannot read) as it was.
fn record(known_hosts: &Path, entry: &str, key: &[u8]) -> Result<(), TransportError> {
    use fs_err::os::unix::fs::OpenOptionsExt as _;
    use std::os::unix::fs::DirBuilderExt as _;
    if let Some(dir) = known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Like ssh's own ~/.ssh: private.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    let key_type = key_type_name(key)
        .ok_or_else(|| io::Error::other("the host key has no type name"))?
        .to_owned();
    let mut file = fs_err::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(known_hosts)?;
    let existing = file.metadata()?.len();
    let mut line = String::new();
    if existing > 0 && !ends_with_newline(known_hosts)? {
        line.push('\n');
    }
    line.push_str(&format!(
        "{entry} {key_type} {}\n",
        base64::engine::general_purpose::STANDARD.encode(key)
    ));
    file.write_all(line.as_bytes())?;
    Ok(())
}

fn ends_with_newline(path: &Path) -> Result<bool, TransportError> {
    Ok(fs_err::read(path)?.last() == Some(&b'\n'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashed_and_plain_host_fields() {
        // `ssh-keygen -H` of "[127.0.0.1]:2222" with this salt.
        let salt = [7u8; 20];
        let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"[127.0.0.1]:2222");
        let engine = base64::engine::general_purpose::STANDARD;
        let hashed = format!(
            "|1|{}|{}",
            engine.encode(salt),
            engine.encode(mac.finalize().into_bytes())
        );
        assert!(names(&hashed, "[127.0.0.1]:2222"));
        assert!(!names(&hashed, "127.0.0.1"));
        assert!(names("a.example,[127.0.0.1]:2222", "[127.0.0.1]:2222"));
        assert!(!names("a.example", "b.example"));
        assert!(!names("|1|garbage", "a.example"));
    }

    #[test]
    fn patterns_name_hosts_as_openssh_does() {
        assert!(names("*.example.org", "db.example.org"));
        assert!(names("*.EXAMPLE.org", "Db.example.org"));
        assert!(!names("*.example.org", "example.org"));
        assert!(names("[127.0.0.?]:2222", "[127.0.0.1]:2222"));
        assert!(!names("[127.0.0.?]:2222", "[127.0.0.10]:2222"));
        assert!(names("a*b*c", "aXbYbZc"));
        assert!(names("*", "anything"));
        assert!(!names("*.example.org,!db.example.org", "db.example.org"));
        assert!(names("*.example.org,!db.example.org", "www.example.org"));
        assert!(!names("!db.example.org", "www.example.org"));
    }

    #[test]
    fn lines_with_and_without_markers() {
        let blob = [
            0, 0, 0, 11, b's', b's', b'h', b'-', b'e', b'd', b'2', b'5', b'5', b'1', b'9',
        ];
        let b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        let line = format!("@revoked * ssh-ed25519 {b64} comment");
        let parsed = parse_line(&line).unwrap();
        assert_eq!(parsed.marker, Some("@revoked"));
        assert_eq!(parsed.hosts, "*");
        assert_eq!(key_type_name(&parsed.key), Some("ssh-ed25519"));
        assert!(parse_line("# comment").is_none());
        assert!(parse_line("   ").is_none());
        assert!(parse_line("host ssh-ed25519 !!notbase64").is_none());
    }
}
