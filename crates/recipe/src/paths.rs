//! Which host paths a recipe may read or capture.

use std::path::{Component, Path};

/// Roots under which app files may live. A recipe path must lie strictly below one of them
/// once its placeholders are filled, so a value read from a tenant's config cannot widen an
/// export to `/`, to `/etc` as a whole, or to another system area.
pub const ALLOWED_ROOTS: [&str; 9] = [
    "/etc",
    "/home",
    "/opt",
    "/run/php",
    "/srv",
    "/usr/local",
    "/var/lib",
    "/var/spool/cron",
    "/var/www",
];

/// Paths no recipe may name, whatever root they are under: host credentials, the
/// database servers' own files, and what tells baluchon how to treat a host.
const FORBIDDEN: [&str; 12] = [
    "/etc/shadow",
    "/etc/gshadow",
    "/etc/ssh",
    "/etc/sudoers",
    "/etc/sudoers.d",
    "/etc/ssl/private",
    "/etc/letsencrypt",
    "/etc/mysql",
    "/var/lib/baluchon",
    "/var/lib/mysql",
    "/var/lib/postgresql",
    "/etc/postgresql",
];

const BALUCHON_DIR: &str = "/etc/baluchon";
const CUSTOM_INSTANCES_DIR: &str = "/etc/baluchon/custom";

/// `Ok` if `path` is absolute, has no `.`/`..` component, lies strictly below an allowed
/// root and is not a host credential; otherwise the reason.
pub fn check_allowed(path: &str) -> Result<(), String> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err("is not absolute".to_owned());
    }
    if p.components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || path.contains("//")
    {
        return Err("has a '.', '..' or empty component".to_owned());
    }
    // baluchon's own settings hold the host's signing key and storage credentials; only
    // the custom apps' instance files there belong to an app.
    let baluchons_own = p.starts_with(BALUCHON_DIR) && !p.starts_with(CUSTOM_INSTANCES_DIR);
    if baluchons_own || FORBIDDEN.iter().any(|f| p.starts_with(f)) {
        return Err("is a host credential or system file, which no recipe may capture".to_owned());
    }
    let below_root = ALLOWED_ROOTS
        .iter()
        .any(|root| p.starts_with(root) && p != Path::new(root));
    if below_root {
        Ok(())
    } else {
        Err(format!(
            "is outside the allowed roots (strictly below one of {})",
            ALLOWED_ROOTS.join(", ")
        ))
    }
}

/// `Ok` if `within` is empty or `path` lies in one of its directories.
pub fn check_within(path: &Path, within: &[String]) -> Result<(), String> {
    if within.is_empty() || within.iter().any(|w| path.starts_with(w)) {
        Ok(())
    } else {
        Err(format!("is not within {}", within.join(" or ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_strictly_below_a_root_are_allowed() {
        assert!(check_allowed("/etc/wordpress/config-a.php").is_ok());
        assert!(check_allowed("/var/lib/dokuwiki/data").is_ok());
        assert!(check_allowed("/etc/baluchon/custom/crm.toml").is_ok());
        for bad in [
            "/etc/baluchon/sign_ed25519",
            "/etc/baluchon/backup.env",
            "/etc/baluchon/recipes/x.toml",
            "/etc/baluchon/customer",
            "/etc",
            "/",
            "relative/path",
            "/var/lib/../../root",
            "/root/.ssh",
            "/etc/shadow",
            "/etc/ssh/ssh_host_ed25519_key",
            "/usr/share/wordpress",
            "/var/lib//x",
        ] {
            assert!(check_allowed(bad).is_err(), "{bad} was allowed");
        }
    }
}
