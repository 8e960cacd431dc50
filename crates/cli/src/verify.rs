//! `baluchon verify`.

use std::path::PathBuf;

use anyhow::Context as _;
use baluchon_bundle::{Bundle, Policy, Progress};
use baluchon_signature::TrustedSigners;
use clap::Args;

/// Check a bundle: signature, every hash, every size, every entry of the tree
///
/// An encrypted bundle is verified as far as it can be without a key (signature, the
/// ciphertext's hash and size); with --decrypt-with, it is then decrypted into a private
/// temporary directory and the bundle inside is verified in full, then deleted.
///
/// Exits with status 3 if the bundle fails verification, 1 on any other error.
///
/// Examples:
///   baluchon verify shop.baluchon --signer allowed_signers
///   baluchon verify shop.baluchon --signer allowed_signers --decrypt-with ~/.ssh/id_ed25519
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct VerifyArgs {
    /// The bundle file
    bundle: PathBuf,
    /// Trusted signers: an OpenSSH allowed_signers file, or public key file(s) in .pub format
    #[arg(long)]
    signer: PathBuf,
    /// Also require the bundle to be for this tenant
    #[arg(long)]
    tenant: Option<String>,
    /// Also require the signing key to be listed for this principal in the signers file,
    /// as `ssh-keygen -Y verify -I PRINCIPAL` does (a file may hold many clients' keys)
    #[arg(long, value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// Public keys to refuse even if the signers file trusts them (one per line, .pub
    /// format), as `ssh-keygen -Y verify -r FILE` takes a plain key list
    #[arg(long, value_name = "FILE")]
    revoked: Option<PathBuf>,
    /// An age identity file or an SSH private key (ed25519 or RSA) to open an encrypted
    /// bundle with (repeatable; a key's passphrase from BALUCHON_DECRYPT_KEY_PASSPHRASE, or
    /// asked on the terminal)
    #[arg(long, value_name = "KEY")]
    decrypt_with: Vec<PathBuf>,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

/// The signers file, less the keys of the revocation file.
pub fn load_trust(
    signer: &std::path::Path,
    revoked: Option<&std::path::Path>,
) -> anyhow::Result<TrustedSigners> {
    let mut trust = TrustedSigners::from_file(signer)
        .with_context(|| format!("cannot use the signer file {}", signer.display()))?;
    if let Some(revoked) = revoked {
        trust
            .revoke_from_file(revoked)
            .with_context(|| format!("cannot use the revocation file {}", revoked.display()))?;
    }
    Ok(trust)
}

pub fn run(args: &VerifyArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let trust = load_trust(&args.signer, args.revoked.as_deref())?;
    let mut policy = Policy::default();
    policy.expected_tenant.clone_from(&args.tenant);
    policy.expected_signer.clone_from(&args.principal);
    let verified = Bundle::open(&args.bundle)
        .and_then(|b| b.authenticate(&trust, &policy, progress))
        .and_then(|b| b.verify_payload(progress))
        .with_context(|| format!("{} failed verification", args.bundle.display()))?;
    let (verified, decrypted) = if verified.is_sealed() {
        if args.decrypt_with.is_empty() {
            return report_sealed(args, &verified);
        }
        let dir = tempfile::tempdir()?;
        let inner = crate::sealed::decrypt(&verified, &args.decrypt_with, dir.path())?;
        let policy = crate::sealed::inner_policy(&verified, &policy);
        let inner = Bundle::open(&inner)
            .and_then(|b| b.authenticate(&trust, &policy, progress))
            .and_then(|b| b.verify_payload(progress))
            .context("the decrypted bundle failed verification")?;
        (inner, Some(dir))
    } else {
        (verified, None)
    };
    let header = verified.header();
    let signer = verified.signer();
    if args.json {
        let value = serde_json::json!({
            "verified": true,
            "decrypted": decrypted.is_some(),
            "bundle": args.bundle,
            "bundle_id": header.bundle_id,
            "tenant": header.tenant,
            "sequence": header.sequence,
            "created_at": header.created_at.to_string(),
            "signer": signer.fingerprint,
            "principals": signer.principals,
            "entries": header.files.entries,
            "content_bytes": header.files.content_bytes,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        let by = if signer.principals.is_empty() {
            signer.fingerprint.clone()
        } else {
            format!("{} ({})", signer.principals.join(", "), signer.fingerprint)
        };
        println!(
            "OK {}: tenant {}, sequence {}, created {}, signed by {by}; {} entries and {} bytes of content match",
            args.bundle.display(),
            header.tenant,
            header.sequence,
            header.created_at,
            header.files.entries,
            header.files.content_bytes
        );
    }
    Ok(())
}

/// What can be said of an encrypted bundle without its key.
fn report_sealed(
    args: &VerifyArgs,
    outer: &Bundle<baluchon_bundle::Verified>,
) -> anyhow::Result<()> {
    let header = outer.header();
    let encrypted = header
        .payload
        .iter()
        .find(|p| p.path == baluchon_bundle::SEALED_PAYLOAD)
        .map_or(0, |p| p.size);
    if args.json {
        let value = serde_json::json!({
            "verified": true,
            "encrypted": true,
            "content_checked": false,
            "bundle": args.bundle,
            "tenant": header.tenant,
            "sequence": header.sequence,
            "created_at": header.created_at.to_string(),
            "signer": outer.signer().fingerprint,
            "encrypted_bytes": encrypted,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!(
            "OK {}: tenant {}, sequence {}, created {}, signed by {}; {encrypted} bytes of \
             encrypted content match the signed hash. The content itself was not checked: \
             give --decrypt-with KEY to decrypt and verify it",
            args.bundle.display(),
            header.tenant,
            header.sequence,
            header.created_at,
            outer.signer().fingerprint
        );
    }
    Ok(())
}
