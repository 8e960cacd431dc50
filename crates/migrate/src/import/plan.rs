//! Planning an import: what goes where, what is created, rewritten and reloaded, and the
//! room it needs, all from the staged bundle and this host, before anything changes.

use fs_err::os::unix::fs::OpenOptionsExt as _;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use baluchon_bundle::{Bundle, Verified};
use baluchon_recipe::{
    expand_template, template_placeholders, template_uses_empty, Engine, Health, Recipe,
    RehostSource, ServiceKind,
};

use super::{
    checks, host, place, ConfigRewrite, DatabaseTarget, DiskNeed, ImportOptions, ImportPlan,
    OnConflict, PlannedDatabase, Rename, RewriteKind, SetPlacement,
};
use crate::description::{AppDescription, APP_DESCRIPTION};
use crate::error::ImportError;
use crate::rewrite::DumpRewrite;

/// What planning computes, beyond the plan shown to the user.
pub(super) struct Planned {
    pub(super) plan: ImportPlan,
    pub(super) databases: Vec<DatabaseTarget>,
    pub(super) config_rewrites: Vec<ConfigRewrite>,
    pub(super) symlink_retargets: Vec<(PathBuf, PathBuf)>,
    pub(super) checks: Vec<Vec<String>>,
    pub(super) reloads: Vec<Vec<String>>,
    pub(super) health: Option<Health>,
    pub(super) new_instance: String,
    pub(super) claims: Vec<PathBuf>,
}

