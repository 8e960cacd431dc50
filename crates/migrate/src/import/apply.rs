//! Applying a planned import: every change journaled before it is made, then the services
//! reloaded and the health checked; any failure rolls back.

use std::path::{Path, PathBuf};

use baluchon_recipe::{Engine, Health};

use super::journal::Journal;
use super::recover::roll_back;
use super::{
    host, made, place, Change, DatabaseTarget, ImportPlan, ImportReport, Imported, PreparedImport,
    RewriteKind,
};
use crate::error::ImportError;
use crate::rewrite::{rewrite_dump, DumpRewrite};

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

impl PreparedImport {
    pub fn plan(&self) -> &ImportPlan {
        &self.plan
    }

    /// Tries, on each filesystem other than staging's that a file set is copied to, what
    /// its staged tree needs there: a filesystem without extended attributes or links, or
    /// where root cannot give files away, then stops the import before anything changes
    /// rather than midway. Not done by the plan, which writes nothing outside staging.
    fn probe_destinations(&self) -> Result<(), ImportError> {
        use std::os::unix::fs::MetadataExt as _;
        let staged_on = fs_err::metadata(&self.tree)
            .map_err(|e| ImportError::ProbeFailed {
                dir: self.tree.clone(),
                reason: e.to_string(),
            })?
            .dev();
        for placement in &self.plan.files {
            if placement.creates == 0 && placement.conflicts.is_empty() {
                continue; // all there already: nothing is written
            }
            // New entries go into `to` if it is a directory; otherwise `to` itself is made
            // (or, a link or file in the way, replaced) in its parent. A mount further
            // inside `to` is not tried.
            let to = placement.to.as_path();
            let into = match to.parent() {
                Some(parent) if !fs_err::symlink_metadata(to).is_ok_and(|m| m.is_dir()) => parent,
                _ => to,
            };
            let Some((dir, dev)) = place::filesystem_of(into) else {
                continue;
            };
            if dev == staged_on {
                continue;
            }
            let failed = |e: ImportError| ImportError::ProbeFailed {
                dir: dir.to_owned(),
                reason: e.to_string(),
            };
            let (needs, owners) = place::needs_of(&self.tree, &placement.from).map_err(failed)?;
            let lacking = baluchon_bundle::probe_directory(dir, &needs, &owners)
                .map_err(|e| failed(e.into()))?;
            if !lacking.is_empty() {
                return Err(ImportError::DestinationLacks {
                    to: placement.to.clone(),
                    dir: dir.to_owned(),
                    lacking,
                });
            }
        }
        Ok(())
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
        self.probe_destinations()?;
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
        let record = self.record();
        journal.record(&Change::Begin {
            bundle_id: record.bundle_id,
            sequence: record.sequence,
            instance: record.instance,
            signer: record.signer,
            claimed: record.claimed,
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
                    .args(host::WAIT_FOR_DPKG_LOCK)
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
        let lingering = host::reload(&self.reloads)?;
        if !self.reloads.is_empty() {
            steps.push(format!("reloaded: {}", self.plan.services.join("; ")));
        }
        if lingering > 0 {
            steps.push(format!(
                "{lingering} nginx workers of the previous configuration were still finishing their connections after {} s; until they exit, they may answer with it",
                host::OLD_WORKERS_WAIT.as_secs()
            ));
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

    /// What `imported.json` says once this import is complete.
    fn record(&self) -> Imported {
        Imported {
            bundle_id: self.plan.bundle_id.clone(),
            sequence: self.plan.sequence,
            instance: self.new_instance.clone(),
            signer: Some(self.bundle.signer().fingerprint.clone()),
            // What the packages installed since the plan put there is nobody's.
            claimed: {
                let packages = [&self.code_packages[..], &self.plan.packages_to_install].concat();
                let packaged = host::package_paths(&packages);
                self.claims
                    .iter()
                    .filter(|claim| !packaged.contains(*claim))
                    .cloned()
                    .collect()
            },
        }
    }

    /// Past the commit: remember what was imported, drop the journal and the staging area.
    fn finish(&self) -> Result<(), ImportError> {
        write_imported(&self.tenant_dir, &self.record())?;
        fs_err::remove_file(self.journal_path())?;
        fs_err::remove_dir_all(&self.staging)?;
        Ok(())
    }
}

pub(super) fn write_imported(dir: &Path, imported: &Imported) -> Result<(), ImportError> {
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    serde_json::to_writer_pretty(&mut tmp, imported).map_err(std::io::Error::other)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join("imported.json"))
        .map_err(|e| ImportError::Io(e.error))?;
    Ok(())
}
