//! A loaded, checked recipe, and an instance resolved on a host.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use regex::Regex;

use crate::error::RecipeError;
use crate::extract;
use crate::format::{Engine, RecipeFile, RehostRule, Role, ServiceKind, ValueRule, RECIPE_FORMAT};
use crate::host::{glob_in, HostView};
use crate::paths::{check_allowed, check_within};
use crate::slot::Slot;
use crate::template::{expand, placeholders, uses_empty};

/// Where a host keeps its own recipes; one with the name of a built-in one replaces it.
pub const HOST_RECIPE_DIR: &str = "/etc/baluchon/recipes";

const INSTANCE: &str = "instance";

/// The recipes shipped in `manifests/`, compiled in.
pub fn builtin_recipes() -> [(&'static str, &'static str); 3] {
    [
        (
            "wordpress",
            include_str!("../../../manifests/wordpress.toml"),
        ),
        ("dokuwiki", include_str!("../../../manifests/dokuwiki.toml")),
        ("custom", include_str!("../../../manifests/custom.toml")),
    ]
}

/// A recipe that parsed and passed every check that does not need a host.
#[derive(Debug, Clone)]
pub struct Recipe {
    file: RecipeFile,
    text: String,
    origin: String,
    /// Value names in an order where each comes after the values it refers to.
    order: Vec<String>,
    regexes: BTreeMap<String, Regex>,
}

