//! Moving files: uploads (from a local file, or streamed from a file on another host) and
//! downloads, both resumed after a cut; every transfer is checked by sha256 at both ends.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest, Sha256};

use crate::{shell_quote, Connection, TransportError};

/// Chunks in flight between the thread reading a source and the one writing to the target.
const PIPELINE_DEPTH: usize = 16;
const CHUNK: usize = 256 * 1024;

/// Hashes stdin on the other host: OpenSSL's digest uses the CPU's SHA extensions (several
/// times faster than coreutils' sha256sum, which would bound the transfer); sha256sum where
/// OpenSSL's command is missing. Both print the hex digest first.
const SHA256: &str =
    "{ if command -v openssl >/dev/null 2>&1; then openssl dgst -sha256 -r; else sha256sum; fi; }";

/// Where an upload's bytes come from.
pub trait UploadSource: Send {
    fn size(&mut self) -> Result<u64, TransportError>;
    /// The sha256 (hex) of the whole source.
    fn sha256(&mut self) -> Result<String, TransportError>;
    /// The sha256 (hex) of the first `len` bytes.
    fn sha256_prefix(&mut self, len: u64) -> Result<String, TransportError>;
    /// The bytes from `offset` to the end.
    fn read_from(&mut self, offset: u64) -> Result<Box<dyn Read + Send + '_>, TransportError>;
}

/// A file on this machine. Its digest is computed once, whoever asks first.
#[derive(Debug)]
pub struct LocalFile {
    path: PathBuf,
    sha256: Option<String>,
}

impl LocalFile {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            sha256: None,
        }
    }
}

impl UploadSource for LocalFile {
    fn size(&mut self) -> Result<u64, TransportError> {
        Ok(fs_err::metadata(&self.path)?.len())
    }

    fn sha256(&mut self) -> Result<String, TransportError> {
        if self.sha256.is_none() {
            self.sha256 = Some(sha256_prefix(&self.path, u64::MAX)?);
        }
        Ok(self.sha256.clone().unwrap_or_default())
    }

    fn sha256_prefix(&mut self, len: u64) -> Result<String, TransportError> {
        sha256_prefix(&self.path, len)
    }

    fn read_from(&mut self, offset: u64) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        let mut file = fs_err::File::open(&self.path)?;
        io::Seek::seek(&mut file, io::SeekFrom::Start(offset))?;
        // Already hashed (`import --to` names its upload directory after the digest), or
        // read from the middle: nothing to hash on the way.
        if offset > 0 || self.sha256.is_some() {
            return Ok(Box::new(file));
        }
        // Read whole: hash it on the way rather than reading it again afterwards.
        Ok(Box::new(Hashing {
            inner: file,
            hasher: Some(Sha256::new()),
            digest: &mut self.sha256,
        }))
    }
}

/// Passes bytes through and, at their end, leaves their sha256 in `digest`.
struct Hashing<'a, R> {
    inner: R,
    /// Taken at the end.
    hasher: Option<Sha256>,
    digest: &'a mut Option<String>,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match self.hasher.as_mut() {
            Some(hasher) if n > 0 => hasher.update(&buf[..n]),
            Some(_) if !buf.is_empty() => {
                *self.digest = self.hasher.take().map(|h| hex(&h.finalize()));
            }
            _ => {}
        }
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A file on another host, streamed from there through this machine: nothing is stored here.
#[derive(Debug)]
pub struct RemoteFile<'a> {
    conn: &'a Connection,
    path: String,
}

impl<'a> RemoteFile<'a> {
    pub fn new(conn: &'a Connection, path: &str) -> Self {
        Self {
            conn,
            path: path.to_owned(),
        }
    }
}

impl UploadSource for RemoteFile<'_> {
    fn size(&mut self) -> Result<u64, TransportError> {
        let text = self
            .conn
            .output(&format!("wc -c < {}", shell_quote(&self.path)))?;
        text.trim().parse().map_err(|_| {
            TransportError::Io(io::Error::other(format!(
                "{}: `wc -c` printed {text:?}",
                self.path
            )))
        })
    }

    fn sha256(&mut self) -> Result<String, TransportError> {
        first_word(
            &self
                .conn
                .output(&format!("{SHA256} < {}", shell_quote(&self.path)))?,
        )
    }

    fn sha256_prefix(&mut self, len: u64) -> Result<String, TransportError> {
        first_word(&self.conn.output(&format!(
            "head -c {len} < {} | {SHA256}",
            shell_quote(&self.path)
        ))?)
    }

    fn read_from(&mut self, offset: u64) -> Result<Box<dyn Read + Send + '_>, TransportError> {
        Ok(Box::new(self.conn.reader(&format!(
            "tail -c +{} < {}",
            offset + 1,
            shell_quote(&self.path)
        ))?))
    }
}

