//! Reinstalling an app bundle on this host: verify and stage everything, plan, then apply
//! with a write-ahead journal, and roll back on any failure.
//!
//! Nothing on the host changes before the bundle is fully verified and staged, and every
//! change after that is journaled first. The importer runs no code from the bundle: dumps
//! are restored by the database clients as a new unprivileged user, and the recipe is read
//! as data to know which values to rewrite.

mod host;
mod journal;
mod place;

use fs_err::os::unix::fs::OpenOptionsExt as _;
use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baluchon_bundle::{Bundle, Destination, ExtractOptions, Policy, Progress, Verified};
use baluchon_recipe::{
    expand_template, template_placeholders, template_uses_empty, Engine, Health, Recipe,
    RehostSource, ServiceKind, Slot,
};
use baluchon_signature::TrustedSigners;
use serde::{Deserialize, Serialize};

pub use self::journal::Change;
use self::journal::Journal;
pub use self::place::{OnConflict, SetPlacement};
use crate::description::{AppDescription, DatabaseDump, APP_DESCRIPTION, APP_RECIPE};
use crate::error::ImportError;
use crate::rewrite::{rewrite_dump, DumpRewrite};

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
    pub free: u64,
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
    _bundle: Bundle<Verified>,
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
    if let Ok(text) = fs_err::read(dir.join("imported.json")) {
        let last: Imported = serde_json::from_slice(&text).map_err(|e| ImportError::Journal {
            path: dir.join("imported.json"),
            reason: e.to_string(),
        })?;
        if last.bundle_id == header.bundle_id {
            return Ok(Prepared::AlreadyImported {
                tenant: header.tenant,
                bundle_id: header.bundle_id,
            });
        }
        if header.sequence < last.sequence {
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
    let (bundle, staged) = authenticated.extract(Destination::lock(&tree)?, &extract, progress)?;
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

    let mut planner = Planner {
        recipe: &recipe,
        description: &description,
        options,
        tree: &tree,
        warnings,
        blockers: Vec::new(),
        new_accounts: placeholders.iter().map(|p| p.name.clone()).collect(),
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
        _bundle: bundle,
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
        placeholders,
    })))
}

/// What planning computes, beyond the plan shown to the user.
struct Planned {
    plan: ImportPlan,
    databases: Vec<DatabaseTarget>,
    config_rewrites: Vec<ConfigRewrite>,
    symlink_retargets: Vec<(PathBuf, PathBuf)>,
    checks: Vec<Vec<String>>,
    reloads: Vec<Vec<String>>,
    health: Option<Health>,
    new_instance: String,
}

struct Planner<'a> {
    recipe: &'a Recipe,
    description: &'a AppDescription,
    options: &'a ImportOptions,
    tree: &'a Path,
    warnings: Vec<String>,
    blockers: Vec<String>,
    /// Accounts the apply will create.
    new_accounts: Vec<String>,
}

/// A name for a new database or user: the instance's letters and digits, `_` for the
/// rest, at most 32 bytes (MySQL's user name limit), unique on this host.
fn free_name(
    instance: &str,
    taken: impl Fn(&str) -> Result<bool, ImportError>,
) -> Result<String, ImportError> {
    let mut base: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if !base.starts_with(|c: char| c.is_ascii_lowercase()) {
        base.insert_str(0, "db_");
    }
    base.truncate(28);
    let mut name = base.clone();
    let mut n = 2;
    while taken(&name)? {
        name = format!("{base}_{n}");
        n += 1;
    }
    Ok(name)
}

