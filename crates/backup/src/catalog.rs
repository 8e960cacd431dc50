//! The backups at a destination, named so that a listing alone says what they are.
//!
//! A backup is two objects: the bundle, `TENANT/YYYYMMDDTHHMMSS.mmmZ-BUNDLEID.baluchon`, then its
//! marker `….baluchon.sha256`, a `sha256sum` line written only once the bundle is stored
//! whole. A bundle without its marker is an upload that did not finish: it is never listed as
//! a backup. Keys are unique (the bundle id is random), so nothing relies on the store
//! refusing an overwrite; Garage, for one, ignores conditional writes.

use std::path::Path;

use baluchon_bundle::Progress;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

use crate::destination::{Destination, Object};
use crate::BackupError;

const BUNDLE_SUFFIX: &str = ".baluchon";
const MARKER_SUFFIX: &str = ".sha256";
/// To the millisecond: two backups of a tenant within a second still sort by time.
const TIME_FORMAT: &str = "%Y%m%dT%H%M%S%.3fZ";
const TIME_PARSE: &str = "%Y%m%dT%H%M%S%.fZ";

/// A complete backup: its bundle and its marker are both there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub tenant: String,
    /// When the bundle was made, to the second.
    pub created: Timestamp,
    pub bundle_id: String,
    /// The bundle's key at the destination.
    pub key: String,
    pub size: u64,
}

impl Backup {
    pub fn marker_key(&self) -> String {
        format!("{}{MARKER_SUFFIX}", self.key)
    }
}

/// What a destination holds.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// Complete backups, oldest first.
    pub backups: Vec<Backup>,
    /// Bundles without a marker, and objects that are not backups at all: left by
    /// interrupted runs, or by someone else.
    pub incomplete: Vec<Object>,
}

/// Tenant names as the bundle format allows them; they become a directory or key prefix.
pub fn check_tenant(tenant: &str) -> Result<(), BackupError> {
    let ok = !tenant.is_empty()
        && !tenant.starts_with('.')
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BackupError::Tenant {
            tenant: tenant.to_owned(),
        })
    }
}

/// The key of a tenant's bundle made at `created`.
pub fn bundle_key(
    tenant: &str,
    created: Timestamp,
    bundle_id: &str,
) -> Result<String, BackupError> {
    check_tenant(tenant)?;
    let time = created.to_zoned(TimeZone::UTC).strftime(TIME_FORMAT);
    Ok(format!("{tenant}/{time}-{bundle_id}{BUNDLE_SUFFIX}"))
}

/// Tenant, time and bundle id out of a bundle's key.
fn parse_bundle_key(key: &str) -> Option<(String, Timestamp, String)> {
    let (tenant, name) = key.split_once('/')?;
    let stem = name.strip_suffix(BUNDLE_SUFFIX)?;
    let (time, id) = stem.split_once('-')?;
    let created = DateTime::strptime(TIME_PARSE, time)
        .ok()?
        .to_zoned(TimeZone::UTC)
        .ok()?
        .timestamp();
    // A bundle id is a UUID: anything else (a `/` of a nested foreign object) is not ours.
    let uuid_like = !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    (check_tenant(tenant).is_ok() && uuid_like).then(|| (tenant.to_owned(), created, id.to_owned()))
}

/// The backups of `tenant` (or of every tenant) at `destination`.
pub fn list(destination: &Destination, tenant: Option<&str>) -> Result<Listing, BackupError> {
    let prefix = match tenant {
        Some(t) => {
            check_tenant(t)?;
            format!("{t}/")
        }
        None => String::new(),
    };
    let objects = destination.list(&prefix)?;
    let markers: std::collections::BTreeSet<&str> = objects
        .iter()
        .filter_map(|o| o.key.strip_suffix(MARKER_SUFFIX))
        .collect();
    let mut listing = Listing::default();
    for object in &objects {
        match parse_bundle_key(&object.key) {
            Some((tenant, created, bundle_id)) if markers.contains(object.key.as_str()) => {
                listing.backups.push(Backup {
                    tenant,
                    created,
                    bundle_id,
                    key: object.key.clone(),
                    size: object.size,
                });
            }
            Some(_) => listing.incomplete.push(object.clone()),
            None => {
                let is_marker = object
                    .key
                    .strip_suffix(MARKER_SUFFIX)
                    .is_some_and(|bundle| objects.iter().any(|o| o.key == bundle));
                if !is_marker {
                    listing.incomplete.push(object.clone());
                }
            }
        }
    }
    listing
        .backups
        .sort_by(|a, b| (a.created, &a.key).cmp(&(b.created, &b.key)));
    Ok(listing)
}

