//! Single-pass export of a directory tree into a signed bundle.
//!
//! The tree is walked relative to directory handles with `O_NOFOLLOW`, so no path is ever
//! resolved through a symlink, and each file is read for exactly the size its header
//! announces. Hashes are computed while data streams to the compressor; the index and the
//! manifests follow the payload, and the signature comes last. Output goes to a temporary
//! name that is renamed into place only once the signature is written and synced.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io::{self, BufWriter, Seek, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use baluchon_signature::SigningKey;
use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Stat};
use rustix::io::Errno;

use crate::compress::FrameCompressor;
use crate::digest::{Hasher, HashingWriter, Sha256Digest};
use crate::error::{Error, ExportError};
use crate::index::{
    is_valid_tenant, BundleHeader, Change, Entry, EntryKind, EntryPath, Extent, FilesSummary, Meta,
    PayloadFile, Producer, SkipReason, Xattr,
};
use crate::layout::{self, MAX_SPARSE_SEGMENTS, SIGNATURE_NAMESPACE};
use crate::outer::OuterWriter;
use crate::progress::{Phase, Progress};
use crate::tarfmt::{Kind, TarMeta, TarWriter};

/// Deepest directory nesting followed; each level holds one open directory handle.
const MAX_DEPTH: usize = 512;
/// How many skipped or changed entries an [`ExportReport`] lists (the index lists them all).
const REPORT_LIST_CAP: usize = 1000;

/// What to export, and where.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ExportOptions {
    /// The directory whose tree becomes `data/files.tar.zst`.
    pub source: PathBuf,
    pub tenant: String,
    pub sequence: u64,
    pub output: PathBuf,
    /// Compression threads.
    pub threads: usize,
}

impl ExportOptions {
    pub fn new(source: PathBuf, tenant: String, output: PathBuf) -> Self {
        Self {
            source,
            tenant,
            sequence: 1,
            output,
            threads: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

/// What an export produced.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub output: PathBuf,
    pub bundle_size: u64,
    pub header: BundleHeader,
    pub signer: String,
    /// The first skipped entries (all are in the index; the count is in `header.files`).
    pub skipped: Vec<(EntryPath, SkipReason)>,
    /// The first entries that changed while read.
    pub changed: Vec<(EntryPath, Change)>,
    /// Extended attributes outside `user.` that were not archived (each is named in the
    /// index line of its entry).
    pub xattrs_not_archived: u64,
    /// Entries with inode flags, which bundles do not keep.
    pub inode_flags: InodeFlagsNotKept,
    /// Entries the [`Selection`] excluded, with its reason: every one of them, since the
    /// caller must be able to record them all.
    pub excluded: Vec<(EntryPath, String)>,
    /// Temporary files of earlier exports to the same name, killed midway, that this one
    /// removed (see [`crate::leftovers`]).
    pub removed_leftovers: Vec<PathBuf>,
}

/// Entries with inode flags (`chattr`: immutable, append-only, no-dump…), which the format
/// has no field for: reported, so that losing them is never silent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InodeFlagsNotKept {
    /// How many entries have some.
    pub entries: u64,
    /// The first of them (the tree's root as `.`), with their flags as `lsattr` letters
    /// (`i`, `a`, `d`…).
    pub first: Vec<(String, String)>,
}

impl InodeFlagsNotKept {
    /// Counts (and lists) `path` if `flags` is not empty.
    fn note(&mut self, path: &dyn std::fmt::Display, flags: String) {
        if flags.is_empty() {
            return;
        }
        self.entries += 1;
        if self.first.len() < REPORT_LIST_CAP {
            self.first.push((path.to_string(), flags));
        }
    }
}

/// The inode flags a user sets with `chattr`, as `lsattr` letters; none where the
/// filesystem has no such flags. Flags a filesystem sets for itself (ext4's extents, say)
/// are not among them.
fn inode_flags(fd: BorrowedFd<'_>) -> io::Result<String> {
    use rustix::fs::IFlags;
    let flags = match rustix::fs::ioctl_getflags(fd) {
        Ok(flags) => flags,
        Err(Errno::NOTTY | Errno::NOTSUP | Errno::INVAL | Errno::NOSYS) => return Ok(String::new()),
        Err(e) => return Err(e.into()),
    };
    let letters = [
        (IFlags::SECURE_REMOVAL, 's'),
        (IFlags::UNRM, 'u'),
        (IFlags::SYNC, 'S'),
        (IFlags::DIRSYNC, 'D'),
        (IFlags::IMMUTABLE, 'i'),
        (IFlags::APPEND, 'a'),
        (IFlags::NODUMP, 'd'),
        (IFlags::NOATIME, 'A'),
        (IFlags::COMPRESSED, 'c'),
        (IFlags::JOURNALING, 'j'),
        (IFlags::NOTAIL, 't'),
        (IFlags::TOPDIR, 'T'),
        (IFlags::NOCOW, 'C'),
        (IFlags::PROJECT_INHERIT, 'P'),
    ];
    Ok(letters
        .iter()
        .filter(|(flag, _)| flags.contains(*flag))
        .map(|&(_, letter)| letter)
        .collect())
}

/// Which entries of the source tree go into the bundle.
pub trait Selection {
    /// Decides for `path` (relative to the source directory) before it is read. A directory
    /// that is archived is descended into, and each of its entries is asked about in turn.
    fn select(&self, path: &EntryPath, is_dir: bool) -> Select;

    /// Content to archive instead of the regular file at `path` (its metadata is kept): a
    /// config file with its secrets left out, say.
    fn replacement(&self, _path: &EntryPath) -> Option<Vec<u8>> {
        None
    }