fn first_word(text: &str) -> Result<String, TransportError> {
    let word = text.split_whitespace().next().unwrap_or("");
    if word.len() == 64 && word.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(word.to_ascii_lowercase())
    } else {
        Err(TransportError::Io(io::Error::other(format!(
            "expected a sha256, got {text:?}"
        ))))
    }
}

/// What an upload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub bytes: u64,
    /// Bytes a previous, interrupted upload had already delivered.
    pub resumed_from: u64,
    pub sha256: String,
}

/// Counts what passes, for progress.
struct Counting<'a, R> {
    inner: R,
    sent: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.sent)(n as u64);
        Ok(n)
    }
}

/// Where a download's bytes are written: hashes and counts them, and keeps the error if
/// writing here fails, so that it is not taken for a cut connection.
struct Appending<'a> {
    file: &'a std::fs::File,
    hasher: &'a mut Sha256,
    hashed: &'a mut u64,
    received: &'a mut dyn FnMut(u64),
    failed: Option<io::Error>,
}

impl Write for Appending<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.file.write(buf) {
            Ok(n) => {
                self.hasher.update(&buf[..n]);
                *self.hashed += n as u64;
                (self.received)(n as u64);
                Ok(n)
            }
            Err(e) => {
                let kept = io::Error::new(e.kind(), e.to_string());
                self.failed = Some(e);
                Err(kept)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads chunks a reader thread sends, so that reading the source (another SSH session,
/// with its own decryption) and writing to the target overlap.
struct Pipe {
    chunks: mpsc::Receiver<io::Result<Vec<u8>>>,
    current: Vec<u8>,
    at: usize,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.at = 0;
                }
                // The reader thread ended after its last chunk.
                Err(mpsc::RecvError) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.at);
        buf[..n].copy_from_slice(&self.current[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

impl Connection {
    /// Uploads `source` to `remote` through `remote.part`. A `.part` left by an interrupted
    /// upload is kept if its bytes hash like the start of the source, and the upload goes on
    /// from there. The whole file is hashed on both sides before it takes its final name.
    /// `sent` hears of every chunk delivered.
    pub fn upload(
        &self,
        source: &mut dyn UploadSource,
        remote: &str,
        sent: &mut dyn FnMut(u64),
    ) -> Result<UploadReport, TransportError> {
        let part = format!("{remote}.part");
        let qpart = shell_quote(&part);
        let size = source.size()?;
        let existing: u64 = self
            .output(&format!(
                "if [ -f {qpart} ]; then wc -c < {qpart}; else echo 0; fi"
            ))?
            .trim()
            .parse()
            .unwrap_or(0);
        let mut resumed_from = 0;
        if existing > 0 && existing <= size {
            let theirs = first_word(&self.output(&format!("{SHA256} < {qpart}"))?)?;
            if theirs == source.sha256_prefix(existing)? {
                resumed_from = existing;
            }
        }
        sent(resumed_from);
        // A fresh copy is hashed there as it arrives; a resumed one is hashed whole after.
        // Then the size that reached the disk: a pipeline's status is its last command's,
        // so a `tee` that could not write (a full disk) shows only there.
        let command = if resumed_from > 0 {
            format!("umask 077 && cat >> {qpart} && {SHA256} < {qpart} && wc -c < {qpart}")
        } else {
            format!("umask 077 && tee {qpart} | {SHA256} && wc -c < {qpart}")
        };
        let mut theirs = Vec::new();
        std::thread::scope(|scope| -> Result<(), TransportError> {
            let mut reader = source.read_from(resumed_from)?;
            let (tx, rx) = mpsc::sync_channel(PIPELINE_DEPTH);
            scope.spawn(move || loop {
                let mut chunk = vec![0u8; CHUNK];
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.send(Ok(chunk)).is_err() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        break;
                    }
                }
            });
            let mut input = Counting {
                inner: Pipe {
                    chunks: rx,
                    current: Vec::new(),
                    at: 0,
                },
                sent: &mut *sent,
            };
            self.run(&command, Some(&mut input), &mut theirs)
        })?;
        let ours = source.sha256()?;
        let reply = String::from_utf8_lossy(&theirs);
        let stored: Option<u64> = reply.lines().last().and_then(|l| l.trim().parse().ok());
        if stored != Some(size) {
            return Err(TransportError::Short {
                target: self.target().to_string(),
                path: part,
                stored: stored.unwrap_or(0),
                size,
            });
        }
        let theirs = first_word(&reply)?;
        if theirs != ours {
            // A wrong .part must not be resumed from.
            let _ = self.output(&format!("rm -f {qpart}"));
            return Err(TransportError::Corrupted {
                target: self.target().to_string(),
                path: remote.to_owned(),
                local: ours,
                remote: theirs,
            });
        }
        self.output(&format!("mv -f {qpart} {}", shell_quote(remote)))?;
        Ok(UploadReport {
            bytes: size,
            resumed_from,
            sha256: ours,
        })
    }

    /// Downloads `remote` into a new file `local` (which must not exist), through a hidden
    /// temporary file beside it, and checks it against the remote side's sha256 before it
    /// takes its name. Returns the sha256. [`Download`] can go on after a cut.
    pub fn download(&self, remote: &str, local: &Path) -> Result<String, TransportError> {
        let mut download = Download::new(self, remote, local)?;
        download.fetch(self, &mut |_| {})?;
        download.finish()
    }
}

/// A download into a hidden temporary file beside its destination, which a new connection
/// can take up where a cut one left it. The other side hashes the whole file while it sends
/// it, and this side hashes what it writes: the copy takes the destination's name only if
/// both digests agree.
#[derive(Debug)]
pub struct Download {
    remote: String,
    local: PathBuf,
    partial: tempfile::NamedTempFile,
    source_host: String,
    size: u64,
    /// The other side's digest of the whole file, once it has arrived.
    theirs: Option<String>,
    /// What this side wrote, hashed as it was written.
    ours: Sha256,
    hashed: u64,
    resumed_from: u64,
}

impl Download {
    /// Prepares the download of `remote`, on the other side of `conn`, into `local`, which
    /// must not exist when it ends.
    pub fn new(conn: &Connection, remote: &str, local: &Path) -> Result<Self, TransportError> {
        let text = conn.output(&format!("wc -c < {}", shell_quote(remote)))?;
        let size = text.trim().parse().map_err(|_| {
            TransportError::Io(io::Error::other(format!(
                "{remote}: `wc -c` printed {text:?}"
            )))
        })?;
        let dir = match local.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let partial = tempfile::Builder::new()
            .prefix(".baluchon-download.")
            .tempfile_in(&dir)?;
        Ok(Self {
            remote: remote.to_owned(),
            local: local.to_owned(),
            partial,
            source_host: conn.target().to_string(),
            size,
            theirs: None,
            ours: Sha256::new(),
            hashed: 0,
            resumed_from: 0,
        })
    }

    /// The remote file's size, as the other side reported it.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Where the last fetch started: above zero when it took up an earlier, cut one.
    pub fn resumed_from(&self) -> u64 {
        self.resumed_from
    }

    /// Fetches what is still missing over `conn`, telling `received` of every byte
    /// (starting with those already here). After an error, call it again with a new
    /// connection: it goes on from the end of the copy.
    pub fn fetch(
        &mut self,
        conn: &Connection,
        received: &mut dyn FnMut(u64),
    ) -> Result<(), TransportError> {
        let quoted = shell_quote(&self.remote);
        let mut file = self.partial.as_file();
        let have = io::Seek::seek(&mut file, io::SeekFrom::End(0))?;
        if have != self.hashed {
            // Only bytes written are hashed, so the two agree; should they not, the copy's
            // own bytes are what the final check must be about.
            self.ours = Sha256::new();
            io::copy(
                &mut fs_err::File::open(self.partial.path())?,
                &mut self.ours,
            )?;
            self.hashed = have;
        }
        self.resumed_from = have;
        received(have);
        // `tail -c +N` seeks in a regular file rather than reading what it skips. Until
        // the other side's digest has arrived, it is taken at the same time, of the whole
        // file, and sent on stderr.
        let send = format!("tail -c +{} {quoted}", have + 1);
        let command = if self.theirs.is_some() {
            send
        } else {
            format!("{SHA256} < {quoted} >&2 & {send} && wait $!")
        };
        let mut out = Appending {
            file,
            hasher: &mut self.ours,
            hashed: &mut self.hashed,
            received,
            failed: None,
        };
        let theirs = &mut self.theirs;
        let fetched = conn.run_reporting(&command, None, &mut out, &mut |line| match first_word(
            line,
        ) {
            Ok(digest) if theirs.is_none() => {
                *theirs = Some(digest);
                true
            }
            _ => false,
        });
        match out.failed {
            Some(source) => Err(TransportError::DownloadWrite {
                path: self.remote.clone(),
                local: self.partial.path().to_owned(),
                source,
            }),
            None => fetched,
        }
    }

    /// Checks the copy against the other side's sha256 and gives it its name. Returns the
    /// sha256. A copy that does not match is removed.
    pub fn finish(self) -> Result<String, TransportError> {
        let theirs = self.theirs.ok_or_else(|| {
            TransportError::Io(io::Error::other(format!(
                "{}: the other side's sha256 never arrived",
                self.remote
            )))
        })?;
        self.partial.as_file().sync_all()?;
        let ours = hex(&self.ours.finalize());
        if ours != theirs {
            return Err(TransportError::DownloadCorrupted {
                source_host: self.source_host,
                path: self.remote,
                local: ours,
                remote: theirs,
            });
        }
        self.partial
            .persist_noclobber(&self.local)
            .map_err(|e| TransportError::Io(e.error))?;
        Ok(ours)
    }
}

/// The sha256 (hex) of the first `len` bytes of a file.
pub fn sha256_prefix(path: &Path, len: u64) -> Result<String, TransportError> {
    let mut hasher = Sha256::new();
    let mut file = fs_err::File::open(path)?.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}