impl Planner<'_> {
    fn plan(
        &mut self,
        bundle: &Bundle<Verified>,
        staging: &Path,
        header: &baluchon_bundle::BundleHeader,
    ) -> Result<Planned, ImportError> {
        let d = self.description;
        let rules = &self.recipe.definition().values;
        let domain_to = self
            .options
            .domain
            .clone()
            .unwrap_or_else(|| d.domain.clone());
        let instance_to = if d.instance == d.domain {
            domain_to.clone()
        } else {
            d.instance.clone()
        };

        // Values as they were, and as they will be.
        let mut old: BTreeMap<String, String> = d.values.clone();
        old.insert("instance".to_owned(), d.instance.clone());
        let mut new = old.clone();
        new.insert("instance".to_owned(), instance_to.clone());
        let domain_value = self.recipe.definition().detect.domain.clone();
        if let Some(v) = &domain_value {
            new.insert(v.clone(), domain_to.clone());
        }

        // Databases: always new ones, named after the instance, with a new owner.
        std::fs::create_dir_all(staging.join("db"))?;
        let mut databases = Vec::new();
        let mut planned_dbs = Vec::new();
        for dump in &d.databases {
            let rule = self
                .recipe
                .definition()
                .databases
                .iter()
                .find(|r| r.id == dump.id)
                .ok_or_else(|| ImportError::Description {
                    member: APP_DESCRIPTION,
                    reason: format!("database {} is not in the recipe", dump.id),
                })?;
            let single_value = |t: &Option<String>| {
                t.as_deref()
                    .and_then(|t| template_placeholders(t).ok())
                    .filter(|p| p.len() == 1)
                    .map(|p| p[0].to_owned())
            };
            if rule.engine != dump.engine {
                self.blockers.push(format!(
                    "database {} is {} in the bundle but {} in this host's recipe",
                    dump.id, dump.engine, rule.engine
                ));
                continue;
            }
            // `rule.id` equals `dump.id` and is a checked name: safe in a path.
            let file = staging.join("db").join(&rule.id);
            let mut out = BufWriter::new(fs_err::File::create(&file)?);
            bundle.copy_payload(&dump.dump, &mut out)?;
            std::io::Write::flush(&mut out)?;
            match dump.engine {
                Engine::Sqlite => {
                    // The consistent snapshot replaces the file copy the tree holds. Where
                    // it is comes from this host's recipe, filled with the bundle's values
                    // and checked like any path; the copy goes into the staged file, never
                    // through a link.
                    let path = rule
                        .path
                        .as_deref()
                        .and_then(|t| expand_template(t, &old).ok())
                        .unwrap_or_default();
                    match staged_file(self.tree, &d.files, &path) {
                        Ok(staged) if dump.path.as_deref() == Some(path.as_str()) => {
                            let mut target = fs_err::OpenOptions::new()
                                .write(true)
                                .truncate(true)
                                .custom_flags(libc_nofollow())
                                .open(&staged)?;
                            std::io::copy(&mut fs_err::File::open(&file)?, &mut target)?;
                        }
                        Ok(_) => self.blockers.push(format!(
                            "SQLite database {path} is not the one the bundle describes"
                        )),
                        Err(reason) => self
                            .blockers
                            .push(format!("SQLite database {path}: {reason}")),
                    }
                    planned_dbs.push(PlannedDatabase {
                        id: dump.id.clone(),
                        engine: dump.engine,
                        from: path,
                        to: None,
                        user: None,
                        rewrites: Vec::new(),
                    });
                }
                Engine::Mariadb | Engine::Postgresql => {
                    let exists = |kind: &'static str| {
                        move |name: &str| match dump.engine {
                            Engine::Mariadb => host::mariadb_exists(kind, name),
                            _ => host::postgres_exists(kind, name),
                        }
                    };
                    let reachable = match dump.engine {
                        Engine::Mariadb => host::mariadb_admin("SELECT 1").map(|_| ()),
                        _ => host::postgres_admin("SELECT 1").map(|_| ()),
                    };
                    if let Err(e) = reachable {
                        self.blockers
                            .push(format!("the {} server is not reachable: {e}", dump.engine));
                        continue;
                    }
                    // The new name, owner and password must reach the app's config: the
                    // recipe must say where each is read, or the app would not connect.
                    for (what, template, with) in [
                        ("name", &rule.name, RehostSource::Database),
                        ("user", &rule.user, RehostSource::User),
                        ("password", &rule.password, RehostSource::Generate),
                    ] {
                        let rewritten = single_value(template).is_some_and(|v| {
                            self.recipe
                                .definition()
                                .rehost
                                .iter()
                                .any(|r| r.value == v && r.with == with)
                        });
                        if !rewritten {
                            self.blockers.push(format!(
                                "database {}: this host's {} recipe does not say how to give the app its new database {what} (a rehost rule with = \"{}\")",
                                dump.id,
                                d.app,
                                format!("{with:?}").to_lowercase()
                            ));
                        }
                    }
                    let name = free_name(&instance_to, exists("database"))?;
                    let user = free_name(&name, exists("user"))?;
                    let password = host::new_password();
                    if let Some(v) = single_value(&rule.name) {
                        new.insert(v, name.clone());
                    }
                    if let Some(v) = single_value(&rule.user) {
                        new.insert(v, user.clone());
                    }
                    if let Some(v) = single_value(&rule.password) {
                        new.insert(v, password.clone());
                    }
                    databases.push(DatabaseTarget {
                        dump: dump.clone(),
                        file,
                        name: name.clone(),
                        user: user.clone(),
                        password,
                        rewrite: None,
                    });
                    planned_dbs.push(PlannedDatabase {
                        id: dump.id.clone(),
                        engine: dump.engine,
                        from: dump.name.clone().unwrap_or_default(),
                        to: Some(name),
                        user: Some(user),
                        rewrites: Vec::new(),
                    });
                }
            }
        }
        // Values made from others (`from`) follow them: config-{instance}.php, say.
        for name in self.recipe.value_order() {
            // Plain templates only: a value extracted from another (by a regex, say) keeps
            // what the source read.
            let plain = rules.get(name).filter(|r| {
                r.php_define.is_none()
                    && r.php_variable.is_none()
                    && r.php_array.is_none()
                    && r.regex.is_none()
                    && r.toml_key.is_none()
            });
            if let Some(template) = plain.and_then(|r| r.from.as_deref()) {
                if let Ok(value) = expand_template(template, &new) {
                    new.insert(name.clone(), value);
                }
            }
        }

        // Secrets the recipe regenerates besides database passwords (keys, salts): new
        // random values.
        for rule in &self.recipe.definition().rehost {
            if rule.with == RehostSource::Generate && !new.contains_key(&rule.value) {
                new.insert(rule.value.clone(), host::new_password());
            }
        }

        // Rewrites: values written back where they were read, domains replaced in files
        // and in database content.
        let mut config_rewrites = Vec::new();
        let mut rewrites = Vec::new();
        let domain_changes = domain_to != d.domain;
        for rule in &self.recipe.definition().rehost {
            let secret = d.secret_values.contains(&rule.value);
            // A secret's old text is not in the bundle's description: only its new one
            // matters, written where the old one was.
            let from = match old.get(&rule.value) {
                Some(v) => v,
                None if secret => &String::new(),
                None => continue,
            };
            let Some(to) = new.get(&rule.value) else {
                continue;
            };
            if rule.with == RehostSource::Keep || (!secret && from == to) {
                continue;
            }
            if rule.with == RehostSource::Domain {
                // Where the domain is read from a setting (the custom recipe's spec), it is
                // written back there; a domain made from the instance name has no place.
                if let Some((path, slot)) = rules.get(&rule.value).and_then(|r| {
                    Some((expand_template(r.file.as_deref()?, &old).ok()?, r.slot()?))
                }) {
                    let staged = staged_file(self.tree, &d.files, &path).ok();
                    if let Some(staged) = staged
                        .filter(|f| fs_err::read_to_string(f).is_ok_and(|t| slot.get(&t).is_some()))
                    {
                        rewrites.push(format!("{path}: {slot} {from} → {to}"));
                        config_rewrites.push(ConfigRewrite {
                            file: staged,
                            kind: RewriteKind::Setting {
                                slot,
                                value: to.clone(),
                            },
                        });
                    }
                }
                for template in &rule.files {
                    let Ok(path) = expand_template(template, &old) else {
                        continue;
                    };
                    if path.is_empty() {
                        continue;
                    }
                    // Only files the bundle holds in its sets, reached without links: the
                    // rewrite touches the staged copy, and placing it is checked later.
                    if let Ok(staged) = staged_file(self.tree, &d.files, &path) {
                        rewrites.push(format!("{path}: {from} → {to}"));
                        config_rewrites.push(ConfigRewrite {
                            file: staged,
                            kind: RewriteKind::Text {
                                old: from.clone(),
                                new: to.clone(),
                            },
                        });
                    }
                }
                for rewrite in &rule.database {
                    let Some(target) = databases.iter_mut().find(|t| t.dump.id == rewrite.database)
                    else {
                        continue;
                    };
                    if target.dump.engine != Engine::Mariadb {
                        self.blockers.push(format!(
                            "database {}: rewriting content is supported for MariaDB dumps only",
                            rewrite.database
                        ));
                        continue;
                    }
                    let fill = |t: &String| expand_template(t, &new).unwrap_or_else(|_| t.clone());
                    let plan = planned_dbs
                        .iter_mut()
                        .find(|p| p.id == rewrite.database)
                        .expect("planned with its target");
                    plan.rewrites.push(format!(
                        "{from} → {to} in {}{}",
                        rewrite
                            .tables
                            .iter()
                            .map(fill)
                            .collect::<Vec<_>>()
                            .join(", "),
                        if rewrite.php_serialized {
                            " (PHP-serialized values kept valid)"
                        } else {
                            ""
                        }
                    ));
                    target.rewrite = Some(DumpRewrite {
                        tables: rewrite.tables.iter().map(fill).collect(),
                        skip_columns: rewrite
                            .skip_columns
                            .iter()
                            .filter_map(|c| {
                                fill(c)
                                    .split_once('.')
                                    .map(|(t, c)| (t.to_owned(), c.to_owned()))
                            })
                            .collect(),
                        replacements: vec![(from.as_bytes().to_vec(), to.as_bytes().to_vec())],
                        php_serialized: rewrite.php_serialized,
                    });
                }
                continue;
            }
            // A value read from a file with an extractor is written back at the same place,
            // and in the other settings the recipe names (`also`).
            let Some(value_rule) = rules.get(&rule.value) else {
                continue;
            };
            let Some(file_template) = value_rule.file.as_deref() else {
                self.blockers.push(format!(
                    "value {} must change but the recipe does not say which file holds it",
                    rule.value
                ));
                continue;
            };
            let Ok(path) = expand_template(file_template, &old) else {
                continue;
            };
            let Some(slot) = value_rule.slot() else {
                self.blockers.push(format!(
                    "value {} must change, but only PHP, TOML and KEY=value settings can be rewritten",
                    rule.value
                ));
                continue;
            };
            let mut places = vec![(path, slot)];
            for place in &rule.also {
                let (Ok(path), Some(slot)) = (expand_template(&place.file, &old), place.slot())
                else {
                    continue;
                };
                if !path.is_empty() {
                    places.push((path, slot));
                }
            }
            let unconfigured = !rule.also.is_empty() && places.len() == 1;
            let mut staged_places = Vec::new();
            let mut absent_secret = false;
            for (i, (path, slot)) in places.into_iter().enumerate() {
                let staged = match staged_file(self.tree, &d.files, &path) {
                    Ok(staged) => staged,
                    Err(reason) => {
                        self.blockers
                            .push(format!("{path}, which holds {}: {reason}", rule.value));
                        continue;
                    }
                };
                let set = fs_err::read_to_string(&staged)
                    .ok()
                    .is_some_and(|text| slot.get(&text).is_some());
                if set {
                    staged_places.push((path, staged, slot));
                } else if i == 0 && rule.with == RehostSource::Generate {
                    // A secret the app's config does not set (an optional key or salt):
                    // nothing to regenerate.
                    absent_secret = true;
                    break;
                } else {
                    self.blockers.push(format!(
                        "{path} does not set {slot}, which must receive the new {}",
                        rule.value
                    ));
                }
            }
            if absent_secret {
                continue;
            }
            if unconfigured {
                self.blockers.push(format!(
                    "value {} must change, but none of the app's settings that receive it is configured for this instance ({})",
                    rule.value,
                    rule.also.iter().map(|p| p.file.as_str()).collect::<Vec<_>>().join(", ")
                ));
                continue;
            }
            for (path, staged, slot) in staged_places {
                rewrites.push(format!(
                    "{path}: {slot} {}",
                    if secret || rule.with == RehostSource::Generate {
                        "new secret".to_owned()
                    } else {
                        format!("{from} → {to}")
                    }
                ));
                config_rewrites.push(ConfigRewrite {
                    file: staged,
                    kind: RewriteKind::Setting {
                        slot,
                        value: to.clone(),
                    },
                });
            }
        }
        if !domain_changes && self.options.domain.is_some() {
            self.warnings
                .push("--domain is the bundle's own domain: nothing to rename".to_owned());
        }

        // Where each file set goes: this host's recipe template filled with the new values.
        // A set the recipe does not name is refused: the bundle says what it holds, the
        // host's recipe says where an app may write.
        let templates: Vec<(&str, &[String], Option<ServiceKind>)> = self
            .recipe
            .definition()
            .files
            .iter()
            .map(|f| (f.path.as_str(), &f.within[..], None))
            .chain(
                self.recipe
                    .definition()
                    .services
                    .iter()
                    .map(|s| (s.path.as_str(), &[][..], Some(s.kind))),
            )
            .collect();
        let mut placements = Vec::new();
        let mut conflicts = Vec::new();
        let mut renamed = Vec::new();
        let set_paths: Vec<&str> = d.files.iter().map(|f| f.path.as_str()).collect();
        for set in &d.files {
            let nested = set_paths
                .iter()
                .any(|other| *other != set.path && Path::new(&set.path).starts_with(other));
            if nested {
                continue;
            }
            let Some((template, within, service)) = templates
                .iter()
                .find(|(t, _, _)| expand_template(t, &old).is_ok_and(|p| p == set.path))
            else {
                self.blockers.push(format!(
                    "the bundle's file set {} is not one that this host's {} recipe names",
                    set.path, d.app
                ));
                continue;
            };
            let to = expand_template(template, &new).unwrap_or_else(|_| set.path.clone());
            let outside = |p: &str| {
                baluchon_recipe::check_allowed(p)
                    .and_then(|()| baluchon_recipe::check_within(Path::new(p), within))
                    .err()
            };
            if let Some(reason) = outside(&set.path).or_else(|| outside(&to)) {
                self.blockers
                    .push(format!("file set {} → {to} {reason}", set.path));
                continue;
            }
            // Scripts run by root (cron jobs, systemd units) are code: a bundle's are never
            // installed. An identical one already here is fine.
            if matches!(service, Some(ServiceKind::Cron | ServiceKind::SystemdUnit)) {
                let placement = place::survey(self.tree, Path::new(&set.path), Path::new(&to))?;
                if placement.identical != placement.entries {
                    self.warnings.push(format!(
                        "not installed: {to} ({}); a bundle's scripts are never installed: compare it with the bundle's copy and install it by hand",
                        service.unwrap_or(ServiceKind::Cron)
                    ));
                }
                continue;
            }
            match service {
                Some(ServiceKind::PhpFpmPool) => {
                    self.check_pool(&self.tree.join(set.path.trim_start_matches('/')));
                }
                Some(ServiceKind::NginxSite) => {
                    self.check_nginx_site(&self.tree.join(set.path.trim_start_matches('/')));
                }
                _ => {}
            }
            if to != set.path {
                renamed.push((PathBuf::from(&set.path), PathBuf::from(&to)));
            }
            let placement = place::survey(self.tree, Path::new(&set.path), Path::new(&to))?;
            conflicts.extend(placement.conflicts.iter().cloned());
            placements.push(placement);
        }
        let symlink_retargets = self.check_symlinks(&d.files, &renamed)?;

        // Packages: what is missing, and whether this host's versions can run the app.
        let mut packages_to_install = Vec::new();
        // Which packages comes from this host's recipe (its templates filled with the
        // bundle's values, say the PHP version); a name must be a plain Debian package name.
        for template in &self.recipe.definition().packages.needs {
            let Ok(name) = expand_template(template, &new) else {
                continue;
            };
            let plain = name.len() >= 2
                && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b));
            if !plain {
                self.blockers
                    .push(format!("{name:?} is not a Debian package name"));
                continue;
            }
            if host::installed_version(&name).is_none() {
                if host::candidate_version(&name).is_none() {
                    self.blockers
                        .push(format!("package {name} is needed and not available here"));
                } else {
                    packages_to_install.push(name);
                }
            }
        }
        // The app's version, when the recipe reads it from a package, and the versions of
        // the packages that provide its code: this host must have at least those.
        let app_package = self
            .recipe
            .definition()
            .detect
            .version
            .as_ref()
            .and_then(|v| rules.get(v))
            .and_then(|r| r.package_version.clone());
        let app_version = app_package.zip(d.version.clone()).map(|(name, version)| {
            crate::description::PackageRecord {
                name,
                version: Some(version),
                architecture: None,
            }
        });
        // Package names from this host's recipe; only the versions come from the bundle.
        let host_code = &self.recipe.definition().packages.code;
        for p in d
            .code_packages
            .iter()
            .filter(|p| host_code.contains(&p.name))
            .chain(app_version.as_ref())
        {
            let (Some(theirs), Some(ours)) = (
                &p.version,
                host::installed_version(&p.name).or_else(|| host::candidate_version(&p.name)),
            ) else {
                continue;
            };
            let newer = host::version_newer(theirs, &ours);
            if newer.is_none() {
                self.blockers.push(format!(
                    "the bundle's version {theirs:?} of {} is not a Debian version",
                    p.name
                ));
            }
            if newer == Some(true) {
                self.blockers.push(format!(
                    "the bundle's {} is {theirs}, newer than this host's {ours}: upgrade {} here first",
                    p.name, p.name
                ));
            }
        }

        // What to check and reload follows from where files go, not from the bundle's word.
        let nginx = placements.iter().any(|p| p.to.starts_with("/etc/nginx"));
        let mut php: Vec<String> = placements
            .iter()
            .filter_map(|p| {
                let rest = p.to.strip_prefix("/etc/php/").ok()?;
                let mut parts = rest.components();
                let version = parts.next()?.as_os_str().to_str()?.to_owned();
                (parts.next()?.as_os_str() == "fpm"
                    && version.bytes().all(|b| b.is_ascii_digit() || b == b'.'))
                .then_some(version)
            })
            .collect();
        php.sort();
        php.dedup();
        let (checks, reloads) = host::reload_commands(nginx, &php);

        let disk = self.disk_needs(&placements, &planned_dbs, header)?;
        for need in disk.iter().filter(|n| n.free < n.needed) {
            self.blockers.push(format!(
                "{} bytes are needed on the filesystem of {}, {} are free",
                need.needed,
                need.path.display(),
                need.free
            ));
        }
        if self.options.on_conflict == OnConflict::Refuse && !conflicts.is_empty() {
            self.blockers.push(format!(
                "{} paths exist and differ from the bundle's (first: {}); choose --on-conflict replace or rename",
                conflicts.len(),
                conflicts[0].display()
            ));
        }
        // The check is this host's recipe's, filled with the new values: a bundle cannot
        // choose what proves it works.
        let health = match &self.recipe.definition().health {
            // Made from an empty value (the custom recipe without health_path): no check.
            Some(h) if template_uses_empty(&h.url, &new) => None,
            Some(h) => match expand_template(&h.url, &new) {
                Ok(url)
                    if url.starts_with("http://")
                        && !url.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    Some(Health {
                        url,
                        status: h.status,
                        contains: h.contains.clone(),
                    })
                }
                Ok(url) => {
                    self.blockers.push(format!(
                        "the health check URL {url:?} is not a plain http:// URL"
                    ));
                    None
                }
                Err(e) => {
                    self.blockers.push(format!("the health check URL: {e}"));
                    None
                }
            },
            None => None,
        };
        // A secret left out of the bundle must get a new value here, or the app would run
        // with the placeholder.
        for name in &d.redacted_secrets {
            let regenerated = self
                .recipe
                .definition()
                .rehost
                .iter()
                .any(|r| &r.value == name && r.with == RehostSource::Generate);
            if !regenerated {
                self.blockers.push(format!(
                    "the bundle left out the secret {name}, and this host's {} recipe does not regenerate it: ask for an encrypted bundle",
                    d.app
                ));
            }
        }
        let plan = ImportPlan {
            bundle_id: header.bundle_id.clone(),
            tenant: header.tenant.clone(),
            sequence: header.sequence,
            app: d.app.clone(),
            version: d.version.clone(),
            instance: Rename {
                from: d.instance.clone(),
                to: instance_to.clone(),
            },
            domain: Rename {
                from: d.domain.clone(),
                to: domain_to,
            },
            packages_to_install,
            groups_to_create: Vec::new(),
            users_to_create: Vec::new(),
            files: placements,
            databases: planned_dbs,
            rewrites,
            regenerated_secrets: d.redacted_secrets.clone(),
            services: checks.iter().chain(&reloads).map(|c| c.join(" ")).collect(),
            on_conflict: self.options.on_conflict,
            conflicts,
            disk,
            health_check: health.as_ref().map(|h| h.url.clone()),
            warnings: std::mem::take(&mut self.warnings),
            blockers: std::mem::take(&mut self.blockers),
        };
        Ok(Planned {
            plan,
            databases,
            config_rewrites,
            symlink_retargets,
            checks,
            reloads,
            health,
            new_instance: instance_to,
        })
    }
}

