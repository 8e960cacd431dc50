//! `baluchon import`, `baluchon rollback`, `baluchon confirm`: the files part of an import.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use baluchon_bundle::{Bundle, Destination, ExtractOptions, Policy, Switched};
use baluchon_signature::TrustedSigners;
use clap::Args;

/// Reinstall an app bundle on this host, or install a bundle's tree at a directory
///
/// An app bundle (made by `export --app`) is verified and staged whole, then planned: new
/// databases and their owners, values rewritten in the app's config (new credentials, the new
/// --domain), files to place, services to reload, and a health check. Nothing changes before
/// all of that succeeds; then each change is journaled before it is made, and any failure
/// rolls the host back to where it was. `--plan` shows the plan and changes nothing.
///
/// With --path, the bundle's tree is installed as one directory: it is verified while
/// extracted into a new staging directory next to DEST; only when every check passed is the
/// staging directory switched into place, in one atomic rename. A replaced DEST is kept (as .baluchon-previous.NAME beside it) until you run
/// `baluchon confirm` or `baluchon rollback`. Owners are mapped by name; setuid/setgid bits and
/// world-writable modes are dropped unless --keep-special-modes. Nothing from the bundle is
/// ever executed.
///
/// Examples:
///   baluchon import blog.baluchon --signer allowed_signers --domain blog.new.example --plan
///   baluchon import blog.baluchon --signer allowed_signers --domain blog.new.example
///   baluchon import shop.baluchon --path /srv/www/shop --signer allowed_signers --dry-run
///   baluchon import shop.baluchon --path /srv/www/shop --signer allowed_signers --replace
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ImportArgs {
    /// The bundle file
    bundle: PathBuf,
    /// Directory to install the tree as (its parent must exist); without it, the bundle
    /// must hold an app, which is reinstalled where its recipe says
    #[arg(long)]
    path: Option<PathBuf>,
    /// Import on another host, over SSH: ssh://user@host[:port] (baluchon is uploaded there
    /// if that host lacks this version)
    #[arg(long, value_name = "URL", conflicts_with = "path")]
    to: Option<String>,
    #[command(flatten)]
    ssh: crate::remote::SshArgs,
    #[command(flatten)]
    retry: crate::remote::RetryArgs,
    /// App bundles: the instance's new domain
    #[arg(long, conflicts_with = "path")]
    domain: Option<String>,
    /// App bundles: what to do with existing files that differ from the bundle's: refuse
    /// (change nothing), replace (move them to the import's backup directory), rename
    /// (keep them beside, as NAME.baluchon-old-ID)
    #[arg(long, value_enum, default_value = "refuse", conflicts_with = "path")]
    on_conflict: OnConflictArg,
    /// App bundles: verify, stage and show what the import would do; change nothing
    #[arg(long, conflicts_with = "path")]
    plan: bool,
    /// App bundles: an existing account of this host that the bundle's PHP-FPM pool may run
    /// as (by default only www-data and accounts the import creates) (can be repeated)
    #[arg(long, value_name = "NAME", conflicts_with = "path")]
    allow_account: Vec<String>,
    /// App bundles: an existing directory (or file) of this host that the app's files may
    /// be added to (or replace), besides the app's packages' and the tenant's own from
    /// earlier imports (can be repeated)
    #[arg(long, value_name = "PATH", conflicts_with = "path")]
    merge_into: Vec<PathBuf>,
    /// App bundles: import a tenant's bundle signed by another key than its last import's
    #[arg(long, conflicts_with = "path")]
    allow_new_signer: bool,
    /// App bundles: import a bundle older than the last one imported for its tenant (going
    /// back to an earlier backup); refused otherwise
    #[arg(long, conflicts_with = "path")]
    allow_older: bool,
    /// App bundles: run a PHP app on this PHP version (e.g. 8.2) instead of the bundle's
    /// (Debian 11's 7.4, say); socket and pool paths follow
    #[arg(long, value_name = "X.Y", conflicts_with = "path")]
    php_version: Option<String>,
    /// App bundles: where imports keep locks, journals, staging and backups
    #[arg(long, default_value = baluchon_migrate::DEFAULT_WORK_DIR, conflicts_with = "path")]
    work_dir: PathBuf,
    /// Trusted signers: an OpenSSH allowed_signers file, or public key file(s)
    #[arg(long)]
    signer: PathBuf,
    /// Require the bundle to be for this tenant
    #[arg(long)]
    tenant: Option<String>,
    /// Require the signing key to be listed for this principal in the signers file, as
    /// `ssh-keygen -Y verify -I PRINCIPAL` does (a file may hold many clients' keys)
    #[arg(long, value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// Public keys to refuse even if the signers file trusts them (one per line, .pub
    /// format), as `ssh-keygen -Y verify -r FILE` takes a plain key list (not with --to)
    #[arg(long, value_name = "FILE", conflicts_with = "to")]
    revoked: Option<PathBuf>,
    /// Replace DEST if it exists (its content is kept until confirmed)
    #[arg(long)]
    replace: bool,
    /// Verify the bundle and list what would be created, replaced and removed; change nothing
    #[arg(long)]
    dry_run: bool,
    /// Give files owned by OLD at the source to NEW here, by name; `#UID=NAME` maps an id
    /// that had no name (nameless uid 0 is refused unless mapped) (can be repeated)
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_mapping)]
    map_owner: Vec<(String, String)>,
    /// Keep setuid/setgid bits and world-writable modes
    #[arg(long)]
    keep_special_modes: bool,
    /// Create symlinks that point outside the tree (absolute or escaping with ..)
    #[arg(long)]
    allow_outside_symlinks: bool,
    /// Leave out user.* extended attributes, for a filesystem that has none (the report
    /// counts the entries that had some; without this, such a filesystem is refused)
    #[arg(long, requires = "path")]
    drop_xattrs: bool,
    /// An age identity file or an SSH private key (ed25519 or RSA) to open an encrypted
    /// bundle with (repeatable; a key's passphrase from BALUCHON_DECRYPT_KEY_PASSPHRASE, or
    /// asked on the terminal); with --to, a file on that host, without passphrase
    #[arg(long, value_name = "KEY")]
    decrypt_with: Vec<PathBuf>,
    /// Print the report as JSON on standard output
    #[arg(long)]
    json: bool,
}

