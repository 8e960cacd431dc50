//! What a staged bundle's service configs and links may not do on this host.

use std::path::{Path, PathBuf};

use baluchon_recipe::ServiceKind;

use super::plan::Planner;
use crate::error::ImportError;

/// Where nginx and PHP-FPM read their configuration: each file placed there is loaded by a
/// service running as root, so it must be one of the bundle's checked sites or pools, or a
/// link to one.
const SERVICE_CONFIG_DIRS: [&str; 2] = ["/etc/nginx", "/etc/php"];

/// Whether nginx or PHP-FPM may load a file placed at `path`.
pub(super) fn read_by_a_service(path: &Path) -> bool {
    SERVICE_CONFIG_DIRS.iter().any(|dir| path.starts_with(dir))
}

/// Where a service's own file may go, whatever the recipe allows (the bundle's values name
/// the path, and a "site" put in /etc/cron.d would be a root job): a site in
/// sites-available or conf.d, a pool in a PHP version's pool.d.
pub(super) fn service_file_place(kind: ServiceKind, path: &str) -> Result<(), String> {
    let path = Path::new(path);
    let parent = path.parent().unwrap_or(Path::new("/"));
    let (fits, place) = match kind {
        ServiceKind::NginxSite => (
            ["/etc/nginx/sites-available", "/etc/nginx/conf.d"]
                .iter()
                .any(|dir| parent == Path::new(dir)),
            "/etc/nginx/sites-available or /etc/nginx/conf.d",
        ),
        ServiceKind::PhpFpmPool => (
            parent.starts_with("/etc/php")
                && parent.components().count() == 6
                && parent.ends_with("fpm/pool.d"),
            "/etc/php/VERSION/fpm/pool.d",
        ),
        // Never installed (see the plan).
        ServiceKind::Cron | ServiceKind::SystemdUnit => (true, ""),
    };
    if fits {
        Ok(())
    } else {
        Err(format!("is not in {place}, where a {kind} goes"))
    }
}

