//! Reinstalling real apps from their bundles: WordPress (MariaDB) and DokuWiki exported,
//! their originals removed, then imported under a new domain and new database names on the
//! same machine; checked over HTTP. A failure injected at each apply step, or a kill, leaves
//! the host as it was.
//!
//! The tests of this file run one at a time: the host-state comparisons look at shared
//! directories (/etc/nginx, /var/lib/wordpress) that another test's site would change.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

use baluchon_tests::apps::{
    baluchon, http_get, mariadb_root, script, services, text, unique, Site,
};
use baluchon_tests::fixture::Keys;
use baluchon_tests::tree::{self, differences};
use serde_json::Value;
use sha2::{Digest, Sha256};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Everything of the host an import may touch: file trees (type, mode, owner, content
/// digest or link target) and the databases and their users.
fn host_state() -> BTreeMap<String, String> {
    let mut state = BTreeMap::new();
    for root in [
        "/etc/nginx",
        "/etc/wordpress",
        "/etc/php/8.2/fpm",
        "/etc/dokuwiki",
        "/var/lib/wordpress",
        "/var/lib/dokuwiki",
    ] {
        walk(Path::new(root), &mut state);
    }
    let databases = mariadb_root("SELECT schema_name FROM information_schema.schemata ORDER BY 1");
    // The content of every tenant database, as a dump's digest.
    for db in databases
        .lines()
        .filter(|d| d.starts_with("wp_") || d.contains("test"))
    {
        let dump = Command::new("mariadb-dump")
            .args(["--skip-dump-date", "--single-transaction", "--", db])
            .output()
            .unwrap();
        assert!(
            dump.status.success(),
            "dump of {db}: {}",
            text(&dump.stderr)
        );
        state.insert(
            format!("mariadb dump {db}"),
            format!("{:x}", Sha256::digest(&dump.stdout)),
        );
    }
    state.insert("mariadb databases".into(), databases);
    state.insert(
        "mariadb users".into(),
        mariadb_root("SELECT CONCAT(user, '@', host) FROM mysql.user ORDER BY 1"),
    );
    state
}

fn walk(path: &Path, state: &mut BTreeMap<String, String>) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = fs_err::symlink_metadata(path) else {
        return;
    };
    let what = if meta.file_type().is_symlink() {
        format!("link {}", fs_err::read_link(path).unwrap().display())
    } else if meta.is_file() {
        format!("file {:x}", Sha256::digest(fs_err::read(path).unwrap()))
    } else {
        "dir".to_owned()
    };
    state.insert(
        path.display().to_string(),
        format!(
            "{what} {:o} {}:{}",
            meta.mode() & 0o7777,
            meta.uid(),
            meta.gid()
        ),
    );
    if meta.is_dir() {
        for entry in fs_err::read_dir(path).unwrap() {
            walk(&entry.unwrap().path(), state);
        }
    }
}

fn assert_same_state(
    before: &BTreeMap<String, String>,
    after: &BTreeMap<String, String>,
    when: &str,
) {
    let mut differences = Vec::new();
    for (key, value) in before {
        match after.get(key) {
            None => differences.push(format!("gone: {key}")),
            Some(v) if v != value => differences.push(format!("changed: {key}: {value} → {v}")),
            _ => {}
        }
    }
    for key in after.keys().filter(|k| !before.contains_key(*k)) {
        differences.push(format!("new: {key} {}", after[key]));
    }
    assert!(
        differences.is_empty(),
        "{when}: the host changed:\n{}",
        differences.join("\n")
    );
}

struct Move {
    dir: tempfile::TempDir,
    keys: Keys,
    work: PathBuf,
    bundle: PathBuf,
}

impl Move {
    /// Exports `app` instance `instance` into a bundle.
    fn export(app: &str, instance: &str) -> Self {
        Self::export_with(app, instance, &[])
    }

