//! One backup run per tenant at a time, on this machine: an advisory `flock` on a file in
//! the state directory, held for the run and released by the kernel when the process ends,
//! even if it is killed. Object stores offer no lock to use instead (Garage ignores
//! conditional writes), and runs of one tenant from two machines are the scheduler's to
//! prevent.

use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::catalog::check_tenant;
use crate::BackupError;

/// Held while it lives.
#[derive(Debug)]
pub struct TenantLock {
    _file: fs_err::File,
    path: PathBuf,
}

impl TenantLock {
    /// Takes `DIR/TENANT.lock`, or fails at once with [`BackupError::Locked`] if another
    /// run holds it.
    pub fn acquire(dir: &Path, tenant: &str) -> Result<Self, BackupError> {
        check_tenant(tenant)?;
        let path = dir.join(format!("{tenant}.lock"));
        let error = |source| BackupError::Lock {
            lock: path.clone(),
            source,
        };
        fs_err::create_dir_all(dir).map_err(error)?;
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(error)?;
        match rustix::fs::flock(file.file(), FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Self { _file: file, path }),
            Err(rustix::io::Errno::WOULDBLOCK) => Err(BackupError::Locked {
                tenant: tenant.to_owned(),
                lock: path,
            }),
            Err(e) => Err(error(e.into())),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let first = TenantLock::acquire(dir.path(), "shop").unwrap();
        let err = TenantLock::acquire(dir.path(), "shop").unwrap_err();
        assert!(
            matches!(&err, BackupError::Locked { tenant, .. } if tenant == "shop"),
            "{err}"
        );
        // Another tenant is not held up.
        let _other = TenantLock::acquire(dir.path(), "blog").unwrap();
        drop(first);
        TenantLock::acquire(dir.path(), "shop").unwrap();
    }
}
