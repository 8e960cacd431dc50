#!/usr/bin/env bash
# A WordPress tenant on the Debian 'wordpress' package, laid out like a real
# Debian host: DB + user in MariaDB, /etc/wordpress/config-DOMAIN.php (Debian's
# wp-config.php picks it by HTTP Host), an nginx vhost and a php-fpm pool per site,
# content in the shared /var/lib/wordpress/wp-content.
#
#   wordpress-site.sh create DOMAIN   fresh site (an existing one is wiped first),
#                                     installed + filled over HTTP
#   wordpress-site.sh remove DOMAIN   drop DB/user, uploads, config, vhost, pool
#
# stdout (create): key=value lines only, in this order:
#   domain db_name db_user db_password admin_user admin_password canary post_id
#   post_url upload_url upload_path config_path vhost_path pool_path fpm_socket elapsed_s
# stdout (remove): domain=..., elapsed_s=...
# Logs go to stderr. Both actions start the services (start.sh) if needed.
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
# shellcheck source=lib.sh
. "$HERE/lib.sh"

usage() { echo "usage: $0 create|remove DOMAIN" >&2; exit 2; }
[ $# -eq 2 ] || usage
action=$1
case $action in create|remove) ;; *) usage ;; esac
domain=${2,,}   # wp-config.php lowercases the Host before picking the file
require_root
check_domain "$domain"
t0=$(now_ns)

WP_ROOT=/usr/share/wordpress
WP_CONTENT=/var/lib/wordpress/wp-content
UPLOADS=$WP_CONTENT/uploads

config_path=/etc/wordpress/config-$domain.php
vhost_path=/etc/nginx/sites-available/$domain
vhost_link=/etc/nginx/sites-enabled/$domain