    fn export_with(app: &str, instance: &str, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        let bundle = dir.path().join("app.baluchon");
        let work = dir.path().join("work");
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"export",
            &"--app",
            &app,
            &"--instance",
            &instance,
            &"--sign-key",
            &keys.private,
            &"-o",
            &bundle,
        ];
        args.extend(extra.iter().map(|e| e as &dyn AsRef<std::ffi::OsStr>));
        let out = baluchon(&args, dir.path());
        assert!(out.status.success(), "export: {}", text(&out.stderr));
        Self {
            dir,
            keys,
            work,
            bundle,
        }
    }

    fn import(&self, extra: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(baluchon_tests::fixture::baluchon_bin());
        command
            .args(["import"])
            .arg(&self.bundle)
            .arg("--signer")
            .arg(&self.keys.allowed_signers)
            .arg("--work-dir")
            .arg(&self.work)
            .args(extra)
            .env("BALUCHON_STATE_DIR", self.dir.path());
        for (k, v) in env {
            command.env(k, v);
        }
        command.output().unwrap()
    }

    /// Imports with `extra`: it succeeds, its health check passed.
    fn import_served(&self, extra: &[&str]) {
        let out = self.import(extra, &[]);
        assert!(
            out.status.success(),
            "import: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        assert!(
            text(&out.stdout).contains("health check passed"),
            "{}",
            text(&out.stdout)
        );
    }

    /// The import fails saying `said`, and the host is as `before`.
    fn assert_refused(&self, said: &str, before: &BTreeMap<String, String>) {
        let out = self.import(&[], &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        assert!(text(&out.stderr).contains(said), "{}", text(&out.stderr));
        assert_same_state(before, &host_state(), "after a refused import");
    }

    /// The plan (`--plan --json` and `extra`) of an import it blocks: exit status 1.
    fn blocked_plan(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--plan", "--json"];
        args.extend_from_slice(extra);
        let out = self.import(&args, &[]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn plan(&self, extra: &[&str]) -> Value {
        let mut args = vec!["--plan", "--json"];
        args.extend_from_slice(extra);
        let out = self.import(&args, &[]);
        assert!(out.status.success(), "plan: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Removes what an import of WordPress placed and created, from its plan.
fn remove_imported(plan: &Value) {
    let domain = plan["domain"]["to"].as_str().unwrap();
    script("wordpress-site.sh", &["remove", domain]);
    for set in plan["files"].as_array().unwrap() {
        let to = Path::new(set["to"].as_str().unwrap());
        if to.is_file() || to.is_symlink() {
            let _ = fs_err::remove_file(to);
        }
    }
    for db in plan["databases"].as_array().unwrap() {
        if let (Some(name), Some(user)) = (db["to"].as_str(), db["user"].as_str()) {
            mariadb_root(&format!(
                "DROP DATABASE IF EXISTS `{name}`; DROP USER IF EXISTS '{user}'@'localhost'"
            ));
        }
    }
}

fn login_redirects_to_admin(domain: &str, password: &str) -> bool {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
            "--resolve",
        ])
        .arg(format!("{domain}:80:127.0.0.1"))
        .args([
            "--cookie",
            "wordpress_test_cookie=WP%20Cookie%20check",
            "--data-urlencode",
            "log=admin",
        ])
        .arg("--data-urlencode")
        .arg(format!("pwd={password}"))
        .args(["--data-urlencode", "testcookie=1"])
        .arg(format!("http://{domain}/wp-login.php"))
        .output()
        .unwrap();
    let answer = text(&out.stdout);
    answer.starts_with("302") && answer.contains("/wp-admin")
}

/// PHP's own unserialize() on a value, as JSON (or "FAIL").
fn php_unserialize(value: &str) -> String {
    let mut child = Command::new("php")
        .args(["-r", "$v = unserialize(stream_get_contents(STDIN)); echo $v === false ? 'FAIL' : json_encode($v);"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(value.as_bytes())
        .unwrap();
    text(&child.wait_with_output().unwrap().stdout)
}

#[test]
fn wordpress_moves_to_a_new_domain_and_new_database_and_still_works() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let old = format!("{}.test", unique("wp-from"));
    let new = format!("{}.test", unique("wp-to"));
    let site = Site::create("wordpress", &old);
    let db = site.fact("db_name").to_owned();
    // A serialized option that holds the domain: its length prefixes must be fixed.
    let serialized = format!(
        "a:2:{{s:3:\"url\";s:{}:\"http://{old}/x\";s:4:\"list\";a:1:{{i:0;s:{}:\"http://{old}/é\";}}}}",
        format!("http://{old}/x").len(),
        format!("http://{old}/é").len()
    );
    mariadb_root(&format!(
        "INSERT INTO `{db}`.wp_options (option_name, option_value, autoload) VALUES ('baluchon_probe', '{serialized}', 'no')"
    ));
    let upload = fs_err::read(site.fact("upload_path")).unwrap();
    let upload_url = site.fact("upload_url").replace(&old, &new);
    let (post_id, canary, password) = (
        site.fact("post_id").to_owned(),
        site.fact("canary").to_owned(),
        site.fact("admin_password").to_owned(),
    );

    let moved = Move::export("wordpress", &old);
    drop(site); // the original is removed: its domain, database, files and uploads
    assert_eq!(
        http_get(&new, "/").0,
        404,
        "the new domain is not served yet"
    );

    let plan = moved.plan(&["--domain", &new]);
    assert_eq!(plan["domain"]["to"], new.as_str());
    assert!(plan["blockers"].as_array().unwrap().is_empty(), "{plan}");
    let new_db = plan["databases"][0]["to"].as_str().unwrap().to_owned();
    assert_ne!(new_db, db, "a new database name");

    moved.import_served(&["--domain", &new]);

    let (status, page) = http_get(&new, &format!("/?p={post_id}"));
    assert_eq!(status, 200);
    assert!(
        text(&page).contains(&canary),
        "the post renders at the new domain"
    );
    let (status, bytes) = http_get(
        &new,
        upload_url.trim_start_matches(&format!("http://{new}")),
    );
    assert_eq!(status, 200);
    assert_eq!(bytes, upload, "the upload is byte-identical");
    assert!(
        login_redirects_to_admin(&new, &password),
        "the old admin password logs in"
    );
    let home = mariadb_root(&format!(
        "SELECT option_value FROM `{new_db}`.wp_options WHERE option_name = 'home'"
    ));
    assert_eq!(home, format!("http://{new}"));
    let probe = mariadb_root(&format!(
        "SELECT option_value FROM `{new_db}`.wp_options WHERE option_name = 'baluchon_probe'"
    ));
    let decoded = php_unserialize(&probe);
    assert!(
        decoded.contains(&format!("http:\\/\\/{new}\\/x")),
        "unserialized: {decoded}"
    );
    assert!(!decoded.contains("FAIL"));
    let guid = mariadb_root(&format!(
        "SELECT guid FROM `{new_db}`.wp_posts WHERE ID = {post_id}"
    ));
    assert!(
        guid.contains(&old),
        "guids are identifiers and stay: {guid}"
    );

    // The same bundle again: nothing to do.
    let again = moved.import(&["--domain", &new], &[]);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stdout).contains("already imported"));

    remove_imported(&plan);
}

/// Exports a fresh WordPress site, and returns it with its bundle (the site stays).
fn site_and_bundle() -> (Site, Move) {
    services();
    let domain = format!("{}.test", unique("wp-fail"));
    let site = Site::create("wordpress", &domain);
    let moved = Move::export("wordpress", &domain);
    (site, moved)
}

#[test]
fn a_failure_at_any_step_leaves_the_host_as_it_was() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_site, moved) = site_and_bundle();
    let before = host_state();
    for step in [
        "begin", "database", "rewrite", "files", "services", "health",
    ] {
        let target = format!("{}.test", unique("wp-failed"));
        let out = moved.import(&["--domain", &target], &[("BALUCHON_TEST_FAIL_AT", step)]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{step}: {stderr}");
        assert!(
            stderr.contains(&format!("stopped at step {step}")),
            "{step}: {stderr}"
        );
        assert!(stderr.contains("rolled back"), "{step}: {stderr}");
        assert_same_state(
            &before,
            &host_state(),
            &format!("after a failure at {step}"),
        );
        assert_eq!(
            http_get(&target, "/").0,
            404,
            "{step}: the new site is not served"
        );
    }
}

#[test]
fn a_killed_import_is_rolled_back_or_completed_by_recover() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (site, moved) = site_and_bundle();
    let tenant = site.fact("domain").to_owned();
    let before = host_state();
    let target = format!("{}.test", unique("wp-killed"));
    let out = moved.import(
        &["--domain", &target],
        &[("BALUCHON_TEST_KILL_AT", "services")],
    );
    assert!(!out.status.success(), "the import was killed");
    let recovered = baluchon(
        &[&"recover", &"--tenant", &tenant, &"--work-dir", &moved.work],
        moved.dir.path(),
    );
    assert!(recovered.status.success(), "{}", text(&recovered.stderr));
    assert!(
        text(&recovered.stdout).contains("rolled back"),
        "{}",
        text(&recovered.stdout)
    );
    assert_same_state(
        &before,
        &host_state(),
        "after recovering a kill before the commit",
    );

    // Killed after its commit: the next import completes it, and it is then a no-op.
    let target = format!("{}.test", unique("wp-committed"));
    let out = moved.import(
        &["--domain", &target],
        &[("BALUCHON_TEST_KILL_AT", "commit")],
    );
    assert!(!out.status.success());
    let recovered = baluchon(
        &[&"recover", &"--tenant", &tenant, &"--work-dir", &moved.work],
        moved.dir.path(),
    );
    assert!(recovered.status.success(), "{}", text(&recovered.stderr));
    assert!(
        text(&recovered.stdout).contains("had committed: it is complete"),
        "{}",
        text(&recovered.stdout)
    );
    let plan_out = moved.import(&["--domain", &target], &[]);
    assert!(plan_out.status.success(), "{}", text(&plan_out.stderr));
    assert!(
        text(&plan_out.stdout).contains("already imported"),
        "{}",
        text(&plan_out.stdout)
    );
    assert_eq!(
        http_get(&target, "/").0,
        200,
        "the committed import serves the site"
    );
    let plan: Value = serde_json::json!({
        "domain": {"to": target},
        "files": [],
        "databases": [],
    });
    remove_imported(&plan);
}

