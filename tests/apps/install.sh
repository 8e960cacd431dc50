#!/usr/bin/env bash
# Install the Debian 12 packages the app-tenant tests need (WordPress + MariaDB,
# DokuWiki, nginx, php-fpm, PostgreSQL). Idempotent: does nothing (not even
# apt-get update) when everything is already installed.
# stdout: elapsed_s=<seconds>   (logs and apt output on stderr)
set -euo pipefail
# shellcheck source=lib.sh
. "$(dirname "$(readlink -f "$0")")/lib.sh"
require_root
t0=$(now_ns)

# Two steps, 'php' listed explicitly in step 2: wordpress depends on
# "libapache2-mod-php | php"; without php-fpm/php already chosen apt takes the
# first alternative and pulls apache2-bin + libapache2-mod-php8.2 (seen on a first try).
STEP1=(nginx php8.2-fpm php8.2-cli mariadb-server postgresql sqlite3 curl)
STEP2=(php wordpress wordpress-theme-twentytwentythree dokuwiki php-mysql php-pgsql
       php-intl php-mbstring php-xml php-apcu php-gd php-sqlite3)

missing() {
    local p
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || echo "$p"
    done
}

mapfile -t miss1 < <(missing "${STEP1[@]}")
mapfile -t miss2 < <(missing "${STEP2[@]}")

if [ ${#miss1[@]} -eq 0 ] && [ ${#miss2[@]} -eq 0 ]; then
    log "all packages already installed"
else
    export DEBIAN_FRONTEND=noninteractive
    # Wait for a concurrent apt/dpkg (e.g. unattended run) instead of failing at once.
    APT=(apt-get -y -q -o DPkg::Lock::Timeout=600 --no-install-recommends)
    log "missing: ${miss1[*]} ${miss2[*]}"
    apt-get -q -o DPkg::Lock::Timeout=600 update >&2
    # No systemd here, and on CI containers there may be no policy-rc.d: postinst
    # scripts may then start daemons via /etc/init.d. start.sh copes with that
    # (it detects them through the standard pidfiles).
    if [ ${#miss1[@]} -gt 0 ]; then "${APT[@]}" install "${miss1[@]}" >&2; fi
    if [ ${#miss2[@]} -gt 0 ]; then "${APT[@]}" install "${miss2[@]}" >&2; fi
    still=$(missing "${STEP1[@]}" "${STEP2[@]}")
    [ -z "$still" ] || die "still not installed: $still"
    if dpkg-query -W -f='${Package} ${db:Status-Status}\n' 'apache2*' 'libapache2-mod-php*' 2>/dev/null | grep -q ' installed$'; then
        log "WARNING: an apache2 package got installed (it may grab port 80)"
    fi
fi

e=$(elapsed_s "$t0")
log "done in ${e}s"
echo "elapsed_s=$e"
