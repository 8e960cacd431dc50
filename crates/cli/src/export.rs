//! `baluchon export` and `baluchon keygen`.

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use baluchon_bundle::{export_tree, ExportOptions, ExportReport};
use baluchon_signature::SigningKey;
use clap::Args;

/// Export an app instance, or a directory tree, into a new signed bundle
///
/// With --app and --instance, the app's recipe says what to capture: its files by role,
/// consistent dumps of its databases, the packages and services it needs (see `baluchon
/// detect`). With --path, one directory tree is exported as it is.
///
/// The files are read once and streamed into OUTPUT; symlinks are stored as links and never
/// followed. Sockets, FIFOs and devices cannot be archived: they are listed in the bundle
/// and in this command's report. Nothing is left under OUTPUT if the export fails.
///
/// Examples:
///   baluchon export --app wordpress --instance blog.example.org --sign-key ~/.ssh/baluchon_ed25519 -o blog.baluchon
///   baluchon export --app wordpress --instance blog.example.org --plan
///   baluchon export --path /srv/www/shop --tenant shop --sign-key ~/.ssh/baluchon_ed25519 -o shop.baluchon
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct ExportArgs {
    /// App whose instance to export (a recipe name: wordpress, dokuwiki, custom, or one of
    /// the host's own in /etc/baluchon/recipes)
    #[arg(long, requires = "instance", conflicts_with = "path")]
    app: Option<String>,
    /// The instance of --app to export, as `baluchon detect` names it
    #[arg(long, requires = "app")]
    instance: Option<String>,
    /// Use this recipe file for --app instead of the installed one
    #[arg(long, requires = "app")]
    recipe: Option<PathBuf>,
    /// Show what would be captured, with sizes, and write nothing
    #[arg(long, requires = "app")]
    plan: bool,
    /// Export on another host, over SSH: ssh://user@host[:port]. The export runs there
    /// (baluchon is uploaded if that host lacks this version), signed with --sign-key, a
    /// key file on that host; the bundle comes back to --output here, checked by sha256
    #[arg(long, value_name = "URL", requires = "app")]
    from: Option<String>,
    #[command(flatten)]
    ssh: crate::remote::SshArgs,
    #[command(flatten)]
    retry: crate::remote::RetryArgs,
    /// Directory to export; its contents become the bundle's tree
    #[arg(long, required_unless_present = "app", requires = "tenant")]
    path: Option<PathBuf>,
    /// Tenant name recorded in the bundle (letters, digits, '.', '_', '-') [default with
    /// --app: the instance name]
    #[arg(long)]
    tenant: Option<String>,
    /// OpenSSH ed25519 private key that signs the bundle (passphrase from
    /// BALUCHON_SIGN_KEY_PASSPHRASE, or asked on the terminal)
    #[arg(long, env = "BALUCHON_SIGN_KEY", required_unless_present = "plan")]
    sign_key: Option<PathBuf>,
    /// Bundle file to create; it must not exist yet
    #[arg(short, long, required_unless_present = "plan")]
    output: Option<PathBuf>,
    /// Sequence number of this bundle for the tenant [default: one more than the last
    /// number an export of this tenant took on this machine, even one that failed]
    #[arg(long)]
    sequence: Option<u64>,
    /// Encrypt the bundle to this recipient (repeatable): an age key (age1…), an SSH public
    /// key (ssh-ed25519 …, ssh-rsa …), or a file of them, one per line. Anyone can still
    /// verify the encrypted bundle; only the recipients can open it
    #[arg(long, value_name = "RECIPIENT")]
    encrypt_to: Vec<String>,
    /// App exports without --encrypt-to: keep secret values (passwords, keys) in the
    /// bundle's config files even where the import cannot regenerate them. Without it, the
    /// secrets the import regenerates are left out, and any other one stops the export
    #[arg(long, requires = "app")]
    allow_clear_secrets: bool,
    /// Print the report as JSON on standard output
    #[arg(long)]
    json: bool,
}

