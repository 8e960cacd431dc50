//! Capturing one app instance: preflight, plan, and the export into one bundle.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use baluchon_bundle::{
    BundleWriter, EntryPath, ExportOptions, ExportReport, Progress, Select, Selection,
};
use baluchon_recipe::{Engine, HostView, InstalledPackage, Instance, Recipe, Role, DPKG_INFO_DIR};
use baluchon_signature::SigningKey;
use serde::Serialize;

use crate::collect;
use crate::description::{
    AppDescription, DatabaseDump, ExcludedEntry, FileSetRecord, HealthRecord, PackageRecord,
    ServiceRecord, APP_DESCRIPTION, APP_FORMAT, APP_RECIPE,
};
use crate::error::CaptureError;
use crate::selection::{package_files, AppSelection};

#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CaptureOptions {
    pub output: PathBuf,
    /// The bundle's tenant name; the instance name when absent.
    pub tenant: Option<String>,
    pub sequence: u64,
    pub threads: usize,
    /// Archive secret values as they are (the bundle will be encrypted, or the user said
    /// so); otherwise they are left out, or the capture refuses (see [`crate::secrets`]).
    pub keep_secrets: bool,
}

impl CaptureOptions {
    pub fn new(output: PathBuf) -> Self {
        Self {
            output,
            tenant: None,
            sequence: 1,
            threads: std::thread::available_parallelism().map_or(2, usize::from),
            keep_secrets: false,
        }
    }
}

/// One file set as found on the host.
#[derive(Debug, Clone, Serialize)]
pub struct FileSetSummary {
    pub role: Role,
    pub path: PathBuf,
    /// `directory`, `file` or `symlink`.
    pub kind: &'static str,
    pub entries: u64,
    pub bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DatabasePlan {
    pub id: String,
    pub engine: Engine,
    /// The database name, or the SQLite file.
    pub source: String,
    /// The server's own size figure (data and indexes; SQLite: pages).
    pub estimated_bytes: u64,
}

/// What a capture would take, computed without writing anything.
#[derive(Debug, Clone, Serialize)]
pub struct CapturePlan {
    pub app: String,
    pub instance: String,
    pub domain: String,
    pub version: Option<String>,
    pub files: Vec<FileSetSummary>,
    /// Entries the recipe leaves out (caches, unmodified package files), with the reason.
    pub excluded: Vec<ExcludedEntry>,
    pub databases: Vec<DatabasePlan>,
    pub services: Vec<ServiceRecord>,
    pub code_packages: Vec<PackageRecord>,
    pub needs_packages: Vec<PackageRecord>,
    pub omitted: Vec<String>,
    /// Bytes of file content plus database estimates, before compression.
    pub total_bytes: u64,
}

/// What a capture wrote.
#[derive(Debug, Clone)]
pub struct CaptureReport {
    pub bundle: ExportReport,
    pub description: AppDescription,
}

/// A file set or service file that exists, with what it is.
struct FoundSet {
    role: Role,
    path: PathBuf,
    kind: &'static str,
    exclude: Vec<String>,
    skip_package_files: bool,
}

/// Checks every path the instance names, before anything is read or written: required
/// ones exist, none is reached through a symlink.
fn preflight(instance: &Instance) -> Result<(Vec<FoundSet>, Vec<String>), CaptureError> {
    let mut found: Vec<FoundSet> = Vec::new();
    let mut omitted = instance.omitted.clone();
    let services = instance.services.iter().map(|s| {
        (
            Role::Config,
            &s.path,
            &[][..],
            false,
            s.optional,
            format!("{} service definition", s.kind),
        )
    });
    let sets = instance.files.iter().map(|f| {
        (
            f.role,
            &f.path,
            &f.exclude[..],
            f.skip_package_files,
            f.optional,
            format!("{} file set", f.role),
        )
    });
    for (role, path, exclude, skip, optional, what) in sets.chain(services) {
        check_ancestors(path)?;
        let kind = match fs_err::symlink_metadata(path) {
            Ok(m) if m.is_dir() => "directory",
            Ok(m) if m.file_type().is_symlink() => "symlink",
            Ok(_) => "file",
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if optional {
                    omitted.push(format!("{}: absent ({what})", path.display()));
                    continue;
                }
                return Err(CaptureError::MissingPath {
                    path: path.clone(),
                    what,
                });
            }
            Err(e) => {
                return Err(CaptureError::Unreadable {
                    path: path.clone(),
                    source: e,
                })
            }
        };
        if found.iter().any(|f| &f.path == path) {
            continue;
        }
        found.push(FoundSet {
            role,
            path: path.clone(),
            kind,
            exclude: exclude.to_vec(),
            skip_package_files: skip,
        });
    }
    Ok((found, omitted))
}

