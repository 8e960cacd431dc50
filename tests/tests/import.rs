//! Import of a bundle's tree: exact round trip, safe defaults, and faults that must leave the
//! destination as it was.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use baluchon_bundle::{
    Bundle, Destination, Error, ExtractError, ExtractOptions, Lack, NoProgress, Policy, Switched,
};
use baluchon_tests::fixture::{baluchon_bin, export, small_tree, Keys, SmallBundle};
use baluchon_tests::tree::{build_fidelity_tree, differences, walk, Observed};

fn import(
    bundle: &Path,
    dest: &Path,
    keys: &Keys,
    options: &ExtractOptions,
    replace: bool,
) -> Result<Switched, Error> {
    let authenticated =
        Bundle::open(bundle)?.authenticate(&keys.trust(), &Policy::default(), &NoProgress)?;
    let (_, staged) = authenticated.extract(Destination::lock(dest)?, options, &NoProgress)?;
    staged.switch(replace)
}

fn leftovers(parent: &Path) -> Vec<String> {
    fs_err::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".baluchon-staging") || n.starts_with(".baluchon-journal"))
        .collect()
}

#[test]
fn fidelity_tree_round_trips_exactly_through_import() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    build_fidelity_tree(&source, true);
    let keys = Keys::new(dir.path());
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);

    let dest = dir.path().join("dest");
    let mut options = ExtractOptions::default();
    options.keep_special_modes = true;
    options.allow_outside_symlinks = true;
    assert_eq!(
        import(&bundle, &dest, &keys, &options, false).unwrap(),
        Switched::Created
    );

    let mut expected = walk(&source);
    expected.retain(|_, o: &mut Observed| o.kind != "special");
    let imported = walk(&dest);
    // Nanoseconds too: the index carries them and the importer applies them.
    let diffs = differences(&expected, &imported, true);
    assert!(
        diffs.is_empty(),
        "differences after import:\n{}",
        diffs.join("\n")
    );
    for sparse in ["sparse-huge", "sparse-small", "sparse-many"] {
        assert!(imported[sparse.as_bytes()].sparse, "{sparse} stays sparse");
    }
    // The tree's root takes the source root's mode and times.
    let (src_root, dst_root) = (
        fs_err::metadata(&source).unwrap(),
        fs_err::metadata(&dest).unwrap(),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(src_root.mode(), dst_root.mode());
    assert_eq!(
        (src_root.mtime(), src_root.mtime_nsec()),
        (dst_root.mtime(), dst_root.mtime_nsec())
    );
    assert!(leftovers(dir.path()).is_empty());
}

/// Thousands of tiny files in each decompressed chunk, more than the extractor keeps open
/// at once, with modes the umask does and does not leave whole: all arrive exactly.
#[test]
fn many_tiny_files_round_trip_exactly() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    for d in 0..2 {
        let sub = source.join(format!("d{d}"));
        fs_err::create_dir_all(&sub).unwrap();
        for i in 0..2000 {
            let file = sub.join(format!("f{i:04}"));
            fs_err::write(&file, format!("{d}/{i}\n")).unwrap();
            let mode = [0o644, 0o664, 0o600, 0o755][i % 4];
            fs_err::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let keys = Keys::new(dir.path());
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);

    let dest = dir.path().join("dest");
    import(&bundle, &dest, &keys, &ExtractOptions::default(), false).unwrap();
    let (expected, imported) = (walk(&source), walk(&dest));
    assert_eq!(imported.len(), 2 + 4000);
    let diffs = differences(&expected, &imported, true);
    assert!(
        diffs.is_empty(),
        "differences after import:\n{}",
        diffs.join("\n")
    );
}

