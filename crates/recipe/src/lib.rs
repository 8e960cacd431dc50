//! App recipes: declarative descriptions of how an application lives on a host (where its
//! instances are, which files, databases, packages and services make one up, what is
//! host-specific) and the reading of a host through them.
//!
//! A recipe is data. Resolving one reads files and dpkg's database through a [`HostView`];
//! it never runs a program, and nothing in a recipe is ever evaluated as code.

mod dpkg;
mod error;
mod extract;
mod format;
mod host;
mod paths;
mod recipe;
mod slot;
mod template;

pub use dpkg::{installed as parse_dpkg_status, InstalledPackage, INFO_DIR as DPKG_INFO_DIR};
pub use error::RecipeError;
pub use format::{
    DatabaseRewrite, DatabaseRule, Engine, FileSet, HealthCheck, Packages, RecipeFile, RehostRule,
    RehostSource, Role, ServiceKind, ServiceRule, ValuePlace, ValueRule, RECIPE_FORMAT,
};
pub use host::{HostView, LocalHost, MAX_VALUE_FILE};
pub use paths::{check_allowed, check_within, ALLOWED_ROOTS};
pub use recipe::{
    builtin_recipes, Catalogue, Database, FileSetPlan, Health, Instance, Recipe, Service, Value,
    HOST_RECIPE_DIR,
};
pub use slot::Slot;
pub use template::{
    expand as expand_template, placeholders as template_placeholders,
    uses_empty as template_uses_empty,
};
