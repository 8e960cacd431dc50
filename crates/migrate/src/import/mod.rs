//! Reinstalling an app bundle on this host: verify and stage everything, plan, then apply
//! with a write-ahead journal, and roll back on any failure.
//!
//! Nothing on the host changes before the bundle is fully verified and staged, and every
//! change after that is journaled first. The importer runs no code from the bundle: dumps
//! are restored by the database clients as a new unprivileged user, and the recipe is read
//! as data to know which values to rewrite.
//!
//! Here: the options, the plan and report types, and [`prepare_import`] (lock, verify,
//! stage, plan). `plan` decides what goes where and the room it needs, `checks` refuses
//! service configs and links the bundle may not bring, `apply` makes the changes with the
//! journal (`journal`), `place` moves file sets into place, `host` talks to this host's
//! package manager, accounts, databases and services, and `recover` undoes or finishes an
//! import from its journal.

mod apply;
mod checks;
mod host;
mod journal;
mod place;
mod plan;
mod recover;

use std::path::{Path, PathBuf};
use std::time::Duration;

use baluchon_bundle::{
    Bundle, Destination, ExtractError, ExtractOptions, Policy, Progress, Verified,
};
use baluchon_recipe::{Engine, Health, Slot};
use baluchon_signature::TrustedSigners;
use serde::{Deserialize, Serialize};

pub use self::journal::Change;
use self::journal::Journal;
pub use self::place::{OnConflict, SetPlacement};
use self::plan::Planner;
pub use self::recover::recover;
use self::recover::recover_locked;
use crate::description::{AppDescription, DatabaseDump, APP_DESCRIPTION, APP_RECIPE};
use crate::error::ImportError;
use crate::rewrite::DumpRewrite;

/// Where imports keep their state, unless told otherwise.
pub const DEFAULT_WORK_DIR: &str = "/var/lib/baluchon";

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ImportOptions {
    /// Locks, journals, staging areas and backups live under `<work_dir>/imports/<tenant>`.
    pub work_dir: PathBuf,
    /// The instance's new domain (the bundle's when absent).
    pub domain: Option<String>,
    pub on_conflict: OnConflict,
    pub policy: Policy,
    /// How long the health check may take to pass after services are reloaded.
    pub health_timeout: Duration,
    /// Where this host's own recipes are (besides the built-in ones): the import follows
    /// this host's recipe, never the bundle's, to decide where files go.
    pub recipe_dirs: Vec<PathBuf>,
    /// Existing accounts of this host the bundle's PHP-FPM pools may run as, besides
    /// www-data and the accounts the import creates.
    pub allowed_accounts: Vec<String>,
    /// Import a bundle older (by sequence) than the last one imported for its tenant:
    /// going back to an earlier backup.
    pub allow_older: bool,
    /// Run a PHP app on this PHP version (`8.2`) rather than the bundle's: its version in
    /// socket and pool paths follows, in values and in the app's nginx sites and pools.
    pub php_version: Option<String>,
    /// Paths already on this host (directories, or files) that the app's files may be added
    /// to or replace, besides those of the app's packages and those an earlier import of
    /// the same tenant placed. Exact paths: a directory named does not cover those below.
    pub merge_into: Vec<PathBuf>,
    /// Import a tenant's bundle signed by another key than its last import's.
    pub allow_new_signer: bool,
}

impl ImportOptions {
    pub fn new() -> Self {
        Self {
            work_dir: PathBuf::from(DEFAULT_WORK_DIR),
            domain: None,
            on_conflict: OnConflict::Refuse,
            policy: Policy::default(),
            health_timeout: Duration::from_secs(20),
            recipe_dirs: vec![PathBuf::from(baluchon_recipe::HOST_RECIPE_DIR)],
            allowed_accounts: Vec::new(),
            allow_older: false,
            php_version: None,
            merge_into: Vec::new(),
            allow_new_signer: false,
        }
    }
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self::new()
    }
}

/// One database as it will be recreated here.
#[derive(Debug, Clone, Serialize)]
pub struct PlannedDatabase {
    pub id: String,
    pub engine: Engine,
    /// The name on the source host (the SQLite file, for SQLite).
    pub from: String,
    /// The new database and its new owner (a new password is generated).
    pub to: Option<String>,
    pub user: Option<String>,
    /// Replacements applied to the dump while it is restored.
    pub rewrites: Vec<String>,
}

/// Bytes the apply writes on one filesystem (files copied from staging on another
/// filesystem, databases restored), and bytes free there.
#[derive(Debug, Clone, Serialize)]
pub struct DiskNeed {
    /// Where on that filesystem: the first destination (or database directory) met.
    pub path: PathBuf,
    pub needed: u64,
    /// `None` where the filesystem reports no size (ramfs): not a blocker, a warning.
    pub free: Option<u64>,
}

