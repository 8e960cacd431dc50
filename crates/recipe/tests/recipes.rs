//! The recipe crate through its public API: the shipped recipes, the checks made when a
//! recipe is loaded, and the reading of a host, against an in-memory host.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use baluchon_recipe::{
    builtin_recipes, Catalogue, Engine, HostView, InstalledPackage, Instance, Recipe, RecipeError,
    Role, ServiceKind,
};

// ---------------------------------------------------------------------------------------
// A host made of maps.

/// Files, directory listings and installed packages, in memory. Adding a file adds its name
/// to its directory's listing, in insertion order (not sorted, so that a recipe relying on
/// the order of a listing would be caught).
#[derive(Default)]
struct FakeHost {
    files: BTreeMap<PathBuf, String>,
    dirs: BTreeMap<PathBuf, Vec<String>>,
    packages: BTreeMap<String, InstalledPackage>,
}

impl FakeHost {
    fn file(mut self, path: &str, text: &str) -> Self {
        let path = PathBuf::from(path);
        let dir = path.parent().expect("an absolute path").to_path_buf();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .expect("a file name")
            .to_owned();
        let names = self.dirs.entry(dir).or_default();
        if !names.contains(&name) {
            names.push(name);
        }
        self.files.insert(path, text.to_owned());
        self
    }

    fn package(mut self, name: &str, version: &str) -> Self {
        self.packages.insert(
            name.to_owned(),
            InstalledPackage {
                name: name.to_owned(),
                version: version.to_owned(),
                architecture: "all".to_owned(),
            },
        );
        self
    }
}

impl HostView for FakeHost {
    fn read_text(&self, path: &Path) -> io::Result<Option<String>> {
        Ok(self.files.get(path).cloned())
    }

    fn list_dir(&self, path: &Path) -> io::Result<Option<Vec<String>>> {
        Ok(self.dirs.get(path).cloned())
    }

    fn packages(&self) -> io::Result<BTreeMap<String, InstalledPackage>> {
        Ok(self.packages.clone())
    }

    fn link_on_the_way(&self, _: &Path) -> io::Result<Option<std::path::PathBuf>> {
        Ok(None)
    }
}

fn builtin(name: &str) -> Recipe {
    let (_, text) = builtin_recipes()
        .into_iter()
        .find(|(n, _)| *n == name)
        .expect("a built-in recipe");
    Recipe::parse(text, &format!("built-in {name}")).expect("the built-in recipe parses")
}

// ---------------------------------------------------------------------------------------
// The shipped recipes.

#[test]
fn every_builtin_recipe_parses() {
    let builtins = builtin_recipes();
    for (name, text) in builtins {
        let recipe = Recipe::parse(text, &format!("built-in {name}"))
            .unwrap_or_else(|e| panic!("built-in {name}: {e}"));
        assert_eq!(recipe.name(), name);
        assert!(!recipe.title().is_empty());
        assert_eq!(recipe.text(), text);
        assert_eq!(recipe.definition().recipe, 1);
    }

    let catalogue = Catalogue::load(&[]).unwrap();
    let names: Vec<&str> = catalogue.recipes().iter().map(Recipe::name).collect();
    assert_eq!(names, ["custom", "dokuwiki", "wordpress"]);
    assert_eq!(
        catalogue.get("wordpress").unwrap().origin(),
        "built-in wordpress"
    );
}

// ---------------------------------------------------------------------------------------
// Checks made when a recipe is loaded.

/// A small valid recipe: `top` goes before the first table, `rest` after `[detect]`.
fn recipe_text(top: &str, rest: &str) -> String {
    format!(
        "recipe = 1\nname = \"test\"\ntitle = \"Test\"\n{top}\n\
         [detect]\npattern = \"/etc/test/{{instance}}.conf\"\n\n{rest}\n"
    )
}

