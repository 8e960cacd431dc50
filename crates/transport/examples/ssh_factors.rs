//! What bounds libssh2's upload speed: sends one file to `cat > /dev/null` over a fresh
//! session per cipher and write size, and prints the seconds each took. For bench/ssh.sh.
//!
//!   ssh_factors FILE ssh://user@host:port KNOWN_HOSTS IDENTITY

// A measurement tool: it reports on stdout.
#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Instant;

use baluchon_transport::SshTarget;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [file, url, _known_hosts, identity] = args.as_slice() else {
        return Err("usage: ssh_factors FILE ssh://user@host:port KNOWN_HOSTS IDENTITY".into());
    };
    let target: SshTarget = url.parse()?;
    println!("{:<32} {:>8} {:>8}", "cipher", "write", "seconds");
    for cipher in [
        "aes128-gcm@openssh.com",
        "chacha20-poly1305@openssh.com",
        "aes128-ctr",
    ] {
        for write in [32 << 10, 256 << 10, 1 << 20] {
            // The host key is not checked: loopback, a measurement, nothing sent but a test file.
            let mut session = ssh2::Session::new()?;
            session.set_tcp_stream(TcpStream::connect((target.host.as_str(), target.port))?);
            session.method_pref(ssh2::MethodType::CryptCs, cipher)?;
            session.method_pref(ssh2::MethodType::CryptSc, cipher)?;
            session.handshake()?;
            session.userauth_pubkey_file(&target.user, None, Path::new(identity), None)?;
            let mut channel = session.channel_session()?;
            channel.exec("cat > /dev/null")?;
            let mut source = fs_err::File::open(file)?;
            let mut buf = vec![0u8; write];
            let started = Instant::now();
            loop {
                let n = source.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                channel.write_all(&buf[..n])?;
            }
            channel.send_eof()?;
            channel.wait_eof()?;
            channel.wait_close()?;
            println!(
                "{cipher:<32} {:>7}K {:>8.2}",
                write >> 10,
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok(())
}
