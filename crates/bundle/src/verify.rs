//! Reading a bundle: open → authenticate → verify the payload.
//!
//! The typestate makes the order a compile-time fact: only a `Bundle<Authenticated>` exposes
//! its metadata as trustworthy, and only a `Bundle<Verified>` is the proof that every byte
//! was checked. Tag files are authenticated before any of them is parsed, and nothing in the
//! payload is parsed before the metadata that bounds it (sizes, counts) is authenticated.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::sync_channel;

use baluchon_signature::{TrustedSigners, VerifiedSigner};

use crate::decode::{decode, ChannelReader};
use crate::digest::{HashingReader, Sha256Digest};
use crate::error::{Error, Invalid};
use crate::files::{process_files, Batch, FileOutput, InFlight, Job, Jobs};
use crate::index::{is_valid_tenant, BundleHeader, Entry, EntryKind, EntryPath, Outline, OwnerRef};
use crate::layout::{self, tag_file_cap, MAX_INDEX_LINE, SIGNATURE_NAMESPACE, ZSTD_WINDOW_LOG_MAX};
use crate::outer::{self, Member};
use crate::probe::TreeNeeds;
use crate::progress::{Phase, Progress};
use crate::tarfmt::{Content, TarEntry, TarKind, TarReader};

/// Decompressed chunks (up to 4 MiB each) in circulation: one being decoded, two queued,
/// one being parsed, and the rest with the file thread or on their way to it. Fewer left
/// the threads waiting for each other more often (measured: 5 were 2 % slower).
const CHUNK_POOL: usize = 8;

/// What the verifier accepts beyond a valid signature.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Policy {
    /// Refuse a bundle made for another tenant (cross-tenant replay).
    pub expected_tenant: Option<String>,
    /// Refuse a bundle whose key the trust file does not list for this principal (as
    /// `ssh-keygen -Y verify -I`): one trust file may hold many clients' keys.
    pub expected_signer: Option<String>,
    pub max_entries: u64,
    pub max_uncompressed_bytes: u64,
    /// Logical bytes of file content, holes included: verification hashes them all.
    pub max_content_bytes: u64,
    /// How far in the future `created_at` may be before the bundle is refused.
    pub clock_skew: jiff::SignedDuration,
    pub now: jiff::Timestamp,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            expected_tenant: None,
            expected_signer: None,
            max_entries: 100_000_000,
            max_uncompressed_bytes: 64 << 40,
            max_content_bytes: 64 << 40,
            clock_skew: jiff::SignedDuration::from_hours(24),
            now: jiff::Timestamp::now(),
        }
    }
}

/// State: only the outer tar has been checked.
#[derive(Debug)]
pub struct Unverified;

/// State: the signature and every tag file are checked; the payload is not yet.
#[derive(Debug)]
pub struct Authenticated {
    header: BundleHeader,
    signer: VerifiedSigner,
    index_sha256: Sha256Digest,
    manifest: Vec<(String, Sha256Digest)>,
}

/// State: every byte of the bundle has been checked against the signed metadata.
#[derive(Debug)]
pub struct Verified {
    header: BundleHeader,
    signer: VerifiedSigner,
}

/// A bundle file in one of the states above.
#[derive(Debug)]
pub struct Bundle<S> {
    path: PathBuf,
    file: File,
    members: Vec<Member>,
    state: S,
}

/// What `inspect` shows without checking anything but the form.
#[derive(Debug, Clone)]
pub struct Inspection {
    pub header: BundleHeader,
    /// Fingerprint of the key that claims to have signed; not verified.
    pub claimed_signer: Option<String>,
    pub bundle_size: u64,
}

impl<S> Bundle<S> {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn member(&self, name: &str) -> Result<&Member, Error> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .ok_or_else(|| crate::outer::OuterError::Missing(static_name(name)).into())
    }

    /// Reads a capped tag file whole.
    fn read_small(&self, name: &str) -> Result<Vec<u8>, Error> {
        let member = self.member(name)?;
        let limit = tag_file_cap(name);
        if member.size > limit {
            return Err(Invalid::TooLarge {
                name: name.to_owned(),
                size: member.size,
                limit,
            }
            .into());
        }
        let mut bytes = vec![0u8; member.size as usize];
        self.file.read_exact_at(&mut bytes, member.offset)?;
        Ok(bytes)
    }

    fn region(&self, member: &Member) -> Region<'_> {
        Region {
            file: &self.file,
            pos: member.offset,
            end: member.offset + member.size,
        }
    }
}

impl Bundle<Unverified> {
    /// Opens a bundle and checks the outer tar's structure.
    pub fn open(path: &Path) -> Result<Self, Error> {
        let mut file = fs_err::File::open(path)?.into_parts().0;
        let members = outer::scan(&mut file)?;
        Ok(Self {
            path: path.to_owned(),
            file,
            members,
            state: Unverified,
        })
    }

    /// Reads `bundle.json` and the claimed signer without verifying them: for display only.
    pub fn inspect(&self) -> Result<Inspection, Error> {
        let header = parse_header(&self.read_small(layout::BUNDLE_JSON)?)?;
        let claimed_signer = self
            .read_small(layout::SIGNATURE)
            .ok()
            .and_then(|sig| baluchon_signature::claimed_signer(&sig));
        let bundle_size = self.file.metadata()?.len();
        Ok(Inspection {
            header,
            claimed_signer,
            bundle_size,
        })
    }

