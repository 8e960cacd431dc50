//! Real apps captured into bundles: WordPress with MariaDB and DokuWiki, from Debian's
//! packages, served by nginx and PHP-FPM that the suite starts; and the errors a host
//! meets when something is wrong. Nothing is mocked.

use std::path::{Path, PathBuf};
use std::process::Output;

use baluchon_tests::apps::{baluchon, http_get, payload, services, text, tree_file, unique, Site};
use baluchon_tests::fixture::Keys;
use serde_json::Value;

struct Work {
    dir: tempfile::TempDir,
    keys: Keys,
}

impl Work {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::new(dir.path());
        Self { dir, keys }
    }

    fn out(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn export(&self, app: &str, instance: &str, output: &Path, extra: &[&str]) -> Output {
        let mut args: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![
            &"export",
            &"--app",
            &app,
            &"--instance",
            &instance,
            &"--sign-key",
            &self.keys.private,
            &"-o",
            &output,
        ];
        for e in extra {
            args.push(e);
        }
        // A custom app's spec file may hold its database password, which an import can
        // regenerate only with the spec's env_file: in clear only when asked.
        if app == "custom" {
            args.push(&"--allow-clear-secrets");
        }
        baluchon(&args, self.dir.path())
    }

    fn verify(&self, bundle: &Path) {
        let out = baluchon(
            &[&"verify", &"--signer", &self.keys.allowed_signers, &bundle],
            self.dir.path(),
        );
        assert!(out.status.success(), "verify: {}", text(&out.stderr));
    }

    /// Fails unless the export failed with exit code 1, naming `expected`, and left nothing.
    fn assert_failed_cleanly(&self, out: &Output, output: &Path, expected: &str) {
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
        assert!(
            stderr.contains(expected),
            "expected {expected:?} in:\n{stderr}"
        );
        assert!(!output.exists(), "a bundle was written");
        let leftovers: Vec<_> = fs_err::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .filter(|n| n.to_string_lossy().contains("partial"))
            .collect();
        assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    }
}

fn app_json(bundle: &Path) -> Value {
    serde_json::from_slice(&payload(bundle, "data/app/app.json")).expect("app.json parses")
}

fn installed_version(package: &str) -> String {
    let out = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .unwrap();
    text(&out.stdout)
}

/// The config that holds WordPress's secrets is a link to a file beside it: the bundle
/// would keep the link, and the file it leads to with the secrets, so the export refuses to
/// go on without encryption.
#[test]
fn a_secret_behind_a_symlink_is_not_exported_in_clear() {
    let domain = format!("{}.test", unique("wp-linked"));
    let site = Site::create("wordpress", &domain);
    let config = PathBuf::from(site.fact("config_path"));
    let real = config.with_extension("real.php");
    fs_err::rename(&config, &real).unwrap();
    fs_err::os::unix::fs::symlink(real.file_name().unwrap(), &config).unwrap();

    let work = Work::new();
    let bundle = work.out("blog.baluchon");
    let out = work.export("wordpress", &domain, &bundle, &[]);
    fs_err::remove_file(&config).unwrap();
    fs_err::rename(&real, &config).unwrap();
    work.assert_failed_cleanly(&out, &bundle, "would be stored in clear");
}