impl Planner<'_> {
    /// The bundle's PHP-FPM pools and nginx sites, each `(staged copy, destination)`: what
    /// they may do, and what of this host's own pools and sites they may not take over.
    /// The staged text is the bundle's, before the domain is renamed in it (`domain_to`).
    pub(super) fn check_services(
        &mut self,
        pools: &[(PathBuf, PathBuf)],
        sites: &[(PathBuf, PathBuf)],
        domain_to: &str,
        php: Option<&super::plan::PhpChange>,
    ) {
        // The staged text names the bundle's PHP version; this host's pools, the new one.
        let renamed = |text: &str| php.map_or_else(|| text.to_owned(), |p| p.rename(text));
        let ours: Vec<&Path> = pools
            .iter()
            .chain(sites)
            .map(|(_, to)| to.as_path())
            .collect();
        let host = HostWeb::read(&ours);
        for (site, reason) in &host.unreadable {
            self.warnings.push(format!(
                "this host's nginx site {} could not be read ({reason}): the names it answers for are not compared with the bundle's",
                site.display()
            ));
        }
        let accounts = fs_err::read_to_string("/etc/passwd").unwrap_or_default();
        let groups = fs_err::read_to_string("/etc/group").unwrap_or_default();
        let allowed: Vec<String> = self
            .new_accounts
            .iter()
            .chain(&self.options.allowed_accounts)
            .cloned()
            .collect();
        // PHP reached through a pool that runs as the web server's account, or through the
        // bundle's own pools (whose accounts are checked here), runs as no other tenant.
        let mut sockets: Vec<String> = host
            .pools
            .iter()
            .filter(|p| p.user.as_deref() == Some(WEB_SERVER_ACCOUNT))
            .flat_map(|p| p.addresses())
            .collect();
        for (staged, _) in pools {
            let Some(text) = self.staged_text(staged) else {
                continue;
            };
            let mut problems = pool_problems(&text, &accounts, &groups, &allowed);
            for mut pool in pool_sections(&text) {
                pool.listen = pool.listen.as_deref().map(renamed);
                if let Some(other) = host
                    .pools
                    .iter()
                    .find(|p| p.listen == pool.listen && p.listen.is_some())
                {
                    problems.push(format!(
                        "[{}] listens on {}, the socket of this host's pool [{}] in {}",
                        pool.name,
                        pool.listen.as_deref().unwrap_or_default(),
                        other.name,
                        other.file.display()
                    ));
                }
                sockets.extend(pool.addresses());
            }
            for problem in problems {
                self.blockers
                    .push(format!("the PHP-FPM pool {}: {problem}", staged.display()));
            }
        }
        let d = self.description;
        let packaged = self.recipe.definition().packages.code.iter();
        let (domain, domain_to) = (
            d.domain.to_ascii_lowercase(),
            domain_to.to_ascii_lowercase(),
        );
        let rules = SiteRules {
            domain: &domain,
            domain_to: &domain_to,
            served: d
                .files
                .iter()
                .map(|f| PathBuf::from(&f.path))
                .chain(packaged.map(|p| Path::new("/usr/share").join(p)))
                .collect(),
            sockets,
            names: host.names,
            other_sites: host.sites,
        };
        for (staged, _) in sites {
            let Some(text) = self.staged_text(staged) else {
                continue;
            };
            let verdict = rules.judge(&renamed(&text));
            for problem in verdict.problems {
                self.blockers
                    .push(format!("the nginx site {}: {problem}", staged.display()));
            }
            for note in verdict.notes {
                self.warnings
                    .push(format!("the nginx site {}: {note}", staged.display()));
            }
        }
    }

    /// File sets placed where nginx or PHP-FPM read their configuration that are not the
    /// recipe's sites or pools (`/etc/nginx/sites-enabled/DOMAIN`): each must be a link to
    /// one of `services` (the bundle's site and pool sets, which are checked); a file of its
    /// own there would be loaded unchecked. `enabling` holds `(set path, staged copy)`.
    pub(super) fn check_enabling_links(
        &mut self,
        enabling: &[(String, PathBuf)],
        sites: &[&str],
        pools: &[&str],
    ) {
        for (set, staged) in enabling {
            // nginx loads what is under /etc/nginx, PHP-FPM what is under /etc/php: a link
            // must lead to a file checked for the service that will load it.
            let (services, kind) = if Path::new(set).starts_with("/etc/nginx") {
                (sites, "nginx sites")
            } else {
                (pools, "PHP-FPM pools")
            };
            let problem = match fs_err::symlink_metadata(staged) {
                Ok(meta) if meta.file_type().is_symlink() => match fs_err::read_link(staged) {
                    Ok(target) => {
                        let from = Path::new(set).parent().unwrap_or(Path::new("/"));
                        let absolute = normalize(&from.join(&target));
                        (!services.iter().any(|s| absolute == Path::new(s))).then(|| {
                            format!(
                                "links to {}, which is not one of the bundle's {kind}",
                                target.display()
                            )
                        })
                    }
                    Err(e) => Some(e.to_string()),
                },
                Ok(_) => Some(format!(
                    "is not a link to one of the bundle's {kind}, which are checked: it would \
                     be loaded unchecked"
                )),
                Err(e) => Some(e.to_string()),
            };
            if let Some(problem) = problem {
                self.blockers.push(format!("{set} {problem}"));
            }
        }
    }

    /// A staged text file; why it cannot be read is a blocker.
    fn staged_text(&mut self, staged: &Path) -> Option<String> {
        staged_text(staged)
            .map_err(|reason| self.blockers.push(reason))
            .ok()
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
/// /etc/passwd and /etc/group; `allowed` are those the import creates and those the
/// operator allows.
fn pool_problems(text: &str, accounts: &str, groups: &str, allowed: &[String]) -> Vec<String> {
    let id_of = |table: &str, name: &str| -> Option<u32> {
        table
            .lines()
            .find(|l| l.split(':').next() == Some(name))
            .and_then(|l| l.split(':').nth(2))
            .and_then(|id| id.parse().ok())
    };
    let mut problems = Vec::new();
    let mut section: Option<&str> = None;
    for (line, read) in pool_lines(text) {
        let (key, value) = match read {
            PoolLine::Blank => continue,
            PoolLine::Unreadable => {
                problems.push(format!(
                    "{line} (not a line PHP-FPM reads as a section, a setting or a comment)"
                ));
                continue;
            }
            PoolLine::Section(name) => {
                section = Some(name);
                // The master's own settings (its pid file, its log), which it applies as
                // root wherever they appear.
                if name.eq_ignore_ascii_case("global") {
                    problems.push(format!(
                        "{line} (a bundle's pool file may not change the PHP-FPM master's settings)"
                    ));
                }
                continue;
            }
            PoolLine::Setting(key, value) => (key, value),
        };
        let Some(section) = section else {
            // Read into the section open before this file: the master's [global] for the
            // first pool file, another file's pool for the next ones.
            problems.push(format!(
                "{line} (a setting before the file's first [pool] section)"
            ));
            continue;
        };
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
            // The master (root) removes whatever is at a socket's path before binding it,
            // and a bare port listens on every address.
            "listen" | "pm.status_listen" => {
                let listen = value.replace("$pool", section);
                (!pool_may_listen_on(&listen)).then(|| {
                    format!("{key} {listen}: only a socket in /run/php or a port on the loopback")
                })
            }
            "user" | "group" => {
                let table = if key == "user" { accounts } else { groups };
                match id_of(table, value) {
                    // The web server's account, one this import creates, or one the
                    // operator named: an existing account may hold another tenant's files,
                    // or sudo rights (the cloud images' first user).
                    _ if value == WEB_SERVER_ACCOUNT || allowed.iter().any(|a| a == value) => {
                        None
                    }
                    Some(id) if id >= 1000 && id != 65534 => Some(format!(
                        "{key} {value}, an existing account of this host; --allow-account {value} lets the app run as it"
                    )),
                    Some(_) => Some(format!("{key} {value}, a system account")),
                    None => Some(format!("{key} {value}, an account this host does not have")),
                }
            }
            _ => None,
        };
        if let Some(why) = refused {
            problems.push(format!("{line} ({why})"));
        }
    }
    problems
}