fn parse_mapping(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((old, new)) if !old.is_empty() && !new.is_empty() => {
            Ok((old.to_owned(), new.to_owned()))
        }
        _ => Err(format!("expected OLD=NEW, got {text:?}")),
    }
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum OnConflictArg {
    Refuse,
    Replace,
    Rename,
}

pub fn run(args: &ImportArgs, progress: &crate::progress::CliProgress) -> anyhow::Result<()> {
    if let Some(dir) = args.merge_into.iter().find(|dir| !dir.is_absolute()) {
        bail!("--merge-into {}: give an absolute path", dir.display());
    }
    let trust = crate::verify::load_trust(&args.signer, args.revoked.as_deref())?;
    let mut policy = Policy::default();
    policy.expected_tenant.clone_from(&args.tenant);
    policy.expected_signer.clone_from(&args.principal);
    if let Some(url) = &args.to {
        let mut extra = Vec::new();
        if let Some(domain) = &args.domain {
            extra.extend(["--domain".to_owned(), domain.clone()]);
        }
        let policy = format!("{:?}", args.on_conflict).to_lowercase();
        extra.extend(["--on-conflict".to_owned(), policy]);
        if let Some(tenant) = &args.tenant {
            extra.extend(["--tenant".to_owned(), tenant.clone()]);
        }
        if let Some(principal) = &args.principal {
            extra.extend(["--principal".to_owned(), principal.clone()]);
        }
        if args.plan {
            extra.push("--plan".to_owned());
        }
        for account in &args.allow_account {
            extra.extend(["--allow-account".to_owned(), account.clone()]);
        }
        for dir in &args.merge_into {
            extra.extend([
                "--merge-into".to_owned(),
                dir.to_string_lossy().into_owned(),
            ]);
        }
        if args.allow_new_signer {
            extra.push("--allow-new-signer".to_owned());
        }
        if args.allow_older {
            extra.push("--allow-older".to_owned());
        }
        if let Some(version) = &args.php_version {
            extra.extend(["--php-version".to_owned(), version.clone()]);
        }
        if args.json {
            extra.push("--json".to_owned());
        }
        // Key files on the other host: the bundle is decrypted there, never here.
        for key in &args.decrypt_with {
            extra.extend([
                "--decrypt-with".to_owned(),
                key.to_string_lossy().into_owned(),
            ]);
        }
        return crate::remote::import(
            url,
            &args.ssh,
            &args.retry,
            &args.bundle,
            &args.signer,
            &crate::remote::RemoteImport { args: extra },
            progress,
        );
    }
    // An encrypted bundle: its envelope is verified whole before anything is decrypted,
    // then the bundle inside is verified and imported from a private temporary directory.
    if crate::sealed::is_sealed(&args.bundle, &trust, &policy, progress)? {
        let outer = Bundle::open(&args.bundle)
            .and_then(|b| b.authenticate(&trust, &policy, progress))
            .and_then(|b| b.verify_payload(progress))
            .with_context(|| format!("{} failed verification", args.bundle.display()))?;
        let parent = match &args.path {
            Some(_) => std::env::temp_dir(),
            None => {
                fs_err::create_dir_all(&args.work_dir)?;
                args.work_dir.clone()
            }
        };
        let dir = crate::scratch::ScratchDir::new(&parent, "baluchon-decrypted.")?;
        let inner = crate::sealed::decrypt(&outer, &args.decrypt_with, dir.path())?;
        let policy = crate::sealed::inner_policy(&outer, &policy);
        return import_here(args, &inner, &trust, policy, progress);
    }
    import_here(args, &args.bundle, &trust, policy, progress)
}

