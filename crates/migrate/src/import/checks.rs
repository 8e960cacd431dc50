//! What a staged bundle's service configs and links may not do on this host.

use std::path::{Path, PathBuf};

use super::plan::Planner;
use crate::error::ImportError;

impl Planner<'_> {
    /// A PHP-FPM pool runs the tenant's PHP as its `user`: never root, and only as an
    /// account this host has.
    pub(super) fn check_pool(&mut self, staged: &Path) {
        let text = match staged_text(staged) {
            Ok(text) => text,
            Err(reason) => return self.blockers.push(reason),
        };
        let accounts = fs_err::read_to_string("/etc/passwd").unwrap_or_default();
        let groups = fs_err::read_to_string("/etc/group").unwrap_or_default();
        for problem in pool_problems(&text, &accounts, &groups, &self.new_accounts) {
            self.blockers
                .push(format!("the PHP-FPM pool {}: {problem}", staged.display()));
        }
    }

    /// An nginx site from a bundle may serve and log only where an app's files are: the
    /// master runs as root, and opens log files before dropping privileges.
    pub(super) fn check_nginx_site(&mut self, staged: &Path) {
        let text = match staged_text(staged) {
            Ok(text) => text,
            Err(reason) => return self.blockers.push(reason),
        };
        for problem in nginx_site_problems(&text) {
            self.blockers
                .push(format!("the nginx site {}: {problem}", staged.display()));
        }
    }

    /// Links in the staged tree may point into the app's own files or into packaged code
    /// under /usr/share, nowhere else: a link to another tenant's config in a web-served
    /// directory would publish it. Links to a renamed path follow the rename.
    pub(super) fn check_symlinks(
        &mut self,
        sets: &[crate::description::FileSetRecord],
        renamed: &[(PathBuf, PathBuf)],
    ) -> Result<Vec<(PathBuf, PathBuf)>, ImportError> {
        let mut retargets = Vec::new();
        // Packaged code is under /usr/share/<package>; where it leads on this host (a
        // package may link into /etc) must still be packaged code or the app's files.
        let packaged: Vec<PathBuf> = self
            .recipe
            .definition()
            .packages
            .code
            .iter()
            .map(|p| Path::new("/usr/share").join(p))
            .collect();
        let in_sets = |target: &Path| {
            sets.iter().any(|s| target.starts_with(&s.path))
                || renamed.iter().any(|(_, to)| target.starts_with(to))
        };
        let allowed = |target: &Path| {
            in_sets(target)
                || (packaged.iter().any(|p| target.starts_with(p))
                    && fs_err::canonicalize(target).map_or(true, |real| {
                        packaged.iter().any(|p| real.starts_with(p)) || in_sets(&real)
                    }))
        };
        let mut stack = vec![self.tree.to_owned()];
        while let Some(dir) = stack.pop() {
            for entry in fs_err::read_dir(&dir)? {
                let entry = entry?;
                let path = entry.path();
                let kind = entry.file_type()?;
                if kind.is_dir() {
                    stack.push(path);
                    continue;
                }
                if !kind.is_symlink() {
                    continue;
                }
                let link = Path::new("/").join(path.strip_prefix(self.tree).unwrap_or(&path));
                let target = fs_err::read_link(&path)?;
                // The kernel follows a link met on the way before applying `..`: a target
                // that passes through another of the bundle's links could lead anywhere
                // while looking, on paper, like it stays inside.
                if let Some(through) = passes_through_staged_link(self.tree, &link, &target) {
                    self.blockers.push(format!(
                        "the link {} points to {} through the link {}",
                        link.display(),
                        target.display(),
                        through.display()
                    ));
                    continue;
                }
                let absolute = normalize(&link.parent().unwrap_or(Path::new("/")).join(&target));
                if let Some((from, to)) =
                    renamed.iter().find(|(from, _)| absolute.starts_with(from))
                {
                    let rest = absolute.strip_prefix(from).unwrap_or(Path::new(""));
                    let new_target = if rest.as_os_str().is_empty() {
                        to.clone()
                    } else {
                        to.join(rest)
                    };
                    retargets.push((path.clone(), new_target));
                    continue;
                }
                if !allowed(&absolute) {
                    self.blockers.push(format!(
                        "the link {} points to {}, outside the app's files and packaged code",
                        link.display(),
                        target.display()
                    ));
                }
            }
        }
        Ok(retargets)
    }
}

