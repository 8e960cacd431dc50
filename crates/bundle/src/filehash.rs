//! The file-hashing thread. The parser writes files and describes their content as jobs; the
//! chunks it is done with come here with those jobs, are hashed, and go back to the decoder.
//!
//! Hashing every file is a fifth of a verification's CPU. On its own thread it lets the two
//! cores share the work evenly, and the chunks pass from thread to thread, never copied.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};

use crate::digest::{Hasher, Sha256Digest};
use crate::error::{Error, Invalid};
use crate::index::EntryPath;

/// What the parser says about the content of the chunk it is reading, in stream order.
#[derive(Debug)]
pub(crate) enum Job {
    /// `len` bytes of file content at `at` in the decompressed stream.
    Data { at: u64, len: usize },
    /// A hole of a sparse file.
    Zeros(u64),
    /// The file whose content came before is complete and must have this digest.
    End {
        path: EntryPath,
        expected: Sha256Digest,
    },
}

/// A chunk the parser is done with, and the jobs it recorded while reading it: every `Data`
/// job of a batch lies in its chunk. The last batch may come without a chunk.
pub(crate) struct Batch {
    pub chunk: Option<Vec<u8>>,
    pub jobs: Vec<Job>,
}

/// Jobs recorded on the parser's thread until their chunk is handed on.
pub(crate) type Jobs = RefCell<Vec<Job>>;

/// Runs until the parser drops its sender. On the first file whose digest is wrong it sets
/// `failed` (the parser then stops early) and returns the error.
///
/// Chunks go back to the decoder through `free`; once this returns, the decoder sees the
/// pool closed and stops, so no thread is left waiting for a buffer.
pub(crate) fn hash_files(
    batches: Receiver<Batch>,
    free: SyncSender<Vec<u8>>,
    failed: &AtomicBool,
) -> Result<(), Error> {
    let mut stream_offset = 0u64;
    let mut hasher = Hasher::default();
    for Batch { chunk, jobs } in batches {
        let bytes = chunk.as_deref().unwrap_or_default();
        for job in jobs {
            match job {
                Job::Data { at, len } => {
                    let piece = at
                        .checked_sub(stream_offset)
                        .and_then(|from| bytes.get(usize::try_from(from).ok()?..)?.get(..len));
                    let Some(piece) = piece else {
                        failed.store(true, Ordering::Relaxed);
                        return Err(std::io::Error::other(format!(
                            "internal: file content at {at} is not in the chunk at {stream_offset}"
                        ))
                        .into());
                    };
                    hasher.update(piece);
                }
                Job::Zeros(len) => hasher.update_zeros(len),
                Job::End { path, expected } => {
                    let (actual, _) = std::mem::take(&mut hasher).finish();
                    if actual != expected {
                        failed.store(true, Ordering::Relaxed);
                        return Err(Invalid::Checksum {
                            name: path.to_string(),
                            expected,
                            actual,
                        }
                        .into());
                    }
                }
            }
        }
        stream_offset += bytes.len() as u64;
        if let Some(chunk) = chunk {
            // Cannot be full: the pool has room for every buffer.
            let _ = free.try_send(chunk);
        }
    }
    Ok(())
}