/// The walker never follows symlinks, so a set behind one would come out empty: refuse.
fn check_ancestors(path: &Path) -> Result<(), CaptureError> {
    let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
    ancestors.reverse();
    for dir in ancestors {
        match fs_err::symlink_metadata(dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(CaptureError::ThroughSymlink {
                    path: path.to_owned(),
                    symlink: dir.to_owned(),
                })
            }
            // A missing ancestor shows as a missing path, reported by the caller.
            _ => {}
        }
    }
    Ok(())
}

fn selection(sets: &[FoundSet], instance: &Instance) -> Result<AppSelection, CaptureError> {
    let packaged = if sets.iter().any(|s| s.skip_package_files) {
        package_files(&instance.code_packages, Path::new(DPKG_INFO_DIR))?
    } else {
        BTreeMap::new()
    };
    let roots: Vec<(&Path, &[String], bool)> = sets
        .iter()
        .map(|s| (s.path.as_path(), &s.exclude[..], s.skip_package_files))
        .collect();
    AppSelection::new(&roots, packaged)
}

/// Each named package with the version installed here, if any.
fn package_records(
    names: &[String],
    installed: &BTreeMap<String, InstalledPackage>,
) -> Vec<PackageRecord> {
    names
        .iter()
        .map(|name| {
            let found = installed.get(name);
            PackageRecord {
                name: name.clone(),
                version: found.map(|p| p.version.clone()),
                architecture: found.map(|p| p.architecture.clone()),
            }
        })
        .collect()
}

fn services(instance: &Instance, sets: &[FoundSet]) -> Vec<ServiceRecord> {
    instance
        .services
        .iter()
        .filter(|s| sets.iter().any(|f| f.path == s.path))
        .map(|s| ServiceRecord {
            kind: s.kind,
            path: s.path.display().to_string(),
        })
        .collect()
}

fn entry_display(path: &EntryPath) -> String {
    format!("/{path}")
}

/// What capturing `instance` would take: file sets with sizes, exclusions, databases (each
/// contacted with the app's credentials, so a wrong password shows here), packages.
pub fn plan_instance(
    instance: &Instance,
    host: &dyn HostView,
) -> Result<CapturePlan, CaptureError> {
    let (sets, omitted) = preflight(instance)?;
    let selection = selection(&sets, instance)?;
    let mut bytes = vec![0u64; sets.len()];
    let mut excluded = Vec::new();
    for set in &sets {
        let rel = set.path.as_os_str().as_bytes();
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        measure(&selection, &set.path, rel, &mut bytes, &mut excluded)?;
    }
    let counts = selection.counts();
    let files: Vec<FileSetSummary> = sets
        .iter()
        .enumerate()
        .map(|(i, s)| FileSetSummary {
            role: s.role,
            path: s.path.clone(),
            kind: s.kind,
            entries: counts[i],
            bytes: bytes[i],
        })
        .collect();
    let mut databases = Vec::new();
    for db in &instance.databases {
        databases.push(DatabasePlan {
            id: db.id.clone(),
            engine: db.engine,
            source: db
                .name
                .clone()
                .or_else(|| db.path.as_ref().map(|p| p.display().to_string()))
                .unwrap_or_default(),
            estimated_bytes: collect::size(db)?,
        });
    }
    let installed = host.packages()?;
    let total_bytes =
        bytes.iter().sum::<u64>() + databases.iter().map(|d| d.estimated_bytes).sum::<u64>();
    Ok(CapturePlan {
        app: instance.app.clone(),
        instance: instance.name.clone(),
        domain: instance.domain.clone(),
        version: instance.version.clone(),
        services: services(instance, &sets),
        files,
        excluded,
        databases,
        code_packages: package_records(&instance.code_packages, &installed),
        needs_packages: package_records(&instance.packages_needed, &installed),
        omitted,
        total_bytes,
    })
}

