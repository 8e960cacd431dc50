#!/usr/bin/env bash
# Compares builds of baluchon on the import benchmark, run after run, to tell a change from
# the noise of a shared machine: each round imports the bench bundle with every binary
# given, then extracts the stock archive, in that order; medians and minimums at the end.
#
#   bench/import-ab.sh WORKDIR RUNS BINARY...
#
# WORKDIR is a workdir kept by `bench/bench.sh --keep` (it holds out/bundle.baluchon,
# out/allowed_signers and out/stock.tar.zst). Imports go to a directory under /dev/shm.
set -euo pipefail

die() { echo "import-ab: $*" >&2; exit 2; }
(($# >= 3)) || die "usage: bench/import-ab.sh WORKDIR RUNS BINARY..."
out=$1/out
runs=$2
shift 2
for f in bundle.baluchon allowed_signers stock.tar.zst; do
    [[ -f $out/$f ]] || die "$out/$f is missing: run bench/bench.sh --keep --workdir $1 first"
done
[[ -x /usr/bin/time ]] || die "GNU time is missing (Debian package time)"
target=$(mktemp -d /dev/shm/baluchon-ab.XXXXXX)
trap 'rm -rf "$target"' EXIT

# One line per run: name, wall seconds, CPU seconds (user + system).
timed() {
    local name=$1
    shift
    /usr/bin/time -f "$name %e %U %S" "$@" 2>&1 >/dev/null | tail -n 1
}

for ((i = 1; i <= runs; i++)); do
    for binary in "$@"; do
        rm -rf "$target/x"
        timed "$binary" "$binary" --no-progress import --json "$out/bundle.baluchon" \
            --path "$target/x" --signer "$out/allowed_signers"
    done
    rm -rf "$target/x"
    mkdir "$target/x"
    timed stock sh -c 'zstd -dc -q "$1" | tar -xf - -C "$2"' sh "$out/stock.tar.zst" "$target/x"
done >"$target/times"

# Median and minimum of column $2 (wall) and median of column $3 + $4 (CPU), per name.
stat() { sort -n | awk '{ v[NR] = $1 } END { printf "median %.2f s, min %.2f s", v[int((NR + 1) / 2)], v[1] }'; }
for name in "$@" stock; do
    echo "$name"
    echo "  wall: $(awk -v n="$name" '$1 == n { print $2 }' "$target/times" | stat)"
    echo "  CPU (user + system): $(awk -v n="$name" '$1 == n { print $3 + $4 }' "$target/times" | stat)"
done