pub fn run(args: &ExportArgs, progress: &crate::progress::CliProgress) -> anyhow::Result<()> {
    if let (Some(url), Some(app), Some(instance)) = (&args.from, &args.app, &args.instance) {
        let mut remote_args = vec![
            "export".to_owned(),
            "--app".to_owned(),
            app.clone(),
            "--instance".to_owned(),
            instance.clone(),
        ];
        if let Some(tenant) = &args.tenant {
            remote_args.extend(["--tenant".to_owned(), tenant.clone()]);
        }
        if let Some(sequence) = args.sequence {
            remote_args.extend(["--sequence".to_owned(), sequence.to_string()]);
        }
        if args.json {
            remote_args.push("--json".to_owned());
        }
        if args.allow_clear_secrets {
            remote_args.push("--allow-clear-secrets".to_owned());
        }
        // Parsed here, so that a file of recipients is read on this side.
        for recipient in crate::sealed::recipients(&args.encrypt_to)? {
            remote_args.extend(["--encrypt-to".to_owned(), format!("{recipient:?}")]);
        }
        if args.plan {
            remote_args.push("--plan".to_owned());
            return crate::remote::export(
                url,
                &args.ssh,
                &args.retry,
                &remote_args,
                None,
                None,
                progress,
            );
        }
        let (Some(sign_key), Some(output)) = (&args.sign_key, &args.output) else {
            anyhow::bail!("--sign-key (a key file on the other host) and --output are needed");
        };
        return crate::remote::export(
            url,
            &args.ssh,
            &args.retry,
            &remote_args,
            Some(sign_key),
            Some(output),
            progress,
        );
    }
    if let (Some(app), Some(instance)) = (&args.app, &args.instance) {
        let recipe = crate::app::load_recipe(app, args.recipe.as_deref())?;
        let resolved = crate::app::resolve(&recipe, instance)?;
        if args.plan {
            return crate::app::print_plan(&resolved, args.json);
        }
        let (Some(sign_key), Some(output)) = (&args.sign_key, &args.output) else {
            anyhow::bail!("--sign-key and --output are needed to write a bundle");
        };
        let key = load_signing_key(sign_key)?;
        let tenant = args.tenant.clone().unwrap_or_else(|| instance.clone());
        return with_sequence(&tenant, args.sequence, |sequence| {
            sealed_if_asked(args, output, &key, |output| {
                let keep_secrets = args.allow_clear_secrets || !args.encrypt_to.is_empty();
                crate::app::capture(
                    &recipe,
                    &resolved,
                    &tenant,
                    sequence,
                    output,
                    &key,
                    progress,
                    args.json,
                    keep_secrets,
                )
            })
        });
    }
    let (Some(path), Some(tenant), Some(sign_key), Some(output)) =
        (&args.path, &args.tenant, &args.sign_key, &args.output)
    else {
        anyhow::bail!("--path, --tenant, --sign-key and --output are needed to export a tree");
    };
    let key = load_signing_key(sign_key)?;
    with_sequence(tenant, args.sequence, |sequence| {
        sealed_if_asked(args, output, &key, |output| {
            let mut options = ExportOptions::new(path.clone(), tenant.clone(), output.to_owned());
            options.sequence = sequence;
            let report = export_tree(&options, &key, progress)
                .with_context(|| format!("exporting {} failed", path.display()))?;
            print_report(&report, args.json)
        })
    })
}

/// Runs `export` into `output`, or, with --encrypt-to, into a private file beside it that
/// is then encrypted into `output` and removed.
fn sealed_if_asked(
    args: &ExportArgs,
    output: &Path,
    key: &SigningKey,
    export: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if args.encrypt_to.is_empty() {
        return export(output);
    }
    let recipients = crate::sealed::recipients(&args.encrypt_to)?;
    anyhow::ensure!(
        fs_err::symlink_metadata(output).is_err(),
        "{} already exists; choose another output or remove it",
        output.display()
    );
    let dir = crate::sealed::inner_dir(output)?;
    let inner = dir.path().join("inner.baluchon");
    export(&inner)?;
    crate::sealed::seal_into(&inner, &recipients, key, output, args.json)
}

