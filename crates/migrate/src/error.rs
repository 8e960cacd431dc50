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
    #[error(transparent)]
    Bundle(#[from] baluchon_bundle::Error),
    #[error(transparent)]
    Io(#[from] io::Error),
}