    /// Checks the signature, then every tag file against the signed tag manifest, then the
    /// metadata against the bag and the policy.
    pub fn authenticate(
        self,
        trust: &TrustedSigners,
        policy: &Policy,
        progress: &dyn Progress,
    ) -> Result<Bundle<Authenticated>, Error> {
        progress.phase(Phase::Authenticating, None);
        let signature = self.read_small(layout::SIGNATURE)?;
        let tag_manifest = self.read_small(layout::TAG_MANIFEST)?;
        let signer = trust
            .verify(SIGNATURE_NAMESPACE, &tag_manifest, &signature, policy.now)
            .map_err(Invalid::Signature)?;
        if let Some(identity) = &policy.expected_signer {
            if !signer.answers_to(identity) {
                return Err(Invalid::WrongSigner {
                    identity: identity.clone(),
                    fingerprint: signer.fingerprint.clone(),
                    principals: signer.principals.join(","),
                }
                .into());
            }
        }

        let tags = parse_listing(&tag_manifest, layout::TAG_MANIFEST)?;
        let expected_tags: Vec<&str> = layout::LEADING_TAG_FILES
            .iter()
            .chain(layout::TRAILING_TAG_FILES.iter())
            .copied()
            .filter(|n| *n != layout::TAG_MANIFEST && *n != layout::SIGNATURE)
            .collect();
        check_same_names(&tags, &expected_tags, layout::TAG_MANIFEST)?;
        for (name, expected) in &tags {
            let member = self.member(name)?;
            if member.size > tag_file_cap(name) {
                return Err(Invalid::TooLarge {
                    name: name.clone(),
                    size: member.size,
                    limit: tag_file_cap(name),
                }
                .into());
            }
            let actual = hash_region(self.region(member), None)?;
            if actual != *expected {
                return Err(Invalid::Checksum {
                    name: name.clone(),
                    expected: *expected,
                    actual,
                }
                .into());
            }
        }

        // Parsing starts only now that every tag file is authenticated.
        if self.read_small(layout::BAGIT_TXT)? != layout::BAGIT_TXT_CONTENT.as_bytes() {
            return Err(Invalid::BagitDeclaration.into());
        }
        let header = parse_header(&self.read_small(layout::BUNDLE_JSON)?)?;
        let manifest = parse_listing(&self.read_small(layout::MANIFEST)?, layout::MANIFEST)?;
        self.check_payload_listing(&header, &manifest)?;
        check_bag_info(&self.read_small(layout::BAG_INFO)?, &header)?;
        check_policy(&header, policy)?;

        let index_sha256 = tags
            .iter()
            .find(|(n, _)| n == layout::FILES_INDEX)
            .map(|(_, d)| *d)
            .ok_or(Invalid::Absent {
                name: layout::FILES_INDEX.to_owned(),
                listing: layout::TAG_MANIFEST,
            })?;
        Ok(Bundle {
            path: self.path,
            file: self.file,
            members: self.members,
            state: Authenticated {
                header,
                signer,
                index_sha256,
                manifest,
            },
        })
    }

    /// Every payload member is listed once in the manifest and described in bundle.json with
    /// the same hash and its actual size (sizes first: they bound everything else).
    fn check_payload_listing(
        &self,
        header: &BundleHeader,
        manifest: &[(String, Sha256Digest)],
    ) -> Result<(), Error> {
        let payload_members: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| m.name.starts_with("data/"))
            .collect();
        let names: Vec<&str> = payload_members.iter().map(|m| m.name.as_str()).collect();
        check_same_names(manifest, &names, layout::MANIFEST)?;
        if header.payload.len() != manifest.len() {
            return Err(Invalid::Inconsistent {
                reason: format!(
                    "{} payload files described, {} in the manifest",
                    header.payload.len(),
                    manifest.len()
                ),
            }
            .into());
        }
        for described in &header.payload {
            let member = payload_members
                .iter()
                .find(|m| m.name == described.path)
                .ok_or_else(|| Invalid::Absent {
                    name: described.path.clone(),
                    listing: layout::BUNDLE_JSON,
                })?;
            if member.size != described.size {
                return Err(Invalid::Size {
                    name: described.path.clone(),
                    declared: described.size,
                    actual: member.size,
                }
                .into());
            }
            let listed = manifest.iter().find(|(n, _)| *n == described.path);
            if listed.map(|(_, d)| *d) != Some(described.sha256) {
                return Err(Invalid::Inconsistent {
                    reason: format!("{} has another sha256 in the manifest", described.path),
                }
                .into());
            }
        }
        let files = header
            .payload
            .iter()
            .find(|p| p.path == layout::FILES_PAYLOAD)
            .ok_or_else(|| Invalid::Absent {
                name: layout::FILES_PAYLOAD.to_owned(),
                listing: layout::BUNDLE_JSON,
            })?;
        if files.media_type != layout::FILES_MEDIA_TYPE || files.uncompressed_size.is_none() {
            return Err(Invalid::Inconsistent {
                reason: format!(
                    "{} must be {} with an uncompressed_size",
                    layout::FILES_PAYLOAD,
                    layout::FILES_MEDIA_TYPE
                ),
            }
            .into());
        }
        Ok(())
    }
}

