#!/usr/bin/env bash
# Benchmark of `envd watch` (issue 5): with the watcher running against a builder on loopback
# over a copy of a real Python prefix and a small git source tree, the time from writing a
# source file to the new tag digest at the builder (target <= 2 s, including the default 1 s
# debounce). The builder's tag watch (a long poll) reports the new digest the moment it moves.
# Usage: tests/bench/watch_bench.sh [PREFIX] [ROUNDS] (default: $(pyenv root)/versions/3.11.7,
# copied; 5 rounds). ENVD=path/to/envd picks the binary (default ./build/envd/cli/envd);
# KEEP_LOG=FILE keeps the watcher's log.
set -euo pipefail
cd "$(dirname "$0")/../.."
envd=$(realpath "${ENVD:-./build/envd/cli/envd}")
src_prefix=${1:-$( (pyenv root 2>/dev/null || echo /root/.pyenv) | head -1)/versions/3.11.7}
rounds=${2:-5}
[ -x "$envd" ] || { echo "build envd first (bash packaging/build.sh)" >&2; exit 1; }
work=$(mktemp -d /tmp/envd-watch-bench.XXXXXX)
serve_pid= watch_pid=
cleanup() {
  [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null && wait "$watch_pid" 2>/dev/null
  [ -n "$serve_pid" ] && kill "$serve_pid" 2>/dev/null && wait "$serve_pid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
# A copy: the original stays read-only.
prefix=$work/prefix
cp -a "$src_prefix" "$prefix"
find "$prefix" -type f -print0 | xargs -0 cat > /dev/null  # warm the page cache
src=$work/proj
mkdir -p "$src/src/app"
for i in $(seq 1 50); do echo "x = $i" > "$src/src/app/mod$i.py"; done
echo '*.log' > "$src/.gitignore"
git -C "$src" -c init.defaultBranch=main init -q
git -C "$src" add -A
git -C "$src" -c user.name=bench -c user.email=bench@example.invalid commit -q -m init

export ENVD_HOME=$work/home ENVD_CONFIG=/dev/null
unset ENVD_BUILDER ENVD_TOKEN

"$envd" builder serve --listen 127.0.0.1:0 --data "$work/builder" >"$work/serve.out" 2>"$work/serve.log" &
serve_pid=$!
for _ in $(seq 1 300); do grep -q listening "$work/serve.out" 2>/dev/null && break; sleep 0.05; done
url=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/serve.out") || { cat "$work/serve.log" >&2; exit 1; }
tag_watch=$url/envd/v1/bench/watch/tags/latest/watch

now() { date +%s.%N; }
# The tag's digest once it differs from $1 (empty: once it exists), by the builder's long poll.
next_digest() {
  local d
  for _ in $(seq 1 12); do
    d=$(curl -sf --max-time 15 "$tag_watch?wait_seconds=10${1:+&digest=$1}" | jq -r .digest)
    if [ -n "$d" ] && [ "$d" != null ] && [ "$d" != "$1" ]; then echo "$d"; return; fi
  done
  echo "no new digest for bench/watch:latest in 120 s; watch log:" >&2
  cat "$work/watch.log" >&2
  exit 1
}

t0=$(now)
"$envd" watch --prefix "$prefix" --src "$src" --name bench/watch:latest --builder "$url" \
  2>"$work/watch.log" &
watch_pid=$!
digest=$(next_digest "")
first=$(echo "$(now) - $t0" | bc -l)

times=()
for i in $(seq 1 "$rounds"); do
  t0=$(now)
  echo "x = 'edit $i'" > "$src/src/app/mod$i.py"
  digest=$(next_digest "$digest")
  times+=("$(echo "$(now) - $t0" | bc -l)")
done

kill -TERM "$watch_pid"
[ -n "${KEEP_LOG:-}" ] && trap 'cp "$work/watch.log" "$KEEP_LOG"; cleanup' EXIT
rc=0; wait "$watch_pid" || rc=$?
watch_pid=
pushes=$(grep -c 'msg=pushed' "$work/watch.log" || true)
sorted=$(printf '%s\n' "${times[@]}" | sort -n)
median=$(echo "$sorted" | sed -n "$(( (rounds + 1) / 2 ))p")
files=$(find "$prefix" \( -type f -o -type l \) | wc -l)
mb=$(du -sm "$prefix" | cut -f1)
printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf 'prefix: copy of %s (%d files, %d MB); source tree: 50 files in git\n' "$src_prefix" "$files" "$mb"
printf '%-52s %7.2f s\n' "envd watch start to first digest (cold push)" "$first"
printf '%-52s %7.2f s  (target <= 2 s, debounce 1 s)\n' "src edit to new tag digest, median of $rounds" "$median"
printf '%-52s %s\n' "  each round (s)" "$(printf '%.2f ' "${times[@]}")"
printf '%-52s %s (exit %d on SIGTERM)\n' "pushes logged" "$pushes" "$rc"
grep 'msg=pushed' "$work/watch.log" | tail -1 | sed 's/^/last push logged: /'
grep -E 'level=(warn|error)' "$work/watch.log" | sed 's/^/watch warning: /' || true