#[test]
fn a_concurrent_import_of_the_same_tenant_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (site, moved) = site_and_bundle();
    let dir = moved.work.join("imports").join(site.fact("domain"));
    fs_err::create_dir_all(&dir).unwrap();
    let lock = fs_err::File::create(dir.join("lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let out = moved.import(&["--plan"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("another baluchon import"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn conflicts_are_refused_by_default_and_the_plan_names_them() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (site, moved) = site_and_bundle();
    // Same domain, and the site is still there, changed since the export: a conflict. The
    // operator says the site's files are this tenant's (no import of it placed them).
    fs_err::write(site.fact("vhost_path"), "# changed since the export\n").unwrap();
    let enabled = format!("/etc/nginx/sites-enabled/{}", site.fact("domain"));
    let mut named = Vec::new();
    for path in [
        site.fact("config_path"),
        site.fact("vhost_path"),
        site.fact("pool_path"),
        &enabled,
    ] {
        named.extend(["--merge-into", path]);
    }
    let before = host_state();
    let out = moved.import(&[&["--plan", "--json"], &named[..]].concat(), &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a plan that would be refused fails"
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let conflicts = plan["conflicts"].to_string();
    assert!(conflicts.contains(site.fact("vhost_path")), "{conflicts}");
    let blockers = plan["blockers"].as_array().unwrap();
    assert_eq!(blockers.len(), 1, "{blockers:?}");
    let out = moved.import(&named, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--on-conflict"),
        "{}",
        text(&out.stderr)
    );
    assert_same_state(&before, &host_state(), "after a refused import");

    // Not named, the site's files are not this tenant's: refused whatever --on-conflict says
    // (the config differs too: its secrets were left out of the bundle).
    let plan = moved.blocked_plan(&["--on-conflict", "replace"]);
    let blockers = plan["blockers"].to_string();
    for path in [site.fact("vhost_path"), site.fact("config_path")] {
        assert!(
            blockers.contains(&format!(
                "{path} is already on this host, and neither the app's packages nor an earlier import of this tenant put it there"
            )),
            "{path}: {blockers}"
        );
    }
}

#[test]
fn dokuwiki_moves_to_a_new_domain_replacing_the_default_config() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let old = format!("{}.test", unique("wiki-from"));
    let new = format!("{}.test", unique("wiki-to"));
    let site = Site::create("dokuwiki", &old);
    let media = fs_err::read(site.fact("media_path")).unwrap();
    let (page_id, media_id, canary, password) = (
        site.fact("page_id").to_owned(),
        site.fact("media_id").to_owned(),
        site.fact("canary").to_owned(),
        site.fact("admin_password").to_owned(),
    );
    let moved = Move::export("dokuwiki", &old);
    drop(site); // vhost gone, page and media deleted, accounts and local.php reset

    // The host's own DokuWiki config now differs from the tenant's: refused by default,
    // replaced on request. The work directory is on a filesystem of its own (as a separate
    // /var often is): the host's files cannot be renamed into its backup directory, and
    // are kept beside themselves instead.
    let refused = moved.import(&["--domain", &new], &[]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused.stderr));
    fs_err::create_dir_all(&moved.work).unwrap();
    baluchon_tests::fixture::mount(&["-t", "tmpfs", "-o", "size=256m", "tmpfs"], &moved.work);
    let out = moved.import(
        &["--domain", &new, "--on-conflict", "replace", "--json"],
        &[],
    );
    let unmounted = Command::new("umount").arg(&moved.work).status().unwrap();
    assert!(unmounted.success());
    assert!(out.status.success(), "import: {}", text(&out.stderr));
    let kept_beside = |dir: &str, name: &str| {
        fs_err::read_dir(dir).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("{name}.baluchon-old-"))
        })
    };
    assert!(
        kept_beside("/etc/dokuwiki", "local.php")
            || kept_beside("/var/lib/dokuwiki/acl", "users.auth.php"),
        "the host's files are kept beside themselves"
    );

    let (status, page) = http_get(&new, &format!("/doku.php?id={page_id}"));
    assert_eq!(status, 200);
    assert!(
        text(&page).contains(&canary),
        "the page renders at the new domain"
    );
    let (status, bytes) = http_get(&new, &format!("/lib/exe/fetch.php?media={media_id}"));
    assert_eq!(status, 200);
    assert_eq!(bytes, media, "the media file is byte-identical");
    // The tenant's account came along: its password works over XML-RPC.
    let login = Command::new("curl")
        .args(["-s", "--resolve"])
        .arg(format!("{new}:80:127.0.0.1"))
        .arg("-u")
        .arg(format!("admin:{password}"))
        .args(["-H", "Content-Type: text/xml", "--data"])
        .arg(format!("<?xml version=\"1.0\"?><methodCall><methodName>wiki.getPage</methodName><params><param><value><string>{page_id}</string></value></param></params></methodCall>"))
        .arg(format!("http://{new}/lib/exe/xmlrpc.php"))
        .output()
        .unwrap();
    assert!(
        text(&login.stdout).contains(&canary),
        "{}",
        text(&login.stdout)
    );

    script("dokuwiki-site.sh", &["remove", &new]);
    // The host's files this import kept aside: the removal above reset the originals.
    for dir in ["/etc/dokuwiki", "/var/lib/dokuwiki/acl"] {
        for entry in fs_err::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            if entry
                .file_name()
                .to_string_lossy()
                .contains(".baluchon-old-")
            {
                fs_err::remove_file(entry.path()).unwrap();
            }
        }
    }
}

#[test]
fn a_bundle_of_a_newer_app_version_than_the_host_has_is_refused() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (site, moved) = site_and_bundle();
    let installed = text(
        &Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", "wordpress"])
            .output()
            .unwrap()
            .stdout,
    );
    // The exporter's key signs a description that says the app came from a newer package.
    let mut forged = baluchon_tests::forge::Forge::read(&moved.bundle);
    forged.replace_text(
        "data/app/app.json",
        &format!("\"version\": \"{installed}\""),
        "\"version\": \"99:1.0\"",
    );
    forged.reseal(&moved.keys);
    let newer = moved.dir.path().join("newer.baluchon");
    forged.write(&newer);
    let target = format!("{}.test", unique("wp-newer"));
    let out = Command::new(baluchon_tests::fixture::baluchon_bin())
        .arg("import")
        .arg(&newer)
        .arg("--signer")
        .arg(&moved.keys.allowed_signers)
        .arg("--work-dir")
        .arg(&moved.work)
        .args(["--domain", &target])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("newer than this host's"), "{stderr}");
    assert!(stderr.contains("upgrade wordpress here first"), "{stderr}");
    drop(site);
}

#[test]
fn packages_installed_by_a_failed_import_are_removed_again() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let installed = |p: &str| {
        text(
            &Command::new("dpkg-query")
                .args(["-W", "-f=${db:Status-Status}", p])
                .output()
                .unwrap()
                .stdout,
        ) == "installed"
    };
    // `sl`, a tiny package nothing else needs, stands for a missing dependency of the app.
    assert!(!installed("sl"), "this test needs sl not installed");
    let (_site, moved) = site_and_bundle();
    let target = format!("{}.test", unique("wp-package"));
    let counted = |plan: &Value| -> u64 {
        plan["disk"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["needed"].as_u64().unwrap())
            .sum()
    };
    let without_package = counted(&moved.plan(&["--domain", &target]));
    // This host's own wordpress recipe needs one more package (a bundle cannot choose).
    struct HostRecipe(PathBuf);
    impl Drop for HostRecipe {
        fn drop(&mut self) {
            let _ = fs_err::remove_file(&self.0);
        }
    }
    fs_err::create_dir_all("/etc/baluchon/recipes").unwrap();
    let builtin = fs_err::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/wordpress.toml"),
    )
    .unwrap();
    let recipe = HostRecipe(PathBuf::from("/etc/baluchon/recipes/wordpress.toml"));
    fs_err::write(
        &recipe.0,
        builtin.replace("needs = [\"wordpress\",", "needs = [\"sl\", \"wordpress\","),
    )
    .unwrap();
    let before = host_state();
    let plan = moved.plan(&["--domain", &target]);
    assert_eq!(plan["packages_to_install"], serde_json::json!(["sl"]));
    // The room check counts what apt would download and unpack, as apt-cache says (one
    // filesystem here, so the totals differ by exactly that).
    let size = |field: &str| -> u64 {
        text(
            &Command::new("apt-cache")
                .args(["show", "--no-all-versions", "sl"])
                .output()
                .unwrap()
                .stdout,
        )
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
    };
    let package_bytes = size("Size:") + size("Installed-Size:") * 1024;
    assert_eq!(counted(&plan) - without_package, package_bytes, "{plan}");
    let out = moved.import(
        &["--domain", &target],
        &[("BALUCHON_TEST_FAIL_AT", "health")],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        !installed("sl"),
        "the package the import installed was removed"
    );
    assert_same_state(
        &before,
        &host_state(),
        "after a failed import that installed a package",
    );
}

