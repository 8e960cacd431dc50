//! `data/app/app.json`: what an app bundle holds beyond the files, for the import and for
//! people. Documented in docs/app-bundle.md.

use std::collections::BTreeMap;

use baluchon_recipe::{Engine, Role, ServiceKind};
use serde::{Deserialize, Serialize};

pub const APP_FORMAT: &str = "baluchon-app";
/// Payload name of the description.
pub const APP_DESCRIPTION: &str = "data/app/app.json";
/// Payload name of the recipe used, kept for reference (never executed).
pub const APP_RECIPE: &str = "data/app/recipe.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppDescription {
    pub format: String,
    pub format_version: u32,
    pub app: String,
    /// Where the recipe came from on the source host ("built-in wordpress", a path).
    pub recipe_origin: String,
    pub instance: String,
    pub domain: String,
    pub version: Option<String>,
    /// Values read from the source host; secrets are named in `secret_values` only.
    pub values: BTreeMap<String, String>,
    pub secret_values: Vec<String>,
    /// Secrets left out of the bundle's config files (replaced by `BALUCHON-REDACTED`),
    /// which the import regenerates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub redacted_secrets: Vec<String>,
    pub files: Vec<FileSetRecord>,
    /// Entries inside the file sets that were deliberately not copied, each with why.
    pub excluded: Vec<ExcludedEntry>,
    pub databases: Vec<DatabaseDump>,
    pub services: Vec<ServiceRecord>,
    /// Packages providing the app's code, as installed on the source host.
    pub code_packages: Vec<PackageRecord>,
    /// Packages the target needs, with the source host's version when installed there.
    pub needs_packages: Vec<PackageRecord>,
    /// Every package installed on the source host (dpkg's view).
    pub installed_packages: Vec<PackageRecord>,
    /// Optional parts of the recipe this instance does not have.
    pub omitted: Vec<String>,
    pub health: Option<HealthRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSetRecord {
    pub role: Role,
    /// Absolute path on the source host; in the tree without its leading `/`.
    pub path: String,
    /// `directory`, `file` or `symlink` (an absent optional set is in `omitted` instead).
    pub kind: String,
    /// Entries archived under this set (those of nested sets not counted).
    pub entries: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExcludedEntry {
    pub path: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseDump {
    pub id: String,
    pub engine: Engine,
    /// The dump's payload file in the bundle.
    pub dump: String,
    /// How the dump was made (the tool and its options), for a reader restoring by hand.
    pub method: String,
    pub name: Option<String>,
    pub user: Option<String>,
    pub host: Option<String>,
    pub path: Option<String>,
    pub server_version: String,
    pub charset: Option<String>,
    pub collation: Option<String>,
    /// What a person restoring it should know about how consistent it is (MariaDB tables
    /// that take no part in transactions); absent when there is nothing to say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    pub kind: ServiceKind,
    pub path: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageRecord {
    pub name: String,
    /// `None`: not installed on the source host.
    pub version: Option<String>,
    pub architecture: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthRecord {
    pub url: String,
    pub status: u16,
    pub contains: Option<String>,
}
