//! An export killed midway (fault catalogue: a killed export) leaves its temporary file,
//! or for an encrypted export its private directory with the bundle in clear, beside the
//! output; the next export into the same place removes it and says so. A temporary file
//! that a running export holds is never removed (unit tests in `leftovers.rs`). And two
//! exports of a tenant running at once take different sequence numbers.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use baluchon_tests::fixture::{baluchon_bin, noise, Keys};

struct Setup {
    dir: tempfile::TempDir,
    keys: Keys,
    tree: PathBuf,
    out_dir: PathBuf,
}

impl Setup {
    /// A tree with 64 MiB of poorly compressible content, so that an export takes a while.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        let tree = dir.path().join("tree");
        fs_err::create_dir_all(&tree).unwrap();
        fs_err::write(tree.join("data.bin"), noise(64 << 20)).unwrap();
        let out_dir = dir.path().join("out");
        fs_err::create_dir_all(&out_dir).unwrap();
        Self {
            dir,
            keys,
            tree,
            out_dir,
        }
    }

    fn export(&self, sealed: bool) -> Command {
        self.export_to(sealed, "shop.baluchon")
    }

    fn export_to(&self, sealed: bool, name: &str) -> Command {
        let mut command = Command::new(baluchon_bin());
        command
            .args(["--no-progress", "export", "--path"])
            .arg(&self.tree)
            .args(["--tenant", "shop", "--sign-key"])
            .arg(&self.keys.private)
            .arg("-o")
            .arg(self.out_dir.join(name))
            .env("BALUCHON_STATE_DIR", self.dir.path());
        if sealed {
            command.args(["--encrypt-to", &self.keys.key.public_key_line()]);
        }
        command
    }

    /// Entries of the output directory whose name starts with `prefix`.
    fn named(&self, prefix: &str) -> Vec<PathBuf> {
        fs_err::read_dir(&self.out_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .collect()
    }

    /// Starts an export and kills it (SIGKILL) once an entry named `prefix…` appears (for
    /// an encrypted export, once the bundle inside it is being written).
    fn killed_export(&self, sealed: bool, prefix: &str) -> PathBuf {
        let started = |path: &PathBuf| {
            !sealed
                || fs_err::read_dir(path).is_ok_and(|mut entries| {
                    entries.any(|e| {
                        e.is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".partial"))
                    })
                })
        };
        let mut child = self
            .export(sealed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let leftover = loop {
            if let Some(found) = self.named(prefix).into_iter().find(started) {
                break found;
            }
            assert!(
                child.try_wait().unwrap().is_none(),
                "the export ended before it could be killed"
            );
            assert!(Instant::now() < deadline, "no {prefix}… appeared");
            std::thread::sleep(Duration::from_millis(1));
        };
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            leftover.exists(),
            "the killed export left {}",
            leftover.display()
        );
        assert!(!self.out_dir.join("shop.baluchon").exists());
        // As if it had been left there a while ago.
        let then = SystemTime::now() - Duration::from_secs(600);
        fs_err::File::open(&leftover)
            .unwrap()
            .set_modified(then)
            .unwrap();
        leftover
    }
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{stderr}");
    (stdout, stderr)
}

fn assert_removed(said: &str, leftover: &Path) {
    assert!(
        said.contains(&format!("removed {}, left by", leftover.display())),
        "{said}"
    );
    assert!(!leftover.exists(), "{} is gone", leftover.display());
}

#[test]
fn the_next_export_removes_what_a_killed_export_left() {
    let setup = Setup::new();
    let leftover = setup.killed_export(false, ".shop.baluchon.");
    assert!(leftover.to_string_lossy().ends_with(".partial"));

    let (stdout, _) = ok(&setup.export(false).output().unwrap());
    assert_removed(&stdout, &leftover);
    assert_eq!(
        setup.named(".shop.baluchon."),
        Vec::<PathBuf>::new(),
        "nothing partial left"
    );
    baluchon_tests::fixture::verify(&setup.out_dir.join("shop.baluchon"), &setup.keys)
        .expect("the new bundle verifies");
}

#[test]
fn the_next_encrypted_export_removes_the_clear_bundle_a_killed_one_left() {
    let setup = Setup::new();
    let leftover = setup.killed_export(true, ".baluchon-seal.");
    assert!(leftover.is_dir());

    let (_, stderr) = ok(&setup.export(true).output().unwrap());
    assert_removed(&stderr, &leftover);
    assert_eq!(setup.named(".baluchon-seal."), Vec::<PathBuf>::new());
    assert!(setup.out_dir.join("shop.baluchon").is_file());
}

#[test]
fn exports_of_a_tenant_running_at_once_take_different_sequence_numbers() {
    let setup = Setup::new();
    let first = setup
        .export(false)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.named(".shop.baluchon.").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the first export never started writing"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let (second, _) = ok(&setup.export_to(false, "other.baluchon").output().unwrap());
    let (first, _) = ok(&first.wait_with_output().unwrap());
    assert!(first.contains("sequence 1"), "{first}");
    assert!(second.contains("sequence 2"), "{second}");
    // A failed export uses its number up: numbers only need to go up.
    let failed = setup.export_to(false, "other.baluchon").output().unwrap();
    assert_eq!(failed.status.code(), Some(1), "the output exists");
    let (third, _) = ok(&setup.export_to(false, "third.baluchon").output().unwrap());
    assert!(third.contains("sequence 4"), "{third}");
}