impl Planner<'_> {
    /// A PHP-FPM pool runs the tenant's PHP as its `user`: never root, and only as an
    /// account this host has.
    fn check_pool(&mut self, staged: &Path) {
        let text = match staged_text(staged) {
            Ok(text) => text,
            Err(reason) => return self.blockers.push(reason),
        };
        let accounts = fs_err::read_to_string("/etc/passwd").unwrap_or_default();
        let groups = fs_err::read_to_string("/etc/group").unwrap_or_default();
        for problem in pool_problems(&text, &accounts, &groups, &self.new_accounts) {
            self.blockers
                .push(format!("the PHP-FPM pool {}: {problem}", staged.display()));
        }
    }

    /// An nginx site from a bundle may serve and log only where an app's files are: the
    /// master runs as root, and opens log files before dropping privileges.
    fn check_nginx_site(&mut self, staged: &Path) {
        let text = match staged_text(staged) {
            Ok(text) => text,
            Err(reason) => return self.blockers.push(reason),
        };
        for problem in nginx_site_problems(&text) {
            self.blockers
                .push(format!("the nginx site {}: {problem}", staged.display()));
        }
    }

    /// Links in the staged tree may point into the app's own files or into packaged code
    /// under /usr/share, nowhere else: a link to another tenant's config in a web-served
    /// directory would publish it. Links to a renamed path follow the rename.
    fn check_symlinks(
        &mut self,
        sets: &[crate::description::FileSetRecord],
        renamed: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<(PathBuf, PathBuf)>, ImportError> {
        let mut retargets = Vec::new();
        // Packaged code is under /usr/share/<package>; where it leads on this host (a
        // package may link into /etc) must still be packaged code or the app's files.
        let packaged: Vec<PathBuf> = self
            .recipe
            .definition()
            .packages
            .code
            .iter()
            .map(|p| Path::new("/usr/share").join(p))
            .collect();
        let in_sets = |target: &Path| {
            sets.iter().any(|s| target.starts_with(&s.path))
                || renamed.iter().any(|(_, to)| target.starts_with(to))
        };
        let allowed = |target: &Path| {
            in_sets(target)
                || (packaged.iter().any(|p| target.starts_with(p))
                    && fs_err::canonicalize(target).map_or(true, |real| {
                        packaged.iter().any(|p| real.starts_with(p)) || in_sets(&real)
                    }))
        };
        let mut stack = vec![self.tree.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(path);
                    continue;
                }
                if !kind.is_symlink() {
                    continue;
                }
                let link = Path::new("/").join(path.strip_prefix(self.tree).unwrap_or(&path));
                let target = fs_err::read_link(&path)?;
                // The kernel follows a link met on the way before applying `..`: a target
                // that passes through another of the bundle's links could lead anywhere
                // while looking, on paper, like it stays inside.
                if let Some(through) = passes_through_staged_link(self.tree, &link, &target) {
                    self.blockers.push(format!(
                        "the link {} points to {} through the link {}",
                        link.display(),
                        target.display(),
                        through.display()
                    ));
                    continue;
                }
                let absolute = normalize(&link.parent().unwrap_or(Path::new("/")).join(&target));
                if let Some((from, to)) =
                    renamed.iter().find(|(from, _)| absolute.starts_with(from))
                {
                    let rest = absolute.strip_prefix(from).unwrap_or(Path::new(""));
                    let new_target = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    retargets.push((path.clone(), new_target));
                    continue;
                }
                if !allowed(&absolute) {
                    self.blockers.push(format!(
                        "the link {} points to {}, outside the app's files and packaged code",
                        link.display(),
                        target.display()
                    ));
                }
            }
        }
        Ok(retargets)
    }
}

