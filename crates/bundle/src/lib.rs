//! The baluchon bundle: a signed, checksummed, stock-tools-readable package of a tenant.
//!
//! * [`export_tree`] walks a directory and writes a bundle in one pass.
//! * [`Bundle`] reads one: [`Bundle::open`] → [`Bundle::authenticate`] →
//!   [`Bundle::verify_payload`]; each step returns a new type, so unverified data cannot be
//!   mistaken for verified data.
//!
//! The format is specified in `docs/bundle-format.md`. This crate never prints and never
//! exits; it reports progress through [`Progress`].

mod compress;
mod decode;
mod digest;
mod error;
mod export;
mod extract;
mod files;
mod index;
mod layout;
pub mod leftovers;
mod outer;
mod probe;
mod progress;
mod readme;
mod sealed;
mod tarfmt;
mod verify;

pub use digest::Sha256Digest;
pub use error::{Error, ExportError, ExtractError, Invalid, SealError};
pub use export::{
    export_tree, BundleWriter, ExportOptions, ExportReport, InodeFlagsNotKept, Select, Selection,
    WholeTree,
};
pub use extract::{
    Destination, ExtractOptions, ExtractReport, Placeholder, Plan, Staged, Switched,
    PLACEHOLDER_ID_BASE,
};
pub use index::{
    is_valid_tenant, BundleHeader, Change, Entry, EntryKind, EntryPath, Extent, FilesSummary,
    IndexError, Meta, PathError, PayloadFile, Producer, SkipReason, Xattr,
};
pub use layout::{FILES_INDEX, FILES_PAYLOAD, SIGNATURE_NAMESPACE};
pub use outer::OuterError;
pub use probe::{probe_directory, Lack, OwnerId, TreeNeeds};
pub use progress::{NoProgress, Phase, Progress};
pub use sealed::{seal, Identities, Recipient, SealOptions, SEALED_MEDIA_TYPE, SEALED_PAYLOAD};
pub use tarfmt::TarError;
pub use verify::{verify, Authenticated, Bundle, Inspection, Policy, Unverified, Verified};

/// The strict inner-tar reader, for the fuzz targets in `fuzz/`; not a stable API.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::tarfmt::{Content, TarEntry, TarKind, TarReader};
}
