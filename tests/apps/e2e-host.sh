#!/usr/bin/env bash
# One isolated "host" of the two-host end-to-end suite (tests/src/hosts.rs), on this machine.
#
#   e2e-host.sh init DIR NAME   run as PID 1 of new mount, PID, network, UTS and IPC
#                               namespaces (unshare): builds the host's root and waits
#                               until its stdin closes, then stops the services and exits,
#                               which ends every process of the host and drops its mounts
#   e2e-host.sh provision ADDR  run inside the host (nsenter): fresh databases, the apps'
#                               services (start.sh), and an sshd on ADDR:22
#   e2e-host.sh sshd-restart ADDR [NAME=VALUE]
#                               inside the host: restart sshd with its current host key,
#                               setting NAME=VALUE in every session (test hooks)
#
# The root is an overlay of this machine's / with its upper layer on a tmpfs that only the
# host's mount namespace sees; /etc, /srv, /root and the apps' data directories are private
# copies (or empty), so that later changes on this machine never show through, and /run,
# /tmp and the database directories are fresh. Nothing is left on disk by a host.
# stdout (provision): host_key=<ssh-ed25519 AAAA…>, elapsed_s=<seconds>; logs on stderr.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=lib.sh
. "$HERE/lib.sh"
require_root
PG_VERSION=${PG_VERSION:-15}
# Where a host sees tests/apps.
APPS=/usr/local/lib/baluchon-e2e/apps

do_init() {
    local dir=$1 name=$2 root
    # Nothing mounted here may propagate back to this machine's namespace.
    mount --make-rprivate /
    mkdir -p "$dir"
    mount -t tmpfs -o size=3g,mode=700 "baluchon-e2e-$name" "$dir"
    mkdir -p "$dir/upper" "$dir/work" "$dir/root" "$dir/private"
    root=$dir/root
    mount -t overlay overlay -o "lowerdir=/,upperdir=$dir/upper,workdir=$dir/work" "$root"
    mountpoint -q "$root" || die "no overlay at $root"
    # Made opaque in the overlay (a directory made where one was removed hides the lower
    # one): snapshots of what this machine's own test runs keep changing (sites, pools,
    # wikis), and empty state directories of baluchon and the test scripts. They stay on
    # the root's mount: the importer moves files between them, and renames cannot cross
    # mounts.
    local d
    for d in /etc /srv /var/lib/wordpress /var/lib/dokuwiki /var/www \
        /var/lib/baluchon /var/lib/baluchon-test-apps /var/log/baluchon-test-apps; do
        rm -rf "${root:?}$d"
        mkdir -p "$root$d"
        case $d in
            /etc | /srv | /var/lib/wordpress | /var/lib/dokuwiki | /var/www)
                if [ -d "$d" ]; then cp -a "$d/." "$root$d/"; fi ;;
        esac
    done
    # Empty, and mounts of their own: root's home (this machine's holds toolchains and
    # caches, too many files to hide one by one) and the database servers' files.
    for d in /root /home /var/lib/mysql /var/lib/postgresql; do
        mkdir -p "$dir/private$d"
        mount --bind "$dir/private$d" "$root$d"
    done
    chmod 700 "$root/root"
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
    mount -t sysfs sysfs "$root/sys"
    mount -t tmpfs -o mode=755 run "$root/run"
    mount -t tmpfs -o mode=1777 tmp "$root/tmp"
    # These scripts, wherever the checkout is (a fresh /tmp would hide it).
    mkdir -p "$root$APPS"
    mount --bind -o ro "$HERE" "$root$APPS"
    mkdir -p "$root/.old-root"
    cd "$root"
    pivot_root . .old-root
    umount -l /.old-root
    rmdir /.old-root
    hostname "$name"
    ip link set lo up
    touch /run/e2e-host-ready
    # The harness holds our stdin open for the host's lifetime: EOF (it dropped the host,
    # or died) stops the services by PID, then PID 1 exits and the kernel ends the rest.
    while read -r _; do :; done
    "$APPS/stop.sh" >/dev/null 2>&1 || true
}

