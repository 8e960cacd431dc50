//! What can go wrong with a backup destination.
//!
//! Every error names the destination (as the user wrote it) and the object it was about, so
//! a failed nightly run says where to look without a second attempt.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    #[error("{text:?} is not a backup destination: {reason}")]
    Location { text: String, reason: String },
    #[error("{tenant:?} is not a tenant name: letters, digits, '.', '_' and '-' only")]
    Tenant { tenant: String },
    #[error("the S3 setting {key:?} is unknown")]
    S3Setting { key: String },
    #[error("cannot open the S3 bucket {bucket}")]
    S3Open {
        bucket: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{destination}: cannot write {key}")]
    Write {
        destination: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("{destination}: cannot read {key}")]
    Read {
        destination: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("{destination}: cannot list the backups")]
    List {
        destination: String,
        #[source]
        source: io::Error,
    },
    #[error("{destination}: cannot delete {key}")]
    Delete {
        destination: String,
        key: String,
        #[source]
        source: io::Error,
    },
    #[error("{destination}: S3 {operation} of {key} failed")]
    S3 {
        destination: String,
        operation: &'static str,
        key: String,
        // Boxed: object_store's errors are large, and every Result here carries this type.
        #[source]
        source: Box<object_store::Error>,
    },
    #[error("{destination}: SSH {operation} of {key} failed")]
    Ssh {
        destination: String,
        operation: &'static str,
        key: String,
        #[source]
        source: Box<baluchon_transport::TransportError>,
    },
    #[error("{destination}: {key} has sha256 {actual}, but its marker records {expected}")]
    Corrupted {
        destination: String,
        key: String,
        expected: String,
        actual: String,
    },
    #[error("cannot hash {}", path.display())]
    Hash {
        path: PathBuf,
        #[source]
        source: Box<baluchon_transport::TransportError>,
    },
    #[error("{destination}: the marker {key} is not a `sha256sum` line for its bundle")]
    Marker { destination: String, key: String },
    #[error("another backup of tenant {tenant} is running (it holds the lock {})", lock.display())]
    Locked { tenant: String, lock: PathBuf },
    #[error("cannot take the lock {}", lock.display())]
    Lock {
        lock: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no retention rule given: say how many backups to keep (--keep-last, --keep-daily, --keep-weekly, --keep-monthly)")]
    NoRetentionRule,
    #[error(transparent)]
    Io(#[from] io::Error),
}
