//! Sealed bundles: a whole bundle, encrypted with age to chosen recipients, carried as the
//! payload of an outer bundle that anyone can verify without a key (format §13).
//!
//! The outer signature and hashes cover the ciphertext, so a sealed bundle is checked
//! before any decryption; the inner bundle is then verified in full, like any other.

use std::io::{self, Write};
use std::path::Path;

use baluchon_signature::SigningKey;

use crate::error::SealError;
use crate::export::{BundleWriter, ExportOptions, ExportReport, WholeTree};
use crate::progress::NoProgress;
use crate::verify::{Bundle, Verified};
use crate::Error;

/// The outer bundle's one payload besides its empty tree: the inner bundle, age-encrypted.
pub const SEALED_PAYLOAD: &str = "data/bundle.baluchon.age";
pub const SEALED_MEDIA_TYPE: &str = "application/vnd.baluchon.bundle+age";

/// Someone a sealed bundle is readable by: an age X25519 key (`age1…`) or an SSH public key
/// (`ssh-ed25519 …`, `ssh-rsa …`), given as text or as a file holding one per line.
pub struct Recipient {
    shown: String,
    inner: Box<dyn age::Recipient + Send + Sync>,
}

impl std::fmt::Debug for Recipient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Recipient {
    /// Parses `text`, or reads the recipients in the file it names.
    pub fn parse_all(text: &str) -> Result<Vec<Self>, SealError> {
        let path = Path::new(text);
        if !text.starts_with("age1") && !text.starts_with("ssh-") && path.is_file() {
            let content = fs_err::read_to_string(path)?;
            let recipients: Vec<Self> = content
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(Self::parse)
                .collect::<Result<_, _>>()?;
            if recipients.is_empty() {
                return Err(SealError::Recipient {
                    text: text.to_owned(),
                    reason: "the file holds no recipient".to_owned(),
                });
            }
            return Ok(recipients);
        }
        Ok(vec![Self::parse(text)?])
    }

    fn parse(text: &str) -> Result<Self, SealError> {
        let bad = |reason: &str| SealError::Recipient {
            text: text.chars().take(80).collect(),
            reason: reason.to_owned(),
        };
        let inner: Box<dyn age::Recipient + Send + Sync> = if text.starts_with("age1") {
            Box::new(text.parse::<age::x25519::Recipient>().map_err(bad)?)
        } else if text.starts_with("ssh-") {
            Box::new(
                text.parse::<age::ssh::Recipient>()
                    .map_err(|_| bad("not an ssh-ed25519 or ssh-rsa public key"))?,
            )
        } else {
            return Err(bad(
                "expected an age key (age1…), an SSH public key (ssh-ed25519 …, ssh-rsa …), or a file of them",
            ));
        };
        // The key itself, without its comment.
        let shown = text
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Self { shown, inner })
    }
}

/// Keys a sealed bundle can be opened with.
pub struct Identities {
    inner: Vec<Box<dyn age::Identity>>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} identities", self.inner.len())
    }
}

impl Identities {
    /// Reads an age identity file (`AGE-SECRET-KEY-1…` lines) or an SSH private key
    /// (ed25519 or RSA) from each file. `passphrase` is asked, once per file, for an SSH
    /// key that has one.
    pub fn from_files(
        paths: &[&Path],
        passphrase: &dyn Fn(&Path) -> Option<String>,
    ) -> Result<Self, SealError> {
        let mut inner = Vec::new();
        for path in paths {
            let bytes = fs_err::read(path)?;
            let bad = |reason: &str| SealError::Identity {
                path: path.to_path_buf(),
                reason: reason.to_owned(),
            };
            if bytes.starts_with(b"-----BEGIN") {
                match age::ssh::Identity::from_buffer(io::BufReader::new(&bytes[..]), None)
                    .map_err(|e| bad(&e.to_string()))?
                {
                    age::ssh::Identity::Unencrypted(key) => inner
                        .push(Box::new(age::ssh::Identity::Unencrypted(key))
                            as Box<dyn age::Identity>),
                    age::ssh::Identity::Encrypted(key) => {
                        let secret = passphrase(path).ok_or_else(|| {
                            bad("the SSH key has a passphrase and none was given")
                        })?;
                        // Decrypted once here, not at each stanza: one question per key.
                        let key = key
                            .decrypt(age::secrecy::SecretString::from(secret))
                            .map_err(|_| bad("wrong passphrase for the SSH key"))?;
                        inner.push(Box::new(age::ssh::Identity::Unencrypted(key)));
                    }
                    age::ssh::Identity::Unsupported(_) => {
                        return Err(bad("only ed25519 and RSA SSH keys can decrypt"))
                    }
                }
            } else {
                let file = age::IdentityFile::from_buffer(io::BufReader::new(&bytes[..]))
                    .map_err(|e| bad(&e.to_string()))?;
                let found = file.into_identities().map_err(|e| bad(&e.to_string()))?;
                if found.is_empty() {
                    return Err(bad("no AGE-SECRET-KEY-1 line in the file"));
                }
                inner.extend(found);
            }
        }
        Ok(Self { inner })
    }
}