/// What an import would do, computed without changing anything on the host.
#[derive(Debug, Clone, Serialize)]
pub struct ImportPlan {
    pub bundle_id: String,
    pub tenant: String,
    pub sequence: u64,
    pub app: String,
    pub version: Option<String>,
    pub instance: Rename,
    pub domain: Rename,
    pub packages_to_install: Vec<String>,
    /// System accounts the tenant's files belong to that this host lacks.
    pub groups_to_create: Vec<String>,
    pub users_to_create: Vec<String>,
    pub files: Vec<SetPlacement>,
    pub databases: Vec<PlannedDatabase>,
    /// Values rewritten in the app's config files, and where.
    pub rewrites: Vec<String>,
    /// Secrets the bundle left out, given new values here.
    pub regenerated_secrets: Vec<String>,
    /// Commands that check and reload services, in order.
    pub services: Vec<String>,
    pub on_conflict: OnConflict,
    pub conflicts: Vec<PathBuf>,
    /// Room the apply needs beyond what is staged, on each filesystem it writes to.
    pub disk: Vec<DiskNeed>,
    pub health_check: Option<String>,
    pub warnings: Vec<String>,
    /// Why the import would be refused; empty when it can proceed.
    pub blockers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub plan: ImportPlan,
    /// Every step done, in order.
    pub steps: Vec<String>,
    /// Where displaced files were kept (`--on-conflict replace`).
    pub backup_dir: Option<PathBuf>,
}

/// The outcome of preparing an import.
#[derive(Debug)]
pub enum Prepared {
    /// This exact bundle was imported already; nothing to do.
    AlreadyImported {
        tenant: String,
        bundle_id: String,
    },
    Ready(Box<PreparedImport>),
}

/// What was last imported for a tenant (`imported.json`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Imported {
    bundle_id: String,
    sequence: u64,
    instance: String,
    /// The fingerprint of the key that signed the bundle (absent in records written before
    /// it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signer: Option<String>,
    /// What the tenant's file sets occupy: the directories (or files) its imports created,
    /// and existing ones they were allowed to add to. Its next import may add to these.
    #[serde(default)]
    claimed: Vec<PathBuf>,
}

/// A database, ready to be created and restored.
struct DatabaseTarget {
    dump: DatabaseDump,
    /// The decompressed dump in staging.
    file: PathBuf,
    name: String,
    user: String,
    password: String,
    rewrite: Option<DumpRewrite>,
}

/// A value rewritten in a staged config file.
#[derive(Debug)]
struct ConfigRewrite {
    file: PathBuf,
    kind: RewriteKind,
}

enum RewriteKind {
    Setting { slot: Slot, value: String },
    Text { old: String, new: String },
}

// Written by hand: a new password must never reach a debug log.
impl std::fmt::Debug for DatabaseTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseTarget")
            .field("id", &self.dump.id)
            .field("name", &self.name)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for RewriteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Setting { slot, .. } => write!(f, "Setting({slot:?})"),
            Self::Text { old, new } => write!(f, "Text({old:?} -> {new:?})"),
        }
    }
}

/// A verified, staged import with its plan; [`PreparedImport::apply`] makes it happen.
#[derive(Debug)]
pub struct PreparedImport {
    bundle: Bundle<Verified>,
    _lock: fs_err::File,
    tenant_dir: PathBuf,
    staging: PathBuf,
    tree: PathBuf,
    plan: ImportPlan,
    databases: Vec<DatabaseTarget>,
    config_rewrites: Vec<ConfigRewrite>,
    symlink_retargets: Vec<(PathBuf, PathBuf)>,
    checks: Vec<Vec<String>>,
    reloads: Vec<Vec<String>>,
    health: Option<Health>,
    options: ImportOptions,
    new_instance: String,
    /// What the tenant's file sets occupy after this import (`Imported::claimed`).
    claims: Vec<PathBuf>,
    /// The packages of the app's code, whose paths are nobody's claim.
    code_packages: Vec<String>,
    placeholders: Vec<baluchon_bundle::Placeholder>,
}

fn tenant_dir(work_dir: &Path, tenant: &str) -> PathBuf {
    work_dir.join("imports").join(tenant)
}

/// Takes the tenant's import lock (non-blocking: a concurrent run is refused).
fn lock(dir: &Path, tenant: &str) -> Result<fs_err::File, ImportError> {
    fs_err::create_dir_all(dir)?;
    let path = dir.join("lock");
    let file = fs_err::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(_) => Err(ImportError::Locked {
            tenant: tenant.to_owned(),
            lock: path,
        }),
    }
}