/// A line of a PHP-FPM pool file, as PHP's INI parser reads it.
#[derive(Debug, PartialEq)]
enum PoolLine<'a> {
    Blank,
    Section(&'a str),
    /// The key in lower case (PHP-FPM reads keys without regard to case), the value
    /// without its quotes.
    Setting(String, &'a str),
    Unreadable,
}

/// The lines of a pool file, trimmed, each with how PHP reads it. PHP ends a line at
/// `\n`, `\r\n` or `\r`; a section header may be followed by a comment, nothing else.
fn pool_lines(text: &str) -> impl Iterator<Item = (&str, PoolLine<'_>)> {
    text.split(['\n', '\r']).map(|line| {
        let line = line.trim();
        let read = if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
            PoolLine::Blank
        } else if let Some(rest) = line.strip_prefix('[') {
            match rest.split_once(']') {
                Some((name, after)) if after.trim().is_empty() || after.trim().starts_with(';') => {
                    PoolLine::Section(name.trim())
                }
                _ => PoolLine::Unreadable,
            }
        } else if let Some((key, value)) = line.split_once('=') {
            PoolLine::Setting(
                key.trim().to_ascii_lowercase(),
                value.trim().trim_matches('"'),
            )
        } else {
            PoolLine::Unreadable
        };
        (line, read)
    })
}

/// Whether a bundle's pool may listen there: a socket directly in /run/php (or
/// /var/run/php, Debian's link to it), or a port on the loopback (a bare port listens on
/// every address).
fn pool_may_listen_on(listen: &str) -> bool {
    let port = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(name) = ["/run/php/", "/var/run/php/"]
        .iter()
        .find_map(|dir| listen.strip_prefix(dir))
    {
        return !name.is_empty()
            && name != ".."
            && name != "."
            && !name.contains('/')
            && !name.contains('$');
    }
    ["127.0.0.1:", "[::1]:", "localhost:"]
        .iter()
        .any(|host| listen.strip_prefix(host).is_some_and(port))
}

/// The account nginx workers and Debian's default PHP-FPM pool run as.
const WEB_SERVER_ACCOUNT: &str = "www-data";

/// One `[section]` of a PHP-FPM pool file.
#[derive(Debug, Default, PartialEq)]
struct PoolSection {
    file: PathBuf,
    name: String,
    user: Option<String>,
    listen: Option<String>,
}

impl PoolSection {
    /// What an nginx `fastcgi_pass` names to reach this pool (without `unix:`).
    fn addresses(&self) -> Vec<String> {
        match self.listen.as_deref() {
            // A bare port listens on every address.
            Some(port) if port.bytes().all(|b| b.is_ascii_digit()) => {
                vec![format!("127.0.0.1:{port}"), format!("localhost:{port}")]
            }
            Some(listen) => vec![listen.to_owned()],
            None => Vec::new(),
        }
    }
}

/// The pools of a PHP-FPM pool file, with `$pool` in `listen` expanded as PHP-FPM does.
fn pool_sections(text: &str) -> Vec<PoolSection> {
    let mut sections: Vec<PoolSection> = Vec::new();
    for (_, read) in pool_lines(text) {
        match read {
            PoolLine::Section(name) => sections.push(PoolSection {
                name: name.to_owned(),
                ..PoolSection::default()
            }),
            PoolLine::Setting(key, value) => {
                let Some(section) = sections.last_mut() else {
                    continue;
                };
                match key.as_str() {
                    "user" => section.user = Some(value.to_owned()),
                    "listen" => section.listen = Some(value.replace("$pool", &section.name)),
                    _ => {}
                }
            }
            PoolLine::Blank | PoolLine::Unreadable => {}
        }
    }
    sections
}

/// What this host's nginx and PHP-FPM already use, besides the files the import places.
struct HostWeb {
    pools: Vec<PoolSection>,
    /// Each name an nginx site answers for, with the file that says so.
    names: Vec<(String, PathBuf)>,
    /// The other enabled nginx sites (sites-enabled and conf.d).
    sites: Vec<PathBuf>,
    /// Those of them this reading of nginx's syntax cannot read, and why: the names they
    /// answer for are not known.
    unreadable: Vec<(PathBuf, String)>,
}