#[test]
fn wordpress_bundle_holds_content_uploads_dump_config_and_packages() {
    let domain = format!("{}.test", unique("wp-export"));
    let site = Site::create("wordpress", &domain);
    let (status, page) = http_get(&domain, &format!("/?p={}", site.fact("post_id")));
    assert_eq!(status, 200);
    assert!(
        text(&page).contains(site.fact("canary")),
        "the post renders before export"
    );

    let work = Work::new();
    let bundle = work.out("blog.baluchon");
    let out = work.export("wordpress", &domain, &bundle, &[]);
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    work.verify(&bundle);

    // The uploaded image and the config files, byte for byte, read with tar and zstd;
    // the config without its secrets (the import makes new ones).
    for key in ["upload_path", "config_path", "vhost_path", "pool_path"] {
        let path = site.fact(key);
        let mut expected = fs_err::read(path).unwrap();
        if key == "config_path" {
            expected = redacted(&text(&expected)).into_bytes();
        }
        assert_eq!(tree_file(&bundle, path), expected, "{key} {path}");
    }
    // The post is in the database dump, which MariaDB made in one transaction.
    let dump = text(&payload(&bundle, "data/db/main.sql.zst"));
    assert!(dump.contains(site.fact("canary")), "canary not in the dump");
    assert!(dump.contains("CREATE TABLE `wp_posts`"));
    assert!(dump.contains("-- Dump completed"), "the dump is complete");

    let app = app_json(&bundle);
    assert_eq!(app["app"], "wordpress");
    assert_eq!(app["instance"], domain.as_str());
    assert_eq!(app["version"], installed_version("wordpress").as_str());
    let db = &app["databases"][0];
    assert_eq!(db["engine"], "mariadb");
    assert_eq!(db["name"], site.fact("db_name"));
    assert!(db["server_version"].as_str().unwrap().contains("MariaDB"));
    assert_eq!(db["charset"], "utf8mb4");
    assert!(app["code_packages"].as_array().unwrap().iter().any(
        |p| p["name"] == "wordpress" && p["version"] == installed_version("wordpress").as_str()
    ));
    assert!(app["needs_packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "php8.2-fpm"));
    assert!(app["installed_packages"].as_array().unwrap().len() > 100);
    let kinds: Vec<&str> = app["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["nginx-site", "php-fpm-pool"]);
    // The secrets are named, left out of the config (the import makes new ones), and
    // never written to the description.
    let secrets = serde_json::json!([
        "auth_key",
        "auth_salt",
        "db_password",
        "logged_in_key",
        "logged_in_salt",
        "nonce_key",
        "nonce_salt",
        "secure_auth_key",
        "secure_auth_salt"
    ]);
    assert_eq!(app["secret_values"], secrets);
    assert_eq!(app["redacted_secrets"], secrets);
    assert!(!text(&payload(&bundle, "data/app/app.json")).contains(site.fact("db_password")));
    // Packaged code is recorded, not copied.
    assert!(app["excluded"].as_array().unwrap().iter().any(|e| {
        e["path"] == "/var/lib/wordpress/wp-content/index.php"
            && e["reason"]
                .as_str()
                .unwrap()
                .contains("unmodified file of package wordpress")
    }));
    // The recipe used travels with the bundle, as data.
    assert_eq!(
        payload(&bundle, "data/app/recipe.toml"),
        fs_err::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/wordpress.toml"))
            .unwrap()
    );
}

#[test]
fn dokuwiki_bundle_holds_pages_media_and_accounts_but_not_caches_or_packaged_plugins() {
    let domain = format!("{}.test", unique("wiki-export"));
    let site = Site::create("dokuwiki", &domain);
    let work = Work::new();
    let bundle = work.out("wiki.baluchon");
    let out = work.export("dokuwiki", &domain, &bundle, &[]);
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    work.verify(&bundle);

    let page = tree_file(&bundle, site.fact("page_path"));
    assert!(text(&page).contains(site.fact("canary")));
    assert_eq!(
        tree_file(&bundle, site.fact("media_path")),
        fs_err::read(site.fact("media_path")).unwrap()
    );
    // Accounts and ACLs: without them nobody could log in on the new host.
    assert_eq!(
        tree_file(&bundle, "/var/lib/dokuwiki/acl/users.auth.php"),
        fs_err::read("/var/lib/dokuwiki/acl/users.auth.php").unwrap()
    );

    let app = app_json(&bundle);
    let excluded = app["excluded"].as_array().unwrap();
    let reason_of = |path: &str| {
        excluded
            .iter()
            .find(|e| e["path"] == path)
            .map(|e| e["reason"].as_str().unwrap().to_owned())
    };
    assert!(reason_of("/var/lib/dokuwiki/data/cache")
        .unwrap()
        .contains("excluded by the recipe"));
    assert!(reason_of("/var/lib/dokuwiki/lib/plugins/info/syntax.php")
        .unwrap()
        .contains("package dokuwiki"));
    let index = baluchon_tests::index_of(&bundle);
    let in_tree = |p: &str| index.iter().any(|e| e.path.as_bytes() == p.as_bytes());
    assert!(!in_tree("var/lib/dokuwiki/lib/plugins/info/syntax.php"));
    assert!(!in_tree("var/lib/dokuwiki/data/cache"));
    assert!(in_tree("var/lib/dokuwiki/data/pages"));
    assert!(app["databases"].as_array().unwrap().is_empty());
}

#[test]
fn detect_lists_instances_with_domain_and_version() {
    let domain = format!("{}.test", unique("wp-detect"));
    let _site = Site::create("wordpress", &domain);
    let work = Work::new();
    let out = baluchon(&[&"detect", &"--json"], work.dir.path());
    assert!(out.status.success(), "{}", text(&out.stderr));
    let apps: Value = serde_json::from_slice(&out.stdout).unwrap();
    let wordpress = apps
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["app"] == "wordpress")
        .expect("wordpress recipe listed");
    let instance = wordpress["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == domain.as_str())
        .expect("the site is detected");
    assert_eq!(instance["domain"], domain.as_str());
    assert_eq!(instance["version"], installed_version("wordpress").as_str());

    let human = baluchon(&[&"detect"], work.dir.path());
    assert!(text(&human.stdout).contains(&domain));
}

#[test]
fn plan_shows_sizes_and_writes_nothing() {
    let domain = format!("{}.test", unique("wp-plan"));
    let site = Site::create("wordpress", &domain);
    let work = Work::new();
    let bundle = work.out("plan.baluchon");
    let out = work.export("wordpress", &domain, &bundle, &["--plan", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!bundle.exists(), "--plan wrote a bundle");
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let upload_size = fs_err::metadata(site.fact("upload_path")).unwrap().len();
    let data = plan["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["role"] == "data")
        .unwrap();
    assert!(data["bytes"].as_u64().unwrap() >= upload_size);
    assert!(plan["databases"][0]["estimated_bytes"].as_u64().unwrap() > 0);
    assert!(plan["total_bytes"].as_u64().unwrap() > upload_size);

    let human = work.export("wordpress", &domain, &bundle, &["--plan"]);
    assert!(text(&human.stdout).contains("nothing written"));
    assert!(!bundle.exists());
}

/// An in-house app described in /etc/baluchon/custom/, removed on drop.
struct CustomInstance {
    name: String,
    spec: PathBuf,
    srv: PathBuf,
}

impl CustomInstance {
    fn new(body: impl FnOnce(&Path) -> String) -> Self {
        let name = unique("custom");
        let srv = PathBuf::from(format!("/srv/baluchon-test-{name}"));
        fs_err::create_dir_all(srv.join("data")).unwrap();
        fs_err::write(srv.join("data/notes.txt"), "kept\n").unwrap();
        fs_err::create_dir_all("/etc/baluchon/custom").unwrap();
        let spec = PathBuf::from(format!("/etc/baluchon/custom/{name}.toml"));
        fs_err::write(&spec, body(&srv)).unwrap();
        Self { name, spec, srv }
    }
}

impl Drop for CustomInstance {
    fn drop(&mut self) {
        let _ = fs_err::remove_file(&self.spec);
        let _ = fs_err::remove_dir_all(&self.srv);
    }
}

#[test]
fn unknown_app_and_missing_instance_are_named() {
    let work = Work::new();
    let bundle = work.out("x.baluchon");
    let out = work.export("nope", "x", &bundle, &[]);
    work.assert_failed_cleanly(&out, &bundle, "unknown app \"nope\"");
    assert!(text(&out.stderr).contains("wordpress"), "known apps listed");

    let out = work.export("wordpress", "absent.example", &bundle, &[]);
    work.assert_failed_cleanly(&out, &bundle, "no instance \"absent.example\"");
}

#[test]
fn wrong_database_credentials_fail_with_the_servers_message() {
    services();
    let domain = format!("{}.test", unique("wp-creds"));
    let site = Site::create("wordpress", &domain);
    let custom = CustomInstance::new(|srv| {
        format!(
            "domain = \"app.test\"\ndata_dir = \"{}/data\"\n[mariadb]\nname = \"{}\"\n\
             user = \"{}\"\npassword = \"not-the-password\"\n",
            srv.display(),
            site.fact("db_name"),
            site.fact("db_user")
        )
    });
    let work = Work::new();
    let bundle = work.out("x.baluchon");
    let out = work.export("custom", &custom.name, &bundle, &[]);
    work.assert_failed_cleanly(&out, &bundle, "Access denied");
    // The password given never shows in the error.
    assert!(!text(&out.stderr).contains("not-the-password"));
}

#[test]
fn unreachable_database_fails_clearly() {
    services();
    let custom = CustomInstance::new(|srv| {
        format!(
            "domain = \"app.test\"\ndata_dir = \"{}/data\"\n[mariadb]\nname = \"app\"\n\
             user = \"app\"\npassword = \"x\"\nhost = \"127.0.0.1:1\"\n",
            srv.display()
        )
    });
    let work = Work::new();
    let bundle = work.out("x.baluchon");
    let out = work.export("custom", &custom.name, &bundle, &[]);
    work.assert_failed_cleanly(&out, &bundle, "Can't connect");
}

#[test]
fn a_path_outside_the_allowed_roots_is_refused() {
    let custom = CustomInstance::new(|_| {
        "domain = \"app.test\"\ndata_dir = \"/usr/share/doc\"\n".to_owned()
    });
    let work = Work::new();
    let bundle = work.out("x.baluchon");
    let out = work.export("custom", &custom.name, &bundle, &[]);
    work.assert_failed_cleanly(
        &out,
        &bundle,
        "\"/usr/share/doc\" is outside the allowed roots",
    );
}

#[test]
fn a_missing_required_path_is_refused_and_an_optional_one_recorded() {
    let custom = CustomInstance::new(|srv| {
        format!(
            "domain = \"app.test\"\ndata_dir = \"{}/gone\"\n",
            srv.display()
        )
    });
    let work = Work::new();
    let bundle = work.out("x.baluchon");
    // custom's data_dir is optional: a missing one is recorded, not silently dropped.
    let out = work.export("custom", &custom.name, &bundle, &["--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let omitted = report["omitted"].to_string();
    assert!(omitted.contains("/gone: absent"), "{omitted}");
    assert!(
        omitted.contains("database mariadb: not configured"),
        "{omitted}"
    );

    // A recipe whose required set is missing fails, naming the path.
    let recipe = work.out("strict.toml");
    fs_err::write(
        &recipe,
        fs_err::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/custom.toml"),
        )
        .unwrap()
        .replace(
            "path = \"{data_dir}\"\noptional = true",
            "path = \"{data_dir}\"",
        ),
    )
    .unwrap();
    let bundle = work.out("y.baluchon");
    let out = work.export(
        "custom",
        &custom.name,
        &bundle,
        &["--recipe", recipe.to_str().unwrap()],
    );
    work.assert_failed_cleanly(&out, &bundle, "/gone does not exist");
}

#[test]
fn a_recipe_with_an_unknown_field_is_refused_naming_it() {
    let work = Work::new();
    let recipe = work.out("bad.toml");
    fs_err::write(
        &recipe,
        fs_err::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/custom.toml"),
        )
        .unwrap()
        .replace("[detect]\n", "[detect]\npaterns = []\n"),
    )
    .unwrap();
    let bundle = work.out("x.baluchon");
    let out = work.export(
        "custom",
        "any",
        &bundle,
        &["--recipe", recipe.to_str().unwrap()],
    );
    work.assert_failed_cleanly(&out, &bundle, "unknown field `paterns`");
    assert!(text(&out.stderr).contains("bad.toml"), "the file is named");
}

#[test]
fn an_unreadable_file_fails_the_export_naming_it() {
    // Root reads everything: the export runs as nobody, who cannot read one data file.
    let custom = CustomInstance::new(|srv| {
        format!(
            "domain = \"app.test\"\ndata_dir = \"{}/data\"\n",
            srv.display()
        )
    });
    let secret = custom.srv.join("data/secret.txt");
    fs_err::write(&secret, "no\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();

    let work = Work::new();
    let nobody_dir = work.out("nobody");
    fs_err::create_dir(&nobody_dir).unwrap();
    let key = nobody_dir.join("key");
    fs_err::copy(&work.keys.private, &key).unwrap();
    for path in [&nobody_dir, &key] {
        rustix::fs::chown(
            path.as_path(),
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    fs_err::set_permissions(work.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bundle = nobody_dir.join("x.baluchon");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(baluchon_tests::fixture::baluchon_bin())
        .args([
            "export",
            "--app",
            "custom",
            "--instance",
            &custom.name,
            "--sign-key",
        ])
        .arg(&key)
        .arg("-o")
        .arg(&bundle)
        .env("BALUCHON_STATE_DIR", &nobody_dir)
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("secret.txt"), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!bundle.exists());
}

#[test]
fn a_content_dir_pointing_outside_the_apps_places_is_refused() {
    // WP_CONTENT_DIR is in the site's own config, which its admin may edit: root's export
    // must not follow it to other parts of the host.
    let domain = format!("{}.test", unique("wp-hostile"));
    let site = Site::create("wordpress", &domain);
    let config = site.fact("config_path");
    let text_before = fs_err::read_to_string(config).unwrap();
    fs_err::write(
        config,
        text_before.replace(
            "define('WP_CONTENT_DIR', '/var/lib/wordpress/wp-content');",
            "define('WP_CONTENT_DIR', '/var/lib/dpkg');",
        ),
    )
    .unwrap();
    assert!(fs_err::read_to_string(config)
        .unwrap()
        .contains("/var/lib/dpkg"));
    let work = Work::new();
    let bundle = work.out("x.baluchon");
    let out = work.export("wordpress", &domain, &bundle, &[]);
    work.assert_failed_cleanly(
        &out,
        &bundle,
        "\"/var/lib/dpkg\" is not within /var/lib/wordpress",
    );
}

#[test]
fn a_real_wordpress_dump_is_rewritten_for_a_new_domain_and_back_byte_for_byte() {
    use baluchon_migrate::rewrite::{rewrite_dump, DumpRewrite};
    let domain = format!("{}.test", unique("wp-dump"));
    let site = Site::create("wordpress", &domain);
    let work = Work::new();
    let bundle = work.out("blog.baluchon");
    let out = work.export("wordpress", &domain, &bundle, &[]);
    assert!(out.status.success(), "export: {}", text(&out.stderr));
    let dump = payload(&bundle, "data/db/main.sql.zst");
    let tables = [
        "wp_commentmeta",
        "wp_comments",
        "wp_links",
        "wp_options",
        "wp_postmeta",
        "wp_posts",
        "wp_term_relationships",
        "wp_term_taxonomy",
        "wp_termmeta",
        "wp_terms",
        "wp_usermeta",
        "wp_users",
    ];
    let rules = |from: &str, to: &str| DumpRewrite {
        tables: tables.iter().map(|t| (*t).to_owned()).collect(),
        skip_columns: [("wp_posts".to_owned(), "guid".to_owned())].into(),
        replacements: vec![(from.as_bytes().to_vec(), to.as_bytes().to_vec())],
        php_serialized: true,
    };
    let rewrite = |input: &[u8], rules: &DumpRewrite| {
        let mut out = Vec::new();
        let report = rewrite_dump(&mut &input[..], &mut out, rules).expect("the dump rewrites");
        (out, report)
    };
    // Nothing to replace: the dump comes out identical.
    let (same, report) = rewrite(&dump, &rules("nowhere.invalid", "x"));
    assert!(same == dump, "an unmatched rewrite changed the dump");
    assert_eq!(report.values_changed, 0);
    // To a longer domain and back: identical again, so escaping and serialized lengths hold.
    let longer = format!("www.{domain}.example.org");
    let (moved, report) = rewrite(&dump, &rules(&domain, &longer));
    assert!(report.values_changed > 0);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let moved_text = String::from_utf8_lossy(&moved);
    let guid = mariadb_guid(site.fact("db_name"), site.fact("post_id"));
    assert!(moved_text.contains(&guid), "the post's guid {guid} is kept");
    let (back, _) = rewrite(&moved, &rules(&longer, &domain));
    assert!(back == dump, "the round trip changed the dump");
    // A needle in nearly every string: every serialized value WordPress wrote parses.
    let (_, report) = rewrite(&dump, &rules("e", "é"));
    assert!(report.serialized_fixed > 5, "{report:?}");
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
}

fn mariadb_guid(db: &str, post: &str) -> String {
    baluchon_tests::apps::mariadb_root(&format!(
        "SELECT guid FROM `{db}`.wp_posts WHERE ID = {post}"
    ))
}

/// A test site's wp-config with the values the wordpress recipe marks secret (the database
/// password, keys and salts) replaced as an unencrypted export leaves them.
fn redacted(config: &str) -> String {
    const SECRETS: [&str; 9] = [
        "DB_PASSWORD",
        "AUTH_KEY",
        "SECURE_AUTH_KEY",
        "LOGGED_IN_KEY",
        "NONCE_KEY",
        "AUTH_SALT",
        "SECURE_AUTH_SALT",
        "LOGGED_IN_SALT",
        "NONCE_SALT",
    ];
    config
        .lines()
        .map(|line| {
            let secret = SECRETS
                .iter()
                .find(|name| line.starts_with(&format!("define('{name}', '")));
            match secret {
                Some(name) => format!("define('{name}', 'BALUCHON-REDACTED');\n"),
                None => format!("{line}\n"),
            }
        })
        .collect()
}