fn parse_err(text: &str) -> RecipeError {
    match Recipe::parse(text, "test.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// The error is `Invalid` for `field` and its message contains every one of `words`.
fn assert_invalid(err: &RecipeError, field: &str, words: &[&str]) {
    assert!(
        matches!(err, RecipeError::Invalid { field: f, .. } if f == field),
        "expected Invalid for {field}, got {err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("test.toml"), "{message}");
    assert!(message.contains(field), "{message}");
    for word in words {
        assert!(
            message.contains(word),
            "{message:?} does not contain {word:?}"
        );
    }
}

#[test]
fn the_small_recipe_used_below_is_valid() {
    Recipe::parse(&recipe_text("", ""), "test.toml").unwrap();
}

#[test]
fn unknown_field_at_top_level_is_a_parse_error() {
    let err = parse_err(&recipe_text("colour = \"blue\"", ""));
    assert!(matches!(err, RecipeError::Parse { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains("test.toml"), "{message}");
    assert!(message.contains("colour"), "{message}");
}

#[test]
fn unknown_field_in_a_nested_table_is_a_parse_error() {
    let err = parse_err(&recipe_text(
        "",
        "[[files]]\nrole = \"data\"\npath = \"/srv/test\"\nexcludes = [\"cache\"]\n",
    ));
    assert!(matches!(err, RecipeError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("excludes"), "{err}");

    let err = parse_err(&recipe_text(
        "",
        "[values]\na = { from = \"x\", defualt = \"y\" }\n",
    ));
    assert!(matches!(err, RecipeError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("defualt"), "{err}");
}

#[test]
fn a_newer_format_version_is_refused_as_such() {
    // A version 2 recipe may well have fields this build does not know: the version is
    // what must be reported, not the unknown field.
    let text = recipe_text("", "[future]\nthing = 1\n").replace("recipe = 1", "recipe = 2");
    let err = parse_err(&text);
    assert!(
        matches!(err, RecipeError::Version { found: 2, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("format version 2"), "{message}");
    assert!(message.contains("not supported"), "{message}");
}

#[test]
fn detect_pattern_needs_instance_in_its_last_component() {
    for pattern in [
        "/etc/test/app.conf",
        "/etc/{instance}/app.conf",
        "/etc/test/{instance}-{instance}.conf",
    ] {
        let text = recipe_text("", "").replace("/etc/test/{instance}.conf", pattern);
        let err = parse_err(&text);
        assert_invalid(&err, "detect.pattern", &["{instance}"]);
    }
    // The directory searched must itself be allowed.
    let text = recipe_text("", "").replace("/etc/test/{instance}.conf", "/root/{instance}.conf");
    assert_invalid(
        &parse_err(&text),
        "detect.pattern",
        &["/root", "allowed roots"],
    );
}

#[test]
fn literal_file_paths_outside_the_allowed_roots_are_refused() {
    for path in ["/usr/share/x", "/root/x", "/etc", "/var/lib/../../root"] {
        let err = parse_err(&recipe_text(
            "",
            &format!("[[files]]\nrole = \"data\"\npath = \"{path}\"\n"),
        ));
        assert_invalid(&err, "files[0]", &[path]);
    }
    let err = parse_err(&recipe_text(
        "",
        "[[files]]\nrole = \"config\"\npath = \"/etc/shadow\"\n",
    ));
    assert_invalid(&err, "files[0]", &["/etc/shadow", "host credential"]);
}

#[test]
fn a_template_may_only_name_defined_values() {
    let err = parse_err(&recipe_text(
        "",
        "[[files]]\nrole = \"data\"\npath = \"/srv/{nope}\"\n",
    ));
    assert_invalid(&err, "files[0]", &["{nope}", "not a defined value"]);

    let err = parse_err(&recipe_text(
        "",
        "[values]\na = { file = \"/etc/test/{nope}.conf\" }\n",
    ));
    assert_invalid(&err, "values.a", &["{nope}", "not a defined value"]);
}

#[test]
fn values_may_not_refer_to_each_other_in_a_cycle() {
    let err = parse_err(&recipe_text(
        "",
        "[values]\na = { from = \"{b}\" }\nb = { from = \"x{c}\" }\nc = { from = \"{a}\" }\n\
         d = { from = \"{instance}\" }\n",
    ));
    assert_invalid(&err, "values", &["cycle", "a", "b", "c"]);
    assert!(!err.to_string().contains(", d"), "{err}");
}

#[test]
fn a_value_has_at_most_one_extractor() {
    let err = parse_err(&recipe_text(
        "",
        "[values]\na = { file = \"/etc/test/a.php\", php_define = \"A\", regex = '(x)' }\n",
    ));
    assert_invalid(&err, "values.a", &["at most one of", "php_define", "regex"]);
}

#[test]
fn a_regex_needs_a_capture_group() {
    let err = parse_err(&recipe_text(
        "",
        "[values]\na = { file = \"/etc/test/a.conf\", regex = 'listen = \\S+' }\n",
    ));
    assert_invalid(&err, "values.a", &["capture group"]);
}

#[test]
fn database_ids_are_unique() {
    let err = parse_err(&recipe_text(
        "",
        "[[databases]]\nid = \"main\"\nengine = \"mariadb\"\nname = \"a\"\n\n\
         [[databases]]\nid = \"main\"\nengine = \"sqlite\"\npath = \"/srv/test/db.sqlite\"\n",
    ));
    assert_invalid(&err, "databases[1]", &["\"main\"", "unique"]);
}

// ---------------------------------------------------------------------------------------
// WordPress on a fake host.

const WP_VERSION: &str = "6.1.9+dfsg1-0+deb12u1";
const BLOG_CONFIG: &str = "/etc/wordpress/config-blog.example.php";
const BLOG_PASSWORD: &str = "s3cr3t-pa55";

fn wp_config(content_dir: &str) -> String {
    format!(
        "<?php\n\
         // define('DB_NAME', 'old_blog');\n\
         define('DB_NAME', 'wp_blog');\n\
         define( 'DB_USER', 'wp_blog_user' );\n\
         define('DB_PASSWORD', '{BLOG_PASSWORD}');\n\
         define('DB_HOST', 'localhost');\n\
         define('WP_CONTENT_DIR', '{content_dir}');\n\
         $table_prefix = 'wp_';\n"
    )
}

/// A Debian 12 host with one WordPress site, blog.example, and its own PHP-FPM pool.
fn wordpress_host(content_dir: &str) -> FakeHost {
    FakeHost::default()
        .package("wordpress", WP_VERSION)
        .file(
            "/etc/wordpress/config-default.php",
            "<?php\ndefine('DB_NAME', 'default');\n",
        )
        .file(BLOG_CONFIG, &wp_config(content_dir))
        // Not an instance name: skipped by detection.
        .file("/etc/wordpress/config-bad name.php", "<?php\n")
        .file("/etc/wordpress/htaccess", "")
        .file(
            "/etc/nginx/sites-available/blog.example",
            "server {\n    listen 80;\n    server_name blog.example;\n    root /usr/share/wordpress;\n\
             \n    location ~ \\.php$ {\n        include snippets/fastcgi-php.conf;\n\
             \x20       fastcgi_pass unix:/run/php/php8.2-fpm-blog.sock;\n    }\n}\n",
        )
        // www.conf comes first in the listing: only `containing` makes blog.conf the pool.
        .file(
            "/etc/php/8.2/fpm/pool.d/www.conf",
            "[www]\nuser = www-data\nlisten = /run/php/php8.2-fpm.sock\n",
        )
        .file(
            "/etc/php/8.2/fpm/pool.d/blog.conf",
            "[blog]\nuser = www-data\nlisten = /run/php/php8.2-fpm-blog.sock\n",
        )
}

fn text<'a>(instance: &'a Instance, value: &str) -> &'a str {
    &instance.values[value].text
}

#[test]
fn wordpress_detects_site_configs_but_not_the_default_one() {
    let recipe = builtin("wordpress");
    let host = wordpress_host("/var/lib/wordpress/wp-content");
    assert_eq!(recipe.detect(&host).unwrap(), ["blog.example"]);
}

#[test]
fn wordpress_resolves_a_site() {
    let recipe = builtin("wordpress");
    let host = wordpress_host("/var/lib/wordpress/wp-content");
    let blog = recipe.resolve(&host, "blog.example").unwrap();

    assert_eq!(blog.app, "wordpress");
    assert_eq!(blog.name, "blog.example");
    assert_eq!(blog.domain, "blog.example");
    assert_eq!(blog.version.as_deref(), Some(WP_VERSION));

    // The commented-out define is not the one read.
    assert_eq!(text(&blog, "db_name"), "wp_blog");
    assert_eq!(text(&blog, "db_user"), "wp_blog_user");
    assert_eq!(text(&blog, "db_host"), "localhost");
    assert_eq!(text(&blog, "table_prefix"), "wp_");
    assert_eq!(text(&blog, "config"), BLOG_CONFIG);
    assert_eq!(text(&blog, "fpm_socket"), "/run/php/php8.2-fpm-blog.sock");
    assert_eq!(text(&blog, "php_version"), "8.2");
    assert_eq!(text(&blog, "fpm_pool"), "/etc/php/8.2/fpm/pool.d/blog.conf");
    assert_eq!(text(&blog, "instance"), "blog.example");

    // The password is read, but never shown.
    let password = &blog.values["db_password"];
    assert!(password.secret);
    assert_eq!(password.text, BLOG_PASSWORD);
    assert_eq!(format!("{password:?}"), "<secret>");
    assert!(!blog.values["db_name"].secret);
    assert_eq!(format!("{:?}", blog.values["db_name"]), "\"wp_blog\"");
    assert!(
        !format!("{blog:?}").contains(BLOG_PASSWORD),
        "the password shows in {blog:?}"
    );

    assert_eq!(blog.databases.len(), 1);
    let db = &blog.databases[0];
    assert_eq!(db.id, "main");
    assert_eq!(db.engine, Engine::Mariadb);
    assert_eq!(db.name.as_deref(), Some("wp_blog"));
    assert_eq!(db.user.as_deref(), Some("wp_blog_user"));
    assert_eq!(db.host.as_deref(), Some("localhost"));
    assert_eq!(db.path, None);
    let db_password = db.password.as_ref().unwrap();
    assert!(db_password.secret);
    assert_eq!(db_password.text, BLOG_PASSWORD);
    assert_eq!(format!("{db_password:?}"), "<secret>");

    let files: Vec<(Role, &Path)> = blog
        .files
        .iter()
        .map(|f| (f.role, f.path.as_path()))
        .collect();
    assert_eq!(
        files,
        [
            (Role::Config, Path::new(BLOG_CONFIG)),
            (Role::Data, Path::new("/var/lib/wordpress/wp-content")),
            (
                Role::Code,
                Path::new("/var/lib/wordpress/wp-content/plugins")
            ),
            (
                Role::Code,
                Path::new("/var/lib/wordpress/wp-content/themes")
            ),
            (
                Role::Config,
                Path::new("/etc/nginx/sites-enabled/blog.example")
            ),
        ]
    );
    let content = &blog.files[1];
    assert_eq!(content.exclude, ["cache", "upgrade", "debug.log"]);
    assert!(content.skip_package_files);
    assert!(!content.optional);
    assert!(blog.files[4].optional);

    let services: Vec<(ServiceKind, &Path)> = blog
        .services
        .iter()
        .map(|s| (s.kind, s.path.as_path()))
        .collect();
    assert_eq!(
        services,
        [
            (
                ServiceKind::NginxSite,
                Path::new("/etc/nginx/sites-available/blog.example")
            ),
            (
                ServiceKind::PhpFpmPool,
                Path::new("/etc/php/8.2/fpm/pool.d/blog.conf")
            ),
        ]
    );

    assert_eq!(
        blog.packages_needed,
        [
            "wordpress",
            "nginx",
            "php8.2-fpm",
            "php8.2-mysql",
            "mariadb-server"
        ]
    );
    assert_eq!(
        blog.code_packages,
        ["wordpress", "wordpress-theme-twentytwentythree"]
    );
    // Domain, database name, user and password, and the 8 keys and salts made anew.
    assert_eq!(recipe.definition().rehost.len(), 12);
    let health = blog.health.as_ref().unwrap();
    assert_eq!(health.url, "http://blog.example/");
    assert_eq!(health.status, 200);
    assert_eq!(health.contains.as_deref(), Some("content=\"WordPress"));
    assert!(blog.omitted.is_empty(), "{:?}", blog.omitted);
}

#[test]
fn a_content_dir_read_from_the_config_cannot_widen_the_export() {
    let recipe = builtin("wordpress");
    for content_dir in ["/", "/var/lib/../../root", "/usr/share", "/etc", "relative"] {
        let host = wordpress_host(content_dir);
        let err = recipe.resolve(&host, "blog.example").unwrap_err();
        match &err {
            RecipeError::PathNotAllowed {
                app,
                instance,
                field,
                path,
                ..
            } => {
                assert_eq!(app, "wordpress");
                assert_eq!(instance, "blog.example");
                assert_eq!(field, "files[1].path");
                assert_eq!(path, content_dir);
            }
            other => panic!("{content_dir}: expected PathNotAllowed, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(content_dir), "{message}");
        assert!(message.contains("files[1].path"), "{message}");
    }
}

#[test]
fn wordpress_without_its_package_has_no_instance() {
    let recipe = builtin("wordpress");
    let mut host = wordpress_host("/var/lib/wordpress/wp-content");
    host.packages.clear();
    assert!(recipe.detect(&host).unwrap().is_empty());

    let err = recipe.resolve(&host, "blog.example").unwrap_err();
    assert!(
        matches!(&err, RecipeError::NoInstance { found, .. } if found == "none found"),
        "{err:?}"
    );
}

#[test]
fn resolving_a_missing_instance_lists_the_ones_found() {
    let recipe = builtin("wordpress");
    let host = wordpress_host("/var/lib/wordpress/wp-content");
    for name in ["shop.example", "default", "../blog.example"] {
        let err = recipe.resolve(&host, name).unwrap_err();
        match &err {
            RecipeError::NoInstance {
                app,
                instance,
                found,
            } => {
                assert_eq!(app, "wordpress");
                assert_eq!(instance, name);
                assert!(found.contains("blog.example"), "{found}");
            }
            other => panic!("expected NoInstance, got {other:?}"),
        }
        let message = err.to_string();
        assert!(message.contains(name), "{message}");
        assert!(message.contains("found: blog.example"), "{message}");
    }
}

#[test]
fn a_missing_value_without_default_is_an_error_naming_it() {
    let recipe = builtin("wordpress");
    let host = wordpress_host("/var/lib/wordpress/wp-content").file(
        "/etc/php/8.2/fpm/pool.d/blog.conf",
        "[blog]\nlisten = /run/php/elsewhere.sock\n",
    );
    let err = recipe.resolve(&host, "blog.example").unwrap_err();
    assert!(
        matches!(&err, RecipeError::Value { value, .. } if value == "fpm_pool"),
        "{err:?}"
    );
    assert!(err.to_string().contains("fpm_pool"), "{err}");
}

// ---------------------------------------------------------------------------------------
// The custom recipe.

#[test]
fn custom_instance_with_only_a_domain_and_data() {
    let recipe = builtin("custom");
    let host = FakeHost::default().file(
        "/etc/baluchon/custom/crm.toml",
        "domain = \"crm.example.org\"\ndata_dir = \"/srv/crm/data\"\n",
    );
    assert_eq!(recipe.detect(&host).unwrap(), ["crm"]);
    let crm = recipe.resolve(&host, "crm").unwrap();

    assert_eq!(crm.name, "crm");
    assert_eq!(crm.domain, "crm.example.org");
    assert_eq!(crm.version.as_deref(), Some("unknown"));
    let files: Vec<(Role, &Path)> = crm
        .files
        .iter()
        .map(|f| (f.role, f.path.as_path()))
        .collect();
    assert_eq!(
        files,
        [
            (Role::Config, Path::new("/etc/baluchon/custom/crm.toml")),
            (Role::Data, Path::new("/srv/crm/data")),
        ]
    );
    assert!(crm.databases.is_empty(), "{:?}", crm.databases);
    assert!(crm.services.is_empty(), "{:?}", crm.services);
    assert!(crm.health.is_none());
    assert_eq!(
        crm.omitted,
        [
            "files[1].path: not configured",
            "files[2].path: not configured",
            "files[4].path: not configured",
            "services[0].path: not configured",
            "services[1].path: not configured",
            "database mariadb: not configured",
            "database postgresql: not configured",
            "database sqlite: not configured",
        ]
    );
}

#[test]
fn custom_instance_with_a_database_and_services() {
    let recipe = builtin("custom");
    let host = FakeHost::default().file(
        "/etc/baluchon/custom/crm.toml",
        "domain = \"crm.example.org\"\nversion = \"2.3\"\ncode_dir = \"/srv/crm/app\"\n\
         nginx_site = \"/etc/nginx/sites-available/crm.example.org\"\n\
         [postgresql]\nname = \"crm\"\nuser = \"crm\"\npassword = \"pg-secret\"\n",
    );
    let crm = recipe.resolve(&host, "crm").unwrap();
    assert_eq!(crm.version.as_deref(), Some("2.3"));
    assert_eq!(crm.databases.len(), 1);
    let db = &crm.databases[0];
    assert_eq!(db.id, "postgresql");
    assert_eq!(db.engine, Engine::Postgresql);
    assert_eq!(db.name.as_deref(), Some("crm"));
    // An empty host (the default) means the local socket.
    assert_eq!(db.host, None);
    assert_eq!(format!("{:?}", db.password.as_ref().unwrap()), "<secret>");
    assert!(crm.values["postgresql_password"].secret);
    assert_eq!(crm.services.len(), 1);
    assert_eq!(crm.services[0].kind, ServiceKind::NginxSite);
    assert!(crm
        .files
        .iter()
        .any(|f| f.role == Role::Code && f.path == Path::new("/srv/crm/app")));
}

#[test]
fn custom_paths_are_checked_after_reading_them() {
    let recipe = builtin("custom");
    for (key, path) in [
        ("data_dir", "/"),
        ("data_dir", "/etc"),
        ("code_dir", "/root/app"),
        ("config_dir", "/etc/ssh"),
        ("nginx_site", "/etc/shadow"),
    ] {
        let host = FakeHost::default().file(
            "/etc/baluchon/custom/crm.toml",
            &format!("domain = \"crm.example.org\"\n{key} = \"{path}\"\n"),
        );
        let err = recipe.resolve(&host, "crm").unwrap_err();
        assert!(
            matches!(&err, RecipeError::PathNotAllowed { path: p, .. } if p == path),
            "{key} = {path}: {err:?}"
        );
        assert!(err.to_string().contains(path), "{err}");
    }
}

// ---------------------------------------------------------------------------------------
// The catalogue.

const LOCAL_WORDPRESS: &str = r#"recipe = 1
name = "wordpress"
title = "WordPress, the way this host does it"

[detect]
pattern = "/srv/wordpress/{instance}"
"#;

#[test]
fn a_host_recipe_replaces_the_builtin_of_the_same_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("local-wp.toml");
    fs_err::write(&path, LOCAL_WORDPRESS).unwrap();
    // Not a recipe file: ignored.
    fs_err::write(dir.path().join("notes.txt"), "not toml").unwrap();

    let missing = dir.path().join("missing");
    let catalogue = Catalogue::load(&[dir.path().to_path_buf(), missing]).unwrap();
    let names: Vec<&str> = catalogue.recipes().iter().map(Recipe::name).collect();
    assert_eq!(names, ["custom", "dokuwiki", "wordpress"]);
    let wordpress = catalogue.get("wordpress").unwrap();
    assert_eq!(wordpress.title(), "WordPress, the way this host does it");
    assert_eq!(wordpress.origin(), path.display().to_string());
    assert_eq!(wordpress.text(), LOCAL_WORDPRESS);
    assert_eq!(
        catalogue.get("dokuwiki").unwrap().origin(),
        "built-in dokuwiki"
    );
}

#[test]
fn a_broken_host_recipe_is_an_error_naming_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    fs_err::write(&path, "recipe = 1\nname = \"broken\"\n[detect\n").unwrap();
    let err = Catalogue::load(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, RecipeError::Parse { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );

    // A recipe that parses but fails a check names its file too.
    fs_err::write(
        &path,
        LOCAL_WORDPRESS.replace("/srv/wordpress/{instance}", "/srv/wordpress"),
    )
    .unwrap();
    let err = Catalogue::load(&[dir.path().to_path_buf()]).unwrap_err();
    assert!(matches!(err, RecipeError::Invalid { .. }), "{err:?}");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn unknown_app_lists_the_known_ones() {
    let catalogue = Catalogue::load(&[]).unwrap();
    let err = catalogue.get("nope").unwrap_err();
    assert!(
        matches!(&err, RecipeError::UnknownApp { name, known }
            if name == "nope" && known == "custom, dokuwiki, wordpress"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains("\"nope\""), "{message}");
    assert!(message.contains("custom, dokuwiki, wordpress"), "{message}");
}

// ---------------------------------------------------------------------------------------
// The examples of docs/manifests.md stay valid.

const REFERENCE: &str = include_str!("../../../docs/manifests.md");

/// The first fenced block of `lang` after the heading that starts with `heading`.
fn doc_block(heading: &str, lang: &str) -> &'static str {
    let section = &REFERENCE[REFERENCE.find(heading).expect("the section")..];
    let open = format!("```{lang}\n");
    let start = section.find(&open).expect("a code block") + open.len();
    let len = section[start..].find("```").expect("a closed code block");
    &section[start..start + len]
}

#[test]
fn the_documented_guestbook_recipe_works() {
    let recipe =
        Recipe::parse(doc_block("## 14.", "toml"), "docs/manifests.md").expect("it parses");
    assert_eq!(recipe.name(), "guestbook");
    let config = doc_block("## 14.", "php");
    let host = FakeHost::default()
        .file("/etc/guestbook/example.php", config)
        .file("/etc/guestbook/example.org.php", config)
        .file("/srv/guestbook/app/VERSION", "1.4.2\n")
        .file(
            "/etc/nginx/sites-available/example.org",
            "server {\n  location ~ \\.php$ {\n    fastcgi_pass unix:/run/php/php8.2-fpm-guestbook.sock;\n  }\n}\n",
        )
        .file(
            "/etc/php/8.2/fpm/pool.d/guestbook.conf",
            "listen = /run/php/php8.2-fpm-guestbook.sock\n",
        );
    assert_eq!(recipe.detect(&host).unwrap(), ["example.org"]);
    let gb = recipe.resolve(&host, "example.org").unwrap();
    assert_eq!(gb.domain, "example.org");
    assert_eq!(gb.version.as_deref(), Some("1.4.2"));
    assert_eq!(gb.databases[0].name.as_deref(), Some("gb_example"));
    assert_eq!(format!("{:?}", gb.values["db_password"]), "<secret>");
    assert_eq!(
        gb.packages_needed,
        ["nginx", "php8.2-fpm", "php8.2-mysql", "mariadb-server"]
    );
    assert_eq!(
        gb.services[1].path,
        Path::new("/etc/php/8.2/fpm/pool.d/guestbook.conf")
    );
    assert_eq!(
        gb.files[2].path,
        Path::new("/srv/guestbook/uploads/example.org")
    );
    assert!(gb.omitted.is_empty(), "{:?}", gb.omitted);

    // Without $upload_dir, no data set; with "/srv", a refusal.
    let without = config.replace("$upload_dir", "$other");
    let host = host.file("/etc/guestbook/example.org.php", &without);
    let gb = recipe.resolve(&host, "example.org").unwrap();
    assert_eq!(gb.files.len(), 2);
    assert_eq!(gb.omitted, ["files[2].path: not configured"]);
    let host = host.file(
        "/etc/guestbook/example.org.php",
        &config.replace("/srv/guestbook/uploads/example.org", "/srv"),
    );
    let err = recipe.resolve(&host, "example.org").unwrap_err();
    assert!(matches!(err, RecipeError::PathNotAllowed { .. }), "{err:?}");
}

#[test]
fn the_documented_custom_instance_works() {
    let recipe = builtin("custom");
    let host =
        FakeHost::default().file("/etc/baluchon/custom/crm.toml", doc_block("## 15.", "toml"));
    let crm = recipe.resolve(&host, "crm").unwrap();
    assert_eq!(crm.domain, "crm.example.org");
    assert_eq!(crm.version.as_deref(), Some("2.3"));
    let ids: Vec<&str> = crm.databases.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["mariadb", "sqlite"]);
    // The spec, code, config, data, and the site's link in sites-enabled.
    assert_eq!(crm.files.len(), 5);
    assert_eq!(
        crm.files[4].path,
        Path::new("/etc/nginx/sites-enabled/crm.example.org")
    );
    assert_eq!(crm.values["mariadb_env_file"].text, "/srv/crm/etc/db.env");
    assert_eq!(
        crm.health.as_ref().map(|h| h.url.as_str()),
        Some("http://crm.example.org/login")
    );
    assert_eq!(crm.services.len(), 2);
    assert_eq!(crm.omitted, ["database postgresql: not configured"]);
}