/// Runs `export` with the tenant's next sequence number (or `explicit`). The number is
/// taken before the export starts, under a lock, so that exports of a tenant running at once
/// each get their own; a failed export leaves a gap, which is harmless: importers only need
/// the numbers to go up.
fn with_sequence(
    tenant: &str,
    explicit: Option<u64>,
    export: impl FnOnce(u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let sequence = match SequenceFile::for_tenant(tenant) {
        Some(counter) => counter.take(explicit)?,
        None => explicit.unwrap_or(1),
    };
    export(sequence)
}

/// What an export did, for `--json`: the bundle, and [`notices_json`].
pub fn report_json(report: &ExportReport) -> serde_json::Value {
    let files = &report.header.files;
    let mut value = serde_json::json!({
        "output": report.output,
        "bundle_size": report.bundle_size,
        "bundle_id": report.header.bundle_id,
        "tenant": report.header.tenant,
        "sequence": report.header.sequence,
        "signer": report.signer,
        "entries": files.entries,
        "content_bytes": files.content_bytes,
    });
    if let Some(fields) = value.as_object_mut() {
        fields.extend(notices_json(report));
    }
    value
}

/// What an export could not keep as it was, for `--json`: entries skipped, files changed
/// while read, attributes not archived, and the leftovers of killed runs it removed.
pub fn notices_json(report: &ExportReport) -> serde_json::Map<String, serde_json::Value> {
    let files = &report.header.files;
    let mut fields = serde_json::Map::new();
    let skipped = report
        .skipped
        .iter()
        .map(|(p, r)| serde_json::json!({"path": p.to_string(), "reason": r.to_string()}));
    fields.insert("skipped".into(), skipped.collect());
    fields.insert("skipped_count".into(), files.skipped.into());
    let changed = report
        .changed
        .iter()
        .map(|(p, c)| serde_json::json!({"path": p.to_string(), "change": c}));
    fields.insert("changed".into(), changed.collect());
    fields.insert("changed_count".into(), files.changed.into());
    fields.insert(
        "xattrs_not_archived".into(),
        report.xattrs_not_archived.into(),
    );
    fields.insert(
        "inode_flags_not_kept".into(),
        report.inode_flags.entries.into(),
    );
    let flagged = report
        .inode_flags
        .first
        .iter()
        .map(|(p, f)| serde_json::json!({"path": p, "flags": f}));
    fields.insert("inode_flags".into(), flagged.collect());
    fields.insert(
        "removed_leftovers".into(),
        serde_json::json!(report.removed_leftovers),
    );
    fields
}

pub fn print_report(report: &ExportReport, json: bool) -> anyhow::Result<()> {
    let files = &report.header.files;
    if json {
        let value = report_json(report);
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!(
        "wrote {} ({} bytes): tenant {}, sequence {}, {} entries, {} bytes of file content",
        report.output.display(),
        report.bundle_size,
        report.header.tenant,
        report.header.sequence,
        files.entries,
        files.content_bytes
    );
    println!(
        "bundle id {}, signed by {}",
        report.header.bundle_id, report.signer
    );
    print_notices(report);
    Ok(())
}

/// The human form of [`notices_json`].
pub fn print_notices(report: &ExportReport) {
    let files = &report.header.files;
    if files.skipped > 0 {
        println!(
            "{} entries could not be archived and are listed in the bundle:",
            files.skipped
        );
        for (path, reason) in &report.skipped {
            println!("  skipped {path}: {reason}");
        }
    }
    if report.xattrs_not_archived > 0 {
        println!(
            "{} extended attributes outside user.* (SELinux labels, capabilities, ACLs) were not archived; each is named in the bundle's index",
            report.xattrs_not_archived
        );
    }
    if report.inode_flags.entries > 0 {
        println!(
            "{} entries have inode flags (chattr), which bundles do not keep; set them again after import:",
            report.inode_flags.entries
        );
        for (path, flags) in &report.inode_flags.first {
            println!("  {flags} {path}");
        }
    }
    for leftover in &report.removed_leftovers {
        println!(
            "removed {}, left by an export of the same name that was interrupted",
            leftover.display()
        );
    }
    if files.changed > 0 {
        println!(
            "{} files changed while they were read (archived as first seen):",
            files.changed
        );
        for (path, change) in &report.changed {
            println!("  changed {path}: {change:?}");
        }
    }
}

pub fn load_signing_key(path: &Path) -> anyhow::Result<SigningKey> {
    SigningKey::from_openssh_file(path, || passphrase("BALUCHON_SIGN_KEY_PASSPHRASE", path))
        .with_context(|| format!("cannot use the signing key {}", path.display()))
}

/// A key file's passphrase: from the environment variable `var`, else asked on the
/// terminal; none without either.
pub fn passphrase(var: &str, path: &Path) -> Option<String> {
    if let Ok(secret) = std::env::var(var) {
        return Some(secret);
    }
    if std::io::stdin().is_terminal() {
        return rpassword::prompt_password(format!("passphrase for {}: ", path.display())).ok();
    }
    None
}

/// The per-tenant sequence counter, in `$XDG_STATE_HOME/baluchon/sequences/TENANT`.
struct SequenceFile {
    path: PathBuf,
    /// One lock for every tenant's counter: it is held for a read and a write.
    lock_path: PathBuf,
}

impl SequenceFile {
    fn for_tenant(tenant: &str) -> Option<Self> {
        let base = std::env::var_os("BALUCHON_STATE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_STATE_HOME").map(|d| PathBuf::from(d).join("baluchon"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state/baluchon"))
            })?;
        // An invalid name has no counter; the export then refuses it.
        baluchon_bundle::is_valid_tenant(tenant).then(|| Self {
            path: base.join("sequences").join(tenant),
            lock_path: base.join("sequences.lock"),
        })
    }

    /// The next number, or `explicit`, recorded at once as taken (never moving the counter
    /// backwards, even for an explicit lower number).
    fn take(&self, explicit: Option<u64>) -> anyhow::Result<u64> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir)?;
        let lock = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)?;
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive)
            .with_context(|| format!("cannot lock {}", self.lock_path.display()))?;
        let last = self.last()?;
        let sequence = explicit.unwrap_or(last + 1);
        self.record(sequence.max(last))?;
        Ok(sequence)
    }

    /// The last number taken; 0 before the first export.
    fn last(&self) -> anyhow::Result<u64> {
        match fs_err::read_to_string(&self.path) {
            Ok(text) => Ok(text
                .trim()
                .parse::<u64>()
                .with_context(|| format!("{} does not hold a number", self.path.display()))?),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    fn record(&self, sequence: u64) -> anyhow::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        fs_err::create_dir_all(dir)?;
        // Written aside and renamed: a concurrent export never reads half a number.
        let mut partial = tempfile::NamedTempFile::new_in(dir)?;
        std::io::Write::write_all(&mut partial, format!("{sequence}\n").as_bytes())?;
        partial
            .persist(&self.path)
            .map_err(|e| anyhow::Error::new(e.error).context(self.path.display().to_string()))?;
        Ok(())
    }
}

