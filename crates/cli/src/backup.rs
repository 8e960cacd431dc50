//! `baluchon backup`, `baluchon backups list|verify|prune|check`, `baluchon schedule
//! install` and `baluchon fleet backup`: the same signed bundle a leaving client gets, made
//! every night and kept in a directory, on another host over SSH, or in S3 (docs/backups.md).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use baluchon_backup::{Backup, Destination, Location, Retention, S3Settings, TenantLock};
use baluchon_bundle::{
    export_tree, ExportOptions, ExportReport, NoProgress, Phase, Policy, Progress,
};
use baluchon_migrate::{capture_instance, CaptureOptions};
use baluchon_recipe::LocalHost;
use baluchon_signature::TrustedSigners;
use clap::{Args, Subcommand};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use jiff::Timestamp;

/// Which tenant: an app instance, or a directory tree.
#[derive(Debug, Clone, Args)]
pub struct TenantArgs {
    /// App whose instance to back up (a recipe name, as for `baluchon export`)
    #[arg(long, requires = "instance", conflicts_with = "path")]
    app: Option<String>,
    /// The instance of --app, as `baluchon detect` names it
    #[arg(long, requires = "app")]
    instance: Option<String>,
    /// Use this recipe file for --app instead of the installed one
    #[arg(long, requires = "app")]
    recipe: Option<PathBuf>,
    /// Directory tree to back up instead of an app
    #[arg(long, required_unless_present = "app", requires = "tenant")]
    path: Option<PathBuf>,
    /// Tenant name: the key prefix at the destination [default with --app: the instance]
    #[arg(long)]
    tenant: Option<String>,
}

impl TenantArgs {
    fn name(&self) -> anyhow::Result<String> {
        let name = self
            .tenant
            .clone()
            .or_else(|| self.instance.clone())
            .context("--tenant is needed")?;
        baluchon_backup::check_tenant(&name)?;
        Ok(name)
    }

    /// The same selection as arguments of `baluchon backup`.
    fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        let mut push = |flag: &str, value: Option<String>| {
            if let Some(v) = value {
                args.extend([flag.to_owned(), v]);
            }
        };
        push("--app", self.app.clone());
        push("--instance", self.instance.clone());
        push(
            "--recipe",
            self.recipe.as_ref().map(|p| p.display().to_string()),
        );
        push(
            "--path",
            self.path.as_ref().map(|p| p.display().to_string()),
        );
        push("--tenant", self.tenant.clone());
        args
    }
}

/// How to open a destination.
#[derive(Debug, Args)]
pub struct DestinationArgs {
    /// S3 settings (TOML: endpoint, region, access_key_id, secret_access_key, allow_http,
    /// …); they override the AWS_* environment variables
    #[arg(long, value_name = "FILE", env = "BALUCHON_S3_CONFIG")]
    s3_config: Option<PathBuf>,
    #[command(flatten)]
    ssh: crate::remote::SshArgs,
}

impl DestinationArgs {
    fn open(&self, text: &str) -> anyhow::Result<Destination> {
        Ok(match text.parse::<Location>()? {
            Location::Directory(path) => Destination::directory(path),
            Location::Ssh { target, path } => Destination::ssh(self.ssh.connect(&target)?, path),
            Location::S3 { bucket, prefix } => {
                Destination::s3(&bucket, &prefix, &self.s3_settings()?)?
            }
        })
    }

    /// `AWS_*` variables as object_store's `from_env` reads them, and the file's keys.
    fn s3_settings(&self) -> anyhow::Result<S3Settings> {
        let mut settings = S3Settings {
            environment: std::env::vars()
                .filter(|(k, _)| k.starts_with("AWS_"))
                .collect(),
            limit_rate: self.ssh.limit_rate(),
            ..S3Settings::default()
        };
        if let Some(path) = &self.s3_config {
            let text = fs_err::read_to_string(path)?;
            let table: BTreeMap<String, toml::Value> = toml::from_str(&text)
                .with_context(|| format!("{} is not a TOML table of settings", path.display()))?;
            for (key, value) in table {
                let value = match value {
                    toml::Value::String(s) => s,
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Integer(i) => i.to_string(),
                    other => anyhow::bail!(
                        "{}: {key} must be a string, a boolean or a number, not {}",
                        path.display(),
                        other.type_str()
                    ),
                };
                settings.file.push((key, value));
            }
        }
        Ok(settings)
    }
}

/// Where locks (and export sequence counters) live: BALUCHON_STATE_DIR, else
/// $XDG_STATE_HOME/baluchon, else ~/.local/state/baluchon.
fn state_dir() -> anyhow::Result<PathBuf> {
    std::env::var_os("BALUCHON_STATE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("baluchon")))
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/baluchon"))
        })
        .context("set BALUCHON_STATE_DIR (or HOME) for the backup locks")
}

