use std::io;
use std::path::PathBuf;

/// Why an app instance could not be captured. No bundle is left behind in any case.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureError {
    #[error(transparent)]
    Recipe(#[from] baluchon_recipe::RecipeError),
    #[error("{path} does not exist, and the recipe does not mark it optional ({what})")]
    MissingPath { path: PathBuf, what: String },
    #[error("the file set {path} was not archived: it was removed, or replaced by a link, while the export ran")]
    SetVanished { path: PathBuf },
    #[error("{path} goes through the symlink {symlink}: the recipe or the app's config must name the real path")]
    ThroughSymlink { path: PathBuf, symlink: PathBuf },
    #[error("cannot read {path}")]
    Unreadable {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("database {id}: cannot start {tool}")]
    Spawn {
        id: String,
        tool: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("database {id}: {tool} failed ({status}): {stderr}")]
    Tool {
        id: String,
        tool: &'static str,
        status: String,
        stderr: String,
    },
    #[error("database {id}: {reason}")]
    Database { id: String, reason: String },
    #[error("SQLite database {path}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the secret values {} would be stored in clear: the import cannot regenerate them (or the recipe does not say in which settings the app reads them, or a file that sets them is reached through a symlink, which the bundle keeps as a link). Encrypt the bundle (--encrypt-to), or accept clear secrets (--allow-clear-secrets)", .names.join(", "))]
    ClearSecrets { names: Vec<String> },
    #[error(transparent)]
    Bundle(#[from] baluchon_bundle::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Why an app import stopped. When it stops during apply, the host has been rolled back
/// (the report says so, or says what could not be undone).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Bundle(#[from] baluchon_bundle::Error),
    #[error(transparent)]
    Recipe(#[from] baluchon_recipe::RecipeError),
    #[error(
        "this bundle holds no app (no {}); import it with --path",
        crate::APP_DESCRIPTION
    )]
    NotAnApp,
    #[error("{member} in the bundle is not valid: {reason}")]
    Description {
        member: &'static str,
        reason: String,
    },
    #[error("another baluchon import of tenant {tenant} is running (lock {lock})")]
    Locked { tenant: String, lock: PathBuf },
    #[error("journal {path}: {reason}")]
    Journal { path: PathBuf, reason: String },
    #[error("bundle {bundle_id} (sequence {sequence}) is older than the last one imported for tenant {tenant} (sequence {last}); refusing to go backwards (--allow-older restores it anyway)")]
    Backwards {
        tenant: String,
        bundle_id: String,
        sequence: u64,
        last: u64,
    },
    #[error("the import cannot proceed:\n  - {}", .0.join("\n  - "))]
    Blocked(Vec<String>),
    /// A rollback met a link on its way that the app's code may have made since the apply.
    #[error("{} is now a link that another account than root may change: not undoing through it (look at it, then run `baluchon recover --tenant T`)", .link.display())]
    UndoThroughLink { link: PathBuf },
    /// A conflict met while placing files, after the plan, so after earlier steps changed
    /// the host (and were undone).
    #[error("{0} (found while applying)")]
    ConflictWhileApplying(String),
    #[error(
        "the filesystem of the work directory {} cannot stage this app: it refused {}; give \
         --work-dir a directory on another filesystem",
        dir.display(),
        lacking.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    WorkDirLacks {
        dir: PathBuf,
        lacking: Vec<baluchon_bundle::Lack>,
    },
    #[error("cannot try what the filesystem of {} holds: {reason}", dir.display())]
    ProbeFailed { dir: PathBuf, reason: String },
    #[error(
        "{} cannot be placed: the filesystem of {} refused {}",
        to.display(),
        dir.display(),
        lacking.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
    )]
    DestinationLacks {
        /// Where the file set goes.
        to: PathBuf,
        /// Its nearest existing directory, where the filesystem was tried.
        dir: PathBuf,
        lacking: Vec<baluchon_bundle::Lack>,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Tool {
        what: String,
        status: String,
        stderr: String,
    },
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot rewrite {what}: {reason}")]
    Rewrite { what: String, reason: String },
    #[error("the health check failed: {0}")]
    Health(String),
    #[error("stopped at step {step} as the test hook asked")]
    Hook { step: String },
    #[error("{failure}; then rolling back failed too: {rollback}")]
    RollbackFailed { failure: String, rollback: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}
