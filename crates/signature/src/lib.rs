//! SSH signatures over a bundle's tag manifest, and the trust files that say whose count.
//!
//! Signatures are SSHSIG blobs (OpenSSH `PROTOCOL.sshsig`), the format `ssh-keygen -Y sign`
//! writes, so a client can check a bundle with `ssh-keygen -Y verify` and no baluchon.
//! A trust file is either an OpenSSH `allowed_signers` file or a plain list of public keys.
//!
//! This crate is the only one that depends on `ssh-key`.

mod trust;

use std::path::{Path, PathBuf};

use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, SshSig};

pub use trust::{TrustedSigners, VerifiedSigner};

/// Errors while loading keys or trust files, or while signing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("cannot parse the private key {path}")]
    PrivateKey {
        path: PathBuf,
        #[source]
        source: ssh_key::Error,
    },
    #[error("the private key {path} is protected by a passphrase and none was given")]
    PassphraseRequired { path: PathBuf },
    #[error("wrong passphrase for the private key {path}")]
    WrongPassphrase { path: PathBuf },
    #[error("the key {path} is {algorithm}; baluchon signs with ed25519 keys only")]
    UnsupportedKeyAlgorithm { path: PathBuf, algorithm: String },
    #[error("{path}, line {line}: {reason}")]
    TrustFile {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{path} lists no signer key")]
    EmptyTrustFile { path: PathBuf },
    #[error("signing failed")]
    Sign(#[source] ssh_key::Error),
}

/// Why a signature was not accepted. Each variant is a verification failure, never an I/O one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("the signature is not a well-formed SSHSIG armored block")]
    Malformed(#[source] ssh_key::Error),
    #[error("the signature is for namespace {found:?}, expected {expected:?}")]
    WrongNamespace { found: String, expected: String },
    #[error("the signing key {fingerprint} is not in the trusted signers")]
    UnknownSigner { fingerprint: String },
    #[error("the signing key {fingerprint} is revoked")]
    Revoked { fingerprint: String },
    #[error("the signing key {fingerprint} is trusted, but not for namespace {namespace:?}")]
    NamespaceNotAllowed {
        fingerprint: String,
        namespace: String,
    },
    #[error("the signing key {fingerprint} is trusted only from {from} (now is {now})")]
    NotYetValid {
        fingerprint: String,
        from: jiff::Timestamp,
        now: jiff::Timestamp,
    },
    #[error("the signing key {fingerprint} was trusted only until {until} (now is {now})")]
    Expired {
        fingerprint: String,
        until: jiff::Timestamp,
        now: jiff::Timestamp,
    },
    #[error("the signature by {fingerprint} does not match the signed data")]
    BadSignature {
        fingerprint: String,
        #[source]
        source: ssh_key::Error,
    },
}

/// An ed25519 private key that signs tag manifests.
#[derive(Debug)]
pub struct SigningKey {
    key: PrivateKey,
}

impl SigningKey {
    /// Loads an OpenSSH private key file; `passphrase` is asked only if the key is encrypted.
    pub fn from_openssh_file(
        path: &Path,
        passphrase: impl FnOnce() -> Option<String>,
    ) -> Result<Self, Error> {
        let text = fs_err::read_to_string(path)?;
        let key = PrivateKey::from_openssh(text.trim()).map_err(|source| Error::PrivateKey {
            path: path.to_owned(),
            source,
        })?;
        let key = if key.is_encrypted() {
            let secret = passphrase().ok_or_else(|| Error::PassphraseRequired {
                path: path.to_owned(),
            })?;
            key.decrypt(secret.as_bytes())
                .map_err(|_| Error::WrongPassphrase {
                    path: path.to_owned(),
                })?
        } else {
            key
        };
        if key.algorithm() != Algorithm::Ed25519 {
            return Err(Error::UnsupportedKeyAlgorithm {
                path: path.to_owned(),
                algorithm: key.algorithm().to_string(),
            });
        }
        Ok(Self { key })
    }

    /// A new random ed25519 key.
    pub fn generate(comment: &str) -> Result<Self, Error> {
        let mut key = PrivateKey::random(&mut ssh_key::rand_core::OsRng, Algorithm::Ed25519)
            .map_err(Error::Sign)?;
        key.set_comment(comment);
        Ok(Self { key })
    }

    /// Writes the private key in OpenSSH format, unencrypted, readable by its owner only.
    pub fn write_openssh_file(&self, path: &Path) -> Result<(), Error> {
        use fs_err::os::unix::fs::OpenOptionsExt as _;
        use std::io::Write as _;
        let text = self.key.to_openssh(LineEnding::LF).map_err(Error::Sign)?;
        let mut file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(text.as_bytes())?;
        Ok(())
    }

    /// `SHA256:…` fingerprint, as `ssh-keygen -l` prints it.
    pub fn fingerprint(&self) -> String {
        self.key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// The public half, one OpenSSH line (`ssh-ed25519 AAAA… comment`).
    pub fn public_key_line(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| String::from("<unencodable public key>"))
    }

    /// Signs `message` under `namespace` and returns the armored signature, exactly what
    /// `ssh-keygen -Y sign -n NAMESPACE` would write (sha512, as ssh-keygen does by default).
    pub fn sign(&self, namespace: &str, message: &[u8]) -> Result<String, Error> {
        let sig = self
            .key
            .sign(namespace, HashAlg::Sha512, message)
            .map_err(Error::Sign)?;
        sig.to_pem(LineEnding::LF).map_err(Error::Sign)
    }
}

/// Parses an armored SSHSIG block, checking only its form.
fn parse_signature(armored: &[u8]) -> Result<SshSig, VerifyError> {
    SshSig::from_pem(armored).map_err(VerifyError::Malformed)
}

#[cfg(test)]
mod tests;

/// The `SHA256:…` fingerprint of the key an armored signature claims to be from, without
/// verifying anything: for display by tools that inspect a bundle.
pub fn claimed_signer(armored: &[u8]) -> Option<String> {
    let sig = parse_signature(armored).ok()?;
    Some(
        ssh_key::PublicKey::from(sig.public_key().clone())
            .fingerprint(HashAlg::Sha256)
            .to_string(),
    )
}
