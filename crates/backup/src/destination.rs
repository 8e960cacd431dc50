//! Where backups are kept: a directory, a directory on another host over SSH, or an S3
//! bucket. All three hold flat objects under keys like `tenant/name`; an object is written
//! whole under its final key or not at all, and never overwritten.

use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use baluchon_bundle::Progress;
use baluchon_transport::{shell_quote, Connection};
use jiff::Timestamp;
use sha2::{Digest as _, Sha256};

use crate::s3::{S3Settings, S3Store};
use crate::BackupError;

/// A destination as written on the command line, before anything is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Directory(PathBuf),
    /// `ssh://user@host[:port]/path`: `target` is the `ssh://user@host[:port]` part.
    Ssh {
        target: String,
        path: String,
    },
    /// `s3://bucket/prefix`.
    S3 {
        bucket: String,
        prefix: String,
    },
}

impl std::str::FromStr for Location {
    type Err = BackupError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BackupError::Location {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(rest) = text.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("it names no bucket: s3://bucket/prefix"));
            }
            return Ok(Self::S3 {
                bucket: bucket.to_owned(),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if let Some(rest) = text.strip_prefix("ssh://") {
            let Some((authority, path)) = rest.split_once('/') else {
                return Err(bad("it names no directory: ssh://user@host/path"));
            };
            let path = format!("/{}", path.trim_end_matches('/'));
            if path == "/" {
                return Err(bad("it names no directory: ssh://user@host/path"));
            }
            return Ok(Self::Ssh {
                target: format!("ssh://{authority}"),
                path,
            });
        }
        if text.contains("://") {
            return Err(bad("only directories, ssh:// and s3:// are supported"));
        }
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        Ok(Self::Directory(PathBuf::from(text)))
    }
}

/// One object at a destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// `tenant/name`, relative to the destination.
    pub key: String,
    pub size: u64,
    /// When it was last written, by the destination's clock, if it says.
    pub modified: Option<Timestamp>,
}

/// An opened destination.
pub struct Destination {
    name: String,
    backend: Backend,
}

impl fmt::Debug for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Destination")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

enum Backend {
    Directory(PathBuf),
    Ssh { conn: Connection, root: String },
    S3(S3Store),
}

/// Bytes copied per read: bounds memory whatever the bundle's size.
const CHUNK: usize = 1 << 20;

impl Destination {
    pub fn directory(path: PathBuf) -> Self {
        Self {
            name: path.display().to_string(),
            backend: Backend::Directory(path),
        }
    }

    /// `root` is an absolute directory on the host `conn` is connected to.
    pub fn ssh(conn: Connection, root: String) -> Self {
        Self {
            name: format!("{}{root}", conn.target()),
            backend: Backend::Ssh { conn, root },
        }
    }

