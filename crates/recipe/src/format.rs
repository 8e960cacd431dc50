//! The recipe file, as written in `manifests/*.toml` (docs/manifests.md is the reference).
//!
//! Every table refuses unknown fields: a misspelt key is an error, not a silently ignored
//! rule.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::slot::Slot;

/// The only recipe format version this build reads.
pub const RECIPE_FORMAT: u32 = 1;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RecipeFile {
    /// Format version of the recipe file itself.
    pub recipe: u32,
    /// The app's name, as given to `--app`.
    pub name: String,
    pub title: String,
    pub detect: Detect,
    /// Named values read from the host; other fields refer to them as `{name}`.
    #[serde(default)]
    pub values: BTreeMap<String, ValueRule>,
    #[serde(default)]
    pub files: Vec<FileSet>,
    #[serde(default)]
    pub databases: Vec<DatabaseRule>,
    #[serde(default)]
    pub packages: Packages,
    #[serde(default)]
    pub services: Vec<ServiceRule>,
    #[serde(default)]
    pub rehost: Vec<RehostRule>,
    pub health: Option<HealthCheck>,
}

/// How instances are found: each path matching `pattern` is one instance, and the part that
/// matched `{instance}` is its name.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Detect {
    pub pattern: String,
    /// Only files whose content contains this text are instances (a vhost serving the
    /// app's code directory, say).
    pub containing: Option<String>,
    /// Instance names that match the pattern but are not instances (a default config).
    #[serde(default)]
    pub skip: Vec<String>,
    /// Packages that must be installed for any instance to exist.
    #[serde(default)]
    pub packages: Vec<String>,
    /// The value that holds the instance's domain (`{instance}` when absent).
    pub domain: Option<String>,
    /// The value that holds the instance's app version.
    pub version: Option<String>,
}

/// Where a value comes from: a file or a template (`from`), or a package's version, then
/// at most one extractor.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRule {
    /// A file to read (a template; the path must lie under an allowed root).
    pub file: Option<String>,
    /// Among the files matching this glob, the first whose content contains `containing`.
    pub file_glob: Option<String>,
    pub containing: Option<String>,
    /// A template, for values derived from others.
    pub from: Option<String>,
    /// The installed version of this Debian package.
    pub package_version: Option<String>,
    /// `define('NAME', 'value');` in PHP.
    pub php_define: Option<String>,
    /// `$name = 'value';` in PHP.
    pub php_variable: Option<String>,
    /// `$conf['key'] = 'value';` in PHP (DokuWiki style): the array and the key.
    pub php_array: Option<String>,
    /// A regular expression with one capture group.
    pub regex: Option<String>,
    /// A dotted key in a TOML file.
    pub toml_key: Option<String>,
    /// `KEY=value` in an environment file (dotenv, systemd `EnvironmentFile=`).
    pub env_key: Option<String>,
    /// Used when the file, the match or the key is absent.
    pub default: Option<String>,
    /// Never shown, never written to the bundle's description (the config files that hold
    /// it are archived as they are; bundle encryption is what protects them).
    #[serde(default)]
    pub secret: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Locally installed code (plugins, themes); packaged code is recorded, not copied.
    Code,
    Config,
    Data,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileSet {
    pub role: Role,
    /// An absolute path (a template): a directory taken whole, or a single file.
    pub path: String,
    /// Globs relative to `path` of what to leave out (caches, locks); each exclusion is
    /// recorded in the bundle.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A missing path is recorded instead of failing the export.
    #[serde(default)]
    pub optional: bool,
    /// Files that a package in `packages.code` installed and that are unmodified (their
    /// md5sum matches dpkg's) are recorded instead of copied.
    #[serde(default)]
    pub skip_package_files: bool,
    /// Directories the path must lie in once filled in. A path made from a value that the
    /// tenant controls (one read from the app's own config) needs this: otherwise the
    /// tenant could point root's export, or an import, at another part of the host.
    #[serde(default)]
    pub within: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    Mariadb,
    Postgresql,
    Sqlite,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseRule {
    /// How the dump is named in the bundle (`data/db/<id>.…`).
    pub id: String,
    pub engine: Engine,
    /// Database name (MariaDB, PostgreSQL).
    pub name: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Option<String>,
    /// The database file (SQLite).
    pub path: Option<String>,
    /// The instance may have no such database (the value is empty or the file is absent).
    #[serde(default)]
    pub optional: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Packages {
    /// Packages that provide the app's code: their names and versions are recorded, their
    /// files are not copied.
    #[serde(default)]
    pub code: Vec<String>,
    /// Packages the target must have (templates: `php{php_version}-fpm`).
    #[serde(default)]
    pub needs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceKind {
    NginxSite,
    PhpFpmPool,
    Cron,
    SystemdUnit,
}

/// A service definition the app relies on. Its file is archived (as config) and described
/// in the bundle, so that the import can install it and reload the service.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRule {
    pub kind: ServiceKind,
    pub path: String,
    #[serde(default)]
    pub optional: bool,
    /// As for file sets: the directories the path must lie in once filled in.
    #[serde(default)]
    pub within: Vec<String>,
}

/// What changes when a value differs on the new host. Only rules: the import applies them
/// with baluchon's own code, never with code from a bundle.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RehostRule {
    /// The value that changes.
    pub value: String,
    /// Where the new value comes from: `domain` (the import's `--domain`), `generate` (a
    /// new random secret), `database` (the name the import gives the new database), or
    /// `keep`.
    pub with: RehostSource,
    /// Files (templates, after rehosting) in which the old value is replaced by the new.
    #[serde(default)]
    pub files: Vec<String>,
    /// Database content in which the old value is replaced.
    #[serde(default)]
    pub database: Vec<DatabaseRewrite>,
    /// Other settings that receive the new value, besides the one it is read from: where
    /// the app itself reads it when the value comes from a file of baluchon's.
    #[serde(default)]
    pub also: Vec<ValuePlace>,
}

/// A setting in a file: the file and one writable extractor.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ValuePlace {
    /// The file (a template filled with the values the bundle was made with); a template
    /// that fills to nothing means "not configured for this instance".
    pub file: String,
    pub php_define: Option<String>,
    pub php_variable: Option<String>,
    pub php_array: Option<String>,
    pub toml_key: Option<String>,
    pub env_key: Option<String>,
}