/// Gives every staged entry that carries a placeholder id (owner or group) to the account
/// created for it.
fn give_placeholders_away(
    tree: &Path,
    ids: &std::collections::HashMap<u32, u32>,
) -> Result<(), ImportError> {
    use std::os::unix::fs::MetadataExt;
    let mut stack = vec![tree.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = fs_err::symlink_metadata(&path)?;
        let uid = ids.get(&meta.uid()).copied();
        let gid = ids.get(&meta.gid()).copied();
        if uid.is_some() || gid.is_some() {
            rustix::fs::chownat(
                rustix::fs::CWD,
                &path,
                uid.map(rustix::fs::Uid::from_raw),
                gid.map(rustix::fs::Gid::from_raw),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| std::io::Error::new(e.kind(), format!("chown {}: {e}", path.display())))?;
            // chown clears setuid/setgid bits: put the mode back (links have none).
            if !meta.file_type().is_symlink() {
                use std::os::unix::fs::PermissionsExt;
                fs_err::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(meta.mode() & 0o7777),
                )?;
            }
        }
        if meta.is_dir() {
            for entry in fs_err::read_dir(&path)? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(())
}

/// A bundle id is opaque text: only its letters, digits and `-` go into file names.
fn path_safe(id: &str) -> String {
    let safe: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    if safe.is_empty() {
        "bundle".to_owned()
    } else {
        safe
    }
}

/// What a PHP-FPM pool from a bundle may not do. `accounts` and `groups` are the host's
/// /etc/passwd and /etc/group; `new_accounts` are those the import creates.
fn pool_problems(text: &str, accounts: &str, groups: &str, new_accounts: &[String]) -> Vec<String> {
    let id_of = |table: &str, name: &str| -> Option<u32> {
        table
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|id| id.parse().ok())
    };
    let mut problems = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        // PHP-FPM reads keys without regard to case.
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"');
        if key.starts_with(';') || key.starts_with('#') {
            continue;
        }
        let refused = match key.as_str() {
            // Files the master (root) would open or write where the bundle says.
            "include" | "access.log" | "access.format" | "slowlog" | "chroot" | "prefix" => {
                Some("a directive a bundle may not set".to_owned())
            }
            _ if key.contains("error_log")
                || key.contains("auto_prepend_file")
                || key.contains("auto_append_file") =>
            {
                Some("a directive a bundle may not set".to_owned())
            }
            "user" | "group" => {
                let table = if key == "user" { accounts } else { groups };
                let new = new_accounts.iter().any(|a| a == value);
                match id_of(table, value) {
                    // The web server's account, a regular (tenant) account, or one this
                    // import creates; never root nor another system account.
                    _ if value == "www-data" || new => None,
                    Some(id) if id >= 1000 && id != 65534 => None,
                    Some(_) => Some(format!("{key} {value}, a system account")),
                    None => Some(format!("{key} {value}, an account this host does not have")),
                }
            }
            _ => None,
        };
        if let Some(why) = refused {
            problems.push(format!("{} ({why})", line.trim()));
        }
    }
    problems
}

