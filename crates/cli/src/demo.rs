//! `baluchon demo`: the whole round on a small built-in tenant, with no root and no services.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use baluchon_bundle::{
    export_tree, Bundle, Destination, ExportOptions, ExtractOptions, Policy, Progress, Switched,
};
use baluchon_signature::{SigningKey, TrustedSigners};
use clap::Args;

/// Run the demo: build a small tenant, export it, verify it, inspect it, import it elsewhere
///
/// Everything happens in a new directory (printed at the start); nothing else is touched.
///
/// Example:
///   baluchon demo
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct DemoArgs {
    /// Work in this directory instead of a new temporary one (it must not exist)
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn run(args: &DemoArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let (work, _temp) = match &args.dir {
        Some(dir) => {
            fs_err::create_dir(dir)?;
            (dir.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("baluchon-demo.")
                .tempdir()?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    println!("demo directory: {}", work.display());

    let tenant_dir = work.join("old-host/srv/www/demo-shop");
    write_demo_tenant(&tenant_dir)?;
    println!("1. created the demo tenant in {}", tenant_dir.display());

    let key_path = work.join("provider_ed25519");
    let key = SigningKey::generate("exports@old-host.example")?;
    key.write_openssh_file(&key_path)?;
    let allowed = work.join("allowed_signers");
    fs_err::write(
        &allowed,
        format!(
            "exports@old-host.example namespaces=\"{}\" {}\n",
            baluchon_bundle::SIGNATURE_NAMESPACE,
            key.public_key_line()
        ),
    )?;
    println!(
        "2. generated the provider's signing key {} ({})",
        key_path.display(),
        key.fingerprint()
    );

    let bundle = work.join("demo-shop.baluchon");
    let options = ExportOptions::new(tenant_dir.clone(), "demo-shop".to_owned(), bundle.clone());
    let report = export_tree(&options, &key, progress).context("demo export failed")?;
    println!(
        "3. exported {} entries into {} ({} bytes); skipped and listed: {}",
        report.header.files.entries,
        bundle.display(),
        report.bundle_size,
        report.header.files.skipped
    );

    let trust = TrustedSigners::from_file(&allowed)?;
    let verified = Bundle::open(&bundle)?
        .authenticate(&trust, &Policy::default(), progress)?
        .verify_payload(progress)
        .context("demo bundle failed verification")?;
    println!(
        "4. verified: signed by {} ({}), every hash and entry matches",
        verified.signer().principals.join(", "),
        verified.signer().fingerprint
    );

    let inspection = Bundle::open(&bundle)?.inspect()?;
    println!(
        "5. inspected: tenant {}, sequence {}, created {}, format {} v{}",
        inspection.header.tenant,
        inspection.header.sequence,
        inspection.header.created_at,
        inspection.header.format,
        inspection.header.format_version
    );
    let new_home = work.join("new-host/srv/www");
    fs_err::create_dir_all(&new_home)?;
    let dest = new_home.join("demo-shop");
    let (_, staged) = Bundle::open(&bundle)?
        .authenticate(&trust, &Policy::default(), progress)?
        .extract(
            Destination::lock(&dest)?,
            &ExtractOptions::default(),
            progress,
        )
        .context("demo import failed")?;
    let entries = staged.report().entries;
    let switched = staged.switch(false)?;
    anyhow::ensure!(
        switched == Switched::Created,
        "the demo destination already existed"
    );
    let original = fs_err::read(tenant_dir.join("releases/1/index.html"))?;
    let imported = fs_err::read(dest.join("current/index.html"))?;
    anyhow::ensure!(
        original == imported,
        "the imported page differs from the original"
    );
    println!(
        "6. imported {entries} entries into {}; the site's page reads the same through the `current` symlink",
        dest.display()
    );

    println!("\nCheck it again with stock tools only (see README.txt inside the bundle):");
    println!(
        "  mkdir bag && tar -xf {} -C bag && cd bag",
        bundle.display()
    );
    println!(
        "  ssh-keygen -Y verify -f {} -I exports@old-host.example -n {} -s tagmanifest-sha256.txt.sig < tagmanifest-sha256.txt",
        allowed.display(),
        baluchon_bundle::SIGNATURE_NAMESPACE
    );
    println!("  sha256sum --strict -c tagmanifest-sha256.txt && sha256sum --strict -c manifest-sha256.txt");
    println!("  zstd -dc data/files.tar.zst | tar -tvf -");
    if args.dir.is_none() {
        println!("\n(the demo directory is removed on exit; pass --dir DIR to keep it)");
    }
    Ok(())
}

/// A small static site with an upload area, a symlinked release and a hardlink.
fn write_demo_tenant(root: &Path) -> anyhow::Result<()> {
    let files: [(&str, &[u8]); 5] = [
        (
            "releases/1/index.html",
            b"<!doctype html><title>Demo shop</title><h1>Welcome</h1>\n",
        ),
        (
            "releases/1/style.css",
            b"body { font-family: sans-serif; }\n",
        ),
        (
            "config/site.conf",
            b"domain = shop.old-host.example\ndatabase = data/shop.db\n",
        ),
        ("uploads/2026/logo.txt", b"a logo, in spirit\n"),
        (
            "data/shop.db",
            &[0x53, 0x51, 0x4c, 0x69, 0x74, 0x65, 0, 1, 2, 3],
        ),
    ];
    for (path, content) in files {
        let full = root.join(path);
        if let Some(parent) = full.parent() {
            fs_err::create_dir_all(parent)?;
        }
        fs_err::write(&full, content)?;
    }
    fs_err::os::unix::fs::symlink("releases/1", root.join("current"))?;
    fs_err::hard_link(
        root.join("uploads/2026/logo.txt"),
        root.join("uploads/latest-logo.txt"),
    )?;
    Ok(())
}
