//! A tree that changes while it is exported (catalogue H2 and H3, fault 8): each change is
//! made from the progress callback once the first 4 MiB of a 12 MiB file are read, so what
//! the bundle must hold is known exactly. A file that changed is archived, recorded in its
//! index line and in the report, and the bundle still verifies; an entry replaced by a link
//! fails the export and leaves no bundle.

use std::io::Write as _;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use baluchon_bundle::{
    export_tree, BundleWriter, Change, EntryKind, EntryPath, Error, ExportError, ExportOptions,
    ExportReport, NoProgress, Progress, Select, Selection,
};
use baluchon_tests::fixture::Keys;

const MIB: usize = 1 << 20;
const BIG: usize = 12 * MIB;

type Action = Box<dyn FnOnce() + Send>;

/// Runs `action` once `after` bytes of file content have been archived.
struct ChangeAt {
    after: u64,
    done: AtomicU64,
    action: Mutex<Option<Action>>,
}

impl Progress for ChangeAt {
    fn advance(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::SeqCst) + bytes;
        if done >= self.after {
            if let Some(action) = self.action.lock().unwrap().take() {
                action();
            }
        }
    }
}

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    tree: PathBuf,
    /// `tree/a-big`'s content as written.
    big: Vec<u8>,
}

impl Setup {
    /// `tree/a-big` (12 MiB, walked first), `tree/b/` with a file, and `tree/c`.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(tree.join("b")).unwrap();
        let big: Vec<u8> = (0..BIG)
            .map(|i| (i % 251) as u8 ^ (i >> 12) as u8)
            .collect();
        fs_err::write(tree.join("a-big"), &big).unwrap();
        // A past time, so that a write during the export shows in the times.
        let past = filetime_of(1_700_000_000);
        fs_err::File::options()
            .write(true)
            .open(tree.join("a-big"))
            .unwrap()
            .set_times(past)
            .unwrap();
        fs_err::write(tree.join("b/inside"), b"inside b\n").unwrap();
        fs_err::write(tree.join("c"), b"the last file\n").unwrap();
        Self {
            dir,
            keys,
            tree,
            big,
        }
    }

    fn output(&self) -> PathBuf {
        self.dir.path().join("out.baluchon")
    }

    /// Exports the tree, running `action` once the first 4 MiB of `a-big` are read.
    fn export_changing(
        &self,
        action: impl FnOnce() + Send + 'static,
    ) -> Result<ExportReport, Error> {
        let progress = ChangeAt {
            after: 4 * MIB as u64,
            done: AtomicU64::new(0),
            action: Mutex::new(Some(Box::new(action))),
        };
        let options = ExportOptions::new(self.tree.clone(), "changing".to_owned(), self.output());
        let report = export_tree(&options, &self.keys.key, &progress);
        assert!(
            progress.action.lock().unwrap().is_none(),
            "the change was made during the export"
        );
        report
    }

    /// `a-big` as the bundle holds it, read with stock tar and zstd.
    fn archived_big(&self) -> Vec<u8> {
        let out = Command::new("bash")
            .arg("-c")
            .arg("set -o pipefail; tar -xOf \"$1\" data/files.tar.zst | zstd -dcq | tar -xOf - a-big")
            .arg("bash")
            .arg(self.output())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// The export went through, recorded `change` for `a-big` (report and index), and the
    /// bundle verifies.
    fn assert_recorded(&self, report: &ExportReport, change: Change) {
        assert_eq!(report.header.files.changed, 1);
        assert_eq!(report.changed.len(), 1);
        assert_eq!(report.changed[0].0.as_bytes(), b"a-big");
        assert_eq!(report.changed[0].1, change);
        let index = baluchon_tests::index_of(&self.output());
        let entry = index
            .iter()
            .find(|e| e.path.as_bytes() == b"a-big")
            .unwrap();
        assert!(
            matches!(entry.kind, EntryKind::File { size, changed: Some(c), .. } if size == BIG as u64 && c == change),
            "{:?}",
            entry.kind
        );
        assert_eq!(index.len(), 4, "a-big, b, b/inside and c: {index:?}");
        baluchon_tests::fixture::verify(&self.output(), &self.keys).expect("the bundle verifies");
    }
}

fn filetime_of(secs: u64) -> std::fs::FileTimes {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    std::fs::FileTimes::new().set_accessed(at).set_modified(at)
}

#[test]
fn a_file_that_grows_while_read_keeps_its_listed_size_and_is_recorded() {
    let setup = Setup::new();
    let big = setup.tree.join("a-big");
    let report = setup
        .export_changing(move || {
            let mut file = fs_err::File::options().append(true).open(&big).unwrap();
            file.write_all(&vec![0xAA; MIB]).unwrap();
        })
        .unwrap();
    setup.assert_recorded(&report, Change::Grew);
    assert!(
        setup.archived_big() == setup.big,
        "the first 12 MiB, as listed"
    );
}