impl Recipe {
    /// Parses and checks a recipe; `origin` names it in errors (a path, or "built-in x").
    pub fn parse(text: &str, origin: &str) -> Result<Self, RecipeError> {
        let invalid = |field: &str, reason: String| RecipeError::Invalid {
            origin: origin.to_owned(),
            field: field.to_owned(),
            reason,
        };
        // The version first, so a newer recipe says "unsupported" rather than "unknown field".
        #[derive(serde::Deserialize)]
        struct VersionOnly {
            recipe: u32,
        }
        let version: Result<VersionOnly, _> = toml::from_str::<toml::Table>(text)
            .map_err(|source| RecipeError::Parse {
                origin: origin.to_owned(),
                source,
            })?
            .try_into();
        if let Ok(v) = version {
            if v.recipe != RECIPE_FORMAT {
                return Err(RecipeError::Version {
                    origin: origin.to_owned(),
                    found: v.recipe,
                });
            }
        }
        let file: RecipeFile = toml::from_str(text).map_err(|source| RecipeError::Parse {
            origin: origin.to_owned(),
            source,
        })?;
        if !is_name(&file.name, b"-") {
            return Err(invalid(
                "name",
                "use lowercase letters, digits and '-'".to_owned(),
            ));
        }
        let known: BTreeSet<&str> = file
            .values
            .keys()
            .map(String::as_str)
            .chain([INSTANCE])
            .collect();
        let refs_ok = |field: &str, template: &str| -> Result<(), RecipeError> {
            for name in placeholders(template).map_err(|r| invalid(field, r))? {
                if !known.contains(name) {
                    return Err(invalid(field, format!("{{{name}}} is not a defined value")));
                }
            }
            Ok(())
        };
        // A path made from values read on a host (which a tenant may control, and which an
        // import takes from the bundle) must say where it may lead.
        let bounded = |field: &str, template: &str, within: &[String]| -> Result<(), RecipeError> {
            if within.is_empty() && placeholders(template).is_ok_and(|p| !p.is_empty()) {
                return Err(invalid(
                    field,
                    format!("{template} is made from values: it needs `within`"),
                ));
            }
            for dir in within {
                if !crate::paths::ALLOWED_ROOTS.contains(&dir.as_str()) {
                    check_allowed(dir).map_err(|r| invalid(field, format!("within {dir} {r}")))?;
                }
            }
            Ok(())
        };
        // A path with placeholders is checked again once they are filled in.
        let path_ok = |field: &str, template: &str| -> Result<(), RecipeError> {
            refs_ok(field, template)?;
            if placeholders(template).is_ok_and(|p| p.is_empty()) {
                check_allowed(template).map_err(|r| invalid(field, format!("{template} {r}")))?;
            }
            Ok(())
        };

        let pattern = &file.detect.pattern;
        let (dir, leaf) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        if placeholders(pattern).map_err(|r| invalid("detect.pattern", r))? != [INSTANCE]
            || !leaf.contains("{instance}")
        {
            return Err(invalid(
                "detect.pattern",
                "needs exactly one placeholder, {instance}, in its last component".to_owned(),
            ));
        }
        check_allowed(dir).map_err(|r| invalid("detect.pattern", format!("{dir} {r}")))?;
        for (field, name) in [
            ("detect.domain", &file.detect.domain),
            ("detect.version", &file.detect.version),
        ] {
            if let Some(name) = name {
                if !known.contains(name.as_str()) {
                    return Err(invalid(field, format!("{name} is not a defined value")));
                }
            }
        }

        let mut regexes = BTreeMap::new();
        for (name, rule) in &file.values {
            let field = format!("values.{name}");
            if !is_name(name, b"_") || name == INSTANCE {
                return Err(invalid(
                    &field,
                    "a value name is lowercase letters, digits and '_', and not \"instance\""
                        .to_owned(),
                ));
            }
            check_value_rule(rule).map_err(|r| invalid(&field, r))?;
            if let Some(path) = &rule.file {
                path_ok(&field, path)?;
            }
            for template in [&rule.file, &rule.file_glob, &rule.containing, &rule.from]
                .into_iter()
                .flatten()
            {
                refs_ok(&field, template)?;
            }
            if let Some(re) = &rule.regex {
                let compiled = Regex::new(re).map_err(|e| invalid(&field, e.to_string()))?;
                if compiled.captures_len() < 2 {
                    return Err(invalid(
                        &field,
                        "the regex needs a capture group".to_owned(),
                    ));
                }
                regexes.insert(name.clone(), compiled);
            }
        }
        let order = value_order(&file).map_err(|r| invalid("values", r))?;

        for (i, set) in file.files.iter().enumerate() {
            let field = format!("files[{i}]");
            path_ok(&field, &set.path)?;
            bounded(&field, &set.path, &set.within)?;
            for glob in &set.exclude {
                globset::Glob::new(glob).map_err(|e| invalid(&field, e.to_string()))?;
            }
        }
        let mut ids = BTreeSet::new();
        for (i, db) in file.databases.iter().enumerate() {
            let field = format!("databases[{i}]");
            if !is_name(&db.id, b"_-") || !ids.insert(db.id.as_str()) {
                return Err(invalid(
                    &field,
                    format!("id {:?} is not a unique name", db.id),
                ));
            }
            let needed = match db.engine {
                Engine::Sqlite => ("path", db.path.is_some()),
                Engine::Mariadb | Engine::Postgresql => ("name", db.name.is_some()),
            };
            if !needed.1 {
                return Err(invalid(
                    &field,
                    format!("{:?} needs `{}`", db.engine, needed.0),
                ));
            }
            for template in [&db.name, &db.user, &db.password, &db.host]
                .into_iter()
                .flatten()
            {
                refs_ok(&field, template)?;
            }
            if let Some(path) = &db.path {
                path_ok(&field, path)?;
            }
        }
        for (i, service) in file.services.iter().enumerate() {
            let field = format!("services[{i}]");
            path_ok(&field, &service.path)?;
            bounded(&field, &service.path, &service.within)?;
        }
        for template in &file.packages.needs {
            refs_ok("packages.needs", template)?;
        }
        for (i, rule) in file.rehost.iter().enumerate() {
            check_rehost(rule, &known, &ids).map_err(|r| invalid(&format!("rehost[{i}]"), r))?;
            for path in rule.files.iter().chain(rule.also.iter().map(|p| &p.file)) {
                path_ok(&format!("rehost[{i}].files"), path)?;
            }
            for template in rule
                .database
                .iter()
                .flat_map(|d| d.tables.iter().chain(&d.skip_columns))
            {
                refs_ok(&format!("rehost[{i}].database"), template)?;
            }
        }
        if let Some(health) = &file.health {
            refs_ok("health.url", &health.url)?;
        }
        Ok(Self {
            file,
            text: text.to_owned(),
            origin: origin.to_owned(),
            order,
            regexes,
        })
    }