impl Bundle<Authenticated> {
    pub fn header(&self) -> &BundleHeader {
        &self.state.header
    }

    pub fn signer(&self) -> &VerifiedSigner {
        &self.state.signer
    }

    /// Calls `f` with each line of the (authenticated) index, in order.
    pub(crate) fn for_each_index_entry(&self, mut f: impl FnMut(&Entry)) -> Result<(), Error> {
        self.for_each_index_line(|line, bytes| {
            f(&index_entry(line, bytes)?);
            Ok(())
        })
    }

    /// Each line of the index (without its newline) and its number; then the index digest
    /// is checked.
    fn for_each_index_line(
        &self,
        mut f: impl FnMut(u64, &[u8]) -> Result<(), Error>,
    ) -> Result<(), Error> {
        let mut lines = IndexLines::new(self.region(self.member(layout::FILES_INDEX)?))?;
        while let Some((line, bytes)) = lines.next_line()? {
            f(line, bytes)?;
        }
        let actual = lines.finish()?;
        if actual != self.state.index_sha256 {
            return Err(Invalid::Checksum {
                name: layout::FILES_INDEX.to_owned(),
                expected: self.state.index_sha256,
                actual,
            }
            .into());
        }
        Ok(())
    }

    /// Streams every payload file once: sizes, hashes, and for the file tree, each tar entry
    /// against the next index line and each file's content against its recorded hash.
    pub fn verify_payload(self, progress: &dyn Progress) -> Result<Bundle<Verified>, Error> {
        self.verify_into(&mut (), progress)
    }

    /// Like [`Bundle::verify_payload`], handing each entry to `sink` as it is verified.
    pub(crate) fn verify_into(
        self,
        sink: &mut dyn TreeSink,
        progress: &dyn Progress,
    ) -> Result<Bundle<Verified>, Error> {
        let total = self
            .members
            .iter()
            .filter(|m| m.name.starts_with("data/"))
            .map(|m| m.size)
            .sum();
        progress.phase(Phase::VerifyingPayload, Some(total));
        for (name, expected) in &self.state.manifest {
            let member = self.member(name)?;
            if name == layout::FILES_PAYLOAD {
                self.verify_files(member, *expected, sink, progress)?;
            } else {
                let actual = hash_region(self.region(member), Some(progress))?;
                if actual != *expected {
                    return Err(Invalid::Checksum {
                        name: name.clone(),
                        expected: *expected,
                        actual,
                    }
                    .into());
                }
            }
        }
        Ok(Bundle {
            path: self.path,
            file: self.file,
            members: self.members,
            state: Verified {
                header: self.state.header,
                signer: self.state.signer,
            },
        })
    }

