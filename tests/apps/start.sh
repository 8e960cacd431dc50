#!/usr/bin/env bash
# Start MariaDB, PostgreSQL, php-fpm and nginx WITHOUT systemd (CI containers and
# this dev box have none), each only if not already running. Safe to call
# concurrently (flock) and repeatedly.
# stdout: started=<comma list, empty if all were up>
#         elapsed_s=<seconds>
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"
require_root
t0=$(now_ns)
PG_VERSION=${PG_VERSION:-15}
take_lock
mkdir -p "$LOG_DIR" "$STATE_DIR"
started=()

# Daemons get std fds on /dev/null or a log file: a caller that captures our
# stdout (Rust Command::output) would otherwise wait for EOF until the daemons
# die. `detached` (lib.sh) closes all other fds and starts a new session.

# --- MariaDB: launch now, wait for it at the end (overlaps with the others) ----
mysql_up() { mysqladmin --connect-timeout=2 ping >/dev/null 2>&1; }
mysql_wait=0
if ! mysql_up; then
    # /run is a tmpfs on real machines: recreate the socket dir each boot.
    mkdir -p /run/mysqld && chown mysql:root /run/mysqld
    if live_pid "$MYSQLD_PID" '^(mariadbd|mysqld)$' >/dev/null; then
        log "mysqld process exists but does not answer yet; waiting"
    else
        log "starting MariaDB (mysqld_safe)"
        # Debian's mysqld_safe config logs to syslog through logger(1); containers have
        # no /dev/log, so errors would vanish. Log to a file instead.
        # (written by mariadbd-safe-helper running as mysql, hence the chown)
        touch "$LOG_DIR/mariadb.err" && chown mysql "$LOG_DIR/mariadb.err"
        detached -f mysqld_safe --skip-syslog --log-error="$LOG_DIR/mariadb.err" \
            </dev/null >>"$LOG_DIR/mysqld_safe.log" 2>&1
        started+=(mariadb)
    fi
    mysql_wait=1
fi

# --- PostgreSQL: in the background, pg_ctlcluster polls in 0.5 s steps (~2.2 s) --
if [ ! -d "/etc/postgresql/$PG_VERSION/main" ]; then
    log "creating PostgreSQL cluster $PG_VERSION/main"
    pg_createcluster "$PG_VERSION" main >&2
fi
pg_job=
pg_rc=0; pg_ctlcluster "$PG_VERSION" main status >/dev/null 2>&1 || pg_rc=$?
if [ "$pg_rc" != 0 ]; then
    mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql && chmod 2775 /var/run/postgresql
    log "starting PostgreSQL $PG_VERSION/main"
    # pg_ctlcluster returns once the server accepts connections.
    detached -w pg_ctlcluster "$PG_VERSION" main start </dev/null >>"$LOG_DIR/postgresql.log" 2>&1 &
    pg_job=$!
    started+=(postgresql)
fi

# --- php-fpm -----------------------------------------------------------------
# process_control_timeout defaults to 0: a USR2 reload (site scripts add/remove
# pools) then kills in-flight requests of EVERY pool -> 502 in a parallel test
# (reproduced). With a timeout the old workers finish their request first.
# A [global] section is allowed in any included file, so no edit of the conffile.
fpm_global=/etc/php/8.2/fpm/pool.d/00-baluchon-global.conf
want_fpm=$(printf '%s\n' '; Written by baluchon tests/apps/start.sh: let reloads wait for in-flight requests.' \
    '[global]' 'process_control_timeout = 10s')
fpm_changed=0
if [ "$(cat "$fpm_global" 2>/dev/null)" != "$want_fpm" ]; then
    printf '%s\n' "$want_fpm" >"$fpm_global"; fpm_changed=1
fi
if ! fpm_running; then
    mkdir -p /run/php
    "$PHP_FPM_BIN" -t >/dev/null 2>&1 || { "$PHP_FPM_BIN" -t >&2 || true; die "php-fpm config test failed"; }
    log "starting php-fpm"
    # -D: daemonize; the pid lands in $PHP_FPM_PID (and changes on every USR2 reload).
    detached "$PHP_FPM_BIN" -D </dev/null >>"$LOG_DIR/php-fpm.log" 2>&1
    wait_until 20 fpm_running || die "php-fpm did not start (see /var/log/php8.2-fpm.log)"
    wait_until 20 test -S "$PHP_FPM_DEFAULT_SOCK" || die "php-fpm socket $PHP_FPM_DEFAULT_SOCK missing"
    started+=(php-fpm)
