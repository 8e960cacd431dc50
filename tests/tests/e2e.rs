//! End to end (issue 7): real tenants moved between two isolated hosts on this machine
//! (`baluchon_tests::hosts`), the controller reaching both only over SSH, every result
//! checked over HTTP from inside the target host; and faults on the way to B that leave B
//! exactly as it was, or fully migrated. Each scenario builds its own pair of hosts and
//! prints its time. Needs root (docs/testing.md, "The two-host suite").

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use baluchon_tests::apps::text;
use baluchon_tests::fixture::{baluchon_bin, runnable_block, Keys};
use baluchon_tests::hosts::{Host, Hosts, Relay};

/// Where the signing key lives on A: the exporting host signs.
const SIGN_KEY_ON_A: &str = "/root/baluchon_ed25519";

/// Where a migration goes: a URL of B, and a known_hosts file that knows B's key there.
struct To {
    url: String,
    known_hosts: PathBuf,
}

/// A pair of hosts, and the signing key on A that the controller trusts.
struct World {
    hosts: Hosts,
    keys: Keys,
    bin: PathBuf,
    name: &'static str,
}

impl World {
    fn new(name: &'static str) -> Self {
        // Built before the hosts, which would otherwise idle through a build.
        let built = baluchon_bin();
        let hosts = Hosts::start();
        // A copy of our own: a rebuild meanwhile would replace the file under a running
        // baluchon, which uploads itself to the hosts.
        let bin = hosts.dir.path().join("baluchon");
        fs_err::copy(built, &bin).expect("copy baluchon");
        let keys = Keys::new(hosts.dir.path());
        let on_a = hosts.a.path(SIGN_KEY_ON_A);
        fs_err::copy(&keys.private, &on_a).expect("copy the signing key to A");
        println!(
            "e2e {name}: hosts up in {:.1} s",
            hosts.started().elapsed().as_secs_f64()
        );
        Self {
            hosts,
            keys,
            bin,
            name,
        }
    }

    fn a(&self) -> &Host {
        &self.hosts.a
    }

    fn b(&self) -> &Host {
        &self.hosts.b
    }

    /// `baluchon args…` on the controller, with its state in the pair's directory.
    fn baluchon(&self) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .env("BALUCHON_STATE_DIR", self.hosts.dir.path())
            .env_remove("BALUCHON_SIGN_KEY")
            .arg("--no-progress");
        command
    }

    /// `--known-hosts F --identity K`.
    fn ssh_args(&self, known_hosts: &Path) -> Vec<OsString> {
        vec![
            "--known-hosts".into(),
            known_hosts.into(),
            "--identity".into(),
            self.hosts.client_key().into(),
        ]
    }

    /// `baluchon migrate` of `instance` of `app` from A to `to`, with `extra` options, ready
    /// to run.
    fn migrate(&self, app: &str, instance: &str, to: &To, extra: &[&str]) -> Command {
        let mut command = self.baluchon();
        command
            .args(["migrate", "--from", &self.a().url(), "--to", &to.url])
            .args(["--app", app, "--instance", instance])
            .args(["--sign-key", SIGN_KEY_ON_A, "--signer"])
            .arg(&self.keys.allowed_signers)
            .args(self.ssh_args(&to.known_hosts))
            .args(extra);
        command
    }

    /// `import BUNDLE --to …`, ready to run.
    fn import_to(&self, bundle: &Path, to: &To, extra: &[&str]) -> Command {
        let mut command = self.baluchon();
        command
            .arg("import")
            .arg(bundle)
            .arg("--signer")
            .arg(&self.keys.allowed_signers)
            .args(["--to", &to.url])
            .args(self.ssh_args(&to.known_hosts))
            .args(extra);
        command
    }

    /// B itself, with the known_hosts file that knows both hosts.
    fn to_b(&self) -> To {
        To {
            url: self.b().url(),
            known_hosts: self.hosts.known_hosts().to_owned(),
        }
    }

    /// `export --from A` into a file of the controller.
    fn fetch(&self, app: &str, instance: &str) -> PathBuf {
        let bundle = self
            .hosts
            .dir
            .path()
            .join(format!("{app}-{instance}.baluchon"));
        let out = run(self
            .baluchon()
            .args(["export", "--from", &self.a().url()])
            .args(self.ssh_args(self.hosts.known_hosts()))
            .args([
                "--app",
                app,
                "--instance",
                instance,
                "--sign-key",
                SIGN_KEY_ON_A,
            ])
            .arg("-o")
            .arg(&bundle));
        assert_ok(&out, "export --from A");
        bundle
    }

    fn done(&self) {
        println!(
            "e2e {}: {:.1} s in all",
            self.name,
            self.hosts.started().elapsed().as_secs_f64()
        );
    }
}

fn run(command: &mut Command) -> Output {
    command.output().expect("baluchon runs")
}

fn assert_ok(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}\n{}",
        out.status,
        text(&out.stderr),
        text(&out.stdout)
    );
}

