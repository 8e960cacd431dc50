#!/usr/bin/env bash
# Stop what start.sh started, by pid (no systemd), and wait until the processes
# are gone so that a following start.sh or package purge sees a clean state.
# Idempotent: services already down are skipped.
# stdout: stopped=<comma list>
#         elapsed_s=<seconds>
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"
require_root
t0=$(now_ns)
PG_VERSION=${PG_VERSION:-15}
take_lock
stopped=()

# stop_pid NAME PID SIGNAL: signal, wait up to 30 s, then SIGKILL (a test box
# must not keep a half-dead daemon that blocks the next start).
stop_pid() {
    local name=$1 pid=$2 sig=$3
    log "stopping $name (pid $pid, SIG$sig)"
    kill "-$sig" "$pid" 2>/dev/null || return 0
    _gone() { ! pid_alive "$pid"; }
    if ! wait_until 30 _gone; then
        log "WARNING: $name (pid $pid) still alive after 30 s, SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_until 5 _gone || die "$name (pid $pid) survives SIGKILL"
    fi
    stopped+=("$name")
}

# nginx first (stop taking requests), then php-fpm, then the databases.
# QUIT = graceful for both nginx and php-fpm masters; pidfiles are re-read right
# before signalling because php-fpm's pid changes on every USR2 reload.
if pid=$(live_pid "$NGINX_PID" '^nginx'); then stop_pid nginx "$pid" QUIT; fi
if pid=$(live_pid "$PHP_FPM_PID" '^php-fpm'); then stop_pid php-fpm "$pid" QUIT; fi

# TERM = clean shutdown of mariadbd; mysqld_safe (its parent) sees the pidfile
# vanish and exits by itself, wait for it too so nothing respawns mariadbd.
if pid=$(live_pid "$MYSQLD_PID" '^(mariadbd|mysqld)$'); then
    ppid=$(awk '/^PPid:/{print $2}' "/proc/$pid/status" 2>/dev/null || true)
    stop_pid mariadb "$pid" TERM
    if [ -n "$ppid" ] && [ "$(cat "/proc/$ppid/comm" 2>/dev/null)" = mysqld_safe ]; then
        _safe_gone() { ! pid_alive "$ppid"; }
        wait_until 10 _safe_gone || { log "mysqld_safe (pid $ppid) lingers, TERM"; kill -TERM "$ppid" 2>/dev/null || true; }
    fi
fi

# pg_ctlcluster stop waits until postmaster.pid is gone (fast mode: disconnects
# clients); the postmaster process itself exits a moment later, wait for it too.
if pg_ctlcluster "$PG_VERSION" main status >/dev/null 2>&1; then
    pgpid=$(head -n1 "/var/lib/postgresql/$PG_VERSION/main/postmaster.pid" 2>/dev/null || true)
    log "stopping PostgreSQL $PG_VERSION/main (pid ${pgpid:-?})"
    pg_ctlcluster "$PG_VERSION" main stop -m fast </dev/null >&2
    if [ -n "$pgpid" ]; then
        _pg_gone() { ! pid_alive "$pgpid"; }
        wait_until 30 _pg_gone || log "WARNING: postmaster $pgpid still alive"
    fi
    stopped+=(postgresql)
fi

e=$(elapsed_s "$t0")
log "stopped: ${stopped[*]:-nothing} in ${e}s"
( IFS=,; echo "stopped=${stopped[*]:-}" )
echo "elapsed_s=$e"