/// Back up a tenant: export it into a signed bundle and store it at a destination
///
/// DEST is a directory, ssh://user@host[:port]/path, or s3://bucket/prefix (endpoint,
/// region and credentials from AWS_* variables or --s3-config). The bundle is exported into
/// a private directory under --work-dir, then stored as TENANT/TIME-ID.baluchon, followed by
/// its sha256 marker: a backup whose marker is missing was not finished and is never listed.
/// A second run for the same tenant on this machine is refused while one is going on.
///
/// Examples:
///   baluchon backup --app wordpress --instance blog.example.org --to s3://bundles/nightly --sign-key /etc/baluchon/sign_ed25519
///   baluchon backup --path /srv/www/shop --tenant shop --to /var/backups/baluchon --sign-key key
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct BackupArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    /// Where to store the backup: a directory, ssh://user@host/path or s3://bucket/prefix
    #[arg(long, value_name = "DEST")]
    to: String,
    /// OpenSSH ed25519 private key that signs the bundle
    #[arg(long, env = "BALUCHON_SIGN_KEY")]
    sign_key: PathBuf,
    /// Directory for the bundle until it is stored (it needs room for one bundle)
    /// [default: the system's temporary directory]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    #[command(flatten)]
    destination: DestinationArgs,
    /// Encrypt the backup to this recipient (repeatable; see `baluchon export --help`):
    /// stored bundles are then readable only with the recipients' keys, and still verified
    /// by `backups verify` without them
    #[arg(long, value_name = "RECIPIENT")]
    encrypt_to: Vec<String>,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

/// What one backup did.
struct Outcome {
    tenant: String,
    destination: String,
    backup: Backup,
    /// The export's report (of the bundle inside, for an encrypted backup): what it skipped
    /// or found changing is said again with the backup.
    exported: ExportReport,
    export_time: Duration,
    upload_time: Duration,
}

impl Outcome {
    fn json(&self) -> serde_json::Value {
        let mut value = serde_json::json!({
            "tenant": self.tenant,
            "destination": self.destination,
            "key": self.backup.key,
            "bundle_id": self.backup.bundle_id,
            "created_at": self.backup.created.to_string(),
            "size": self.backup.size,
            "export_seconds": self.export_time.as_secs_f64(),
            "upload_seconds": self.upload_time.as_secs_f64(),
        });
        if let Some(fields) = value.as_object_mut() {
            fields.extend(crate::export::notices_json(&self.exported));
        }
        value
    }
}

/// Exports the tenant (encrypted to `recipients`, if any) and stores the bundle. `upload`
/// is told the bundle's size before it is sent and then receives its progress.
#[allow(clippy::too_many_arguments)]
fn back_up(
    tenant: &TenantArgs,
    to: &str,
    sign_key: &Path,
    recipients: &[baluchon_bundle::Recipient],
    work_dir: Option<&Path>,
    destination: &DestinationArgs,
    export: &dyn Progress,
    upload: &dyn Fn(u64) -> Box<dyn Progress>,
) -> anyhow::Result<Outcome> {
    let name = tenant.name()?;
    let _lock = TenantLock::acquire(&state_dir()?.join("locks"), &name)?;
    let dest = destination.open(to)?;
    // Fails fast, before a long export, if the destination cannot even be read (a missing
    // bucket, a refused login).
    baluchon_backup::list(&dest, Some(&name))
        .with_context(|| format!("cannot use {dest} as a destination"))?;
    let key = crate::export::load_signing_key(sign_key)?;
    let work = crate::scratch::ScratchDir::new(
        &work_dir.map_or_else(std::env::temp_dir, Path::to_owned),
        "baluchon-backup.",
    )?;
    let output = work.path().join(format!("{name}.baluchon"));
    // The time in seconds: backups of a tenant keep going up, whichever host made them.
    let now = Timestamp::now();
    let sequence = u64::try_from(now.as_second()).unwrap_or(0);
    let started = Instant::now();
    let report = match (&tenant.app, &tenant.instance, &tenant.path) {
        (Some(app), Some(instance), _) => {
            let recipe = crate::app::load_recipe(app, tenant.recipe.as_deref())?;
            let resolved = crate::app::resolve(&recipe, instance)?;
            let mut options = CaptureOptions::new(output.clone());
            options.tenant = Some(name.clone());
            options.sequence = sequence;
            options.keep_secrets = !recipients.is_empty();
            capture_instance(
                &recipe,
                &resolved,
                &LocalHost::new(),
                &options,
                &key,
                export,
            )
            .with_context(|| format!("exporting {app} {instance} failed"))?
            .bundle
        }
        (_, _, Some(path)) => {
            let mut options = ExportOptions::new(path.clone(), name.clone(), output.clone());
            options.sequence = sequence;
            export_tree(&options, &key, export)
                .with_context(|| format!("exporting {} failed", path.display()))?
        }
        _ => anyhow::bail!("say what to back up: --app and --instance, or --path and --tenant"),
    };
    // The report of what is stored: the envelope, for an encrypted backup.
    let (sealed, output) = if recipients.is_empty() {
        (None, output)
    } else {
        let sealed = work.path().join(format!("{name}.sealed.baluchon"));
        let options = baluchon_bundle::SealOptions {
            tenant: &name,
            sequence,
        };
        let envelope = baluchon_bundle::seal(&output, recipients, options, &key, &sealed)
            .context("encrypting the backup failed")?;
        (Some(envelope), sealed)
    };
    let stored = sealed.as_ref().unwrap_or(&report);
    let export_time = started.elapsed();
    let started = Instant::now();
    let progress = upload(stored.bundle_size);
    let backup = baluchon_backup::store(
        &dest,
        &name,
        // When the run started, to the millisecond (the bundle records only seconds): the
        // key's time orders two backups made within a second.
        now,
        &stored.header.bundle_id,
        &output,
        progress.as_ref(),
    )
    .with_context(|| format!("storing the backup of {name} at {dest} failed"))?;
    Ok(Outcome {
        tenant: name,
        destination: dest.to_string(),
        backup,
        exported: report,
        export_time,
        upload_time: started.elapsed(),
    })
}

