//! Trust files: OpenSSH `allowed_signers` (see ssh-keygen(1), ALLOWED SIGNERS) or bare keys.
//!
//! Supported options: `namespaces="…"`, `valid-after=…`, `valid-before=…`. `cert-authority`
//! is refused with a clear message rather than ignored: ignoring it would trust a CA key as
//! if it signed bundles itself.

use std::path::Path;

use jiff::Timestamp;
use ssh_key::{HashAlg, PublicKey};

use crate::{parse_signature, Error, VerifyError};

/// The keys whose bundle signatures are accepted.
#[derive(Debug, Clone)]
pub struct TrustedSigners {
    signers: Vec<AllowedSigner>,
    /// Keys refused whatever the trust file says (a client's key that leaked).
    revoked: Vec<PublicKey>,
}

#[derive(Debug, Clone)]
struct AllowedSigner {
    principals: Vec<String>,
    namespaces: Option<Vec<String>>,
    valid_after: Option<Timestamp>,
    valid_before: Option<Timestamp>,
    key: PublicKey,
}

/// Who signed, once a signature has been accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedSigner {
    /// `SHA256:…` fingerprint of the signing key.
    pub fingerprint: String,
    /// Principals of the trust-file lines that accepted the key (empty for bare keys).
    pub principals: Vec<String>,
}

impl VerifiedSigner {
    /// Whether the trust file lists the key for `identity`: one of its principal patterns
    /// matches it (`*` and `?` wildcards) and no negated one (`!pattern`) does, as
    /// `ssh-keygen -Y verify -I identity` decides.
    pub fn answers_to(&self, identity: &str) -> bool {
        let mut listed = false;
        for pattern in &self.principals {
            match pattern.strip_prefix('!') {
                Some(negated) if glob_match(negated, identity) => return false,
                Some(_) => {}
                None => listed |= glob_match(pattern, identity),
            }
        }
        listed
    }
}

impl TrustedSigners {
    pub fn from_file(path: &Path) -> Result<Self, Error> {
        let text = fs_err::read_to_string(path)?;
        Self::parse(&text, path)
    }

    /// Parses trust-file text; `origin` only names the file in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, Error> {
        let mut signers = Vec::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fail = |reason: String| Error::TrustFile {
                path: origin.to_owned(),
                line: index + 1,
                reason,
            };
            signers.push(parse_line(line).map_err(fail)?);
        }
        if signers.is_empty() {
            return Err(Error::EmptyTrustFile {
                path: origin.to_owned(),
            });
        }
        Ok(Self {
            signers,
            revoked: Vec::new(),
        })
    }

    /// Also refuses the public keys listed in `path`, one per line in `.pub` format (blank
    /// lines and `#` comments skipped), as `ssh-keygen -Y verify -r` takes a plain key list.
    /// OpenSSH's binary KRL format is not read: such a file is refused as unparsable.
    pub fn revoke_from_file(&mut self, path: &Path) -> Result<(), Error> {
        let text = fs_err::read_to_string(path)?;
        for (index, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let key = PublicKey::from_openssh(line).map_err(|e| Error::TrustFile {
                path: path.to_owned(),
                line: index + 1,
                reason: format!("invalid public key: {e}"),
            })?;
            self.revoked.push(key);
        }
        Ok(())
    }

    /// Checks an armored SSHSIG over `message` made under `namespace`, at time `now`.
    pub fn verify(
        &self,
        namespace: &str,
        message: &[u8],
        armored: &[u8],
        now: Timestamp,
    ) -> Result<VerifiedSigner, VerifyError> {
        let sig = parse_signature(armored)?;
        if sig.namespace() != namespace {
            return Err(VerifyError::WrongNamespace {
                found: sig.namespace().to_owned(),
                expected: namespace.to_owned(),
            });
        }
        let signer_key = PublicKey::from(sig.public_key().clone());
        let fingerprint = signer_key.fingerprint(HashAlg::Sha256).to_string();
        if self
            .revoked
            .iter()
            .any(|r| r.key_data() == sig.public_key())
        {
            return Err(VerifyError::Revoked { fingerprint });
        }
        let same_key: Vec<&AllowedSigner> = self
            .signers
            .iter()
            .filter(|s| s.key.key_data() == sig.public_key())
            .collect();
        if same_key.is_empty() {
            return Err(VerifyError::UnknownSigner { fingerprint });
        }
        let in_namespace: Vec<&AllowedSigner> = same_key
            .into_iter()
            .filter(|s| {
                s.namespaces
                    .as_ref()
                    .is_none_or(|list| list.iter().any(|n| glob_match(n, namespace)))
            })
            .collect();
        if in_namespace.is_empty() {
            return Err(VerifyError::NamespaceNotAllowed {
                fingerprint,
                namespace: namespace.to_owned(),
            });
        }
        let mut time_error = None;
        let mut valid = false;
        let mut principals = Vec::new();
        for signer in in_namespace {
            match signer.valid_at(now, &fingerprint) {
                Ok(()) => {
                    valid = true;
                    principals.extend(signer.principals.iter().cloned());
                }
                Err(e) => time_error = Some(e),
            }
        }
        if let (false, Some(e)) = (valid, time_error) {
            return Err(e);
        }
        signer_key
            .verify(namespace, message, &sig)
            .map_err(|source| VerifyError::BadSignature {
                fingerprint: fingerprint.clone(),
                source,
            })?;
        Ok(VerifiedSigner {
            fingerprint,
            principals,
        })
    }
}