# One identifier for DB name, DB user and pool name: wp_ + domain with non-alnum
# as '_'. Capped at 32 chars (MySQL's user-name limit; MariaDB allows 80), and
# when that name is already another domain's (a-b.test vs a.b.test) a hash of the
# domain replaces the tail, so sites never share a DB.
pick_site() {
    local s=wp_${domain//[^a-z0-9]/_} other
    other=$(grep -lxF "define('DB_NAME', '$s');" /etc/wordpress/config-*.php 2>/dev/null | grep -vxF "$config_path" || true)
    if [ "${#s}" -gt 32 ] || [ -n "$other" ]; then
        s="${s:0:23}_$(printf '%s' "$domain" | sha1sum | cut -c1-8)"
    fi
    echo "$s"
}
# The site as it exists now: the name in our config file wins over recomputing.
current_site() {
    local s=""
    [ ! -f "$config_path" ] || s=$(sed -n "s/^define('DB_NAME', '\([a-z0-9_]*\)');\$/\1/p" "$config_path" | head -n1)
    if [ -n "$s" ]; then echo "$s"; else pick_site; fi
}
set_site() {
    [ -n "$1" ] || die "empty site name"
    site=$1
    db_name=$site
    db_user=$site
    pool_path=/etc/php/8.2/fpm/pool.d/$site.conf
    fpm_socket=/run/php/php8.2-fpm-$site.sock
}

sql() { mysql --batch --skip-column-names "$@"; }
# information_schema, not SHOW ... LIKE: '_' is a LIKE wildcard.
db_exists() { [ -n "$(sql -e "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='$db_name'")" ]; }

# Delete this site's uploads from the shared wp-content (other sites' files stay):
# the attachment paths come from its own postmeta, incl. generated sub-sizes.
delete_uploads() {
    db_exists || return 0
    # a create that failed before install.php leaves a DB without tables
    [ -n "$(sql -e "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA='$db_name' AND TABLE_NAME='wp_postmeta'")" ] || return 0
    local rel
    # shellcheck disable=SC2016
    sql --raw "$db_name" -e "SELECT meta_key, meta_value FROM wp_postmeta
        WHERE meta_key IN ('_wp_attached_file','_wp_attachment_metadata')" 2>/dev/null \
    | php -r '
        while (($l = fgets(STDIN)) !== false) {
            [$k, $v] = explode("\t", rtrim($l, "\n"), 2) + [1 => ""];
            if ($k === "_wp_attached_file") { echo $v, "\n"; continue; }
            $m = @unserialize($v, ["allowed_classes" => false]);
            if (!is_array($m) || empty($m["file"])) continue;
            $dir = dirname($m["file"]);
            foreach (($m["sizes"] ?? []) as $s) if (!empty($s["file"])) echo "$dir/", $s["file"], "\n";
            if (!empty($m["original_image"])) echo "$dir/", $m["original_image"], "\n";
        }' \
    | while IFS= read -r rel; do
        case $rel in ''|/*|*..*) continue ;; esac      # never leave the uploads dir
        rm -f -- "${UPLOADS:?}/$rel"
    done
}

drop_db() {
    delete_uploads
    sql -e "DROP DATABASE IF EXISTS \`$db_name\`; DROP USER IF EXISTS '$db_user'@'localhost';"
}

# write_file PATH MODE OWNER CONTENT: returns 0 if the content changed.
write_file() {
    local path=$1 mode=$2 owner=$3 content=$4 tmp
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        chmod "$mode" "$path"; chown "$owner" "$path"; return 1
    fi
    tmp=$(mktemp "$path.XXXXXX")
    printf '%s\n' "$content" >"$tmp"
    chmod "$mode" "$tmp"; chown "$owner" "$tmp"
    mv -f "$tmp" "$path"
}

do_remove() {
    local fpm_changed=0 nginx_changed=0
    set_site "$(current_site)"
    drop_db
    rm -f "$config_path"
    if [ -e "$vhost_link" ] || [ -L "$vhost_link" ] || [ -e "$vhost_path" ]; then
        rm -f "$vhost_link" "$vhost_path"; nginx_changed=1
    fi
    if [ -e "$pool_path" ]; then rm -f "$pool_path"; fpm_changed=1; fi
    if [ "$fpm_changed" = 1 ]; then fpm_reload ""; fi
    if [ "$nginx_changed" = 1 ] && nginx_running; then nginx_reload; wait_vhost "$domain" absent; fi
}

do_create() {
    local db_password admin_password canary salts k
    db_password=$(rand_hex 16)
    admin_password=$(rand_hex 12)
    canary="CANARY-$(rand_hex 8)"

    # A re-run starts from scratch: new DB, passwords and content. (The old pool
    # is dropped too if the site name changes; normally it is rewritten in place.)
    set_site "$(current_site)"
    drop_db
    local old_pool=$pool_path
    rm -f "$config_path"
    set_site "$(pick_site)"
    [ "$old_pool" = "$pool_path" ] || rm -f "$old_pool"
    log "creating database $db_name"
    sql -e "CREATE DATABASE \`$db_name\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
            CREATE USER '$db_user'@'localhost' IDENTIFIED BY '$db_password';
            GRANT ALL PRIVILEGES ON \`$db_name\`.* TO '$db_user'@'localhost';"

    local fpm_changed=0 nginx_changed=0 config_changed=0
    salts=
    for k in AUTH_KEY SECURE_AUTH_KEY LOGGED_IN_KEY NONCE_KEY AUTH_SALT SECURE_AUTH_SALT LOGGED_IN_SALT NONCE_SALT; do
        salts+="define('$k', '$(rand_hex 32)');"$'\n'
    done
    # DB_HOST 'localhost' = unix socket (127.0.0.1 would be TCP). Cron and outgoing
    # HTTP are off: tests must not depend on network or on timing of wp-cron.
    # Readable by www-data only (holds the DB password), like the Debian README says.
    write_file "$config_path" 0640 root:www-data "<?php
// Written by baluchon tests/apps/wordpress-site.sh
define('DB_NAME', '$db_name');
define('DB_USER', '$db_user');
define('DB_PASSWORD', '$db_password');
define('DB_HOST', 'localhost');
define('DB_CHARSET', 'utf8mb4');
define('DB_COLLATE', '');
define('WP_CONTENT_DIR', '$WP_CONTENT');
define('DISABLE_WP_CRON', true);
define('WP_HTTP_BLOCK_EXTERNAL', true);
define('AUTOMATIC_UPDATER_DISABLED', true);
$salts\$table_prefix = 'wp_';" && config_changed=1

    # Per-site pool: its own socket and open_basedir (what a host would do).
    # ondemand: no idle workers for the many sites a test run may create.
    # sendmail_path=/bin/true: the install mails the admin; never send mail from CI.
    write_file "$pool_path" 0644 root:root "; Written by baluchon tests/apps/wordpress-site.sh for $domain
[$site]
user = www-data
group = www-data
listen = $fpm_socket
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
pm = ondemand
pm.max_children = 4
pm.process_idle_timeout = 30s
php_admin_value[open_basedir] = $WP_ROOT/:/usr/share/php/:/usr/share/javascript/:/var/lib/wordpress/:/etc/wordpress/:/tmp/:/etc/ssl/certs/:/usr/share/ca-certificates/
php_admin_value[upload_tmp_dir] = /tmp
php_admin_value[upload_max_filesize] = 32M
php_admin_value[post_max_size] = 32M
php_admin_value[sendmail_path] = /bin/true" && fpm_changed=1

    # Debian puts wp-content outside the code tree: serve it with an alias (the
    # README's "Alias /wp-content /var/lib/wordpress/wp-content"), never run PHP there.
    write_file "$vhost_path" 0644 root:root "# Written by baluchon tests/apps/wordpress-site.sh
server {
    listen 127.0.0.1:80;
    server_name $domain;
    root $WP_ROOT;
    index index.php;
    client_max_body_size 32m;

    location ^~ /wp-content/ {
        alias $WP_CONTENT/;
        location ~ \\.php\$ { deny all; }
    }
    location / {
        try_files \$uri \$uri/ /index.php?\$args;
    }
    location ~ \\.php\$ {
        include snippets/fastcgi-php.conf;
        fastcgi_pass unix:$fpm_socket;
    }
    location ~ /\\.ht { deny all; }
}" && nginx_changed=1
    if [ "$(readlink "$vhost_link" 2>/dev/null)" != "$vhost_path" ]; then
        ln -sfn "$vhost_path" "$vhost_link"; nginx_changed=1
    fi

    # php-fpm must reload when the pool changed, and ALSO when only the config
    # changed: OPcache (on in FPM) revalidates an included file at most every 2 s
    # (opcache.revalidate_freq) and by mtime in whole seconds, so a config rewritten
    # right after a request would keep running with the OLD DB password. USR2 gives
    # a fresh OPcache; start.sh's process_control_timeout keeps it graceful for
    # requests other tests have in flight.
    if [ "$fpm_changed" = 1 ] || [ "$config_changed" = 1 ] || [ ! -S "$fpm_socket" ]; then
        fpm_reload "$fpm_socket"
    fi
    if [ "$nginx_changed" = 1 ] || ! vhost_active "$domain"; then nginx_reload; fi
    wait_vhost "$domain" present

    local base="http://$domain" resp headers attempt
    log "installing WordPress for $domain"
    headers=$(mktemp)
    tmp_files+=("$headers")
    # An old nginx worker (another test's reload, still in progress) may answer with the
    # catch-all even after wait_vhost saw the vhost: the request never reached PHP, so it
    # is sent again.
    for attempt in 1 2 3 4 5; do
        resp=$(curl -sS --max-time 120 --resolve "$domain:80:127.0.0.1" -D "$headers" \
            --data-urlencode "weblog_title=Tenant Blog $domain" \
            --data-urlencode "user_name=admin" \
            --data-urlencode "admin_password=$admin_password" \
            --data-urlencode "admin_password2=$admin_password" \
            --data-urlencode "pw_weak=1" \
            --data-urlencode "admin_email=admin@$domain" \
            --data-urlencode "blog_public=0" \
            "$base/wp-admin/install.php?step=2") || die "install.php request failed"
        grep -qi '^x-baluchon-catchall:' "$headers" || break
        log "install.php reached the catch-all (attempt $attempt): waiting for $domain again"
        sleep 0.2
        wait_vhost "$domain" present
    done
    if ! grep -q 'Success!' <<<"$resp"; then
        # shellcheck disable=SC2001
        log "install.php said: $(sed 's/<[^>]*>//g' <<<"$resp" | tr -s ' \n' ' ' | head -c 800)"
        die "WordPress install failed"
    fi

    log "creating canary post and upload over XML-RPC"
    local post_id png upname up upload_id upload_url rel upload_path
    post_id=$(xmlrpc_call "$base/xmlrpc.php" "$domain" wp.newPost \
        "$(xr_int 1)" "$(xr_string admin)" "$(xr_string "$admin_password")" \
        "<value><struct>$(xr_member post_type "$(xr_string post)")$(xr_member post_status "$(xr_string publish)")$(xr_member post_title "$(xr_string "Canary post")")$(xr_member post_content "$(xr_string "<p>Canary: $canary</p>")")</struct></value>")
    [[ $post_id =~ ^[0-9]+$ ]] || die "wp.newPost returned '$post_id'"

    png=$(mktemp --suffix=.png)
    tmp_files+=("$png")
    make_png "$png"
    upname="canary-$(rand_hex 4).png"
    up=$(xmlrpc_call "$base/xmlrpc.php" "$domain" wp.uploadFile \
        "$(xr_int 1)" "$(xr_string admin)" "$(xr_string "$admin_password")" \
        "<value><struct>$(xr_member name "$(xr_string "$upname")")$(xr_member type "$(xr_string image/png)")$(xr_member bits "$(xr_b64file "$png")")$(xr_member overwrite "$(xr_bool 0)")</struct></value>")
    upload_id=$(sed -n 's/^id=//p' <<<"$up" | head -n1)
    upload_url=$(sed -n 's/^url=//p' <<<"$up" | head -n1)
    if ! [[ $upload_id =~ ^[0-9]+$ ]] || [ -z "$upload_url" ]; then die "wp.uploadFile returned: $up"; fi
    rel=$(sql "$db_name" -e "SELECT meta_value FROM wp_postmeta WHERE post_id=$upload_id AND meta_key='_wp_attached_file'")
    upload_path=$UPLOADS/$rel
    cmp -s "$png" "$upload_path" || die "uploaded file $upload_path differs from what was sent"

    echo "domain=$domain"
    echo "db_name=$db_name"
    echo "db_user=$db_user"
    echo "db_password=$db_password"
    echo "admin_user=admin"
    echo "admin_password=$admin_password"
    echo "canary=$canary"
    echo "post_id=$post_id"
    echo "post_url=$base/?p=$post_id"
    echo "upload_url=$upload_url"
    echo "upload_path=$upload_path"
    echo "config_path=$config_path"
    echo "vhost_path=$vhost_path"
    echo "pool_path=$pool_path"
    echo "fpm_socket=$fpm_socket"
}

"$HERE/start.sh" >/dev/null   # before take_lock: start.sh takes the same lock
take_lock
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
    create) do_create ;;
    remove) do_remove; echo "domain=$domain" ;;
    *) usage ;;
esac
e=$(elapsed_s "$t0")
log "$action $domain done in ${e}s"
echo "elapsed_s=$e"