    pub fn name(&self) -> &str {
        &self.file.name
    }

    pub fn title(&self) -> &str {
        &self.file.title
    }

    /// The recipe file as it was read, for embedding in a bundle.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn definition(&self) -> &RecipeFile {
        &self.file
    }

    /// Value names, each after the values its templates use.
    pub fn value_order(&self) -> &[String] {
        &self.order
    }

    fn io(&self, what: impl fmt::Display, source: std::io::Error) -> RecipeError {
        RecipeError::Io {
            app: self.file.name.clone(),
            what: what.to_string(),
            source,
        }
    }

    /// The instances on `host`, sorted; none if a required package is not installed.
    pub fn detect(&self, host: &dyn HostView) -> Result<Vec<String>, RecipeError> {
        let packages = host.packages().map_err(|e| self.io("dpkg's status", e))?;
        if self
            .file
            .detect
            .packages
            .iter()
            .any(|p| !packages.contains_key(p))
        {
            return Ok(Vec::new());
        }
        let pattern = &self.file.detect.pattern;
        let (dir, leaf) = pattern.rsplit_once('/').unwrap_or(("", pattern));
        let (prefix, suffix) = leaf.split_once("{instance}").unwrap_or((leaf, ""));
        let names = host
            .list_dir(Path::new(dir))
            .map_err(|e| self.io(dir, e))?
            .unwrap_or_default();
        let mut found = Vec::new();
        for n in names {
            let path = Path::new(dir).join(&n);
            let Some(middle) = n.strip_prefix(prefix).and_then(|m| m.strip_suffix(suffix)) else {
                continue;
            };
            if !is_instance_name(middle) || self.file.detect.skip.iter().any(|s| s == middle) {
                continue;
            }
            if let Some(needle) = &self.file.detect.containing {
                let text = match host.read_text(&path) {
                    Ok(text) => text,
                    // A directory whose name matches the pattern is not an instance.
                    Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => continue,
                    Err(e) => return Err(self.io(path.display(), e)),
                };
                if !text.is_some_and(|t| t.contains(needle.as_str())) {
                    continue;
                }
            }
            found.push(middle.to_owned());
        }
        found.sort();
        Ok(found)
    }

    /// Reads everything the recipe says about `instance` from `host`.
    pub fn resolve(&self, host: &dyn HostView, instance: &str) -> Result<Instance, RecipeError> {
        let secrets = std::cell::RefCell::new(Vec::new());
        self.resolve_noting_secrets(host, instance, &secrets)
            .map_err(|e| redact(e, &secrets.borrow()))
    }

    fn resolve_noting_secrets(
        &self,
        host: &dyn HostView,
        instance: &str,
        secret_texts: &std::cell::RefCell<Vec<String>>,
    ) -> Result<Instance, RecipeError> {
        let app = &self.file.name;
        let found = self.detect(host)?;
        if !found.iter().any(|f| f == instance) {
            return Err(RecipeError::NoInstance {
                app: app.clone(),
                instance: instance.to_owned(),
                found: if found.is_empty() {
                    "none found".to_owned()
                } else {
                    format!("found: {}", found.join(", "))
                },
            });
        }
        let value_error = |value: &str, reason: String| RecipeError::Value {
            app: app.clone(),
            instance: instance.to_owned(),
            value: value.to_owned(),
            reason,
        };
        let not_allowed = |field: &str, path: &str, reason: String| RecipeError::PathNotAllowed {
            app: app.clone(),
            instance: instance.to_owned(),
            field: field.to_owned(),
            path: path.to_owned(),
            reason,
        };
        let mut plain: BTreeMap<String, String> =
            BTreeMap::from([(INSTANCE.to_owned(), instance.to_owned())]);
        let mut secrets = BTreeSet::new();
        for name in &self.order {
            let rule = &self.file.values[name];
            let text = self.read_value(host, name, rule, &plain, &not_allowed, &value_error)?;
            // A value made from a secret is a secret too.
            let derived = rule.from.as_deref().is_some_and(|t| {
                placeholders(t).is_ok_and(|used| used.iter().any(|u| secrets.contains(*u)))
            });
            if rule.secret || derived {
                secrets.insert(name.clone());
                if !text.is_empty() {
                    secret_texts.borrow_mut().push(text.clone());
                }
            }
            plain.insert(name.clone(), text);
        }
        let fill = |field: &str, template: &str| {
            expand(template, &plain).map_err(|r| value_error(field, r))
        };
        // An optional path made from an empty value is not configured: filling it would
        // name its parent directory (`/etc/nginx/sites-enabled/` for an empty site name).
        let unconfigured = |field: &str, template: &str| -> Result<bool, RecipeError> {
            Ok(uses_empty(template, &plain) || fill(field, template)?.is_empty())
        };
        let allowed_path = |field: &str, template: &str| -> Result<PathBuf, RecipeError> {
            let path = fill(field, template)?;
            check_allowed(&path).map_err(|r| not_allowed(field, &path, r))?;
            Ok(PathBuf::from(path))
        };

        let mut omitted = Vec::new();
        let mut files = Vec::new();
        for (i, set) in self.file.files.iter().enumerate() {
            let field = format!("files[{i}].path");
            if set.optional && unconfigured(&field, &set.path)? {
                omitted.push(format!("{field}: not configured"));
                continue;
            }
            let path = allowed_path(&field, &set.path)?;
            check_within(&path, &set.within).map_err(|r| {
                not_allowed(
                    &field,
                    &path.display().to_string(),
                    format!("{r}, as the recipe requires"),
                )
            })?;
            files.push(FileSetPlan {
                role: set.role,
                path,
                exclude: set.exclude.clone(),
                optional: set.optional,
                skip_package_files: set.skip_package_files,
            });
        }
        let mut services = Vec::new();
        for (i, rule) in self.file.services.iter().enumerate() {
            let field = format!("services[{i}].path");
            if rule.optional && unconfigured(&field, &rule.path)? {
                omitted.push(format!("{field}: not configured"));
                continue;
            }
            let path = allowed_path(&field, &rule.path)?;
            check_within(&path, &rule.within).map_err(|r| {
                not_allowed(
                    &field,
                    &path.display().to_string(),
                    format!("{r}, as the recipe requires"),
                )
            })?;
            services.push(Service {
                kind: rule.kind,
                path,
                optional: rule.optional,
            });
        }
        let mut databases = Vec::new();
        for (i, rule) in self.file.databases.iter().enumerate() {
            let field = format!("databases[{i}]");
            let opt = |t: &Option<String>| t.as_deref().map(|t| fill(&field, t)).transpose();
            let key = match rule.engine {
                Engine::Sqlite => &rule.path,
                Engine::Mariadb | Engine::Postgresql => &rule.name,
            };
            if opt(key)?.is_none_or(|k| k.is_empty()) {
                if rule.optional {
                    omitted.push(format!("database {}: not configured", rule.id));
                    continue;
                }
                return Err(value_error(
                    &field,
                    "the database is not optional, but its name or path is empty".to_owned(),
                ));
            }
            let path = match &rule.path {
                Some(t) => Some(allowed_path(&format!("{field}.path"), t)?),
                None => None,
            };
            databases.push(Database {
                id: rule.id.clone(),
                engine: rule.engine,
                name: opt(&rule.name)?.filter(|n| !n.is_empty()),
                user: opt(&rule.user)?.filter(|n| !n.is_empty()),
                password: opt(&rule.password)?.map(|text| Value { text, secret: true }),
                host: opt(&rule.host)?.filter(|n| !n.is_empty()),
                path,
                optional: rule.optional,
            });
        }
        let mut needs = Vec::new();
        for template in &self.file.packages.needs {
            needs.push(fill("packages.needs", template)?);
        }
        let health = match &self.file.health {
            // Made from an empty value: this instance has no check.
            Some(h) if unconfigured("health.url", &h.url)? => None,
            Some(h) => {
                let url = fill("health.url", &h.url)?;
                if !url.starts_with("http://") {
                    return Err(value_error(
                        "health.url",
                        format!("{url:?} is not an http:// URL"),
                    ));
                }
                Some(Health {
                    url,
                    status: h.status,
                    contains: h.contains.clone(),
                })
            }
            None => None,
        };
        let domain = match &self.file.detect.domain {
            Some(v) => plain[v].clone(),
            None => instance.to_owned(),
        };
        let version = self.file.detect.version.as_ref().map(|v| plain[v].clone());
        let values = plain
            .into_iter()
            .map(|(name, text)| {
                let secret = secrets.contains(&name);
                (name, Value { text, secret })
            })
            .collect();
        Ok(Instance {
            app: app.clone(),
            name: instance.to_owned(),
            domain,
            version,
            values,
            files,
            databases,
            services,
            packages_needed: needs,
            code_packages: self.file.packages.code.clone(),
            health,
            omitted,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn read_value(
        &self,
        host: &dyn HostView,
        name: &str,
        rule: &ValueRule,
        known: &BTreeMap<String, String>,
        not_allowed: &dyn Fn(&str, &str, String) -> RecipeError,
        value_error: &dyn Fn(&str, String) -> RecipeError,
    ) -> Result<String, RecipeError> {
        let field = format!("values.{name}");
        let fill = |t: &str| expand(t, known).map_err(|r| value_error(name, r));
        let missing = |what: String| match &rule.default {
            Some(d) => Ok(d.clone()),
            None => Err(value_error(name, what)),
        };
        if let Some(package) = &rule.package_version {
            let packages = host.packages().map_err(|e| self.io("dpkg's status", e))?;
            return match packages.get(package) {
                Some(p) => Ok(p.version.clone()),
                None => missing(format!("package {package} is not installed")),
            };
        }
        let (source, text) = if let Some(template) = &rule.from {
            ("its template".to_owned(), Some(fill(template)?))
        } else if let Some(template) = &rule.file {
            let path = fill(template)?;
            check_allowed(&path).map_err(|r| not_allowed(&field, &path, r))?;
            let text = host
                .read_text(Path::new(&path))
                .map_err(|e| self.io(&path, e))?;
            (path, text)
        } else if let Some(template) = &rule.file_glob {
            let pattern = fill(template)?;
            let (dir, leaf) = pattern.rsplit_once('/').unwrap_or(("", &pattern));
            check_allowed(dir).map_err(|r| not_allowed(&field, dir, r))?;
            let needle = rule.containing.as_deref().map(fill).transpose()?;
            let mut chosen = None;
            for path in glob_in(host, Path::new(dir), leaf).map_err(|e| self.io(dir, e))? {
                let text = host
                    .read_text(&path)
                    .map_err(|e| self.io(path.display(), e))?;
                if let Some(text) = text {
                    if needle.as_deref().is_none_or(|n| text.contains(n)) {
                        chosen = Some((path.display().to_string(), text));
                        break;
                    }
                }
            }
            match (chosen, needle) {
                (Some((path, text)), _) => (path, Some(text)),
                (None, Some(needle)) => (
                    format!("a file matching {pattern} that contains {needle:?}"),
                    None,
                ),
                (None, None) => (format!("a file matching {pattern}"), None),
            }
        } else {
            return Err(value_error(name, "has no source".to_owned()));
        };
        let Some(text) = text else {
            return missing(format!("{source} does not exist"));
        };
        let extracted = if let Some(key) = &rule.php_define {
            extract::php_define(&text, key)
        } else if let Some(key) = &rule.php_variable {
            extract::php_variable(&text, key)
        } else if let Some(key) = &rule.php_array {
            extract::php_array(&text, key)
        } else if let Some(key) = &rule.toml_key {
            extract::toml_key(&text, key)
                .map_err(|r| value_error(name, format!("{source}: {r}")))?
        } else if let Some(key) = &rule.env_key {
            Slot::Env(key.clone()).get(&text)
        } else if let Some(re) = self.regexes.get(name) {
            extract::regex_capture(&text, re)
        } else if rule.file_glob.is_some() {
            // The value of a file_glob without extractor is the path of the file found.
            Some(source.clone())
        } else {
            Some(text.trim().to_owned())
        };
        match extracted {
            Some(v) => Ok(v),
            None => missing(format!("not found in {source}")),
        }
    }
}

/// The error with every secret value replaced by `<secret>`: error messages end up in logs.
fn redact(err: RecipeError, secrets: &[String]) -> RecipeError {
    let clean = |mut s: String| {
        for secret in secrets {
            s = s.replace(secret.as_str(), "<secret>");
        }
        s
    };
    match err {
        RecipeError::Value {
            app,
            instance,
            value,
            reason,
        } => RecipeError::Value {
            app,
            instance,
            value,
            reason: clean(reason),
        },
        RecipeError::PathNotAllowed {
            app,
            instance,
            field,
            path,
            reason,
        } => RecipeError::PathNotAllowed {
            app,
            instance,
            field,
            path: clean(path),
            reason,
        },
        other => other,
    }
}

fn is_name(s: &str, extra: &[u8]) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || extra.contains(&b))
}