#[test]
fn a_bundle_cannot_choose_where_its_files_go() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_site, moved) = site_and_bundle();
    // The description claims the content directory was /etc/cron.d: a cron job for root.
    let mut forged = baluchon_tests::forge::Forge::read(&moved.bundle);
    let description = forged.text("data/app/app.json");
    forged.set(
        "data/app/app.json",
        description.replace("/var/lib/wordpress/wp-content", "/etc/cron.d"),
    );
    forged.reseal(&moved.keys);
    forged.write(&moved.bundle);
    let before = host_state();
    let target = format!("{}.test", unique("wp-hostile"));
    let out = moved.import(&["--domain", &target, "--on-conflict", "replace"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("/etc/cron.d"), "{stderr}");
    assert!(
        stderr.contains("is not within /var/lib/wordpress"),
        "{stderr}"
    );
    assert_same_state(&before, &host_state(), "after a refused hostile import");
    assert!(!Path::new("/etc/cron.d/index.php").exists());
}

#[test]
fn a_bundle_cannot_send_its_nginx_site_elsewhere() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (site, moved) = site_and_bundle();
    // The description says the site was a file of /etc/cron.d: once placed, a root job.
    let vhost = site.fact("vhost_path");
    let cron = format!(
        "/etc/cron.d/{}",
        Path::new(&vhost).file_name().unwrap().to_string_lossy()
    );
    let mut forged = baluchon_tests::forge::Forge::read(&moved.bundle);
    let description = forged.text("data/app/app.json");
    assert!(description.contains(vhost), "{description}");
    forged.set("data/app/app.json", description.replace(vhost, &cron));
    forged.reseal(&moved.keys);
    forged.write(&moved.bundle);
    let before = host_state();
    let target = format!("{}.test", unique("wp-cron"));
    let out = moved.import(&["--domain", &target, "--on-conflict", "replace"], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&cron) && stderr.contains("is not within /etc/nginx/sites-available"),
        "{stderr}"
    );
    assert_same_state(&before, &host_state(), "after a refused hostile import");
    assert!(!Path::new(&cron).exists());
}

#[test]
fn a_bundle_cannot_enable_an_nginx_site_that_is_not_checked() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let domain = format!("{}.test", unique("wp-enabled"));
    let _site = Site::create("wordpress", &domain);
    // On the source, the enabled site is a file of its own instead of the usual link to
    // the checked site: nginx's master (root) would write its log into /etc/cron.d.
    let enabled = Path::new("/etc/nginx/sites-enabled").join(&domain);
    let link = fs_err::read_link(&enabled).unwrap();
    fs_err::remove_file(&enabled).unwrap();
    fs_err::write(
        &enabled,
        format!(
            "server {{ listen 127.0.0.1:80; server_name {domain}; access_log /etc/cron.d/x; }}\n"
        ),
    )
    .unwrap();
    let moved = Move::export("wordpress", &domain);
    fs_err::remove_file(&enabled).unwrap();
    fs_err::os::unix::fs::symlink(&link, &enabled).unwrap();

    let target = format!("{}.test", unique("wp-enabled"));
    let blockers = moved.blocked_plan(&["--domain", &target])["blockers"].to_string();
    assert!(
        blockers.contains(&format!(
            "{} is not a link to one of the bundle's nginx sites, which are checked",
            enabled.display()
        )),
        "{blockers}"
    );
    let before = host_state();
    let out = moved.import(&["--domain", &target], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_same_state(&before, &host_state(), "after refusing an unchecked site");
    assert!(!Path::new("/etc/cron.d/x").exists());
}

#[test]
fn accounts_the_files_belong_to_are_created_and_removed_on_failure() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let account = format!("bt{}", std::process::id());
    let exists = |db: &str| {
        Command::new("getent")
            .args([db, &account])
            .status()
            .unwrap()
            .success()
    };
    let sh = |cmd: &[&str]| {
        assert!(
            Command::new(cmd[0])
                .args(&cmd[1..])
                .status()
                .unwrap()
                .success(),
            "{cmd:?}"
        )
    };
    sh(&[
        "useradd",
        "--system",
        "--user-group",
        "--no-create-home",
        &account,
    ]);
    let name = unique("owned");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    fs_err::create_dir_all(srv.join("data")).unwrap();
    fs_err::write(srv.join("data/notes.txt"), "the tenant's\n").unwrap();
    sh(&[
        "chown",
        "-R",
        &format!("{account}:{account}"),
        srv.join("data").to_str().unwrap(),
    ]);
    let moved = export_custom_data_app(&name, &srv);
    let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
    // The new host: no such account, no such files.
    sh(&["userdel", &account]);
    let _ = Command::new("groupdel").arg(&account).output();
    fs_err::remove_dir_all(&srv).unwrap();

    let plan = moved.plan(&[]);
    assert_eq!(plan["users_to_create"], serde_json::json!([account]));
    assert_eq!(plan["groups_to_create"], serde_json::json!([account]));
    let out = moved.import(&[], &[("BALUCHON_TEST_FAIL_AT", "files")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        !exists("passwd") && !exists("group"),
        "the accounts were removed again"
    );
    assert!(!srv.exists() && !spec.exists());

    let out = moved.import(&[], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(exists("passwd") && exists("group"));
    use std::os::unix::fs::MetadataExt;
    let owner = fs_err::metadata(srv.join("data/notes.txt")).unwrap().uid();
    let uid: u32 = text(
        &Command::new("id")
            .args(["-u", &account])
            .output()
            .unwrap()
            .stdout,
    )
    .trim()
    .parse()
    .unwrap();
    assert_eq!(owner, uid, "the file belongs to the created account");
    assert_eq!(
        fs_err::read_to_string(srv.join("data/notes.txt")).unwrap(),
        "the tenant's\n"
    );

    let _ = fs_err::remove_dir_all(&srv);
    let _ = fs_err::remove_file(&spec);
    let _ = Command::new("userdel").arg(&account).output();
    let _ = Command::new("groupdel").arg(&account).output();
}

/// A custom app whose spec names no env_file: nothing would give the app its new database
/// password, so the plan refuses, naming the setting it lacks, and the host is left alone.
#[test]
fn a_custom_app_database_without_its_env_file_is_refused_by_the_plan() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let name = unique("no-env");
    let db = name.replace('-', "_");
    mariadb_root(&format!(
        "CREATE DATABASE `{db}`; CREATE USER '{db}'@'localhost' IDENTIFIED BY 'pw-{db}'; \
         GRANT ALL ON `{db}`.* TO '{db}'@'localhost'"
    ));
    let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
    fs_err::create_dir_all("/etc/baluchon/custom").unwrap();
    fs_err::write(
        &spec,
        format!(
            "domain = \"{name}.test\"\n[mariadb]\nname = \"{db}\"\nuser = \"{db}\"\n\
             password = \"pw-{db}\"\nhost = \"localhost\"\n"
        ),
    )
    .unwrap();
    let moved = Move::export_with("custom", &name, &["--allow-clear-secrets"]);
    mariadb_root(&format!(
        "DROP DATABASE `{db}`; DROP USER '{db}'@'localhost'"
    ));
    fs_err::remove_file(&spec).unwrap();

    let before = host_state();
    let blockers = moved.blocked_plan(&[])["blockers"].to_string();
    assert!(
        blockers.contains(
            "value mariadb_password must change, but none of the app's settings that receive it is configured for this instance ({mariadb_env_file})"
        ),
        "{blockers}"
    );
    moved.assert_refused("mariadb_env_file", &before);
}

