//! dpkg's database, read as files: the status file for versions, and `info/<pkg>.list` and
//! `.md5sums` for which files a package installed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const STATUS_FILE: &str = "/var/lib/dpkg/status";
pub const INFO_DIR: &str = "/var/lib/dpkg/info";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct InstalledPackage {
    pub name: String,
    pub version: String,
    pub architecture: String,
}

/// Packages whose status is "install ok installed", from the text of dpkg's status file.
pub fn installed(status: &str) -> BTreeMap<String, InstalledPackage> {
    let mut out = BTreeMap::new();
    for stanza in status.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut arch = None;
        let mut ok = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Architecture: ") {
                arch = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                ok = v.trim() == "install ok installed";
            }
        }
        if let (true, Some(name), Some(version)) = (ok, name, version) {
            out.insert(
                name.to_owned(),
                InstalledPackage {
                    name: name.to_owned(),
                    version: version.to_owned(),
                    architecture: arch.unwrap_or("").to_owned(),
                },
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_packages_only() {
        let status = "Package: wordpress\nStatus: install ok installed\nArchitecture: all\n\
                      Version: 6.1.9+dfsg1-0+deb12u1\nDescription: x\n continued\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n";
        let p = installed(status);
        assert_eq!(p.len(), 1);
        assert_eq!(p["wordpress"].version, "6.1.9+dfsg1-0+deb12u1");
        assert_eq!(p["wordpress"].architecture, "all");
    }
}