#[test]
fn a_file_that_shrinks_while_read_is_padded_with_zeros_and_recorded() {
    let setup = Setup::new();
    let big = setup.tree.join("a-big");
    let report = setup
        .export_changing(move || {
            fs_err::File::options()
                .write(true)
                .open(&big)
                .unwrap()
                .set_len(2 * MIB as u64)
                .unwrap();
        })
        .unwrap();
    setup.assert_recorded(&report, Change::Shrank);
    let archived = setup.archived_big();
    assert_eq!(archived.len(), BIG, "the size the header announced");
    // What was read before the cut (at least the first 4 MiB: reads may be shorter than a
    // frame), then zeros.
    let cut = archived
        .iter()
        .zip(&setup.big)
        .position(|(a, b)| a != b)
        .unwrap_or(BIG);
    assert!((4 * MIB..BIG).contains(&cut), "cut at {cut}");
    assert!(
        archived[cut..].iter().all(|&b| b == 0),
        "zeros past the cut"
    );
}

#[test]
fn a_file_rewritten_in_place_while_read_is_recorded_as_modified() {
    let setup = Setup::new();
    let big = setup.tree.join("a-big");
    let report = setup
        .export_changing(move || {
            // Bytes already read: the bundle keeps what was read, the times tell.
            fs_err::OpenOptions::new()
                .write(true)
                .open(&big)
                .unwrap()
                .write_all(b"rewritten")
                .unwrap();
        })
        .unwrap();
    setup.assert_recorded(&report, Change::Modified);
    assert!(setup.archived_big() == setup.big);
}

/// The export of a tree where `name` is moved away while `a-big` is read, and a link to
/// /etc put in its place when `link`: it fails naming `name`.
fn changed_after_listing(name: &'static str, link: bool) {
    let setup = Setup::new();
    let tree = setup.tree.clone();
    let result = setup.export_changing(move || {
        fs_err::rename(tree.join(name), tree.join(format!("{name}-moved"))).unwrap();
        if link {
            symlink("/etc", tree.join(name)).unwrap();
        }
    });
    match result {
        Err(Error::Export(ExportError::Replaced { path })) if link => assert_eq!(path, name),
        Err(Error::Export(ExportError::Vanished { path })) if !link => assert_eq!(path, name),
        other => panic!("{name}: got {other:?}"),
    }
    assert!(!setup.output().exists(), "no bundle");
    let left: Vec<_> = fs_err::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("out.baluchon"))
        .collect();
    assert!(left.is_empty(), "nothing partial left: {left:?}");
}

#[test]
fn a_directory_replaced_by_a_link_while_exporting_fails_the_export() {
    changed_after_listing("b", true);
}

#[test]
fn a_file_replaced_by_a_link_while_exporting_fails_the_export() {
    changed_after_listing("c", true);
}

#[test]
fn a_directory_or_file_removed_while_exporting_fails_the_export() {
    changed_after_listing("b", false);
    changed_after_listing("c", false);
}

/// Archives every entry, with `conf/db.env`'s content replaced (a config file with its
/// secrets left out, as an app export does).
struct SecretsLeftOut;

impl Selection for SecretsLeftOut {
    fn select(&self, _: &EntryPath, _: bool) -> Select {
        Select::Archive
    }

    fn replacement(&self, path: &EntryPath) -> Option<Vec<u8>> {
        (path.as_bytes() == b"conf/db.env").then(|| b"PASSWORD=\n".to_vec())
    }

    fn replaced_paths(&self) -> Vec<EntryPath> {
        vec![EntryPath::new(b"conf/db.env".to_vec()).unwrap()]
    }
}

/// The directory of a file whose content is replaced is a link (swapped in after the
/// secrets were read, say): the walk would archive the link, and the file it leads to as it
/// is, secret included. The export fails instead, and leaves no bundle.
#[test]
fn a_file_to_archive_with_its_secrets_left_out_behind_a_link_fails_the_export() {
    let setup = Setup::new();
    fs_err::create_dir(setup.tree.join("real")).unwrap();
    fs_err::write(setup.tree.join("real/db.env"), b"PASSWORD=hunter2\n").unwrap();
    symlink("real", setup.tree.join("conf")).unwrap();
    let options = ExportOptions::new(setup.tree.clone(), "secrets".to_owned(), setup.output());
    let result = BundleWriter::create(&options, &setup.keys.key)
        .and_then(|writer| writer.add_tree(&SecretsLeftOut, &NoProgress))
        .and_then(BundleWriter::finish);
    match result {
        Err(Error::Export(ExportError::ReplacedThroughLink { path, link })) => {
            assert_eq!((path.as_str(), link.as_str()), ("conf/db.env", "conf"));
        }
        other => panic!("got {other:?}"),
    }
    assert!(!setup.output().exists(), "no bundle");
}
