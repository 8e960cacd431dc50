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
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use crate::digest::{Hasher, Sha256Digest};
use crate::error::{Error, Invalid};
use crate::index::EntryPath;

/// Files handed to this thread and not finished yet, at most: each may hold a descriptor.
/// Over small files the parser runs this far ahead of the file thread.
const FILES_IN_FLIGHT_MAX: usize = 2048;

/// Counts the files handed to the file thread and not finished yet. At the bound, the
/// parser waits until half of them are finished: woken for each one, the two threads
/// would take turns file by file.
pub(crate) struct InFlight {
    state: Mutex<InFlightState>,
    below_half: Condvar,
    max: usize,
}

#[derive(Default)]
struct InFlightState {
    files: usize,
    waiting: bool,
    stopped: bool,
}

impl InFlight {
    /// Bounded by [`FILES_IN_FLIGHT_MAX`] and by a quarter of the descriptors the process
    /// may open.
    pub(crate) fn new() -> Self {
        let descriptors = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        let share = usize::try_from(descriptors / 4).unwrap_or(usize::MAX);
        Self::with_max(share.clamp(1, FILES_IN_FLIGHT_MAX))
    }

    fn with_max(max: usize) -> Self {
        Self {
            state: Mutex::default(),
            below_half: Condvar::new(),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, InFlightState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts one more file, waiting if the bound is reached (after calling `before_wait`,
    /// which must let every file counted so far finish). False once the file thread has
    /// stopped.
    pub(crate) fn add(&self, before_wait: impl FnOnce()) -> bool {
        let mut state = self.lock();
        if state.files >= self.max && !state.stopped {
            drop(state);
            before_wait();
            state = self.lock();
            state.waiting = true;
            while state.files > self.max / 2 && !state.stopped {
                state = self
                    .below_half
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            state.waiting = false;
        }
        state.files += 1;
        !state.stopped
    }

    fn finished_one(&self) {
        let mut state = self.lock();
        state.files = state.files.saturating_sub(1);
        if state.waiting && state.files <= self.max / 2 {
            self.below_half.notify_one();
        }
    }
}

struct StopOnDrop<'a>(&'a InFlight);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.lock().stopped = true;
        self.0.below_half.notify_one();
    }
}

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

/// Runs until the parser drops its sender; each file finished is taken off `in_flight`.
/// On the first failure (a wrong digest, a failed write) it sets `failed`, so the parser
/// stops early, and returns the error.
pub(crate) fn process_files(
    batches: Receiver<Batch>,
    in_flight: &InFlight,
    failed: &AtomicBool,
) -> Result<(), Error> {
    // Even on a panic: the parser must not wait for files that will never finish.
    let _stop = StopOnDrop(in_flight);
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
                        in_flight.finished_one();
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;

    /// At the bound the parser sends what it recorded, then waits until half of the files
    /// are finished (not just one); once the file thread stops, it no longer waits.
    #[test]
    fn in_flight_waits_for_half_then_not_once_stopped() {
        let in_flight = InFlight::with_max(4);
        for _ in 0..4 {
            assert!(in_flight.add(|| panic!("waited under the bound")));
        }
        let finished = AtomicUsize::new(0);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                for _ in 0..3 {
                    std::thread::sleep(Duration::from_millis(20));
                    finished.fetch_add(1, Ordering::SeqCst);
                    in_flight.finished_one();
                }
            });
            let mut flushed = false;
            assert!(in_flight.add(|| flushed = true));
            assert!(flushed);
            // Not woken by the first file finished.
            assert!(finished.load(Ordering::SeqCst) >= 2);
        });

        let in_flight = InFlight::with_max(1);
        assert!(in_flight.add(|| {}));
        std::thread::scope(|scope| {
            scope.spawn(|| {
                std::thread::sleep(Duration::from_millis(20));
                drop(StopOnDrop(&in_flight));
            });
            assert!(!in_flight.add(|| {}));
        });
    }
}
