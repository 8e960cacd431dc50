//! `baluchon inspect`.

use std::path::PathBuf;

use anyhow::Context as _;
use baluchon_bundle::Bundle;
use clap::Args;

/// Show what a bundle says about itself, without verifying it
///
/// Nothing shown here is trusted: use `baluchon verify` before relying on a bundle.
///
/// Example:
///   baluchon inspect shop.baluchon --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct InspectArgs {
    /// The bundle file
    bundle: PathBuf,
    /// Print as JSON on standard output
    #[arg(long)]
    json: bool,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let inspection = Bundle::open(&args.bundle)
        .and_then(|b| b.inspect())
        .with_context(|| format!("cannot read {}", args.bundle.display()))?;
    let h = &inspection.header;
    if args.json {
        let value = serde_json::json!({
            "verified": false,
            "bundle_size": inspection.bundle_size,
            "claimed_signer": inspection.claimed_signer,
            "bundle": h,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "bundle        {} (NOT verified: run baluchon verify)",
        args.bundle.display()
    );
    println!("format        {} version {}", h.format, h.format_version);
    println!("bundle id     {}", h.bundle_id);
    println!("tenant        {}", h.tenant);
    println!("sequence      {}", h.sequence);
    println!("created at    {}", h.created_at);
    println!(
        "produced by   {} {} on {} from {}",
        h.producer.tool, h.producer.version, h.producer.host, h.producer.source_path
    );
    println!(
        "signer        {} (claimed)",
        inspection
            .claimed_signer
            .as_deref()
            .unwrap_or("unreadable: the signature is not a well-formed SSHSIG block")
    );
    println!("bundle size   {} bytes", inspection.bundle_size);
    for p in &h.payload {
        match p.uncompressed_size {
            Some(u) => println!(
                "payload       {} {} bytes ({} uncompressed)",
                p.path, p.size, u
            ),
            None => println!("payload       {} {} bytes", p.path, p.size),
        }
    }
    println!(
        "entries       {} archived, {} skipped, {} changed while read",
        h.files.entries, h.files.skipped, h.files.changed
    );
    println!("content       {} bytes", h.files.content_bytes);
    Ok(())
}
