#!/usr/bin/env bash
# baluchon against stock tools: speed, peak memory and size. See docs/benchmarks.md.
#
#   bench/bench.sh                 ~1 GiB tree (30 000 small files, 300 MiB SQL, 200 MiB random)
#   bench/bench.sh --scale 10      the same shape, 10x larger (memory must not grow)
#
# Options:
#   --scale F      size of the tree relative to the reference one (default 1; 0.02 for a smoke run)
#   --workdir DIR  where the tree and bundles go (default: a new directory under /var/tmp);
#                  it must be missing, empty, or a workdir kept by an earlier run
#   --keep         keep the workdir (a later run with --workdir DIR reuses the tree)
#   --runs N       timed runs per command, the median is reported (default 3)
#   --skip A,B     comparisons to leave out (names: export_durable verify_payload import)
#
# Environment: BALUCHON=/path/to/baluchon uses that binary instead of building
# target/release/baluchon with cargo.
#
# It is a measurement, not a test: it exits 0 when a target is missed (the summary says FAIL),
# and non-zero only when a command fails or its output is wrong (then the figures mean nothing).

# Functions are called by name (setup_NAME, prep_NAME_b, …) and command lines are single-quoted
# on purpose (the inner `bash -c` expands them):
# shellcheck disable=SC2317,SC2016
set -Eeuo pipefail
trap 'echo "bench: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE=1
WORKDIR=
KEEP=0
RUNS=3
SKIP=,
SEED=20240101
RSS_TARGET_MIB=64
SIZE_TARGET=1.05

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}"; }
die() { echo "bench: $*" >&2; exit 1; }

while (($#)); do
    case "$1" in
        --scale) SCALE=${2:?--scale needs a value}; shift 2 ;;
        --workdir) WORKDIR=${2:?--workdir needs a value}; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --runs) RUNS=${2:?--runs needs a value}; shift 2 ;;
        --skip) SKIP=",${2:?--skip needs a value},"; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
if ! [[ $SCALE =~ ^([0-9]+\.?[0-9]*|\.[0-9]+)$ ]] || ! awk -v s="$SCALE" 'BEGIN { exit !(s > 0) }'; then
    die "--scale must be a positive number, got '$SCALE'"
fi
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive integer, got '$RUNS'"

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
if ! dpkg-query -W -f='${Status}' time 2>/dev/null | grep -q "install ok installed" || [[ ! -x /usr/bin/time ]]; then
    ((EUID == 0)) || die "/usr/bin/time is missing: apt-get install time"
    echo "bench: installing the Debian package 'time' (for /usr/bin/time)"
    apt-get update -qq && apt-get install -y -qq time >/dev/null
fi
for tool in tar zstd sha256sum python3 awk; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
if [[ -n ${BALUCHON:-} ]]; then
    [[ -x $BALUCHON ]] || die "BALUCHON=$BALUCHON is not an executable"
else
    command -v cargo >/dev/null || die "cargo not found (or set BALUCHON=/path/to/baluchon)"
    echo "bench: cargo build --release -p baluchon-cli"
    (cd "$REPO" && cargo build --release --locked --quiet -p baluchon-cli) ||
        die "the build failed (or set BALUCHON=/path/to/baluchon)"
    BALUCHON=$REPO/target/release/baluchon
fi
BALUCHON=$(realpath "$BALUCHON")

# ---------------------------------------------------------------------------------------------
# Workdir: tree/ (the generated tree), out/ (keys, bundles, logs), .baluchon-bench (a stamp)
# Only what this script made is ever removed.
# ---------------------------------------------------------------------------------------------
CREATED_WORKDIR=0
if [[ -z $WORKDIR ]]; then
    mkdir -p /var/tmp
    WORKDIR=$(mktemp -d /var/tmp/baluchon-bench.XXXXXX)
    CREATED_WORKDIR=1
elif [[ ! -e $WORKDIR ]]; then
    mkdir -p "$WORKDIR"
    CREATED_WORKDIR=1
elif [[ ! -e $WORKDIR/.baluchon-bench && -n $(ls -A "$WORKDIR") ]]; then
    die "$WORKDIR is not empty and was not made by bench.sh: choose another --workdir"
fi
WORKDIR=$(cd "$WORKDIR" && pwd)
TREE=$WORKDIR/tree
OUT=$WORKDIR/out
STAMP=$WORKDIR/.baluchon-bench