/// Create a new ed25519 signing key for bundles
///
/// Writes the private key to FILE (mode 0600) and the public key to FILE.pub, and prints
/// the allowed_signers line to give to whoever must verify your bundles.
///
/// Example:
///   baluchon keygen -o ~/.ssh/baluchon_ed25519 --principal exports@oldhost.example
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct KeygenArgs {
    /// Private key file to create
    #[arg(short, long)]
    output: PathBuf,
    /// Who signs: the name verifiers will see in allowed_signers
    #[arg(long, default_value = "bundles@localhost")]
    principal: String,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

pub fn keygen(args: &KeygenArgs) -> anyhow::Result<()> {
    let key = SigningKey::generate(&args.principal)?;
    key.write_openssh_file(&args.output)?;
    // FILE.pub as ssh-keygen names it: with_extension would turn key.ed25519 into key.pub.
    let mut public = args.output.clone().into_os_string();
    public.push(".pub");
    let public = PathBuf::from(public);
    fs_err::write(&public, format!("{}\n", key.public_key_line()))?;
    let allowed_signers = format!(
        "{} namespaces=\"{}\" {}",
        args.principal,
        baluchon_bundle::SIGNATURE_NAMESPACE,
        key.public_key_line()
    );
    if args.json {
        let value = serde_json::json!({
            "private_key": args.output,
            "public_key": public,
            "fingerprint": key.fingerprint(),
            "allowed_signers": allowed_signers,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("private key: {}", args.output.display());
    println!("public key:  {} ({})", public.display(), key.fingerprint());
    println!("allowed_signers line for verifiers:");
    println!("{allowed_signers}");
    Ok(())
}