    /// Every path `replacement` answers for, relative to the source directory: another hard
    /// link to one of these files gets the same content, wherever the walk meets it first.
    fn replaced_paths(&self) -> Vec<EntryPath> {
        Vec::new()
    }
}

/// A [`Selection`]'s answer for one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Select {
    Archive,
    /// Not part of what is exported (say, a sibling of a selected directory): left out
    /// without a word.
    Omit,
    /// Part of what is exported but deliberately left out: listed in the report.
    Exclude(String),
}

/// The whole tree.
#[derive(Debug, Clone, Copy, Default)]
pub struct WholeTree;

impl Selection for WholeTree {
    fn select(&self, _: &EntryPath, _: bool) -> Select {
        Select::Archive
    }
}

/// Exports the tree at `options.source` into a new bundle at `options.output`.
pub fn export_tree(
    options: &ExportOptions,
    key: &SigningKey,
    progress: &dyn Progress,
) -> Result<ExportReport, Error> {
    BundleWriter::create(options, key)?
        .add_tree(&WholeTree, progress)?
        .finish()
}

/// A bundle being written: the tree and any extra payload files (database dumps, say), in
/// the order they are added, then the tag files and the signature. Dropping it before
/// [`BundleWriter::finish`] leaves nothing behind.
#[derive(Debug)]
pub struct BundleWriter<'k> {
    options: ExportOptions,
    key: &'k SigningKey,
    root: OwnedFd,
    out_dir: PathBuf,
    /// Removed on drop: any early return leaves nothing behind, under any name.
    partial: tempfile::NamedTempFile,
    outer: OuterWriter,
    created_at: jiff::Timestamp,
    mtime: u64,
    bundle_id: String,
    readme: String,
    payload: Vec<PayloadFile>,
    tree: Option<Tree>,
    removed_leftovers: Vec<PathBuf>,
}

/// What archiving the tree leaves for the tag files and the report.
struct Tree {
    index: Spill,
    sums: Spill,
    summary: FilesSummary,
    skipped: Vec<(EntryPath, SkipReason)>,
    changed: Vec<(EntryPath, Change)>,
    excluded: Vec<(EntryPath, String)>,
    xattrs_not_archived: u64,
    inode_flags: InodeFlagsNotKept,
}

impl std::fmt::Debug for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tree")
            .field("summary", &self.summary)
            .finish_non_exhaustive()
    }
}

impl<'k> BundleWriter<'k> {
    /// Checks the options and writes the leading tag files to a temporary file.
    pub fn create(options: &ExportOptions, key: &'k SigningKey) -> Result<Self, Error> {
        if !is_valid_tenant(&options.tenant) {
            return Err(ExportError::InvalidTenant {
                name: options.tenant.clone(),
            }
            .into());
        }
        if options.output.symlink_metadata().is_ok() {
            return Err(ExportError::OutputExists {
                path: options.output.clone(),
            }
            .into());
        }
        let root = open_source(&options.source)?;
        let out_dir = match options.output.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let out_name = options
            .output
            .file_name()
            .map_or_else(|| "bundle".into(), |n| n.to_string_lossy().into_owned());
        let (prefix, suffix) = (format!(".{out_name}."), ".partial");
        let partial = tempfile::Builder::new()
            .prefix(&prefix)
            .suffix(suffix)
            .tempfile_in(&out_dir)
            .map_err(|e| with_path(e, &out_dir))?;
        crate::leftovers::hold(partial.as_file()).map_err(|e| with_path(e, partial.path()))?;
        // An earlier export of this name killed midway left its temporary file behind.
        let removed_leftovers = crate::leftovers::remove_abandoned(&out_dir, &prefix, suffix);

        let created_at = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second())
            .unwrap_or_else(|_| jiff::Timestamp::now());
        let mtime = u64::try_from(created_at.as_second()).unwrap_or(0);
        let bundle_id = uuid::Uuid::new_v4().to_string();

