#!/usr/bin/env bash
# The Debian 'dokuwiki' package (ONE instance: code /usr/share/dokuwiki, data
# /var/lib/dokuwiki/data, config /etc/dokuwiki) served as an nginx vhost for DOMAIN,
# with an admin password we know and a canary page + media file written over XML-RPC.
#
#   dokuwiki-site.sh create DOMAIN
#   dokuwiki-site.sh remove DOMAIN
#
# Because the instance is shared, several DOMAINs serve the same wiki: the admin
# password is reused while it is still valid, and `remove` only undoes the wiki
# changes (canary files, users.auth.php, local.php) when no other DokuWiki vhost
# made by this script is left.
#
# stdout (create): key=value lines only, in this order:
#   domain admin_user admin_password canary page_id page_path page_url
#   media_id media_path media_url vhost_path elapsed_s
# stdout (remove): domain=..., elapsed_s=...
# Logs go to stderr. create starts the services (start.sh) if needed.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=lib.sh
. "$HERE/lib.sh"

usage() { echo "usage: $0 create|remove DOMAIN" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
case $action in create|remove) ;; *) usage ;; esac
domain=${2,,}
require_root
check_domain "$domain"
t0=$(now_ns)

DW_ROOT=/usr/share/dokuwiki
DW_DATA=/var/lib/dokuwiki/data               # $conf['savedir'] in /etc/dokuwiki/dokuwiki.php
USERS_AUTH=$(readlink -f /etc/dokuwiki/users.auth.php)   # symlink into /var/lib/dokuwiki/acl/
LOCAL_PHP=/etc/dokuwiki/local.php
DW_STATE=$STATE_DIR/dokuwiki                 # backup + known password, outside the wiki's dirs
                                             # (an exporter bundling acl/ must not pick them up)
MARK='# baluchon-test-apps: dokuwiki vhost'
vhost_path=/etc/nginx/sites-available/$domain
vhost_link=/etc/nginx/sites-enabled/$domain
page_id=tenant:canary
page_path=$DW_DATA/pages/tenant/canary.txt

other_vhosts() {   # our DokuWiki vhosts still enabled for other domains
    local f
    for f in /etc/nginx/sites-enabled/*; do
        [ -e "$f" ] && [ "${f##*/}" != "$domain" ] && grep -qxF "$MARK" "$f" && echo "${f##*/}"
    done
    return 0
}

php_hash() { php -r 'echo password_hash(rtrim(fgets(STDIN), "\n"), PASSWORD_BCRYPT);' <<<"$1"; }
# shellcheck disable=SC2016
php_verify() {   # php_verify PASSWORD HASH
    php -r '$p = rtrim(fgets(STDIN), "\n"); exit(password_verify($p, $argv[1]) ? 0 : 1);' "$2" <<<"$1"
}
admin_hash() { awk -F: '$1 == "admin" { print $2; exit }' "$USERS_AUTH" 2>/dev/null; }

LOCAL_BEGIN='// BEGIN baluchon-test-apps'
LOCAL_END='// END baluchon-test-apps'

