//! Encrypted ("sealed") bundles on the command line: `--encrypt-to` on export, and
//! `--decrypt-with` on verify and import. The outer bundle is verified before anything is
//! decrypted; the inner one is verified like any bundle afterwards.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use baluchon_bundle::{
    seal, Bundle, Identities, Policy, Progress, Recipient, SealError, SealOptions, Verified,
    SEALED_PAYLOAD,
};
use baluchon_signature::{SigningKey, TrustedSigners};

pub fn recipients(texts: &[String]) -> anyhow::Result<Vec<Recipient>> {
    let mut all = Vec::new();
    for text in texts {
        all.extend(Recipient::parse_all(text)?);
    }
    Ok(all)
}

/// A private directory beside `output` for the inner bundle (in clear), removed when
/// dropped, even by the next run if this one is killed.
pub fn inner_dir(output: &Path) -> anyhow::Result<crate::scratch::ScratchDir> {
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    crate::scratch::ScratchDir::new(&parent, ".baluchon-seal.")
}

/// Encrypts the finished bundle `inner` into `output` and says so.
pub fn seal_into(
    inner: &Path,
    recipients: &[Recipient],
    key: &SigningKey,
    output: &Path,
    json: bool,
) -> anyhow::Result<()> {
    let header = Bundle::open(inner)?.inspect()?.header;
    let report = seal(
        inner,
        recipients,
        SealOptions {
            tenant: &header.tenant,
            sequence: header.sequence,
        },
        key,
        output,
    )
    .with_context(|| format!("encrypting into {} failed", output.display()))?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "encrypted": report.output,
                "bundle_size": report.bundle_size,
                "recipients": recipients.iter().map(|r| format!("{r:?}")).collect::<Vec<_>>(),
            })
        );
    } else {
        println!(
            "encrypted into {} ({} bytes), readable only with the private key of: {}",
            report.output.display(),
            report.bundle_size,
            recipients
                .iter()
                .map(|r| format!("{r:?}"))
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    Ok(())
}

/// Whether the bundle at `path` is sealed, from its authenticated tag files (cheap: the
/// payload is not read).
pub fn is_sealed(
    path: &Path,
    trust: &TrustedSigners,
    policy: &Policy,
    progress: &dyn Progress,
) -> anyhow::Result<bool> {
    let authenticated = Bundle::open(path)
        .and_then(|b| b.authenticate(trust, policy, progress))
        .with_context(|| format!("{} failed verification", path.display()))?;
    Ok(authenticated
        .header()
        .payload
        .iter()
        .any(|p| p.path == SEALED_PAYLOAD))
}

/// Decrypts the verified outer bundle into `dir/inner.baluchon`, which is still to be
/// verified, with [`inner_policy`].
pub fn decrypt(outer: &Bundle<Verified>, keys: &[PathBuf], dir: &Path) -> anyhow::Result<PathBuf> {
    if keys.is_empty() {
        return Err(SealError::KeyNeeded.into());
    }
    let paths: Vec<&Path> = keys.iter().map(PathBuf::as_path).collect();
    let identities = Identities::from_files(&paths, &|path| {
        crate::export::passphrase("BALUCHON_DECRYPT_KEY_PASSPHRASE", path)
    })?;
    let inner = dir.join("inner.baluchon");
    outer.unseal(&identities, &inner)?;
    Ok(inner)
}

/// What the bundle inside must also satisfy: the envelope's tenant.
pub fn inner_policy(outer: &Bundle<Verified>, policy: &Policy) -> Policy {
    let mut policy = policy.clone();
    policy.expected_tenant = Some(outer.header().tenant.clone());
    policy
}
