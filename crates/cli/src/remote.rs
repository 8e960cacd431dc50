//! `baluchon import BUNDLE --to ssh://…`, `baluchon export --from ssh://…` and `baluchon
//! migrate --from ssh://… --to ssh://…`: baluchon runs on the other hosts (uploaded into a
//! private directory there if a host lacks this version) and reports its progress as events
//! rendered here; bundles travel over the same connections, checked by sha256 at both ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use baluchon_transport::{
    shell_quote, ConnectOptions, Connection, Download, LocalFile, RemoteFile, SshTarget,
    TransportError, UploadReport, UploadSource,
};
use clap::Args;

use crate::progress::CliProgress;

/// How to reach and trust the other host.
#[derive(Debug, Args)]
pub struct SshArgs {
    /// known_hosts file to check host keys against [default: ~/.ssh/known_hosts]
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
    /// Seconds without any progress after which a connection counts as stalled
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    ssh_timeout: u64,
    /// Keep transfers to and from other hosts under RATE bytes per second on average,
    /// each way (K, M, G: times 1024; e.g. 20M), to leave room on a shared link; for
    /// backups, uploads to S3 too
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    limit_rate: Option<u64>,
}

/// `RATE` as `--limit-rate` takes it: bytes per second, with an optional K, M or G
/// (powers of 1024, as curl's `--limit-rate`).
fn parse_rate(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.char_indices().last() {
        Some((at, c)) if c.is_ascii_alphabetic() => (&text[..at], c.to_ascii_uppercase()),
        _ => (text, 'B'),
    };
    let shift = match unit {
        'B' => 0,
        'K' => 10,
        'M' => 20,
        'G' => 30,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (K, M or G)")),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("expected a number of bytes per second, got {text:?}"))?;
    match value.checked_mul(1 << shift) {
        Some(0) | None => Err(format!("{text:?} is not a usable rate")),
        Some(rate) => Ok(rate),
    }
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
        options.timeout = Duration::from_secs(self.ssh_timeout.max(1));
        options.limit_rate = self.limit_rate;
        Ok(Connection::open(&target, &options)?)
    }

    pub fn limit_rate(&self) -> Option<u64> {
        self.limit_rate
    }
}

/// How far a cut transfer goes on, in the same run.
#[derive(Debug, Args)]
pub struct RetryArgs {
    /// How many times a cut transfer is resumed, over a new connection, before giving up
    #[arg(long, value_name = "N", default_value_t = 3)]
    retries: u32,
}

/// Counts the reconnections of one run, shared by all its transfers.
struct Retry {
    allowed: u32,
    attempt: u32,
}

impl Retry {
    fn new(args: &RetryArgs) -> Self {
        Self {
            allowed: args.retries,
            attempt: 0,
        }
    }