fn import_here(
    args: &ImportArgs,
    bundle_path: &std::path::Path,
    trust: &TrustedSigners,
    policy: Policy,
    progress: &crate::progress::CliProgress,
) -> anyhow::Result<()> {
    let Some(path) = &args.path else {
        let mut options = baluchon_migrate::ImportOptions::new();
        options.work_dir.clone_from(&args.work_dir);
        options.domain.clone_from(&args.domain);
        options.on_conflict = match args.on_conflict {
            OnConflictArg::Refuse => baluchon_migrate::OnConflict::Refuse,
            OnConflictArg::Replace => baluchon_migrate::OnConflict::Replace,
            OnConflictArg::Rename => baluchon_migrate::OnConflict::Rename,
        };
        options.policy = policy;
        options.allowed_accounts.clone_from(&args.allow_account);
        options.allow_older = args.allow_older;
        options.merge_into.clone_from(&args.merge_into);
        options.allow_new_signer = args.allow_new_signer;
        options.php_version.clone_from(&args.php_version);
        return crate::app_import::run(
            bundle_path,
            trust,
            &options,
            args.plan,
            args.json,
            progress,
        );
    };
    let failed = || format!("importing {} failed", args.bundle.display());
    let bundle = Bundle::open(bundle_path)
        .and_then(|b| b.authenticate(trust, &policy, progress))
        .with_context(failed)?;

    if args.dry_run {
        let plan = bundle.plan(path).with_context(failed)?;
        bundle.verify_payload(progress).with_context(failed)?;
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&serde_json::json!({
                    "dry_run": true,
                    "destination": path,
                    "destination_exists": plan.destination_exists,
                    "create": plan.create,
                    "replace": plan.replace,
                    "remove": plan.remove,
                }))?
            );
        } else {
            for path in &plan.create {
                println!("create  {path}");
            }
            for path in &plan.replace {
                println!("replace {path}");
            }
            for path in &plan.remove {
                println!("remove  {path}");
            }
            println!(
                "dry run: the bundle verifies; {} to create, {} to replace, {} to remove in {}; nothing was changed",
                plan.create.len(),
                plan.replace.len(),
                plan.remove.len(),
                path.display()
            );
            if plan.destination_exists && !args.replace {
                println!(
                    "note: {} exists; the import needs --replace",
                    path.display()
                );
            }
        }
        return Ok(());
    }

    // Fail before the long extraction rather than at the switch.
    if !args.replace && fs_err::symlink_metadata(path).is_ok() {
        bail!(
            "{} already exists; pass --replace to replace it (its content is kept until you confirm)",
            path.display()
        );
    }
    let mut options = ExtractOptions::default();
    options.keep_special_modes = args.keep_special_modes;
    options.allow_outside_symlinks = args.allow_outside_symlinks;
    options.drop_xattrs = args.drop_xattrs;
    options.owner_map.clone_from(&args.map_owner);
    let dest = Destination::lock(path).with_context(failed)?;
    let (verified, staged) = bundle
        .extract(dest, &options, progress)
        .with_context(failed)?;
    let report = staged.report().clone();
    let switched = staged.switch(args.replace).with_context(failed)?;
    let header = verified.header();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "destination": path,
                "bundle_id": header.bundle_id,
                "tenant": header.tenant,
                "entries": report.entries,
                "content_bytes": report.content_bytes,
                "skipped_in_bundle": report.skipped_in_bundle,
                "owners_applied": report.owners_applied,
                "numeric_owners": report.numeric_owners,
                "xattrs_dropped": report.xattrs_dropped,
                "modes_adjusted": report.modes_adjusted.iter().map(|(p, from, to)| serde_json::json!({"path": p, "from": format!("{from:o}"), "to": format!("{to:o}")})).collect::<Vec<_>>(),
                "previous": match &switched { Switched::Replaced { previous } => Some(previous), _ => None },
            }))?
        );
        return Ok(());
    }
    println!(
        "installed {} entries ({} bytes) of tenant {} at {}",
        report.entries,
        report.content_bytes,
        header.tenant,
        path.display()
    );
    if let Switched::Replaced { previous } = &switched {
        println!(
            "the former content is kept at {}: `baluchon confirm --path {}` deletes it, `baluchon rollback --path {}` restores it",
            previous.display(),
            path.display(),
            path.display()
        );
    }
    if report.skipped_in_bundle > 0 {
        println!(
            "{} entries were not archived at the source (sockets, FIFOs, devices): see the bundle's files-index.jsonl.zst",
            report.skipped_in_bundle
        );
    }
    if !report.owners_applied {
        println!("owners were not restored: only root can give files to other users");
    }
    if report.xattrs_dropped > 0 {
        println!(
            "the extended attributes of {} entries were left out, as --drop-xattrs asked",
            report.xattrs_dropped
        );
    }
    for (path, from, to) in &report.modes_adjusted {
        println!(
            "mode of {path} changed from {from:o} to {to:o} (use --keep-special-modes to keep it)"
        );
    }
    Ok(())
}