impl HostWeb {
    /// Reads /etc/php/*/fpm/pool.d and nginx's enabled sites; `ours` are the destinations
    /// of the bundle's own pools and sites (a file it replaces is not another's).
    fn read(ours: &[&Path]) -> Self {
        let theirs = |path: &Path| {
            let real = fs_err::canonicalize(path).unwrap_or_else(|_| path.to_owned());
            !ours.iter().any(|o| *o == path || *o == real)
        };
        let files_in = |dir: &Path| -> Vec<PathBuf> {
            let mut files: Vec<PathBuf> = fs_err::read_dir(dir)
                .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            files.sort();
            files
        };
        let mut pools = Vec::new();
        for version in files_in(Path::new("/etc/php")) {
            for file in files_in(&version.join("fpm/pool.d")) {
                if file.extension().is_some_and(|e| e == "conf") && theirs(&file) {
                    let text = fs_err::read_to_string(&file).unwrap_or_default();
                    pools.extend(pool_sections(&text).into_iter().map(|mut p| {
                        p.file.clone_from(&file);
                        p
                    }));
                }
            }
        }
        let (mut names, mut unreadable) = (Vec::new(), Vec::new());
        let sites: Vec<PathBuf> = files_in(Path::new("/etc/nginx/sites-enabled"))
            .into_iter()
            .chain(files_in(Path::new("/etc/nginx/conf.d")))
            .filter(|f| theirs(f))
            .collect();
        for file in &sites {
            let text = fs_err::read_to_string(file).unwrap_or_default();
            let statements = match nginx_directives(&text) {
                Ok(statements) => statements,
                Err(reason) => {
                    unreadable.push((file.clone(), reason));
                    continue;
                }
            };
            for (directive, args) in statements {
                if directive == "server_name" {
                    names.extend(args.iter().map(|n| (n.to_ascii_lowercase(), file.clone())));
                }
            }
        }
        Self {
            pools,
            names,
            sites,
            unreadable,
        }
    }
}

/// The statements of an nginx config, each as its directive and its arguments; blocks are
/// flattened. Words are read as nginx's `ngx_conf_read_token` reads them, so that what is
/// judged is what nginx loads: `#` starts a comment only where a word could start (`a#b` is
/// one word), quotes and backslashes escape, `;` and `{` end a statement. Text nginx would
/// refuse is refused here, with the reason.
fn nginx_directives(text: &str) -> Result<Vec<(String, Vec<String>)>, String> {
    let chars: Vec<char> = text.chars().collect();
    let mut statements = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut line = 1;
    let mut i = 0;
    let ends_word = |c: char| matches!(c, ' ' | '\t' | '\r' | '\n' | ';' | '{');
    while let Some(&c) = chars.get(i) {
        i += 1;
        match c {
            '\n' => line += 1,
            ' ' | '\t' | '\r' => {}
            '#' => {
                while chars.get(i).is_some_and(|&n| n != '\n') {
                    i += 1;
                }
            }
            ';' | '{' => {
                if words.is_empty() {
                    return Err(format!("unexpected \"{c}\" on line {line}"));
                }
                let directive = words.remove(0);
                statements.push((directive, std::mem::take(&mut words)));
            }
            '}' if words.is_empty() => {}
            '}' => return Err(format!("unexpected \"}}\" on line {line}")),
            '"' | '\'' => {
                let mut word = String::new();
                loop {
                    let Some(&next) = chars.get(i) else {
                        return Err(format!("a quote opened on line {line} is never closed"));
                    };
                    i += 1;
                    match next {
                        '\\' => {
                            unescape(&mut word, chars.get(i).copied());
                            i += 1;
                        }
                        q if q == c => break,
                        other => {
                            line += usize::from(other == '\n');
                            word.push(other);
                        }
                    }
                }
                if let Some(&after) = chars.get(i) {
                    if !ends_word(after) && after != ')' {
                        return Err(format!(
                            "unexpected \"{after}\" after a quoted word on line {line}"
                        ));
                    }
                }
                words.push(word);
            }
            first => {
                let mut word = String::new();
                let mut next = Some(first);
                let mut after_dollar = false;
                while let Some(ch) = next {
                    match ch {
                        '\\' => {
                            unescape(&mut word, chars.get(i).copied());
                            i += 1;
                        }
                        _ => word.push(ch),
                    }
                    // `${name}`: braces right after `$` belong to the word (nginx keeps
                    // that state over every `{` that follows).
                    after_dollar = ch == '$' || (ch == '{' && after_dollar);
                    next = chars
                        .get(i)
                        .copied()
                        .filter(|&n| !ends_word(n) || (n == '{' && after_dollar));
                    if next.is_some() {
                        i += 1;
                    }
                }
                words.push(word);
            }
        }
    }
    if !words.is_empty() {
        return Err(format!(
            "the last statement, `{}`, has no \";\"",
            words.join(" ")
        ));
    }
    Ok(statements)
}

/// Variables a bundle's `try_files` may use: the normalised URI and its parts.
const TRY_FILES_VARIABLES: [&str; 7] = [
    "uri",
    "args",
    "is_args",
    "query_string",
    "document_root",
    "fastcgi_script_name",
    "request_filename",
];