elif [ "$fpm_changed" = 1 ]; then
    log "php-fpm global config changed, reloading"
    fpm_reload ""
fi

# --- nginx -------------------------------------------------------------------
# Catch-all default server on 127.0.0.1:80: a Host we don't serve (e.g. a removed
# tenant) gets a tagged 404, never another tenant's site (without a default_server,
# nginx hands unknown Hosts to the first vhost loaded, alphabetically). The Debian
# default site is disabled: it also listens on [::]:80 (fails where IPv6 is off) and
# serves a 200 welcome page. All test vhosts listen on 127.0.0.1:80 only; nginx picks
# the server among those bound to the exact address:port the connection came in on.
nginx_changed=0
if [ -L /etc/nginx/sites-enabled/default ] || [ -e /etc/nginx/sites-enabled/default ]; then
    rm -f /etc/nginx/sites-enabled/default; nginx_changed=1
fi
catchall=/etc/nginx/conf.d/baluchon-catchall.conf
want=$(cat <<'CONF'
# Written by baluchon tests/apps/start.sh: unknown Host headers get a tagged 404.
# (conf.d is included in the http{} block.) The default bucket size (64 on
# x86-64) rejects the WHOLE config as soon as one server_name is longer than
# ~50 chars: "could not build server_names_hash".
server_names_hash_bucket_size 256;
server {
    listen 127.0.0.1:80 default_server;
    server_name _;
    add_header X-Baluchon-Catchall 1 always;
    return 404;
}
CONF
)
if [ "$(cat "$catchall" 2>/dev/null)" != "$want" ]; then
    printf '%s\n' "$want" >"$catchall"; nginx_changed=1
fi
catchall_up() {
    curl -sS -o /dev/null -D - --max-time 2 -H 'Host: baluchon-catchall.invalid' http://127.0.0.1/ 2>/dev/null \
        | grep -qi '^x-baluchon-catchall:'
}
if ! nginx_running; then
    out=$(nginx -t 2>&1) || { log "$out"; die "nginx config test failed"; }
    log "starting nginx"
    detached nginx </dev/null >>"$LOG_DIR/nginx.log" 2>&1 || { tail -n 20 "$LOG_DIR/nginx.log" /var/log/nginx/error.log >&2 2>/dev/null || true; die "nginx failed to start (port 80 taken?)"; }
    wait_until 20 nginx_running || die "nginx did not write $NGINX_PID"
    started+=(nginx)
elif [ "$nginx_changed" = 1 ]; then
    log "nginx config changed, reloading"
    nginx_reload
fi
wait_until 10 catchall_up || die "nginx does not answer on 127.0.0.1:80 with the catch-all (another server on port 80?)"

if [ "$mysql_wait" = 1 ]; then
    # Give up early if mysqld_safe already gave up (bad config, permissions...).
    mysql_up_or_dead() {
        mysql_up && return 0
        if ! pgrep -x mysqld_safe >/dev/null && ! live_pid "$MYSQLD_PID" '^(mariadbd|mysqld)$' >/dev/null; then
            mysql_dead=1; return 0
        fi
        return 1
    }
    mysql_dead=0
    if ! wait_until 60 mysql_up_or_dead || [ "$mysql_dead" = 1 ]; then
        tail -n 20 "$LOG_DIR/mysqld_safe.log" "$LOG_DIR/mariadb.err" >&2 2>/dev/null || true
        die "MariaDB did not answer mysqladmin ping"
    fi
fi
if [ -n "$pg_job" ]; then
    wait "$pg_job" || { tail -n 20 "$LOG_DIR/postgresql.log" "/var/log/postgresql/postgresql-$PG_VERSION-main.log" >&2 2>/dev/null || true; die "PostgreSQL failed to start"; }
fi

e=$(elapsed_s "$t0")
log "up: mariadb postgresql php-fpm nginx (started: ${started[*]:-none}) in ${e}s"
( IFS=,; echo "started=${started[*]:-}" )
echo "elapsed_s=$e"
