//! Uploads one file over SSH exactly as baluchon does (resumable, hashed at both ends), for
//! bench/ssh.sh to compare with `ssh host 'cat > file'`.
//!
//!   upload FILE ssh://user@host:port REMOTE_PATH KNOWN_HOSTS IDENTITY

// A measurement tool: it reports on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use baluchon_transport::{ConnectOptions, Connection, LocalFile, SshTarget};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, url, remote, known_hosts, identity] = args.as_slice() else {
        return Err(
            "usage: upload FILE ssh://user@host:port REMOTE_PATH KNOWN_HOSTS IDENTITY".into(),
        );
    };
    let target: SshTarget = url.parse()?;
    let mut options = ConnectOptions::new(PathBuf::from(known_hosts));
    options.identity = Some(PathBuf::from(identity));
    let started = Instant::now();
    let conn = Connection::open(&target, &options)?;
    let report = conn.upload(&mut LocalFile::new(file.as_ref()), remote, &mut |_| {})?;
    println!(
        "{} bytes in {:.2} s, sha256 {}",
        report.bytes,
        started.elapsed().as_secs_f64(),
        report.sha256
    );
    Ok(())
}