pub fn backup(args: &BackupArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let recipients = crate::sealed::recipients(&args.encrypt_to)?;
    let outcome = back_up(
        &args.tenant,
        &args.to,
        &args.sign_key,
        &recipients,
        args.work_dir.as_deref(),
        &args.destination,
        progress,
        &|size| {
            if !args.json {
                eprintln!("baluchon: storing {size} bytes at {}", args.to);
            }
            Box::new(NoProgress)
        },
    )?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&outcome.json())?);
    } else {
        println!(
            "backed up {} to {} as {} ({} bytes; export {:.1} s, upload {:.1} s)",
            outcome.tenant,
            outcome.destination,
            outcome.backup.key,
            outcome.backup.size,
            outcome.export_time.as_secs_f64(),
            outcome.upload_time.as_secs_f64()
        );
        crate::export::print_notices(&outcome.exported);
    }
    Ok(())
}

/// List, verify, prune or check the backups at a destination
#[derive(Debug, Args)]
pub struct BackupsArgs {
    #[command(subcommand)]
    command: BackupsCommand,
}

#[derive(Debug, Subcommand)]
enum BackupsCommand {
    List(ListArgs),
    Get(GetArgs),
    Verify(VerifyArgs),
    Prune(PruneArgs),
    Check(CheckArgs),
}

/// Where, and for whom.
#[derive(Debug, Args)]
struct Target {
    /// The destination: a directory, ssh://user@host/path or s3://bucket/prefix
    #[arg(value_name = "DEST")]
    to: String,
    /// Only this tenant's backups
    #[arg(long)]
    tenant: Option<String>,
    #[command(flatten)]
    destination: DestinationArgs,
}

impl Target {
    fn open(&self) -> anyhow::Result<(Destination, baluchon_backup::Listing)> {
        let dest = self.destination.open(&self.to)?;
        let listing = baluchon_backup::list(&dest, self.tenant.as_deref())?;
        Ok((dest, listing))
    }
}

/// List the complete backups, oldest first, and count unfinished uploads
///
/// Example:
///   baluchon backups list s3://bundles/nightly --tenant shop
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct ListArgs {
    #[command(flatten)]
    target: Target,
    /// Print JSON on standard output
    #[arg(long)]
    json: bool,
}

fn list(args: &ListArgs) -> anyhow::Result<()> {
    let (_, listing) = args.target.open()?;
    if args.json {
        let backups: Vec<_> = listing
            .backups
            .iter()
            .map(|b| {
                serde_json::json!({
                    "tenant": b.tenant, "created_at": b.created.to_string(),
                    "bundle_id": b.bundle_id, "key": b.key, "size": b.size,
                })
            })
            .collect();
        let incomplete: Vec<_> = listing.incomplete.iter().map(|o| &o.key).collect();
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"backups": backups, "incomplete": incomplete})
            )?
        );
        return Ok(());
    }
    for b in &listing.backups {
        println!("{:<24} {}  {:>12}  {}", b.tenant, b.created, b.size, b.key);
    }
    println!("{} backup(s)", listing.backups.len());
    if !listing.incomplete.is_empty() {
        println!(
            "{} objects are not complete backups (unfinished uploads): `backups prune` removes those not written to for a day",
            listing.incomplete.len()
        );
    }
    Ok(())
}

/// Fetch a backup's bundle, checked against its sha256 marker, to restore it with
/// `baluchon import`
///
/// Without --key, the tenant's newest backup.
///
/// Example:
///   baluchon backups get s3://bundles/nightly --tenant shop -o shop.baluchon
///   baluchon import shop.baluchon --signer allowed_signers --path /srv/www/shop --replace
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct GetArgs {
    #[command(flatten)]
    target: Target,
    /// The backup's key, as `backups list` prints it
    #[arg(long)]
    key: Option<String>,
    /// Bundle file to create; it must not exist yet
    #[arg(short, long)]
    output: PathBuf,
}

fn get(args: &GetArgs) -> anyhow::Result<()> {
    let (dest, listing) = args.target.open()?;
    let backup = match &args.key {
        Some(key) => listing.backups.iter().find(|b| &b.key == key),
        None => {
            anyhow::ensure!(
                args.target.tenant.is_some(),
                "say which backup: --key, or --tenant for its newest"
            );
            listing.backups.last()
        }
    }
    .with_context(|| format!("no such complete backup at {dest}"))?;
    baluchon_backup::fetch(&dest, backup, &args.output, &NoProgress)?;
    println!(
        "fetched {} ({} bytes, sha256 as its marker says) into {}",
        backup.key,
        backup.size,
        args.output.display()
    );
    Ok(())
}

/// What verifying needs.
#[derive(Debug, Args)]
struct Checking {
    /// Trusted signers: an OpenSSH allowed_signers file, or public key file(s) in .pub format
    #[arg(long)]
    signer: PathBuf,
    /// Public keys to refuse even if the signers file trusts them (one per line, .pub
    /// format), as `ssh-keygen -Y verify -r FILE` takes a plain key list
    #[arg(long, value_name = "FILE")]
    revoked: Option<PathBuf>,
    /// Require the signing key to be listed for this principal in the signers file, as
    /// `ssh-keygen -Y verify -I PRINCIPAL` does (a file may hold many clients' keys)
    #[arg(long, value_name = "PRINCIPAL")]
    principal: Option<String>,
    /// Directory to download each bundle into while it is checked [default: the system's
    /// temporary directory]
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
}

impl Checking {
    fn trust(&self) -> anyhow::Result<TrustedSigners> {
        crate::verify::load_trust(&self.signer, self.revoked.as_deref())
    }