/// The host is as `before`, and no import is left half done there (a journal).
fn assert_unchanged(host: &Host, before: &BTreeSet<String>, when: &str) {
    let journals = host.sh("find /var/lib/baluchon -name 'journal*'");
    assert!(
        journals.is_empty(),
        "{when}: an import is pending: {journals}"
    );
    let after = host.state();
    let gone: Vec<_> = before.difference(&after).collect();
    let new: Vec<_> = after.difference(before).collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "{when}: host {} changed.\ngone:\n{gone:#?}\nnew:\n{new:#?}",
        host.name()
    );
}

/// A WordPress site on A, as `wordpress-site.sh create` describes it.
struct Blog {
    domain: String,
    post_id: String,
    canary: String,
    password: String,
    upload_path: String,
    upload_url_path: String,
}

impl Blog {
    fn create(host: &Host, domain: &str) -> Self {
        let facts = host.script("wordpress-site.sh", &["create", domain]);
        let fact = |k: &str| facts.get(k).unwrap_or_else(|| panic!("no {k}")).clone();
        let upload_url = fact("upload_url");
        Self {
            domain: domain.to_owned(),
            post_id: fact("post_id"),
            canary: fact("canary"),
            password: fact("admin_password"),
            upload_path: fact("upload_path"),
            upload_url_path: upload_url
                .strip_prefix(&format!("http://{domain}"))
                .expect("upload URL on the site's domain")
                .to_owned(),
        }
    }

    /// Checks, from inside `host`, that the blog is served at `domain`: the post renders,
    /// the upload is `upload` byte for byte, the admin password logs in.
    fn assert_served(&self, host: &Host, domain: &str, upload: &[u8]) {
        let (status, page) = host.http_get(domain, &format!("/?p={}", self.post_id));
        assert_eq!(status, 200, "the post at {domain} on {}", host.name());
        assert!(text(&page).contains(&self.canary), "the post renders");
        let (status, bytes) = host.http_get(domain, &self.upload_url_path);
        assert_eq!(status, 200);
        assert!(bytes == upload, "the upload is byte-identical");
        assert!(
            wordpress_login(host, domain, &self.password),
            "the old admin password logs in at {domain}"
        );
    }
}

/// Whether WordPress at `domain` on `host` logs admin in with `password` (a redirect to
/// /wp-admin).
fn wordpress_login(host: &Host, domain: &str, password: &str) -> bool {
    let out = host
        .command("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{redirect_url}",
        ])
        .arg("--resolve")
        .arg(format!("{domain}:80:127.0.0.1"))
        .args([
            "--cookie",
            "wordpress_test_cookie=WP%20Cookie%20check",
            "--data-urlencode",
            "log=admin",
            "--data-urlencode",
        ])
        .arg(format!("pwd={password}"))
        .args(["--data-urlencode", "testcookie=1"])
        .arg(format!("http://{domain}/wp-login.php"))
        .output()
        .expect("curl runs");
    let answer = text(&out.stdout);
    answer.starts_with("302") && answer.contains("/wp-admin")
}

#[test]
fn wordpress_moves_from_a_to_b_under_a_new_domain() {
    let world = World::new("wordpress");
    let (a, b) = (world.a(), world.b());
    let blog = Blog::create(a, "blog.provider-a.test");
    let upload = fs_err::read(a.path(&blog.upload_path)).expect("the upload on A");
    let a_before = a.state();
    let new = "blog.provider-b.test";
    assert_eq!(b.http_get(new, "/").0, 404, "B does not serve it yet");

    let started = Instant::now();
    let out = run(&mut world.migrate("wordpress", &blog.domain, &world.to_b(), &["--domain", new]));
    let took = started.elapsed();
    assert_ok(&out, "the migration");
    println!(
        "e2e wordpress: migration A → B in {:.1} s",
        took.as_secs_f64()
    );

    blog.assert_served(b, new, &upload);
    assert_eq!(
        b.http_get(&blog.domain, "/").0,
        404,
        "B serves the new domain only"
    );
    assert_unchanged(a, &a_before, "after the migration");
    blog.assert_served(a, &blog.domain, &upload);
    assert_no_leftovers(&world);
    world.done();
}

/// Neither host keeps a temporary file of the migration.
fn assert_no_leftovers(world: &World) {
    let exports = world.a().sh("find /tmp -maxdepth 1 -name 'baluchon-*'");
    assert!(exports.is_empty(), "left on A: {exports}");
    let uploads = world
        .b()
        .sh("find /root/.cache/baluchon/uploads -mindepth 1 2>/dev/null || true");
    assert!(uploads.is_empty(), "left on B: {uploads}");
}