/// The room check looks at the filesystem each file set goes to: a full one refuses the
/// plan, naming it, even when the work directory's has room.
#[test]
fn a_destination_on_a_full_filesystem_is_refused_by_the_plan() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("full-fs");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    fs_err::create_dir_all(srv.join("data")).unwrap();
    fs_err::write(srv.join("data/big.bin"), vec![7u8; 3 << 20]).unwrap();
    let moved = export_custom_data_app(&name, &srv);
    fs_err::remove_dir_all(&srv).unwrap();

    // The destination's parent is a 1 MiB filesystem of its own.
    fs_err::create_dir_all(&srv).unwrap();
    baluchon_tests::fixture::mount(&["-t", "tmpfs", "-o", "size=1m", "small"], &srv);
    // A directory prepared for the tenant: the import adds to it only when told so.
    let prepared = srv.display().to_string();
    let out = moved.import(&["--plan", "--json", "--merge-into", &prepared], &[]);
    let _ = Command::new("umount").arg(&srv).status();
    let _ = fs_err::remove_dir_all(&srv);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let blockers = plan["blockers"].to_string();
    assert!(
        blockers.contains(&format!(
            "3145728 bytes are needed on the filesystem of {}",
            srv.display()
        )),
        "{blockers}"
    );
    let disk = plan["disk"].as_array().unwrap();
    let small = disk
        .iter()
        .find(|d| d["path"] == srv.display().to_string())
        .unwrap_or_else(|| panic!("{disk:?}"));
    assert_eq!(small["needed"], 3 << 20);
    assert!(small["free"].as_u64().unwrap() < 3 << 20);
}

/// A file set whose destination is on another filesystem than the work directory is copied
/// there, not renamed: the copy keeps what a rename would. Here the data directory goes onto
/// a tmpfs of its own and comes out identical: extended attributes (of a file and of a
/// directory, which is always made anew), a hard link, a sparse file's holes, modes and
/// times to the nanosecond.
#[test]
fn a_file_set_copied_to_another_filesystem_loses_nothing() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("cross-fs");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    let data = srv.join("data");
    fs_err::create_dir_all(data.join("album")).unwrap();
    fs_err::write(data.join("tagged.txt"), "tagged\n").unwrap();
    fs_err::write(data.join("album/a.jpg"), "not really a photo\n").unwrap();
    fs_err::hard_link(data.join("album/a.jpg"), data.join("album/b.jpg")).unwrap();
    for (path, attr, value) in [
        ("tagged.txt", "user.origin", "old-host"),
        ("album", "user.kind", "photos"),
    ] {
        set_xattr(&data.join(path), attr, value);
    }
    {
        use fs_err::os::unix::fs::FileExt;
        let image = fs_err::File::create(data.join("disk.img")).unwrap();
        image.set_len(16 << 20).unwrap();
        image.write_all_at(b"boot", 0).unwrap();
        image.write_all_at(b"data", 9 << 20).unwrap();
    }
    let before = tree::walk(&data);
    assert!(
        before[&b"disk.img"[..]].sparse,
        "the source image is sparse"
    );
    let moved = export_custom_data_app(&name, &srv);
    let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
    fs_err::remove_dir_all(&srv).unwrap();

    fs_err::create_dir_all(&srv).unwrap();
    baluchon_tests::fixture::mount(&["-t", "tmpfs", "-o", "size=64m", "elsewhere"], &srv);
    let out = moved.import(&["--merge-into", &srv.display().to_string()], &[]);
    let after = tree::walk(&data);
    let _ = Command::new("umount").arg(&srv).status();
    let _ = fs_err::remove_dir_all(&srv);
    let _ = fs_err::remove_file(&spec);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(differences(&before, &after, true), Vec::<String>::new());
}

/// Another account than root made the directory where a set goes a link (to /etc/cron.d,
/// say): root would follow it and place the bundle's files there. The import refuses before
/// any change, and nothing appears where the link leads.
#[test]
fn a_set_is_never_placed_through_a_link_another_account_may_change() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("linked-dest");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    fs_err::create_dir_all(srv.join("data")).unwrap();
    fs_err::write(srv.join("data/notes.txt"), "notes\n").unwrap();
    let moved = export_custom_data_app(&name, &srv);
    fs_err::remove_dir_all(&srv).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    fs_err::os::unix::fs::symlink(elsewhere.path(), &srv).unwrap();
    let nobody = Some(rustix::fs::Uid::from_raw(65534));
    rustix::fs::chownat(
        rustix::fs::CWD,
        &srv,
        nobody,
        None,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();

    let before = host_state();
    let out = moved.import(&[], &[]);
    let after = host_state();
    fs_err::remove_file(&srv).unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "is reached through {}, a link that another account than root may change",
            srv.display()
        )),
        "{stderr}"
    );
    assert_same_state(&before, &after, "after refusing to place through a link");
    assert_eq!(
        fs_err::read_dir(elsewhere.path()).unwrap().count(),
        0,
        "nothing placed where the link leads"
    );
}