/// Walks one set the way the exporter will, adding up content sizes per set. A set inside
/// another one is walked as part of its parent only.
fn measure(
    selection: &AppSelection,
    path: &Path,
    rel: &[u8],
    bytes: &mut [u64],
    excluded: &mut Vec<ExcludedEntry>,
) -> Result<(), CaptureError> {
    let parent = rel.iter().rposition(|&b| b == b'/').map(|i| &rel[..i]);
    if parent.is_some_and(|p| selection.set_of(p).is_some()) {
        return Ok(());
    }
    let mut stack = vec![(path.to_owned(), rel.to_vec())];
    while let Some((abs, rel)) = stack.pop() {
        let unreadable = |source| CaptureError::Unreadable {
            path: abs.clone(),
            source,
        };
        // The plan is an estimate of a live tree: an entry gone since its directory was
        // listed is simply not counted (the export itself records what it finds).
        let meta = match fs_err::symlink_metadata(&abs) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(unreadable(e)),
        };
        let entry = EntryPath::new(rel.clone())
            .map_err(|e| unreadable(std::io::Error::other(e.to_string())))?;
        match selection.select(&entry, meta.is_dir()) {
            Select::Archive => {}
            Select::Omit => continue,
            Select::Exclude(reason) => {
                excluded.push(ExcludedEntry {
                    path: entry_display(&entry),
                    reason,
                });
                continue;
            }
        }
        if let (true, Some(set)) = (meta.is_file(), selection.set_of(&rel)) {
            bytes[set] += meta.len();
        }
        if meta.is_dir() {
            // Not through a link: the directory may have been swapped for one since.
            let dir = match rustix::fs::open(
                &abs,
                rustix::fs::OFlags::DIRECTORY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            ) {
                Ok(dir) => dir,
                Err(rustix::io::Errno::NOENT) => continue,
                Err(e) => return Err(unreadable(e.into())),
            };
            let entries = rustix::fs::Dir::read_from(&dir).map_err(|e| unreadable(e.into()))?;
            for child in entries {
                let name = child.map_err(|e| unreadable(e.into()))?;
                let name = name.file_name().to_bytes();
                if name == b"." || name == b".." {
                    continue;
                }
                let mut child_rel = rel.clone();
                child_rel.push(b'/');
                child_rel.extend_from_slice(name);
                stack.push((abs.join(std::ffi::OsStr::from_bytes(name)), child_rel));
            }
        }
    }
    Ok(())
}

