# shellcheck shell=bash
# shellcheck disable=SC2034,SC2317,SC2016  # vars used by sourcing scripts; helpers called indirectly; PHP in '...'
# Shared helpers for the tests/apps/*.sh scripts (sourced, never executed).
# Convention: stdout carries only key=value results; every log line goes to stderr,
# so callers (the Rust tests) can parse stdout without filtering.

# Callers (cargo test) may run with a minimal PATH: nginx/php-fpm live in /usr/sbin.
# C locale: stable tool output and a '.' decimal separator in timings.
export PATH=$PATH:/usr/local/sbin:/usr/sbin:/sbin
export LC_ALL=C

LOCK_FILE=/run/baluchon-test-apps.lock
STATE_DIR=/var/lib/baluchon-test-apps          # our own bookkeeping, outside any app's data dir
LOG_DIR=/var/log/baluchon-test-apps            # stdout/stderr of the daemons we launch

PHP_FPM_BIN=php-fpm8.2
PHP_FPM_PID=/run/php/php8.2-fpm.pid
PHP_FPM_DEFAULT_SOCK=/run/php/php8.2-fpm.sock
NGINX_PID=/run/nginx.pid
MYSQLD_PID=/run/mysqld/mysqld.pid

# set -e exits silently; say which command failed (errtrace: also inside functions).
set -E
trap 'log "ERROR: failed (rc $?) at ${BASH_SOURCE[0]##*/}:$LINENO: $BASH_COMMAND"' ERR