fn set_xattr(path: &Path, name: &str, value: &str) {
    rustix::fs::setxattr(
        path,
        name,
        value.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
}

/// A file set copied to another filesystem that cannot hold what it has (here a ramfs,
/// without extended attributes) stops the import before its first change, not midway:
/// the filesystem is tried where the set goes, and the trial leaves no trace there.
#[test]
fn a_destination_without_xattrs_is_refused_before_anything_changes() {
    use std::os::unix::fs::MetadataExt as _;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("ramfs-dest");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    let data = srv.join("data");
    fs_err::create_dir_all(&data).unwrap();
    fs_err::write(data.join("tagged.txt"), "tagged\n").unwrap();
    fs_err::hard_link(data.join("tagged.txt"), data.join("same.txt")).unwrap();
    set_xattr(&data.join("tagged.txt"), "user.origin", "old-host");
    let moved = export_custom_data_app(&name, &srv);
    let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
    fs_err::remove_dir_all(&srv).unwrap();
    let _ = fs_err::remove_file(&spec);

    fs_err::create_dir_all(&srv).unwrap();
    baluchon_tests::fixture::mount(&["-t", "ramfs", "ramfs"], &srv);
    let mtime = |dir: &Path| {
        let meta = fs_err::metadata(dir).unwrap();
        (meta.mtime(), meta.mtime_nsec())
    };
    let before = mtime(&srv);
    let out = moved.import(&["--merge-into", &srv.display().to_string()], &[]);
    let left: Vec<_> = fs_err::read_dir(&srv)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    let after = mtime(&srv);
    let _ = Command::new("umount").arg(&srv).status();
    let _ = fs_err::remove_dir_all(&srv);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{} cannot be placed: the filesystem of {} refused user.* extended attributes (1 entry in the tree has some)",
            data.display(),
            srv.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was changed"), "{stderr}");
    assert_eq!(
        left,
        Vec::<std::ffi::OsString>::new(),
        "the trial left nothing"
    );
    assert_eq!(before, after, "and put the directory's times back");
    assert!(!spec.exists(), "no other file set was placed");
}

/// The work directory's filesystem stages the app's tree: if it keeps no extended
/// attributes that the tree has, the import says so before staging, and what to do about it
/// (another --work-dir), not the tree import's flags.
#[test]
fn a_work_directory_without_xattrs_is_named_before_staging() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("ramfs-work");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    fs_err::create_dir_all(srv.join("data")).unwrap();
    fs_err::write(srv.join("data/tagged.txt"), "tagged\n").unwrap();
    set_xattr(&srv.join("data/tagged.txt"), "user.origin", "old-host");
    let moved = export_custom_data_app(&name, &srv);
    fs_err::remove_dir_all(&srv).unwrap();

    let work = moved.dir.path().join("ramfs-work");
    fs_err::create_dir(&work).unwrap();
    baluchon_tests::fixture::mount(&["-t", "ramfs", "ramfs"], &work);
    // As Move::import does, with this work directory instead of the move's.
    let out = Command::new(baluchon_tests::fixture::baluchon_bin())
        .args(["import", "--plan"])
        .arg(&moved.bundle)
        .arg("--signer")
        .arg(&moved.keys.allowed_signers)
        .arg("--work-dir")
        .arg(&work)
        .env("BALUCHON_STATE_DIR", moved.dir.path())
        .output()
        .unwrap();
    let _ = Command::new("umount").arg(&work).status();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot stage this app: it refused user.* extended attributes (1 entry in the tree has some); give --work-dir a directory on another filesystem"),
        "{stderr}"
    );
    assert!(!stderr.contains("--drop-xattrs"), "{stderr}");
    assert!(!srv.exists());
}

/// `export --app … --json` reports what the tree export reports: an entry that could not
/// be archived (a FIFO) and an attribute outside `user.*` (here `trusted.*`) show in the
/// JSON, as they do in the human report, not only in the bundle's index.
#[test]
fn an_app_exports_json_report_lists_what_was_not_archived() {
    let name = unique("json-report");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    let data = srv.join("data");
    fs_err::create_dir_all(&data).unwrap();
    fs_err::write(data.join("notes.txt"), "kept\n").unwrap();
    set_xattr(&data.join("notes.txt"), "trusted.note", "root only");
    baluchon_tests::fixture::fifo(&data.join("queue"));
    let spec = write_custom_spec(name.as_str(), &data);
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let bundle = dir.path().join("app.baluchon");
    let out = baluchon(
        &[
            &"export",
            &"--app",
            &"custom",
            &"--instance",
            &name,
            &"--sign-key",
            &keys.private,
            &"-o",
            &bundle,
            &"--json",
        ],
        dir.path(),
    );
    let _ = fs_err::remove_file(&spec);
    let _ = fs_err::remove_dir_all(&srv);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["skipped_count"], 1, "{report}");
    assert_eq!(
        report["skipped"],
        serde_json::json!([{"path": format!("{}/queue", data.display()).trim_start_matches('/'), "reason": "FIFO"}]),
        "{report}"
    );
    assert_eq!(report["xattrs_not_archived"], 1, "{report}");
    assert_eq!(report["app"], "custom", "app.json's fields are still there");
    assert_eq!(
        report["bundle_size"],
        fs_err::metadata(&bundle).unwrap().len()
    );
}

/// Exports the custom app `name` whose data directory is `srv/data`, described by a spec
/// with only its domain and that directory; the spec is removed again.
/// The custom app `name`'s instance file, its data directory being `data`.
fn write_custom_spec(name: &str, data: &Path) -> PathBuf {
    let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
    fs_err::create_dir_all("/etc/baluchon/custom").unwrap();
    fs_err::write(
        &spec,
        format!(
            "domain = \"{name}.test\"\ndata_dir = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    spec
}

fn export_custom_data_app(name: &str, srv: &Path) -> Move {
    let spec = write_custom_spec(name, &srv.join("data"));
    let moved = Move::export("custom", name);
    fs_err::remove_file(&spec).unwrap();
    moved
}

/// A file set removed once the export has checked it, as the archiving begins: the walk
/// finds nothing of it, and the export fails instead of recording an empty set.
#[test]
fn a_file_set_removed_while_exporting_fails_the_export() {
    use baluchon_bundle::{Phase, Progress};
    use baluchon_migrate::{capture_instance, CaptureError, CaptureOptions};
    use baluchon_recipe::{Catalogue, LocalHost};

    struct RemoveWhenArchiving(PathBuf);
    impl Progress for RemoveWhenArchiving {
        fn phase(&self, phase: Phase, _: Option<u64>) {
            if phase == Phase::Archiving {
                fs_err::remove_dir_all(&self.0).unwrap();
            }
        }
    }

    let name = unique("vanishing-set");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    let data = srv.join("data");
    fs_err::create_dir_all(&data).unwrap();
    fs_err::write(data.join("notes.txt"), "notes\n").unwrap();
    let spec = write_custom_spec(name.as_str(), &data);
    let recipe = Catalogue::load(&[]).unwrap().get("custom").unwrap().clone();
    let instance = recipe.resolve(&LocalHost::new(), &name).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::new(dir.path());
    let output = dir.path().join("app.baluchon");
    let result = capture_instance(
        &recipe,
        &instance,
        &LocalHost::new(),
        &CaptureOptions::new(output.clone()),
        &keys.key,
        &RemoveWhenArchiving(data.clone()),
    );
    fs_err::remove_file(&spec).unwrap();
    fs_err::remove_dir_all(&srv).unwrap();
    match result {
        Err(CaptureError::SetVanished { path }) => assert_eq!(path, data),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("the export succeeded"),
    }
    assert!(!output.exists(), "no bundle");
}

#[test]
fn an_older_bundle_is_refused_unless_going_back_is_asked_for() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (site, moved) = site_and_bundle();
    // The tenant's last import, as the importer records it: a later bundle (this one is
    // the tenant's first export, sequence 1).
    let dir = moved.work.join("imports").join(site.fact("domain"));
    fs_err::create_dir_all(&dir).unwrap();
    let record = serde_json::json!({
        "bundle_id": "a-later-bundle",
        "sequence": 5,
        "instance": site.fact("domain"),
    });
    fs_err::write(dir.join("imported.json"), record.to_string()).unwrap();
    let before = host_state();
    let target = format!("{}.test", unique("wp-older"));

    let out = moved.import(&["--domain", &target], &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("(sequence 1) is older than the last one imported"),
        "{stderr}"
    );
    assert!(stderr.contains("--allow-older"), "{stderr}");
    assert_same_state(&before, &host_state(), "after refusing an older bundle");

    let plan = moved.plan(&["--domain", &target, "--allow-older"]);
    assert!(plan["blockers"].as_array().unwrap().is_empty(), "{plan}");
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings
            .contains("going back: this bundle is sequence 1, the last one imported for tenant")
            && warnings.contains("was 5 (bundle a-later-bundle)"),
        "{warnings}"
    );
    let out = moved.import(&["--domain", &target, "--allow-older"], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(http_get(&target, "/").0, 200, "the older bundle is served");
    let last: Value =
        serde_json::from_slice(&fs_err::read(dir.join("imported.json")).unwrap()).unwrap();
    assert_eq!(
        last["sequence"], 1,
        "the older bundle is now the last one: {last}"
    );
    remove_imported(&plan);
}

/// A regular account of this host, removed on drop.
struct Account(String);

impl Account {
    fn create() -> Self {
        let name = unique("acct")
            .replace(['-', '.'], "")
            .chars()
            .take(28)
            .collect::<String>();
        let out = Command::new("useradd")
            .args(["--no-create-home", "--shell", "/usr/sbin/nologin", &name])
            .output()
            .unwrap();
        assert!(out.status.success(), "useradd: {}", text(&out.stderr));
        Self(name)
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.0).output();
    }
}

