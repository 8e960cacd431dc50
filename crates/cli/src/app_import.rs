//! `baluchon import` of an app bundle, and `baluchon recover`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use baluchon_bundle::Progress;
use baluchon_migrate::{prepare_import, recover, ImportError, ImportOptions, ImportPlan, Prepared};
use baluchon_signature::TrustedSigners;
use clap::Args;

/// Test hooks (docs/testing.md): fail, or die, at a named step of the apply.
const FAIL_AT: &str = "BALUCHON_TEST_FAIL_AT";
const KILL_AT: &str = "BALUCHON_TEST_KILL_AT";

pub fn run(
    bundle: &Path,
    trust: &TrustedSigners,
    options: &ImportOptions,
    plan_only: bool,
    json: bool,
    progress: &dyn Progress,
) -> anyhow::Result<()> {
    let failed = || format!("importing {} failed", bundle.display());
    let prepared = match prepare_import(bundle, trust, options, progress).with_context(failed)? {
        Prepared::AlreadyImported { tenant, bundle_id } => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"already_imported": true, "tenant": tenant, "bundle_id": bundle_id})
                );
            } else {
                println!(
                    "bundle {bundle_id} of tenant {tenant} is already imported here: nothing to do"
                );
            }
            return Ok(());
        }
        Prepared::Ready(prepared) => prepared,
    };
    if plan_only {
        if json {
            println!("{}", serde_json::to_string_pretty(prepared.plan())?);
        } else {
            print_plan(prepared.plan());
            println!("plan only: nothing was changed");
        }
        if !prepared.plan().blockers.is_empty() {
            anyhow::bail!("the import would be refused (see above)");
        }
        return Ok(());
    }
    let fail_at = std::env::var(FAIL_AT).ok();
    let kill_at = std::env::var(KILL_AT).ok();
    let hook = |step: &str| {
        if kill_at.as_deref() == Some(step) {
            // Dies like a killed process would: no destructor, no rollback.
            std::process::abort();
        }
        if fail_at.as_deref() == Some(step) {
            return Err(ImportError::Hook {
                step: step.to_owned(),
            });
        }
        Ok(())
    };
    let report = prepared.apply(&hook).map_err(|e| {
        let outcome = match e {
            // Refused before its first change: there was nothing to roll back.
            ImportError::Blocked(_)
            | ImportError::DestinationLacks { .. }
            | ImportError::ProbeFailed { .. } => "nothing was changed",
            ImportError::RollbackFailed { .. } => "and the host could not be fully rolled back",
            _ => "the host was rolled back",
        };
        anyhow::Error::new(e).context(format!("{}; {outcome}", failed()))
    })?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for warning in &report.plan.warnings {
        println!("warning: {warning}");
    }
    for step in &report.steps {
        println!("done: {step}");
    }
    if let Some(dir) = &report.backup_dir {
        println!("files this import displaced are kept in {}", dir.display());
    }
    if !report.plan.regenerated_secrets.is_empty() {
        println!(
            "regenerated (the bundle left them out): {}",
            report.plan.regenerated_secrets.join(", ")
        );
    }
    println!(
        "imported {} instance {} as {} (bundle {}, sequence {})",
        report.plan.app,
        report.plan.instance.from,
        report.plan.instance.to,
        report.plan.bundle_id,
        report.plan.sequence
    );
    Ok(())
}

fn print_plan(plan: &ImportPlan) {
    println!(
        "{} {} → {} (domain {} → {}), bundle {} sequence {}",
        plan.app,
        plan.instance.from,
        plan.instance.to,
        plan.domain.from,
        plan.domain.to,
        plan.bundle_id,
        plan.sequence
    );
    if !plan.packages_to_install.is_empty() {
        println!("install packages: {}", plan.packages_to_install.join(", "));
    }
    if !plan.groups_to_create.is_empty() {
        println!("create system groups: {}", plan.groups_to_create.join(", "));
    }
    if !plan.users_to_create.is_empty() {
        println!("create system users: {}", plan.users_to_create.join(", "));
    }
    for db in &plan.databases {
        match (&db.to, &db.user) {
            (Some(to), Some(user)) => println!(
                "database {}: {} {} → new database {to}, owner {user} (new password)",
                db.id, db.engine, db.from
            ),
            _ => println!(
                "database {}: {} {} (file, placed with the files)",
                db.id, db.engine, db.from
            ),
        }
        for rewrite in &db.rewrites {
            println!("  rewrite {rewrite}");
        }
    }
    for rewrite in &plan.rewrites {
        println!("rewrite {rewrite}");
    }
    for set in &plan.files {
        println!(
            "files {} → {}: {} entries, {} new, {} already identical, {} conflicting",
            set.from.display(),
            set.to.display(),
            set.entries,
            set.creates,
            set.identical,
            set.conflicts.len()
        );
    }
    let policy = match plan.on_conflict {
        baluchon_migrate::OnConflict::Refuse => "refused: --on-conflict refuse",
        baluchon_migrate::OnConflict::Replace => "moved to the backup directory",
        baluchon_migrate::OnConflict::Rename => "renamed beside itself",
    };
    for conflict in plan.conflicts.iter().take(10) {
        println!("  conflict: {} ({policy})", conflict.display());
    }
    if plan.conflicts.len() > 10 {
        println!(
            "  … and {} more conflicts (--json lists them all)",
            plan.conflicts.len() - 10
        );
    }
    for service in &plan.services {
        println!("run {service}");
    }
    if let Some(url) = &plan.health_check {
        println!("health check: GET {url}");
    }
    if plan.disk.is_empty() {
        println!("disk: nothing to write beyond what is staged");
    }
    for need in &plan.disk {
        println!(
            "disk: {} bytes needed on the filesystem of {}, {}",
            need.needed,
            need.path.display(),
            need.free
                .map_or_else(|| "free unknown".to_owned(), |free| format!("{free} free"))
        );
    }
    for warning in &plan.warnings {
        println!("warning: {warning}");
    }
    for blocker in &plan.blockers {
        println!("refused: {blocker}");
    }
}

/// Finish or undo an app import that was interrupted
///
/// A killed import leaves a journal: this rolls the host back to where it was before the
/// import, or, if the import had passed its health check and committed, completes it. The
/// next `baluchon import` of the same tenant does this too.
///
/// Example:
///   baluchon recover --tenant blog.example.org
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct RecoverArgs {
    /// The tenant whose import to recover
    #[arg(long)]
    tenant: String,
    /// Where imports keep their state
    #[arg(long, default_value = baluchon_migrate::DEFAULT_WORK_DIR)]
    work_dir: PathBuf,
    /// Print the result as JSON on standard output
    #[arg(long)]
    json: bool,
}

pub fn recover_command(args: &RecoverArgs) -> anyhow::Result<()> {
    let outcome = recover(&args.work_dir, &args.tenant)
        .with_context(|| format!("recovering the import of {} failed", args.tenant))?;
    if args.json {
        let value = serde_json::json!({
            "tenant": args.tenant,
            "interrupted_import": outcome.is_some(),
            "outcome": outcome,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    match outcome {
        Some(message) => println!("{message}"),
        None => println!("no interrupted import of {}: nothing to do", args.tenant),
    }
    Ok(())
}