    fn verify_files(
        &self,
        member: &Member,
        expected: Sha256Digest,
        sink: &mut dyn TreeSink,
        progress: &dyn Progress,
    ) -> Result<(), Error> {
        let declared = self
            .state
            .header
            .payload
            .iter()
            .find(|p| p.path == layout::FILES_PAYLOAD)
            .and_then(|p| p.uncompressed_size)
            .unwrap_or(0);
        let region = self.region(member);
        let index = self.region(self.member(layout::FILES_INDEX)?);
        // One thread reads, hashes and decompresses; this one parses the tar, checks it
        // against the index and creates the entries; a third hashes and writes the files.
        // The decompressed chunks go round from a fixed pool, so memory is bounded.
        let files_failed = &AtomicBool::new(false);
        let in_flight = &InFlight::new();
        std::thread::scope(|scope| {
            let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(2);
            let (pool_tx, pool_rx) = sync_channel::<Vec<u8>>(CHUNK_POOL);
            for _ in 0..CHUNK_POOL {
                // Cannot fail: the channel has room for exactly these.
                let _ = pool_tx.send(Vec::new());
            }
            let (batch_tx, batch_rx) = sync_channel::<Batch>(4);
            let decompressor =
                scope.spawn(move || decode(region, declared, &tx, &pool_rx, progress));
            let file_thread = scope.spawn(move || process_files(batch_rx, in_flight, files_failed));
            let jobs = Jobs::default();
            let checked = self.check_tree(
                ChannelReader::new(rx, pool_tx, batch_tx, &jobs),
                &jobs,
                in_flight,
                files_failed,
                index,
                sink,
            );
            let files = file_thread
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("file thread panicked").into()));
            let decompressed = decompressor
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("decompression thread panicked")));
            // A file's wrong digest or failed write comes from before anything the other
            // threads stopped at.
            files?;
            match (checked, decompressed) {
                (_, Err(e)) if e.kind() == io::ErrorKind::FileTooLarge => {
                    Err(Invalid::DecompressedTooLarge { declared }.into())
                }
                // The disk failed, not the bundle.
                (_, Err(e))
                    if e.get_ref()
                        .is_some_and(|inner| inner.is::<SourceReadError>()) =>
                {
                    Err(e.into())
                }
                (_, Err(e)) => Err(Invalid::Decompress(e).into()),
                (Err(e), Ok(_)) => Err(e),
                (Ok(()), Ok(done)) => {
                    if done.sha256 != expected {
                        return Err(Invalid::Checksum {
                            name: layout::FILES_PAYLOAD.to_owned(),
                            expected,
                            actual: done.sha256,
                        }
                        .into());
                    }
                    if done.uncompressed != declared {
                        return Err(Invalid::Count {
                            what: "uncompressed size of data/files.tar.zst",
                            declared,
                            actual: done.uncompressed,
                        }
                        .into());
                    }
                    Ok(())
                }
            }
        })
    }

    /// Walks the tar and the index in lockstep.
    ///
    /// File content is hashed and written on another thread: `jobs` says what to do,
    /// `in_flight` counts each file handed over (so that open files are bounded), and
    /// `files_failed` stops the walk early (the file thread reports why).
    fn check_tree(
        &self,
        stream: ChannelReader<'_>,
        jobs: &Jobs,
        in_flight: &InFlight,
        files_failed: &AtomicBool,
        index: Region<'_>,
        sink: &mut dyn TreeSink,
    ) -> Result<(), Error> {
        let summary = &self.state.header.files;
        let mut tar = TarReader::new(stream);
        // Hardlink targets are the only entries that must be remembered: a first, cheap pass
        // over the index finds them, so memory stays flat however large the tree.
        let mut targets: HashMap<u64, bool> = HashMap::new();
        // The sink gets the same pass (the importer collects owner names from it, and what
        // the tree needs of the filesystem).
        let mut needs = TreeNeeds::default();
        self.for_each_index_line(|line, bytes| {
            // Most lines are read in outline only.
            if let Some(outline) = Outline::parse(bytes) {
                if let Some((owner, group)) = outline.owners() {
                    needs.symlinks += u64::from(outline.is_symlink());
                    needs.xattrs += u64::from(outline.has_xattrs());
                    sink.prepare(owner, group);
                    return Ok(());
                }
            }
            let entry = index_entry(line, bytes)?;
            match &entry.kind {
                EntryKind::Hardlink { target, .. } => {
                    targets.insert(path_key(target), false);
                    needs.hardlinks += 1;
                }
                EntryKind::Symlink { .. } => needs.symlinks += 1,
                _ => {}
            }
            if let Some(meta) = entry.meta() {
                needs.xattrs += u64::from(!meta.xattrs.is_empty());
                sink.prepare(
                    (meta.owner.as_deref(), meta.uid),
                    (meta.group.as_deref(), meta.gid),
                );
            }
            Ok(())
        })?;
        sink.prepared(&needs)?;
        let mut lines = IndexLines::new(index)?;
        let mut order = TreeOrder::default();
        let (mut entries, mut skipped, mut changed, mut content) = (0u64, 0u64, 0u64, 0u64);
        while let Some((line, entry)) = lines.next_entry()? {
            if files_failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            order.place(line, &entry)?;
            if entries + skipped >= summary.entries + summary.skipped {
                return Err(Invalid::Count {
                    what: "index lines",
                    declared: summary.entries + summary.skipped,
                    actual: entries + skipped + 1,
                }
                .into());
            }
            if matches!(entry.kind, EntryKind::Skipped { .. }) {
                skipped += 1;
                continue;
            }
            let tar_entry = tar.next_entry()?.ok_or_else(|| Invalid::MissingFromTar {
                line,
                path: entry.path.to_string(),
            })?;
            compare(line, &entry, &tar_entry)?;
            // Before the sink sees it: an extractor links to the target as soon as it begins.
            if let EntryKind::Hardlink { target, .. } = &entry.kind {
                if targets.get(&path_key(target)) != Some(&true) {
                    return Err(Invalid::Hardlink {
                        line,
                        path: entry.path.to_string(),
                        target: target.to_string(),
                    }
                    .into());
                }
            }
            entries += 1;
            // Every file handed over so far must be able to finish before the parser waits:
            // what is recorded is sent first.
            if matches!(entry.kind, EntryKind::File { .. })
                && !in_flight.add(|| tar.get_mut().flush())
            {
                return Ok(()); // the file thread stopped; it reports why
            }
            if let Some(output) = sink.begin(&entry)? {
                jobs.borrow_mut().push(Job::Open(output));
            }
            match &entry.kind {
                EntryKind::File {
                    sha256,
                    changed: c,
                    size,
                    ..
                } => {
                    tar.read_content::<Error>(&tar_entry, |piece| {
                        jobs.borrow_mut().push(match piece {
                            Content::Data { offset, at, bytes } => Job::Data {
                                at,
                                offset,
                                len: bytes.len(),
                            },
                            Content::Hole { len } => Job::Zeros(len),
                        });
                        Ok(())
                    })?;
                    jobs.borrow_mut().push(Job::End {
                        path: entry.path.clone(),
                        expected: *sha256,
                    });
                    // Most trees have no hardlinks: no path hashed for them then.
                    if !targets.is_empty() {
                        if let Some(seen) = targets.get_mut(&path_key(&entry.path)) {
                            *seen = true;
                        }
                    }
                    content = content.saturating_add(*size);
                    changed += u64::from(c.is_some());
                }
                EntryKind::Dir { .. }
                | EntryKind::Symlink { .. }
                | EntryKind::Hardlink { .. }
                | EntryKind::Skipped { .. } => {}
            }
            sink.end(&entry)?;
        }
        if let Some(extra) = tar.next_entry()? {
            return Err(Invalid::ExtraInTar {
                path: extra.path.to_string(),
            }
            .into());
        }
        tar.finish()?;
        let index_sha256 = lines.finish()?;
        if index_sha256 != self.state.index_sha256 {
            return Err(Invalid::Checksum {
                name: layout::FILES_INDEX.to_owned(),
                expected: self.state.index_sha256,
                actual: index_sha256,
            }
            .into());
        }
        for (what, declared, actual) in [
            ("entries", summary.entries, entries),
            ("skipped entries", summary.skipped, skipped),
            ("changed files", summary.changed, changed),
            ("content bytes", summary.content_bytes, content),
        ] {
            if declared != actual {
                return Err(Invalid::Count {
                    what,
                    declared,
                    actual,
                }
                .into());
            }
        }
        sink.walked()
    }
}

