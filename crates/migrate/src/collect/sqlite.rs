//! SQLite: the online backup API, which copies a consistent snapshot while the app keeps
//! writing, unlike a file copy, which can catch a half-written transaction.

use std::time::Duration;

use baluchon_bundle::BundleWriter;
use baluchon_recipe::Database;
use rusqlite::{backup::Backup, Connection, OpenFlags};

use crate::description::DatabaseDump;
use crate::error::CaptureError;

/// How long to wait for a writer's lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

fn path(db: &Database) -> Result<&std::path::Path, CaptureError> {
    db.path.as_deref().ok_or_else(|| CaptureError::Database {
        id: db.id.clone(),
        reason: "no database path".to_owned(),
    })
}

fn open(db: &Database) -> Result<Connection, CaptureError> {
    let path = path(db)?;
    if !fs_err::symlink_metadata(path).is_ok_and(|m| m.is_file()) {
        return Err(CaptureError::MissingPath {
            path: path.to_owned(),
            what: format!("SQLite database {}", db.id),
        });
    }
    // SQLite opens these beside the database by name, without O_NONBLOCK: a FIFO put
    // there by the app's account would hang the export, a link would send root elsewhere.
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut sidecar = path.as_os_str().to_owned();
        sidecar.push(suffix);
        let sidecar = std::path::PathBuf::from(sidecar);
        match fs_err::symlink_metadata(&sidecar) {
            Ok(meta) if !meta.is_file() => {
                return Err(CaptureError::Database {
                    id: db.id.clone(),
                    reason: format!(
                        "{} is not a regular file: SQLite would open it as its own",
                        sidecar.display()
                    ),
                })
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(CaptureError::Unreadable {
                    path: sidecar,
                    source,
                })
            }
        }
    }
    let sqlite = |source| CaptureError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let conn = Connection::open_with_flags(
        path,
        // NOFOLLOW: the app's database path must not lead the exporter (root) to another
        // database on the host through a link.
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW,
    )
    .map_err(sqlite)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(sqlite)?;
    // Reading the schema proves it is a database, not some other file.
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| {
        r.get::<_, i64>(0)
    })
    .map_err(sqlite)?;
    Ok(conn)
}

pub fn size(db: &Database) -> Result<u64, CaptureError> {
    let conn = open(db)?;
    let pages: i64 = conn
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .map_err(|source| CaptureError::Sqlite {
            path: path(db).map(ToOwned::to_owned).unwrap_or_default(),
            source,
        })?;
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .map_err(|source| CaptureError::Sqlite {
            path: path(db).map(ToOwned::to_owned).unwrap_or_default(),
            source,
        })?;
    Ok(u64::try_from(pages * page_size).unwrap_or(0))
}

pub fn dump<'k>(
    writer: BundleWriter<'k>,
    db: &Database,
    scratch: &std::path::Path,
) -> Result<(BundleWriter<'k>, DatabaseDump), CaptureError> {
    let src = open(db)?;
    let source_path = path(db)?.to_owned();
    let sqlite = |source| CaptureError::Sqlite {
        path: source_path.clone(),
        source,
    };
    let copy = tempfile::Builder::new()
        .prefix(".baluchon-sqlite-")
        .tempfile_in(scratch)?;
    {
        let mut dst = Connection::open(copy.path()).map_err(sqlite)?;
        let backup = Backup::new(&src, &mut dst).map_err(sqlite)?;
        // All pages in one step: one read transaction, so one snapshot, and no restart
        // however often the app writes meanwhile. (rusqlite refuses SQLite's own "-1 for
        // all": a step larger than any database does the same.)
        backup
            .run_to_completion(i32::MAX, Duration::from_millis(50), None)
            .map_err(sqlite)?;
    }
    let check: String = Connection::open(copy.path())
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
        .map_err(sqlite)?;
    if check != "ok" {
        return Err(CaptureError::Database {
            id: db.id.clone(),
            reason: format!("the snapshot failed its integrity check: {check}"),
        });
    }
    let payload = format!("data/db/{}.sqlite3.zst", db.id);
    let mut file = fs_err::File::open(copy.path())?;
    let (writer, _) =
        writer.add_payload(&payload, "application/vnd.sqlite3+zstd", true, &mut file)?;
    Ok((
        writer,
        DatabaseDump {
            id: db.id.clone(),
            engine: db.engine,
            dump: payload,
            method: "SQLite online backup API, one step".to_owned(),
            name: None,
            user: None,
            host: None,
            path: Some(source_path.display().to_string()),
            server_version: rusqlite::version().to_owned(),
            charset: None,
            collation: None,
            note: None,
        },
    ))
}
