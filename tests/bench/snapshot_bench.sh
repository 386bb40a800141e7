#!/usr/bin/env bash
# Benchmark of `envd snapshot` (issue 2) on a real Python prefix, against its baselines in the
# same run: the stat walk `find PREFIX -printf '%s %T@\n'` and OpenSSL SHA-256 of every byte.
# Usage: tests/bench/snapshot_bench.sh [PREFIX] (default: $(pyenv root)/versions/3.11.7).
# The page cache is warmed first, so "cold" means an empty stat cache, not a cold disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
envd=${ENVD:-./build/envd/cli/envd}
prefix=${1:-$( (pyenv root 2>/dev/null || echo /root/.pyenv) | head -1)/versions/3.11.7}
[ -x "$envd" ] || { echo "build envd first (bash packaging/build.sh)" >&2; exit 1; }
[ -d "$prefix" ] || { echo "no prefix $prefix" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }
best_of() {  # best_of N CMD...: the fastest of N runs, in seconds
  local n=$1 best=; shift
  for _ in $(seq "$n"); do
    local t0 t1 d; t0=$(now); "$@" >/dev/null 2>&1; t1=$(now); d=$(elapsed "$t0" "$t1")
    if [ -z "$best" ] || [ "$(echo "$d < $best" | bc -l)" = 1 ]; then best=$d; fi
  done
  printf '%.3f' "$best"
}

files=$(find "$prefix" \( -type f -o -type l \) | wc -l)
bytes=$(find "$prefix" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
find "$prefix" -type f -print0 | xargs -0 cat > /dev/null  # warm the page cache

find_s=$(best_of 5 find "$prefix" -printf '%s %T@\n')
# The hashing limit: OpenSSL's SHA-256 rate on this CPU (1 MiB blocks, one core) applied to every
# byte on all cores, and `openssl dgst` over every file with one process per core.
cores=$(nproc)
sha_kbps=$(openssl speed -evp sha256 -bytes 1048576 -seconds 2 2>/dev/null | awk '/^sha256/ {print $2}' | tr -d k)
sha_limit=$(echo "$bytes / ($sha_kbps * 1000 * $cores)" | bc -l)
sha_all=$(best_of 3 sh -c "find '$prefix' -type f -print0 | xargs -0 -P$cores -n 4000 openssl dgst -sha256")

cold_run() { rm -rf "$work/home"; ENVD_HOME="$work/home" "$envd" snapshot --prefix "$prefix" --no-src --json; }
cold_s=$(best_of 3 cold_run)
ENVD_HOME="$work/home" "$envd" snapshot --prefix "$prefix" --no-src --json > /dev/null 2>&1
warm_s=$(best_of 5 env ENVD_HOME="$work/home" "$envd" snapshot --prefix "$prefix" --no-src --json)
rm -rf "$work/home"
rss_kb=$( { ENVD_HOME="$work/home" /usr/bin/time -f '%M' "$envd" snapshot --prefix "$prefix" --no-src --json >/dev/null 2>"$work/err"; } ; tail -1 "$work/err")
warm_rss_kb=$( { ENVD_HOME="$work/home" /usr/bin/time -f '%M' "$envd" snapshot --prefix "$prefix" --no-src --json >/dev/null 2>"$work/err"; } ; tail -1 "$work/err")

mb=$(echo "$bytes / 1000000" | bc -l)
printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$cores" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf 'prefix: %s (%d files, %.0f MB)\n' "$prefix" "$files" "$mb"
printf '%-44s %8s s\n' "find -printf (stat walk baseline)" "$find_s"
printf '%-44s %8.3f s  (%.2f GB/s per core x %s cores)\n' "SHA-256 limit (openssl speed)" "$sha_limit" "$(echo "$sha_kbps / 1000000" | bc -l)" "$cores"
printf '%-44s %8s s\n' "openssl dgst of every file, $cores processes" "$sha_all"
printf '%-44s %8s s  (target <= 1.0 s)\n' "envd snapshot, cold (empty stat cache)" "$cold_s"
printf '%-44s %8s s  (target <= 1.5 x find)\n' "envd snapshot, warm (stat cache)" "$warm_s"
printf '%-44s %8.2f x\n' "ratio warm / find" "$(echo "$warm_s / $find_s" | bc -l)"
printf '%-44s %8.2f x\n' "ratio cold / openssl dgst, $cores processes" "$(echo "$cold_s / $sha_all" | bc -l)"
printf '%-44s %8.0f MB (target <= 150 MB)\n' "peak RSS cold" "$(echo "$rss_kb / 1024" | bc -l)"
printf '%-44s %8.0f MB\n' "peak RSS warm" "$(echo "$warm_rss_kb / 1024" | bc -l)"