/// Instance names end up in bundle names, database names and paths: a conservative set.
fn is_instance_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn check_value_rule(rule: &ValueRule) -> Result<(), String> {
    let sources = [
        rule.file.is_some(),
        rule.file_glob.is_some(),
        rule.from.is_some(),
        rule.package_version.is_some(),
    ];
    if sources.iter().filter(|s| **s).count() != 1 {
        return Err("needs exactly one of file, file_glob, from, package_version".to_owned());
    }
    let extractors = [
        rule.php_define.is_some(),
        rule.php_variable.is_some(),
        rule.php_array.is_some(),
        rule.regex.is_some(),
        rule.toml_key.is_some(),
        rule.env_key.is_some(),
    ];
    let n = extractors.iter().filter(|e| **e).count();
    if n > 1 {
        return Err(
            "at most one of php_define, php_variable, php_array, regex, toml_key, env_key"
                .to_owned(),
        );
    }
    if n == 1 && rule.package_version.is_some() {
        return Err("package_version takes no extractor".to_owned());
    }
    if rule.containing.is_some() && rule.file_glob.is_none() {
        return Err("containing goes with file_glob".to_owned());
    }
    if rule.php_array.as_ref().is_some_and(|a| !a.contains('.')) {
        return Err("php_array is written array.key".to_owned());
    }
    Ok(())
}