/// Verifies the bundle, stages its tree and dumps, and computes the plan. Changes nothing
/// on the host outside `options.work_dir`, except rolling back an import of the same tenant
/// that was interrupted (whose journal says what to undo).
pub fn prepare_import(
    bundle_path: &Path,
    trust: &TrustedSigners,
    options: &ImportOptions,
    progress: &dyn Progress,
) -> Result<Prepared, ImportError> {
    let authenticated =
        Bundle::open(bundle_path)?.authenticate(trust, &options.policy, progress)?;
    let header = authenticated.header().clone();
    if !header.payload.iter().any(|p| p.path == APP_DESCRIPTION) {
        return Err(ImportError::NotAnApp);
    }
    let dir = tenant_dir(&options.work_dir, &header.tenant);
    let lock = lock(&dir, &header.tenant)?;
    let mut warnings = Vec::new();
    if let Some(recovered) = recover_locked(&dir)? {
        warnings.push(recovered);
    }
    let mut blockers = Vec::new();
    let mut earlier_claims = Vec::new();
    if let Ok(text) = fs_err::read(dir.join("imported.json")) {
        let last: Imported = serde_json::from_slice(&text).map_err(|e| ImportError::Journal {
            path: dir.join("imported.json"),
            reason: e.to_string(),
        })?;
        let signer = &authenticated.signer().fingerprint;
        match &last.signer {
            // A tenant is a name in the bundle: another key's bundle could claim it, and add
            // files to where that tenant's files are.
            Some(theirs) if theirs != signer && !options.allow_new_signer => {
                blockers.push(format!(
                    "tenant {} was last imported from a bundle signed by {theirs}; this one is signed by {signer}: --allow-new-signer if the tenant's key changed",
                    header.tenant
                ));
            }
            Some(_) => earlier_claims.clone_from(&last.claimed),
            // Written by a baluchon that kept neither signers nor claims.
            None => warnings.push(format!(
                "tenant {}'s last import recorded no signing key; this bundle's, {signer}, is the one its next imports must be signed with",
                header.tenant
            )),
        }
        if last.bundle_id == header.bundle_id {
            return Ok(Prepared::AlreadyImported {
                tenant: header.tenant,
                bundle_id: header.bundle_id,
            });
        }
        if header.sequence < last.sequence && options.allow_older {
            warnings.push(format!(
                "going back: this bundle is sequence {}, the last one imported for tenant {} was {} (bundle {}); --allow-older",
                header.sequence, header.tenant, last.sequence, last.bundle_id
            ));
        } else if header.sequence < last.sequence {
            return Err(ImportError::Backwards {
                tenant: header.tenant,
                bundle_id: header.bundle_id,
                sequence: header.sequence,
                last: last.sequence,
            });
        }
    }

    let staging = dir.join("staging");
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    fs_err::create_dir_all(&staging)?;
    // Until the prepared import owns it, a failure removes the staging area.
    let mut cleanup = RemoveOnDrop(Some(staging.clone()));
    // Staged dumps and configs hold the tenant's data and secrets: root only.
    fs_err::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let tree = staging.join("tree");
    let mut extract = ExtractOptions::default();
    // Apps link into their packaged code (/usr/share/…); such links are checked below
    // against the file sets, and created as links only.
    extract.allow_outside_symlinks = true;
    // Accounts the tenant's files belong to and this host lacks are created by the apply,
    // which then gives the staged entries to them.
    extract.placeholder_ids_for_unknown_names = true;
    let (bundle, staged) = authenticated
        .extract(Destination::lock(&tree)?, &extract, progress)
        .map_err(|e| match e {
            // The flags the tree import suggests do not apply here: staging is ours.
            baluchon_bundle::Error::Extract(ExtractError::FilesystemLacks { dir, lacking }) => {
                ImportError::WorkDirLacks { dir, lacking }
            }
            other => other.into(),
        })?;
    let extracted = staged.report().clone();
    let placeholders = extracted.placeholders.clone();
    staged.switch(false)?;
    // What the source could not or did not capture is said again here: an import never
    // looks complete while something is missing.
    if extracted.skipped_in_bundle > 0 {
        warnings.push(format!(
            "{} entries could not be archived at the source (sockets, FIFOs, devices); the bundle's index lists them",
            extracted.skipped_in_bundle
        ));
    }
    for (path, from, to) in &extracted.modes_adjusted {
        warnings.push(format!(
            "{path}: mode {from:o} applied as {to:o} (setuid, setgid or world-writable)"
        ));
    }

    let description: AppDescription = {
        let mut bytes = Vec::new();
        bundle.copy_payload(APP_DESCRIPTION, &mut bytes)?;
        serde_json::from_slice(&bytes).map_err(|e| ImportError::Description {
            member: APP_DESCRIPTION,
            reason: e.to_string(),
        })?
    };
    // The bundle's recipe is what the source used; this host's recipe for the same app is
    // what decides where files go and what is rewritten (a bundle cannot widen it).
    let recipe = baluchon_recipe::Catalogue::load(&options.recipe_dirs)?
        .get(&description.app)?
        .clone();
    let mut sent = Vec::new();
    bundle.copy_payload(APP_RECIPE, &mut sent)?;
    if sent != recipe.text().as_bytes() {
        warnings.push(format!(
            "the bundle was made with a {} recipe that differs from this host's ({}); this host's is used",
            description.app,
            recipe.origin()
        ));
    }
    for omitted in &description.omitted {
        warnings.push(format!("not in the bundle: {omitted}"));
    }
    if !description.excluded.is_empty() {
        warnings.push(format!(
            "{} entries were left out at export as the recipe says (caches, unmodified packaged files); {} lists each",
            description.excluded.len(),
            APP_DESCRIPTION
        ));
    }

    let other_claims = other_tenants_claims(&options.work_dir, &dir, &mut warnings);
    let mut planner = Planner {
        recipe: &recipe,
        description: &description,
        options,
        tree: &tree,
        warnings,
        blockers,
        new_accounts: placeholders.iter().map(|p| p.name.clone()).collect(),
        earlier_claims: &earlier_claims,
        other_claims: &other_claims,
        claims: earlier_claims.clone(),
    };
    let mut planned = planner.plan(&bundle, &staging, &header)?;
    for p in &placeholders {
        let list = if p.group {
            &mut planned.plan.groups_to_create
        } else {
            &mut planned.plan.users_to_create
        };
        list.push(p.name.clone());
    }
    cleanup.0 = None;
    Ok(Prepared::Ready(Box::new(PreparedImport {
        bundle,
        _lock: lock,
        tenant_dir: dir,
        staging,
        tree,
        plan: planned.plan,
        databases: planned.databases,
        config_rewrites: planned.config_rewrites,
        symlink_retargets: planned.symlink_retargets,
        checks: planned.checks,
        reloads: planned.reloads,
        health: planned.health,
        options: options.clone(),
        new_instance: planned.new_instance,
        claims: planned.claims,
        code_packages: recipe.definition().packages.code.clone(),
        placeholders,
    })))
}