/// The names of the variables in an nginx word (`$name` or `${name}`).
fn variables(word: &str) -> impl Iterator<Item = &str> {
    word.split('$').skip(1).map(|rest| {
        let rest = rest.strip_prefix('{').unwrap_or(rest);
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        &rest[..end]
    })
}

/// A backslash and the character after it, as nginx copies them into a word.
fn unescape(word: &mut String, escaped: Option<char>) {
    match escaped {
        Some(c @ ('"' | '\'' | '\\')) => word.push(c),
        Some('t') => word.push('\t'),
        Some('r') => word.push('\r'),
        Some('n') => word.push('\n'),
        Some(other) => {
            word.push('\\');
            word.push(other);
        }
        None => word.push('\\'),
    }
}

/// What an nginx site from a bundle may do on this host.
struct SiteRules<'a> {
    /// The app's domain in the bundle, and the one it gets here.
    domain: &'a str,
    domain_to: &'a str,
    /// Where it may serve files from: the app's file sets and its packaged code.
    served: Vec<PathBuf>,
    /// Where it may send PHP (`fastcgi_pass`, without `unix:`).
    sockets: Vec<String>,
    /// Names this host's other sites answer for.
    names: Vec<(String, PathBuf)>,
    /// This host's other enabled sites.
    other_sites: Vec<PathBuf>,
}

#[derive(Debug, Default)]
struct SiteVerdict {
    /// Each refuses the import.
    problems: Vec<String>,
    /// Each is reported.
    notes: Vec<String>,
}

