//! Keys, exports and the `baluchon` binary, for tests.

use std::path::{Path, PathBuf};

use baluchon_bundle::{
    export_tree, Bundle, ExportOptions, ExportReport, NoProgress, Policy, Verified,
};
use baluchon_signature::{SigningKey, TrustedSigners};

/// A signing key and the allowed_signers file that trusts it.
#[derive(Debug)]
pub struct Keys {
    pub key: SigningKey,
    pub private: PathBuf,
    pub allowed_signers: PathBuf,
    pub principal: String,
}

impl Keys {
    pub fn new(dir: &Path) -> Self {
        let principal = "exports@old-host.example".to_owned();
        let key = SigningKey::generate(&principal).expect("key generation");
        let private = dir.join("signing_ed25519");
        key.write_openssh_file(&private).expect("write key");
        let allowed_signers = dir.join("allowed_signers");
        fs_err::write(
            &allowed_signers,
            format!(
                "{principal} namespaces=\"{}\" {}\n",
                baluchon_bundle::SIGNATURE_NAMESPACE,
                key.public_key_line()
            ),
        )
        .expect("write allowed_signers");
        Self {
            key,
            private,
            allowed_signers,
            principal,
        }
    }

    pub fn trust(&self) -> TrustedSigners {
        TrustedSigners::from_file(&self.allowed_signers).expect("trust file")
    }
}

/// Exports `source` as tenant `demo` into `output`.
pub fn export(source: &Path, output: &Path, keys: &Keys) -> ExportReport {
    let options = ExportOptions::new(source.to_owned(), "demo".to_owned(), output.to_owned());
    export_tree(&options, &keys.key, &NoProgress).expect("export succeeds")
}

/// Fully verifies a bundle with the default policy.
pub fn verify(bundle: &Path, keys: &Keys) -> Result<Bundle<Verified>, baluchon_bundle::Error> {
    baluchon_bundle::verify(bundle, &keys.trust(), &Policy::default(), &NoProgress)
}

/// The `baluchon` binary, built from the current sources on first use: `cargo test` builds
/// binaries only for their own package's tests, so it would otherwise be stale or missing.
pub fn baluchon_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> → target/<profile>
            let profile_dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("target/<profile>/deps");
            let mut build = std::process::Command::new(env!("CARGO"));
            build.args([
                "build",
                "--quiet",
                "-p",
                "baluchon-cli",
                "--bin",
                "baluchon",
            ]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.status().expect("cargo runs");
            assert!(status.success(), "building the baluchon binary failed");
            let bin = profile_dir.join("baluchon");
            assert!(bin.exists(), "{} is missing after the build", bin.display());
            bin
        })
        .clone()
}

/// A small tree with a few files, a directory, a symlink and a hardlink.
pub fn small_tree(root: &Path) {
    fs_err::create_dir_all(root.join("site/img")).expect("mkdir");
    fs_err::write(root.join("site/index.html"), "<h1>hello</h1>\n").expect("write");
    fs_err::write(root.join("site/img/logo.bin"), [0u8, 1, 2, 3, 255]).expect("write");
    fs_err::write(root.join("notes.txt"), "x".repeat(3000)).expect("write");
    fs_err::os::unix::fs::symlink("site/index.html", root.join("home")).expect("symlink");
    fs_err::hard_link(root.join("notes.txt"), root.join("notes-link.txt")).expect("link");
}

/// A fresh temporary directory holding a signing key and a bundle of [`small_tree`].
#[derive(Debug)]
pub struct SmallBundle {
    pub dir: tempfile::TempDir,
    pub keys: Keys,
    pub bundle: PathBuf,
}

impl SmallBundle {
    /// Builds the tree, generates the key and exports the bundle.
    pub fn create() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let source = dir.path().join("tree");
        small_tree(&source);
        let keys = Keys::new(dir.path());
        let bundle = dir.path().join("small.baluchon");
        export(&source, &bundle, &keys);
        Self { dir, keys, bundle }
    }
}

/// The shell block that follows `<!-- runnable: NAME -->` in the docs/ file `doc`: what
/// the docs promise to work is run as written.
pub fn runnable_block(doc: &str, name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(doc);
    let text = fs_err::read_to_string(&path).expect("read the doc");
    let marker = format!("<!-- runnable: {name} -->");
    let after = text
        .split_once(&marker)
        .unwrap_or_else(|| panic!("{} has no {marker}", path.display()))
        .1;
    let start = after
        .find("```")
        .expect("a fenced block follows the marker");
    let body = &after[start..];
    let body = &body[body.find('\n').expect("a fence line") + 1..];
    body[..body.find("```").expect("closing fence")].to_owned()
}

/// `len` incompressible bytes (xorshift), the same on every run.
pub fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// Makes a FIFO at `path`: an entry no bundle can archive, which an export must report.
pub fn fifo(path: &Path) {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o600),
        0,
    )
    .expect("mkfifo");
}

/// Mounts a filesystem at `at`: `args` are `mount`'s arguments before the mount point
/// (`-t tmpfs -o size=1m NAME`, say). Needs root.
pub fn mount(args: &[&str], at: &Path) {
    let mounted = std::process::Command::new("mount")
        .args(args)
        .arg(at)
        .status()
        .expect("mount runs");
    assert!(
        mounted.success(),
        "mount {args:?} {} (needs root)",
        at.display()
    );
}