#[test]
fn defaults_drop_special_modes_and_refuse_outside_symlinks() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("source");
    build_fidelity_tree(&source, false);
    let keys = Keys::new(dir.path());
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);
    let dest = dir.path().join("dest");

    let refused = import(&bundle, &dest, &keys, &ExtractOptions::default(), false);
    assert!(
        matches!(refused, Err(Error::Extract(ExtractError::OutsideSymlink { ref path, .. })) if path == "link-absolute"),
        "{refused:?}"
    );
    assert!(!dest.exists());
    assert!(
        leftovers(dir.path()).is_empty(),
        "staging removed after the refusal"
    );

    let mut options = ExtractOptions::default();
    options.allow_outside_symlinks = true;
    import(&bundle, &dest, &keys, &options, false).unwrap();
    let mode = |p: &str| {
        use std::os::unix::fs::PermissionsExt;
        fs_err::symlink_metadata(dest.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode("modes/setuid"), 0o755);
    assert_eq!(mode("modes/setgid"), 0o755);
    assert_eq!(
        mode("modes/sticky-dir"),
        0o1775,
        "sticky kept, world-writable dropped"
    );
    assert_eq!(mode("modes/private"), 0o600);
}

#[test]
fn replace_keeps_the_previous_tree_until_confirmed_or_rolled_back() {
    let SmallBundle { dir, keys, bundle } = SmallBundle::create();
    let dest = dir.path().join("dest");
    fs_err::create_dir(&dest).unwrap();
    fs_err::write(dest.join("old.txt"), "old").unwrap();

    let refused = import(&bundle, &dest, &keys, &ExtractOptions::default(), false);
    assert!(
        matches!(refused, Err(Error::Extract(ExtractError::Exists { .. }))),
        "{refused:?}"
    );
    assert_eq!(fs_err::read_to_string(dest.join("old.txt")).unwrap(), "old");

    let switched = import(&bundle, &dest, &keys, &ExtractOptions::default(), true).unwrap();
    let Switched::Replaced { previous } = switched else {
        panic!("expected a replacement")
    };
    assert!(dest.join("site/index.html").is_file());
    assert!(!dest.join("old.txt").exists());
    assert_eq!(
        fs_err::read_to_string(previous.join("old.txt")).unwrap(),
        "old"
    );

    // A second replacement waits for the first to be confirmed or rolled back.
    let again = import(&bundle, &dest, &keys, &ExtractOptions::default(), true);
    assert!(
        matches!(
            again,
            Err(Error::Extract(ExtractError::PreviousKept { .. }))
        ),
        "{again:?}"
    );

    Destination::lock(&dest).unwrap().roll_back().unwrap();
    assert_eq!(fs_err::read_to_string(dest.join("old.txt")).unwrap(), "old");
    assert!(!previous.exists());
    assert!(leftovers(dir.path()).is_empty());
}