    /// Downloads the backup, checks it against its marker, then its signature, every hash
    /// and every entry, as `baluchon verify` does.
    fn verify(
        &self,
        dest: &Destination,
        backup: &Backup,
        trust: &TrustedSigners,
        progress: &dyn Progress,
    ) -> anyhow::Result<()> {
        let work = crate::scratch::ScratchDir::new(
            &self.work_dir.clone().unwrap_or_else(std::env::temp_dir),
            "baluchon-verify.",
        )?;
        let local = work.path().join("bundle.baluchon");
        baluchon_backup::fetch(dest, backup, &local, &NoProgress)?;
        let mut policy = Policy::default();
        policy.expected_tenant = Some(backup.tenant.clone());
        policy.expected_signer.clone_from(&self.principal);
        baluchon_bundle::verify(&local, trust, &policy, progress)
            .with_context(|| format!("{} failed verification", backup.key))?;
        Ok(())
    }
}

/// Verify backups: each is downloaded, checked against its sha256 marker, then fully
///
/// Exits with status 3 if a bundle fails verification.
///
/// Example:
///   baluchon backups verify s3://bundles/nightly --signer allowed_signers --latest
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct VerifyArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    checking: Checking,
    /// Only the newest backup of each tenant
    #[arg(long)]
    latest: bool,
}

fn newest_per_tenant(backups: &[Backup]) -> Vec<&Backup> {
    let mut newest: BTreeMap<&str, &Backup> = BTreeMap::new();
    // Oldest first: later ones replace earlier ones.
    for b in backups {
        newest.insert(&b.tenant, b);
    }
    newest.into_values().collect()
}

fn verify(args: &VerifyArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let (dest, listing) = args.target.open()?;
    let trust = args.checking.trust()?;
    let chosen: Vec<&Backup> = if args.latest {
        newest_per_tenant(&listing.backups)
    } else {
        listing.backups.iter().collect()
    };
    let mut first_failure = None;
    let mut failed = 0;
    for backup in &chosen {
        match args.checking.verify(&dest, backup, &trust, progress) {
            Ok(()) => println!("OK   {}", backup.key),
            Err(e) => {
                println!("FAIL {}: {e:#}", backup.key);
                failed += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    match first_failure {
        // The first failure's own chain decides the exit status (3 for a bad bundle).
        Some(e) => Err(e.context(format!(
            "{failed} of {} backups at {dest} failed verification",
            chosen.len()
        ))),
        None => {
            println!("{} backups verified at {dest}", chosen.len());
            Ok(())
        }
    }
}

/// Remove the backups that no retention rule keeps (restic's rules, in UTC)
///
/// Each tenant is pruned on its own. --keep-last N keeps the N newest; --keep-daily,
/// --keep-weekly and --keep-monthly keep the newest backup of each of the N latest days,
/// ISO weeks and months that have one. A backup kept by any rule stays. Unfinished uploads
/// not written to for a day are removed too.
///
/// Example:
///   baluchon backups prune s3://bundles/nightly --keep-daily 7 --keep-weekly 4 --keep-monthly 6 --dry-run
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct PruneArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_last: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, value_name = "N", default_value_t = 0)]
    keep_monthly: u32,
    /// Say what would be removed, and remove nothing
    #[arg(long)]
    dry_run: bool,
}

fn prune(args: &PruneArgs) -> anyhow::Result<()> {
    let retention = Retention {
        last: args.keep_last,
        daily: args.keep_daily,
        weekly: args.keep_weekly,
        monthly: args.keep_monthly,
    };
    let (dest, listing) = args.target.open()?;
    let mut by_tenant: BTreeMap<&str, Vec<&Backup>> = BTreeMap::new();
    for b in &listing.backups {
        by_tenant.entry(&b.tenant).or_default().push(b);
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "remove"
    };
    let (mut kept, mut removed) = (0, 0);
    let now = Timestamp::now();
    let mut refused = Vec::new();
    for (tenant, backups) in &by_tenant {
        if let Some(future) = backups
            .iter()
            .find(|b| baluchon_backup::is_from_the_future(b, now))
        {
            // It would rank newest for ever, and every real new backup would go.
            eprintln!(
                "error: not pruning {tenant}: {} is dated {}, in the future (the clock that named it was wrong); remove it by hand",
                future.key, future.created
            );
            refused.push(*tenant);
            continue;
        }
        let times: Vec<Timestamp> = backups.iter().map(|b| b.created).collect();
        for (backup, reasons) in backups.iter().zip(retention.decide(&times)?) {
            if reasons.is_empty() {
                println!("{verb} {}", backup.key);
                if !args.dry_run {
                    baluchon_backup::remove(&dest, backup)?;
                }
                removed += 1;
            } else {
                let reasons: Vec<String> = reasons.iter().map(ToString::to_string).collect();
                println!("keep {} ({})", backup.key, reasons.join(", "));
                kept += 1;
            }
        }
    }
    for object in &listing.incomplete {
        if baluchon_backup::is_abandoned(object, now) {
            println!("{verb} unfinished upload {}", object.key);
            if !args.dry_run {
                baluchon_backup::remove_incomplete(&dest, object)?;
            }
        }
    }
    println!(
        "{kept} backups kept, {removed} {} at {dest}",
        if args.dry_run { "to remove" } else { "removed" }
    );
    anyhow::ensure!(
        refused.is_empty(),
        "not pruned, for a backup dated in the future: {}",
        refused.join(", ")
    );
    Ok(())
}

