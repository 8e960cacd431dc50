//! MariaDB / MySQL: `mariadb-dump` in one transaction, with the app's own credentials.

use std::io::Write;
use std::process::Command;

use baluchon_bundle::BundleWriter;
use baluchon_recipe::Database;

use super::process::{refuse_control_chars, Tool};
use crate::description::DatabaseDump;
use crate::error::CaptureError;

/// Options that make the dump one consistent, complete, restorable-elsewhere snapshot:
/// InnoDB tables in one transaction (the first option, replaced when other tables are
/// there), stored code and events included, binary columns as hex so no charset conversion
/// can touch them.
const DUMP_OPTIONS: [&str; 7] = [
    "--single-transaction",
    "--routines",
    "--triggers",
    "--events",
    "--hex-blob",
    "--default-character-set=utf8mb4",
    "--no-tablespaces",
];

/// A `[client]` options file (0600, removed on drop): the password never appears in a
/// command line that `ps` shows.
fn credentials(db: &Database) -> Result<tempfile::NamedTempFile, CaptureError> {
    // The exporter runs as root, and MariaDB lets the OS root in as its root through the
    // socket: an app whose config says "root" would have root dump any database into the
    // tenant's bundle. Only the app's own account is used.
    if db
        .user
        .as_deref()
        .is_none_or(|u| u.is_empty() || u == "root")
    {
        return Err(CaptureError::Database {
            id: db.id.clone(),
            reason: "the app's config names no database user, or root: baluchon dumps with the app's own account only".to_owned(),
        });
    }
    let mut text = String::from("[client]\n");
    let quote = |v: &str| format!("\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\""));
    if let Some(user) = &db.user {
        refuse_control_chars(&db.id, "user", user)?;
        text.push_str(&format!("user={}\n", quote(user)));
    }
    if let Some(password) = &db.password {
        refuse_control_chars(&db.id, "password", &password.text)?;
        text.push_str(&format!("password={}\n", quote(&password.text)));
    }
    // WordPress's DB_HOST forms: "localhost" (the default socket), "localhost:/socket",
    // "host", "host:port".
    match db.host.as_deref() {
        None | Some("localhost") => {}
        Some(host) => {
            refuse_control_chars(&db.id, "host", host)?;
            match host.split_once(':') {
                Some((h, socket)) if socket.starts_with('/') => {
                    text.push_str(&format!("host={}\nsocket={}\n", quote(h), quote(socket)));
                }
                Some((h, port)) => {
                    text.push_str(&format!("host={}\nport={}\n", quote(h), quote(port)));
                }
                None => text.push_str(&format!("host={}\n", quote(host))),
            }
        }
    }
    let mut file = tempfile::Builder::new()
        .prefix("baluchon-mariadb-")
        .tempfile()?;
    file.write_all(text.as_bytes())?;
    file.flush()?;
    Ok(file)
}

fn name(db: &Database) -> Result<&str, CaptureError> {
    db.name.as_deref().ok_or_else(|| CaptureError::Database {
        id: db.id.clone(),
        reason: "no database name".to_owned(),
    })
}

fn query(db: &Database, sql: &str) -> Result<Vec<String>, CaptureError> {
    let creds = credentials(db)?;
    let tool = Tool {
        id: db.id.clone(),
        name: "mariadb",
    };
    let out = tool.output(
        Command::new("mariadb")
            .arg(format!("--defaults-file={}", creds.path().display()))
            .args([
                "--connect-timeout=30",
                "--batch",
                "--skip-column-names",
                "--execute",
                sql,
                "--",
            ])
            .arg(name(db)?),
    )?;
    Ok(out
        .lines()
        .next()
        .unwrap_or("")
        .split('\t')
        .map(str::to_owned)
        .collect())
}

pub fn size(db: &Database) -> Result<u64, CaptureError> {
    let row = query(
        db,
        "SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables \
         WHERE table_schema = DATABASE()",
    )?;
    Ok(row.first().and_then(|v| v.parse().ok()).unwrap_or(0))
}

pub fn dump<'k>(
    writer: BundleWriter<'k>,
    db: &Database,
) -> Result<(BundleWriter<'k>, DatabaseDump), CaptureError> {
    let row = query(
        db,
        "SELECT VERSION(), @@character_set_database, @@collation_database",
    )?;
    // One transaction is a consistent snapshot of InnoDB tables only: with others (MyISAM,
    // Aria, …) in the database, a read lock on all its tables is, at the cost of making
    // the app's writes wait for the dump.
    let others = query(
        db,
        "SELECT COALESCE(GROUP_CONCAT(CONCAT(table_name, ' (', engine, ')') \
         ORDER BY table_name SEPARATOR ', '), '') FROM information_schema.tables \
         WHERE table_schema = DATABASE() AND table_type = 'BASE TABLE' AND engine <> 'InnoDB'",
    )?
    .join("");
    let (options, note) = if others.is_empty() {
        (DUMP_OPTIONS.to_vec(), None)
    } else {
        let mut options = DUMP_OPTIONS.to_vec();
        options[0] = "--lock-tables";
        let note = format!(
            "tables that take no part in transactions ({others}): dumped under a read lock on the database instead of in one transaction, so the app's writes waited"
        );
        (options, Some(note))
    };
    let creds = credentials(db)?;
    let tool = Tool {
        id: db.id.clone(),
        name: "mariadb-dump",
    };
    let payload = format!("data/db/{}.sql.zst", db.id);
    let (writer, _) = tool.stream_into(
        Command::new("mariadb-dump")
            .arg(format!("--defaults-file={}", creds.path().display()))
            .args(&options)
            .arg("--")
            .arg(name(db)?),
        writer,
        &payload,
        "application/sql+zstd",
    )?;
    Ok((
        writer,
        DatabaseDump {
            id: db.id.clone(),
            engine: db.engine,
            dump: payload,
            method: format!("mariadb-dump {} <name>", options.join(" ")),
            name: db.name.clone(),
            user: db.user.clone(),
            host: db.host.clone(),
            path: None,
            server_version: row.first().cloned().unwrap_or_default(),
            charset: row.get(1).cloned(),
            collation: row.get(2).cloned(),
            note,
        },
    ))
}
