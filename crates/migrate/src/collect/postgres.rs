//! PostgreSQL: `pg_dump -Fc`, which reads the whole database in one snapshot, with the
//! app's own role.

use std::io::Write;
use std::process::Command;

use baluchon_bundle::BundleWriter;
use baluchon_recipe::Database;

use super::process::{refuse_control_chars, Tool};
use crate::description::DatabaseDump;
use crate::error::CaptureError;

/// Custom format for `pg_restore`; its own compression off, since the bundle compresses
/// with zstd (one codec for every payload, and a better ratio).
const DUMP_OPTIONS: [&str; 3] = ["--format=custom", "--compress=0", "--no-password"];

/// Connection settings as environment, the password in a 0600 `PGPASSFILE`.
fn connect(db: &Database, command: &mut Command) -> Result<tempfile::NamedTempFile, CaptureError> {
    let mut passfile = tempfile::Builder::new()
        .prefix("baluchon-pgpass-")
        .tempfile()?;
    let escape = |v: &str| v.replace('\\', "\\\\").replace(':', "\\:");
    if let Some(password) = &db.password {
        refuse_control_chars(&db.id, "password", &password.text)?;
        writeln!(passfile, "*:*:*:*:{}", escape(&password.text))?;
        passfile.flush()?;
    }
    command.env("PGPASSFILE", passfile.path());
    // A server that never answers must not hang the export.
    command.env("PGCONNECT_TIMEOUT", "30");
    command.env_remove("PGPASSWORD");
    match db.host.as_deref() {
        Some(host) => {
            refuse_control_chars(&db.id, "host", host)?;
            match host.rsplit_once(':') {
                Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => {
                    command.env("PGHOST", h).env("PGPORT", port);
                }
                _ => {
                    command.env("PGHOST", host);
                }
            }
        }
        None => {
            command.env_remove("PGHOST");
        }
    }
    if let Some(user) = &db.user {
        command.env("PGUSER", user);
    }
    let name = db.name.as_deref().ok_or_else(|| CaptureError::Database {
        id: db.id.clone(),
        reason: "no database name".to_owned(),
    })?;
    command.env("PGDATABASE", name);
    Ok(passfile)
}

fn query(db: &Database, sql: &str) -> Result<String, CaptureError> {
    let mut command = Command::new("psql");
    command.args([
        "--no-psqlrc",
        "--no-password",
        "--tuples-only",
        "--no-align",
        "--command",
        sql,
    ]);
    let _passfile = connect(db, &mut command)?;
    let tool = Tool {
        id: db.id.clone(),
        name: "psql",
    };
    Ok(tool.output(&mut command)?.trim().to_owned())
}

pub fn size(db: &Database) -> Result<u64, CaptureError> {
    Ok(query(db, "SELECT pg_database_size(current_database())")?
        .parse()
        .unwrap_or(0))
}

pub fn dump<'k>(
    writer: BundleWriter<'k>,
    db: &Database,
) -> Result<(BundleWriter<'k>, DatabaseDump), CaptureError> {
    let facts = query(
        db,
        "SELECT current_setting('server_version') || '|' || pg_encoding_to_char(encoding) \
         || '|' || datcollate FROM pg_database WHERE datname = current_database()",
    )?;
    let mut facts = facts.split('|').map(str::to_owned);
    let mut command = Command::new("pg_dump");
    command.args(DUMP_OPTIONS);
    let _passfile = connect(db, &mut command)?;
    let tool = Tool {
        id: db.id.clone(),
        name: "pg_dump",
    };
    let payload = format!("data/db/{}.pgdump.zst", db.id);
    let (writer, _) = tool.stream_into(
        &mut command,
        writer,
        &payload,
        "application/vnd.postgresql.custom-dump+zstd",
    )?;
    Ok((
        writer,
        DatabaseDump {
            id: db.id.clone(),
            engine: db.engine,
            dump: payload,
            method: format!("pg_dump {}", DUMP_OPTIONS.join(" ")),
            name: db.name.clone(),
            user: db.user.clone(),
            host: db.host.clone(),
            path: None,
            server_version: facts.next().unwrap_or_default(),
            charset: facts.next(),
            collation: facts.next(),
            note: None,
        },
    ))
}
