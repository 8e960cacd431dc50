//! Collectors: each streams one database into the bundle as a payload file, and says how
//! it was made.

mod mariadb;
mod postgres;
mod process;
mod sqlite;

use std::path::Path;

use baluchon_bundle::BundleWriter;
use baluchon_recipe::{Database, Engine};

use crate::description::DatabaseDump;
use crate::error::CaptureError;

/// Dumps `db` into the bundle being written; the writer is consumed on error, so that no
/// bundle with a partial dump can be sealed.
pub fn dump<'k>(
    writer: BundleWriter<'k>,
    db: &Database,
    scratch: &Path,
) -> Result<(BundleWriter<'k>, DatabaseDump), CaptureError> {
    match db.engine {
        Engine::Mariadb => mariadb::dump(writer, db),
        Engine::Postgresql => postgres::dump(writer, db),
        Engine::Sqlite => sqlite::dump(writer, db, scratch),
    }
}

/// An estimate of the dump's size in bytes, and a check that the database is reachable
/// with the app's own credentials.
pub fn size(db: &Database) -> Result<u64, CaptureError> {
    match db.engine {
        Engine::Mariadb => mariadb::size(db),
        Engine::Postgresql => postgres::size(db),
        Engine::Sqlite => sqlite::size(db),
    }
}
