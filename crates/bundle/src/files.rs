//! The file thread. The parser checks each entry and describes file content as jobs; the
//! chunks it reads come here with those jobs, and this thread hashes each file, writes it
//! (when extracting), and finishes it once its digest is right.
//!
//! Hashing and writing file content are half of an extraction's CPU: on a thread of their
//! own they let the two cores share the work, and the chunks are never copied on the way.

use std::cell::RefCell;
use std::ops::Deref;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use crate::digest::{Hasher, Sha256Digest};
use crate::error::{Error, Invalid};
use crate::index::EntryPath;

/// Files handed to this thread and not finished yet, at most: each may hold a descriptor.
pub(crate) const FILES_IN_FLIGHT: usize = 256;

/// Where a file's content goes once it has passed by the hash.
pub(crate) trait FileOutput: Send {
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), Error>;
    /// The content is complete and its digest right.
    fn finish(self: Box<Self>) -> Result<(), Error>;
}

/// A decompressed chunk; it goes back to the decoder's pool when the last holder drops it.
pub(crate) struct Chunk {
    bytes: Vec<u8>,
    pool: SyncSender<Vec<u8>>,
}

impl Chunk {
    pub(crate) fn new(bytes: Vec<u8>, pool: SyncSender<Vec<u8>>) -> Self {
        Self { bytes, pool }
    }
}

impl Deref for Chunk {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // Cannot be full: the pool has room for every buffer.
        let _ = self.pool.try_send(std::mem::take(&mut self.bytes));
    }
}

/// What the parser says about file content, in stream order.
pub(crate) enum Job {
    /// The next file's content goes there too.
    Open(Box<dyn FileOutput>),
    /// `len` bytes at `at` in the decompressed stream, at `offset` in the file.
    Data { at: u64, offset: u64, len: usize },
    /// A hole of a sparse file.
    Zeros(u64),
    /// The file's content is complete and must have this digest.
    End {
        path: EntryPath,
        expected: Sha256Digest,
    },
}

/// Jobs and the chunk that holds every `Data` job among them (none for a last batch).
pub(crate) struct Batch {
    pub chunk: Option<(u64, Arc<Chunk>)>,
    pub jobs: Vec<Job>,
}

/// Jobs recorded on the parser's thread until they are handed on.
pub(crate) type Jobs = RefCell<Vec<Job>>;

/// Runs until the parser drops its sender. A file finished gives a token back on `done`.
/// On the first failure (a wrong digest, a failed write) it sets `failed`, so the parser
/// stops early, and returns the error.
pub(crate) fn process_files(
    batches: Receiver<Batch>,
    done: SyncSender<()>,
    failed: &AtomicBool,
) -> Result<(), Error> {
    let mut hasher = Hasher::default();
    let mut output: Option<Box<dyn FileOutput>> = None;
    let result = (|| {
        for Batch { chunk, jobs } in batches {
            for job in jobs {
                match job {
                    Job::Open(file) => output = Some(file),
                    Job::Data { at, offset, len } => {
                        let piece = chunk.as_ref().and_then(|(start, chunk)| {
                            let from = usize::try_from(at.checked_sub(*start)?).ok()?;
                            chunk.get(from..)?.get(..len)
                        });
                        let Some(piece) = piece else {
                            return Err(std::io::Error::other(format!(
                                "internal: file content at {at} is not in its batch's chunk"
                            ))
                            .into());
                        };
                        hasher.update(piece);
                        if let Some(file) = &mut output {
                            file.write_at(offset, piece)?;
                        }
                    }
                    Job::Zeros(len) => hasher.update_zeros(len),
                    Job::End { path, expected } => {
                        let (actual, _) = std::mem::take(&mut hasher).finish();
                        if actual != expected {
                            return Err(Invalid::Checksum {
                                name: path.to_string(),
                                expected,
                                actual,
                            }
                            .into());
                        }
                        if let Some(file) = output.take() {
                            file.finish()?;
                        }
                        // Fails only once the parser is gone.
                        let _ = done.send(());
                    }
                }
            }
        }
        Ok(())
    })();
    if result.is_err() {
        failed.store(true, Ordering::Relaxed);
    }
    result
}