pub(super) struct Planner<'a> {
    pub(super) recipe: &'a Recipe,
    pub(super) description: &'a AppDescription,
    pub(super) options: &'a ImportOptions,
    pub(super) tree: &'a Path,
    pub(super) warnings: Vec<String>,
    pub(super) blockers: Vec<String>,
    /// Accounts the apply will create.
    pub(super) new_accounts: Vec<String>,
    /// What the tenant's earlier imports occupy (same signer).
    pub(super) earlier_claims: &'a [PathBuf],
    /// What other tenants' imports occupy, by tenant.
    pub(super) other_claims: &'a [(String, PathBuf)],
    /// What this import's file sets will occupy, with the earlier claims.
    pub(super) claims: Vec<PathBuf>,
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
    pub(super) fn plan(
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
        let php = self.php_change(&old);
        if let Some(change) = &php {
            for (name, value) in &mut new {
                if !d.secret_values.contains(name) {
                    *value = change.rename(value);
                }
            }
            new.insert(PHP_VERSION.to_owned(), change.to.clone());
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
            if rule.with == RehostSource::Domain && from != &d.domain {
                // The sites are checked against the description's domain; the text replaced
                // in them must be that one, not other text the bundle would choose.
                self.blockers.push(format!(
                    "the bundle's value {} ({from:?}) is not its domain ({:?})",
                    rule.value, d.domain
                ));
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
        if let Some(change) = &php {
            // The app's own sites and pools name the version in their socket and paths.
            for service in &self.recipe.definition().services {
                if !matches!(
                    service.kind,
                    ServiceKind::NginxSite | ServiceKind::PhpFpmPool
                ) {
                    continue;
                }
                let Ok(path) = expand_template(&service.path, &old) else {
                    continue;
                };
                if let Ok(staged) = staged_file(self.tree, &d.files, &path) {
                    for (from, to) in change.pairs() {
                        rewrites.push(format!("{path}: {from} → {to}"));
                        config_rewrites.push(ConfigRewrite {
                            file: staged.clone(),
                            kind: RewriteKind::Text { old: from, new: to },
                        });
                    }
                }
            }
            self.warnings.push(format!(
                "PHP {} in the bundle runs on PHP {} here (--php-version): the app must support it; the health check tells",
                change.from, change.to
            ));
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
                    .map(|s| (s.path.as_str(), &s.within[..], Some(s.kind))),
            )
            .collect();
        let mut placements = Vec::new();
        let mut identical = Vec::new();
        let packaged = host::package_paths(&self.recipe.definition().packages.code);
        let mut conflicts = Vec::new();
        let mut renamed = Vec::new();
        let (mut pools, mut sites, mut enabling) = (Vec::new(), Vec::new(), Vec::new());
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
                    .and_then(|()| {
                        service.map_or(Ok(()), |kind| checks::service_file_place(kind, p))
                    })
                    .err()
            };
            if let Some(reason) = outside(&set.path).or_else(|| outside(&to)) {
                self.blockers
                    .push(format!("file set {} → {to} {reason}", set.path));
                continue;
            }
            if let Some(link) = place::untrusted_link_above(Path::new(&to))? {
                self.blockers.push(format!(
                    "file set {} → {to} is reached through {}, a link that another account than root may change: the import does not place files through it",
                    set.path,
                    link.display()
                ));
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
            let placement = place::survey(self.tree, Path::new(&set.path), Path::new(&to))?;
            // What is there already, the same, stays as it is (a pool shared by apps),
            // unless the apply changes the staged copy first (checked below).
            if placement.identical == placement.entries {
                identical.push((set.path.clone(), to.clone(), within, service.is_some()));
            } else {
                // Refused, the set is still checked: the plan lists every reason at once.
                self.claim_or_block(&set.path, &to, within, service.is_some(), &packaged)?;
            }
            let staged = || self.tree.join(set.path.trim_start_matches('/'));
            if service.is_none() && checks::read_by_a_service(Path::new(&to)) {
                enabling.push((set.path.clone(), staged()));
            }
            match service {
                Some(ServiceKind::PhpFpmPool) => pools.push((staged(), PathBuf::from(&to))),
                Some(ServiceKind::NginxSite) => sites.push((staged(), PathBuf::from(&to))),
                _ => {}
            }
            if to != set.path {
                renamed.push((PathBuf::from(&set.path), PathBuf::from(&to)));
            }
            conflicts.extend(placement.conflicts.iter().cloned());
            if let Some(first) = placement.dirs_kept.first() {
                let kept = match placement.dirs_kept.len() {
                    1 => "1 existing directory keeps its".to_owned(),
                    n => format!("{n} existing directories keep their"),
                };
                self.warnings.push(format!(
                    "{to}: {kept} own mode or owner, which differ from the bundle's (first: {})",
                    first.display()
                ));
            }
            placements.push(placement);
        }
        self.check_services(&pools, &sites, &domain_to, php.as_ref());
        let sets_of = |wanted: ServiceKind| -> Vec<&str> {
            d.files
                .iter()
                .map(|f| f.path.as_str())
                .filter(|path| {
                    templates.iter().any(|(t, _, kind)| {
                        *kind == Some(wanted) && expand_template(t, &old).is_ok_and(|p| p == *path)
                    })
                })
                .collect()
        };
        self.check_enabling_links(
            &enabling,
            &sets_of(ServiceKind::NginxSite),
            &sets_of(ServiceKind::PhpFpmPool),
        );
        let symlink_retargets = self.check_symlinks(&d.files, &renamed)?;
        for (from, to, within, service) in identical {
            let staged = self.tree.join(from.trim_start_matches('/'));
            let changed = config_rewrites.iter().any(|r| r.file.starts_with(&staged))
                || symlink_retargets
                    .iter()
                    .any(|(link, _)| link.starts_with(&staged));
            if changed {
                self.claim_or_block(&from, &to, within, service, &packaged)?;
            }
        }

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
                    self.blockers.push(format!(
                        "package {name} is needed and not available here{}",
                        php_hint(&name)
                    ));
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

        let packages = host::package_bytes(&packages_to_install);
        if packages.is_none() {
            self.warnings.push(format!(
                "apt gave no sizes for {}: the room they need is not counted",
                packages_to_install.join(", ")
            ));
        }
        let disk = self.disk_needs(&placements, &planned_dbs, header, packages)?;
        for need in &disk {
            match need.free {
                Some(free) if free < need.needed => self.blockers.push(format!(
                    "{} bytes are needed on the filesystem of {}, {free} are free",
                    need.needed,
                    need.path.display(),
                )),
                Some(_) => {}
                None => self.warnings.push(format!(
                    "the filesystem of {} reports no size: whether its {} bytes fit is not known",
                    need.path.display(),
                    need.needed
                )),
            }
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
            claims: {
                let mut claims = self.claims.clone();
                claims.sort();
                claims.dedup();
                claims
            },
        })
    }

    /// Records what the set `from`, placed at `to`, will hold for the tenant, or why it
    /// may not be placed there ([`Self::claim`]).
    fn claim_or_block(
        &mut self,
        from: &str,
        to: &str,
        within: &[String],
        service: bool,
        packaged: &BTreeSet<PathBuf>,
    ) -> Result<(), ImportError> {
        match self.claim(Path::new(to), within, service, packaged)? {
            Ok(claim) => self.claims.extend(claim),
            Err(reason) => self
                .blockers
                .push(format!("file set {from} → {to}: {reason}")),
        }
        Ok(())
    }

    /// Whether a file set may go to `to`, and what the tenant then holds there. A bundle is
    /// one tenant's: it may make new files and directories in the places where apps live,
    /// but add to or replace what is already there (another site's web root, a directory
    /// another program reads settings from, /var/lib/php/sessions, another site's config)
    /// only if the app's packages put it there, this tenant's earlier imports did, or
    /// `--merge-into` names it; and never what another tenant's imports put there, unless
    /// `--merge-into` names that. A service's file (`service`) has had its place checked
    /// already: a new one may be made there.
    fn claim(
        &self,
        to: &Path,
        within: &[String],
        service: bool,
        packaged: &BTreeSet<PathBuf>,
    ) -> Result<Result<Option<PathBuf>, String>, ImportError> {
        let existing = host::is_there(to)?;
        // What the set adds to or replaces: itself if it is there, else the nearest
        // directory above it that is.
        let mut anchor = to;
        while !existing && !host::is_there(anchor)? {
            match anchor.parent() {
                Some(parent) => anchor = parent,
                None => break,
            }
        }
        // Exact paths: naming or having made /srv/www is no right to what others put below.
        let named = |p: &Path| self.options.merge_into.iter().any(|m| m == p);
        // A claim on a packaged path was made before the package was installed: nobody's.
        let others = self.other_claims.iter().find(|(_, claim)| {
            !packaged.contains(claim) && (anchor.starts_with(claim) || claim.starts_with(to))
        });
        if let Some((tenant, claim)) = others {
            if !named(claim) && !named(anchor) {
                return Ok(Err(format!(
                    "{} is tenant {tenant}'s (its imports placed {}): name it with --merge-into {} if this tenant may add to it",
                    anchor.display(),
                    claim.display(),
                    claim.display()
                )));
            }
        }
        if named(anchor) || self.earlier_claims.iter().any(|c| c == anchor) {
            return Ok(Ok(Some(to.to_owned())));
        }
        if existing && packaged.contains(to) {
            // Shared by every instance of the app on this host (Debian's wp-content): no
            // tenant's alone.
            return Ok(Ok(None));
        }
        // New, in a place where apps live (or above it: a host without /srv yet), in a
        // directory of the app's packages, or in its service's directory.
        let where_apps_live = baluchon_recipe::ALLOWED_ROOTS
            .iter()
            .copied()
            .chain(within.iter().map(String::as_str))
            .any(|root| Path::new(root).starts_with(anchor));
        if !existing && (where_apps_live || packaged.contains(anchor) || service) {
            return Ok(Ok(Some(to.to_owned())));
        }
        Ok(Err(format!(
            "{} is already on this host, and neither the app's packages nor an earlier import of this tenant put it there: a bundle does not add to it or replace it; name it with --merge-into {} if it is this tenant's",
            anchor.display(),
            anchor.display()
        )))
    }
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