/// Captures `instance` into one signed bundle: databases first, then files (an upload
/// made in between is then in the files without a reference in the dump, which is
/// harmless; the other order could leave the dump pointing at a missing file), then the
/// description and the recipe.
pub fn capture_instance(
    recipe: &Recipe,
    instance: &Instance,
    host: &dyn HostView,
    options: &CaptureOptions,
    key: &SigningKey,
    progress: &dyn Progress,
) -> Result<CaptureReport, CaptureError> {
    let (sets, omitted) = preflight(instance)?;
    let mut selection = selection(&sets, instance)?;
    let mut redacted_secrets = Vec::new();
    if !options.keep_secrets {
        let redactions = crate::secrets::redact(recipe, instance, host)?;
        if !redactions.kept.is_empty() {
            return Err(CaptureError::ClearSecrets {
                names: redactions.kept,
            });
        }
        selection.replace(redactions.files);
        redacted_secrets = redactions.regenerated;
    }
    let installed = host.packages()?;
    let tenant = options
        .tenant
        .clone()
        .unwrap_or_else(|| instance.name.clone());
    let mut export = ExportOptions::new(PathBuf::from("/"), tenant, options.output.clone());
    export.sequence = options.sequence;
    export.threads = options.threads;
    let scratch = match options.output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };

    let mut writer = BundleWriter::create(&export, key)?;
    let mut dumps: Vec<DatabaseDump> = Vec::new();
    for db in &instance.databases {
        let (next, dump) = collect::dump(writer, db, &scratch)?;
        writer = next;
        dumps.push(dump);
    }
    let writer = writer.add_tree(&selection, progress)?;
    let counts = selection.counts();
    // A set gone since the preflight (or now behind a link, which the walk does not
    // follow) would otherwise be recorded with no entry, and no word.
    for (set, count) in sets.iter().zip(&counts) {
        let rel = set.path.as_os_str().as_bytes();
        let rel = rel.strip_prefix(b"/").unwrap_or(rel);
        let excluded = writer.excluded().iter().any(|(p, _)| p.as_bytes() == rel);
        if *count == 0 && !excluded {
            return Err(CaptureError::SetVanished {
                path: set.path.clone(),
            });
        }
    }
    let excluded: Vec<ExcludedEntry> = writer
        .excluded()
        .iter()
        .map(|(path, reason)| ExcludedEntry {
            path: entry_display(path),
            reason: reason.clone(),
        })
        .collect();

    let description = AppDescription {
        format: APP_FORMAT.to_owned(),
        format_version: 1,
        app: instance.app.clone(),
        recipe_origin: recipe.origin().to_owned(),
        instance: instance.name.clone(),
        domain: instance.domain.clone(),
        version: instance.version.clone(),
        values: instance
            .values
            .iter()
            .filter(|(_, v)| !v.secret)
            .map(|(k, v)| (k.clone(), v.text.clone()))
            .collect(),
        secret_values: instance
            .values
            .iter()
            .filter(|(_, v)| v.secret)
            .map(|(k, _)| k.clone())
            .collect(),
        redacted_secrets,
        files: sets
            .iter()
            .enumerate()
            .map(|(i, s)| FileSetRecord {
                role: s.role,
                path: s.path.display().to_string(),
                kind: s.kind.to_owned(),
                entries: counts[i],
            })
            .collect(),
        excluded,
        databases: dumps,
        services: services(instance, &sets),
        code_packages: package_records(&instance.code_packages, &installed),
        needs_packages: package_records(&instance.packages_needed, &installed),
        installed_packages: installed
            .values()
            .map(|p| PackageRecord {
                name: p.name.clone(),
                version: Some(p.version.clone()),
                architecture: Some(p.architecture.clone()),
            })
            .collect(),
        omitted,
        health: instance.health.as_ref().map(|h| HealthRecord {
            url: h.url.clone(),
            status: h.status,
            contains: h.contains.clone(),
        }),
    };
    let (writer, _) = writer.add_payload(
        APP_RECIPE,
        "application/toml",
        false,
        &mut recipe.text().as_bytes(),
    )?;
    let mut json = serde_json::to_vec_pretty(&description).map_err(std::io::Error::other)?;
    json.push(b'\n');
    let (writer, _) =
        writer.add_payload(APP_DESCRIPTION, "application/json", false, &mut &json[..])?;
    let bundle = writer.finish()?;
    Ok(CaptureReport {
        bundle,
        description,
    })
}