/// Receives each entry during the payload pass; extraction writes them into staging.
pub(crate) trait TreeSink {
    /// The owner and group of each index line that has them, during the first pass over
    /// the index (before any content).
    fn prepare(&mut self, _owner: OwnerRef<'_>, _group: OwnerRef<'_>) {}
    /// The first pass is over, and found that the tree `needs` these of a filesystem; the
    /// payload pass starts.
    fn prepared(&mut self, _needs: &TreeNeeds) -> Result<(), Error> {
        Ok(())
    }
    /// The entry's header matched its index line. For a file, where its content goes: the
    /// file thread writes it there, and finishes it once the content's digest is right.
    fn begin(&mut self, entry: &Entry) -> Result<Option<Box<dyn FileOutput>>, Error>;
    /// The entry's header and index line are checked (a file's content may not be yet).
    fn end(&mut self, entry: &Entry) -> Result<(), Error>;
    /// Every entry is checked and begun; the file thread may still be writing content, and
    /// a failure there still fails the pass. Extraction finishes directories here, while
    /// the file thread finishes the last files.
    fn walked(&mut self) -> Result<(), Error> {
        Ok(())
    }
}

/// Verification alone keeps nothing.
impl TreeSink for () {
    fn begin(&mut self, _: &Entry) -> Result<Option<Box<dyn FileOutput>>, Error> {
        Ok(None)
    }
    fn end(&mut self, _: &Entry) -> Result<(), Error> {
        Ok(())
    }
}

impl Bundle<Verified> {
    pub fn header(&self) -> &BundleHeader {
        &self.state.header
    }

    /// Copies payload file `name` to `out`, decompressed if it is zstd-compressed, and
    /// hashes it again on the way: the bundle file could have changed since it was
    /// verified, and a copy that does not match the signed digest is an error (the caller
    /// must then discard what it wrote). Returns the bytes written.
    pub fn copy_payload(&self, name: &str, out: &mut dyn Write) -> Result<u64, Error> {
        let described = self
            .state
            .header
            .payload
            .iter()
            .find(|p| p.path == name)
            .ok_or_else(|| Error::from(crate::outer::OuterError::Missing(static_name(name))))?;
        let member = self.member(name)?;
        let mut hashing = HashingReader::new(self.region(member));
        let written = match described.uncompressed_size {
            Some(limit) => {
                let mut decoder = zstd::stream::read::Decoder::new(&mut hashing)?;
                decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                let n = io::copy(&mut (&mut decoder).take(limit + 1), out)?;
                // Drain what the decoder left unread, so the hash covers the whole member.
                io::copy(&mut decoder.finish(), &mut io::sink())?;
                if n != limit {
                    return Err(Invalid::Size {
                        name: name.to_owned(),
                        declared: limit,
                        actual: n,
                    }
                    .into());
                }
                n
            }
            None => io::copy(&mut hashing, out)?,
        };
        io::copy(&mut hashing, &mut io::sink())?;
        let (actual, _) = hashing.finish();
        if actual != described.sha256 {
            return Err(Invalid::Checksum {
                name: name.to_owned(),
                expected: described.sha256,
                actual,
            }
            .into());
        }
        Ok(written)
    }

    pub fn signer(&self) -> &VerifiedSigner {
        &self.state.signer
    }
}

/// Opens, authenticates and fully verifies a bundle.
pub fn verify(
    path: &Path,
    trust: &TrustedSigners,
    policy: &Policy,
    progress: &dyn Progress,
) -> Result<Bundle<Verified>, Error> {
    Bundle::open(path)?
        .authenticate(trust, policy, progress)?
        .verify_payload(progress)
}