impl AllowedSigner {
    fn valid_at(&self, now: Timestamp, fingerprint: &str) -> Result<(), VerifyError> {
        if let Some(from) = self.valid_after {
            if now < from {
                return Err(VerifyError::NotYetValid {
                    fingerprint: fingerprint.to_owned(),
                    from,
                    now,
                });
            }
        }
        if let Some(until) = self.valid_before {
            if now >= until {
                return Err(VerifyError::Expired {
                    fingerprint: fingerprint.to_owned(),
                    until,
                    now,
                });
            }
        }
        Ok(())
    }
}

fn is_key_type(word: &str) -> bool {
    word.starts_with("ssh-") || word.starts_with("ecdsa-") || word.starts_with("sk-")
}

fn parse_line(line: &str) -> Result<AllowedSigner, String> {
    let first = next_field(line);
    // A bare public key line (`ssh-ed25519 AAAA… comment`), as in a `.pub` file.
    if is_key_type(first.0) {
        let key = PublicKey::from_openssh(line).map_err(|e| format!("invalid public key: {e}"))?;
        return Ok(AllowedSigner {
            principals: Vec::new(),
            namespaces: None,
            valid_after: None,
            valid_before: None,
            key,
        });
    }
    let principals: Vec<String> = first.0.split(',').map(str::to_owned).collect();
    let rest = first.1.trim_start();
    let (maybe_options, after) = next_field(rest);
    let mut signer = AllowedSigner {
        principals,
        namespaces: None,
        valid_after: None,
        valid_before: None,
        key: PublicKey::from_openssh(if is_key_type(maybe_options) {
            rest
        } else {
            after.trim_start()
        })
        .map_err(|e| format!("invalid public key: {e}"))?,
    };
    if !is_key_type(maybe_options) {
        for option in split_options(maybe_options)? {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (n, Some(v.trim_matches('"'))),
                None => (option.as_str(), None),
            };
            match (name.to_ascii_lowercase().as_str(), value) {
                ("namespaces", Some(v)) => {
                    signer.namespaces = Some(v.split(',').map(str::to_owned).collect());
                }
                ("valid-after", Some(v)) => signer.valid_after = Some(parse_time(v)?),
                ("valid-before", Some(v)) => signer.valid_before = Some(parse_time(v)?),
                ("cert-authority", None) => {
                    return Err(
                        "cert-authority lines are not supported; list the signing key \
                                itself"
                            .to_owned(),
                    )
                }
                _ => return Err(format!("unsupported option {option:?}")),
            }
        }
    }
    Ok(signer)
}

/// Splits off the first whitespace-separated field, honouring double quotes.
fn next_field(s: &str) -> (&str, &str) {
    let mut quoted = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => return (&s[..i], &s[i..]),
            _ => {}
        }
    }
    (s, "")
}

fn split_options(s: &str) -> Result<Vec<String>, String> {
    let mut options = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in s.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => options.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    if quoted {
        return Err("unterminated quote in options".to_owned());
    }
    options.push(current);
    Ok(options)
}

/// `YYYYMMDD[HHMM[SS]][Z]`: with `Z` in UTC, otherwise in the system's time zone, as ssh-keygen.
fn parse_time(value: &str) -> Result<Timestamp, String> {
    let (digits, utc) = match value.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (value, false),
    };
    let bad = || format!("invalid time {value:?}: expected YYYYMMDD[HHMM[SS]][Z]");
    if !digits.bytes().all(|b| b.is_ascii_digit()) || ![8, 12, 14].contains(&digits.len()) {
        return Err(bad());
    }
    let num = |range: std::ops::Range<usize>| -> Result<i16, String> {
        digits
            .get(range)
            .map_or(Ok(0), |s| s.parse::<i16>().map_err(|_| bad()))
    };
    let date = jiff::civil::Date::new(num(0..4)?, num(4..6)? as i8, num(6..8)? as i8)
        .map_err(|_| bad())?;
    let time = jiff::civil::Time::new(num(8..10)? as i8, num(10..12)? as i8, num(12..14)? as i8, 0)
        .map_err(|_| bad())?;
    let civil = jiff::civil::DateTime::from_parts(date, time);
    let zone = if utc {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    civil
        .to_zoned(zone)
        .map(|z| z.timestamp())
        .map_err(|_| bad())
}

/// `*` and `?` wildcards, as in OpenSSH patterns.
fn glob_match(pattern: &str, text: &str) -> bool {
    fn inner(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => inner(&p[1..], t) || (!t.is_empty() && inner(p, &t[1..])),
            (Some(b'?'), Some(_)) => inner(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => inner(&p[1..], &t[1..]),
            _ => false,
        }
    }
    inner(pattern.as_bytes(), text.as_bytes())
}