/// Stores the bundle file `local` as a backup of `tenant`: the bundle first, then its marker.
pub fn store(
    destination: &Destination,
    tenant: &str,
    created: Timestamp,
    bundle_id: &str,
    local: &Path,
    progress: &dyn Progress,
) -> Result<Backup, BackupError> {
    let key = bundle_key(tenant, created, bundle_id)?;
    let sha256 = sha256_file(local)?;
    let size = fs_err::metadata(local)?.len();
    destination.put_file(&key, local, progress)?;
    let backup = Backup {
        tenant: tenant.to_owned(),
        created,
        bundle_id: bundle_id.to_owned(),
        size,
        key,
    };
    let name = backup.key.rsplit('/').next().unwrap_or(&backup.key);
    destination.put_bytes(
        &backup.marker_key(),
        format!("{sha256}  {name}\n").as_bytes(),
    )?;
    Ok(backup)
}

/// Copies a backup's bundle into the new file `local`, and checks it against its marker.
/// The bundle's own signature and hashes are the caller's to check (it holds the trust).
pub fn fetch(
    destination: &Destination,
    backup: &Backup,
    local: &Path,
    progress: &dyn Progress,
) -> Result<(), BackupError> {
    let marker_key = backup.marker_key();
    let marker = destination.get_bytes(&marker_key)?;
    let name = backup.key.rsplit('/').next().unwrap_or(&backup.key);
    let expected = std::str::from_utf8(&marker)
        .ok()
        .and_then(|text| text.trim_end().split_once("  "))
        .filter(|(hash, file)| {
            *file == name && hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit())
        })
        .map(|(hash, _)| hash.to_ascii_lowercase())
        .ok_or_else(|| BackupError::Marker {
            destination: destination.to_string(),
            key: marker_key.clone(),
        })?;
    // Each backend creates `local` anew (an existing file is an error, and stays): a copy
    // cut short is removed, so that nothing is left that looks like the backup.
    let existed = fs_err::symlink_metadata(local).is_ok();
    if let Err(e) = destination.get(&backup.key, local, progress) {
        if !existed {
            let _ = fs_err::remove_file(local);
        }
        return Err(e);
    }
    let actual = sha256_file(local)?;
    if actual != expected {
        fs_err::remove_file(local)?;
        return Err(BackupError::Corrupted {
            destination: destination.to_string(),
            key: backup.key.clone(),
            expected,
            actual,
        });
    }
    Ok(())
}

/// Deletes a backup: its marker first, so that a deletion cut short leaves an incomplete
/// upload, never a listed backup without its bundle.
pub fn remove(destination: &Destination, backup: &Backup) -> Result<(), BackupError> {
    destination.delete(&backup.marker_key())?;
    destination.delete(&backup.key)
}

/// Deletes an object that is not part of a complete backup.
pub fn remove_incomplete(destination: &Destination, object: &Object) -> Result<(), BackupError> {
    destination.delete(&object.key)
}

/// How long an incomplete object goes unwritten before no upload is taken to be going on.
const ABANDONED_AFTER: SignedDuration = SignedDuration::from_hours(24);

/// How far ahead of this machine's clock a backup's time may be (the bundles' own clock
/// skew allowance): beyond, the clock that named it was wrong.
const FUTURE_TOLERANCE: SignedDuration = SignedDuration::from_hours(24);

/// Whether `backup` is named with a time well after `now`. Such a backup would rank newest
/// for ever: retention would then remove every real new one, and its age would never grow.
pub fn is_from_the_future(backup: &Backup, now: Timestamp) -> bool {
    backup.created.duration_since(now) > FUTURE_TOLERANCE
}

/// Whether an incomplete object was left by an upload of ours that stopped, so that
/// removing it touches neither an upload still going on nor what others store there.
/// Ours by its name: a bundle without its marker, a marker without its bundle, an SSH
/// destination's `KEY.part`, a directory destination's `.baluchon-upload.*`. Stopped by its
/// last write (by the destination's clock, against this machine's), not by the time in its
/// name: a temporary file's has none, and a slow upload can outlast the one a bundle's has.
pub fn is_abandoned(object: &Object, now: Timestamp) -> bool {
    let ours = [MARKER_SUFFIX, ".part", ""].iter().any(|suffix| {
        object
            .key
            .strip_suffix(suffix)
            .is_some_and(|key| parse_bundle_key(key).is_some())
    }) || object.key.split_once('/').is_some_and(|(tenant, name)| {
        check_tenant(tenant).is_ok() && name.starts_with(".baluchon-upload.")
    });
    ours && object
        .modified
        .is_some_and(|written| now.duration_since(written) > ABANDONED_AFTER)
}