log() { printf '%s: %s\n' "${0##*/}" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

require_root() { [ "$(id -u)" = 0 ] || die "must run as root"; }

now_ns() { date +%s%N; }
# elapsed seconds since a now_ns timestamp, 2 decimals
elapsed_s() { local t0=$1 t1; t1=$(now_ns); awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", (b-a)/1e9}'; }

# Random lowercase hex from the kernel; coreutils only (no openssl/python on a bare CI box).
rand_hex() { head -c "$1" /dev/urandom | od -An -tx1 -v | tr -d ' \n'; }

# One lock shared by start/stop/site scripts: parallel tests must not interleave
# config writes and daemon reloads. Scripts take it EXCLUSIVE for their whole run.
# A test doing HTTP checks while other tests may create/remove sites should hold a
# SHARED flock on the same file during its requests (Rust: File::lock_shared):
# an `nginx -s reload` truncates ~1 in 3 PHP responses that are in flight at
# that moment (nginx 1.22 "open socket ... left in connection", reproduced).
# Never hold it while calling these scripts from the same test (deadlock).
# fd 9 must NOT leak into daemons we start (they would hold the lock forever):
# daemons are launched through `detached`, which closes every fd above 2.
take_lock() {
    mkdir -p "${LOCK_FILE%/*}"
    exec 9>"$LOCK_FILE"
    flock -w 600 9 || die "timed out waiting for $LOCK_FILE"
}

# Alive = exists and is not a zombie. Our daemons are re-parented to PID 1, which
# in a container may be a minimal init that reaps exited children late (here: ~2 s),
# so kill -0 alone reports a stopped daemon as alive.
pid_alive() {
    local st
    st=$(awk '/^State:/{print $2}' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# pid from a pidfile if that process is alive AND its command name matches
# (a stale pidfile after a container restart may point at a recycled pid).
live_pid() {
    local pidfile=$1 comm_re=$2 pid comm
    [ -s "$pidfile" ] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [ -n "$pid" ] && pid_alive "$pid" || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm =~ $comm_re ]] || return 1
    echo "$pid"
}

# wait_until TIMEOUT_S CMD...: poll every 50 ms
wait_until() {
    local timeout=$1; shift
    local deadline=$(( $(date +%s) + timeout ))
    until "$@"; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}

# detached [setsid options] CMD...: run CMD in a new session with only fds 0-2
# (which the caller redirects to /dev/null or a log). Any other inherited fd
# (our flock fd 9, a test harness's pipe) would otherwise stay open for the
# daemon's whole life: the lock would never be released and a caller reading
# a pipe to EOF would hang. The new session keeps a Ctrl-C on `cargo test`
# from reaching the databases.
detached() {
    (
        for f in /proc/self/fd/*; do
            f=${f##*/}
            if [ "$f" -gt 2 ]; then eval "exec $f>&-" 2>/dev/null || true; fi
        done
        exec setsid "$@"
    )
}

nginx_running() { live_pid "$NGINX_PID" '^nginx' >/dev/null; }
fpm_running() { live_pid "$PHP_FPM_PID" '^php-fpm' >/dev/null; }

# nginx -s reload only signals the master: for a few ms afterwards, new
# connections are still served by old workers with the old config. Callers
# poll for the effect (see wait_vhost) instead of trusting the return.
nginx_reload() {
    local out
    out=$(nginx -t 2>&1) || { log "$out"; die "nginx config test failed"; }
    if nginx_running; then
        nginx -s reload </dev/null >&2
    fi
}

# php-fpm USR2 makes the -D master re-exec with a NEW pid (seen 1271 -> 19426):
# never cache the pid, re-read the pidfile and wait for the new master.
# Optional $1: a socket that must exist afterwards (new pool).
fpm_reload() {
    local want_sock=${1:-} old new
    "$PHP_FPM_BIN" -t >/dev/null 2>&1 || { "$PHP_FPM_BIN" -t >&2 || true; die "php-fpm config test failed"; }
    old=$(live_pid "$PHP_FPM_PID" '^php-fpm') || { log "php-fpm not running, no reload"; return 0; }
    kill -USR2 "$old"
    _fpm_new_master() {
        new=$(live_pid "$PHP_FPM_PID" '^php-fpm') || return 1
        [ "$new" != "$old" ] || return 1
        [ -z "$want_sock" ] || [ -S "$want_sock" ]
    }
    wait_until 20 _fpm_new_master || die "php-fpm did not come back after USR2 (see /var/log/php8.2-fpm.log)"
}

# Does nginx answer Host $1 with a real vhost (1) or with our catch-all (0)?
# The catch-all server (start.sh) tags its 404 with X-Baluchon-Catchall.
vhost_active() {
    local domain=$1 headers
    headers=$(curl -sS -o /dev/null -D - --max-time 5 --resolve "$domain:80:127.0.0.1" \
        "http://$domain/.baluchon-probe" 2>/dev/null) || return 1
    ! grep -qi '^x-baluchon-catchall:' <<<"$headers"
}
wait_vhost() {   # wait_vhost DOMAIN present|absent
    local domain=$1 want=$2
    if [ "$want" = present ]; then
        wait_until 10 vhost_active "$domain" || die "nginx still does not serve $domain after reload"
    else
        _vhost_gone() { ! vhost_active "$domain"; }
        wait_until 10 _vhost_gone || die "nginx still serves $domain after reload"
    fi
}

# Domain names end up in file names and SQL identifiers: accept only plain hostnames.
check_domain() {
    local d=$1
    if ! [[ $d =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || [[ $d == *..* ]]; then
        die "invalid domain '$d' (use lowercase letters, digits, '.', '-')"
    fi
    [ "${#d}" -le 200 ] || die "domain too long"
}

# Replacements quoted: bash 5.2 (patsub_replacement) expands an unquoted & to the match.
xml_escape() { local s=$1; s=${s//&/"&amp;"}; s=${s//</"&lt;"}; s=${s//>/"&gt;"}; printf '%s' "$s"; }
xr_string() { printf '<value><string>%s</string></value>' "$(xml_escape "$1")"; }
xr_int() { printf '<value><int>%d</int></value>' "$1"; }
xr_bool() { printf '<value><boolean>%d</boolean></value>' "$1"; }
xr_b64file() { printf '<value><base64>'; base64 -w0 "$1"; printf '</base64></value>'; }
xr_member() { printf '<member><name>%s</name>%s</member>' "$1" "$2"; }

# xmlrpc_call URL DOMAIN METHOD PARAM_VALUE_XML...   (extra curl args, e.g. -u, in array XR_CURL_ARGS)
# Prints the result: a scalar as-is, a struct as key=value lines (scalar members only).
# A fault or an HTTP error is fatal. PHP parses the reply (php-cli is installed with the apps;
# python may not be on a CI box).
xmlrpc_call() {
    local url=$1 domain=$2 method=$3; shift 3
    local req resp code
    req=$(mktemp); resp=$(mktemp)
    {
        printf '<?xml version="1.0"?>\n<methodCall><methodName>%s</methodName><params>' "$method"
        local p
        for p in "$@"; do printf '<param>%s</param>' "$p"; done
        printf '</params></methodCall>\n'
    } >"$req"
    code=$(curl -sS -o "$resp" -w '%{http_code}' --max-time 60 --resolve "$domain:80:127.0.0.1" \
        -H 'Content-Type: text/xml' --data-binary "@$req" ${XR_CURL_ARGS[@]+"${XR_CURL_ARGS[@]}"} "$url") || { rm -f "$req" "$resp"; die "$method: curl failed"; }
    if [ "$code" != 200 ]; then
        log "$method: HTTP $code: $(head -c 600 "$resp")"; rm -f "$req" "$resp"; die "$method failed"
    fi
    php -d display_errors=stderr -r '
        $x = @simplexml_load_file($argv[1]);
        if ($x === false) { fwrite(STDERR, "not XML: ".substr(file_get_contents($argv[1]),0,600)."\n"); exit(1); }
        if (isset($x->fault)) {
            $m = []; foreach ($x->fault->value->struct->member as $mm) { $m[(string)$mm->name] = trim((string)$mm->value->asXML()); }
            fwrite(STDERR, "XML-RPC fault: ".strip_tags(implode(" ", $m))."\n"); exit(1);
        }
        $v = $x->params->param->value;
        $scalar = function ($v) {
            foreach (["string","int","i4","boolean","double","dateTime.iso8601","base64"] as $t) {
                if (isset($v->$t)) return (string)$v->$t;
            }
            if ($v->count() == 0) return (string)$v;   // untyped value = string
            return null;                               // struct/array
        };
        if (isset($v->struct)) {
            foreach ($v->struct->member as $m) { $s = $scalar($m->value); if ($s !== null) echo $m->name, "=", $s, "\n"; }
        } else { echo $scalar($v), "\n"; }
    ' "$resp" || { rm -f "$req" "$resp"; die "$method: bad reply"; }
    rm -f "$req" "$resp"
}

# make_png FILE: small valid PNG (16x16 random RGB) with a tEXt chunk of random hex,
# so each run uploads different bytes. tEXt comes before IDAT on purpose: DokuWiki's
# XSS content check scans the first 1 KB for "<script"/"<a " etc., hex can't match.
make_png() {
    php -r '
        $w = 16; $h = 16; $raw = "";
        for ($y = 0; $y < $h; $y++) { $raw .= "\0" . random_bytes($w * 3); }
        $chunk = function ($t, $d) { return pack("N", strlen($d)) . $t . $d . pack("N", crc32($t . $d)); };
        $png = "\x89PNG\r\n\x1a\n"
             . $chunk("IHDR", pack("NNCCCCC", $w, $h, 8, 2, 0, 0, 0))
             . $chunk("tEXt", "Comment\0baluchon-test-" . bin2hex(random_bytes(1024)))
             . $chunk("IDAT", gzcompress($raw, 9))
             . $chunk("IEND", "");
        file_put_contents($argv[1], $png) or exit(1);
    ' "$1"
}