#[test]
fn a_client_leaves_with_a_file_checked_by_stock_tools_and_imported_later() {
    let world = World::new("client-leaving");
    let (a, b) = (world.a(), world.b());
    let blog = Blog::create(a, "shop.provider-a.test");
    let upload = fs_err::read(a.path(&blog.upload_path)).expect("the upload on A");
    let bundle = world.fetch("wordpress", &blog.domain);

    // The client checks the file with stock tools only (docs/bundle-format.md §10).
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c"])
        .arg(runnable_block("bundle-format.md", "stock-verify"))
        .current_dir(world.hosts.dir.path())
        .env("B", &bundle)
        .env("ALLOWED", &world.keys.allowed_signers)
        .env("PRINCIPAL", &world.keys.principal)
        .output()
        .expect("bash runs");
    assert_ok(&out, "the stock-tools recipe");
    assert!(text(&out.stderr).contains("Good \"baluchon-bundle-v1\" signature"));
    let stdout = text(&out.stdout);
    let tree = stdout
        .lines()
        .find_map(|l| l.strip_prefix("all checks passed; the tree is in "))
        .expect("the recipe names the extracted tree");
    let extracted = Path::new(tree).join(blog.upload_path.trim_start_matches('/'));
    assert!(
        fs_err::read(&extracted).expect("the upload in the tree") == upload,
        "the upload is in the tree, byte for byte"
    );
    fs_err::remove_dir_all(Path::new(tree).parent().expect("the recipe's directory"))
        .expect("remove the recipe's directory");

    // The client has left A; later, B takes the file. A copy damaged on the way (after
    // SSH, which would have caught it) is refused by B's own checks, and B stays as it was.
    a.script("wordpress-site.sh", &["remove", &blog.domain]);
    let new = "shop.provider-b.test";
    let mut bytes = fs_err::read(&bundle).expect("read the bundle");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let damaged = world.hosts.dir.path().join("damaged.baluchon");
    fs_err::write(&damaged, bytes).expect("write the damaged copy");
    let before = b.state();
    let out = run(&mut world.import_to(&damaged, &world.to_b(), &["--domain", new]));
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_unchanged(b, &before, "after the damaged copy");
    let out = world
        .import_to(&bundle, &world.to_b(), &["--domain", new])
        .output()
        .expect("baluchon runs");
    assert_ok(&out, "the import onto B");
    blog.assert_served(b, new, &upload);
    world.done();
}

#[test]
fn a_changed_host_key_on_b_is_refused_before_anything_is_sent() {
    let mut world = World::new("host-key");
    let blog = Blog::create(world.a(), "keys.provider-a.test");
    world.hosts.b.rotate_host_key();
    let (a, b) = (world.a(), world.b());
    let a_before = a.state();
    let b_before = b.state();
    let out = run(&mut world.migrate(
        "wordpress",
        &blog.domain,
        &world.to_b(),
        &["--domain", "keys.provider-b.test"],
    ));
    assert_eq!(out.status.code(), Some(1), "refused");
    let stderr = text(&out.stderr);
    assert!(stderr.contains("HAS CHANGED"), "{stderr}");
    assert!(
        !b.path("/root/.cache/baluchon").exists(),
        "nothing was sent to B"
    );
    assert_unchanged(b, &b_before, "after the refusal");
    // Both keys are checked before the source exports anything.
    assert_unchanged(a, &a_before, "after the refusal");
    assert_no_leftovers(&world);
    world.done();
}

/// A relay in front of a host's sshd, a known_hosts file that knows the host's key at the
/// relay's address, and the URL to use.
struct ViaRelay {
    relay: Relay,
    to: To,
}

impl ViaRelay {
    /// In front of B, slowed down towards B so that a fault lands mid-upload.
    fn new(world: &World) -> Self {
        let via = Self::in_front_of(world, world.b());
        via.relay.limit(8 << 20);
        via
    }

    /// In front of `host`, not slowed; baluchon is installed there, so that only the bundle
    /// crosses the relay.
    fn in_front_of(world: &World, host: &Host) -> Self {
        let relay = Relay::start(host.gateway(), (host.addr(), 22).into());
        let at = relay.addr();
        let known_hosts = world
            .hosts
            .dir
            .path()
            .join(format!("known_hosts.relay-{}", at.port()));
        world.hosts.write_known_hosts(
            &known_hosts,
            &[format!("[{}]:{} {}", at.ip(), at.port(), host.host_key())],
        );
        install_baluchon(world, host);
        Self {
            to: To {
                url: format!("ssh://root@{}:{}", at.ip(), at.port()),
                known_hosts,
            },
            relay,
        }
    }
}

/// Installs this baluchon on `host`: only the bundle then crosses a slowed link.
fn install_baluchon(world: &World, host: &Host) {
    let installed = host.path("/usr/local/bin/baluchon");
    fs_err::copy(&world.bin, installed).expect("install baluchon");
}