/// Restore the content an import replaced, and remove the imported tree
///
/// Example:
///   baluchon rollback --path /srv/www/shop
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RollbackArgs {
    /// The destination given to `baluchon import --path`
    #[arg(long)]
    path: PathBuf,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

/// Says what happened to `path`, as a line or as JSON.
fn done(json: bool, action: &str, path: &std::path::Path, line: &str) -> anyhow::Result<()> {
    if json {
        let value = serde_json::json!({ "action": action, "path": path });
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        println!("{line}");
    }
    Ok(())
}

pub fn rollback(args: &RollbackArgs) -> anyhow::Result<()> {
    Destination::lock(&args.path)
        .and_then(Destination::roll_back)
        .with_context(|| format!("rolling back {} failed", args.path.display()))?;
    done(
        args.json,
        "restored",
        &args.path,
        &format!("restored the former content of {}", args.path.display()),
    )
}

/// Delete the content an import replaced, keeping the imported tree
///
/// Example:
///   baluchon confirm --path /srv/www/shop
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ConfirmArgs {
    /// The destination given to `baluchon import --path`
    #[arg(long)]
    path: PathBuf,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

pub fn confirm(args: &ConfirmArgs) -> anyhow::Result<()> {
    let dest = Destination::lock(&args.path)?;
    let previous = dest.previous_path();
    if !previous.exists() {
        bail!(
            "{} has no former content waiting for confirmation",
            args.path.display()
        );
    }
    dest.confirm()
        .with_context(|| format!("confirming {} failed", args.path.display()))?;
    done(
        args.json,
        "confirmed",
        &args.path,
        &format!("deleted the former content of {}", args.path.display()),
    )
}
