//! Undoing an import from its journal, and finishing one that was killed.

use std::path::Path;

use super::apply::write_imported;
use super::journal::Journal;
use super::{host, lock, place, tenant_dir, Change, Imported};
use crate::error::ImportError;

/// Undoes every change a journal records, newest first, then reloads the services on the
/// restored configs if the import had reloaded them. Keeps going after an error, so as
/// much as possible is restored, and returns the first error. Removes the journal when
/// everything was undone.
pub(super) fn roll_back(journal_path: &Path) -> Result<usize, ImportError> {
    let changes = Journal::read(journal_path)?;
    let mut first_error = None;
    let mut reloads = None;
    let mut not_made = false;
    for change in changes.iter().rev() {
        // A change followed by `NotMade` never happened: what is there is not ours.
        if std::mem::take(&mut not_made) {
            continue;
        }
        if change == &Change::NotMade {
            not_made = true;
            continue;
        }
        let undone = match change {
            Change::Created { .. } | Change::MovedAside { .. } => place::undo_file_change(change),
            Change::MariadbUser { name } => {
                host::mariadb_admin(&format!("DROP USER IF EXISTS '{name}'@'localhost'"))
                    .map(|_| ())
            }
            Change::MariadbDatabase { name } => {
                host::mariadb_admin(&format!("DROP DATABASE IF EXISTS `{name}`")).map(|_| ())
            }
            Change::PostgresDatabase { name } => {
                host::postgres_admin(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .map(|_| ())
            }
            Change::PostgresRole { name } => {
                host::postgres_admin(&format!("DROP ROLE IF EXISTS \"{name}\"")).map(|_| ())
            }
            Change::UserCreated { name } => host::run(
                "userdel",
                std::process::Command::new("userdel").args(["--", name]),
            )
            .map(|_| ())
            .or_else(|e| {
                if host::account_id("passwd", name).is_err() {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
            Change::GroupCreated { name } => host::run(
                "groupdel",
                std::process::Command::new("groupdel").args(["--", name]),
            )
            .map(|_| ())
            .or_else(|e| {
                if host::account_id("group", name).is_err() {
                    Ok(())
                } else {
                    Err(e)
                }
            }),
            Change::PackagesInstalled { packages } => host::run(
                "apt-get purge",
                std::process::Command::new("apt-get")
                    .args(["purge", "-y", "-q"])
                    .args(host::WAIT_FOR_DPKG_LOCK)
                    .args(packages)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
            .map(|_| ()),
            Change::ServicesReloaded { commands } => {
                reloads = Some(commands.clone());
                Ok(())
            }
            Change::Begin { .. } | Change::Commit | Change::NotMade => Ok(()),
        };
        if let Err(e) = undone {
            first_error.get_or_insert(e);
        }
    }
    if let Some(commands) = reloads {
        // Like the apply's, it waits for nginx's workers of the import's configuration.
        if let Err(e) = host::reload(&commands) {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            fs_err::remove_file(journal_path)?;
            Ok(changes.len())
        }
    }
}

/// Finishes what a killed import left: rolled back if it had not committed, completed if
/// it had. `None` if there was nothing to recover. The caller holds the tenant's lock.
pub(super) fn recover_locked(dir: &Path) -> Result<Option<String>, ImportError> {
    let journal = dir.join("journal.jsonl");
    if !journal.exists() {
        return Ok(None);
    }
    let changes = Journal::read(&journal)?;
    let begin = changes.iter().find_map(|c| match c {
        Change::Begin {
            bundle_id,
            sequence,
            instance,
            signer,
            claimed,
        } => Some(Imported {
            bundle_id: bundle_id.clone(),
            sequence: *sequence,
            instance: instance.clone(),
            signer: signer.clone(),
            claimed: claimed.clone(),
        }),
        _ => None,
    });
    let staging = dir.join("staging");
    let message = if changes.contains(&Change::Commit) {
        if let Some(record) = &begin {
            write_imported(dir, record)?;
        }
        fs_err::remove_file(&journal)?;
        format!(
            "an interrupted import of bundle {} had committed: it is complete",
            begin.map_or_else(|| "?".to_owned(), |b| b.bundle_id)
        )
    } else {
        let undone = roll_back(&journal)?;
        format!(
            "an interrupted import of bundle {} was rolled back ({undone} journal records undone)",
            begin.map_or_else(|| "?".to_owned(), |b| b.bundle_id)
        )
    };
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    Ok(Some(message))
}

/// Recovers an interrupted import of `tenant` (see [`prepare_import`], which does it too).
pub fn recover(work_dir: &Path, tenant: &str) -> Result<Option<String>, ImportError> {
    let dir = tenant_dir(work_dir, tenant);
    if !dir.exists() {
        return Ok(None);
    }
    let _lock = lock(&dir, tenant)?;
    recover_locked(&dir)
}