        let mut outer = OuterWriter::new(partial.as_file().try_clone()?, mtime);
        outer.append(layout::BAGIT_TXT, layout::BAGIT_TXT_CONTENT.as_bytes())?;
        let readme = crate::readme::render(
            &options.tenant,
            &bundle_id,
            &created_at.to_string(),
            &key.fingerprint(),
        );
        outer.append(layout::README_TXT, readme.as_bytes())?;
        Ok(Self {
            options: options.clone(),
            key,
            root,
            out_dir,
            partial,
            outer,
            created_at,
            mtime,
            bundle_id,
            readme,
            payload: Vec::new(),
            tree: None,
            removed_leftovers,
        })
    }

    /// Streams `data` into a payload file `name` (`data/…`, §2.3 of the format), compressed
    /// with zstd when `compress` is set. The data is read to its end. On error the writer is
    /// gone, with its temporary file: a half-written member cannot end up in a bundle.
    pub fn add_payload(
        mut self,
        name: &str,
        media_type: &str,
        compress: bool,
        data: &mut dyn io::Read,
    ) -> Result<(Self, PayloadFile), Error> {
        if !crate::outer::is_payload_name(name)
            || name.len() > 100
            || name == layout::FILES_PAYLOAD
            || self.payload.iter().any(|p| p.path == name)
        {
            return Err(ExportError::PayloadName {
                name: name.to_owned(),
            }
            .into());
        }
        let (member, out) = self.outer.begin_member(name)?;
        let (out, size, sha256, uncompressed_size) = if compress {
            let mut compressor =
                FrameCompressor::new(EarlyWriteback::new(out), self.options.threads);
            let copied = io::copy(data, &mut compressor);
            let compressed = compressor.finish();
            copied?;
            let compressed = compressed?;
            (
                compressed.sink.into_inner(),
                compressed.compressed,
                compressed.sha256,
                Some(compressed.uncompressed),
            )
        } else {
            let mut hashing = HashingWriter::new(out);
            io::copy(data, &mut hashing)?;
            let (out, sha256, size) = hashing.into_parts();
            (out, size, sha256, None)
        };
        let outer = OuterWriter::end_member(out, member, size, self.mtime)?;
        let file = PayloadFile {
            path: name.to_owned(),
            media_type: media_type.to_owned(),
            size,
            sha256,
            uncompressed_size,
        };
        self.payload.push(file.clone());
        Ok((Self { outer, ..self }, file))
    }

    /// Archives the entries of the source tree that `selection` keeps, as
    /// `data/files.tar.zst`. Once per bundle.
    pub fn add_tree(
        mut self,
        selection: &dyn Selection,
        progress: &dyn Progress,
    ) -> Result<Self, Error> {
        if self.tree.is_some() {
            return Err(ExportError::TreeTwice.into());
        }
        progress.phase(Phase::Archiving, None);
        let (member, payload_out) = self.outer.begin_member(layout::FILES_PAYLOAD)?;
        let root_stat =
            rustix::fs::fstat(&self.root).map_err(|e| with_path(e.into(), &self.options.source))?;
        let mut walker = Walker {
            tar: TarWriter::new(FrameCompressor::new(
                EarlyWriteback::new(payload_out),
                self.options.threads,
            )),
            index: spill(&self.out_dir)?,
            sums: spill(&self.out_dir)?,
            owners: HashMap::new(),
            groups: HashMap::new(),
            hardlinks: HashMap::new(),
            replaced_inodes: replaced_inodes(&self.root, selection)?,
            replaced_paths: selection.replaced_paths(),
            summary: FilesSummary {
                root: Meta {
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    owner: None,
                    group: None,
                    mtime: 0,
                    mtime_nsec: 0,
                    xattrs: Vec::new(),
                    xattrs_not_archived: Vec::new(),
                },
                entries: 0,
                skipped: 0,
                changed: 0,
                content_bytes: 0,
            },
            skipped: Vec::new(),
            changed: Vec::new(),
            excluded: Vec::new(),
            xattrs_not_archived: 0,
            inode_flags: InodeFlagsNotKept::default(),
            selection,
            progress,
        };
        walker.summary.root = walker.meta(&root_stat);
        (
            walker.summary.root.xattrs,
            walker.summary.root.xattrs_not_archived,
        ) = read_xattrs(self.root.as_fd()).map_err(|e| with_path(e, &self.options.source))?;
        walker.xattrs_not_archived = walker.summary.root.xattrs_not_archived.len() as u64;
        let root_flags =
            inode_flags(self.root.as_fd()).map_err(|e| with_path(e, &self.options.source))?;
        walker.inode_flags.note(&".", root_flags);
        let walked = walker.walk(self.root.as_fd(), None, 0);
        let Walker {
            tar,
            index,
            sums,
            summary,
            skipped,
            changed,
            excluded,
            xattrs_not_archived,
            inode_flags,
            ..
        } = walker;
        let finished = tar.finish();
        let compressed = match (walked, finished) {
            (Ok(()), Ok(compressor)) => compressor.finish()?,
            (walked, finished) => {
                // The compressor's own error (say, a full disk) explains a broken pipe upstream.
                let compressor_error = finished.and_then(FrameCompressor::finish).err();
                return Err(match (walked, compressor_error) {
                    (Err(Error::Io(e)), Some(cause)) if e.kind() == io::ErrorKind::BrokenPipe => {
                        cause.into()
                    }
                    (Err(e), _) => e,
                    (Ok(()), Some(cause)) => cause.into(),
                    (Ok(()), None) => io::Error::other("archive writer failed").into(),
                });
            }
        };
        let outer = OuterWriter::end_member(
            compressed.sink.into_inner(),
            member,
            compressed.compressed,
            self.mtime,
        )?;
        self.payload.push(PayloadFile {
            path: layout::FILES_PAYLOAD.to_owned(),
            media_type: layout::FILES_MEDIA_TYPE.to_owned(),
            size: compressed.compressed,
            sha256: compressed.sha256,
            uncompressed_size: Some(compressed.uncompressed),
        });
        Ok(Self {
            outer,
            tree: Some(Tree {
                index,
                sums,
                summary,
                skipped,
                changed,
                excluded,
                xattrs_not_archived,
                inode_flags,
            }),
            ..self
        })
    }

    /// Entries the tree's [`Selection`] excluded, with its reasons (empty before
    /// [`BundleWriter::add_tree`]).
    pub fn excluded(&self) -> &[(EntryPath, String)] {
        self.tree.as_ref().map_or(&[], |t| &t.excluded)
    }

    /// Writes the index, the manifests and the signature, and moves the bundle into place.
    pub fn finish(self) -> Result<ExportReport, Error> {
        let Self {
            options,
            key,
            out_dir,
            partial,
            mut outer,
            created_at,
            bundle_id,
            readme,
            payload,
            tree,
            ..
        } = self;
        let Some(Tree {
            index,
            sums,
            summary,
            skipped,
            changed,
            excluded,
            xattrs_not_archived,
            inode_flags,
        }) = tree
        else {
            return Err(ExportError::NoTree.into());
        };

        let index_sha = append_spill(&mut outer, layout::FILES_INDEX, index)?;
        let sums_sha = append_spill(&mut outer, layout::FILES_SHA256, sums)?;

        let header = BundleHeader {
            format: layout::FORMAT.to_owned(),
            format_version: layout::FORMAT_VERSION,
            bundle_id: bundle_id.clone(),
            tenant: options.tenant.clone(),
            sequence: options.sequence,
            created_at,
            producer: Producer {
                tool: "baluchon".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                host: rustix::system::uname()
                    .nodename()
                    .to_string_lossy()
                    .into_owned(),
                source_path: options.source.to_string_lossy().into_owned(),
            },
            payload,
            files: summary,
        };
        let mut bundle_json = serde_json::to_vec_pretty(&header).map_err(io::Error::other)?;
        bundle_json.push(b'\n');
        outer.append(layout::BUNDLE_JSON, &bundle_json)?;

        let octets: u64 = header.payload.iter().map(|p| p.size).sum();
        let bag_info = format!(
            "Bagging-Date: {date}\nBag-Software-Agent: baluchon {version}\n\
             External-Identifier: {tenant}\nBundle-Id: {bundle_id}\n\
             Bundle-Format: {format}/{format_version}\nPayload-Oxum: {octets}.{count}\n",
            date = created_at.strftime("%Y-%m-%d"),
            version = env!("CARGO_PKG_VERSION"),
            tenant = options.tenant,
            format = layout::FORMAT,
            format_version = layout::FORMAT_VERSION,
            count = header.payload.len(),
        );
        outer.append(layout::BAG_INFO, bag_info.as_bytes())?;
        let manifest: String = header
            .payload
            .iter()
            .map(|p| format!("{}  {}\n", p.sha256, p.path))
            .collect();
        outer.append(layout::MANIFEST, manifest.as_bytes())?;

        let mut tag_manifest = String::new();
        for (name, digest) in [
            (
                layout::BAGIT_TXT,
                Sha256Digest::of(layout::BAGIT_TXT_CONTENT.as_bytes()),
            ),
            (layout::README_TXT, Sha256Digest::of(readme.as_bytes())),
            (layout::FILES_INDEX, index_sha),
            (layout::FILES_SHA256, sums_sha),
            (layout::BUNDLE_JSON, Sha256Digest::of(&bundle_json)),
            (layout::BAG_INFO, Sha256Digest::of(bag_info.as_bytes())),
            (layout::MANIFEST, Sha256Digest::of(manifest.as_bytes())),
        ] {
            tag_manifest.push_str(&format!("{digest}  {name}\n"));
        }
        outer.append(layout::TAG_MANIFEST, tag_manifest.as_bytes())?;
        // The signature is the commit marker: it is written only once everything it covers is.
        let signature = key.sign(SIGNATURE_NAMESPACE, tag_manifest.as_bytes())?;
        outer.append(layout::SIGNATURE, signature.as_bytes())?;
        let (_, bundle_size) = outer.finish()?;

        partial
            .persist_noclobber(&options.output)
            .map_err(|e| match e.error.kind() {
                io::ErrorKind::AlreadyExists => Error::from(ExportError::OutputExists {
                    path: options.output.clone(),
                }),
                _ => with_path(e.error, &options.output).into(),
            })?;
        fs_err::File::open(&out_dir)?.sync_all()?;

        Ok(ExportReport {
            output: options.output.clone(),
            bundle_size,
            header,
            signer: key.fingerprint(),
            skipped,
            changed,
            xattrs_not_archived,
            inode_flags,
            excluded,
            removed_leftovers: self.removed_leftovers,
        })
    }
}