fn compare(line: u64, entry: &Entry, tar: &TarEntry) -> Result<(), Error> {
    let mismatch = |field: &'static str, index: String, tar: String| -> Result<(), Error> {
        Err(Invalid::EntryMismatch {
            line,
            path: entry.path.to_string(),
            field,
            index,
            tar,
        }
        .into())
    };
    if entry.path != tar.path {
        return mismatch("path", entry.path.to_string(), tar.path.to_string());
    }
    let tar_type = match &tar.kind {
        TarKind::Dir => "dir",
        TarKind::File { .. } => "file",
        TarKind::Symlink { .. } => "symlink",
        TarKind::Hardlink { .. } => "hardlink",
    };
    if entry.type_name() != tar_type {
        return mismatch("type", entry.type_name().into(), tar_type.into());
    }
    let Some(meta) = entry.meta() else {
        return Ok(());
    };
    let name = |n: &Option<String>| n.clone().unwrap_or_default().into_bytes();
    let checks: [(&'static str, bool, String, String); 6] = [
        (
            "mode",
            meta.mode == tar.mode,
            format!("{:o}", meta.mode),
            format!("{:o}", tar.mode),
        ),
        (
            "uid",
            meta.uid == tar.uid,
            meta.uid.to_string(),
            tar.uid.to_string(),
        ),
        (
            "gid",
            meta.gid == tar.gid,
            meta.gid.to_string(),
            tar.gid.to_string(),
        ),
        (
            "mtime",
            meta.mtime == tar.mtime,
            meta.mtime.to_string(),
            tar.mtime.to_string(),
        ),
        (
            "owner",
            name(&meta.owner) == tar.owner,
            format!("{:?}", meta.owner),
            tar.owner.escape_ascii().to_string(),
        ),
        (
            "group",
            name(&meta.group) == tar.group,
            format!("{:?}", meta.group),
            tar.group.escape_ascii().to_string(),
        ),
    ];
    for (field, same, index, in_tar) in checks {
        if !same {
            return mismatch(field, index, in_tar);
        }
    }
    let index_xattrs: Vec<(&str, &[u8])> = meta
        .xattrs
        .iter()
        .map(|x| (x.name.as_str(), x.value.as_slice()))
        .collect();
    let tar_xattrs: Vec<(&str, &[u8])> = tar
        .xattrs
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_slice()))
        .collect();
    if index_xattrs != tar_xattrs {
        let names =
            |list: &[(&str, &[u8])]| list.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(",");
        return mismatch("xattrs", names(&index_xattrs), names(&tar_xattrs));
    }
    match (&entry.kind, &tar.kind) {
        (
            EntryKind::File { size, extents, .. },
            TarKind::File {
                size: tar_size,
                extents: tar_extents,
            },
        ) => {
            if size != tar_size {
                return mismatch("size", size.to_string(), tar_size.to_string());
            }
            if extents != tar_extents {
                return mismatch(
                    "sparse map",
                    format!("{extents:?}"),
                    format!("{tar_extents:?}"),
                );
            }
        }
        (EntryKind::Symlink { target, .. }, TarKind::Symlink { target: t }) if target != t => {
            return mismatch(
                "target",
                target.escape_ascii().to_string(),
                t.escape_ascii().to_string(),
            );
        }
        (EntryKind::Hardlink { target, .. }, TarKind::Hardlink { target: t })
            if target.as_bytes() != t.as_slice() =>
        {
            return mismatch("target", target.to_string(), t.escape_ascii().to_string());
        }
        _ => {}
    }
    Ok(())
}

/// The order rule of the index (docs/bundle-format.md §5): depth first, each directory
/// right before its content, siblings in strictly increasing byte order of their names.
/// It makes duplicates and orphans detectable with memory proportional to the depth only.
#[derive(Debug, Default)]
struct TreeOrder {
    /// Open directories from the root down, each with the name of its last child so far.
    /// The root is the implicit bottom, with `None` as its path.
    open: Vec<(EntryPath, Option<Vec<u8>>)>,
    root_last: Option<Vec<u8>>,
}

impl TreeOrder {
    fn place(&mut self, line: u64, entry: &Entry) -> Result<(), Error> {
        let parent = entry.path.parent();
        // Close the directories this entry is not in.
        while self.open.last().map(|(dir, _)| dir) != parent.as_ref() {
            if self.open.pop().is_none() {
                // The parent is not an open directory: missing, not a directory, or closed.
                return Err(Invalid::Orphan {
                    line,
                    path: entry.path.to_string(),
                }
                .into());
            }
        }
        let last = match self.open.last_mut() {
            Some((_, last)) => last,
            None => &mut self.root_last,
        };
        let name = entry.path.file_name();
        match last.as_deref() {
            Some(previous) if previous == name => {
                return Err(Invalid::Duplicate {
                    line,
                    path: entry.path.to_string(),
                }
                .into())
            }
            Some(previous) if previous > name => {
                return Err(Invalid::Order {
                    line,
                    path: entry.path.to_string(),
                }
                .into())
            }
            _ => *last = Some(name.to_vec()),
        }
        if matches!(entry.kind, EntryKind::Dir { .. }) {
            self.open.push((entry.path.clone(), None));
        }
        Ok(())
    }
}

/// 64 bits of SHA-256 per path: a small key for the hardlink-target check. A chance
/// collision could only make a target look present; the extractor's `linkat` would then fail.
fn path_key(path: &EntryPath) -> u64 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(path.as_bytes());
    let mut key = [0u8; 8];
    key.copy_from_slice(&digest[..8]);
    u64::from_le_bytes(key)
}

