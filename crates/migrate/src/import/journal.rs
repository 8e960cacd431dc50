//! The write-ahead journal of an app import: each change to the host is recorded (and
//! synced) before it is made, with what undoes it. Undoing is idempotent, so a run killed
//! at any point is rolled back by the next one from the journal alone.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ImportError;

/// One change to the host, as recorded before it is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "kebab-case")]
pub enum Change {
    /// The import started: which bundle, and the instance it makes (for `imported.json`
    /// when a recovery completes a committed import).
    Begin {
        bundle_id: String,
        sequence: u64,
        instance: String,
        #[serde(default)]
        signer: Option<String>,
        #[serde(default)]
        claimed: Vec<PathBuf>,
    },
    PackagesInstalled {
        packages: Vec<String>,
    },
    GroupCreated {
        name: String,
    },
    UserCreated {
        name: String,
    },
    MariadbDatabase {
        name: String,
    },
    MariadbUser {
        name: String,
    },
    PostgresDatabase {
        name: String,
    },
    PostgresRole {
        name: String,
    },
    /// A path that did not exist was created (a file, a link or an empty directory).
    Created {
        path: PathBuf,
    },
    /// An existing path was moved to `kept` to make room.
    MovedAside {
        path: PathBuf,
        kept: PathBuf,
    },
    /// The change recorded just before this was not made: what it would have created
    /// already existed (so it is not ours to undo).
    NotMade,
    ServicesReloaded {
        commands: Vec<Vec<String>>,
    },
    /// The import is complete: nothing is undone after this line.
    Commit,
}

/// The journal file of one tenant's import.
#[derive(Debug)]
pub struct Journal {
    file: fs_err::File,
}

impl Journal {
    /// Starts a new journal; fails if one exists (an unfinished import must be recovered).
    pub fn create(path: &Path) -> Result<Self, ImportError> {
        let file = fs_err::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Self { file })
    }

    /// Records `change` durably; the caller makes the change only after this returns.
    pub fn record(&mut self, change: &Change) -> Result<(), ImportError> {
        let mut line = serde_json::to_vec(change).map_err(std::io::Error::other)?;
        line.push(b'\n');
        self.file.write_all(&line)?;
        self.file.sync_data()?;
        Ok(())
    }

    /// The changes recorded in an existing journal, in order. A torn last line (the
    /// process died while writing it) is ignored: its change was never made.
    pub fn read(path: &Path) -> Result<Vec<Change>, ImportError> {
        let file = fs_err::File::open(path)?;
        let mut changes = Vec::new();
        let lines: Vec<Vec<u8>> = std::io::BufReader::new(file)
            .split(b'\n')
            .collect::<Result<_, _>>()?;
        let count = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            match serde_json::from_slice(&line) {
                Ok(change) => changes.push(change),
                Err(_) if i + 1 == count => {}
                Err(e) => {
                    return Err(ImportError::Journal {
                        path: path.to_owned(),
                        reason: format!("line {}: {e}", i + 1),
                    })
                }
            }
        }
        Ok(changes)
    }
}