/// What a PHP-FPM pool from a bundle may not do. `accounts` and `groups` are the host's
/// /etc/passwd and /etc/group; `new_accounts` are those the import creates.
fn pool_problems(text: &str, accounts: &str, groups: &str, new_accounts: &[String]) -> Vec<String> {
    let id_of = |table: &str, name: &str| -> Option<u32> {
        table
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|id| id.parse().ok())
    };
    let mut problems = Vec::new();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        // PHP-FPM reads keys without regard to case.
        let key = key.trim().to_ascii_lowercase();
        let value = value.trim().trim_matches('"');
        if key.starts_with(';') || key.starts_with('#') {
            continue;
        }
        let refused = match key.as_str() {
            // Files the master (root) would open or write where the bundle says.
            "include" | "access.log" | "access.format" | "slowlog" | "chroot" | "prefix" => {
                Some("a directive a bundle may not set".to_owned())
            }
            _ if key.contains("error_log")
                || key.contains("auto_prepend_file")
                || key.contains("auto_append_file") =>
            {
                Some("a directive a bundle may not set".to_owned())
            }
            "user" | "group" => {
                let table = if key == "user" { accounts } else { groups };
                let new = new_accounts.iter().any(|a| a == value);
                match id_of(table, value) {
                    // The web server's account, a regular (tenant) account, or one this
                    // import creates; never root nor another system account.
                    _ if value == "www-data" || new => None,
                    Some(id) if id >= 1000 && id != 65534 => None,
                    Some(_) => Some(format!("{key} {value}, a system account")),
                    None => Some(format!("{key} {value}, an account this host does not have")),
                }
            }
            _ => None,
        };
        if let Some(why) = refused {
            problems.push(format!("{} ({why})", line.trim()));
        }
    }
    problems
}

/// What an nginx site from a bundle may not do.
fn nginx_site_problems(text: &str) -> Vec<String> {
    let served = ["/usr/share/", "/var/lib/", "/srv/", "/var/www/"];
    let code = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut problems = Vec::new();
    for statement in code.split([';', '{', '}']) {
        let words: Vec<&str> = statement
            .split_whitespace()
            .map(|w| w.trim_matches(|c| c == '"' || c == '\''))
            .collect();
        let Some((directive, args)) = words.split_first() else {
            continue;
        };
        let first = args.first().copied().unwrap_or("");
        let refused = match *directive {
            "load_module" | "perl" | "perl_modules" | "js_import" | "lua_package_path" => true,
            "access_log" | "error_log" => {
                !(first == "off" || first.starts_with("syslog:") || first.starts_with("/var/log/"))
                    || first.contains("..")
            }
            "include" => {
                first.starts_with('/') && !first.starts_with("/etc/nginx/") || first.contains("..")
            }
            "root" | "alias" => {
                !served.iter().any(|p| first.starts_with(p)) || first.contains("..")
            }
            _ => false,
        };
        if refused {
            problems.push(format!(
                "`{}` is not allowed from a bundle",
                words.join(" ")
            ));
        }
    }
    problems
}

/// A staged text file, read without following a link; the reason as a blocker otherwise.
fn staged_text(staged: &Path) -> Result<String, String> {
    let unreadable = |why: String| format!("{}: {why}", staged.display());
    let meta = fs_err::symlink_metadata(staged).map_err(|e| unreadable(e.to_string()))?;
    if !meta.is_file() {
        return Err(unreadable("not a regular file in the bundle".to_owned()));
    }
    let bytes = fs_err::read(staged).map_err(|e| unreadable(e.to_string()))?;
    String::from_utf8(bytes).map_err(|_| unreadable("not UTF-8 text".to_owned()))
}