    pub fn s3(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Self, BackupError> {
        Ok(Self {
            name: if prefix.is_empty() {
                format!("s3://{bucket}")
            } else {
                format!("s3://{bucket}/{prefix}")
            },
            backend: Backend::S3(S3Store::open(bucket, prefix, settings)?),
        })
    }

    fn write_error(&self, key: &str, source: std::io::Error) -> BackupError {
        BackupError::Write {
            destination: self.name.clone(),
            key: key.to_owned(),
            source,
        }
    }

    fn ssh_error(
        &self,
        operation: &'static str,
        key: &str,
        source: baluchon_transport::TransportError,
    ) -> BackupError {
        BackupError::Ssh {
            destination: self.name.clone(),
            operation,
            key: key.to_owned(),
            source: Box::new(source),
        }
    }

    /// Stores the file `local` under `key`, reporting each chunk sent to `progress`.
    pub(crate) fn put_file(
        &self,
        key: &str,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<(), BackupError> {
        match &self.backend {
            Backend::Directory(root) => {
                let mut file = fs_err::File::open(local)?;
                self.put_dir(root, key, &mut file, progress)
            }
            Backend::Ssh { conn, root } => {
                let mut input = HashingReader {
                    inner: fs_err::File::open(local)?,
                    hasher: Sha256::new(),
                    progress,
                };
                self.put_ssh(conn, root, key, &mut input)?;
                let ours = hex(&input.hasher.finalize());
                let part = shell_quote(&format!("{root}/{key}.part"));
                let theirs = conn
                    .output(&format!("sha256sum < {part}"))
                    .map_err(|e| self.ssh_error("upload", key, e))?;
                if theirs.split_whitespace().next() != Some(ours.as_str()) {
                    return Err(BackupError::Corrupted {
                        destination: self.name.clone(),
                        key: format!("{key}.part"),
                        expected: ours,
                        actual: theirs,
                    });
                }
                conn.output(&format!(
                    "mv -f {part} {}",
                    shell_quote(&format!("{root}/{key}"))
                ))
                .map(drop)
                .map_err(|e| self.ssh_error("upload", key, e))
            }
            Backend::S3(store) => store.put_file(&self.name, key, local, progress),
        }
    }

    /// Stores a small object (a marker) under `key`.
    pub(crate) fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<(), BackupError> {
        match &self.backend {
            Backend::Directory(root) => {
                self.put_dir(root, key, &mut &bytes[..], &baluchon_bundle::NoProgress)
            }
            Backend::Ssh { conn, root } => {
                self.put_ssh(conn, root, key, &mut &bytes[..])?;
                let path = format!("{root}/{key}");
                conn.output(&format!(
                    "mv -f {} {}",
                    shell_quote(&format!("{path}.part")),
                    shell_quote(&path)
                ))
                .map(drop)
                .map_err(|e| self.ssh_error("upload", key, e))
            }
            Backend::S3(store) => store.put_bytes(&self.name, key, bytes),
        }
    }

    /// Streams `input` into `KEY.part` there (a name no listing takes for a backup); the
    /// caller renames it once it is checked.
    fn put_ssh(
        &self,
        conn: &Connection,
        root: &str,
        key: &str,
        input: &mut dyn Read,
    ) -> Result<(), BackupError> {
        let path = format!("{root}/{key}");
        let parent = path.rsplit_once('/').map_or(".", |(dir, _)| dir);
        conn.run(
            &format!(
                "umask 077 && mkdir -p {} && cat > {}",
                shell_quote(parent),
                shell_quote(&format!("{path}.part"))
            ),
            Some(input),
            &mut std::io::sink(),
        )
        .map_err(|e| self.ssh_error("upload", key, e))
    }

    /// Writes through a hidden temporary file beside the final name, synced, then linked
    /// under that name without replacing anything: a killed run leaves only a hidden file.
    fn put_dir(
        &self,
        root: &Path,
        key: &str,
        input: &mut dyn Read,
        progress: &dyn Progress,
    ) -> Result<(), BackupError> {
        let path = root.join(key);
        let dir = path.parent().unwrap_or(root);
        fs_err::create_dir_all(dir).map_err(|e| self.write_error(key, e))?;
        let mut part = tempfile::Builder::new()
            .prefix(".baluchon-upload.")
            .tempfile_in(dir)
            .map_err(|e| self.write_error(key, e))?;
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = input.read(&mut buf)?;
            if n == 0 {
                break;
            }
            part.write_all(&buf[..n])
                .map_err(|e| self.write_error(key, e))?;
            progress.advance(n as u64);
        }
        part.as_file()
            .sync_all()
            .map_err(|e| self.write_error(key, e))?;
        part.persist_noclobber(&path)
            .map_err(|e| self.write_error(key, e.error))?;
        Ok(())
    }

    /// Every object whose key starts with `prefix` (`""` for all, `tenant/` for one tenant),
    /// hidden files and temporary uploads included only as what they are: objects.
    pub(crate) fn list(&self, prefix: &str) -> Result<Vec<Object>, BackupError> {
        let list_error = |source| BackupError::List {
            destination: self.name.clone(),
            source,
        };
        let mut objects = match &self.backend {
            Backend::Directory(root) => list_dir(root).map_err(list_error)?,
            Backend::Ssh { conn, root } => {
                let q = shell_quote(root);
                let out = conn
                    .output(&format!(
                        "if [ -d {q} ]; then cd {q} && find . -mindepth 2 -maxdepth 2 -type f -printf '%s %T@ %P\\0'; fi"
                    ))
                    .map_err(|e| self.ssh_error("listing", root, e))?;
                parse_listing(&out)
            }
            Backend::S3(store) => store.list(&self.name, prefix.trim_end_matches('/'))?,
        };
        objects.retain(|o| o.key.starts_with(prefix));
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    /// Copies the object `key` into the new file `local`.
    pub(crate) fn get(
        &self,
        key: &str,
        local: &Path,
        progress: &dyn Progress,
    ) -> Result<(), BackupError> {
        let read_error = |source| BackupError::Read {
            destination: self.name.clone(),
            key: key.to_owned(),
            source,
        };
        match &self.backend {
            Backend::Directory(root) => {
                let mut input = fs_err::File::open(root.join(key)).map_err(read_error)?;
                let mut output = fs_err::File::create_new(local)?;
                let mut buf = vec![0u8; CHUNK];
                loop {
                    let n = input.read(&mut buf).map_err(read_error)?;
                    if n == 0 {
                        break;
                    }
                    output.write_all(&buf[..n])?;
                    progress.advance(n as u64);
                }
                output.sync_all()?;
                Ok(())
            }
            Backend::Ssh { conn, root } => {
                conn.download(&format!("{root}/{key}"), local)
                    .map_err(|e| self.ssh_error("download", key, e))?;
                progress.advance(fs_err::metadata(local)?.len());
                Ok(())
            }
            Backend::S3(store) => store.get(&self.name, key, local, progress),
        }
    }

    /// The whole of a small object (a marker).
    pub(crate) fn get_bytes(&self, key: &str) -> Result<Vec<u8>, BackupError> {
        match &self.backend {
            Backend::Directory(root) => {
                fs_err::read(root.join(key)).map_err(|source| BackupError::Read {
                    destination: self.name.clone(),
                    key: key.to_owned(),
                    source,
                })
            }
            Backend::Ssh { conn, root } => {
                let mut out = Vec::new();
                conn.run(
                    &format!("cat {}", shell_quote(&format!("{root}/{key}"))),
                    None,
                    &mut out,
                )
                .map_err(|e| self.ssh_error("download", key, e))?;
                Ok(out)
            }
            Backend::S3(store) => store.get_bytes(&self.name, key),
        }
    }

    pub(crate) fn delete(&self, key: &str) -> Result<(), BackupError> {
        match &self.backend {
            Backend::Directory(root) => {
                fs_err::remove_file(root.join(key)).map_err(|source| BackupError::Delete {
                    destination: self.name.clone(),
                    key: key.to_owned(),
                    source,
                })
            }
            Backend::Ssh { conn, root } => conn
                .output(&format!("rm -f {}", shell_quote(&format!("{root}/{key}"))))
                .map(drop)
                .map_err(|e| self.ssh_error("deletion", key, e)),
            Backend::S3(store) => store.delete(&self.name, key),
        }
    }
}

/// Hashes what it reads, and reports it as sent.
struct HashingReader<'p> {
    inner: fs_err::File,
    hasher: Sha256,
    progress: &'p dyn Progress,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `tenant/name` for every file one level below `root`; none if `root` does not exist yet.
fn list_dir(root: &Path) -> std::io::Result<Vec<Object>> {
    let mut objects = Vec::new();
    let tenants = match fs_err::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(objects),
        Err(e) => return Err(e),
    };
    for tenant in tenants {
        let tenant = tenant?;
        if !tenant.file_type()?.is_dir() {
            continue;
        }
        let Some(tenant_name) = tenant.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        for entry in fs_err::read_dir(tenant.path())? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if let (true, Some(name)) = (meta.is_file(), entry.file_name().to_str()) {
                objects.push(Object {
                    key: format!("{tenant_name}/{name}"),
                    size: meta.len(),
                    modified: meta
                        .modified()
                        .ok()
                        .and_then(|t| Timestamp::try_from(t).ok()),
                });
            }
        }
    }
    Ok(objects)
}