/// A WordPress site on A with a 16 MiB upload that does not compress.
fn big_blog(a: &Host, domain: &str) -> (Blog, Vec<u8>) {
    let blog = Blog::create(a, domain);
    a.sh(
        "head -c 16M /dev/urandom > /var/lib/wordpress/wp-content/uploads/big.bin && \
         chown www-data:www-data /var/lib/wordpress/wp-content/uploads/big.bin",
    );
    let upload = fs_err::read(a.path(&blog.upload_path)).expect("the upload on A");
    (blog, upload)
}

/// Runs `command` and calls `fault` once B holds more than 1 MiB of the bundle's upload.
fn with_fault_mid_upload(b: &Host, command: &mut Command, fault: impl FnOnce()) -> Output {
    let earlier: BTreeSet<OsString> = upload_dirs(b).map(|dir| dir.file_name()).collect();
    let child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baluchon runs");
    let reached = wait_for_upload(b, 1 << 20, Duration::from_secs(120), &earlier);
    fault();
    let out = child.wait_with_output().expect("baluchon ends");
    assert!(
        reached,
        "the upload never reached 1 MiB on B: {}",
        text(&out.stderr)
    );
    out
}

#[test]
fn a_byte_flipped_in_flight_is_rejected_and_b_is_unchanged() {
    let world = World::new("corrupted-in-flight");
    let b = world.b();
    let (blog, upload) = big_blog(world.a(), "flip.provider-a.test");
    let via = ViaRelay::new(&world);
    let before = b.state();
    let new = "flip.provider-b.test";
    let mut migrate = world.migrate(
        "wordpress",
        &blog.domain,
        &via.to,
        &["--domain", new, "--retries", "0"],
    );

    // SSH's MAC catches the flipped byte: the connection is dropped, nothing imported.
    let out = with_fault_mid_upload(b, &mut migrate, || via.relay.flip_after(1000));
    assert!(via.relay.flipped(), "a byte was flipped");
    assert_eq!(out.status.code(), Some(1), "the transfer is rejected");
    println!(
        "e2e corrupted-in-flight: rejected with: {}",
        text(&out.stderr).trim()
    );
    // The connection to B is what failed: the partial upload stays in baluchon's cache
    // there (outside the host's state), and B itself is as it was.
    assert_unchanged(b, &before, "after the corrupted transfer");

    // With retries, the dropped connection is reopened and the transfer resumes after
    // re-hashing B's copy: B ends fully migrated.
    let mut migrate = world.migrate("wordpress", &blog.domain, &via.to, &["--domain", new]);
    let out = with_fault_mid_upload(b, &mut migrate, || via.relay.flip_after(1000));
    assert!(via.relay.flipped(), "a byte was flipped again");
    assert_ok(&out, "the migration with a flipped byte and retries");
    assert!(
        text(&out.stderr).contains("the transfer was cut"),
        "{}",
        text(&out.stderr)
    );
    blog.assert_served(b, new, &upload);
    world.done();
}

/// The run says it reconnected after the cut, and went on from past the first MiB.
fn assert_resumed_past_the_fault(out: &Output) {
    let stderr = text(&out.stderr);
    assert!(stderr.contains("the transfer was cut"), "{stderr}");
    let resumed_at: u64 = stderr
        .split("resumed at byte ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the transfer resumed: {stderr}"));
    assert!(resumed_at > 1 << 20, "resumed at byte {resumed_at}");
}