#[test]
fn dry_run_lists_changes_and_touches_nothing() {
    let SmallBundle { dir, keys, bundle } = SmallBundle::create();
    let dest = dir.path().join("dest");
    fs_err::create_dir_all(dest.join("site")).unwrap();
    fs_err::write(dest.join("site/index.html"), "old").unwrap();
    fs_err::write(dest.join("stale.txt"), "stale").unwrap();
    let before = walk(&dest);
    let parent_before: Vec<_> = fs_err::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    let out = Command::new(baluchon_bin())
        .args(["import", "--dry-run", "--json", "--signer"])
        .arg(&keys.allowed_signers)
        .arg("--path")
        .arg(&dest)
        .arg(&bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let list = |k: &str| -> Vec<String> {
        plan[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(list("remove"), vec!["stale.txt"]);
    assert_eq!(list("replace"), vec!["site", "site/index.html"]);
    assert!(list("create").contains(&"site/img/logo.bin".to_owned()));
    assert_eq!(walk(&dest), before, "the destination is unchanged");
    let parent_after: Vec<_> = fs_err::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        parent_before, parent_after,
        "no lock, staging or journal file created"
    );
}

/// Mounts a filesystem (`mount` arguments before the mount point) under `dir`, and makes a
/// live tree `dest` on it; returns the mount point and `dest`.
fn live_tree_on_a_new_mount(
    dir: &Path,
    mount_args: &[&str],
) -> (std::path::PathBuf, std::path::PathBuf) {
    let mount = dir.join("mnt");
    fs_err::create_dir(&mount).unwrap();
    baluchon_tests::fixture::mount(mount_args, &mount);
    let dest = mount.join("dest");
    fs_err::create_dir(&dest).unwrap();
    fs_err::write(dest.join("live.txt"), "live").unwrap();
    (mount, dest)
}

/// A tmpfs too small for the tree: the extraction fails with ENOSPC, the live tree is as it
/// was, and no staging directory is left.
#[test]
fn disk_full_during_staging_leaves_the_destination_unchanged() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let source = dir.path().join("source");
    small_tree(&source);
    fs_err::write(source.join("big.bin"), vec![7u8; 3 << 20]).unwrap();
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);

    let (mount, dest) =
        live_tree_on_a_new_mount(dir.path(), &["-t", "tmpfs", "-o", "size=1m", "tmpfs"]);
    let before = walk(&dest);
    let result = import(&bundle, &dest, &keys, &ExtractOptions::default(), true);
    let after = walk(&dest);
    let left = leftovers(&mount);
    let _ = Command::new("umount").arg(&mount).status();
    let err = result.expect_err("a full disk fails the import");
    assert!(
        format!("{err:#?}").contains("StorageFull") || err.to_string().contains("No space left"),
        "{err:?}"
    );
    assert_eq!(before, after, "the live tree is unchanged");
    assert!(left.is_empty(), "staging left behind: {left:?}");
}

/// A ramfs keeps no extended attributes (it has links and owners): a tree with some is
/// refused before any entry is written, naming what is missing and nothing else; with
/// `drop_xattrs` it is installed without them, and the report counts them.
#[test]
fn a_filesystem_without_xattrs_is_refused_up_front_unless_they_are_dropped() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: mounting a ramfs needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let source = dir.path().join("source");
    small_tree(&source);
    for path in [source.join("notes.txt"), source.clone()] {
        rustix::fs::setxattr(
            path,
            "user.origin",
            b"old-host",
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
    }
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);

    let (mount, dest) = live_tree_on_a_new_mount(dir.path(), &["-t", "ramfs", "ramfs"]);
    let before = walk(&dest);
    let refused = import(&bundle, &dest, &keys, &ExtractOptions::default(), true);
    let after_refusal = walk(&dest);
    let left = leftovers(&mount);

    let mut options = ExtractOptions::default();
    options.drop_xattrs = true;
    let authenticated = Bundle::open(&bundle)
        .and_then(|b| b.authenticate(&keys.trust(), &Policy::default(), &NoProgress));
    let dropped = authenticated.and_then(|a| {
        let (_, staged) = a.extract(Destination::lock(&dest)?, &options, &NoProgress)?;
        let report = staged.report().clone();
        staged.switch(true)?;
        Ok(report)
    });
    let installed = walk(&dest);
    let _ = Command::new("umount").arg(&mount).status();

    match refused {
        Err(Error::Extract(ExtractError::FilesystemLacks { dir, lacking })) => {
            assert_eq!(dir, mount);
            // The tree's root, and notes.txt and its hard link notes-link.txt (both names
            // carry the inode's).
            assert_eq!(lacking, vec![Lack::UserXattrs { entries: 3 }]);
        }
        other => panic!("expected the filesystem to be refused, got {other:?}"),
    }
    assert_eq!(before, after_refusal, "the live tree is unchanged");
    assert!(left.is_empty(), "staging left behind: {left:?}");

    let report = dropped.expect("the import without xattrs succeeds");
    assert_eq!(report.xattrs_dropped, 3);
    let mut expected = walk(&source);
    for observed in expected.values_mut() {
        observed.xattrs.clear();
    }
    assert_eq!(
        differences(&expected, &installed, true),
        Vec::<String>::new()
    );
}