fn with_path(e: io::Error, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

fn open_source(path: &Path) -> Result<OwnedFd, Error> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    match rustix::fs::open(path, flags, Mode::empty()) {
        Ok(fd) => Ok(fd),
        Err(Errno::NOTDIR | Errno::LOOP) => Err(ExportError::NotADirectory {
            path: path.to_owned(),
        }
        .into()),
        Err(e) => Err(with_path(e.into(), path).into()),
    }
}

/// The index and the checksum list are text that compresses about tenfold: without it, a
/// tree of many small files would get a bundle much bigger than its `tar | zstd`.
type Spill = zstd::stream::write::Encoder<'static, HashingWriter<BufWriter<File>>>;

/// A compressed anonymous temporary file next to the output: the index can outgrow memory.
fn spill(dir: &Path) -> Result<Spill, Error> {
    let file = tempfile::tempfile_in(dir).map_err(|e| with_path(e, dir))?;
    let mut encoder =
        zstd::stream::write::Encoder::new(HashingWriter::new(BufWriter::new(file)), 3)?;
    encoder.include_checksum(true)?;
    // A small window: index lines repeat their field names, not long stretches of text,
    // and two encoders with the default 2 MiB window would cost ~8 MiB of the memory budget.
    encoder.window_log(17)?;
    Ok(encoder)
}

fn append_spill(
    outer: &mut OuterWriter,
    name: &'static str,
    spill: Spill,
) -> Result<Sha256Digest, Error> {
    let (writer, digest, len) = spill.finish()?.into_parts();
    let mut file = writer
        .into_inner()
        .map_err(io::IntoInnerError::into_error)?;
    file.rewind()?;
    outer.append_from(name, len, &mut io::BufReader::with_capacity(1 << 20, file))?;
    Ok(digest)
}

/// Starts writing the bundle to disk while it is produced, so that the final `fsync` (the
/// signature must be durable before the rename) has little left to wait for. It also keeps
/// the bundle from crowding the page cache.
#[derive(Debug)]
struct EarlyWriteback {
    out: BufWriter<File>,
    since_last: u64,
}

impl EarlyWriteback {
    const EVERY: u64 = 32 << 20;