/// Check that each tenant's newest backup is recent and verifies, for monitoring
///
/// Exits with a non-zero status if a tenant's newest backup is older than --max-age, fails
/// verification, or is missing (with --tenant).
///
/// Example:
///   baluchon backups check s3://bundles/nightly --signer allowed_signers --max-age 26h --json
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct CheckArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    checking: Checking,
    /// The oldest a newest backup may be: a number and s, m, h or d
    #[arg(long, value_name = "AGE", default_value = "26h", value_parser = parse_age)]
    max_age: Duration,
    /// Print JSON on standard output
    #[arg(long)]
    json: bool,
}

fn parse_age(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not an age like 26h"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{text:?}: the unit is s, m, h or d")),
    };
    Ok(Duration::from_secs(n * seconds))
}

fn check(args: &CheckArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    let (dest, listing) = args.target.open()?;
    let trust = args.checking.trust()?;
    let now = Timestamp::now();
    let mut rows = Vec::new();
    let newest = newest_per_tenant(&listing.backups);
    // Nothing at all to check is a failure too: a wrong prefix, or backups that never ran.
    if newest.is_empty() {
        rows.push(serde_json::json!({
            "tenant": args.target.tenant, "ok": false, "newest": null,
            "problem": "no backup",
        }));
    }
    for backup in newest {
        let age = now.duration_since(backup.created);
        let age_seconds = age.as_secs();
        let mut problems = Vec::new();
        if baluchon_backup::is_from_the_future(backup, now) {
            problems.push(format!(
                "dated {}, in the future: the clock that named it was wrong, and newer backups rank below it",
                backup.created
            ));
        }
        if age > jiff::SignedDuration::try_from(args.max_age).unwrap_or(jiff::SignedDuration::MAX) {
            problems.push(format!(
                "{} h old, more than {} h",
                age_seconds / 3600,
                args.max_age.as_secs() / 3600
            ));
        }
        if let Err(e) = args.checking.verify(&dest, backup, &trust, progress) {
            problems.push(format!("{e:#}"));
        }
        rows.push(serde_json::json!({
            "tenant": backup.tenant,
            "ok": problems.is_empty(),
            "newest": backup.key,
            "created_at": backup.created.to_string(),
            "age_seconds": age_seconds,
            "size": backup.size,
            "problem": (!problems.is_empty()).then(|| problems.join("; ")),
        }));
    }
    let failing: Vec<&str> = rows
        .iter()
        .filter(|r| r["ok"] == false)
        .map(|r| r["tenant"].as_str().unwrap_or("any tenant"))
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "destination": dest.to_string(),
                "max_age_seconds": args.max_age.as_secs(),
                "ok": failing.is_empty(),
                "tenants": rows,
            }))?
        );
    } else {
        for r in &rows {
            match r["problem"].as_str() {
                None => println!(
                    "OK   {}: {} ({} s old)",
                    r["tenant"].as_str().unwrap_or(""),
                    r["newest"].as_str().unwrap_or(""),
                    r["age_seconds"]
                ),
                Some(problem) => println!(
                    "FAIL {}: {problem}",
                    r["tenant"].as_str().unwrap_or("any tenant")
                ),
            }
        }
    }
    anyhow::ensure!(
        failing.is_empty(),
        "backups at {dest} need attention: {}",
        failing.join(", ")
    );
    Ok(())
}

pub fn backups(args: &BackupsArgs, progress: &dyn Progress) -> anyhow::Result<()> {
    match &args.command {
        BackupsCommand::List(a) => list(a),
        BackupsCommand::Get(a) => get(a),
        BackupsCommand::Verify(a) => verify(a, progress),
        BackupsCommand::Prune(a) => prune(a),
        BackupsCommand::Check(a) => check(a, progress),
    }
}

/// Schedule a tenant's backups with a systemd timer (or cron)
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    command: ScheduleCommand,
}

#[derive(Debug, Subcommand)]
enum ScheduleCommand {
    Install(InstallArgs),
}

/// Write a systemd service and timer that run `baluchon backup` for one tenant
///
/// The timer starts the service at --on-calendar, delayed by up to --randomized-delay so
/// that many tenants do not start at once, and catches up on a run missed while the machine
/// was off (Persistent=true). systemd never starts a service that is still running, and
/// `baluchon backup` itself refuses a second run for the same tenant (a lock in its state
/// directory). Where systemd is not running, a cron line is printed too (--cron: only the
/// cron line). Arguments after `--` are
/// passed on to `baluchon backup` (for example --identity, --known-hosts, --s3-config).
///
/// Examples:
///   baluchon schedule install --app wordpress --instance blog.example.org --to s3://bundles/nightly --sign-key /etc/baluchon/sign_ed25519 --dry-run
///   baluchon schedule install --path /srv/www/shop --tenant shop --to /var/backups/baluchon --sign-key key -- --work-dir /var/tmp
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct InstallArgs {
    #[command(flatten)]
    tenant: TenantArgs,
    /// Where to store the backups
    #[arg(long, value_name = "DEST")]
    to: String,
    /// The signing key, as a path the service can read
    #[arg(long)]
    sign_key: PathBuf,
    /// When to run, in systemd's OnCalendar syntax (daily, hourly, weekly, *-*-* 02:30, …)
    #[arg(long, default_value = "daily")]
    on_calendar: String,
    /// Longest random delay after --on-calendar, in systemd's syntax
    #[arg(long, default_value = "1h")]
    randomized_delay: String,
    /// Where to write the units
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Print only a cron line, and write no unit
    #[arg(long)]
    cron: bool,
    /// Print the units (or the cron line) and write nothing
    #[arg(long)]
    dry_run: bool,
    /// Print what was written (or would be, with --dry-run) as JSON on standard output
    #[arg(long)]
    json: bool,
    /// Passed on to `baluchon backup`
    #[arg(last = true)]
    backup_args: Vec<String>,
}