fn check_rehost(
    rule: &RehostRule,
    known: &BTreeSet<&str>,
    databases: &BTreeSet<&str>,
) -> Result<(), String> {
    if !known.contains(rule.value.as_str()) || rule.value == INSTANCE {
        return Err(format!("{} is not a defined value", rule.value));
    }
    for rewrite in &rule.database {
        if !databases.contains(rewrite.database.as_str()) {
            return Err(format!("database {} is not defined", rewrite.database));
        }
    }
    if rule.also.iter().any(|place| place.slot().is_none()) {
        return Err(
            "each place in `also` needs exactly one of php_define, php_variable, php_array, toml_key, env_key"
                .to_owned(),
        );
    }
    if rule
        .also
        .iter()
        .any(|p| p.php_array.as_ref().is_some_and(|a| !a.contains('.')))
    {
        return Err("php_array is written array.key".to_owned());
    }
    Ok(())
}

/// Orders values so each comes after those its templates use; a cycle is an error.
fn value_order(file: &RecipeFile) -> Result<Vec<String>, String> {
    let deps: BTreeMap<&str, Vec<&str>> = file
        .values
        .iter()
        .map(|(name, rule)| {
            let used = [&rule.file, &rule.file_glob, &rule.containing, &rule.from]
                .into_iter()
                .flatten()
                .flat_map(|t| placeholders(t).unwrap_or_default())
                .filter(|n| *n != INSTANCE)
                .collect();
            (name.as_str(), used)
        })
        .collect();
    let mut order: Vec<String> = Vec::new();
    while order.len() < deps.len() {
        let before = order.len();
        for (name, used) in &deps {
            if !order.iter().any(|o| o == name) && used.iter().all(|u| order.iter().any(|o| o == u))
            {
                order.push((*name).to_owned());
            }
        }
        if order.len() == before {
            let stuck: Vec<&str> = deps
                .keys()
                .filter(|n| !order.iter().any(|o| o == *n))
                .copied()
                .collect();
            return Err(format!(
                "values refer to each other in a cycle: {}",
                stuck.join(", ")
            ));
        }
    }
    Ok(order)
}