fn sha256_file(path: &Path) -> Result<String, BackupError> {
    baluchon_transport::sha256_prefix(path, u64::MAX).map_err(|source| BackupError::Hash {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use baluchon_bundle::NoProgress;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    #[test]
    fn keys_say_tenant_time_and_id() {
        let key = bundle_key("shop", at("2026-11-25T03:17:09.5004Z"), "0b5e").unwrap();
        assert_eq!(key, "shop/20261125T031709.500Z-0b5e.baluchon");
        assert_eq!(
            parse_bundle_key(&key),
            Some(("shop".into(), at("2026-11-25T03:17:09.5Z"), "0b5e".into()))
        );
        assert!(bundle_key("../etc", at("2026-11-25T03:17:09Z"), "x").is_err());
        assert!(bundle_key(".hidden", at("2026-11-25T03:17:09Z"), "x").is_err());
        assert_eq!(parse_bundle_key("shop/.baluchon-upload.x"), None);
        assert_eq!(parse_bundle_key("shop/notes.txt"), None);
        // Someone else's object nested below a tenant (S3 lists recursively).
        assert_eq!(
            parse_bundle_key("shop/20261101T000000.000Z-x/y.baluchon"),
            None
        );
    }

    /// Only what our uploads leave is ever abandoned, and only once written a day ago.
    #[test]
    fn only_our_names_unwritten_for_a_day_are_abandoned() {
        let now = at("2026-11-26T12:00:00Z");
        let object = |key: &str, hours: i64| Object {
            key: key.to_owned(),
            size: 1,
            modified: Some(now - SignedDuration::from_hours(hours)),
        };
        for key in [
            "shop/20261101T000000.000Z-aa.baluchon",
            "shop/20261101T000000.000Z-aa.baluchon.sha256",
            "shop/20261101T000000.000Z-aa.baluchon.part",
            "shop/.baluchon-upload.Xy12Zq",
        ] {
            assert!(is_abandoned(&object(key, 25), now), "{key}");
            assert!(!is_abandoned(&object(key, 23), now), "{key}");
        }
        for key in [
            "shop/README",
            "shop/20261101T000000.000Z-aa.tar",
            "lost+found/.baluchon-upload.x",
        ] {
            assert!(!is_abandoned(&object(key, 25), now), "{key}");
        }
        let unknown = Object {
            modified: None,
            ..object("shop/20261101T000000.000Z-aa.baluchon", 0)
        };
        assert!(!is_abandoned(&unknown, now));
    }

    #[test]
    fn only_bundles_with_their_marker_are_backups() {
        let dir = tempfile::tempdir().unwrap();
        let dest = Destination::directory(dir.path().join("d"));
        let bundle = dir.path().join("b.baluchon");
        fs_err::write(&bundle, b"bundle bytes").unwrap();
        let first = store(
            &dest,
            "shop",
            at("2026-11-24T03:00:00Z"),
            "aa",
            &bundle,
            &NoProgress,
        )
        .unwrap();
        // An upload that stopped after the bundle, before the marker.
        dest.put_bytes("shop/20261125T030000.000Z-bb.baluchon", b"half")
            .unwrap();
        let listing = list(&dest, Some("shop")).unwrap();
        assert_eq!(listing.backups, std::slice::from_ref(&first));
        assert_eq!(listing.incomplete.len(), 1);
        // Judged by its last write, not by the time in its name.
        let written = listing.incomplete[0].modified.unwrap();
        assert!(!is_abandoned(
            &listing.incomplete[0],
            written + SignedDuration::from_hours(23)
        ));
        assert!(is_abandoned(
            &listing.incomplete[0],
            written + SignedDuration::from_hours(25)
        ));
        // A line `sha256sum -c` checks, from inside the tenant's directory.
        assert_eq!(
            fs_err::read_to_string(
                dir.path()
                    .join("d/shop/20261124T030000.000Z-aa.baluchon.sha256")
            )
            .unwrap(),
            format!(
                "{}  20261124T030000.000Z-aa.baluchon\n",
                sha256_file(&bundle).unwrap()
            )
        );

        let copy = dir.path().join("copy");
        fetch(&dest, &first, &copy, &NoProgress).unwrap();
        assert_eq!(fs_err::read(&copy).unwrap(), b"bundle bytes");

        // A bundle changed at rest no longer matches its marker.
        fs_err::write(dir.path().join("d").join(&first.key), b"bundle bytez").unwrap();
        let copy2 = dir.path().join("copy2");
        let err = fetch(&dest, &first, &copy2, &NoProgress).unwrap_err();
        assert!(matches!(err, BackupError::Corrupted { .. }), "{err}");
        assert!(!copy2.exists());

        remove(&dest, &first).unwrap();
        assert!(list(&dest, None).unwrap().backups.is_empty());
    }
}