fn parse_header(bytes: &[u8]) -> Result<BundleHeader, Error> {
    // The version first, leniently: a newer bundle must say "upgrade", not "malformed".
    #[derive(serde::Deserialize)]
    struct Version {
        format: String,
        format_version: u32,
    }
    let version: Version = serde_json::from_slice(bytes).map_err(Invalid::BundleJson)?;
    if version.format != layout::FORMAT || version.format_version != layout::FORMAT_VERSION {
        return Err(Invalid::UnsupportedFormat {
            format: version.format,
            version: version.format_version,
        }
        .into());
    }
    let header: BundleHeader = serde_json::from_slice(bytes).map_err(Invalid::BundleJson)?;
    let root = &header.files.root;
    if root.mode > 0o7777
        || root.mtime_nsec >= 1_000_000_000
        || crate::index::validate_xattrs(&root.xattrs).is_err()
    {
        return Err(Invalid::Inconsistent {
            reason: "files.root has a mode beyond permission bits, nanoseconds over a second, \
                     or unsorted extended attributes"
                .to_owned(),
        }
        .into());
    }
    let mut paths: Vec<&str> = header.payload.iter().map(|p| p.path.as_str()).collect();
    paths.sort_unstable();
    if let Some(pair) = paths.windows(2).find(|w| w[0] == w[1]) {
        return Err(Invalid::Inconsistent {
            reason: format!("payload {} is described twice", pair[0]),
        }
        .into());
    }
    if !is_valid_tenant(&header.tenant) {
        return Err(Invalid::Inconsistent {
            reason: format!("invalid tenant name {:?}", header.tenant),
        }
        .into());
    }
    Ok(header)
}

/// Parses a `sha256sum`-format listing of bag-level names: `<64 hex>  <name>\n` per line,
/// each name once.
fn parse_listing(bytes: &[u8], file: &'static str) -> Result<Vec<(String, Sha256Digest)>, Error> {
    let text = std::str::from_utf8(bytes).map_err(|_| Invalid::Listing {
        file,
        line: 0,
        reason: "not UTF-8".to_owned(),
    })?;
    let Some(body) = text.strip_suffix('\n').or(text.is_empty().then_some("")) else {
        return Err(Invalid::Listing {
            file,
            line: text.split('\n').count(),
            reason: "missing final newline".to_owned(),
        }
        .into());
    };
    let mut out: Vec<(String, Sha256Digest)> = Vec::new();
    // Split on LF only: `str::lines` would also accept CRLF.
    for (i, line) in body.split('\n').enumerate().filter(|_| !body.is_empty()) {
        let bad = |reason: &str| Invalid::Listing {
            file,
            line: i + 1,
            reason: reason.to_owned(),
        };
        let (hex, name) = line
            .split_once("  ")
            .ok_or_else(|| bad("expected '<sha256>  <name>'"))?;
        let digest = Sha256Digest::from_hex(hex).ok_or_else(|| bad("invalid sha256"))?;
        if name.is_empty() || name.contains('\r') || name.starts_with('/') {
            return Err(bad("invalid name").into());
        }
        if out.iter().any(|(n, _)| n == name) {
            return Err(bad(&format!("{name} is listed twice")).into());
        }
        out.push((name.to_owned(), digest));
    }
    Ok(out)
}

fn check_same_names(
    listed: &[(String, Sha256Digest)],
    present: &[&str],
    listing: &'static str,
) -> Result<(), Error> {
    if let Some(name) = present
        .iter()
        .find(|p| !listed.iter().any(|(n, _)| n == *p))
    {
        return Err(Invalid::Unlisted {
            name: (*name).to_owned(),
            listing,
        }
        .into());
    }
    if let Some((name, _)) = listed.iter().find(|(n, _)| !present.contains(&n.as_str())) {
        return Err(Invalid::Absent {
            name: name.clone(),
            listing,
        }
        .into());
    }
    Ok(())
}

fn check_bag_info(bytes: &[u8], header: &BundleHeader) -> Result<(), Error> {
    let bad = |reason: String| Error::from(Invalid::BagInfo { reason });
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8".into()))?;
    let body = text
        .strip_suffix('\n')
        .ok_or_else(|| bad("missing final newline".into()))?;
    let mut oxum = None;
    let mut identified = (false, false);
    let format = format!("{}/{}", layout::FORMAT, layout::FORMAT_VERSION);
    for line in body.split('\n') {
        let (label, value) = line
            .split_once(": ")
            .ok_or_else(|| bad(format!("malformed line {line:?}")))?;
        let must_equal = |expected: &str| {
            if value == expected {
                Ok(())
            } else {
                Err(bad(format!(
                    "{label} is {value:?}, bundle.json says {expected:?}"
                )))
            }
        };
        match label {
            "Payload-Oxum" if oxum.replace(value).is_some() => {
                return Err(bad("Payload-Oxum appears twice".into()));
            }
            "External-Identifier" => {
                must_equal(&header.tenant)?;
                identified.0 = true;
            }
            "Bundle-Id" => {
                must_equal(&header.bundle_id)?;
                identified.1 = true;
            }
            "Bundle-Format" => must_equal(&format)?,
            _ => {}
        }
    }
    if identified != (true, true) {
        return Err(bad("External-Identifier and Bundle-Id are required".into()));
    }
    let octets: u64 = header.payload.iter().map(|p| p.size).sum();
    let expected = format!("{octets}.{}", header.payload.len());
    match oxum {
        Some(value) if value == expected => Ok(()),
        Some(value) => Err(bad(format!(
            "Payload-Oxum is {value}, the payload is {expected}"
        ))),
        None => Err(bad("Payload-Oxum is missing".into())),
    }
}

