//! Private working directories (a bundle being exported, sealed or checked) that a killed
//! run would leave behind, with a whole bundle in them: the next run in the same place
//! removes them (see `baluchon_bundle::leftovers`).

use std::path::Path;

use anyhow::Context as _;
use baluchon_bundle::leftovers;

/// Removed when dropped; while it lives, a lock file in it tells other runs it is in use.
#[derive(Debug)]
pub struct ScratchDir {
    dir: tempfile::TempDir,
    _lock: fs_err::File,
}

impl ScratchDir {
    /// A new directory `PREFIX…` in `parent`, after removing those an interrupted run left
    /// there (each named on standard error).
    pub fn new(parent: &Path, prefix: &str) -> anyhow::Result<Self> {
        let failed = || {
            format!(
                "cannot create a temporary directory in {}",
                parent.display()
            )
        };
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .with_context(failed)?;
        let lock =
            fs_err::File::create(dir.path().join(leftovers::DIR_LOCK)).with_context(failed)?;
        leftovers::hold(&lock).with_context(failed)?;
        for removed in leftovers::remove_abandoned(parent, prefix, "") {
            eprintln!(
                "baluchon: removed {}, left by a run that was interrupted",
                removed.display()
            );
        }
        Ok(Self { dir, _lock: lock })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}