/// An argument as systemd's ExecStart= reads it: quoted when needed, `%` and `$` escaped.
fn systemd_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'/' | b'.' | b'_' | b'-' | b':' | b'@' | b'=' | b'+' | b','
                )
        });
    if plain {
        return arg.to_owned();
    }
    let escaped = arg
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    format!("\"{escaped}\"")
}

/// The cron schedule for an OnCalendar shorthand; the minute (and hour) come from the
/// tenant's name, to spread tenants as RandomizedDelaySec does.
fn cron_schedule(on_calendar: &str, tenant: &str) -> anyhow::Result<String> {
    let spread = tenant
        .bytes()
        .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
    let (minute, hour) = (spread % 60, 1 + (spread / 60) % 5);
    Ok(match on_calendar {
        "hourly" => format!("{minute} * * * *"),
        "daily" => format!("{minute} {hour} * * *"),
        "weekly" => format!("{minute} {hour} * * 1"),
        "monthly" => format!("{minute} {hour} 1 * *"),
        other => anyhow::bail!(
            "a cron line can be made for hourly, daily, weekly or monthly, not {other:?}: write it by hand"
        ),
    })
}

fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let tenant = args.tenant.name()?;
    let exe = std::env::current_exe().context("cannot find this program's own file")?;
    let mut command = vec![
        exe.display().to_string(),
        "--no-progress".to_owned(),
        "backup".to_owned(),
    ];
    command.extend(args.tenant.to_args());
    command.extend([
        "--to".to_owned(),
        args.to.clone(),
        "--sign-key".to_owned(),
        args.sign_key.display().to_string(),
    ]);
    command.extend(args.backup_args.iter().cloned());
    // A unit file and a cron line are read line by line: a newline in an argument would
    // start a directive or a job of its own.
    if let Some(arg) = command
        .iter()
        .chain([&tenant, &args.on_calendar, &args.randomized_delay])
        .find(|a| a.chars().any(char::is_control))
    {
        anyhow::bail!("{arg:?} holds a control character, which a schedule cannot carry");
    }

    let cron = || -> anyhow::Result<String> {
        let line: Vec<String> = command
            .iter()
            .map(|a| baluchon_transport::shell_quote(a).replace('%', "\\%"))
            .collect();
        Ok(format!(
            "{} root {} >>/var/log/baluchon-backup-{tenant}.log 2>&1",
            cron_schedule(&args.on_calendar, &tenant)?,
            line.join(" ")
        ))
    };
    if args.cron && args.json {
        let value = serde_json::json!({ "cron": cron()? });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if args.cron {
        println!("# for /etc/cron.d/baluchon-backup-{tenant}");
        println!("{}", cron()?);
        return Ok(());
    }
    let systemd = Path::new("/run/systemd/system").is_dir();

    let unit = format!("baluchon-backup-{tenant}");
    let exec: Vec<String> = command.iter().map(|a| systemd_quote(a)).collect();
    let service = format!(
        "[Unit]\n\
         Description=baluchon backup of tenant {tenant} to {to}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         # AWS_* variables for S3, BALUCHON_SIGN_KEY_PASSPHRASE for an encrypted key.\n\
         EnvironmentFile=-/etc/baluchon/backup.env\n\
         Environment=BALUCHON_STATE_DIR=/var/lib/baluchon\n\
         ExecStart={exec}\n\
         Nice=10\n\
         IOSchedulingClass=idle\n",
        to = args.to,
        exec = exec.join(" "),
    );
    let timer = format!(
        "[Unit]\n\
         Description=Scheduled baluchon backup of tenant {tenant}\n\
         \n\
         [Timer]\n\
         OnCalendar={}\n\
         RandomizedDelaySec={}\n\
         Persistent=true\n\
         \n\
         [Install]\n\
         WantedBy=timers.target\n",
        args.on_calendar, args.randomized_delay
    );
    let service_path = args.unit_dir.join(format!("{unit}.service"));
    let timer_path = args.unit_dir.join(format!("{unit}.timer"));
    if args.json {
        if !args.dry_run {
            fs_err::create_dir_all(&args.unit_dir)?;
            fs_err::write(&service_path, &service)?;
            fs_err::write(&timer_path, &timer)?;
        }
        let value = serde_json::json!({
            "written": !args.dry_run,
            "service": { "path": service_path, "content": service },
            "timer": { "path": timer_path, "content": timer },
            "systemd_running": systemd,
            "cron": if systemd { None } else { Some(cron()?) },
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    if args.dry_run {
        println!(
            "# {}",
            args.unit_dir.join(format!("{unit}.service")).display()
        );
        println!("{service}");
        println!(
            "# {}",
            args.unit_dir.join(format!("{unit}.timer")).display()
        );
        print!("{timer}");
    } else {
        fs_err::create_dir_all(&args.unit_dir)?;
        fs_err::write(args.unit_dir.join(format!("{unit}.service")), service)?;
        fs_err::write(args.unit_dir.join(format!("{unit}.timer")), timer)?;
        println!(
            "wrote {unit}.service and {unit}.timer in {}; start the timer with:",
            args.unit_dir.display()
        );
        println!("  systemctl daemon-reload && systemctl enable --now {unit}.timer");
    }
    if !systemd {
        println!("# systemd is not running here; instead, put this line in /etc/cron.d/baluchon-backup-{tenant}:");
        println!("{}", cron()?);
    }
    Ok(())
}

pub fn schedule(args: &ScheduleArgs) -> anyhow::Result<()> {
    match &args.command {
        ScheduleCommand::Install(a) => install(a),
    }
}

/// Run many tenants' backups
#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    Backup(FleetBackupArgs),
}

/// Back up every tenant of an inventory, N at a time, and print a summary
///
/// The inventory is TOML: a [defaults] table (to, sign_key, work_dir, encrypt_to) and one
/// [[tenant]] table per tenant (app and instance, or path and tenant; to, sign_key and
/// encrypt_to override the defaults; encrypt_to is a list of recipients as --encrypt-to
/// takes them). A tenant with `host = "ssh://user@host"` is backed up on that host by its own
/// baluchon, which must be installed there; the destination and key are then as that host
/// sees them. Exits with status 1 if any tenant failed.
///
/// Example:
///   baluchon fleet backup --inventory /etc/baluchon/fleet.toml --jobs 4
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
struct FleetBackupArgs {
    /// The inventory file
    #[arg(long, value_name = "FILE")]
    inventory: PathBuf,
    /// How many tenants at once
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    #[command(flatten)]
    destination: DestinationArgs,
    /// Print the summary as JSON on standard output
    #[arg(long)]
    json: bool,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Inventory {
    #[serde(default)]
    defaults: Defaults,
    tenant: Vec<Entry>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    to: Option<String>,
    sign_key: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    /// Recipients the backups are encrypted to, as `--encrypt-to` takes them.
    encrypt_to: Option<Vec<String>>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    app: Option<String>,
    instance: Option<String>,
    recipe: Option<PathBuf>,
    path: Option<PathBuf>,
    tenant: Option<String>,
    to: Option<String>,
    sign_key: Option<PathBuf>,
    host: Option<String>,
    /// The baluchon command on `host`.
    baluchon: Option<String>,
    /// Replaces the defaults' recipients (`[]`: this tenant's backups are not encrypted).
    encrypt_to: Option<Vec<String>>,
}

/// A tenant's bar, fed by the export, then by the upload.
struct BarProgress(ProgressBar);

impl Progress for BarProgress {
    fn phase(&self, phase: Phase, total: Option<u64>) {
        self.0.set_message(match phase {
            Phase::Archiving => "exporting",
            _ => "checking",
        });
        self.0.set_position(0);
        self.0.set_length(total.unwrap_or(0));
    }

    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
}

/// A row of the summary: the backup's JSON report (as `backup --json` prints it), or why
/// it failed.
struct Row {
    tenant: String,
    result: Result<serde_json::Value, String>,
    seconds: f64,
}

/// Backs up one tenant of the inventory; returns its report, as `backup --json` prints it.
fn run_entry(
    entry: &Entry,
    defaults: &Defaults,
    destination: &DestinationArgs,
    bar: &ProgressBar,
) -> anyhow::Result<serde_json::Value> {
    let tenant = TenantArgs {
        app: entry.app.clone(),
        instance: entry.instance.clone(),
        recipe: entry.recipe.clone(),
        path: entry.path.clone(),
        tenant: entry.tenant.clone(),
    };
    let to = entry
        .to
        .as_ref()
        .or(defaults.to.as_ref())
        .context("no destination: set `to` in [defaults] or for the tenant")?;
    let sign_key = entry
        .sign_key
        .as_ref()
        .or(defaults.sign_key.as_ref())
        .context("no signing key: set `sign_key` in [defaults] or for the tenant")?;
    let encrypt_to = entry
        .encrypt_to
        .as_ref()
        .or(defaults.encrypt_to.as_ref())
        .map_or(&[][..], Vec::as_slice);
    if let Some(host) = &entry.host {
        bar.set_message(format!("on {host}"));
        let conn = destination.ssh.connect(host)?;
        let mut command = format!(
            "{} --no-progress backup --json",
            baluchon_transport::shell_quote(entry.baluchon.as_deref().unwrap_or("baluchon"))
        );
        let recipients = encrypt_to
            .iter()
            .flat_map(|r| ["--encrypt-to".to_owned(), r.clone()]);
        for arg in tenant
            .to_args()
            .into_iter()
            .chain([
                "--to".to_owned(),
                to.clone(),
                "--sign-key".to_owned(),
                sign_key.display().to_string(),
            ])
            .chain(recipients)
        {
            command.push(' ');
            command.push_str(&baluchon_transport::shell_quote(&arg));
        }
        let mut out = Vec::new();
        conn.run(&command, None, &mut out)?;
        return serde_json::from_slice(&out)
            .with_context(|| format!("baluchon on {host} printed no JSON report"));
    }
    let progress = BarProgress(bar.clone());
    let outcome = back_up(
        &tenant,
        to,
        sign_key,
        &crate::sealed::recipients(encrypt_to)?,
        defaults.work_dir.as_deref(),
        destination,
        &progress,
        &|size| {
            bar.set_message("uploading");
            bar.set_position(0);
            bar.set_length(size);
            Box::new(BarProgress(bar.clone()))
        },
    )?;
    Ok(outcome.json())
}

fn fleet_backup(args: &FleetBackupArgs, bars: bool) -> anyhow::Result<()> {
    let text = fs_err::read_to_string(&args.inventory)?;
    let inventory: Inventory = toml::from_str(&text)
        .with_context(|| format!("{} is not a valid inventory", args.inventory.display()))?;
    let multi = MultiProgress::with_draw_target(
        if bars && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    let style = ProgressStyle::with_template(
        "{prefix:>24} {msg:>10} [{bar:30}] {bytes}/{total_bytes} {elapsed}",
    )?
    .progress_chars("=> ");
    let names: Vec<String> = inventory
        .tenant
        .iter()
        .map(|e| {
            let name = e
                .tenant
                .clone()
                .or_else(|| e.instance.clone())
                .unwrap_or_default();
            match &e.host {
                Some(host) => format!("{name}@{host}"),
                None => name,
            }
        })
        .collect();
    let next = AtomicUsize::new(0);
    let rows = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..args.jobs.clamp(1, inventory.tenant.len().max(1)) {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(entry) = inventory.tenant.get(i) else {
                    break;
                };
                let bar = multi.add(ProgressBar::new(0).with_style(style.clone()));
                bar.set_prefix(names[i].clone());
                bar.set_message("starting");
                let started = Instant::now();
                let result = run_entry(entry, &inventory.defaults, &args.destination, &bar);
                bar.finish_with_message(if result.is_ok() { "done" } else { "FAILED" });
                let row = Row {
                    tenant: names[i].clone(),
                    result: result.map_err(|e| format!("{e:#}")),
                    seconds: started.elapsed().as_secs_f64(),
                };
                if let Ok(mut rows) = rows.lock() {
                    rows.push((i, row));
                }
            });
        }
    });
    let _ = multi.clear();
    let mut rows = rows.into_inner().unwrap_or_default();
    rows.sort_by_key(|(i, _)| *i);
    let failed = rows.iter().filter(|(_, row)| row.result.is_err()).count();
    if args.json {
        let value: Vec<serde_json::Value> = rows
            .iter()
            .map(|(_, row)| {
                let report = row.result.as_ref().ok();
                let mut value = serde_json::json!({
                    "tenant": row.tenant,
                    "ok": row.result.is_ok(),
                    "key": report.map(|r| &r["key"]),
                    "error": row.result.as_ref().err(),
                    "size": report.map(|r| &r["size"]),
                    "seconds": row.seconds,
                });
                // The rest of `backup --json`'s report, among it what the export skipped or
                // saw changing.
                if let (Some(fields), Some(serde_json::Value::Object(report))) =
                    (value.as_object_mut(), report)
                {
                    for (name, field) in report {
                        fields.entry(name.clone()).or_insert_with(|| field.clone());
                    }
                }
                value
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&value)?);
        anyhow::ensure!(failed == 0, "{failed} of {} tenants failed", rows.len());
        return Ok(());
    }
    let width = names.iter().map(String::len).max().unwrap_or(6).max(6);
    println!(
        "{:<width$}  {:<6}  {:>12}  {:>8}  key or error",
        "tenant", "result", "bytes", "seconds"
    );
    for (_, row) in &rows {
        let (status, size, detail) = match &row.result {
            Ok(report) => (
                "ok",
                report["size"].to_string(),
                report["key"].as_str().unwrap_or_default().to_owned(),
            ),
            Err(e) => ("FAILED", "-".to_owned(), e.clone()),
        };
        println!(
            "{:<width$}  {status:<6}  {size:>12}  {:>8.1}  {detail}",
            row.tenant, row.seconds
        );
    }
    for (_, row) in &rows {
        let Ok(report) = &row.result else { continue };
        let count = |name: &str| report[name].as_u64().unwrap_or(0);
        let (skipped, changed, xattrs, flags) = (
            count("skipped_count"),
            count("changed_count"),
            count("xattrs_not_archived"),
            count("inode_flags_not_kept"),
        );
        if skipped + changed + xattrs + flags > 0 {
            println!(
                "{}: {skipped} entries not archived (sockets, FIFOs, devices), {changed} files \
                 changed while read, {xattrs} extended attributes outside user.* not archived, \
                 {flags} entries' inode flags (chattr) not kept; `backup --json` lists them",
                row.tenant
            );
        }
    }
    anyhow::ensure!(failed == 0, "{failed} of {} tenants failed", rows.len());
    Ok(())
}