fn check_policy(header: &BundleHeader, policy: &Policy) -> Result<(), Error> {
    if let Some(expected) = &policy.expected_tenant {
        if *expected != header.tenant {
            return Err(Invalid::WrongTenant {
                expected: expected.clone(),
                found: header.tenant.clone(),
            }
            .into());
        }
    }
    if header.created_at > policy.now + policy.clock_skew {
        return Err(Invalid::FromTheFuture {
            created_at: header.created_at,
            now: policy.now,
        }
        .into());
    }
    let entries = header.files.entries.saturating_add(header.files.skipped);
    if entries > policy.max_entries {
        return Err(Invalid::Limit {
            reason: format!("{entries} entries, the limit is {}", policy.max_entries),
        }
        .into());
    }
    if header.files.content_bytes > policy.max_content_bytes {
        return Err(Invalid::Limit {
            reason: format!(
                "{} bytes of file content, the limit is {}",
                header.files.content_bytes, policy.max_content_bytes
            ),
        }
        .into());
    }
    let uncompressed = header
        .payload
        .iter()
        .filter_map(|p| p.uncompressed_size)
        .fold(0u64, u64::saturating_add);
    if uncompressed > policy.max_uncompressed_bytes {
        return Err(Invalid::Limit {
            reason: format!(
                "{uncompressed} bytes uncompressed, the limit is {}",
                policy.max_uncompressed_bytes
            ),
        }
        .into());
    }
    Ok(())
}

/// A read of the bundle file itself failed (a disk error, not a property of the bundle).
#[derive(Debug, thiserror::Error)]
#[error("reading the bundle file failed: {0}")]
struct SourceReadError(io::Error);

/// The byte range of one member, read with positioned reads (the file is shared).
#[derive(Debug, Clone, Copy)]
struct Region<'f> {
    file: &'f File,
    pos: u64,
    end: u64,
}

impl Read for Region<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self
            .file
            .read_at(&mut buf[..want], self.pos)
            .map_err(|e| io::Error::new(e.kind(), SourceReadError(e)))?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                SourceReadError(io::ErrorKind::UnexpectedEof.into()),
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

fn hash_region(region: Region<'_>, progress: Option<&dyn Progress>) -> Result<Sha256Digest, Error> {
    let mut reader = HashingReader::new(region);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if let Some(p) = progress {
            p.advance(n as u64);
        }
    }
    Ok(reader.finish().0)
}

type IndexDecoder<'f> = zstd::stream::read::Decoder<'static, BufReader<HashingReader<Region<'f>>>>;

/// Reads the index line by line, decompressing it with a window cap, with a line-length
/// cap, hashing every compressed byte. Total output is bounded by the line cap times the
/// signed entry count, which `check_tree` enforces.
struct IndexLines<'f> {
    reader: BufReader<IndexDecoder<'f>>,
    line: u64,
    buf: Vec<u8>,
}

impl<'f> IndexLines<'f> {
    fn new(region: Region<'f>) -> Result<Self, Error> {
        let mut decoder = zstd::stream::read::Decoder::new(HashingReader::new(region))?;
        decoder.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
        Ok(Self {
            reader: BufReader::with_capacity(1 << 20, decoder),
            line: 0,
            buf: Vec::new(),
        })
    }

    fn next_entry(&mut self) -> Result<Option<(u64, Entry)>, Error> {
        let Some((line, bytes)) = self.next_line()? else {
            return Ok(None);
        };
        Ok(Some((line, index_entry(line, bytes)?)))
    }

    /// The next line without its newline, and its number.
    fn next_line(&mut self) -> Result<Option<(u64, &[u8])>, Error> {
        self.buf.clear();
        let n = (&mut self.reader)
            .take(MAX_INDEX_LINE as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .map_err(index_read_error)?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let line = self.line;
        if self.buf.last() != Some(&b'\n') {
            return Err(if n > MAX_INDEX_LINE {
                Invalid::IndexLineTooLong { line }
            } else {
                Invalid::Listing {
                    file: layout::FILES_INDEX,
                    line: line as usize,
                    reason: "missing final newline".to_owned(),
                }
            }
            .into());
        }
        Ok(Some((line, &self.buf[..n - 1])))
    }

    fn finish(mut self) -> Result<Sha256Digest, Error> {
        // Drain the decoder, then the compressed bytes it did not need, so that trailing
        // data is decoded (and refused) and the hash covers the whole member.
        io::copy(&mut self.reader, &mut io::sink()).map_err(index_read_error)?;
        let mut compressed = self.reader.into_inner().finish();
        io::copy(&mut compressed, &mut io::sink())?;
        Ok(compressed.into_inner().finish().0)
    }
}

/// Index line number `line` (without its newline), parsed in full.
fn index_entry(line: u64, bytes: &[u8]) -> Result<Entry, Error> {
    Entry::from_json_line(bytes).map_err(|source| Invalid::Index { line, source }.into())
}

/// A failed read of the bundle file is the machine's problem; anything else, the index's.
fn index_read_error(e: io::Error) -> Error {
    if e.get_ref()
        .is_some_and(|inner| inner.is::<SourceReadError>())
    {
        Error::Io(e)
    } else {
        Invalid::IndexDecompress(e).into()
    }
}

/// Maps a member name back to its `'static` constant for error messages.
fn static_name(name: &str) -> &'static str {
    layout::LEADING_TAG_FILES
        .iter()
        .chain(layout::TRAILING_TAG_FILES.iter())
        .chain(std::iter::once(&layout::FILES_PAYLOAD))
        .find(|n| **n == name)
        .copied()
        .unwrap_or("payload file")
}
