//! Parallel zstd: the tar stream is cut into fixed-size chunks, each compressed on a worker
//! thread into an independent frame (checksummed, with its content size), and written in
//! order by one writer thread that also hashes the compressed bytes.
//!
//! Independent frames keep memory bounded, let both cores compress, and make every few MiB
//! of a bundle decodable on its own. Any `zstd -d` reads the concatenation as one stream.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::digest::{HashingWriter, Sha256Digest};
use crate::layout::FRAME_BYTES;

const LEVEL: i32 = 3;
/// More threads would cost memory (a 4 MiB chunk each) for little gain: reading and hashing
/// the tree on one thread feeds about four compressors.
const MAX_THREADS: usize = 4;

/// What the writer thread reports once every frame is written.
#[derive(Debug)]
pub struct Compressed<W> {
    pub sink: W,
    pub sha256: Sha256Digest,
    pub compressed: u64,
    pub uncompressed: u64,
}

type Chunk = (u64, Vec<u8>);
/// The writer thread returns the hashed sink and the number of frames written.
type WriterThread<W> = JoinHandle<io::Result<(HashingWriter<W>, u64)>>;

/// A `Write` that compresses on worker threads; call [`FrameCompressor::finish`].
#[derive(Debug)]
pub struct FrameCompressor<W: Write + Send + 'static> {
    chunk: Vec<u8>,
    /// One token per chunk allowed in flight; the writer returns it once the frame is
    /// written, so memory stays bounded even if a worker is slow.
    tokens: Receiver<()>,
    next_seq: u64,
    uncompressed: u64,
    work: Option<SyncSender<Chunk>>,
    workers: Vec<JoinHandle<io::Result<()>>>,
    writer: Option<WriterThread<W>>,
}

impl<W: Write + Send + 'static> FrameCompressor<W> {
    pub fn new(sink: W, threads: usize) -> Self {
        let threads = threads.clamp(1, MAX_THREADS);
        let in_flight = threads + 1;
        let (token_tx, tokens) = sync_channel::<()>(in_flight);
        for _ in 0..in_flight {
            // Cannot fail: the channel has room for exactly these and the receiver is alive.
            let _ = token_tx.send(());
        }
        let (work_tx, work_rx) = sync_channel::<Chunk>(threads);
        let (done_tx, done_rx) = sync_channel::<Chunk>(threads);
        let work_rx = Arc::new(Mutex::new(work_rx));
        let workers = (0..threads)
            .map(|_| {
                let work_rx = Arc::clone(&work_rx);
                let done_tx = done_tx.clone();
                thread::spawn(move || compress_worker(&work_rx, &done_tx))
            })
            .collect();
        drop(done_tx);
        let writer =
            thread::spawn(move || write_in_order(HashingWriter::new(sink), &done_rx, &token_tx));
        Self {
            chunk: Vec::with_capacity(FRAME_BYTES),
            tokens,
            next_seq: 0,
            uncompressed: 0,
            work: Some(work_tx),
            workers,
            writer: Some(writer),
        }
    }

    fn send_chunk(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.chunk, Vec::with_capacity(FRAME_BYTES));
        let seq = self.next_seq;
        self.next_seq += 1;
        let sent = match self.tokens.recv() {
            Ok(()) => self.work.as_ref().map(|tx| tx.send((seq, full))),
            Err(_) => None,
        };
        match sent {
            Some(Ok(())) => Ok(()),
            // A worker or the writer stopped: `finish` reports its error.
            _ => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "compression pipeline stopped",
            )),
        }
    }

    /// Flushes the last frame, waits for every thread and returns the sink with the digest.
    /// The first real error of any thread wins over the broken-pipe errors it caused.
    pub fn finish(mut self) -> io::Result<Compressed<W>> {
        let flushed = if self.chunk.is_empty() {
            Ok(())
        } else {
            self.send_chunk()
        };
        self.work = None;
        let mut first_error = None;
        for worker in self.workers.drain(..) {
            if let Err(e) = join(worker) {
                first_error.get_or_insert(e);
            }
        }
        let written = self.writer.take().map(join);
        match written {
            Some(Ok((hashing, frames))) => {
                if let Some(e) = first_error {
                    return Err(e);
                }
                flushed?;
                debug_assert_eq!(frames, self.next_seq);
                let (sink, sha256, compressed) = hashing.into_parts();
                Ok(Compressed {
                    sink,
                    sha256,
                    compressed,
                    uncompressed: self.uncompressed,
                })
            }
            Some(Err(e)) => Err(e),
            None => Err(first_error.unwrap_or_else(|| io::Error::other("finished twice"))),
        }
    }
}

impl<W: Write + Send + 'static> Write for FrameCompressor<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let total = buf.len();
        while !buf.is_empty() {
            let room = FRAME_BYTES - self.chunk.len();
            let n = room.min(buf.len());
            self.chunk.extend_from_slice(&buf[..n]);
            buf = &buf[n..];
            if self.chunk.len() == FRAME_BYTES {
                self.send_chunk()?;
            }
        }
        self.uncompressed += total as u64;
        Ok(total)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn join<T>(handle: JoinHandle<io::Result<T>>) -> io::Result<T> {
    handle
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("a compression thread panicked")))
}

fn compress_worker(work: &Mutex<Receiver<Chunk>>, done: &SyncSender<Chunk>) -> io::Result<()> {
    let mut compressor = zstd::bulk::Compressor::new(LEVEL)?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
    compressor.set_parameter(zstd::zstd_safe::CParameter::HashLog(16))?;
    loop {
        // The lock is held only while waiting for the next chunk, never while compressing.
        let next = work
            .lock()
            .map_err(|_| io::Error::other("work queue poisoned"))?
            .recv();
        let Ok((seq, chunk)) = next else {
            return Ok(());
        };
        let frame = compressor.compress(&chunk)?;
        if done.send((seq, frame)).is_err() {
            return Ok(()); // the writer failed; it reports why
        }
    }
}

fn write_in_order<W: Write>(
    mut out: HashingWriter<W>,
    done: &Receiver<Chunk>,
    tokens: &SyncSender<()>,
) -> io::Result<(HashingWriter<W>, u64)> {
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    for (seq, frame) in done {
        pending.insert(seq, frame);
        while let Some(frame) = pending.remove(&next) {
            out.write_all(&frame)?;
            next += 1;
            let _ = tokens.send(()); // the producer may be gone; nothing to return then
        }
    }
    out.flush()?;
    Ok((out, next))
}