#[test]
fn a_bundle_site_or_pool_cannot_reach_beyond_its_app() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let domain = format!("{}.test", unique("wp-reach"));
    let site = Site::create("wordpress", &domain);
    let account = Account::create();
    // The source's site and pool as a hostile exporter would have them, put back once the
    // bundle is made.
    let vhost = PathBuf::from(site.fact("vhost_path"));
    let pool = PathBuf::from(site.fact("pool_path"));
    let (vhost_text, pool_text) = (
        fs_err::read_to_string(&vhost).unwrap(),
        fs_err::read_to_string(&pool).unwrap(),
    );
    let end = vhost_text.rfind('}').unwrap();
    let hostile_site = format!(
        "{}    listen 127.0.0.1:8080 default_server;\n    location /db/ {{ alias /var/lib/mysql/; }}\n    \
         location /other.php {{ fastcgi_pass unix:/run/php/someone-else.sock; }}\n{}",
        &vhost_text[..end],
        &vhost_text[end..]
    );
    fs_err::write(&vhost, hostile_site).unwrap();
    fs_err::write(
        &pool,
        pool_text.replace("user = www-data", &format!("user = {}", account.0)),
    )
    .unwrap();
    let moved = Move::export("wordpress", &domain);
    fs_err::write(&vhost, vhost_text).unwrap();
    fs_err::write(&pool, pool_text).unwrap();

    let target = format!("{}.test", unique("wp-reached"));
    let blockers = |extra: &[&str]| {
        let args = [&["--domain", target.as_str()][..], extra].concat();
        moved.blocked_plan(&args)["blockers"].to_string()
    };
    let refused = blockers(&[]);
    for said in [
        "listen 127.0.0.1:8080 default_server` (the site would answer for every name",
        "alias /var/lib/mysql/` (it would serve files that are not the app's)",
        "fastcgi_pass unix:/run/php/someone-else.sock` (not one of the bundle's PHP-FPM pools",
        &format!(
            "user {0}, an existing account of this host; --allow-account {0}",
            account.0
        ),
    ] {
        assert!(refused.contains(said), "{said}: {refused}");
    }
    let allowed = blockers(&["--allow-account", &account.0]);
    assert!(!allowed.contains(&account.0), "{allowed}");
    assert!(allowed.contains("default_server"), "{allowed}");

    let before = host_state();
    let out = moved.import(&["--domain", &target, "--allow-account", &account.0], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("someone-else.sock"),
        "{}",
        text(&out.stderr)
    );
    assert_same_state(&before, &host_state(), "after refusing a hostile site");
    assert_eq!(http_get(&target, "/").0, 404, "the new site is not served");
}

#[test]
fn tables_outside_transactions_are_dumped_under_a_lock_and_the_import_serves_them() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let domain = format!("{}.test", unique("wp-myisam"));
    let site = Site::create("wordpress", &domain);
    let db = site.fact("db_name");
    // Plugins still create MyISAM tables: one transaction is no snapshot of those.
    mariadb_root(&format!("ALTER TABLE `{db}`.wp_options ENGINE=MyISAM"));
    let moved = Move::export("wordpress", &domain);
    let description: Value = serde_json::from_slice(&baluchon_tests::apps::payload(
        &moved.bundle,
        "data/app/app.json",
    ))
    .unwrap();
    let dump = &description["databases"][0];
    let method = dump["method"].as_str().unwrap();
    assert!(
        method.contains("--lock-tables") && !method.contains("--single-transaction"),
        "{method}"
    );
    let note = dump["note"].as_str().unwrap();
    assert!(note.contains("wp_options (MyISAM)"), "{note}");

    let target = format!("{}.test", unique("wp-myisam-new"));
    let plan = moved.plan(&["--domain", &target]);
    let out = moved.import(&["--domain", &target], &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let new_db = plan["databases"][0]["to"].as_str().unwrap();
    let home = mariadb_root(&format!(
        "SELECT option_value FROM `{new_db}`.wp_options WHERE option_name = 'home'"
    ));
    assert_eq!(
        home,
        format!("http://{target}"),
        "the MyISAM table came over, rewritten"
    );
    assert_eq!(http_get(&target, "/").0, 200);
    remove_imported(&plan);
}

#[test]
fn a_site_from_an_older_php_runs_on_this_hosts_php_with_php_version() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    services();
    let domain = format!("{}.test", unique("wp-php74"));
    let site = Site::create("wordpress", &domain);
    // The source as Debian 11 lays it out: PHP 7.4's pool directory and socket. Only files
    // are read by the export, so nothing needs to run there.
    let vhost = PathBuf::from(site.fact("vhost_path"));
    let pool = PathBuf::from(site.fact("pool_path"));
    let old_pool = Path::new("/etc/php/7.4/fpm/pool.d").join(pool.file_name().unwrap());
    let (vhost_text, pool_text) = (
        fs_err::read_to_string(&vhost).unwrap(),
        fs_err::read_to_string(&pool).unwrap(),
    );
    fs_err::create_dir_all(old_pool.parent().unwrap()).unwrap();
    fs_err::write(&old_pool, pool_text.replace("php8.2-fpm", "php7.4-fpm")).unwrap();
    fs_err::remove_file(&pool).unwrap();
    fs_err::write(&vhost, vhost_text.replace("php8.2-fpm", "php7.4-fpm")).unwrap();
    let moved = Move::export("wordpress", &domain);
    fs_err::remove_dir_all("/etc/php/7.4").unwrap();
    fs_err::write(&vhost, &vhost_text).unwrap();
    fs_err::write(&pool, &pool_text).unwrap();
    let description: Value = serde_json::from_slice(&baluchon_tests::apps::payload(
        &moved.bundle,
        "data/app/app.json",
    ))
    .unwrap();
    assert_eq!(description["values"]["php_version"], "7.4", "{description}");
    drop(site);

    let target = format!("{}.test", unique("wp-php82"));
    let blockers = moved.blocked_plan(&["--domain", &target])["blockers"].to_string();
    assert!(
        blockers.contains("package php7.4-fpm is needed and not available here (this host has PHP 8.2: --php-version 8.2 runs the app on it)"),
        "{blockers}"
    );

    let args = ["--domain", target.as_str(), "--php-version", "8.2"];
    let plan = moved.plan(&args);
    assert!(
        plan["warnings"]
            .to_string()
            .contains("PHP 7.4 in the bundle runs on PHP 8.2 here"),
        "{plan}"
    );
    moved.import_served(&args);
    assert!(pool.exists(), "the pool went to PHP 8.2's directory");
    let placed = fs_err::read_to_string(&pool).unwrap();
    assert!(
        placed.contains("php8.2-fpm") && !placed.contains("7.4"),
        "{placed}"
    );
    let site_here = fs_err::read_to_string(format!("/etc/nginx/sites-available/{target}")).unwrap();
    assert!(
        site_here.contains("php8.2-fpm") && !site_here.contains("php7.4"),
        "{site_here}"
    );
    assert!(!Path::new("/etc/php/7.4").exists());
    remove_imported(&plan);
    let _ = fs_err::remove_file(&pool);
}

