//! Scheduled backups: bundles kept at a destination — a directory, a directory on another
//! host over SSH, or an S3 bucket — listed, fetched, checked and pruned.
//!
//! * [`Location`] parses a destination as written; [`Destination`] is one opened.
//! * [`catalog`](store) names backups so a listing says what they are, and writes each one's
//!   `sha256sum` marker last: a bundle without it is an unfinished upload, never listed.
//! * [`Retention`] decides what to keep, with restic's rules.
//! * [`TenantLock`] refuses a second concurrent run for the same tenant.
//!
//! Making the bundle (export) and checking its signature are the bundle crate's. This crate
//! never prints and never exits, and reads no environment variable: the caller hands it the
//! S3 settings.

mod catalog;
mod destination;
mod error;
mod lock;
mod retention;
mod s3;

pub use catalog::{
    bundle_key, check_tenant, fetch, is_abandoned, is_from_the_future, list, remove,
    remove_incomplete, store, Backup, Listing,
};
pub use destination::{Destination, Location, Object};
pub use error::BackupError;
pub use lock::TenantLock;
pub use retention::{Reason, Retention};
pub use s3::S3Settings;