impl Planner<'_> {
    /// Room the apply needs on each filesystem: a file set whose destination is on another
    /// filesystem than staging is copied there (on the same one it is renamed: no room),
    /// a database is restored into its server's directory (about its dump's size), and
    /// packages (`(downloaded, unpacked)` bytes) go through apt's cache into /usr.
    fn disk_needs(
        &self,
        placements: &[SetPlacement],
        databases: &[PlannedDatabase],
        header: &baluchon_bundle::BundleHeader,
        packages: Option<(u64, u64)>,
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
        if let Some((downloaded, unpacked)) = packages.filter(|&(d, u)| d + u > 0) {
            for (dir, bytes) in [("/var/cache/apt/archives", downloaded), ("/usr", unpacked)] {
                if let Some(fs) = place::filesystem_of(Path::new(dir)) {
                    add(fs, bytes)?;
                }
            }
        }
        Ok(needs.into_iter().map(|(_, need)| need).collect())
    }
}

/// The recipe value that holds an app's PHP version (`7.4`), as the built-in recipes name it.
const PHP_VERSION: &str = "php_version";

/// A PHP version change asked for with `--php-version`.
pub(super) struct PhpChange {
    pub(super) from: String,
    pub(super) to: String,
}

impl PhpChange {
    /// How a version shows in Debian's paths and names: `php7.4-fpm` (package, service,
    /// socket), `php-fpm7.4` (binary), `/php/7.4/` (configuration).
    pub(super) fn pairs(&self) -> Vec<(String, String)> {
        let (from, to) = (&self.from, &self.to);
        vec![
            (format!("php{from}-"), format!("php{to}-")),
            (format!("php-fpm{from}"), format!("php-fpm{to}")),
            (format!("/php/{from}/"), format!("/php/{to}/")),
        ]
    }

