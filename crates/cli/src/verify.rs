//! `baluchon verify`.

use std::path::PathBuf;

use anyhow::Context as _;
use baluchon_bundle::{Bundle, Policy, Progress};
use baluchon_signature::TrustedSigners;
use clap::Args;

/// Check a bundle: signature, every hash, every size, every entry of the tree
///
/// Exits with status 3 if the bundle fails verification, 1 on any other error.
///
/// Example:
///   baluchon verify shop.baluchon --signer allowed_signers
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The bundle file
    bundle: PathBuf,
    /// Trusted signers: an OpenSSH allowed_signers file, or public key file(s) in .pub format
    #[arg(long)]
    signer: PathBuf,
    /// Also require the bundle to be for this tenant
    #[arg(long)]
    tenant: Option<String>,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

pub fn run(args: &VerifyArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let trust = TrustedSigners::from_file(&args.signer)
        .with_context(|| format!("cannot use the signer file {}", args.signer.display()))?;
    let mut policy = Policy::default();
    policy.expected_tenant.clone_from(&args.tenant);
    let verified = Bundle::open(&args.bundle)
        .and_then(|b| b.authenticate(&trust, &policy, progress))
        .and_then(|b| b.verify_payload(progress))
        .with_context(|| format!("{} failed verification", args.bundle.display()))?;
    let header = verified.header();
    let signer = verified.signer();
    if args.json {
        let value = serde_json::json!({
            "verified": true,
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