/// What the outer bundle of a sealed one says about its inner bundle.
#[derive(Debug, Clone, Copy)]
pub struct SealOptions<'a> {
    pub tenant: &'a str,
    pub sequence: u64,
}

/// Writes `output`: an outer bundle, signed with `key`, whose payload is `inner` (a finished
/// bundle file) encrypted to `recipients`.
pub fn seal(
    inner: &Path,
    recipients: &[Recipient],
    seal: SealOptions<'_>,
    key: &SigningKey,
    output: &Path,
) -> Result<ExportReport, Error> {
    if recipients.is_empty() {
        return Err(SealError::NoRecipient.into());
    }
    let empty = tempfile::tempdir()?;
    let mut options = ExportOptions::new(
        empty.path().to_owned(),
        seal.tenant.to_owned(),
        output.to_owned(),
    );
    options.sequence = seal.sequence;
    let writer = BundleWriter::create(&options, key)?.add_tree(&WholeTree, &NoProgress)?;
    let encryptor =
        age::Encryptor::with_recipients(recipients.iter().map(|r| r.inner.as_ref() as _))
            .map_err(|e| SealError::Encrypt(e.to_string()))?;
    let mut plain = fs_err::File::open(inner)?;
    let (mut ciphertext, sink) = io::pipe()?;
    // The encryption writes into a pipe that the bundle writer reads: one pass, no
    // temporary copy of the ciphertext.
    let (written, encrypted) = std::thread::scope(|scope| {
        let encrypting = scope.spawn(move || -> io::Result<()> {
            let mut out = encryptor.wrap_output(io::BufWriter::with_capacity(1 << 20, sink))?;
            io::copy(&mut plain, &mut out)?;
            out.finish()?.flush()
        });
        let written = writer.add_payload(SEALED_PAYLOAD, SEALED_MEDIA_TYPE, false, &mut ciphertext);
        drop(ciphertext);
        let encrypted = encrypting
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the encryption thread panicked")));
        (written, encrypted)
    });
    // The writer's own failure (a full disk) explains a broken pipe in the encryption.
    let (writer, _) = written?;
    encrypted.map_err(|e| SealError::Encrypt(e.to_string()))?;
    writer.finish()
}

impl Bundle<Verified> {
    /// Whether this is the outer bundle of a sealed one.
    pub fn is_sealed(&self) -> bool {
        self.header()
            .payload
            .iter()
            .any(|p| p.path == SEALED_PAYLOAD)
    }

    /// Decrypts the inner bundle into `output` (a new file, created 0600). The ciphertext is
    /// hashed again on the way; on any error `output` is removed. The inner bundle still
    /// has to be verified, like any bundle.
    pub fn unseal(&self, identities: &Identities, output: &Path) -> Result<(), Error> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(output)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", output.display())))?;
        let result = self.unseal_into(identities, &mut file);
        if result.is_err() {
            let _ = fs_err::remove_file(output);
        }
        result
    }

    fn unseal_into(&self, identities: &Identities, out: &mut std::fs::File) -> Result<(), Error> {
        let (ciphertext, mut sink) = io::pipe()?;
        std::thread::scope(|scope| {
            let copying = scope.spawn(move || self.copy_payload(SEALED_PAYLOAD, &mut sink));
            let decrypted = (|| -> Result<(), Error> {
                let decryptor = age::Decryptor::new_buffered(io::BufReader::new(ciphertext))
                    .map_err(SealError::Decrypt)?;
                let mut plain = decryptor
                    .decrypt(identities.inner.iter().map(|i| i.as_ref() as _))
                    .map_err(SealError::Decrypt)?;
                // age reports a cut or altered stream as an I/O error.
                io::copy(&mut plain, out).map_err(SealError::Stream)?;
                Ok(())
            })();
            let copied = copying
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the copying thread panicked").into()));
            match (copied, decrypted) {
                // The bundle changed since it was verified: that explains everything else.
                (Err(invalid @ Error::Invalid(_)), _) => Err(invalid),
                // The copy stops (a broken pipe) when the decryption gave up: say why it did.
                (_, Err(decrypt)) => Err(decrypt),
                (copied, Ok(())) => copied.map(drop),
            }
        })?;
        out.sync_all()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_are_age_or_ssh_keys() {
        let age_key = age::x25519::Identity::generate().to_public().to_string();
        assert_eq!(Recipient::parse_all(&age_key).unwrap().len(), 1);
        let ssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOp18O7Xfk2k6LhATyCoA7IdIFfROKH63DwyDIZMwFhq someone";
        let parsed = Recipient::parse_all(ssh).unwrap();
        assert_eq!(
            format!("{:?}", parsed[0]),
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOp18O7Xfk2k6LhATyCoA7IdIFfROKH63DwyDIZMwFhq"
        );
        for bad in ["age1notakey", "ssh-dss AAAA", "hello", ""] {
            assert!(Recipient::parse_all(bad).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("recipients");
        fs_err::write(&file, format!("# the client\n{ssh}\n\n{age_key}\n")).unwrap();
        assert_eq!(
            Recipient::parse_all(file.to_str().unwrap()).unwrap().len(),
            2
        );
    }
}