#[test]
fn a_connection_cut_mid_transfer_resumes_and_completes() {
    let world = World::new("cut-mid-transfer");
    let b = world.b();
    let (blog, upload) = big_blog(world.a(), "cut.provider-a.test");
    let via = ViaRelay::new(&world);
    let new = "cut.provider-b.test";
    let mut migrate = world.migrate("wordpress", &blog.domain, &via.to, &["--domain", new]);

    let started = Instant::now();
    let out = with_fault_mid_upload(b, &mut migrate, || {
        via.relay.cut();
        via.relay.limit(0);
    });
    assert_ok(&out, "the migration with a cut");
    println!(
        "e2e cut-mid-transfer: migration with a cut in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_resumed_past_the_fault(&out);
    blog.assert_served(b, new, &upload);
    assert_no_leftovers(&world);
    world.done();
}

/// The client's way out, with both transfers cut: `export --from A` and then `import --to B`
/// each reconnect by themselves and go on from where the copy stopped.
#[test]
fn a_bundle_fetched_from_a_then_imported_on_b_each_cut_mid_transfer() {
    let world = World::new("cut-both-ways");
    let a = world.a();
    let (blog, upload) = big_blog(a, "fetch.provider-a.test");
    let from_a = ViaRelay::in_front_of(&world, a);
    from_a.relay.limit_back(8 << 20);
    let here = world.hosts.dir.path().join("fetched");
    fs_err::create_dir(&here).expect("a directory for the bundle");
    let bundle = here.join("blog.baluchon");
    let child = world
        .baluchon()
        .args(["export", "--from", &from_a.to.url])
        .args(world.ssh_args(&from_a.to.known_hosts))
        .args(["--app", "wordpress", "--instance", &blog.domain])
        .args(["--sign-key", SIGN_KEY_ON_A, "-o"])
        .arg(&bundle)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("baluchon runs");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut reached = false;
    while !reached && Instant::now() < deadline {
        reached = fs_err::read_dir(&here)
            .expect("list the bundle's directory")
            .flatten()
            .any(|f| f.metadata().is_ok_and(|m| m.len() > 1 << 20));
        std::thread::sleep(Duration::from_millis(2));
    }
    from_a.relay.cut();
    from_a.relay.limit_back(0);
    let out = child.wait_with_output().expect("baluchon ends");
    assert!(
        reached,
        "the download never reached 1 MiB: {}",
        text(&out.stderr)
    );
    assert_ok(&out, "export --from A with a cut");
    assert_resumed_past_the_fault(&out);

    let verified = run(world
        .baluchon()
        .args(["verify", "--signer"])
        .arg(&world.keys.allowed_signers)
        .arg(&bundle));
    assert_ok(&verified, "verifying the fetched bundle");
    assert!(
        baluchon_tests::apps::tree_file(&bundle, &blog.upload_path) == upload,
        "the upload is in the bundle, byte for byte"
    );
    let left: Vec<_> = fs_err::read_dir(&here)
        .expect("list the bundle's directory")
        .flatten()
        .map(|f| f.file_name())
        .collect();
    assert_eq!(
        left,
        [OsString::from("blog.baluchon")],
        "nothing else is left here"
    );
    let exports = a.sh("ls -d /tmp/baluchon-export.* 2>/dev/null || true");
    assert!(exports.is_empty(), "left on A: {exports}");

    let b = world.b();
    let via = ViaRelay::new(&world);
    let new = "fetch.provider-b.test";
    let mut import = world.import_to(&bundle, &via.to, &["--domain", new]);
    let out = with_fault_mid_upload(b, &mut import, || {
        via.relay.cut();
        via.relay.limit(0);
    });
    assert_ok(&out, "import --to B with a cut");
    assert_resumed_past_the_fault(&out);
    blog.assert_served(b, new, &upload);
    assert_no_leftovers(&world);
    world.done();
}

#[test]
fn the_link_to_b_down_mid_transfer_then_up_again_the_migration_completes() {
    let world = World::new("link-down");
    let b = world.b();
    let (blog, upload) = big_blog(world.a(), "link.provider-a.test");
    install_baluchon(&world, b);
    b.limit_link(Some(64_000_000));
    let new = "link.provider-b.test";
    let mut migrate = world.migrate(
        "wordpress",
        &blog.domain,
        &world.to_b(),
        &["--domain", new, "--ssh-timeout", "3"],
    );

    let started = Instant::now();
    let out = with_fault_mid_upload(b, &mut migrate, || {
        b.set_link(false);
        std::thread::sleep(Duration::from_millis(3500));
        b.set_link(true);
        b.limit_link(None);
    });
    assert_ok(&out, "the migration across a link down for 3.5 s");
    // Either the stall was noticed and the transfer resumed on a new connection, or TCP
    // got the old one through: both must end with B fully migrated.
    let resumed = text(&out.stderr).contains("the transfer was cut");
    println!(
        "e2e link-down: migration in {:.1} s ({})",
        started.elapsed().as_secs_f64(),
        if resumed {
            "resumed on a new connection"
        } else {
            "the connection survived"
        }
    );
    blog.assert_served(b, new, &upload);
    assert_no_leftovers(&world);
    world.done();
}

#[test]
fn a_full_disk_on_b_during_staging_is_a_clear_error_and_b_is_unchanged() {
    let world = World::new("disk-full");
    let b = world.b();
    let (blog, upload) = big_blog(world.a(), "full.provider-a.test");
    b.sh("mount -t tmpfs -o size=4m,mode=755 staging /var/lib/baluchon");
    let before = b.state();
    let new = "full.provider-b.test";
    let mut migrate = world.migrate("wordpress", &blog.domain, &world.to_b(), &["--domain", new]);

    let out = run(&mut migrate);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
    println!("e2e disk-full: refused with: {}", stderr.trim());
    assert_unchanged(b, &before, "after the full disk");
    let staged = b.sh("find /var/lib/baluchon/imports -name staging");
    assert!(staged.is_empty(), "staging left on B: {staged}");

    b.sh("umount /var/lib/baluchon");
    assert_ok(&run(&mut migrate), "the migration with room");
    blog.assert_served(b, new, &upload);
    world.done();
}

/// Kills the import on B mid-apply with `kill`, which runs `migrate` once; then the next
/// run must roll B back and complete the migration.
fn killed_then_recovered(name: &'static str, kill: impl FnOnce(&Host, &Blog, &mut Command)) {
    let world = World::new(name);
    let (a, b) = (world.a(), world.b());
    let blog = Blog::create(a, &format!("{name}.provider-a.test"));
    let upload = fs_err::read(a.path(&blog.upload_path)).expect("the upload on A");
    let new = format!("{name}.provider-b.test");
    let mut migrate = world.migrate(
        "wordpress",
        &blog.domain,
        &world.to_b(),
        &["--domain", &new],
    );
    kill(b, &blog, &mut migrate);

    let out = run(&mut migrate);
    assert_ok(&out, "the next run");
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(said.contains("rolled back"), "it recovered first: {said}");
    blog.assert_served(b, &new, &upload);
    world.done();
}

#[test]
fn an_import_killed_mid_apply_on_b_is_recovered_by_the_next_run() {
    killed_then_recovered("killed-mid-apply", |b, _, migrate| {
        let before = b.state();
        // baluchon does not pass its environment to the other host: B's sshd sets the hook.
        b.set_session_env(Some("BALUCHON_TEST_KILL_AT=files"));
        let out = run(migrate);
        b.set_session_env(None);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("the import on the target host failed"),
            "the import on B died: {stderr}"
        );
        assert!(
            b.state() != before,
            "it died mid-apply, with B half changed: {stderr}"
        );
    });
}

