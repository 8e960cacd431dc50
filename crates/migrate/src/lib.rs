//! Moving a tenant's app: capturing an instance that a recipe describes into one bundle
//! (its files, consistent database dumps, the packages and services it relies on).
//!
//! This crate never prints and never exits. Programs it runs (database dump tools) get
//! their arguments as a vector, never through a shell, and credentials through 0600 files,
//! never on a command line.

mod capture;
mod collect;
mod description;
mod error;
mod import;
pub mod rewrite;
mod secrets;
mod selection;

pub use capture::{
    capture_instance, plan_instance, CaptureOptions, CapturePlan, CaptureReport, DatabasePlan,
    FileSetSummary,
};
pub use description::{
    AppDescription, DatabaseDump, ExcludedEntry, FileSetRecord, PackageRecord, ServiceRecord,
    APP_DESCRIPTION, APP_FORMAT, APP_RECIPE,
};
pub use error::{CaptureError, ImportError};
pub use import::{
    prepare_import, recover, Change, ImportOptions, ImportPlan, ImportReport, OnConflict,
    PlannedDatabase, Prepared, PreparedImport, Rename, SetPlacement, DEFAULT_WORK_DIR,
};