impl ValuePlace {
    /// The setting, if exactly one extractor is given.
    pub fn slot(&self) -> Option<Slot> {
        writable_slot(
            &self.php_define,
            &self.php_variable,
            &self.php_array,
            &self.toml_key,
            &self.env_key,
        )
    }
}

impl ValueRule {
    /// Where the value is read, if baluchon can also write it there.
    pub fn slot(&self) -> Option<Slot> {
        if self.regex.is_some() {
            return None;
        }
        writable_slot(
            &self.php_define,
            &self.php_variable,
            &self.php_array,
            &self.toml_key,
            &self.env_key,
        )
    }
}

fn writable_slot(
    php_define: &Option<String>,
    php_variable: &Option<String>,
    php_array: &Option<String>,
    toml_key: &Option<String>,
    env_key: &Option<String>,
) -> Option<Slot> {
    let mut slots = [
        php_define.clone().map(Slot::PhpDefine),
        php_variable.clone().map(Slot::PhpVariable),
        php_array.clone().map(Slot::PhpArray),
        toml_key.clone().map(Slot::Toml),
        env_key.clone().map(Slot::Env),
    ]
    .into_iter()
    .flatten();
    let slot = slots.next()?;
    slots.next().is_none().then_some(slot)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RehostSource {
    Domain,
    Generate,
    Database,
    User,
    Keep,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseRewrite {
    /// The `id` of a database rule.
    pub database: String,
    /// Tables (templates) whose text columns are searched.
    pub tables: Vec<String>,
    /// `table.column` pairs left alone (WordPress guids).
    #[serde(default)]
    pub skip_columns: Vec<String>,
    /// Values may be PHP-serialized: length prefixes are fixed after replacing.
    #[serde(default)]
    pub php_serialized: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// A template, usually `http://{domain}/…`; the request goes to the local web server
    /// with this Host.
    pub url: String,
    #[serde(default = "ok_status")]
    pub status: u16,
    /// Text the response body must contain.
    pub contains: Option<String>,
}

fn ok_status() -> u16 {
    200
}

/// The names the recipe format uses, for messages.
macro_rules! display_as_written {
    ($($ty:ty => { $($variant:ident => $text:literal),* $(,)? }),* $(,)?) => {$(
        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(match self {
                    $(Self::$variant => $text),*
                })
            }
        }
    )*};
}

display_as_written! {
    Role => { Code => "code", Config => "config", Data => "data" },
    Engine => { Mariadb => "mariadb", Postgresql => "postgresql", Sqlite => "sqlite" },
    ServiceKind => {
        NginxSite => "nginx-site",
        PhpFpmPool => "php-fpm-pool",
        Cron => "cron",
        SystemdUnit => "systemd-unit",
    },
}