/// The first of the staged tree's links that resolving `target` from `link`'s directory
/// would go through (before its last component), if any.
fn passes_through_staged_link(tree: &Path, link: &Path, target: &Path) -> Option<PathBuf> {
    let mut at = if target.is_absolute() {
        PathBuf::from("/")
    } else {
        link.parent().unwrap_or(Path::new("/")).to_owned()
    };
    let parts: Vec<_> = target.components().collect();
    for (i, part) in parts.iter().enumerate() {
        match part {
            std::path::Component::ParentDir => {
                at.pop();
            }
            std::path::Component::Normal(name) => {
                at.push(name);
                let staged = tree.join(at.strip_prefix("/").unwrap_or(&at));
                let last = i + 1 == parts.len();
                if !last
                    && fs_err::symlink_metadata(&staged).is_ok_and(|m| m.file_type().is_symlink())
                {
                    return Some(at);
                }
            }
            _ => {}
        }
    }
    None
}

/// `path` with `.` and `..` resolved lexically (links are not followed: they are data).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::Normal(p) => out.push(p),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_through_another_link_is_found() {
        let tree = tempfile::tempdir().unwrap();
        let dir = tree.path().join("var/lib/app/a/b");
        fs_err::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink("/usr/share/app/x", dir.join("t2")).unwrap();
        let link = Path::new("/var/lib/app/a/b/esc");
        // On paper var/lib/app/a/b/t2/../../c stays inside; the kernel follows t2 first.
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("t2/../../c")),
            Some(PathBuf::from("/var/lib/app/a/b/t2"))
        );
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("t2")),
            None
        );
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("../b/file")),
            None
        );
        assert_eq!(
            passes_through_staged_link(tree.path(), link, Path::new("/var/lib/app/a/b/t2/etc")),
            Some(PathBuf::from("/var/lib/app/a/b/t2"))
        );
    }

    #[test]
    fn nginx_sites_may_not_log_include_or_serve_outside_the_apps() {
        let fine =
            "server {\n listen 127.0.0.1:80;\n server_name a.test;\n root /usr/share/wordpress;\n\
                    location /wp-content/ { alias /var/lib/wordpress/wp-content/; }\n\
                    include snippets/fastcgi-php.conf;\n access_log /var/log/nginx/a.log;\n\
                    # access_log /etc/cron.d/commented;\n}\n";
        assert_eq!(nginx_site_problems(fine), Vec::<String>::new());
        for bad in [
            "access_log /etc/cron.d/x;",
            "error_log /var/log/../../etc/cron.d/x;",
            "load_module /tmp/evil.so;",
            "include /var/lib/wordpress/wp-content/uploads/x.conf;",
            "root /etc;",
            "location / { alias '/root/'; }",
        ] {
            assert_eq!(nginx_site_problems(bad).len(), 1, "{bad}");
        }
    }

    #[test]
    fn pools_run_as_the_web_server_or_a_tenant_account_only() {
        let accounts = "root:x:0:0::/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n\
                        postgres:x:106:112::/var/lib/postgresql:/bin/bash\ntenant:x:1001:1001::/home/tenant:/bin/sh\n";
        let groups = "root:x:0:\nwww-data:x:33:\nshadow:x:42:\ntenant:x:1001:\n";
        let pool = |body: &str| {
            pool_problems(
                &format!("[site]\n{body}\nlisten = /run/php/x.sock\n"),
                accounts,
                groups,
                &["newone".to_owned()],
            )
        };
        assert!(pool("user = www-data\ngroup = www-data").is_empty());
        assert!(pool("user = tenant\ngroup = tenant").is_empty());
        assert!(pool("user = newone").is_empty());
        for bad in [
            "user = root",
            "User = root",
            "user = postgres",
            "group = shadow",
            "user = nobody-here",
            "include = /var/lib/wordpress/wp-content/uploads/x.conf",
            "access.log = /etc/cron.d/x",
            "php_admin_value[error_log] = /etc/cron.d/x",
            "php_value[auto_prepend_file] = /tmp/x.php",
        ] {
            assert_eq!(pool(bad).len(), 1, "{bad}");
        }
        assert!(pool("; user = root").is_empty(), "comments are ignored");
    }
}