    fn new(out: BufWriter<File>) -> Self {
        Self { out, since_last: 0 }
    }

    fn into_inner(self) -> BufWriter<File> {
        self.out
    }
}

impl Write for EarlyWriteback {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.out.write(buf)?;
        self.since_last += n as u64;
        if self.since_last >= Self::EVERY {
            self.out.flush()?;
            // DONTNEED starts writeback of the dirty pages without waiting for it. Advice
            // only: a kernel that ignores it costs a longer fsync, nothing else.
            let _ = rustix::fs::fadvise(self.out.get_ref(), 0, None, rustix::fs::Advice::DontNeed);
            self.since_last = 0;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

struct Walker<'p> {
    tar: TarWriter<FrameCompressor<EarlyWriteback>>,
    index: Spill,
    sums: Spill,
    owners: HashMap<u32, Option<String>>,
    groups: HashMap<u32, Option<String>>,
    /// (device, inode) of multiply-linked files already archived: their path and digest.
    hardlinks: HashMap<(u64, u64), (EntryPath, Sha256Digest)>,
    /// (device, inode) of multiply-linked files whose content is replaced, with the content.
    replaced_inodes: HashMap<(u64, u64), Vec<u8>>,
    replaced_paths: Vec<EntryPath>,
    summary: FilesSummary,
    skipped: Vec<(EntryPath, SkipReason)>,
    changed: Vec<(EntryPath, Change)>,
    excluded: Vec<(EntryPath, String)>,
    xattrs_not_archived: u64,
    inode_flags: InodeFlagsNotKept,
    selection: &'p dyn Selection,
    progress: &'p dyn Progress,
}

impl Walker<'_> {
    fn walk(
        &mut self,
        dir: BorrowedFd<'_>,
        prefix: Option<&EntryPath>,
        depth: usize,
    ) -> Result<(), Error> {
        let shown = || prefix.map_or_else(|| ".".to_owned(), ToString::to_string);
        if depth > MAX_DEPTH {
            return Err(ExportError::TooDeep {
                path: shown(),
                limit: MAX_DEPTH,
            }
            .into());
        }
        let unreadable = |source: io::Error| ExportError::Unreadable {
            path: shown(),
            source,
        };
        let mut names: Vec<(CString, FileType, u64)> = Vec::new();
        for item in rustix::fs::Dir::read_from(dir).map_err(|e| unreadable(e.into()))? {
            let item = item.map_err(|e| unreadable(e.into()))?;
            let name = item.file_name();
            if name != c"." && name != c".." {
                names.push((name.to_owned(), item.file_type(), item.ino()));
            }
        }
        // Sorted, so that two exports of the same tree list entries in the same order.
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, listed_type, listed_ino) in names {
            let path = match prefix {
                Some(p) => p.join(name.to_bytes()),
                None => EntryPath::new(name.to_bytes().to_vec()),
            }
            .map_err(|source| ExportError::Name {
                dir: shown(),
                name: name.to_bytes().escape_ascii().to_string(),
                source,
            })?;
            // Regular files are the bulk of a tree: the directory listing says what they are,
            // and `file` checks what it opened against it, so no separate lstat is needed.
            if listed_type == FileType::RegularFile {
                if self.selected(&path, false) {
                    self.file(dir, &name, &path, listed_ino)?;
                }
                continue;
            }
            let stat = match rustix::fs::statat(dir, &name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // As for a file: the bundle would silently lack what the listing had.
                Err(Errno::NOENT) => {
                    return Err(ExportError::Vanished {
                        path: path.to_string(),
                    }
                    .into())
                }
                Err(e) => {
                    return Err(ExportError::Unreadable {
                        path: path.to_string(),
                        source: e.into(),
                    }
                    .into())
                }
            };
            let file_type = FileType::from_raw_mode(stat.st_mode);
            // A directory swapped for a link after the listing would otherwise be archived
            // as the link, its listed content gone without a word.
            if listed_type != FileType::Unknown && listed_type != file_type {
                return Err(ExportError::Replaced {
                    path: path.to_string(),
                }
                .into());
            }
            if !self.selected(&path, file_type == FileType::Directory) {
                continue;
            }
            match file_type {
                FileType::Directory => self.directory(dir, &name, &path, &stat, depth)?,
                FileType::RegularFile => self.file(dir, &name, &path, stat.st_ino)?,
                FileType::Symlink => self.symlink(dir, &name, &path, &stat)?,
                FileType::Socket => self.skip(path, SkipReason::Socket)?,
                FileType::Fifo => self.skip(path, SkipReason::Fifo)?,
                FileType::CharacterDevice => self.skip(path, SkipReason::CharDevice)?,
                FileType::BlockDevice => self.skip(path, SkipReason::BlockDevice)?,
                FileType::Unknown => {
                    return Err(ExportError::Unreadable {
                        path: path.to_string(),
                        source: io::Error::other("unknown file type"),
                    }
                    .into())
                }
            }
        }
        Ok(())
    }

    fn selected(&mut self, path: &EntryPath, is_dir: bool) -> bool {
        match self.selection.select(path, is_dir) {
            Select::Archive => true,
            Select::Omit => false,
            Select::Exclude(reason) => {
                self.excluded.push((path.clone(), reason));
                false
            }
        }
    }

    fn directory(
        &mut self,
        parent: BorrowedFd<'_>,
        name: &CString,
        path: &EntryPath,
        listed: &Stat,
        depth: usize,
    ) -> Result<(), Error> {
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let fd = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::NOTDIR | Errno::LOOP) => {
                return Err(ExportError::Replaced {
                    path: path.to_string(),
                }
                .into())
            }
            Err(e) => {
                return Err(ExportError::Unreadable {
                    path: path.to_string(),
                    source: e.into(),
                }
                .into())
            }
        };
        let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
        if (stat.st_dev, stat.st_ino) != (listed.st_dev, listed.st_ino) {
            return Err(ExportError::Replaced {
                path: path.to_string(),
            }
            .into());
        }
        let mut meta = self.meta(&stat);
        (meta.xattrs, meta.xattrs_not_archived) =
            read_xattrs(fd.as_fd()).map_err(|source| ExportError::Unreadable {
                path: path.to_string(),
                source,
            })?;
        let flags = inode_flags(fd.as_fd()).map_err(|source| ExportError::Unreadable {
            path: path.to_string(),
            source,
        })?;
        self.inode_flags.note(path, flags);
        self.record(Entry {
            path: path.clone(),
            kind: EntryKind::Dir { meta },
        })?;
        self.walk(fd.as_fd(), Some(path), depth + 1)
    }

    fn symlink(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CString,
        path: &EntryPath,
        stat: &Stat,
    ) -> Result<(), Error> {
        let target = rustix::fs::readlinkat(dir, name, Vec::new())
            .map_err(|e| ExportError::Unreadable {
                path: path.to_string(),
                source: e.into(),
            })?
            .into_bytes();
        // The file whose content was to be replaced would be archived as it is, at the
        // link's target, if the walk reaches it there.
        if let Some(replaced) = self.replaced_paths.iter().find(|replaced| {
            let (replaced, link) = (replaced.as_bytes(), path.as_bytes());
            replaced == link
                || (replaced.starts_with(link) && replaced.get(link.len()) == Some(&b'/'))
        }) {
            return Err(ExportError::ReplacedThroughLink {
                path: replaced.to_string(),
                link: path.to_string(),
            }
            .into());
        }
        let meta = self.meta(stat);
        self.record(Entry {
            path: path.clone(),
            kind: EntryKind::Symlink { meta, target },
        })
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &CString,
        path: &EntryPath,
        listed_ino: u64,
    ) -> Result<(), Error> {
        let unreadable = |source: io::Error| ExportError::Unreadable {
            path: path.to_string(),
            source,
        };
        // O_NONBLOCK: should the name have become a FIFO meanwhile, open must not hang.
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
        let fd = match rustix::fs::openat(dir, name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP) => {
                return Err(ExportError::Replaced {
                    path: path.to_string(),
                }
                .into())
            }
            Err(Errno::NOENT) => {
                return Err(ExportError::Vanished {
                    path: path.to_string(),
                }
                .into())
            }
            Err(e) => return Err(unreadable(e.into()).into()),
        };
        let stat = rustix::fs::fstat(&fd).map_err(|e| unreadable(e.into()))?;
        // A file bind-mounted over the name has another inode than the listing says: ask
        // lstat, which sees the mount, before calling it replaced.
        let same = stat.st_ino == listed_ino
            || rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                .is_ok_and(|l| (l.st_dev, l.st_ino) == (stat.st_dev, stat.st_ino));
        if !same || FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
            return Err(ExportError::Replaced {
                path: path.to_string(),
            }
            .into());
        }
        let mut meta = self.meta(&stat);
        (meta.xattrs, meta.xattrs_not_archived) = read_xattrs(fd.as_fd()).map_err(unreadable)?;
        let flags = inode_flags(fd.as_fd()).map_err(unreadable)?;
        self.inode_flags.note(path, flags);
        let inode = (stat.st_dev, stat.st_ino);
        if let Some((first, digest)) = self.hardlinks.get(&inode).cloned() {
            self.sums
                .write_all(&sha256sum_line(&digest, path.as_bytes()))?;
            return self.record(Entry {
                path: path.clone(),
                kind: EntryKind::Hardlink {
                    meta,
                    target: first,
                },
            });
        }
        let replacement = self
            .selection
            .replacement(path)
            .or_else(|| self.replaced_inodes.get(&inode).cloned());
        if let Some(content) = replacement {
            let sha256 = self.replaced(path, meta, &content)?;
            if stat.st_nlink > 1 {
                self.hardlinks.insert(inode, (path.clone(), sha256));
            }
            return Ok(());
        }
        let file = File::from(fd);
        let size = stat.st_size as u64;
        let extents = if (stat.st_blocks as u64) * 512 < size {
            sparse_extents(&file, size).map_err(unreadable)?
        } else {
            None
        };
        self.tar.header(
            path.as_bytes(),
            &Kind::File {
                size,
                extents: extents.as_deref(),
            },
            &tar_meta(&meta),
        )?;
        let (sha256, mut change) = match &extents {
            Some(list) => self.copy_extents(&file, size, list),
            None => self.copy_exact(&file, size),
        }
        .map_err(|e| match e {
            CopyError::Read(source) => Error::from(unreadable(source)),
            CopyError::Write(e) => Error::from(e),
        })?;
        let stored = extents
            .as_ref()
            .map_or(size, |list| list.iter().map(|e| e.len).sum());
        self.tar.end(stored)?;
        if change.is_none() {
            // Bytes a growing file gained are left out (the header said `size`); a change in
            // place shows in the times.
            let after = rustix::fs::fstat(&file).map_err(|e| unreadable(e.into()))?;
            let times = |s: &Stat| (s.st_mtime, s.st_mtime_nsec, s.st_ctime, s.st_ctime_nsec);
            if after.st_size as u64 > size {
                change = Some(Change::Grew);
            } else if times(&after) != times(&stat) {
                change = Some(Change::Modified);
            }
        }
        self.summary.content_bytes = self.summary.content_bytes.saturating_add(size);
        self.sums
            .write_all(&sha256sum_line(&sha256, path.as_bytes()))?;
        if stat.st_nlink > 1 {
            self.hardlinks.insert(inode, (path.clone(), sha256));
        }
        if let Some(change) = change {
            self.summary.changed += 1;
            if self.changed.len() < REPORT_LIST_CAP {
                self.changed.push((path.clone(), change));
            }
        }
        self.record(Entry {
            path: path.clone(),
            kind: EntryKind::File {
                meta,
                size,
                sha256,
                extents,
                changed: change,
            },
        })
    }

    /// Archives `content` as the regular file `path`, with the file's own metadata; returns
    /// the content's digest.
    fn replaced(
        &mut self,
        path: &EntryPath,
        meta: Meta,
        content: &[u8],
    ) -> Result<Sha256Digest, Error> {
        let size = content.len() as u64;
        self.tar.header(
            path.as_bytes(),
            &Kind::File {
                size,
                extents: None,
            },
            &tar_meta(&meta),
        )?;
        self.tar.sink().write_all(content)?;
        self.tar.end(size)?;
        let mut hasher = Hasher::default();
        hasher.update(content);
        let sha256 = hasher.finish().0;
        self.summary.content_bytes = self.summary.content_bytes.saturating_add(size);
        self.sums
            .write_all(&sha256sum_line(&sha256, path.as_bytes()))?;
        self.record(Entry {
            path: path.clone(),
            kind: EntryKind::File {
                meta,
                size,
                sha256,
                extents: None,
                changed: None,
            },
        })?;
        Ok(sha256)
    }

    /// Copies exactly `size` bytes: zeros stand in for what a shrinking file no longer has,
    /// and bytes a growing file gained are left out.
    fn copy_exact(
        &mut self,
        file: &File,
        size: u64,
    ) -> Result<(Sha256Digest, Option<Change>), CopyError> {
        let mut hasher = Hasher::default();
        let change = self
            .copy_range(file, 0, size, &mut hasher)?
            .then_some(Change::Shrank);
        Ok((hasher.finish().0, change))
    }

    /// Copies the data extents of a sparse file; the hash covers its logical content.
    fn copy_extents(
        &mut self,
        file: &File,
        size: u64,
        extents: &[Extent],
    ) -> Result<(Sha256Digest, Option<Change>), CopyError> {
        let mut hasher = Hasher::default();
        let mut change = None;
        let mut cursor = 0u64;
        for extent in extents {
            hasher.update_zeros(extent.offset - cursor);
            self.progress.advance(extent.offset - cursor);
            if self.copy_range(file, extent.offset, extent.len, &mut hasher)? {
                change = Some(Change::Shrank);
            }
            cursor = extent.offset + extent.len;
        }
        hasher.update_zeros(size - cursor);
        self.progress.advance(size - cursor);
        Ok((hasher.finish().0, change))
    }

    /// Reads `len` bytes at `offset` straight into the compressor's buffer, hashing them.
    /// If the file ends early, zeros stand in for the rest and the result is `true`.
    fn copy_range(
        &mut self,
        file: &File,
        offset: u64,
        len: u64,
        hasher: &mut Hasher,
    ) -> Result<bool, CopyError> {
        let mut done = 0u64;
        while done < len {
            let want = (len - done).min(layout::FRAME_BYTES as u64) as usize;
            let at = offset + done;
            let n = {
                let read = self
                    .tar
                    .sink()
                    .fill_from(want, |dst| loop {
                        match file.read_at(dst, at) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            other => return other,
                        }
                    })
                    .map_err(CopyError::Write)?
                    .map_err(CopyError::Read)?;
                hasher.update(read);
                read.len() as u64
            };
            if n == 0 {
                self.zeros(hasher, len - done)?;
                return Ok(true);
            }
            self.progress.advance(n);
            done += n;
        }
        Ok(false)
    }

    fn zeros(&mut self, hasher: &mut Hasher, len: u64) -> Result<(), CopyError> {
        hasher.update_zeros(len);
        self.tar.zeros(len).map_err(CopyError::Write)
    }

    fn skip(&mut self, path: EntryPath, reason: SkipReason) -> Result<(), Error> {
        self.summary.skipped += 1;
        if self.skipped.len() < REPORT_LIST_CAP {
            self.skipped.push((path.clone(), reason));
        }
        self.index_line(&Entry {
            path,
            kind: EntryKind::Skipped { reason },
        })
    }

    /// Writes the header of a non-file entry (files write theirs before their data) and
    /// records any entry in the index.
    fn record(&mut self, entry: Entry) -> Result<(), Error> {
        match &entry.kind {
            EntryKind::Dir { meta } => {
                self.tar
                    .header(entry.path.as_bytes(), &Kind::Dir, &tar_meta(meta))?
            }
            EntryKind::Symlink { meta, target } => self.tar.header(
                entry.path.as_bytes(),
                &Kind::Symlink { target },
                &tar_meta(meta),
            )?,
            EntryKind::Hardlink { meta, target } => self.tar.header(
                entry.path.as_bytes(),
                &Kind::Hardlink {
                    target: target.as_bytes(),
                },
                &tar_meta(meta),
            )?,
            EntryKind::File { .. } | EntryKind::Skipped { .. } => {}
        }
        self.summary.entries += 1;
        self.index_line(&entry)
    }

    fn index_line(&mut self, entry: &Entry) -> Result<(), Error> {
        if let Some(meta) = entry.meta() {
            self.xattrs_not_archived += meta.xattrs_not_archived.len() as u64;
        }
        let mut line = entry.to_json_line().into_bytes();
        line.push(b'\n');
        self.index.write_all(&line)?;
        Ok(())
    }

    fn meta(&mut self, stat: &Stat) -> Meta {
        let uid = stat.st_uid;
        let gid = stat.st_gid;
        let owner = self
            .owners
            .entry(uid)
            .or_insert_with(|| {
                uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned())
            })
            .clone();
        let group = self
            .groups
            .entry(gid)
            .or_insert_with(|| {
                uzers::get_group_by_gid(gid).map(|g| g.name().to_string_lossy().into_owned())
            })
            .clone();
        Meta {
            mode: stat.st_mode & 0o7777,
            uid,
            gid,
            owner,
            group,
            mtime: stat.st_mtime,
            mtime_nsec: stat.st_mtime_nsec as u32,
            xattrs: Vec::new(),
            xattrs_not_archived: Vec::new(),
        }
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn tar_meta(meta: &Meta) -> TarMeta<'_> {
    TarMeta {
        mode: meta.mode,
        uid: meta.uid,
        gid: meta.gid,
        owner: meta.owner.as_deref(),
        group: meta.group.as_deref(),
        mtime: meta.mtime,
        xattrs: &meta.xattrs,
    }
}