cleanup() {
    if ((KEEP)); then
        echo "bench: kept $WORKDIR (reuse it with --workdir $WORKDIR)"
        return
    fi
    rm -rf -- "$TREE" "$OUT" "$STAMP"
    if ((CREATED_WORKDIR)); then rmdir -- "$WORKDIR" 2>/dev/null || true; fi
}
trap cleanup EXIT

cd "$WORKDIR"
rm -rf -- "$OUT"
mkdir -p "$OUT"
# The exporter records a per-tenant sequence number: keep it out of the user's state.
export XDG_STATE_HOME=$OUT/state

# ---------------------------------------------------------------------------------------------
# The tree (regenerated unless a kept one has the same scale, seed and generator)
# ---------------------------------------------------------------------------------------------
want_stamp="scale=$SCALE seed=$SEED gentree=$(sha256sum <"$REPO/bench/gentree.py" | cut -c1-16)"
if [[ -d $TREE && -f $STAMP && $(cat "$STAMP") == "$want_stamp" ]]; then
    echo "bench: reusing the tree in $TREE ($want_stamp)"
else
    rm -rf -- "$TREE"
    echo "$want_stamp (incomplete)" >"$STAMP"
    echo "bench: generating the tree ($want_stamp) in $TREE"
    gen_start=$(date +%s.%N)
    python3 "$REPO/bench/gentree.py" --out "$TREE" --scale "$SCALE" --seed "$SEED"
    echo "$want_stamp" >"$STAMP"
    echo "bench: generated in $(awk -v a="$gen_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
