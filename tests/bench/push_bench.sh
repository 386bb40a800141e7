#!/usr/bin/env bash
# Benchmark of `envd push` to a builder on loopback (issue 5), in one run on a copy of a real
# Python prefix: the first push (cold: empty stat cache, empty builder) broken into snapshot /
# upload / build; a push with no change (target <= 0.5 s); a push after adding one ~100 KB pip
# package (target <= 1.0 s end to end). Times are wall clock of the whole `envd push` process. The
# cold upload is set against reading and hashing the prefix's files once (target: within ~2x).
# Usage: tests/bench/push_bench.sh [PREFIX] (default: $(pyenv root)/versions/3.11.7, copied).
# ENVD=path/to/envd picks the binary (default ./build/envd/cli/envd).
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
envd=$(realpath "${ENVD:-./build/envd/cli/envd}")
src_prefix=${1:-$( (pyenv root 2>/dev/null || echo /root/.pyenv) | head -1)/versions/3.11.7}
[ -x "$envd" ] || { echo "build envd first (bash packaging/build.sh)" >&2; exit 1; }
work=$(mktemp -d /tmp/envd-push-bench.XXXXXX)
serve_pid=
cleanup() {
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
prefix=$work/prefix
cp -a "$src_prefix" "$prefix"
find "$prefix" -type f -print0 | xargs -0 cat > /dev/null  # warm the page cache

export ENVD_HOME=$work/home ENVD_CONFIG=/dev/null
unset ENVD_BUILDER ENVD_TOKEN

"$envd" builder serve --listen 127.0.0.1:0 --data "$work/builder" >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 300); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.out") || { cat "$work/serve.log" >&2; exit 1; }

now() { date +%s.%N; }
json() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['$1'])"; }
# push: runs envd push, leaves its JSON line in $out and its wall time in $wall.
push() {
  local t0 t1
  t0=$(now)
  out=$("$envd" push --prefix "$prefix" --no-src --name bench/env --builder "$url" --json 2>"$work/push.err" | tail -1) \
    || { cat "$work/push.err" >&2; exit 1; }
  t1=$(now)
  wall=$(echo "$t1 - $t0" | bc -l)
}

# The reference for the upload's time: reading and hashing every regular file once (hashlib).
t0=$(now)
python3 - "$prefix" <<'PY'
import hashlib, os, sys
for d, _, files in os.walk(sys.argv[1]):
    for f in files:
        p = os.path.join(d, f)
        if os.path.isfile(p) and not os.path.islink(p):
            with open(p, "rb") as fh:
                hashlib.sha256(fh.read())
PY
read_hash=$(echo "$(now) - $t0" | bc -l)

push
cold_wall=$wall cold=$out
push; nochange1=$wall nochange_out=$out
push; nochange2=$wall
push; nochange3=$wall
pkg_bytes=$(add_pip_package "$prefix" envdbenchpkg)
push; pkg_wall=$wall pkg_out=$out
pkg2_bytes=$(add_pip_package "$prefix" envdbenchpkg2)
push; pkg2_wall=$wall pkg2_out=$out

files=$(find "$prefix" \( -type f -o -type l \) | wc -l)
mb=$(du -sm "$prefix" | cut -f1)
f() { echo "$1" | json "$2"; }
mbytes() { echo "$1 / 1000000" | bc -l; }
printf 'machine: %s, %s cores, %s; load average %s\n' "$(uname -m)" "$(nproc)" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'prefix: copy of %s (%d files, %d MB); builder %s on loopback\n' "$src_prefix" "$files" "$mb" "$url"
printf '%-50s %7.2f s  (snapshot %.2f, upload %.2f, build %.2f; %.1f MB in %d files sent, %.1f MB snapshot document)\n' \
  "first push, cold (wall)" "$cold_wall" "$(f "$cold" snapshot_seconds)" "$(f "$cold" upload_seconds)" \
  "$(f "$cold" build_seconds)" "$(mbytes "$(f "$cold" bytes_uploaded)")" "$(f "$cold" blobs_uploaded)" \
  "$(mbytes "$(f "$cold" snapshot_bytes)")"
printf '%-50s %7.2f s  (the cold upload should take at most about twice this)\n' \
  "read and hash every file of the prefix (wall)" "$read_hash"
printf '%-50s %7.2f s / %.2f s / %.2f s  (target <= 0.5 s; sent %s bytes, snapshot %.2f s)\n' \
  "no-change push, 3 runs (wall)" "$nochange1" "$nochange2" "$nochange3" \
  "$(f "$nochange_out" bytes_uploaded)" "$(f "$nochange_out" snapshot_seconds)"
for run in 1 2; do
  if [ $run = 1 ]; then w=$pkg_wall o=$pkg_out b=$pkg_bytes; else w=$pkg2_wall o=$pkg2_out b=$pkg2_bytes; fi
  printf '%-50s %7.2f s  (target <= 1.0 s; snapshot %.2f, upload %.2f, build %.2f; package %d B, sent %d B of which snapshot document %d B; %d of %d layers reused)\n' \
    "push after adding one ~100 KB package #$run (wall)" "$w" "$(f "$o" snapshot_seconds)" \
    "$(f "$o" upload_seconds)" "$(f "$o" build_seconds)" "$b" "$(f "$o" bytes_uploaded)" \
    "$(f "$o" snapshot_bytes)" "$(f "$o" layers_reused)" "$(f "$o" layers)"
done