    pub(super) fn rename(&self, text: &str) -> String {
        self.pairs()
            .iter()
            .fold(text.to_owned(), |text, (from, to)| text.replace(from, to))
    }
}

/// For a missing `phpX.Y-…` package: the versions this host has.
fn php_hint(package: &str) -> String {
    if !package.starts_with("php") {
        return String::new();
    }
    let installed = host::installed_php_versions();
    if installed.is_empty() {
        return String::new();
    }
    format!(
        " (this host has PHP {}: --php-version {} runs the app on it)",
        installed.join(", "),
        installed[installed.len() - 1]
    )
}

impl Planner<'_> {
    fn php_change(&mut self, old: &BTreeMap<String, String>) -> Option<PhpChange> {
        let to = self.options.php_version.as_ref()?;
        let plain = |v: &str| {
            v.split('.').count() == 2
                && v.split('.')
                    .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        };
        if !plain(to) {
            self.blockers.push(format!(
                "--php-version {to:?} is not a PHP version such as 8.2"
            ));
            return None;
        }
        let Some(from) = old.get(PHP_VERSION) else {
            self.blockers.push(format!(
                "--php-version: the bundle's {} app has no PHP version ({PHP_VERSION}) to change",
                self.description.app
            ));
            return None;
        };
        (from != to).then(|| PhpChange {
            from: from.clone(),
            to: to.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::PhpChange;

    #[test]
    fn a_php_version_is_renamed_where_debian_puts_it() {
        let change = PhpChange {
            from: "7.4".to_owned(),
            to: "8.2".to_owned(),
        };
        assert_eq!(
            change.rename("fastcgi_pass unix:/run/php/php7.4-fpm-blog.sock;"),
            "fastcgi_pass unix:/run/php/php8.2-fpm-blog.sock;"
        );
        assert_eq!(
            change.rename("/etc/php/7.4/fpm/pool.d/blog.conf"),
            "/etc/php/8.2/fpm/pool.d/blog.conf"
        );
        assert_eq!(change.rename("php-fpm7.4 -t"), "php-fpm8.2 -t");
        // Other numbers stay.
        assert_eq!(
            change.rename("version 7.4.33, port 7400"),
            "version 7.4.33, port 7400"
        );
    }
}