#[test]
fn an_import_sigkilled_on_b_mid_apply_is_recovered_by_the_next_run() {
    killed_then_recovered("sigkilled-mid-apply", |b, blog, migrate| {
        let child = migrate
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("baluchon runs");
        // The first file placed is journaled before it is made: the apply is under way.
        let journal = b.path(&format!(
            "/var/lib/baluchon/imports/{}/journal.jsonl",
            blog.domain
        ));
        let deadline = Instant::now() + Duration::from_secs(120);
        while !std::fs::read_to_string(&journal).is_ok_and(|j| j.contains(r#""step":"created""#)) {
            assert!(
                Instant::now() < deadline,
                "the import on B never placed a file"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let pids = baluchon_import_on(b);
        // A child forked a moment ago may be gone already: that is no failure here.
        b.sh(&format!("kill -KILL {} 2>/dev/null; true", pids.join(" ")));
        let out = child.wait_with_output().expect("baluchon ends");
        assert_eq!(out.status.code(), Some(1), "the import on B died");
        let left = fs_err::read_to_string(&journal).expect("the journal stays");
        assert!(
            !left.contains(r#""step":"commit""#),
            "killed before its commit: {left}"
        );
    });
}

/// The PIDs (in the host's PID namespace) of `baluchon … import …` there: the import, and
/// a child it has forked but not yet turned into another program.
fn baluchon_import_on(host: &Host) -> Vec<String> {
    let found: Vec<String> = std::fs::read_dir(host.path("/proc"))
        .expect("the host's /proc")
        .flatten()
        .filter(|entry| {
            let Ok(argv) = fs_err::read(entry.path().join("cmdline")) else {
                return false;
            };
            let mut args = argv.split(|&b| b == 0);
            args.next()
                .is_some_and(|program| program.ends_with(b"/baluchon"))
                && args.any(|a| a == b"import")
        })
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!found.is_empty(), "an import runs on {}", host.name());
    found
}

#[test]
fn dokuwiki_moves_from_a_to_b() {
    let world = World::new("dokuwiki");
    let (a, b) = (world.a(), world.b());
    let old = "wiki.provider-a.test";
    let facts = a.script("dokuwiki-site.sh", &["create", old]);
    let fact = |k: &str| facts.get(k).unwrap_or_else(|| panic!("no {k}")).as_str();
    let media = fs_err::read(a.path(fact("media_path"))).expect("the media file on A");
    let a_before = a.state();
    let new = "wiki.provider-b.test";
    // B has Debian's own DokuWiki config: the tenant's replaces it.
    let out = run(&mut world.migrate(
        "dokuwiki",
        old,
        &world.to_b(),
        &["--domain", new, "--on-conflict", "replace"],
    ));
    assert_ok(&out, "the migration");

    let (status, page) = b.http_get(new, &format!("/doku.php?id={}", fact("page_id")));
    assert_eq!(status, 200);
    assert!(text(&page).contains(fact("canary")), "the page renders");
    let (status, bytes) = b.http_get(
        new,
        &format!("/lib/exe/fetch.php?media={}", fact("media_id")),
    );
    assert_eq!(status, 200);
    assert!(bytes == media, "the attachment is byte-identical");
    let login = b
        .command("curl")
        .args(["-s", "--resolve", &format!("{new}:80:127.0.0.1"), "-u"])
        .arg(format!("admin:{}", fact("admin_password")))
        .args(["-H", "Content-Type: text/xml", "--data"])
        .arg(format!(
            "<?xml version=\"1.0\"?><methodCall><methodName>wiki.getPage</methodName>\
             <params><param><value><string>{}</string></value></param></params></methodCall>",
            fact("page_id")
        ))
        .arg(format!("http://{new}/lib/exe/xmlrpc.php"))
        .output()
        .expect("curl runs");
    assert!(
        text(&login.stdout).contains(fact("canary")),
        "the admin logs in with the old password: {}",
        text(&login.stdout)
    );
    assert_unchanged(a, &a_before, "after the migration");
    world.done();
}

/// Waits until `host` holds an upload of more than `bytes` bytes under root's cache (where
/// baluchon puts and resumes them), in a directory not in `earlier`; false after `within`.
fn wait_for_upload(
    host: &Host,
    bytes: u64,
    within: Duration,
    earlier: &BTreeSet<OsString>,
) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let largest = upload_dirs(host)
            .filter(|dir| !earlier.contains(&dir.file_name()))
            .flat_map(|dir| {
                std::fs::read_dir(dir.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .filter(|file| file.file_name().to_string_lossy().starts_with("bundle"))
            .filter_map(|file| file.metadata().ok())
            .map(|meta| meta.len())
            .max()
            .unwrap_or(0);
        if largest > bytes {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    false
}

/// The upload directories under root's cache on `host`, one per bundle.
fn upload_dirs(host: &Host) -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir(host.path("/root/.cache/baluchon/uploads"))
        .into_iter()
        .flatten()
        .flatten()
}

/// An in-house app on A: PHP reading notes from PostgreSQL, under /srv/notes, with its
/// database settings in /srv/notes/etc/db.env (libpq's variable names), described to
/// baluchon only by /etc/baluchon/custom/notes.toml (the `custom` recipe).
fn notes_app(a: &Host, domain: &str, canary: &str) {
    a.sh(&format!(
        r#"runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q \
               -c "CREATE ROLE notes LOGIN PASSWORD 'notes-secret'" -c "CREATE DATABASE notes OWNER notes"
           PGPASSWORD=notes-secret psql -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -U notes notes \
               -c "CREATE TABLE notes (id serial PRIMARY KEY, body text NOT NULL)" \
               -c "INSERT INTO notes (body) VALUES ('{canary}')"
           mkdir -p /srv/notes/app /srv/notes/etc
           cat > /srv/notes/etc/db.env <<'ENV'
# The app's database settings (also usable as a systemd EnvironmentFile).
PGHOST=127.0.0.1
PGDATABASE=notes
PGUSER=notes
PGPASSWORD="notes-secret"
ENV
           cat > /srv/notes/app/index.php <<'PHP'
<?php
$c = [];
foreach (file('/srv/notes/etc/db.env', FILE_IGNORE_NEW_LINES) as $line)
    if (preg_match('/^(\w+)="?([^"]*)"?$/', $line, $m)) $c[$m[1]] = $m[2];
$db = new PDO("pgsql:host={{$c['PGHOST']}};dbname={{$c['PGDATABASE']}}", $c['PGUSER'], $c['PGPASSWORD']);
foreach ($db->query('SELECT body FROM notes ORDER BY id') as $row) echo htmlspecialchars($row['body']), "\n";
PHP
           cat > /etc/nginx/sites-available/{domain} <<'NGINX'
server {{
    listen 127.0.0.1:80;
    server_name {domain};
    root /srv/notes/app;
    index index.php;
    location ~ \.php$ {{
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:/run/php/php8.2-fpm.sock;
    }}
}}
NGINX
           ln -s /etc/nginx/sites-available/{domain} /etc/nginx/sites-enabled/{domain}
           mkdir -p /etc/baluchon/custom
           cat > /etc/baluchon/custom/notes.toml <<'TOML'
domain = "{domain}"
version = "1.0"
code_dir = "/srv/notes/app"
config_dir = "/srv/notes/etc"
nginx_site = "/etc/nginx/sites-available/{domain}"
health_path = "/"
[postgresql]
name = "notes"
user = "notes"
password = "notes-secret"
host = "127.0.0.1"
env_file = "/srv/notes/etc/db.env"
TOML
           nginx -s reload"#
    ));
    // A reload reaches the workers a moment later.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !text(&a.http_get(domain, "/").1).contains(canary) {
        assert!(
            Instant::now() < deadline,
            "the notes app does not answer on A"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The bundle, unencrypted, carries neither copy of the database password (the spec's and
/// the app's): both are written afresh on B, where the app reads its new one.
#[test]
fn a_postgresql_app_described_by_the_custom_recipe_moves_from_a_to_b() {
    let world = World::new("custom-postgresql");
    let (a, b) = (world.a(), world.b());
    let old = "notes.provider-a.test";
    let canary = "CANARY-notes-from-a";
    notes_app(a, old, canary);
    let a_before = a.state();
    let new = "notes.provider-b.test";
    assert_eq!(b.http_get(new, "/").0, 404, "B does not serve it yet");

    let kept = world.hosts.dir.path().join("notes.baluchon");
    let started = Instant::now();
    let out = run(&mut world.migrate(
        "custom",
        "notes",
        &world.to_b(),
        &["--domain", new, "--keep", kept.to_str().unwrap()],
    ));
    assert_ok(&out, "the migration");
    println!(
        "e2e custom: migration A → B in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The spec's health_path: the import waited for the new site to answer.
    assert!(
        text(&out.stdout).contains(&format!("health check passed: GET http://{new}/ → 200")),
        "{}",
        text(&out.stdout)
    );
    let (status, page) = b.http_get(new, "/");
    assert_eq!(status, 200, "{}\n{}", text(&page), text(&out.stdout));
    assert!(
        text(&page).contains(canary),
        "B serves the notes from its database"
    );
    let env = b.sh("cat /srv/notes/etc/db.env");
    let spec = b.sh("cat /etc/baluchon/custom/notes.toml");
    let password = env
        .lines()
        .find_map(|l| l.strip_prefix("PGPASSWORD="))
        .map(|p| p.trim_matches('"').to_owned())
        .unwrap_or_else(|| panic!("no password in B's db.env:\n{env}"));
    assert!(
        password.len() >= 16 && password != "notes-secret" && password != "BALUCHON-REDACTED",
        "a new password: {password}"
    );
    assert!(
        spec.contains(&format!("password = \"{password}\"")),
        "the spec on B names the same password:\n{spec}"
    );
    assert!(
        env.starts_with("# The app's database settings"),
        "the rest of db.env is kept:\n{env}"
    );
    assert!(spec.contains(&format!("domain = \"{new}\"")), "{spec}");

    let payload = Command::new("sh")
        .arg("-c")
        .arg("tar -xOf \"$1\" data/files.tar.zst | zstd -dc")
        .arg("sh")
        .arg(&kept)
        .output()
        .expect("tar and zstd run");
    assert_ok(&payload, "reading the kept bundle with tar and zstd");
    assert!(
        payload.stdout.len() > 1000 && !contains(&payload.stdout, b"notes-secret"),
        "the bundle carries no copy of the old password"
    );

    assert_unchanged(a, &a_before, "after the migration");
    assert!(
        text(&a.http_get(old, "/").1).contains(canary),
        "A still serves it"
    );
    assert_no_leftovers(&world);
    world.done();
}

/// A dump is code: a tenant (or a hostile source host) can make a database whose restore
/// runs its own function, here through an index on an expression, which PostgreSQL computes
/// while `pg_restore` builds the index. This one tries to run a program on the new host
/// (`COPY … TO PROGRAM`, from a volatile function, since PostgreSQL refuses COPY in the
/// immutable one an index needs), but only away from the source, which sets
/// `baluchon.test` for the database. B restores as the new unprivileged owner, so the attempt fails: the import is
/// rolled back, says why, and the program never ran.
#[test]
fn a_postgresql_dump_whose_restore_runs_code_gets_no_privilege_on_b() {
    let world = World::new("hostile-pgdump");
    let (a, b) = (world.a(), world.b());
    let old = "notes.provider-a.test";
    notes_app(a, old, "CANARY-hostile-notes");
    let marker = "/tmp/baluchon-hostile-pgdump-ran";
    a.sh(&format!(
        r#"runuser -u postgres -- psql -v ON_ERROR_STOP=1 -q \
               -c "ALTER DATABASE notes SET baluchon.test = 'source'"
           PGPASSWORD=notes-secret psql -v ON_ERROR_STOP=1 -q -h 127.0.0.1 -U notes notes <<'SQL'
CREATE FUNCTION run_program() RETURNS void LANGUAGE plpgsql AS $f$
BEGIN
    EXECUTE 'COPY (SELECT 1) TO PROGRAM ''touch {marker}''';
END
$f$;
CREATE FUNCTION lower_body(body text) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $f$
BEGIN
    IF current_setting('baluchon.test', true) IS DISTINCT FROM 'source' THEN
        PERFORM public.run_program();
    END IF;
    RETURN lower(body);
END
$f$;
CREATE INDEX notes_lower_body ON notes (lower_body(body));
SQL"#
    ));
    let b_before = b.state();
    let a_before = a.state();

    let new = "notes.provider-b.test";
    let out = run(&mut world.migrate("custom", "notes", &world.to_b(), &["--domain", new]));
    let stderr = text(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stderr}\n{}",
        text(&out.stdout)
    );
    assert!(stderr.contains("pg_restore"), "{stderr}");
    assert!(
        stderr.contains("privileges of the pg_execute_server_program role to COPY to or from an external program"),
        "{stderr}"
    );
    println!("e2e hostile-pgdump: refused with: {}", stderr.trim());
    assert_eq!(
        b.sh(&format!("test -e {marker} && echo ran || echo absent"))
            .trim(),
        "absent",
        "the dump's code ran a program on B"
    );
    assert_unchanged(b, &b_before, "after the refused restore");
    assert_unchanged(a, &a_before, "after the refused restore");
    assert_eq!(b.http_get(new, "/").0, 404, "B does not serve it");
    assert_no_leftovers(&world);
    world.done();
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