/// What an nginx site from a bundle may not do.
fn nginx_site_problems(text: &str) -> Vec<String> {
    let served = ["/usr/share/", "/var/lib/", "/srv/", "/var/www/"];
    let code = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut problems = Vec::new();
    for statement in code.split([';', '{', '}']) {
        let words: Vec<&str> = statement
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .collect();
        let Some((directive, args)) = words.split_first() else {
            continue;
        };
        let first = args.first().copied().unwrap_or("");
        let refused = match *directive {
            "load_module" | "perl" | "perl_modules" | "js_import" | "lua_package_path" => true,
            "access_log" | "error_log" => {
                !(first == "off" || first.starts_with("syslog:") || first.starts_with("/var/log/"))
                    || first.contains("..")
            }
            "include" => {
                first.starts_with('/') && !first.starts_with("/etc/nginx/") || first.contains("..")
            }
            "root" | "alias" => {
                !served.iter().any(|p| first.starts_with(p)) || first.contains("..")
            }
            _ => false,
        };
        if refused {
            problems.push(format!(
                "`{}` is not allowed from a bundle",
                words.join(" ")
            ));
        }
    }
    problems
}

/// A staged text file, read without following a link; the reason as a blocker otherwise.
fn staged_text(staged: &Path) -> Result<String, String> {
    let unreadable = |why: String| format!("{}: {why}", staged.display());
    let meta = fs_err::symlink_metadata(staged).map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file in the bundle".to_owned()));
    }
    let bytes = fs_err::read(staged).map_err(|e| unreadable(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".to_owned()))
}

/// A creation that failed did not happen (a database or account that is there is not
/// ours): the journal says so, and rollback leaves it alone.
fn made<T>(journal: &mut Journal, result: Result<T, ImportError>) -> Result<T, ImportError> {
    if result.is_err() {
        journal.record(&Change::NotMade)?;
    }
    result
}

/// `O_NOFOLLOW`, for opening a staged file that must not be a link.
fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The staged copy of the host path `absolute`, which must lie in one of the bundle's file
/// `sets`, reached without following any link (the staged tree holds the bundle's links,
/// which may point anywhere): every component must be a real directory, and the file
/// itself a regular file.
fn staged_file(
    tree: &Path,
    sets: &[crate::description::FileSetRecord],
    absolute: &str,
) -> Result<PathBuf, String> {
    baluchon_recipe::check_allowed(absolute)?;
    if !sets
        .iter()
        .any(|s| Path::new(absolute).starts_with(&s.path))
    {
        return Err("is not inside the bundle's file sets".to_owned());
    }
    let mut path = tree.to_owned();
    let parts: Vec<_> = Path::new(absolute).components().skip(1).collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta = fs_err::symlink_metadata(&path).map_err(|e| e.to_string())?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() {
            return Err(format!("{} is a link in the bundle", path.display()));
        }
        if last && !meta.is_file() {
            return Err("is not a regular file in the bundle".to_owned());
        }
        if !last && !meta.is_dir() {
            return Err(format!(
                "{} is not a directory in the bundle",
                path.display()
            ));
        }
    }
    Ok(path)
}