fi
N_FILES=$(find tree -type f | wc -l)
N_DIRS=$(find tree -mindepth 1 -type d | wc -l)
N_ENTRIES=$(find tree -mindepth 1 | wc -l)
TREE_BYTES=$(find tree -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }')
part_bytes() { find "tree/$1" -type f -printf '%s\n' | awk '{ s += $1 } END { printf "%.0f", s }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
echo "bench: tree: $N_FILES files and $N_DIRS directories, $TREE_BYTES bytes ($(mib "$TREE_BYTES") MiB):"
echo "         www/ $(find tree/www -type f | wc -l) small text files, $(mib "$(part_bytes www)") MiB;" \
    "db/ $(mib "$(part_bytes db)") MiB of SQL; uploads/ $(mib "$(part_bytes uploads)") MiB of random bytes"

# ---------------------------------------------------------------------------------------------
# Machine
# ---------------------------------------------------------------------------------------------
echo "bench: machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')," \
    "$(awk '/^MemTotal/ { printf "%.1f GiB RAM", $2 / 1048576 }' /proc/meminfo), kernel $(uname -r)"
echo "bench: tools: $("$BALUCHON" --version); $(zstd --version | head -1); $(tar --version | head -1)"

# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------
# measure KEY PREP CMD
#   RUNS times: run the function PREP (not timed), sync, then CMD under /usr/bin/time as
#   `bash -c CMD` in the workdir, with KEY and RUN in its environment. Sets WALL[KEY] (median
#   wall seconds), RSS[KEY] (max RSS in KiB, the largest over the runs; for a pipeline, the
#   largest over its processes, see STAGE_RSS), and for CMDs that time their own stages with
#   $(stage NAME), STAGE_RSS[KEY] / STAGE_NAME[KEY] (the biggest stage's max RSS).
declare -A WALL=() WALLS=() RSS=() STAGE_RSS=() STAGE_NAME=()
export OUT TREE BALUCHON

# stage NAME: prefix for one process of a pipeline, recording its own max RSS.
stage() { printf '/usr/bin/time -f %%M -o "$OUT/stage.$KEY.$RUN.%s"' "$1"; }

# One timed run of KEY: its wall time is added to WALLS[KEY], its peak RSS to RSS[KEY].
run_once() {
    local key=$1 prep=$2 cmd=$3 run=$4 wall rss f name
    "$prep"
    sync
    if ! KEY=$key RUN=$run /usr/bin/time -f '%e %M' -o "$OUT/time.$key.$run" \
        bash -c "$cmd" >"$OUT/log.$key.$run" 2>&1; then
        echo "bench: FAILED ($key, run $run): $cmd" >&2
        tail -n 20 "$OUT/log.$key.$run" "$OUT/time.$key.$run" >&2 || true
        exit 1
    fi
    read -r wall rss <"$OUT/time.$key.$run"
    WALLS[$key]="${WALLS[$key]:-} $wall"
    ((rss > ${RSS[$key]:-0})) && RSS[$key]=$rss
    for f in "$OUT/stage.$key.$run".*; do
        [[ -e $f ]] || continue
        rss=$(tail -n 1 "$f")
        name=${f##*.}
        if ((rss > ${STAGE_RSS[$key]:-0})); then
            STAGE_RSS[$key]=$rss
            STAGE_NAME[$key]=$name
        fi
    done
    printf 'bench:   %-16s run %d: %6.2f s, max RSS %6.1f MiB\n' "$key" "$run" "$wall" \
        "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')"
}

# The median of KEY's runs.
median() {
    printf '%s\n' ${WALLS[$1]} | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'
}

# ---------------------------------------------------------------------------------------------
# Comparisons. Each NAME in COMPARISONS has:
#   TITLE[NAME]             one line for the report
#   TARGET[NAME]            speed ratio to reach, stock seconds / baluchon seconds ("" = no target)
#   B_CMD[NAME], S_CMD[NAME]  the baluchon and stock command lines (run by `bash -c` in the
#                           workdir; the stock one times its stages with $(stage NAME))
#   B_SAME[NAME]            optional: reuse the baluchon timing of that other comparison
#   setup_NAME              function run once before (not timed): make the inputs
#   prep_NAME_b, prep_NAME_s  functions run before each timed run (not timed): reset the outputs
#   check_NAME              function run once after (not timed): check the outputs are right
# Adding one (e.g. import) is defining these and appending NAME to COMPARISONS.
# ---------------------------------------------------------------------------------------------
COMPARISONS=()
for name in export export_durable verify verify_payload import; do
    [[ $SKIP == *",$name,"* ]] || COMPARISONS+=("$name")
done
declare -A TITLE=() TARGET=() B_CMD=() S_CMD=() B_SAME=()

# export: the tree into a signed bundle, vs tar | zstd -3 -T0 | sha256sum.
TITLE[export]="export"
TARGET[export]=1.25
B_CMD[export]='exec "$BALUCHON" --no-progress export --json --path "$TREE" --tenant bench --sign-key "$OUT/key" -o "$OUT/bundle.baluchon"'
S_CMD[export]="set -o pipefail; $(stage tar) tar -cf - tree | $(stage zstd) zstd -3 -T0 -q | $(stage sha256sum) sha256sum"
setup_export() {
    "$BALUCHON" --no-progress keygen -o "$OUT/key" --principal bench@localhost >"$OUT/keygen.log" 2>&1 ||
        { cat "$OUT/keygen.log" >&2; die "baluchon keygen failed"; }
    tail -n 1 "$OUT/keygen.log" >"$OUT/allowed_signers"
}
prep_export_b() { rm -f "$OUT/bundle.baluchon"; }
prep_export_s() { :; }
check_export() {
    # The last run's report: every entry of the tree is in the bundle, nothing skipped.
    python3 - "$OUT/log.export_b.$RUNS" "$N_ENTRIES" "$TREE_BYTES" <<'EOF'
import json, sys
text = open(sys.argv[1]).read()
report = json.loads(text[text.index("{"):text.rindex("}") + 1])
entries, content = int(sys.argv[2]), int(sys.argv[3])
problems = []
if report["entries"] != entries:
    problems.append(f"{report['entries']} entries in the bundle, {entries} in the tree")
if report["content_bytes"] != content:
    problems.append(f"{report['content_bytes']} content bytes in the bundle, {content} in the tree")
if report["skipped_count"] != 0:
    problems.append(f"{report['skipped_count']} entries skipped")
if problems:
    sys.exit("bench: export dropped or changed something: " + "; ".join(problems))
EOF
}

# export_durable (information, no target): the same, but the stock side also writes its archive
# to a file and fsyncs it, as baluchon does with its bundle (same output, same durability).
TITLE[export_durable]="export (stock also writes + fsyncs)"
TARGET[export_durable]=""
B_SAME[export_durable]="export"
S_CMD[export_durable]="set -o pipefail; $(stage tar) tar -cf - tree | $(stage zstd) zstd -3 -T0 -q | $(stage tee) tee \"\$OUT/stock-out.tar.zst\" | $(stage sha256sum) sha256sum && sync \"\$OUT/stock-out.tar.zst\""
setup_export_durable() { :; }
prep_export_durable_s() { rm -f "$OUT/stock-out.tar.zst"; }
check_export_durable() { rm -f "$OUT/stock-out.tar.zst"; }

# verify: the bundle checked completely, vs decompressing and hashing the stock archive.
TITLE[verify]="verify"
TARGET[verify]=1.0
B_CMD[verify]='exec "$BALUCHON" --no-progress verify --json "$OUT/bundle.baluchon" --signer "$OUT/allowed_signers"'
S_CMD[verify]="set -o pipefail; $(stage zstd) zstd -dc -q \"\$OUT/stock.tar.zst\" | $(stage sha256sum) sha256sum"
setup_verify() { [[ -f $OUT/bundle.baluchon && -f $OUT/stock.tar.zst ]] || die "verify needs the export and the sizes step first"; }
prep_verify_b() { :; }
prep_verify_s() { :; }
check_verify() {
    grep -q '"verified": true' "$OUT/log.verify_b.$RUNS" || die "verify did not report verified: true"
    grep -q "\"entries\": $N_ENTRIES," "$OUT/log.verify_b.$RUNS" || die "verify did not report $N_ENTRIES entries"
}

# verify_payload (information, no target): the same stock command on the bundle's own
# payload, to tell zstd frame layout apart from baluchon's own verification work.
TITLE[verify_payload]="verify (stock cmd on baluchon's payload)"
TARGET[verify_payload]=""
B_SAME[verify_payload]="verify"
S_CMD[verify_payload]="set -o pipefail; $(stage zstd) zstd -dc -q \"\$OUT/payload.tar.zst\" | $(stage sha256sum) sha256sum"
setup_verify_payload() { tar -xOf "$OUT/bundle.baluchon" data/files.tar.zst >"$OUT/payload.tar.zst"; }
prep_verify_payload_s() { :; }
check_verify_payload() { :; }

# import: the bundle verified and installed into a new directory, vs decompressing the stock
# archive into a new directory with tar. baluchon also checks the signature and every hash,
# and applies owners, modes and nanosecond times. Both write into a tmpfs: on a disk, the
# writeback of the previous run's gigabyte decides the time (it did: 5, 10, then 18 s for
# both sides), not either program. On a tmpfs baluchon's syncfs before the switch is free,
# so this compares the work, not the durability.
TITLE[import]="import (into tmpfs)"
TARGET[import]=1.2
B_CMD[import]='exec "$BALUCHON" --no-progress import --json "$OUT/bundle.baluchon" --path "$SHM/imported" --signer "$OUT/allowed_signers"'
S_CMD[import]="set -o pipefail; mkdir \"\$SHM/stock-imported\" && $(stage zstd) zstd -dc -q \"\$OUT/stock.tar.zst\" | $(stage tar) tar -xf - -C \"\$SHM/stock-imported\""
setup_import() {
    [[ -f $OUT/bundle.baluchon && -f $OUT/stock.tar.zst ]] || die "import needs the export and the sizes step first"
    SHM=$(mktemp -d /dev/shm/baluchon-bench.XXXXXX)
    export SHM
}
prep_import_b() { rm -rf "$SHM/imported"; }
prep_import_s() { rm -rf "$SHM/stock-imported"; }
check_import() {
    local got
    got=$(find "$SHM/imported" -mindepth 1 | wc -l)
    [[ $got == "$N_ENTRIES" ]] || die "import installed $got entries, the tree has $N_ENTRIES"
    cmp -s "$TREE/db/dump.sql" "$SHM/imported/db/dump.sql" || die "imported db/dump.sql differs from the tree's"
    rm -rf "$SHM"
}

# ---------------------------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------------------------
echo "bench: warm-up read of the tree"
# Through a pipe: GNU tar skips reading file contents when it writes to /dev/null itself.
TAR_BYTES=$(tar -cf - tree | wc -c)

# Sizes at equal work: the stock archive of the same tree (also the stock verify input).
sizes() {
    tar -cf - tree | zstd -3 -T0 -q >"$OUT/stock.tar.zst"
    STOCK_BYTES=$(stat -c %s "$OUT/stock.tar.zst")
    BUNDLE_BYTES=$(stat -c %s "$OUT/bundle.baluchon")
    PAYLOAD_BYTES=$(tar -tvf "$OUT/bundle.baluchon" | awk '$NF == "data/files.tar.zst" { print $3 }')
    [[ -n $PAYLOAD_BYTES ]] || die "no data/files.tar.zst in the bundle"
}

# baluchon and stock runs alternate, so that a slow spell of the machine (another tenant,
# writeback) weighs on both sides alike rather than on whichever ran then.
for name in "${COMPARISONS[@]}"; do
    echo "bench: ${TITLE[$name]}"
    "setup_$name"
    for ((run = 1; run <= RUNS; run++)); do
        if [[ -z ${B_SAME[$name]:-} ]]; then
            run_once "${name}_b" "prep_${name}_b" "${B_CMD[$name]}" "$run"
        fi
        run_once "${name}_s" "prep_${name}_s" "${S_CMD[$name]}" "$run"
    done
    [[ -n ${B_SAME[$name]:-} ]] || WALL[${name}_b]=$(median "${name}_b")
    WALL[${name}_s]=$(median "${name}_s")
    "check_$name"
    if [[ $name == export ]]; then sizes; fi
done

# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "inf" }'; }
ge() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }
verdict() { if "$@"; then echo PASS; else echo FAIL; fi; }
FAILS=0
line() { printf '%s\n' "$*"; [[ $* != *FAIL* ]] || FAILS=$((FAILS + 1)); }

echo
echo "=================================================================================================="
echo "baluchon benchmark, scale $SCALE: $N_FILES files, $N_DIRS directories, $(mib "$TREE_BYTES") MiB" \
    "($(mib "$TAR_BYTES") MiB as tar); median of $RUNS runs"
echo "=================================================================================================="
printf '%-42s %10s %10s %11s %9s  %s\n' "speed (stock s / baluchon s)" "baluchon s" "stock s" "ratio" "target" "result"
for name in "${COMPARISONS[@]}"; do
    bkey=${B_SAME[$name]:-$name}_b
    b=${WALL[$bkey]} s=${WALL[${name}_s]} r=$(ratio "${WALL[${name}_s]}" "${WALL[$bkey]}")
    if [[ -n ${TARGET[$name]} ]]; then
        line "$(printf '%-42s %10.2f %10.2f %10.2fx %8s  %s' "${TITLE[$name]}" "$b" "$s" "$r" \
            ">=${TARGET[$name]}x" "$(verdict ge "$r" "${TARGET[$name]}")")"
    else
        line "$(printf '%-42s %10.2f %10.2f %10.2fx %8s  %s' "${TITLE[$name]}" "$b" "$s" "$r" "-" "(info)")"
    fi
done
echo
printf '%-42s %10s %10s %11s %9s  %s\n' "peak RSS (max over runs)" "baluchon" "stock" "" "target" "result"
for name in "${COMPARISONS[@]}"; do
    [[ -n ${TARGET[$name]} ]] || continue
    b=$(awk -v k="${RSS[${name}_b]}" 'BEGIN { printf "%.1f", k / 1024 }')
    s=$(awk -v k="${STAGE_RSS[${name}_s]:-${RSS[${name}_s]}}" 'BEGIN { printf "%.1f", k / 1024 }')
    line "$(printf '%-42s %6s MiB %6s MiB %11s %8s  %s' "${TITLE[$name]}" "$b" "$s" "(${STAGE_NAME[${name}_s]:-all})" \
        "<=${RSS_TARGET_MIB}" "$(verdict ge "$RSS_TARGET_MIB" "$b")")"
done
echo "  (the target also wants baluchon's RSS not to grow with the tree: compare with a --scale 10 run)"
echo
printf '%-42s %21s %11s %9s  %s\n' "size (vs tar -cf - | zstd -3 -T0)" "bytes" "ratio" "target" "result"
printf '%-42s %21s %10.3fx %9s\n' "stock tar | zstd -3 -T0" "$STOCK_BYTES" 1 ""
line "$(printf '%-42s %21s %10.3fx %9s  %s' "baluchon bundle, whole file" "$BUNDLE_BYTES" \
    "$(ratio "$BUNDLE_BYTES" "$STOCK_BYTES")" "<=$SIZE_TARGET" "$(verdict ge "$SIZE_TARGET" "$(ratio "$BUNDLE_BYTES" "$STOCK_BYTES")")")"
line "$(printf '%-42s %21s %10.3fx %9s  %s' "baluchon data/files.tar.zst only" "$PAYLOAD_BYTES" \
    "$(ratio "$PAYLOAD_BYTES" "$STOCK_BYTES")" "<=$SIZE_TARGET" "$(verdict ge "$SIZE_TARGET" "$(ratio "$PAYLOAD_BYTES" "$STOCK_BYTES")")")"
echo "=================================================================================================="
if ((FAILS)); then
    echo "bench: $FAILS target(s) missed: see the FAIL lines above"
else
    echo "bench: every target met"
fi
exit 0