/// A bundle names where its files go, within the places apps live: pointed at a directory
/// that is already there (another site's web root, say), it would add its files to it. The
/// import adds to an existing directory only if the operator names it, or if an earlier
/// import of the same tenant, signed by the same key, put files there; a bundle from another
/// key that claims the tenant's name gets no such right.
#[test]
fn a_bundle_adds_to_an_existing_directory_only_if_it_is_the_tenants() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("merge");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    let data = srv.join("data");
    fs_err::create_dir_all(&data).unwrap();
    fs_err::write(data.join("notes.txt"), "the tenant's notes\n").unwrap();
    let first = export_custom_data_app(&name, &srv);
    let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
    fs_err::remove_dir_all(&srv).unwrap();
    // Here, the same path is somebody else's directory.
    fs_err::create_dir_all(&data).unwrap();
    fs_err::write(data.join("theirs.txt"), "another tenant's file\n").unwrap();
    let names = |dir: &Path| {
        let mut names: Vec<String> = fs_err::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let other_name = unique("merge-other");
    let other_spec = PathBuf::from(format!("/etc/baluchon/custom/{other_name}.toml"));
    let cleanup = || {
        let _ = fs_err::remove_dir_all(&srv);
        let _ = fs_err::remove_file(&spec);
        let _ = fs_err::remove_file(&other_spec);
    };

    let plan = first.blocked_plan(&[]);
    let blockers = plan["blockers"].to_string();
    assert!(
        blockers.contains(&format!(
            "{} is already on this host, and neither the app's packages nor an earlier import of this tenant put it there",
            data.display()
        )) && blockers.contains(&format!("--merge-into {}", data.display())),
        "{blockers}"
    );
    let out = first.import(&[], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(names(&data), ["theirs.txt"], "nothing added");
    assert!(!spec.exists(), "no other file set placed");

    // The operator says the directory is this tenant's.
    let out = first.import(&["--merge-into", &data.display().to_string()], &[]);
    if !out.status.success() {
        cleanup();
        panic!("{}", text(&out.stderr));
    }
    assert_eq!(names(&data), ["notes.txt", "theirs.txt"]);
    let tenant_dirs: Vec<PathBuf> = fs_err::read_dir(first.work.join("imports"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [tenant_dir] = &tenant_dirs[..] else {
        panic!("{tenant_dirs:?}")
    };
    let record = fs_err::read(tenant_dir.join("imported.json")).unwrap();
    let parsed: Value = serde_json::from_slice(&record).unwrap();
    assert!(
        parsed["claimed"]
            .as_array()
            .unwrap()
            .contains(&Value::from(data.to_str().unwrap())),
        "{parsed}"
    );
    // The first tenant's record, in another move's work directory (as on the host where
    // the first import ran).
    let tenant = tenant_dir.file_name().unwrap();
    let copy_record = |to: &Move| {
        let dir = to.work.join("imports").join(tenant);
        fs_err::create_dir_all(&dir).unwrap();
        fs_err::write(dir.join("imported.json"), &record).unwrap();
    };

    // A bundle of the same tenant from another key, imported with the same record.
    fs_err::write(data.join("new-notes.txt"), "written since\n").unwrap();
    let second = Move::export("custom", &name);
    fs_err::remove_file(data.join("new-notes.txt")).unwrap();
    copy_record(&second);
    let plan = second.blocked_plan(&[]);
    let blockers = plan["blockers"].to_string();
    let plan_with_new_signer = second.import(&["--plan", "--json", "--allow-new-signer"], &[]);

    // Another tenant's bundle sent to the same directory, on the host that holds the record.
    write_custom_spec(&other_name, &data);
    fs_err::write(data.join("planted.php"), "<?php // another tenant's code\n").unwrap();
    let other = Move::export("custom", &other_name);
    fs_err::remove_file(data.join("planted.php")).unwrap();
    copy_record(&other);
    fs_err::remove_file(&other_spec).unwrap();
    let other_blockers = other.blocked_plan(&[])["blockers"].to_string();
    let other_named = other.import(
        &[
            "--plan",
            "--json",
            "--merge-into",
            &data.display().to_string(),
        ],
        &[],
    );
    cleanup();
    let first_tenant = tenant.to_string_lossy();
    assert!(
        other_blockers.contains(&format!(
            "{} is tenant {first_tenant}'s (its imports placed {})",
            data.display(),
            data.display()
        )),
        "{other_blockers}"
    );
    assert!(
        other_named.status.success(),
        "the operator may say so: {}",
        text(&other_named.stdout)
    );
    assert!(
        blockers.contains("was last imported from a bundle signed by SHA256:")
            && blockers.contains("--allow-new-signer"),
        "{blockers}"
    );
    assert!(
        blockers.contains(&format!("{} is already on this host", data.display())),
        "another key's bundle does not inherit the tenant's directories: {blockers}"
    );
    // Told the key changed, the operator's import may add to the tenant's own directories.
    assert!(
        plan_with_new_signer.status.success(),
        "{}",
        text(&plan_with_new_signer.stdout)
    );
}

/// A file identical to one already here is left alone, without asking whose it is; but one
/// the import rewrites first (here the custom spec, given a new domain) replaces what is
/// there, and so must be this tenant's.
#[test]
fn a_file_the_import_rewrites_is_not_taken_as_identical() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let name = unique("rewritten");
    let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
    fs_err::create_dir_all(srv.join("data")).unwrap();
    fs_err::write(srv.join("data/notes.txt"), "notes\n").unwrap();
    let spec = write_custom_spec(&name, &srv.join("data"));
    let moved = Move::export("custom", &name);
    fs_err::remove_dir_all(&srv).unwrap();

    let kept = moved.plan(&[]);
    let new_domain = format!("{}.test", unique("rewritten-elsewhere"));
    let plan = moved.blocked_plan(&["--domain", &new_domain, "--on-conflict", "replace"]);
    let _ = fs_err::remove_file(&spec);
    assert!(
        kept["blockers"].as_array().unwrap().is_empty(),
        "the same spec, unchanged: {kept}"
    );
    let blockers = plan["blockers"].to_string();
    assert!(
        blockers.contains(&format!(
            "{} is already on this host, and neither the app's packages nor an earlier import of this tenant put it there",
            spec.display()
        )),
        "{blockers}"
    );
}