/// The multiply-linked regular files among `selection`'s replaced paths, found without
/// following any link, with their replacement content.
fn replaced_inodes(
    root: &OwnedFd,
    selection: &dyn Selection,
) -> Result<HashMap<(u64, u64), Vec<u8>>, Error> {
    let mut found = HashMap::new();
    for path in selection.replaced_paths() {
        let opened = rustix::fs::openat2(
            root,
            OsStr::from_bytes(path.as_bytes()),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::NO_SYMLINKS | ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS,
        );
        // A path that is not there (or not reachable without links) is met by no walk.
        let Ok(fd) = opened else { continue };
        let stat = rustix::fs::fstat(&fd).map_err(io::Error::from)?;
        if FileType::from_raw_mode(stat.st_mode) == FileType::RegularFile && stat.st_nlink > 1 {
            if let Some(content) = selection.replacement(&path) {
                found.insert((stat.st_dev, stat.st_ino), content);
            }
        }
    }
    Ok(found)
}

/// The `user.` extended attributes of an open file or directory, sorted, and the names of
/// the others (which are not archived). A filesystem without xattrs has none.
fn read_xattrs(fd: BorrowedFd<'_>) -> io::Result<(Vec<Xattr>, Vec<String>)> {
    let mut names = vec![0u8; 4096];
    let len = loop {
        match rustix::fs::flistxattr(fd, &mut names[..]) {
            Ok(len) => break len,
            Err(Errno::RANGE) if names.len() < (1 << 20) => names.resize(names.len() * 4, 0),
            Err(Errno::NOTSUP) => return Ok((Vec::new(), Vec::new())),
            Err(e) => return Err(e.into()),
        }
    };
    let mut archived = Vec::new();
    let mut not_archived = Vec::new();
    let mut value = vec![0u8; crate::index::MAX_XATTR_VALUE];
    for raw in names[..len].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        match std::str::from_utf8(raw) {
            Ok(name) if Xattr::is_valid_name(name) => {
                match rustix::fs::fgetxattr(fd, name, &mut value[..]) {
                    Ok(n) => archived.push(Xattr {
                        name: name.to_owned(),
                        value: value[..n].to_vec(),
                    }),
                    // Removed since it was listed.
                    Err(Errno::NODATA) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            _ => not_archived.push(String::from_utf8_lossy(raw).into_owned()),
        }
    }
    if archived.len() > crate::index::MAX_XATTRS {
        return Err(io::Error::other(format!(
            "more than {} user extended attributes",
            crate::index::MAX_XATTRS
        )));
    }
    archived.sort();
    not_archived.sort();
    Ok((archived, not_archived))
}

/// Data extents from `SEEK_DATA`/`SEEK_HOLE`; `None` when the file has no hole after all or
/// too many extents to list.
fn sparse_extents(file: &File, size: u64) -> io::Result<Option<Vec<Extent>>> {
    let mut extents = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let data = match rustix::fs::seek(file, rustix::fs::SeekFrom::Data(pos)) {
            Ok(data) => data,
            Err(Errno::NXIO) => break,
            Err(e) => return Err(e.into()),
        };
        if data >= size {
            break;
        }
        let hole = rustix::fs::seek(file, rustix::fs::SeekFrom::Hole(data))?.min(size);
        extents.push(Extent {
            offset: data,
            len: hole - data,
        });
        if extents.len() > MAX_SPARSE_SEGMENTS {
            return Ok(None);
        }
        pos = hole;
    }
    let covered: u64 = extents.iter().map(|e| e.len).sum();
    Ok((covered < size).then_some(extents))
}

/// One line of the checksum list (`files-sha256.txt.zst`), escaped as GNU coreutils does: a name with a backslash
/// or a newline gets a leading backslash, and those two characters are escaped.
fn sha256sum_line(digest: &Sha256Digest, path: &[u8]) -> Vec<u8> {
    let escape = path.iter().any(|&b| b == b'\\' || b == b'\n');
    let mut line = Vec::with_capacity(path.len() + 68);
    if escape {
        line.push(b'\\');
    }
    line.extend_from_slice(digest.to_string().as_bytes());
    line.extend_from_slice(b"  ");
    for &b in path {
        match b {
            b'\\' if escape => line.extend_from_slice(b"\\\\"),
            b'\n' => line.extend_from_slice(b"\\n"),
            _ => line.push(b),
        }
    }
    line.push(b'\n');
    line
}
