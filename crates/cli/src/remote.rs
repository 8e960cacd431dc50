//! `baluchon import BUNDLE --to ssh://…` and `baluchon export --from ssh://…`: baluchon runs
//! on the other host (uploaded into a private directory there if that host lacks this
//! version); bundles travel over the same connection, checked by sha256 at both ends.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use baluchon_transport::{shell_quote, ConnectOptions, Connection, SshTarget};
use clap::Args;

/// How to reach and trust the other host.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// known_hosts file to check the host key against
    #[arg(long, value_name = "FILE")]
    known_hosts: Option<PathBuf>,
    /// Accept the host's key as `SHA256:…` (as `ssh-keygen -lf` prints it) instead of
    /// consulting known_hosts (can be repeated)
    #[arg(long, value_name = "FINGERPRINT")]
    host_key: Vec<String>,
    /// Trust an unknown host key on first contact and record it in known_hosts
    #[arg(long)]
    accept_new_host_key: bool,
    /// Private key to log in with (passphrase from BALUCHON_SSH_KEY_PASSPHRASE); the SSH
    /// agent is used without it
    #[arg(long, value_name = "FILE")]
    identity: Option<PathBuf>,
}

impl SshArgs {
    pub fn connect(&self, url: &str) -> anyhow::Result<Connection> {
        let target: SshTarget = url.parse()?;
        let known_hosts = match &self.known_hosts {
            Some(path) => path.clone(),
            None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
                .join(".ssh/known_hosts"),
        };
        let mut options = ConnectOptions::new(known_hosts);
        options.accept_new_host_key = self.accept_new_host_key;
        options.pinned.clone_from(&self.host_key);
        options.identity.clone_from(&self.identity);
        options.passphrase = std::env::var("BALUCHON_SSH_KEY_PASSPHRASE").ok();
        Ok(Connection::open(&target, &options)?)
    }
}

/// A baluchon the other host can run: its own if it is this version, else this binary,
/// uploaded and checked by sha256, if the architectures match.
fn remote_baluchon(conn: &Connection, dir: &str) -> anyhow::Result<String> {
    let ours = format!("baluchon {}", env!("CARGO_PKG_VERSION"));
    if let Ok(theirs) = conn.output("baluchon --version 2>/dev/null") {
        if theirs == ours {
            return Ok("baluchon".to_owned());
        }
    }
    let arch = conn.output("uname -m")?;
    anyhow::ensure!(
        arch == std::env::consts::ARCH,
        "{} runs on {arch}, and this baluchon is built for {}: install baluchon {} there",
        conn.target(),
        std::env::consts::ARCH,
        env!("CARGO_PKG_VERSION")
    );
    let path = format!("{dir}/baluchon");
    let me = std::env::current_exe().context("cannot find this program's own file")?;
    conn.upload(&me, &path)?;
    conn.output(&format!("chmod 700 {}", shell_quote(&path)))?;
    Ok(path)
}

pub fn import(
    url: &str,
    ssh: &SshArgs,
    bundle: &Path,
    signer: &Path,
    extra: &[String],
) -> anyhow::Result<()> {
    let conn = ssh.connect(url)?;
    // A directory named after the bundle's digest: an interrupted upload resumes into it.
    let digest = baluchon_transport::sha256_prefix(bundle, u64::MAX)?;
    let dir = conn.output(&format!(
        "d=\"$HOME/.cache/baluchon/uploads/{}\" && mkdir -p -m 700 \"$d\" && chmod 700 \"$d\" && cd \"$d\" && pwd -P",
        &digest[..32]
    ))?;
    let bin = remote_baluchon(&conn, &dir)?;
    let remote_bundle = format!("{dir}/bundle.baluchon");
    let sent = conn.upload(bundle, &remote_bundle)?;
    if sent.resumed_from > 0 {
        eprintln!(
            "resumed the upload of {} at byte {}",
            bundle.display(),
            sent.resumed_from
        );
    }
    let remote_signer = format!("{dir}/allowed_signers");
    conn.upload(signer, &remote_signer)?;
    let mut command = format!(
        "{} --no-progress import {} --signer {}",
        shell_quote(&bin),
        shell_quote(&remote_bundle),
        shell_quote(&remote_signer)
    );
    for arg in extra {
        command.push(' ');
        command.push_str(&shell_quote(arg));
    }
    let result = conn.run(&command, None, &mut std::io::stdout());
    // The upload is kept for a retry only when the import did not run to its end.
    if result.is_ok() {
        conn.output(&format!("rm -rf {}", shell_quote(&dir)))?;
    }
    result.with_context(|| format!("importing {} on {} failed", bundle.display(), conn.target()))
}

/// Runs `baluchon export …` on the other host into a private directory there, then brings
/// the bundle back to `output` (or, for a plan, only the report). The directory there is
/// removed whatever happens.
pub fn export(
    url: &str,
    ssh: &SshArgs,
    remote_args: &[String],
    sign_key: Option<&Path>,
    output: Option<&Path>,
) -> anyhow::Result<()> {
    if let Some(output) = output {
        anyhow::ensure!(
            fs_err::symlink_metadata(output).is_err(),
            "{} already exists; choose another output or remove it",
            output.display()
        );
    }
    let conn = ssh.connect(url)?;
    let dir = conn.output("umask 077 && mktemp -d \"${TMPDIR:-/tmp}/baluchon-export.XXXXXXXX\"")?;
    let result = (|| -> anyhow::Result<()> {
        let bin = remote_baluchon(&conn, &dir)?;
        let remote_bundle = format!("{dir}/bundle.baluchon");
        let mut command = format!("{} --no-progress", shell_quote(&bin));
        for arg in remote_args {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        if let (Some(key), Some(_)) = (sign_key, output) {
            command.push_str(&format!(
                " --sign-key {} -o {}",
                shell_quote(&key.to_string_lossy()),
                shell_quote(&remote_bundle)
            ));
        }
        // The remote export's sequence counter lives with the exporter's state, there.
        conn.run(&command, None, &mut std::io::stdout())?;
        if let Some(output) = output {
            let sha256 = conn.download(&remote_bundle, output)?;
            eprintln!("fetched {} (sha256 {sha256})", output.display());
        }
        Ok(())
    })();
    let cleaned = conn.output(&format!("rm -rf {}", shell_quote(&dir)));
    result.with_context(|| format!("exporting on {} failed", conn.target()))?;
    cleaned?;
    Ok(())
}
