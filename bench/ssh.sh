#!/usr/bin/env bash
# baluchon's SSH upload and download against OpenSSH, over loopback, on the same bundle
# bytes, in one run.
#
#   bench/ssh.sh [SIZE_MIB]     (default 1024; as root: it starts its own sshd on 127.0.0.1)
#
# Rows, each the median of 3 runs, alternated:
#   openssh_cat      ssh -p PORT root@127.0.0.1 'cat > FILE' < BUNDLE   (the issue's reference)
#   openssh_checked  the same plus what baluchon also does: sha256sum here and of the copy there
#   baluchon         crates/transport/examples/upload.rs: Connection::upload (stream into
#                    FILE.part, sha256 of both sides, rename), as `import --to` and `migrate` use
#   openssh_get      ssh -p PORT root@127.0.0.1 'cat BUNDLE' > FILE
#   openssh_get_checked  the same plus sha256sum there and of the copy here
#   baluchon_get     crates/transport/examples/download.rs: Download (sha256 there, then into
#                    a hidden file here, sha256 of it, rename), as `export --from` uses
# Then, to show what bounds libssh2 itself, crates/transport/examples/ssh_factors.rs sends the
# bundle raw (no hashing) per cipher and write size.
# The ratios are openssh_cat time / baluchon time, and openssh_get's / baluchon_get's:
# above 1, baluchon is faster. A measurement,
# not a test: it exits 0 whatever the ratio. See docs/benchmarks.md.
set -Eeuo pipefail
trap 'echo "bench: failed at line $LINENO: $BASH_COMMAND" >&2' ERR
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIZE_MIB=${1:-1024}
((EUID == 0)) || { echo "bench: run as root (it starts an sshd)" >&2; exit 1; }

work=$(mktemp -d /var/tmp/baluchon-ssh-bench.XXXXXX)
sshd_pid=
cleanup() { [[ -n $sshd_pid ]] && kill "$sshd_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --locked -q -p baluchon-cli --manifest-path "$REPO/Cargo.toml"
cargo build --release --locked -q -p baluchon-transport --example upload --example download --example ssh_factors --manifest-path "$REPO/Cargo.toml"
baluchon=$REPO/target/release/baluchon
upload=$REPO/target/release/examples/upload
download=$REPO/target/release/examples/download

# A real bundle: a tree of incompressible data, as media uploads are.
mkdir -p "$work/tree" "$work/remote" /run/sshd
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$work/tree/media.bin"
"$baluchon" keygen -o "$work/signing_key" >/dev/null
"$baluchon" --no-progress export --path "$work/tree" --tenant bench --sign-key "$work/signing_key" -o "$work/bundle.baluchon" >/dev/null
bytes=$(stat -c %s "$work/bundle.baluchon")

ssh-keygen -q -t ed25519 -N '' -f "$work/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/client_key"
cp "$work/client_key.pub" "$work/authorized_keys"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat > "$work/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey $work/host_key
PidFile none
AuthorizedKeysFile $work/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
CONF
/usr/sbin/sshd -D -e -f "$work/sshd_config" 2>"$work/sshd.log" &
sshd_pid=$!
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
echo "[127.0.0.1]:$port $(cut -d' ' -f1-2 "$work/host_key.pub")" > "$work/known_hosts"
ssh_opts=(-p "$port" -i "$work/client_key" -o UserKnownHostsFile="$work/known_hosts" -o StrictHostKeyChecking=yes -o BatchMode=yes)

run_openssh_cat() { ssh "${ssh_opts[@]}" root@127.0.0.1 "cat > $work/remote/cat.bin" < "$work/bundle.baluchon"; }
run_openssh_checked() {
    sha256sum < "$work/bundle.baluchon" >/dev/null
    ssh "${ssh_opts[@]}" root@127.0.0.1 "cat > $work/remote/checked.bin && sha256sum < $work/remote/checked.bin" < "$work/bundle.baluchon" >/dev/null
}
run_baluchon() {
    rm -f "$work/remote/baluchon.bin"
    "$upload" "$work/bundle.baluchon" "ssh://root@127.0.0.1:$port" "$work/remote/baluchon.bin" "$work/known_hosts" "$work/client_key" >/dev/null
}

run_openssh_get() { ssh "${ssh_opts[@]}" root@127.0.0.1 "cat $work/bundle.baluchon" > "$work/get-cat.bin"; }
run_openssh_get_checked() {
    ssh "${ssh_opts[@]}" root@127.0.0.1 "sha256sum < $work/bundle.baluchon" >/dev/null
    ssh "${ssh_opts[@]}" root@127.0.0.1 "cat $work/bundle.baluchon" > "$work/get-checked.bin"
    sha256sum < "$work/get-checked.bin" >/dev/null
}
run_baluchon_get() {
    rm -f "$work/get-baluchon.bin"
    "$download" "ssh://root@127.0.0.1:$port" "$work/bundle.baluchon" "$work/get-baluchon.bin" "$work/known_hosts" "$work/client_key" >/dev/null
}

rows=(openssh_cat openssh_checked baluchon openssh_get openssh_get_checked baluchon_get)
declare -A times
for run in 1 2 3; do
    for name in "${rows[@]}"; do
        start=$(date +%s.%N)
        "run_$name"
        end=$(date +%s.%N)
        times[$name]+="$(echo "$end - $start" | bc) "
    done
done
cmp "$work/bundle.baluchon" "$work/remote/baluchon.bin"
cmp "$work/bundle.baluchon" "$work/get-baluchon.bin"
median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | sed -n 2p; }
echo "bundle: $bytes bytes; $(nproc) cores; OpenSSH $(ssh -V 2>&1 | cut -d' ' -f1)"
printf '%-16s %8s %10s\n' row seconds MiB/s
for name in "${rows[@]}"; do
    m=$(median "${times[$name]}")
    printf '%-16s %8.2f %10.1f\n' "$name" "$m" "$(echo "$bytes / 1048576 / $m" | bc -l)"
done
ratio=$(echo "$(median "${times[openssh_cat]}") / $(median "${times[baluchon]}")" | bc -l)
ratio_checked=$(echo "$(median "${times[openssh_checked]}") / $(median "${times[baluchon]}")" | bc -l)
printf 'throughput ratio baluchon/openssh_cat: %.2fx (target >= 0.9x); vs openssh_checked: %.2fx\n' "$ratio" "$ratio_checked"
ratio=$(echo "$(median "${times[openssh_get]}") / $(median "${times[baluchon_get]}")" | bc -l)
ratio_checked=$(echo "$(median "${times[openssh_get_checked]}") / $(median "${times[baluchon_get]}")" | bc -l)
printf 'download ratio baluchon_get/openssh_get: %.2fx; vs openssh_get_checked: %.2fx\n' "$ratio" "$ratio_checked"

# What bounds libssh2 itself: the raw send, no hashing, per cipher and write size (one run each).
echo
echo "libssh2 alone, to cat > /dev/null (OpenSSH cat above: $(median "${times[openssh_cat]}") s):"
"$REPO/target/release/examples/ssh_factors" "$work/bundle.baluchon" "ssh://root@127.0.0.1:$port" "$work/known_hosts" "$work/client_key"