/// The first of the staged tree's links that resolving `target` from `link`'s directory
/// would go through (before its last component), if any.
fn passes_through_staged_link(tree: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    let mut at = if target.is_absolute() {
        PathBuf::from("/")
    } else {
        link.parent().unwrap_or(Path::new("/")).to_owned()
    };
    let parts: Vec<_> = target.components().collect();
    for (i, part) in parts.iter().enumerate() {
        match part {
            std::path::Component::ParentDir => {
                at.pop();
            }
            std::path::Component::Normal(name) => {
                at.push(name);
                let staged = tree.join(at.strip_prefix("/").unwrap_or(&at));
                let last = i + 1 == parts.len();
                if !last
                    && fs_err::symlink_metadata(&staged).is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

/// `path` with `.` and `..` resolved lexically (links are not followed: they are data).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

impl Planner<'_> {
    /// Room the apply needs on each filesystem: a file set whose destination is on another
    /// filesystem than staging is copied there (on the same one it is renamed: no room),
    /// and a database is restored into its server's directory (about its dump's size).
    fn disk_needs(
        &self,
        placements: &[SetPlacement],
        databases: &[PlannedDatabase],
        header: &baluchon_bundle::BundleHeader,
    ) -> Result<Vec<DiskNeed>, ImportError> {
        use std::os::unix::fs::MetadataExt as _;
        let staged_on = fs_err::metadata(self.tree)?.dev();
        let mut needs: Vec<(u64, DiskNeed)> = Vec::new();
        let mut add = |(existing, dev): (&Path, u64), bytes: u64| -> Result<(), ImportError> {
            if let Some((_, need)) = needs.iter_mut().find(|(d, _)| *d == dev) {
                need.needed += bytes;
            } else {
                needs.push((
                    dev,
                    DiskNeed {
                        path: existing.to_owned(),
                        needed: bytes,
                        free: host::free_bytes(existing)?,
                    },
                ));
            }
            Ok(())
        };
        for placement in placements {
            match place::filesystem_of(&placement.to) {
                Some(fs) if fs.1 != staged_on => {
                    add(fs, place::staged_bytes(self.tree, &placement.from)?)?;
                }
                _ => {}
            }
        }
        for db in databases.iter().filter(|d| d.engine != Engine::Sqlite) {
            let dump = header
                .payload
                .iter()
                .find(|p| p.path.starts_with(&format!("data/db/{}.", db.id)));
            let bytes = dump.map_or(0, |p| p.uncompressed_size.unwrap_or(p.size));
            let dir = match db.engine {
                Engine::Mariadb => "/var/lib/mysql",
                _ => "/var/lib/postgresql",
            };
            if let Some(fs) = place::filesystem_of(Path::new(dir)) {
                add(fs, bytes)?;
            }
        }
        Ok(needs.into_iter().map(|(_, need)| need).collect())
    }
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

impl PreparedImport {
    pub fn plan(&self) -> &ImportPlan {
        &self.plan
    }

    fn journal_path(&self) -> PathBuf {
        self.tenant_dir.join("journal.jsonl")
    }

    /// Applies the plan. On any failure, every change made so far is undone from the
    /// journal, services are reloaded on the restored configs, and the error says what
    /// failed (and what could not be undone, if anything). `hook` is called at each step
    /// boundary with the step's name; an error from it is a failure there (tests use it).
    pub fn apply(
        self,
        hook: &dyn Fn(&str) -> Result<(), ImportError>,
    ) -> Result<ImportReport, ImportError> {
        if !self.plan.blockers.is_empty() {
            return Err(ImportError::Blocked(self.plan.blockers.clone()));
        }
        let mut journal = Journal::create(&self.journal_path())?;
        let mut steps = Vec::new();
        let backup_dir = self
            .tenant_dir
            .join(format!("backup-{}", path_safe(&self.plan.bundle_id)));
        match self.apply_steps(&mut journal, &mut steps, &backup_dir, hook) {
            Ok(()) => {
                self.finish()?;
                let kept = backup_dir.exists().then_some(backup_dir);
                Ok(ImportReport {
                    plan: self.plan.clone(),
                    steps,
                    backup_dir: kept,
                })
            }
            Err(failure) => {
                drop(journal);
                let undone = roll_back(&self.journal_path());
                let _ = fs_err::remove_dir_all(&self.staging);
                match undone {
                    Ok(_) => Err(failure),
                    Err(rollback) => Err(ImportError::RollbackFailed {
                        failure: failure.to_string(),
                        rollback: rollback.to_string(),
                    }),
                }
            }
        }
    }

    fn apply_steps(
        &self,
        journal: &mut Journal,
        steps: &mut Vec<String>,
        backup_dir: &Path,
        hook: &dyn Fn(&str) -> Result<(), ImportError>,
    ) -> Result<(), ImportError> {
        journal.record(&Change::Begin {
            bundle_id: self.plan.bundle_id.clone(),
            sequence: self.plan.sequence,
            instance: self.new_instance.clone(),
        })?;
        hook("begin")?;
        if !self.plan.packages_to_install.is_empty() {
            hook("packages")?;
            journal.record(&Change::PackagesInstalled {
                packages: self.plan.packages_to_install.clone(),
            })?;
            host::run(
                "apt-get install",
                std::process::Command::new("apt-get")
                    // --no-remove: an install that would remove a package cannot be undone
                    // by purging what was installed; apt then stops instead.
                    .args([
                        "install",
                        "-y",
                        "-q",
                        "--no-install-recommends",
                        "--no-remove",
                    ])
                    .args(&self.plan.packages_to_install)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )?;
            steps.push(format!(
                "installed {}",
                self.plan.packages_to_install.join(", ")
            ));
        }
        if !self.placeholders.is_empty() {
            hook("users")?;
            self.create_accounts(journal)?;
            steps.push(format!(
                "created system accounts: {}",
                self.placeholders
                    .iter()
                    .map(|p| format!("{} {}", if p.group { "group" } else { "user" }, p.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        for db in &self.databases {
            hook("database")?;
            let rewritten = self.create_and_restore(db, journal)?;
            steps.push(format!(
                "restored database {} into {} (owner {}, new password){}",
                db.dump.id,
                db.name,
                db.user,
                rewritten.map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
        hook("rewrite")?;
        for rewrite in &self.config_rewrites {
            let text = fs_err::read_to_string(&rewrite.file)?;
            let new = match &rewrite.kind {
                RewriteKind::Text { old, new } => text.replace(old.as_str(), new),
                RewriteKind::Setting { slot, value } => {
                    slot.set(&text, value).ok_or_else(|| ImportError::Rewrite {
                        what: rewrite.file.display().to_string(),
                        reason: format!("it does not set {slot} to a literal"),
                    })?
                }
            };
            // In place: the staged file keeps its owner and mode.
            fs_err::write(&rewrite.file, new)?;
        }
        for (link, target) in &self.symlink_retargets {
            let meta = fs_err::symlink_metadata(link)?;
            fs_err::remove_file(link)?;
            std::os::unix::fs::symlink(target, link)?;
            use std::os::unix::fs::MetadataExt;
            rustix::fs::chownat(
                rustix::fs::CWD,
                link,
                Some(rustix::fs::Uid::from_raw(meta.uid())),
                Some(rustix::fs::Gid::from_raw(meta.gid())),
                rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(std::io::Error::from)?;
        }
        if !self.config_rewrites.is_empty() {
            steps.push(format!(
                "rewrote {} values in the app's config",
                self.config_rewrites.len()
            ));
        }
        hook("files")?;
        let displace = place::Displace {
            policy: self.plan.on_conflict,
            backup_dir,
            suffix: &path_safe(&self.plan.bundle_id)
                .chars()
                .take(8)
                .collect::<String>(),
        };
        for set in &self.plan.files {
            place::place(&self.tree, set, &displace, journal)?;
            steps.push(format!(
                "placed {} at {}",
                set.from.display(),
                set.to.display()
            ));
        }
        hook("services")?;
        host::run_all(&self.checks)?;
        journal.record(&Change::ServicesReloaded {
            commands: self.reloads.clone(),
        })?;
        host::run_all(&self.reloads)?;
        if !self.reloads.is_empty() {
            steps.push(format!("reloaded: {}", self.plan.services.join("; ")));
        }
        hook("health")?;
        if let Some(Health {
            url,
            status,
            contains,
        }) = &self.health
        {
            host::health_check(
                url,
                *status,
                contains.as_deref(),
                self.options.health_timeout,
            )?;
            steps.push(format!("health check passed: GET {url} → {status}"));
        }
        journal.record(&Change::Commit)?;
        // Past the point of no return: only a kill can stop the import here, and recovery
        // then completes it.
        let _ = hook("commit");
        Ok(())
    }

    fn create_and_restore(
        &self,
        db: &DatabaseTarget,
        journal: &mut Journal,
    ) -> Result<Option<String>, ImportError> {
        match db.dump.engine {
            Engine::Mariadb => {
                journal.record(&Change::MariadbDatabase {
                    name: db.name.clone(),
                })?;
                let charset = db.dump.charset.as_deref().unwrap_or("utf8mb4");
                made(
                    journal,
                    host::mariadb_admin(&format!(
                        "CREATE DATABASE `{}` CHARACTER SET {}",
                        db.name,
                        charset.replace(|c: char| !c.is_ascii_alphanumeric() && c != '_', "")
                    )),
                )?;
                journal.record(&Change::MariadbUser {
                    name: db.user.clone(),
                })?;
                made(
                    journal,
                    host::mariadb_admin(&format!(
                        "CREATE USER '{}'@'localhost' IDENTIFIED BY '{}'",
                        db.user, db.password
                    )),
                )?;
                host::mariadb_admin(&format!(
                    "GRANT ALL PRIVILEGES ON `{}`.* TO '{}'@'localhost'",
                    db.name, db.user
                ))?;
                let mut summary = None;
                host::mariadb_restore(&db.name, &db.user, &db.password, |out| {
                    let mut input =
                        std::io::BufReader::with_capacity(1 << 20, fs_err::File::open(&db.file)?);
                    // Every dump goes through the rewriter, with or without replacements: it
                    // removes DEFINER clauses and refuses client commands.
                    let rules = db.rewrite.clone().unwrap_or(DumpRewrite {
                        tables: Default::default(),
                        skip_columns: Default::default(),
                        replacements: Vec::new(),
                        php_serialized: false,
                    });
                    let report = rewrite_dump(&mut input, out, &rules).map_err(|e| {
                        ImportError::Rewrite {
                            what: format!("the dump {}", db.dump.dump),
                            reason: e.to_string(),
                        }
                    })?;
                    let mut text = format!(
                        "{} values rewritten ({} PHP-serialized, lengths fixed), {} DEFINER clauses removed",
                        report.values_changed, report.serialized_fixed, report.definers_removed
                    );
                    for warning in &report.warnings {
                        text.push_str(&format!("; warning: {warning}"));
                    }
                    summary = Some(text);
                    Ok(())
                })?;
                Ok(summary)
            }
            Engine::Postgresql => {
                journal.record(&Change::PostgresRole {
                    name: db.user.clone(),
                })?;
                made(
                    journal,
                    host::postgres_admin(&format!(
                        "CREATE ROLE \"{}\" LOGIN PASSWORD '{}'",
                        db.user, db.password
                    )),
                )?;
                journal.record(&Change::PostgresDatabase {
                    name: db.name.clone(),
                })?;
                made(
                    journal,
                    host::postgres_admin(&format!(
                        "CREATE DATABASE \"{}\" OWNER \"{}\"",
                        db.name, db.user
                    )),
                )?;
                host::postgres_restore(&db.file, &db.name, &db.user, &db.password)?;
                Ok(None)
            }
            Engine::Sqlite => Ok(None),
        }
    }

    /// Creates the groups, then the users (system accounts, no home, no login shell; a
    /// user's primary group is the group of the same name if there is one), then gives the
    /// staged entries that carry their placeholder ids to them.
    fn create_accounts(&self, journal: &mut Journal) -> Result<(), ImportError> {
        let mut ids = std::collections::HashMap::new();
        for p in self.placeholders.iter().filter(|p| p.group) {
            journal.record(&Change::GroupCreated {
                name: p.name.clone(),
            })?;
            made(
                journal,
                host::run(
                    &format!("groupadd {}", p.name),
                    std::process::Command::new("groupadd").args(["--system", "--", &p.name]),
                ),
            )?;
            ids.insert(p.id, host::account_id("group", &p.name)?);
        }
        for p in self.placeholders.iter().filter(|p| !p.group) {
            journal.record(&Change::UserCreated {
                name: p.name.clone(),
            })?;
            let primary = if host::account_id("group", &p.name).is_ok() {
                p.name.clone()
            } else {
                "nogroup".to_owned()
            };
            made(
                journal,
                host::run(
                    &format!("useradd {}", p.name),
                    std::process::Command::new("useradd").args([
                        "--system",
                        "--no-create-home",
                        "--no-user-group",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--gid",
                        &primary,
                        "--",
                        &p.name,
                    ]),
                ),
            )?;
            ids.insert(p.id, host::account_id("passwd", &p.name)?);
        }
        give_placeholders_away(&self.tree, &ids)
    }

    /// Past the commit: remember what was imported, drop the journal and the staging area.
    fn finish(&self) -> Result<(), ImportError> {
        write_imported(
            &self.tenant_dir,
            &Imported {
                bundle_id: self.plan.bundle_id.clone(),
                sequence: self.plan.sequence,
                instance: self.new_instance.clone(),
            },
        )?;
        fs_err::remove_file(self.journal_path())?;
        fs_err::remove_dir_all(&self.staging)?;
        Ok(())
    }
}

fn write_imported(dir: &Path, imported: &Imported) -> Result<(), ImportError> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, imported).map_err(std::io::Error::other)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join("imported.json"))
        .map_err(|e| ImportError::Io(e.error))?;
    Ok(())
}

/// Undoes every change a journal records, newest first, then reloads the services on the
/// restored configs if the import had reloaded them. Keeps going after an error, so as
/// much as possible is restored, and returns the first error. Removes the journal when
/// everything was undone.
fn roll_back(journal_path: &Path) -> Result<usize, ImportError> {
    let changes = Journal::read(journal_path)?;
    let mut first_error = None;
    let mut reloads = None;
    let mut not_made = false;
    for change in changes.iter().rev() {
        // A change followed by `NotMade` never happened: what is there is not ours.
        if std::mem::take(&mut not_made) {
            continue;
        }
        if change == &Change::NotMade {
            not_made = true;
            continue;
        }
        let undone = match change {
            Change::Created { .. } | Change::MovedAside { .. } => place::undo_file_change(change),
            Change::MariadbUser { name } => {
                host::mariadb_admin(&format!("DROP USER IF EXISTS '{name}'@'localhost'"))
                    .map(|_| ())
            }
            Change::MariadbDatabase { name } => {
                host::mariadb_admin(&format!("DROP DATABASE IF EXISTS `{name}`")).map(|_| ())
            }
            Change::PostgresDatabase { name } => {
                host::postgres_admin(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .map(|_| ())
            }
            Change::PostgresRole { name } => {
                host::postgres_admin(&format!("DROP ROLE IF EXISTS \"{name}\"")).map(|_| ())
            }
            Change::UserCreated { name } => host::run(
                "userdel",
                std::process::Command::new("userdel").args(["--", name]),
            )
            .map(|_| ())
            .or_else(|e| {
                if host::account_id("passwd", name).is_err() {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
            Change::GroupCreated { name } => host::run(
                "groupdel",
                std::process::Command::new("groupdel").args(["--", name]),
            )
            .map(|_| ())
            .or_else(|e| {
                if host::account_id("group", name).is_err() {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
            Change::PackagesInstalled { packages } => host::run(
                "apt-get purge",
                std::process::Command::new("apt-get")
                    .args(["purge", "-y", "-q"])
                    .args(packages)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .map(|_| ()),
            Change::ServicesReloaded { commands } => {
                reloads = Some(commands.clone());
                Ok(())
            }
            Change::Begin { .. } | Change::Commit | Change::NotMade => Ok(()),
        };
        if let Err(e) = undone {
            first_error.get_or_insert(e);
        }
    }
    if let Some(commands) = reloads {
        if let Err(e) = host::run_all(&commands) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            fs_err::remove_file(journal_path)?;
            Ok(changes.len())
        }
    }
}

/// Finishes what a killed import left: rolled back if it had not committed, completed if
/// it had. `None` if there was nothing to recover. The caller holds the tenant's lock.
fn recover_locked(dir: &Path) -> Result<Option<String>, ImportError> {
    let journal = dir.join("journal.jsonl");
    if !journal.exists() {
        return Ok(None);
    }
    let changes = Journal::read(&journal)?;
    let begin = changes.iter().find_map(|c| match c {
        Change::Begin {
            bundle_id,
            sequence,
            instance,
        } => Some((bundle_id.clone(), *sequence, instance.clone())),
        _ => None,
    });
    let staging = dir.join("staging");
    let message = if changes.contains(&Change::Commit) {
        if let Some((bundle_id, sequence, instance)) = &begin {
            write_imported(
                dir,
                &Imported {
                    bundle_id: bundle_id.clone(),
                    sequence: *sequence,
                    instance: instance.clone(),
                },
            )?;
        }
        fs_err::remove_file(&journal)?;
        format!(
            "an interrupted import of bundle {} had committed: it is complete",
            begin.map_or_else(|| "?".to_owned(), |b| b.0)
        )
    } else {
        let undone = roll_back(&journal)?;
        format!(
            "an interrupted import of bundle {} was rolled back ({undone} journal records undone)",
            begin.map_or_else(|| "?".to_owned(), |b| b.0)
        )
    };
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    Ok(Some(message))
}

/// Recovers an interrupted import of `tenant` (see [`prepare_import`], which does it too).
pub fn recover(work_dir: &Path, tenant: &str) -> Result<Option<String>, ImportError> {
    let dir = tenant_dir(work_dir, tenant);
    if !dir.exists() {
        return Ok(None);
    }
    let _lock = lock(&dir, tenant)?;
    recover_locked(&dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_through_another_link_is_found() {
        let tree = tempfile::tempdir().unwrap();
        let dir = tree.path().join("var/lib/app/a/b");
        fs_err::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/usr/share/app/x", dir.join("t2")).unwrap();
        let link = Path::new("/var/lib/app/a/b/esc");
        // On paper var/lib/app/a/b/t2/../../c stays inside; the kernel follows t2 first.
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("t2/../../c")),
            Some(PathBuf::from("/var/lib/app/a/b/t2"))
        );
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("t2")),
            None
        );
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("../b/file")),
            None
        );
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("/var/lib/app/a/b/t2/etc")),
            Some(PathBuf::from("/var/lib/app/a/b/t2"))
        );
    }

    #[test]
    fn nginx_sites_may_not_log_include_or_serve_outside_the_apps() {
        let fine =
            "server {\n listen 127.0.0.1:80;\n server_name a.test;\n root /usr/share/wordpress;\n\
                    location /wp-content/ { alias /var/lib/wordpress/wp-content/; }\n\
                    include snippets/fastcgi-php.conf;\n access_log /var/log/nginx/a.log;\n\
                    # access_log /etc/cron.d/commented;\n}\n";
        assert_eq!(nginx_site_problems(fine), Vec::<String>::new());
        for bad in [
            "access_log /etc/cron.d/x;",
            "error_log /var/log/../../etc/cron.d/x;",
            "load_module /tmp/evil.so;",
            "include /var/lib/wordpress/wp-content/uploads/x.conf;",
            "root /etc;",
            "location / { alias '/root/'; }",
        ] {
            assert_eq!(nginx_site_problems(bad).len(), 1, "{bad}");
        }
    }

    #[test]
    fn pools_run_as_the_web_server_or_a_tenant_account_only() {
        let accounts = "root:x:0:0::/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n\
                        postgres:x:106:112::/var/lib/postgresql:/bin/bash\ntenant:x:1001:1001::/home/tenant:/bin/sh\n";
        let groups = "root:x:0:\nwww-data:x:33:\nshadow:x:42:\ntenant:x:1001:\n";
        let pool = |body: &str| {
            pool_problems(
                &format!("[site]\n{body}\nlisten = /run/php/x.sock\n"),
                accounts,
                groups,
                &["newone".to_owned()],
            )
        };
        assert!(pool("user = www-data\ngroup = www-data").is_empty());
        assert!(pool("user = tenant\ngroup = tenant").is_empty());
        assert!(pool("user = newone").is_empty());
        for bad in [
            "user = root",
            "User = root",
            "user = postgres",
            "group = shadow",
            "user = nobody-here",
            "include = /var/lib/wordpress/wp-content/uploads/x.conf",
            "access.log = /etc/cron.d/x",
            "php_admin_value[error_log] = /etc/cron.d/x",
            "php_value[auto_prepend_file] = /tmp/x.php",
        ] {
            assert_eq!(pool(bad).len(), 1, "{bad}");
        }
        assert!(pool("; user = root").is_empty(), "comments are ignored");
    }
}
