//! The payload's decoding thread: hash the compressed bytes, decompress them, and hand the
//! output to the tar parser in chunks from a small recycled set, so memory stays bounded.
//!
//! A frame the size the reference writer makes is decoded in one call, straight into the
//! chunk the parser gets: the streaming decoder would decode into its window and copy out,
//! about 5 % of an import's CPU. Anything else (frames without a declared content size,
//! larger ones, skippable frames, bytes that are not a frame) goes to the streaming decoder,
//! which gives the same output and reports the same errors.

use std::io::{self, BufRead, Read};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;

use zstd::zstd_safe::{self, DCtx};

use crate::digest::{HashingReader, Sha256Digest};
use crate::files::{Batch, Chunk, Jobs};
use crate::layout::{FRAME_BYTES, ZSTD_WINDOW_LOG_MAX};
use crate::progress::Progress;

/// Largest frame content decoded in one call: the reference writer's frames.
const ONE_CALL_MAX: u64 = FRAME_BYTES as u64;
/// Compressed bytes held while looking for a frame's end: a 4 MiB frame's worst case
/// (zstd's compress bound adds 1/256) plus its header and checksum, with room to spare.
const MAX_PENDING: usize = FRAME_BYTES + FRAME_BYTES / 64;
/// Bytes read from the bundle file at a time.
const READ_BYTES: usize = 1 << 20;
/// Output chunk size of the streaming decoder.
const STREAM_CHUNK: usize = 1 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

pub(crate) struct Decoded {
    pub sha256: Sha256Digest,
    pub uncompressed: u64,
}

/// Decodes `source` (the compressed payload) and sends its output on `tx`, in buffers taken
/// from the pool `free` (waiting for one: the pool bounds memory). Output beyond `declared`
/// bytes fails with [`io::ErrorKind::FileTooLarge`] before it is produced.
pub(crate) fn decode(
    source: impl Read,
    declared: u64,
    tx: &SyncSender<io::Result<Vec<u8>>>,
    free: &Receiver<Vec<u8>>,
    progress: &dyn Progress,
) -> io::Result<Decoded> {
    let mut output = Output {
        tx,
        free,
        spare: None,
        declared,
        total: 0,
    };
    let result = (|| {
        let mut input = Input {
            reader: ProgressReader {
                inner: HashingReader::new(source),
                progress,
            },
            buf: vec![0; MAX_PENDING + READ_BYTES],
            start: 0,
            end: 0,
            eof: false,
        };
        let mut dctx = DCtx::create();
        loop {
            match input.next_frame()? {
                Next::End => break,
                Next::OneCall { len, size } => {
                    let Some(mut chunk) = output.take(size)? else {
                        break; // the parser stopped; it reports why
                    };
                    dctx.decompress(&mut chunk, &input.buf[input.start..input.start + len])
                        .map_err(zstd_error)?;
                    if chunk.len() as u64 != size {
                        return Err(io::Error::other("frame content size mismatch"));
                    }
                    input.start += len;
                    if !output.send(chunk) {
                        break; // the parser stopped; it reports why
                    }
                }
                Next::Other => {
                    let pending = io::Cursor::new(&input.buf[input.start..input.end]);
                    stream(pending.chain(&mut input.reader), &mut output)?;
                    break;
                }
            }
        }
        Ok(input.reader.inner.finish().0)
    })();
    match result {
        Ok(sha256) => Ok(Decoded {
            sha256,
            uncompressed: output.total,
        }),
        Err(e) => {
            // The parser sees a failed read rather than a clean end of stream.
            let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
            Err(e)
        }
    }
}

enum Next {
    End,
    /// A whole frame of `len` compressed bytes at the start of the pending input.
    OneCall {
        len: usize,
        size: u64,
    },
    /// The rest goes to the streaming decoder.
    Other,
}

struct Input<R> {
    reader: R,
    buf: Vec<u8>,
    /// Pending bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: Read> Input<R> {
    fn next_frame(&mut self) -> io::Result<Next> {
        loop {
            let pending = &self.buf[self.start..self.end];
            if pending.is_empty() && self.eof {
                return Ok(Next::End);
            }
            // Fails until the whole frame is buffered (or if it is not a frame).
            if let Ok(len) = zstd_safe::find_frame_compressed_size(pending) {
                return Ok(match one_call_size(&pending[..len])? {
                    Some(size) => Next::OneCall { len, size },
                    None => Next::Other,
                });
            }
            if self.eof || pending.len() >= MAX_PENDING {
                return Ok(Next::Other);
            }
            self.fill()?;
        }
    }

    fn fill(&mut self) -> io::Result<()> {
        if self.end + READ_BYTES > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        loop {
            match self
                .reader
                .read(&mut self.buf[self.end..self.end + READ_BYTES])
            {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            return Ok(());
        }
    }
}

/// The content size of a complete zstd frame, if it can be decoded in one call: a plain
/// frame that declares its size, no more than [`ONE_CALL_MAX`].
fn one_call_size(frame: &[u8]) -> io::Result<Option<u64>> {
    if frame.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Ok(None);
    }
    // Neither one-call decoding nor the streaming decoder's own shortcut for a small whole
    // frame checks the window: the rule (docs/bundle-format.md §4.1) is checked here.
    let descriptor = frame.get(4).copied().unwrap_or_default();
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let window = frame.get(5).copied().unwrap_or_default();
        let log = 10 + u32::from(window >> 3);
        if log > ZSTD_WINDOW_LOG_MAX || (log == ZSTD_WINDOW_LOG_MAX && window & 7 != 0) {
            return Err(io::Error::other(format!(
                "a frame's window is over 2^{ZSTD_WINDOW_LOG_MAX} bytes \
                 (frame requires too much memory for decoding)"
            )));
        }
    }
    Ok(zstd_safe::get_frame_content_size(frame)
        .ok()
        .flatten()
        .filter(|&size| size <= ONE_CALL_MAX))
}