    /// After a transfer failed with `err`: reconnects with `reconnect` (waiting longer at
    /// each attempt) if the failure is one a new connection may get past and attempts are
    /// left, so the transfer can be tried again; otherwise returns the error.
    fn reconnect(
        &mut self,
        err: TransportError,
        mut reconnect: impl FnMut() -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if self.attempt >= self.allowed || !resumable(&err) {
            return Err(err.into());
        }
        eprintln!("the transfer was cut ({err}); reconnecting to resume");
        // A reconnection that fails for the same kind of reason (the link still down)
        // uses up an attempt too.
        loop {
            self.attempt += 1;
            std::thread::sleep(Duration::from_secs(2 * u64::from(self.attempt)));
            eprintln!("attempt {} of {}", self.attempt, self.allowed);
            match reconnect() {
                Ok(()) => return Ok(()),
                Err(e)
                    if self.attempt < self.allowed
                        && e.downcast_ref::<TransportError>().is_some_and(resumable) =>
                {
                    eprintln!("reconnecting failed: {e:#}");
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Downloads `remote` to `local` (which must not exist) over `conn`, taking the download
/// up over a new connection after a cut; `conn` is then that new connection.
fn fetch(
    conn: &mut Connection,
    reconnect: impl Fn() -> anyhow::Result<Connection>,
    retry: &mut Retry,
    remote: &str,
    local: &Path,
    label: &str,
    progress: &CliProgress,
) -> anyhow::Result<String> {
    let mut download = Download::new(conn, remote, local)?;
    loop {
        progress.start(label, Some(download.size()));
        let fetched = download.fetch(conn, &mut |bytes| progress.add(bytes));
        match fetched {
            Ok(()) => break,
            Err(err) => retry.reconnect(err, || {
                *conn = reconnect()?;
                Ok(())
            })?,
        }
    }
    if download.resumed_from() > 0 {
        eprintln!(
            "{label}: resumed at byte {} of {}",
            download.resumed_from(),
            download.size()
        );
    }
    Ok(download.finish()?)
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
    conn.upload(&mut LocalFile::new(&me), &path, &mut |_| {})?;
    conn.output(&format!("chmod 700 {}", shell_quote(&path)))?;
    Ok(path)
}

/// `baluchon ARGS…` for the other host, reporting progress as events.
fn remote_command(bin: &str, args: &[String]) -> String {
    let mut command = format!("{} --progress-events", shell_quote(bin));
    for arg in args {
        command.push(' ');
        command.push_str(&shell_quote(arg));
    }
    command
}

/// Runs a remote baluchon, its stdout copied to `out` and its progress rendered here.
fn run_remote(
    conn: &Connection,
    command: &str,
    progress: &CliProgress,
    out: &mut dyn std::io::Write,
) -> Result<(), TransportError> {
    let host = conn.target().host.clone();
    conn.run_reporting(command, None, out, &mut |line| progress.relay(line, &host))
}

/// A private directory there for uploads of the bundle with this digest: an interrupted
/// upload resumes into it.
fn upload_dir(conn: &Connection, digest: &str) -> anyhow::Result<String> {
    Ok(conn.output(&format!(
        "d=\"$HOME/.cache/baluchon/uploads/{}\" && mkdir -p -m 700 \"$d\" && chmod 700 \"$d\" && cd \"$d\" && pwd -P",
        &digest[..32]
    ))?)
}

fn send(
    conn: &Connection,
    source: &mut dyn UploadSource,
    remote: &str,
    label: &str,
    progress: &CliProgress,
) -> Result<UploadReport, TransportError> {
    progress.start(label, Some(source.size()?));
    let report = conn.upload(source, remote, &mut |bytes| progress.add(bytes))?;
    if report.resumed_from > 0 {
        eprintln!(
            "{label}: resumed at byte {} of {}",
            report.resumed_from, report.bytes
        );
    }
    Ok(report)
}

/// The options of `baluchon import` that the other host's import gets.
#[derive(Debug, Default)]
pub struct RemoteImport {
    pub args: Vec<String>,
}

pub fn import(
    url: &str,
    ssh: &SshArgs,
    retry: &RetryArgs,
    bundle: &Path,
    signer: &Path,
    options: &RemoteImport,
    progress: &CliProgress,
) -> anyhow::Result<()> {
    let mut conn = ssh.connect(url)?;
    let mut source = LocalFile::new(bundle);
    let dir = upload_dir(&conn, &source.sha256()?)?;
    let bin = remote_baluchon(&conn, &dir)?;
    let remote_bundle = format!("{dir}/bundle.baluchon");
    let label = format!("to {}", conn.target().host);
    let mut retry = Retry::new(retry);
    loop {
        match send(&conn, &mut source, &remote_bundle, &label, progress) {
            Ok(_) => break,
            Err(err) => retry.reconnect(err, || {
                conn = ssh.connect(url)?;
                Ok(())
            })?,
        }
    }
    let result = import_there(&conn, &bin, &dir, signer, options, progress);
    // The upload is kept for a retry only when the import did not run to its end.
    if result.is_ok() {
        conn.output(&format!("rm -rf {}", shell_quote(&dir)))?;
    }
    result.with_context(|| format!("importing {} on {} failed", bundle.display(), conn.target()))
}

/// Runs the import of `dir/bundle.baluchon` there, checked against our signer file.
fn import_there(
    conn: &Connection,
    bin: &str,
    dir: &str,
    signer: &Path,
    options: &RemoteImport,
    progress: &CliProgress,
) -> anyhow::Result<()> {
    let remote_signer = format!("{dir}/allowed_signers");
    conn.upload(&mut LocalFile::new(signer), &remote_signer, &mut |_| {})?;
    let mut args = vec![
        "import".to_owned(),
        format!("{dir}/bundle.baluchon"),
        "--signer".to_owned(),
        remote_signer,
    ];
    args.extend(options.args.iter().cloned());
    run_remote(
        conn,
        &remote_command(bin, &args),
        progress,
        &mut std::io::stdout(),
    )?;
    Ok(())
}

/// Runs `baluchon export …` on the other host into a private directory there, then brings
/// the bundle back to `output` (or, for a plan, only the report). The directory there is
/// removed whatever happens.
pub fn export(
    url: &str,
    ssh: &SshArgs,
    retry: &RetryArgs,
    remote_args: &[String],
    sign_key: Option<&Path>,
    output: Option<&Path>,
    progress: &CliProgress,
) -> anyhow::Result<()> {
    if let Some(output) = output {
        anyhow::ensure!(
            fs_err::symlink_metadata(output).is_err(),
            "{} already exists; choose another output or remove it",
            output.display()
        );
    }
    let mut conn = ssh.connect(url)?;
    let dir = private_temp_dir(&conn)?;
    let result = (|| -> anyhow::Result<()> {
        let bin = remote_baluchon(&conn, &dir)?;
        let remote_bundle = format!("{dir}/bundle.baluchon");
        let mut args = remote_args.to_vec();
        if let (Some(key), Some(_)) = (sign_key, output) {
            args.extend([
                "--sign-key".to_owned(),
                key.to_string_lossy().into_owned(),
                "-o".to_owned(),
                remote_bundle.clone(),
            ]);
        }
        // The remote export's sequence counter lives with the exporter's state, there.
        run_remote(
            &conn,
            &remote_command(&bin, &args),
            progress,
            &mut std::io::stdout(),
        )?;
        if let Some(output) = output {
            let label = format!("from {}", conn.target().host);
            let sha256 = fetch(
                &mut conn,
                || ssh.connect(url),
                &mut Retry::new(retry),
                &remote_bundle,
                output,
                &label,
                progress,
            )?;
            eprintln!("fetched {} (sha256 {sha256})", output.display());
        }
        Ok(())
    })();
    let cleaned = remove_dir(&conn, ssh, url, &dir);
    result.with_context(|| format!("exporting on {} failed", conn.target()))?;
    cleaned.context("the export succeeded, but a temporary directory could not be removed")?;
    Ok(())
}

/// Removes `dir` on the other host, over a new connection if `conn` died.
fn remove_dir(conn: &Connection, ssh: &SshArgs, url: &str, dir: &str) -> anyhow::Result<()> {
    let command = format!("rm -rf {}", shell_quote(dir));
    conn.output(&command).map(drop).or_else(|_| {
        let again = ssh.connect(url)?;
        Ok(again.output(&command).map(drop)?)
    })
}

fn private_temp_dir(conn: &Connection) -> anyhow::Result<String> {
    Ok(conn.output("umask 077 && mktemp -d \"${TMPDIR:-/tmp}/baluchon-export.XXXXXXXX\"")?)
}

/// Move an app instance from one host to another, over SSH, through this machine
///
/// Both hosts' keys are checked before anything runs. The source host exports the instance
/// into a signed bundle (signed there, with --sign-key); the bundle streams from there
/// through this machine to the target without being stored here (unless --keep); a cut
/// connection to either host is reopened and the transfer resumes where the target's copy
/// ends, after re-hashing it. The target checks the whole bundle's sha256, then verifies its
/// signature against --signer (sent from here) and imports it: staged and planned first,
/// then applied with a journal, rolled back on any failure. The source is left as it was,
/// and temporary files are removed on both hosts.
///
/// Examples:
///   baluchon migrate --from ssh://root@old.example --to ssh://root@new.example \
///       --app wordpress --instance blog.example --sign-key /etc/baluchon/signing_key \
///       --signer allowed_signers --domain blog.new.example
///   baluchon migrate … --plan            (everything but the import's changes)
///   baluchon migrate … --keep blog.baluchon
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct MigrateArgs {
    /// The host the app leaves: ssh://user@host[:port]
    #[arg(long, value_name = "URL")]
    from: String,
    /// The host the app moves to: ssh://user@host[:port]
    #[arg(long, value_name = "URL")]
    to: String,
    /// The app's recipe name
    #[arg(long)]
    app: String,
    /// The instance to move (as `baluchon detect` lists it on the source)
    #[arg(long)]
    instance: String,
    /// The signing key, a file on the source host
    #[arg(long, value_name = "FILE")]
    sign_key: PathBuf,
    /// Trusted signers, here: the target accepts only a bundle signed by one of them
    #[arg(long, value_name = "FILE")]
    signer: PathBuf,
    /// The instance's new domain
    #[arg(long)]
    domain: Option<String>,
    /// Also keep a copy of the bundle here (it then travels source → here → target)
    #[arg(long, value_name = "FILE")]
    keep: Option<PathBuf>,
    /// Transfer and verify everything, and show what the import would do; change nothing
    #[arg(long)]
    plan: bool,
    /// What to do with existing files on the target that differ from the bundle's: refuse,
    /// replace, rename (as for `baluchon import`)
    #[arg(long, default_value = "refuse", value_parser = ["refuse", "replace", "rename"])]
    on_conflict: String,
    /// An existing account of the target host that the app's PHP-FPM pool may run as (as
    /// for `baluchon import`) (can be repeated)
    #[arg(long, value_name = "NAME")]
    allow_account: Vec<String>,
    /// Run the app on the target's PHP version (e.g. 8.2) instead of the source's (as for
    /// `baluchon import`)
    #[arg(long, value_name = "X.Y")]
    php_version: Option<String>,
    /// Encrypt the bundle to this recipient (repeatable; see `baluchon export --help`): it
    /// then crosses this machine encrypted
    #[arg(long, value_name = "RECIPIENT", requires = "decrypt_with")]
    encrypt_to: Vec<String>,
    /// A key file on the target host that opens the encrypted bundle (repeatable)
    #[arg(long, value_name = "KEY")]
    decrypt_with: Vec<PathBuf>,
    /// Print the target's import report as JSON on standard output (progress and notes
    /// stay on standard error)
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    retry: RetryArgs,
    #[command(flatten)]
    ssh: SshArgs,
}

pub fn migrate(args: &MigrateArgs, progress: &CliProgress) -> anyhow::Result<()> {
    if let Some(keep) = &args.keep {
        anyhow::ensure!(
            fs_err::symlink_metadata(keep).is_err(),
            "{} already exists; choose another --keep or remove it",
            keep.display()
        );
    }
    // Both keys are checked before the source does any work.
    let mut source = args.ssh.connect(&args.from)?;
    let mut target = args.ssh.connect(&args.to)?;
    let export_dir = private_temp_dir(&source)?;
    let mut upload = None;
    let result = migrate_through(
        args,
        &mut source,
        &mut target,
        &export_dir,
        &mut upload,
        progress,
    );
    // Temporary files go on every path: a later run exports afresh, so a partial upload
    // could not be resumed by it anyway. A connection that died is opened once more for it.
    let mut cleaned = remove_dir(&source, &args.ssh, &args.from, &export_dir);
    if let Some(dir) = upload {
        cleaned = cleaned.and(remove_dir(&target, &args.ssh, &args.to, &dir));
    }
    result.with_context(|| {
        format!(
            "moving {} from {} to {} failed",
            args.instance,
            source.target(),
            target.target()
        )
    })?;
    cleaned.context("the migration succeeded, but a temporary directory could not be removed")?;
    Ok(())
}

fn migrate_through(
    args: &MigrateArgs,
    source: &mut Connection,
    target: &mut Connection,
    export_dir: &str,
    upload: &mut Option<String>,
    progress: &CliProgress,
) -> anyhow::Result<()> {
    let from_bin = remote_baluchon(source, export_dir)?;
    let bundle = format!("{export_dir}/bundle.baluchon");
    let mut export = [
        "export",
        "--app",
        &args.app,
        "--instance",
        &args.instance,
        "--sign-key",
        &args.sign_key.to_string_lossy(),
        "-o",
        &bundle,
    ]
    .map(str::to_owned)
    .to_vec();
    for recipient in crate::sealed::recipients(&args.encrypt_to)? {
        export.extend(["--encrypt-to".to_owned(), format!("{recipient:?}")]);
    }
    let export_began = jiff::Timestamp::now();
    // Standard output is the import's report (JSON with --json): the export's goes to stderr.
    run_remote(
        source,
        &remote_command(&from_bin, &export),
        progress,
        &mut std::io::stderr(),
    )
    .context("the export on the source host failed")?;
    let mut retry = Retry::new(&args.retry);
    if let Some(keep) = &args.keep {
        let sha256 = fetch(
            source,
            || args.ssh.connect(&args.from),
            &mut retry,
            &bundle,
            keep,
            "fetching a copy",
            progress,
        )?;
        eprintln!("kept a copy in {} (sha256 {sha256})", keep.display());
    }

    let digest = RemoteFile::new(source, &bundle).sha256()?;
    let dir = upload_dir(target, &digest)?;
    *upload = Some(dir.clone());
    let to_bin = remote_baluchon(target, &dir)?;
    let label = format!("{} → {}", source.target().host, target.target().host);
    loop {
        let sent = match &args.keep {
            Some(keep) => send(
                target,
                &mut LocalFile::new(keep),
                &format!("{dir}/bundle.baluchon"),
                &label,
                progress,
            ),
            None => send(
                target,
                &mut RemoteFile::new(source, &bundle),
                &format!("{dir}/bundle.baluchon"),
                &label,
                progress,
            ),
        };
        match sent {
            Ok(_) => break,
            // Either side may be the one that dropped.
            Err(err) => retry.reconnect(err, || {
                *source = args.ssh.connect(&args.from)?;
                *target = args.ssh.connect(&args.to)?;
                Ok(())
            })?,
        }
    }

    let mut import = RemoteImport::default();
    if let Some(domain) = &args.domain {
        import.args.extend(["--domain".to_owned(), domain.clone()]);
    }
    import
        .args
        .extend(["--on-conflict".to_owned(), args.on_conflict.clone()]);
    if args.plan {
        import.args.push("--plan".to_owned());
    }
    for account in &args.allow_account {
        import
            .args
            .extend(["--allow-account".to_owned(), account.clone()]);
    }
    if let Some(version) = &args.php_version {
        import
            .args
            .extend(["--php-version".to_owned(), version.clone()]);
    }
    if args.json {
        import.args.push("--json".to_owned());
    }
    for key in &args.decrypt_with {
        import.args.extend([
            "--decrypt-with".to_owned(),
            key.to_string_lossy().into_owned(),
        ]);
    }
    import_there(target, &to_bin, &dir, &args.signer, &import, progress)
        .context("the import on the target host failed")?;
    if !args.plan {
        // The source is left as it was, serving: say plainly what the copy does not hold.
        eprintln!(
            "note: {} still serves {}; what is written there after the export began ({}) is not on {}",
            source.target().host,
            args.instance,
            export_began.strftime("%Y-%m-%d %H:%M:%S UTC"),
            target.target().host
        );
    }
    Ok(())
}

/// A transfer error that a new connection may get past; a corrupted copy is not one.
fn resumable(err: &TransportError) -> bool {
    matches!(
        err,
        TransportError::Ssh { .. }
            | TransportError::Io(_)
            | TransportError::Stalled { .. }
            | TransportError::Connect { .. }
    )
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates_are_bytes_per_second_with_binary_units() {
        assert_eq!(parse_rate("500"), Ok(500));
        assert_eq!(parse_rate("64k"), Ok(64 << 10));
        assert_eq!(parse_rate("20M"), Ok(20 << 20));
        assert_eq!(parse_rate("1G"), Ok(1 << 30));
        for bad in ["", "0", "M", "2T", "1.5M", "-1", "99999999999999G"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
