#!/usr/bin/env bash
# The two entry points of the README:
#   ./dev.sh demo   install what is missing, build, and run the built-in demo
#   ./dev.sh test   install what is missing (with the apps the app tests capture: nginx,
#                   PHP-FPM, MariaDB, PostgreSQL, WordPress, DokuWiki), and run the whole
#                   test suite. The app tests configure sites on this machine and leave
#                   the services running: use a throwaway VM or container.
set -euo pipefail
cd "$(dirname "$0")"

# Debian packages the tests and the demo use: stock tools the format promises to work with
# (tar, zstd, sha256sum, ssh-keygen), mount for the full-disk tests, a C compiler for zstd-sys,
# OpenSSL headers for libssh2-sys, an sshd for the SSH tests (started on loopback by them),
# ip (iproute2) for the two-host suite, and the stock age CLI that must open encrypted bundles.
packages=(tar zstd coreutils openssh-client openssh-server util-linux iproute2 gcc libc6-dev pkg-config libssl-dev age)

install_packages() {
    local missing=()
    for p in "${packages[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    ((${#missing[@]} == 0)) && return 0
    local sudo=()
    ((EUID == 0)) || sudo=(sudo)
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y "${missing[@]}"
}

need_cargo() {
    command -v cargo >/dev/null || {
        echo "cargo not found: install Rust 1.89 or later (https://rustup.rs), then run again" >&2
        exit 1
    }
}

# A one-shot build gains nothing from incremental caches, which would take another GB.
export CARGO_INCREMENTAL=0

# A linker that runs out of disk dies of SIGBUS with no word about space: say it first.
check_disk() {
    local need_gib=$1 free_kib
    free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
    echo "free disk here: $((free_kib / 1048576)) GiB (this step needs about ${need_gib} GiB)"
    ((free_kib >= need_gib * 1048576)) || echo "warning: low on disk; a build may fail with 'Bus error'" >&2
}

case "${1:-}" in
    demo)
        check_disk 2
        install_packages
        need_cargo
        # The test build's profile: `./dev.sh test` then reuses every compiled dependency
        # (dependencies are optimised in it too; see the root Cargo.toml).
        cargo build --locked -p baluchon-cli
        ./target/debug/baluchon demo
        ;;
    test)
        check_disk 4
        install_packages
        ((EUID == 0)) || { echo "the app tests configure services: run as root" >&2; exit 1; }
        bash tests/apps/install.sh >/dev/null
        need_cargo
        cargo build --workspace --locked
        cargo test --workspace --locked
        ;;
    *)
        echo "usage: $0 demo|test" >&2
        exit 2
        ;;
esac