pub fn fleet(args: &FleetArgs, bars: bool) -> anyhow::Result<()> {
    match &args.command {
        FleetCommand::Backup(a) => fleet_backup(a, bars),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        assert_eq!(parse_age("26h"), Ok(Duration::from_secs(26 * 3600)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_age("2d"), Ok(Duration::from_secs(172_800)));
        assert!(parse_age("h").is_err());
        assert!(parse_age("26").is_err());
        assert!(parse_age("1w").is_err());
    }

    #[test]
    fn exec_start_quoting() {
        assert_eq!(systemd_quote("/usr/bin/baluchon"), "/usr/bin/baluchon");
        assert_eq!(systemd_quote("s3://b/p"), "s3://b/p");
        assert_eq!(systemd_quote("a b\"%$"), "\"a b\\\"%%$$\"");
        assert_eq!(systemd_quote(""), "\"\"");
    }

    #[test]
    fn cron_lines_spread_tenants_and_refuse_what_they_cannot_say() {
        let a = cron_schedule("daily", "shop").unwrap();
        assert_eq!(a, cron_schedule("daily", "shop").unwrap(), "stable");
        let fields: Vec<&str> = a.split(' ').collect();
        assert_eq!(fields.len(), 5);
        assert!(fields[0].parse::<u32>().unwrap() < 60);
        assert!((1..=5).contains(&fields[1].parse::<u32>().unwrap()));
        assert_ne!(
            cron_schedule("daily", "shop").unwrap(),
            cron_schedule("daily", "blog").unwrap()
        );
        assert!(cron_schedule("*-*-* 02:30", "shop").is_err());
    }
}
