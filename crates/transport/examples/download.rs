//! Downloads one file over SSH exactly as baluchon does (resumable, checked against the other
//! side's sha256), for bench/ssh.sh to compare with `ssh host 'cat file' > file`.
//!
//!   download ssh://user@host:port REMOTE_PATH FILE KNOWN_HOSTS IDENTITY

// A measurement tool: it reports on stdout.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;
use std::time::Instant;

use baluchon_transport::{ConnectOptions, Connection, SshTarget};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, remote, file, known_hosts, identity] = args.as_slice() else {
        return Err(
            "usage: download ssh://user@host:port REMOTE_PATH FILE KNOWN_HOSTS IDENTITY".into(),
        );
    };
    let target: SshTarget = url.parse()?;
    let mut options = ConnectOptions::new(PathBuf::from(known_hosts));
    options.identity = Some(PathBuf::from(identity));
    let started = Instant::now();
    let conn = Connection::open(&target, &options)?;
    let sha256 = conn.download(remote, file.as_ref())?;
    println!(
        "{file} in {:.2} s, sha256 {sha256}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