/// What the imports of tenants other than the one in `own_dir` occupy, by tenant. A record
/// that cannot be read protects nothing, and the plan says so.
fn other_tenants_claims(
    work_dir: &Path,
    own_dir: &Path,
    warnings: &mut Vec<String>,
) -> Vec<(String, PathBuf)> {
    let Ok(tenants) = fs_err::read_dir(work_dir.join("imports")) else {
        return Vec::new();
    };
    let mut claims = Vec::new();
    for dir in tenants.filter_map(Result::ok).map(|e| e.path()) {
        let record = dir.join("imported.json");
        if dir == own_dir || !record.exists() {
            continue;
        }
        let tenant = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match fs_err::read(&record)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                serde_json::from_slice::<Imported>(&text).map_err(|e| e.to_string())
            }) {
            Ok(imported) => claims.extend(imported.claimed.into_iter().map(|c| (tenant.clone(), c))),
            Err(e) => warnings.push(format!(
                "{} cannot be read ({e}): what tenant {tenant}'s imports placed is not protected from this one",
                record.display()
            )),
        }
    }
    claims
}

/// A creation that failed did not happen (a database or account that is there is not
/// ours): the journal says so, and rollback leaves it alone.
fn made<T>(journal: &mut Journal, result: Result<T, ImportError>) -> Result<T, ImportError> {
    if result.is_err() {
        journal.record(&Change::NotMade)?;
    }
    result
}

/// Removes a directory when dropped, unless emptied first.
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = fs_err::remove_dir_all(dir);
        }
    }
}

impl Drop for PreparedImport {
    /// A plan that is not applied leaves nothing staged. (After an apply the staging area
    /// is gone already; after a kill, recovery removes it.) Best effort: a failure here
    /// leaves a directory the next import of this tenant removes.
    fn drop(&mut self) {
        if self.staging.exists() {
            let _ = fs_err::remove_dir_all(&self.staging);
        }
    }
}