do_create() {
    local nginx_changed=0 content
    mkdir -p "$DW_STATE"; chmod 0700 "$DW_STATE"

    # DokuWiki's recommended nginx config, adapted: in Debian conf/ and data/ live
    # outside the web root, the deny rules stay as belt and braces. Basic auth for
    # XML-RPC needs the Authorization header (PHP_AUTH_USER) at PHP. Default www pool.
    content="$MARK
server {
    listen 127.0.0.1:80;
    server_name $domain;
    root $DW_ROOT;
    index doku.php;
    client_max_body_size 32m;
    client_body_buffer_size 128k;

    location ~ /(conf/|bin/|inc/|vendor/|install.php) { deny all; }
    location ~ /data/ { internal; }
    location ~ /\\.ht { deny all; }

    location / {
        try_files \$uri \$uri/ @dokuwiki;
    }
    location @dokuwiki {
        # pretty URLs (only used if \$conf['userewrite'] is set)
        rewrite ^/_media/(.*) /lib/exe/fetch.php?media=\$1 last;
        rewrite ^/_detail/(.*) /lib/exe/detail.php?media=\$1 last;
        rewrite ^/_export/([^/]+)/(.*) /doku.php?do=export_\$1&id=\$2 last;
        rewrite ^/(.*) /doku.php?id=\$1&\$args last;
    }
    location ~ \\.php\$ {
        try_files \$uri \$uri/ /doku.php;
        include fastcgi_params;
        fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
        fastcgi_param REDIRECT_STATUS 200;
        # nginx forwards request headers anyway; explicit + if_not_empty so an anonymous
        # request gets no empty HTTP_AUTHORIZATION (DokuWiki warns on it, inc/auth.php:78).
        fastcgi_param HTTP_AUTHORIZATION \$http_authorization if_not_empty;
        fastcgi_pass unix:$PHP_FPM_DEFAULT_SOCK;
    }
}"
    if [ "$(cat "$vhost_path" 2>/dev/null)" != "$content" ]; then
        printf '%s\n' "$content" >"$vhost_path"; nginx_changed=1
    fi
    if [ "$(readlink "$vhost_link" 2>/dev/null)" != "$vhost_path" ]; then
        ln -sfn "$vhost_path" "$vhost_link"; nginx_changed=1
    fi
    if [ "$nginx_changed" = 1 ] || ! vhost_active "$domain"; then nginx_reload; fi
    wait_vhost "$domain" present

    # Admin password: the package's postinst leaves an admin with a password
    # nobody knows. Keep ours if it is still the one in users.auth.php (another
    # domain may be using it), otherwise write a fresh bcrypt hash (DokuWiki
    # verifies $2y$ hashes natively). The package's file is backed up once.
    local admin_password=""
    if [ -s "$DW_STATE/admin-password" ]; then
        admin_password=$(cat "$DW_STATE/admin-password")
        php_verify "$admin_password" "$(admin_hash)" || admin_password=""
    fi
    if [ -z "$admin_password" ]; then
        admin_password=$(rand_hex 12)
        [ -e "$DW_STATE/users.auth.php.orig" ] || cp -p "$USERS_AUTH" "$DW_STATE/users.auth.php.orig"
        local tmp
        tmp=$(mktemp "$USERS_AUTH.XXXXXX")
        {
            printf '# users.auth.php\n# <?php exit()?>\n# Don'"'"'t modify the lines above\n#\n'
            printf '# Written by baluchon tests/apps/dokuwiki-site.sh\n'
            printf 'admin:%s:DokuWiki Administrator:webmaster@localhost:admin,user\n' "$(php_hash "$admin_password")"
        } >"$tmp"
        chown www-data:root "$tmp"; chmod 0600 "$tmp"     # as the package ships it
        mv -f "$tmp" "$USERS_AUTH"
        (umask 077; printf '%s\n' "$admin_password" >"$DW_STATE/admin-password")
    fi

    # XML-RPC is off by default; allow it for the admin group only. local.php is
    # include()d, so OPcache may serve the old version for up to 2 s, or for good
    # if it was compiled in the same second as our write (mtimes are compared in
    # whole seconds): if it changed recently (by us or an interrupted run),
    # reload php-fpm for a fresh OPcache.
    if ! grep -qxF "$LOCAL_BEGIN" "$LOCAL_PHP"; then
        [ -z "$(tail -c1 "$LOCAL_PHP")" ] || echo >>"$LOCAL_PHP"
        printf '%s\n' "$LOCAL_BEGIN" "\$conf['remote'] = 1;" "\$conf['remoteuser'] = '@admin';" "$LOCAL_END" >>"$LOCAL_PHP"
    fi
    if [ $(( $(date +%s) - $(stat -c %Y "$LOCAL_PHP") )) -lt 4 ]; then fpm_reload ""; fi

    local base="http://$domain" rpc canary res png media_id media_path
    rpc="$base/lib/exe/xmlrpc.php"
    XR_CURL_ARGS=(-u "admin:$admin_password")
    canary="CANARY-$(rand_hex 8)"
    log "writing $page_id and a canary media file over XML-RPC"
    res=$(xmlrpc_call "$rpc" "$domain" wiki.putPage "$(xr_string "$page_id")" \
        "$(xr_string "$(printf '====== Canary ======\n\nTenant wiki %s: %s\n' "$domain" "$canary")")" \
        "<value><struct>$(xr_member sum "$(xr_string "baluchon test canary")")$(xr_member minor "$(xr_bool 0)")</struct></value>")
    [ "$res" = 1 ] || die "wiki.putPage returned '$res'"
    grep -qF "$canary" "$page_path" || die "$page_path does not contain $canary"

    png=$(mktemp --suffix=.png)
    tmp_files+=("$png")
    make_png "$png"
    media_id="tenant:canary-$(rand_hex 4).png"
    xmlrpc_call "$rpc" "$domain" wiki.putAttachment "$(xr_string "$media_id")" "$(xr_b64file "$png")" \
        "<value><struct>$(xr_member ow "$(xr_bool 1)")</struct></value>" >/dev/null
    media_path=$DW_DATA/media/${media_id//://}
    cmp -s "$png" "$media_path" || die "stored media $media_path differs from what was sent"

    echo "domain=$domain"
    echo "admin_user=admin"
    echo "admin_password=$admin_password"
    echo "canary=$canary"
    echo "page_id=$page_id"
    echo "page_path=$page_path"
    echo "page_url=$base/doku.php?id=$page_id"
    echo "media_id=$media_id"
    echo "media_path=$media_path"
    echo "media_url=$base/lib/exe/fetch.php?media=$media_id"
    echo "vhost_path=$vhost_path"
}

do_remove() {
    if [ -e "$vhost_link" ] || [ -L "$vhost_link" ] || [ -e "$vhost_path" ]; then
        rm -f "$vhost_link" "$vhost_path"
        if nginx_running; then nginx_reload; wait_vhost "$domain" absent; fi
    fi
    local others
    others=$(other_vhosts | tr '\n' ' ')
    if [ -n "$others" ]; then
        log "DokuWiki still served for: $others- keeping canary content and admin password"
        return 0
    fi
    # Canary page + its history/metadata, canary media (all runs); tenant/ dirs if empty.
    local d
    rm -f "$page_path" "$DW_DATA"/attic/tenant/canary.* "$DW_DATA"/meta/tenant/canary.* \
          "$DW_DATA"/media/tenant/canary-*.png "$DW_DATA"/media_attic/tenant/canary-* \
          "$DW_DATA"/media_meta/tenant/canary-*
    for d in pages attic meta media media_attic media_meta; do
        rmdir "$DW_DATA/$d/tenant" 2>/dev/null || true
    done
    if [ -e "$DW_STATE/users.auth.php.orig" ]; then
        cp -p "$DW_STATE/users.auth.php.orig" "$USERS_AUTH"
        rm -f "$DW_STATE/users.auth.php.orig"
    fi
    rm -f "$DW_STATE/admin-password"
    if grep -qxF "$LOCAL_BEGIN" "$LOCAL_PHP"; then
        sed -i "\\|^$LOCAL_BEGIN\$|,\\|^$LOCAL_END\$|d" "$LOCAL_PHP"
        fpm_reload ""   # drop the OPcache'd local.php (see create)
    fi
}

# On a failed create, undo it: a half-written vhost that fails `nginx -t` would
# break every later reload on the machine, i.e. every other test.
tmp_files=()
on_exit() {
    local rc=$?
    rm -f "${tmp_files[@]}"
    if [ "$rc" != 0 ] && [ "$action" = create ]; then
        log "create $domain failed (rc $rc): rolling back"
        ( set +e; do_remove ) >/dev/null || log "WARNING: rollback of $domain incomplete"
    fi
}
trap on_exit EXIT

case $action in
    create)
        "$HERE/start.sh" >/dev/null   # before take_lock: start.sh takes the same lock
        take_lock
        do_create ;;
    remove)
        take_lock
        do_remove; echo "domain=$domain" ;;
    *) usage ;;
esac
e=$(elapsed_s "$t0")
log "$action $domain done in ${e}s"
echo "elapsed_s=$e"