/// A user namespace whose ids 0-99 are the same ids outside (root and Debian's system
/// accounts, www-data among them) and no others: a container's partial map. Commands run
/// in it as its root, which cannot give files to an id the map lacks.
struct PartialUserNamespace {
    holder: std::process::Child,
}

impl PartialUserNamespace {
    fn new() -> Self {
        let holder = Command::new("unshare")
            .args(["--user", "--", "sleep", "600"])
            .spawn()
            .unwrap();
        let ns = |pid: &str| fs_err::read_link(format!("/proc/{pid}/ns/user")).unwrap();
        let pid = holder.id().to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ns(&pid) == ns("self") {
            assert!(Instant::now() < deadline, "unshare made no user namespace");
            std::thread::sleep(Duration::from_millis(10));
        }
        for map in ["uid_map", "gid_map"] {
            fs_err::write(format!("/proc/{pid}/{map}"), "0 0 100\n").unwrap();
        }
        Self { holder }
    }

    fn baluchon(&self) -> Command {
        let mut command = Command::new("nsenter");
        command
            .args(["--user", "--target", &self.holder.id().to_string(), "--"])
            .arg(baluchon_bin());
        command
    }
}

impl Drop for PartialUserNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// Root in a user namespace that maps www-data but not nobody (a container) cannot give
/// files to nobody: the import says so, naming only the owners refused, before writing
/// anything; `--map-owner` gives those entries to an owner the namespace has.
#[test]
fn root_that_cannot_give_files_to_some_owners_is_told_before_anything_is_written() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: giving the source's files to other owners needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let source = dir.path().join("source");
    small_tree(&source);
    for (owner, path) in [
        ("www-data:www-data", "site"),
        ("nobody:nogroup", "notes.txt"),
    ] {
        let given = Command::new("chown")
            .args(["-R", owner])
            .arg(source.join(path))
            .status()
            .unwrap();
        assert!(given.success());
    }
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);
    let dest = dir.path().join("dest");
    let namespace = PartialUserNamespace::new();
    let import = |extra: &[&str]| {
        namespace
            .baluchon()
            .args(["--no-progress", "import"])
            .arg(&bundle)
            .arg("--path")
            .arg(&dest)
            .arg("--signer")
            .arg(&keys.allowed_signers)
            .args(extra)
            .output()
            .unwrap()
    };

    let refused = import(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("it refused giving files to nobody, nogroup, even as root"),
        "{stderr}"
    );
    assert!(stderr.contains("--map-owner NAME=OTHER"), "{stderr}");
    assert!(!dest.exists());
    assert!(leftovers(dir.path()).is_empty());

    let mapped = import(&[
        "--map-owner",
        "nobody=www-data",
        "--map-owner",
        "nogroup=www-data",
    ]);
    assert!(
        mapped.status.success(),
        "{}",
        String::from_utf8_lossy(&mapped.stderr)
    );
    use std::os::unix::fs::MetadataExt;
    for path in ["site/index.html", "notes.txt"] {
        let meta = fs_err::metadata(dest.join(path)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (33, 33), "{path}");
    }
    assert_eq!(
        fs_err::read_to_string(dest.join("site/index.html")).unwrap(),
        "<h1>hello</h1>\n"
    );
}