do_provision() {
    local addr=$1 t0
    t0=$(now_ns)
    # What this machine's test runs left in the copied /etc: none of it is this host's.
    find /etc/nginx/sites-enabled /etc/nginx/sites-available -mindepth 1 ! -name default -delete
    find /etc/php/8.2/fpm/pool.d -mindepth 1 ! -name www.conf -delete
    rm -f /etc/wordpress/config-*.php
    rm -rf /etc/baluchon/custom
    rm -f /etc/ssh/ssh_host_*

    # Fresh database servers. The data directories are on tmpfs, which may refuse
    # O_DIRECT (InnoDB's default).
    printf '[mariadbd]\ninnodb_flush_method = fsync\ninnodb_log_file_size = 16M\n' \
        >/etc/mysql/mariadb.conf.d/99-baluchon-e2e.cnf
    chown mysql:mysql /var/lib/mysql
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
        --auth-root-authentication-method=socket >/dev/null
    rm -rf "/etc/postgresql/$PG_VERSION/main"
    chown postgres:postgres /var/lib/postgresql
    "$HERE/start.sh" >/dev/null

    ssh-keygen -q -t ed25519 -N '' -C "$(hostname)" -f /etc/ssh/ssh_host_ed25519_key
    install -d -m 700 /root/.ssh
    install -d -m 755 /run/sshd
    write_sshd_config "$addr" ""
    start_sshd "$addr"

    echo "host_key=$(cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub)"
    echo "elapsed_s=$(elapsed_s "$t0")"
}

# write_sshd_config ADDR ENV: ENV (NAME=VALUE or empty) is set in every session, which is
# how the test hooks of docs/testing.md reach a baluchon started over SSH.
write_sshd_config() {
    local addr=$1 env=$2
    {
        printf '%s\n' "ListenAddress $addr" "Port 22" "HostKey /etc/ssh/ssh_host_ed25519_key" \
            "PidFile /run/sshd.pid" "PermitRootLogin prohibit-password" \
            "AuthorizedKeysFile /root/.ssh/authorized_keys" "PasswordAuthentication no" \
            "KbdInteractiveAuthentication no" "UsePAM no" "LogLevel ERROR" \
            "MaxStartups 100" "MaxSessions 100"
        [ -z "$env" ] || echo "SetEnv $env"
    } >/etc/ssh/sshd_config
}

start_sshd() {
    local addr=$1
    detached /usr/sbin/sshd -E /var/log/sshd-e2e.log </dev/null >/dev/null 2>&1
    _sshd_listens() { (exec 3<>"/dev/tcp/$addr/22") 2>/dev/null; }
    wait_until 10 _sshd_listens || die "sshd does not listen: $(cat /var/log/sshd-e2e.log)"
}

# A new listener with the new config and host key. Not SIGHUP: sshd re-executes itself then,
# and a connection made before it has would reach the old one. Open sessions stay.
do_sshd_restart() {
    local addr=$1 env=${2:-} pid
    write_sshd_config "$addr" "$env"
    pid=$(live_pid /run/sshd.pid '^sshd') || die "sshd is not running"
    kill -TERM "$pid"
    _sshd_gone() { ! pid_alive "$pid"; }
    wait_until 10 _sshd_gone || die "sshd (pid $pid) does not stop"
    start_sshd "$addr"
}

case ${1:-} in
    init) [ $# -eq 3 ] || die "usage: $0 init DIR NAME"; do_init "$2" "$3" ;;
    provision) [ $# -eq 2 ] || die "usage: $0 provision ADDR"; do_provision "$2" ;;
    sshd-restart) [ $# -ge 2 ] || die "usage: $0 sshd-restart ADDR [NAME=VALUE]"; do_sshd_restart "$2" "${3:-}" ;;
    *) echo "usage: $0 init DIR NAME | provision ADDR | sshd-restart ADDR [NAME=VALUE]" >&2; exit 2 ;;
esac