impl SiteRules<'_> {
    fn judge(&self, text: &str) -> SiteVerdict {
        let mut verdict = SiteVerdict::default();
        let statements = match nginx_directives(text) {
            Ok(statements) => statements,
            Err(reason) => {
                verdict
                    .problems
                    .push(format!("it does not read as nginx would read it: {reason}"));
                return verdict;
            }
        };
        for (directive, args) in statements {
            let first = args.first().map_or("", String::as_str);
            let statement = || format!("`{directive} {}`", args.join(" "));
            // Whatever the directive (try_files, a log, a file read at load): `..` in a
            // path leaves the places the checks below allow.
            if args.iter().any(|a| a.split('/').any(|part| part == "..")) {
                verdict
                    .problems
                    .push(format!("{} (a path through `..`)", statement()));
                continue;
            }
            let refused = match directive.as_str() {
                // Code nginx would run, or directories its master (root) creates.
                "load_module" => Some("a bundle's site may not load code"),
                d if d.starts_with("perl") || d.starts_with("js_") || d.contains("lua") => {
                    Some("a bundle's site may not load code")
                }
                d if d.ends_with("_temp_path") || d.ends_with("_cache_path") => {
                    Some("nginx would create that directory as root")
                }
                "access_log" | "error_log" => (!(first == "off"
                    || first.starts_with("syslog:")
                    || first.starts_with("/var/log/"))
                    || first.contains(".."))
                .then_some("nginx's master (root) would open that file"),
                "include" => ((first.starts_with('/') && !first.starts_with("/etc/nginx/"))
                    || first.contains(".."))
                .then_some("only nginx's own snippets may be included"),
                // Files it looks for under the root; a variable the request sets
                // (`$arg_f`, `$http_x`) could name any path, `..` included.
                "try_files" => args
                    .iter()
                    .any(|a| variables(a).any(|v| !TRY_FILES_VARIABLES.contains(&v)))
                    .then_some("only $uri, $args and their kin, which nginx normalises, may name the files"),
                "root" | "alias" => (!self.is_served(first))
                    .then_some("it would serve files that are not the app's"),
                // On a host that serves nothing else (one VM per client) it takes nothing
                // from anyone; beside other sites it would take their unmatched requests.
                "listen" if args.iter().any(|a| a == "default_server" || a == "default") => {
                    match self.other_sites.first() {
                        Some(other) => verdict.problems.push(format!(
                            "{} (the site would answer for every name this host does not serve, beside {} and any other enabled site)",
                            statement(),
                            other.display()
                        )),
                        None => verdict.notes.push(format!(
                            "{} (the only enabled site here: it answers for every name)",
                            statement()
                        )),
                    }
                    None
                }
                "fastcgi_pass" => {
                    let target = first.strip_prefix("unix:").unwrap_or(first);
                    (!self.sockets.iter().any(|s| s == target)).then_some(
                        "not one of the bundle's PHP-FPM pools, nor a pool of this host running as www-data: PHP there would run as another account",
                    )
                }
                "proxy_pass" | "uwsgi_pass" | "scgi_pass" | "grpc_pass" | "memcached_pass" => {
                    verdict.notes.push(format!(
                        "{} sends requests to {first}: check that it is the app's own service",
                        statement()
                    ));
                    None
                }
                "server_name" => {
                    self.judge_names(&args, &mut verdict);
                    None
                }
                // Certificates are this host's: nginx -t would fail after the files are
                // placed; say so before anything changes.
                "ssl_certificate"
                | "ssl_certificate_key"
                | "ssl_trusted_certificate"
                | "ssl_client_certificate"
                | "ssl_dhparam"
                    if !first.starts_with("data:") && !first.contains('$') =>
                {
                    let here = first.replace(self.domain, self.domain_to);
                    if !Path::new(&here).exists() {
                        verdict.problems.push(format!(
                            "`{directive} {here}` (no such file on this host: put the TLS certificate and key for {} there first, with certbot for instance)",
                            self.domain_to
                        ));
                    }
                    None
                }
                _ => None,
            };
            if let Some(why) = refused {
                verdict.problems.push(format!("{} ({why})", statement()));
            }
        }
        verdict
    }

    /// Within one of the app's file sets or its packaged code, named plainly: no `..`, no
    /// variable (which a request could fill).
    fn is_served(&self, path: &str) -> bool {
        let path = Path::new(path);
        path.is_absolute()
            && !path.to_string_lossy().contains('$')
            && !path
                .components()
                .any(|c| c == std::path::Component::ParentDir)
            && self.served.iter().any(|s| path.starts_with(s))
    }

    /// A site answers for its app's domain and names under it (renamed with it); another
    /// name is reported, and one that another site here answers for is refused.
    fn judge_names(&self, names: &[String], verdict: &mut SiteVerdict) {
        for name in names.iter().map(|n| n.to_ascii_lowercase()) {
            if name.starts_with('~') {
                verdict.problems.push(format!(
                    "`server_name {name}` (a regular expression could claim any name)"
                ));
                continue;
            }
            if name.is_empty() || name == "_" {
                continue;
            }
            let bare = name.trim_start_matches("*.").trim_start_matches('.');
            let here = if bare == self.domain {
                name.replacen(self.domain, self.domain_to, 1)
            } else if let Some(sub) = bare.strip_suffix(&format!(".{}", self.domain)) {
                name.replacen(
                    &format!("{sub}.{}", self.domain),
                    &format!("{sub}.{}", self.domain_to),
                    1,
                )
            } else {
                verdict.notes.push(format!(
                    "it also answers for {name}, which is not under the app's domain {} and keeps its name",
                    self.domain
                ));
                name.clone()
            };
            if let Some((_, file)) = self.names.iter().find(|(n, _)| *n == here) {
                verdict.problems.push(format!(
                    "`server_name {here}` ({} on this host answers for that name)",
                    file.display()
                ));
            }
        }
    }
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

    fn rules() -> SiteRules<'static> {
        SiteRules {
            domain: "a.test",
            domain_to: "b.test",
            served: vec![
                PathBuf::from("/usr/share/wordpress"),
                PathBuf::from("/var/lib/wordpress/wp-content"),
            ],
            sockets: vec!["/run/php/a.sock".to_owned(), "127.0.0.1:9000".to_owned()],
            names: vec![
                (
                    "other.test".to_owned(),
                    PathBuf::from("/etc/nginx/sites-enabled/other"),
                ),
                (
                    "www.b.test".to_owned(),
                    PathBuf::from("/etc/nginx/sites-enabled/b"),
                ),
            ],
            other_sites: vec![
                PathBuf::from("/etc/nginx/sites-enabled/b"),
                PathBuf::from("/etc/nginx/sites-enabled/other"),
            ],
        }
    }

    #[test]
    fn nginx_sites_may_not_log_include_or_serve_outside_the_apps() {
        let fine = "server {\n listen 127.0.0.1:80;\n server_name a.test *.a.test _;\n\
                    root /usr/share/wordpress;\n\
                    location /wp-content/ { alias /var/lib/wordpress/wp-content/; }\n\
                    location ~ \\.php$ { include snippets/fastcgi-php.conf;\n\
                    fastcgi_pass unix:/run/php/a.sock; }\n\
                    location /x { fastcgi_pass 127.0.0.1:9000; }\n\
                    access_log /var/log/nginx/a.log;\n\
                    # access_log /etc/cron.d/commented;\n}\n";
        let verdict = rules().judge(fine);
        assert_eq!(verdict.problems, Vec::<String>::new());
        assert_eq!(verdict.notes, Vec::<String>::new());
        for bad in [
            "access_log /etc/cron.d/x;",
            "error_log /var/log/../../etc/cron.d/x;",
            "load_module /tmp/evil.so;",
            "js_import /tmp/x.js;",
            "content_by_lua_block { os.execute('id') }",
            "proxy_temp_path /etc/cron.d;",
            "fastcgi_cache_path /etc/x levels=1:2 keys_zone=x:1m;",
            "include /var/lib/wordpress/wp-content/uploads/x.conf;",
            "root /etc;",
            "root /var/lib/wordpress;",
            "root /var/lib/wordpress/wp-content/../../mysql;",
            "try_files $uri /../../../srv/other/config.php =404;",
            "try_files /$arg_f =404;",
            "try_files $uri ${http_x}.php =404;",
            "location / { try_files ../x =404; }",
            "root /var/lib/wordpress/wp-content/$http_x;",
            "root relative/path;",
            "location / { alias '/root/'; }",
            "listen 127.0.0.1:80 default_server;",
            "fastcgi_pass unix:/run/php/other-tenant.sock;",
            "fastcgi_pass $upstream;",
            "server_name ~^(.+)$;",
            "server_name other.test;",
            "server_name www.a.test;",
        ] {
            assert_eq!(rules().judge(bad).problems.len(), 1, "{bad}");
        }
    }

    #[test]
    fn service_files_go_only_where_their_service_reads_them() {
        for (kind, path) in [
            (
                ServiceKind::NginxSite,
                "/etc/nginx/sites-available/blog.test",
            ),
            (ServiceKind::NginxSite, "/etc/nginx/conf.d/blog.conf"),
            (ServiceKind::PhpFpmPool, "/etc/php/8.2/fpm/pool.d/blog.conf"),
        ] {
            assert_eq!(service_file_place(kind, path), Ok(()), "{path}");
        }
        for (kind, path) in [
            (ServiceKind::NginxSite, "/etc/cron.d/blog"),
            (ServiceKind::NginxSite, "/etc/nginx/sites-available"),
            (
                ServiceKind::NginxSite,
                "/etc/nginx/sites-available/sub/blog",
            ),
            (ServiceKind::NginxSite, "/etc/nginx/nginx.conf"),
            (ServiceKind::PhpFpmPool, "/etc/php/8.2/fpm/php-fpm.conf"),
            (ServiceKind::PhpFpmPool, "/etc/cron.d/pool.d/x"),
            (ServiceKind::PhpFpmPool, "/etc/php/8.2/cli/pool.d/x.conf"),
            (ServiceKind::PhpFpmPool, "/etc/php/fpm/pool.d/x.conf"),
        ] {
            assert!(service_file_place(kind, path).is_err(), "{path}");
        }
        assert!(read_by_a_service(Path::new(
            "/etc/nginx/sites-enabled/blog.test"
        )));
        assert!(!read_by_a_service(Path::new("/etc/nginxes/x")));
    }

    /// A `#` inside a word or quotes is not a comment to nginx, so it hides nothing from the
    /// checks; quotes and escapes are read as nginx reads them.
    #[test]
    fn nginx_words_are_read_as_nginx_reads_them() {
        for (hidden, refused) in [
            ("add_header X \"#\"; root /;", "`root /`"),
            (
                "add_header X a#b; access_log /etc/cron.d/x;",
                "`access_log /etc/cron.d/x`",
            ),
            ("add_header X 'a;b' ; root /etc;", "`root /etc`"),
            ("add_header X a\\;b; root /etc;", "`root /etc`"),
            ("return 200 \"${host}\"; root /etc;", "`root /etc`"),
        ] {
            let problems = rules().judge(hidden).problems;
            assert!(
                problems.len() == 1 && problems[0].starts_with(refused),
                "{hidden}: {problems:?}"
            );
        }
        let statements = nginx_directives(
            "add_header X \"a;b # c\";\nset $a ${b}c;\nlocation /a#b { return 200 'it\\'s'; } # end\nset $x ${{{;\n",
        )
        .unwrap();
        let words = |d: &str, a: &[&str]| (d.to_owned(), a.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            statements,
            vec![
                words("add_header", &["X", "a;b # c"]),
                words("set", &["$a", "${b}c"]),
                words("location", &["/a#b"]),
                words("return", &["200", "it's"]),
                words("set", &["$x", "${{{"]),
            ]
        );
        assert!(rules()
            .judge("location / { try_files $uri $uri/ /index.php?$args; }")
            .problems
            .is_empty());
        for unreadable in [
            "root \"/a\"b;",
            "root /a",
            "root '/a;",
            "; root /a;",
            "root /a }",
        ] {
            let problems = rules().judge(unreadable).problems;
            assert!(
                problems.len() == 1 && problems[0].contains("does not read as nginx would"),
                "{unreadable}: {problems:?}"
            );
        }
    }

    #[test]
    fn tls_files_must_be_on_this_host_under_the_new_domain() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::create_dir_all(dir.path().join("b.test")).unwrap();
        fs_err::write(dir.path().join("b.test/fullchain.pem"), "cert").unwrap();
        let at = |domain: &str| format!("{}/{domain}/fullchain.pem", dir.path().display());
        // The bundle's path names the old domain; the new one's file is here.
        assert!(rules()
            .judge(&format!("ssl_certificate {};", at("a.test")))
            .problems
            .is_empty());
        let missing = rules().judge(&format!(
            "ssl_certificate_key {}/b.test/privkey.pem;",
            dir.path().display()
        ));
        assert_eq!(missing.problems.len(), 1);
        assert!(
            missing.problems[0].contains("no such file on this host"),
            "{:?}",
            missing.problems
        );
        assert!(rules()
            .judge("ssl_certificate data:$cert;")
            .problems
            .is_empty());
    }

    #[test]
    fn the_only_site_of_a_host_may_be_its_default_server() {
        let alone = SiteRules {
            other_sites: Vec::new(),
            ..rules()
        };
        let verdict = alone.judge("listen 80 default_server;");
        assert!(verdict.problems.is_empty(), "{:?}", verdict.problems);
        assert_eq!(verdict.notes.len(), 1, "{:?}", verdict.notes);
        let beside = rules().judge("listen 80 default_server;");
        assert!(
            beside.problems[0].contains("beside /etc/nginx/sites-enabled/b"),
            "{:?}",
            beside.problems
        );
    }

    #[test]
    fn names_outside_the_domain_and_proxies_are_reported() {
        let verdict =
            rules().judge("server_name a.test shop.example; proxy_pass http://127.0.0.1:3000;");
        assert!(verdict.problems.is_empty(), "{:?}", verdict.problems);
        assert_eq!(verdict.notes.len(), 2, "{:?}", verdict.notes);
        assert!(verdict.notes[0].contains("shop.example"));
        assert!(verdict.notes[1].contains("http://127.0.0.1:3000"));
    }

    #[test]
    fn pool_files_are_read_by_section() {
        let text = "; a comment\n[www]\nuser = www-data\nlisten = /run/php/php8.2-fpm.sock\n\
                    [shop]\nUser = \"shop\"\nlisten = /run/php/$pool.sock\n[tcp]\nlisten = 9000\n";
        let pools = pool_sections(text);
        assert_eq!(pools.len(), 3);
        assert_eq!(pools[0].user.as_deref(), Some("www-data"));
        assert_eq!(pools[1].user.as_deref(), Some("shop"));
        assert_eq!(pools[1].listen.as_deref(), Some("/run/php/shop.sock"));
        assert_eq!(pools[2].addresses(), ["127.0.0.1:9000", "localhost:9000"]);
    }

    #[test]
    fn pools_run_as_the_web_server_or_an_account_created_or_allowed() {
        let accounts = "root:x:0:0::/root:/bin/bash\nwww-data:x:33:33::/var/www:/usr/sbin/nologin\n\
                        postgres:x:106:112::/var/lib/postgresql:/bin/bash\ntenant:x:1001:1001::/home/tenant:/bin/sh\n";
        let groups = "root:x:0:\nwww-data:x:33:\nshadow:x:42:\ntenant:x:1001:\n";
        let pool = |body: &str| {
            pool_problems(
                &format!("[site]\n{body}\nlisten = /run/php/x.sock\n"),
                accounts,
                groups,
                &["newone".to_owned(), "allowed".to_owned()],
            )
        };
        assert!(pool("user = www-data\ngroup = www-data").is_empty());
        assert!(pool("user = newone").is_empty());
        assert!(pool("user = allowed").is_empty());
        for bad in [
            "user = tenant",
            "group = tenant",
            "user = root",
            "User = root",
            "user = postgres",
            "group = shadow",
            "user = nobody-here",
            "include = /var/lib/wordpress/wp-content/uploads/x.conf",
            "access.log = /etc/cron.d/x",
            "php_admin_value[error_log] = /etc/cron.d/x",
            "php_value[auto_prepend_file] = /tmp/x.php",
            "[global]\npid = /etc/passwd",
            "[Global]\ndaemonize = no",
            "listen = /etc/passwd",
            "listen = /run/php/../../etc/x.sock",
            "listen = /run/php/sub/x.sock",
            "listen = 0.0.0.0:9000",
            "listen = 192.0.2.1:9000",
            "listen = 9000",
            "pm.status_listen = /etc/passwd",
            "[global] ; the master's\npid = /etc/shadow",
            "[global]pid=/etc/shadow",
            "[site2]\rlisten = /etc/passwd",
            "not a setting",
        ] {
            assert_eq!(pool(bad).len(), 1, "{bad}: {:?}", pool(bad));
        }
        // Read into the section open before the file: the master's, or another pool's.
        let before = pool_problems(
            "; comment\nlisten.mode = 0666\n[site]\nuser = www-data\n",
            accounts,
            groups,
            &[],
        );
        assert_eq!(before.len(), 1, "{before:?}");
        for fine in [
            "listen = /var/run/php/x.sock",
            "pm.status_listen = 127.0.0.1:9002",
            "listen = 127.0.0.1:9001",
            "listen = [::1]:9001",
            "listen = /run/php/$pool.sock",
        ] {
            assert!(pool(fine).is_empty(), "{fine}: {:?}", pool(fine));
        }
        assert!(pool("; user = root").is_empty(), "comments are ignored");
    }
}