/// A value read from the host. Secrets never show in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    pub text: String,
    pub secret: bool,
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.secret {
            f.write_str("<secret>")
        } else {
            fmt::Debug::fmt(&self.text, f)
        }
    }
}

/// One instance of an app on a host, with every template filled in.
#[derive(Debug, Clone)]
pub struct Instance {
    pub app: String,
    pub name: String,
    pub domain: String,
    pub version: Option<String>,
    pub values: BTreeMap<String, Value>,
    pub files: Vec<FileSetPlan>,
    pub databases: Vec<Database>,
    pub services: Vec<Service>,
    pub packages_needed: Vec<String>,
    pub code_packages: Vec<String>,
    pub health: Option<Health>,
    /// Optional parts the instance does not have, and why.
    pub omitted: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct FileSetPlan {
    pub role: Role,
    pub path: PathBuf,
    pub exclude: Vec<String>,
    pub optional: bool,
    pub skip_package_files: bool,
}

#[derive(Debug, Clone)]
pub struct Database {
    pub id: String,
    pub engine: Engine,
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<Value>,
    pub host: Option<String>,
    pub path: Option<PathBuf>,
    pub optional: bool,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub kind: ServiceKind,
    pub path: PathBuf,
    pub optional: bool,
}

#[derive(Debug, Clone)]
pub struct Health {
    pub url: String,
    pub status: u16,
    pub contains: Option<String>,
}

/// The recipes a host knows: the built-in ones, replaced or completed by the host's own.
#[derive(Debug, Clone)]
pub struct Catalogue {
    recipes: Vec<Recipe>,
}

impl Catalogue {
    /// Built-in recipes, then every `*.toml` of each directory in `dirs` (a missing
    /// directory is fine; an invalid recipe in one is an error).
    pub fn load(dirs: &[PathBuf]) -> Result<Self, RecipeError> {
        let mut recipes: Vec<Recipe> = Vec::new();
        for (name, text) in builtin_recipes() {
            recipes.push(Recipe::parse(text, &format!("built-in {name}"))?);
        }
        for dir in dirs {
            let entries = match fs_err::read_dir(dir) {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(RecipeError::Io {
                        app: "recipes".to_owned(),
                        what: dir.display().to_string(),
                        source,
                    })
                }
            };
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            paths.sort();
            let mut from_dir: Vec<Recipe> = Vec::new();
            for path in paths {
                let recipe = Self::read(&path)?;
                if let Some(first) = from_dir.iter().find(|r| r.name() == recipe.name()) {
                    return Err(RecipeError::Duplicate {
                        name: recipe.name().to_owned(),
                        first: first.origin.clone(),
                        second: recipe.origin.clone(),
                    });
                }
                recipes.retain(|r| r.name() != recipe.name());
                from_dir.push(recipe);
            }
            recipes.extend(from_dir);
        }
        recipes.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(Self { recipes })
    }

    /// Reads one recipe file.
    pub fn read(path: &Path) -> Result<Recipe, RecipeError> {
        let text = fs_err::read_to_string(path).map_err(|source| RecipeError::Io {
            app: "recipes".to_owned(),
            what: path.display().to_string(),
            source,
        })?;
        Recipe::parse(&text, &path.display().to_string())
    }

    pub fn recipes(&self) -> &[Recipe] {
        &self.recipes
    }

    pub fn get(&self, name: &str) -> Result<&Recipe, RecipeError> {
        self.recipes
            .iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| RecipeError::UnknownApp {
                name: name.to_owned(),
                known: self
                    .recipes
                    .iter()
                    .map(Recipe::name)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}
