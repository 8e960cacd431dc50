//! Progress reporting: libraries call this trait, the CLI renders it.

/// What a long operation is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Phase {
    /// Reading the tree into the bundle; measured in bytes of file content.
    Archiving,
    /// Checking the signature and the tag files.
    Authenticating,
    /// Hashing and parsing the payload; measured in bytes of the bundle file.
    VerifyingPayload,
}

/// Receives progress events. Implementations must be cheap: `advance` is called per chunk.
pub trait Progress: Send + Sync {
    /// A new phase starts; `total` is its size in bytes when known.
    fn phase(&self, _phase: Phase, _total: Option<u64>) {}
    /// `bytes` more of the current phase are done.
    fn advance(&self, _bytes: u64) {}
}

/// Reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}