/// The objects of `find -printf '%s %T@ %P\0'` output. NUL-separated: a name may hold a
/// newline, and one line would then pass for two objects, one of them named like another
/// tenant's backup.
fn parse_listing(out: &str) -> Vec<Object> {
    out.split('\0')
        .filter_map(|record| {
            let (size, rest) = record.split_once(' ')?;
            let (modified, key) = rest.split_once(' ')?;
            // `%T@` is seconds with a fraction; whole seconds are enough here.
            let modified = modified.split('.').next().and_then(|s| s.parse().ok());
            Some(Object {
                key: key.to_owned(),
                size: size.parse().ok()?,
                modified: modified.and_then(|s| Timestamp::from_second(s).ok()),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory named with a newline and what looks like a listing line cannot make one
    /// object pass for two.
    #[test]
    fn a_name_with_a_newline_is_one_object() {
        let name = "x\n1 1 shop/20261125T031709.500Z-0193.baluchon";
        let out = format!(
            "12 1764000000.5 shop/20261125T031709.500Z-0193.baluchon\0\
             3 1764000001.25 {name}/y\0"
        );
        let keys: Vec<String> = parse_listing(&out).into_iter().map(|o| o.key).collect();
        assert_eq!(
            keys,
            [
                "shop/20261125T031709.500Z-0193.baluchon".to_owned(),
                format!("{name}/y")
            ]
        );
    }

    #[test]
    fn locations() {
        assert_eq!(
            "s3://bundles/nightly/".parse::<Location>().unwrap(),
            Location::S3 {
                bucket: "bundles".into(),
                prefix: "nightly".into()
            }
        );
        assert_eq!(
            "s3://bundles".parse::<Location>().unwrap(),
            Location::S3 {
                bucket: "bundles".into(),
                prefix: String::new()
            }
        );
        assert_eq!(
            "ssh://backup@store.example:2222/srv/backups/"
                .parse::<Location>()
                .unwrap(),
            Location::Ssh {
                target: "ssh://backup@store.example:2222".into(),
                path: "/srv/backups".into()
            }
        );
        assert_eq!(
            "/var/backups/baluchon".parse::<Location>().unwrap(),
            Location::Directory("/var/backups/baluchon".into())
        );
        for bad in [
            "s3://",
            "s3:///x",
            "ssh://u@h",
            "ssh://u@h/",
            "ftp://h/x",
            "",
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_directory_never_replaces_an_object_and_hides_partial_writes() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Destination::directory(dir.path().join("backups"));
        assert!(dest.list("").unwrap().is_empty(), "a missing root is empty");
        dest.put_bytes("shop/a", b"first").unwrap();
        let err = dest.put_bytes("shop/a", b"second").unwrap_err();
        assert!(matches!(err, BackupError::Write { .. }), "{err}");
        assert_eq!(dest.get_bytes("shop/a").unwrap(), b"first");
        // What a killed upload leaves: a hidden temporary file, listed as such.
        fs_err::write(dir.path().join("backups/shop/.baluchon-upload.x"), b"half").unwrap();
        let keys: Vec<_> = dest.list("").unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["shop/.baluchon-upload.x", "shop/a"]);
        dest.delete("shop/a").unwrap();
        assert_eq!(dest.list("shop/a").unwrap(), []);
    }
}