fn stream(input: impl Read, output: &mut Output<'_>) -> io::Result<()> {
    let mut decoder = zstd::stream::read::Decoder::new(input)?;
    decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    loop {
        let Some(mut chunk) = output.take(0)? else {
            return Ok(());
        };
        chunk.resize(STREAM_CHUNK, 0);
        let mut filled = 0;
        while filled < chunk.len() {
            match decoder.read(&mut chunk[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(());
        }
        chunk.truncate(filled);
        output.count(filled as u64)?;
        if !output.send(chunk) {
            return Ok(());
        }
    }
}

struct Output<'c> {
    tx: &'c SyncSender<io::Result<Vec<u8>>>,
    free: &'c Receiver<Vec<u8>>,
    /// A buffer that came back empty (a frame without content): the pool only refills
    /// from the other end, so losing one would leave the decoder short.
    spare: Option<Vec<u8>>,
    declared: u64,
    total: u64,
}

impl Output<'_> {
    /// An empty buffer from the pool with room for `size` bytes, which are counted against
    /// the cap; `None` once the other threads have stopped.
    fn take(&mut self, size: u64) -> io::Result<Option<Vec<u8>>> {
        self.count(size)?;
        let Some(mut chunk) = self.spare.take().or_else(|| self.free.recv().ok()) else {
            return Ok(None);
        };
        chunk.clear();
        chunk.reserve(size as usize);
        Ok(Some(chunk))
    }

    fn count(&mut self, bytes: u64) -> io::Result<()> {
        self.total += bytes;
        if self.total > self.declared {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "decompressed output exceeds the declared size",
            ));
        }
        Ok(())
    }

    /// False once the parser has stopped listening.
    fn send(&mut self, chunk: Vec<u8>) -> bool {
        if chunk.is_empty() {
            self.spare = Some(chunk);
            return true;
        }
        self.tx.send(Ok(chunk)).is_ok()
    }
}

fn zstd_error(code: usize) -> io::Error {
    io::Error::other(zstd_safe::get_error_name(code))
}

struct ProgressReader<'p, R> {
    inner: HashingReader<R>,
    progress: &'p dyn Progress,
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Reads the chunks the decoding thread sends, without copying them; ends when the
/// channel closes. Each chunk goes to the file thread with the jobs recorded while it was
/// being read (see [`ChannelReader::flush`] for jobs sent earlier).
pub(crate) struct ChannelReader<'j> {
    rx: Receiver<io::Result<Vec<u8>>>,
    /// Where chunks go back to the decoder once everyone is done with them.
    pool: SyncSender<Vec<u8>>,
    files: SyncSender<Batch>,
    jobs: &'j Jobs,
    /// The chunk being read, and where it starts in the decompressed stream.
    current: Option<(u64, Arc<Chunk>)>,
    /// Where the next chunk starts.
    next_start: u64,
    pos: usize,
}

impl<'j> ChannelReader<'j> {
    pub(crate) fn new(
        rx: Receiver<io::Result<Vec<u8>>>,
        pool: SyncSender<Vec<u8>>,
        files: SyncSender<Batch>,
        jobs: &'j Jobs,
    ) -> Self {
        Self {
            rx,
            pool,
            files,
            jobs,
            current: None,
            next_start: 0,
            pos: 0,
        }
    }

    /// Sends the jobs recorded so far now, with the chunk they refer to.
    pub(crate) fn flush(&mut self) {
        self.send(self.current.clone());
    }

    fn hand_on(&mut self) {
        let chunk = self.current.take();
        self.pos = 0;
        self.send(chunk);
    }

    fn send(&mut self, chunk: Option<(u64, Arc<Chunk>)>) {
        let jobs = std::mem::take(&mut *self.jobs.borrow_mut());
        if !jobs.is_empty() {
            // Fails only if the file thread stopped; it reports why.
            let _ = self.files.send(Batch { chunk, jobs });
        }
    }

    fn len(&self) -> usize {
        self.current.as_ref().map_or(0, |(_, chunk)| chunk.len())
    }
}

/// What was read before a failure is still checked: an earlier file's wrong digest is the
/// error to report.
impl Drop for ChannelReader<'_> {
    fn drop(&mut self) {
        self.hand_on();
    }
}

impl Read for ChannelReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = buf.len().min(available.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl BufRead for ChannelReader<'_> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.len() {
            match self.rx.recv() {
                Ok(Ok(bytes)) => {
                    self.hand_on();
                    let start = self.next_start;
                    self.next_start += bytes.len() as u64;
                    self.current = Some((start, Arc::new(Chunk::new(bytes, self.pool.clone()))));
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    self.hand_on();
                    return Ok(&[]);
                }
            }
        }
        Ok(self
            .current
            .as_ref()
            .map_or(&[], |(_, chunk)| &chunk[self.pos..]))
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.len());
    }
}