/// SIGKILL in the middle of the extraction: the live tree is untouched, the staging directory
/// is the only leftover, and the next run removes it and succeeds.
#[test]
fn import_killed_mid_extraction_is_cleaned_up_by_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let source = dir.path().join("source");
    fs_err::create_dir(&source).unwrap();
    // Enough files that extraction takes a while.
    for i in 0..3000 {
        fs_err::write(source.join(format!("f{i:05}")), vec![i as u8; 64 * 1024]).unwrap();
    }
    let bundle = dir.path().join("b.baluchon");
    export(&source, &bundle, &keys);
    let dest = dir.path().join("dest");
    fs_err::create_dir(&dest).unwrap();
    fs_err::write(dest.join("live.txt"), "live").unwrap();
    let before = walk(&dest);

    let run = || {
        Command::new(baluchon_bin())
            .args(["import", "--replace", "--no-progress", "--signer"])
            .arg(&keys.allowed_signers)
            .arg("--path")
            .arg(&dest)
            .arg(&bundle)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = run();
    // Kill once the staging directory holds some files.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut killed_mid_way = false;
    while Instant::now() < deadline {
        let staging = leftovers(dir.path());
        if let Some(name) = staging.first() {
            let count = fs_err::read_dir(dir.path().join(name))
                .map(|d| d.count())
                .unwrap_or(0);
            if count > 50 {
                child.kill().unwrap();
                killed_mid_way = true;
                break;
            }
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.wait().unwrap();
    assert!(
        killed_mid_way,
        "the import finished before it could be killed"
    );
    assert_eq!(walk(&dest), before, "the live tree is untouched");
    assert_eq!(
        leftovers(dir.path()).len(),
        1,
        "only the staging directory is left"
    );

    let status = run().wait().unwrap();
    assert!(status.success());
    assert!(
        leftovers(dir.path()).is_empty(),
        "the next run removed the stale staging"
    );
    assert_eq!(
        fs_err::read(dest.join("f00007")).unwrap(),
        vec![7u8; 64 * 1024]
    );
    assert!(!dest.join("live.txt").exists());
}

/// A run killed during the switch leaves a journal naming the staging directory and its
/// inode. If the destination has that inode, the exchange happened: the next run keeps the
/// old tree as the previous one. Otherwise nothing was switched: the staging is dropped.
#[test]
fn journal_left_by_a_killed_switch_is_recovered() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path();
    let dest = parent.join("site");
    let staging_name = ".baluchon-staging.site.0123456789abcdef0123456789abcdef";
    let journal = parent.join(".baluchon-journal.site");

    // Killed after the exchange: dest is the new tree, the staging name holds the old one.
    fs_err::create_dir(&dest).unwrap();
    fs_err::write(dest.join("new.txt"), "new").unwrap();
    fs_err::create_dir(parent.join(staging_name)).unwrap();
    fs_err::write(parent.join(staging_name).join("old.txt"), "old").unwrap();
    let inode = fs_err::metadata(&dest).unwrap().ino();
    fs_err::write(&journal, format!("{staging_name}\n{inode}\n")).unwrap();
    let locked = Destination::lock(&dest).unwrap();
    assert_eq!(fs_err::read_to_string(dest.join("new.txt")).unwrap(), "new");
    let previous = locked.previous_path();
    assert_eq!(
        fs_err::read_to_string(previous.join("old.txt")).unwrap(),
        "old"
    );
    assert!(!journal.exists());
    assert!(leftovers(parent).is_empty());
    // And the operator can still roll back to it.
    locked.roll_back().unwrap();
    assert_eq!(fs_err::read_to_string(dest.join("old.txt")).unwrap(), "old");

    // Killed before the exchange: the staging holds the new tree, dest is untouched.
    fs_err::create_dir(parent.join(staging_name)).unwrap();
    fs_err::write(parent.join(staging_name).join("new.txt"), "new").unwrap();
    let staging_inode = fs_err::metadata(parent.join(staging_name)).unwrap().ino();
    fs_err::write(&journal, format!("{staging_name}\n{staging_inode}\n")).unwrap();
    let locked = Destination::lock(&dest).unwrap();
    assert_eq!(fs_err::read_to_string(dest.join("old.txt")).unwrap(), "old");
    assert!(!locked.previous_path().exists());
    assert!(!journal.exists());
    assert!(
        leftovers(parent).is_empty(),
        "the unswitched staging is dropped"
    );
}
