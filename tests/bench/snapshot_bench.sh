#!/usr/bin/env bash
# Benchmark of `envd snapshot` (issue 2) on a real Python prefix, against its baselines in the
# same run: the stat walk `find PREFIX -printf '%s %T@\n'`, OpenSSL SHA-256 of every byte, and
# optionally a previous envd binary (ENVD_BASELINE), e.g. one built from the last commit.
# Usage: [ENVD=bin] [ENVD_BASELINE=bin] [RUNS=7] tests/bench/snapshot_bench.sh [PREFIX]
# (default PREFIX: $(pyenv root)/versions/3.11.7). Each figure is the median of RUNS runs, and the
# runs of find, envd and the baseline alternate, so that load from other processes hits them
# alike. The page cache is warmed first, so "cold" means an empty stat cache, not a cold disk.
set -euo pipefail
cd "$(dirname "$0")/../.."
envd=${ENVD:-./build/envd/cli/envd}
baseline=${ENVD_BASELINE:-}
runs=${RUNS:-7}
prefix=${1:-$( (pyenv root 2>/dev/null || echo /root/.pyenv) | head -1)/versions/3.11.7}
[ -x "$envd" ] || { echo "build envd first (bash packaging/build.sh)" >&2; exit 1; }
[ -z "$baseline" ] || [ -x "$baseline" ] || { echo "no baseline binary $baseline" >&2; exit 1; }
[ -d "$prefix" ] || { echo "no prefix $prefix" >&2; exit 1; }
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT

now() { date +%s.%N; }
# timed NAME CMD...: runs CMD (stdout dropped, stderr kept in $work/err) and appends its seconds
# to $work/NAME.
timed() {
  local name=$1 t0 t1; shift
  t0=$(now); "$@" >/dev/null 2>"$work/err"; t1=$(now)
  echo "$t1 - $t0" | bc -l >>"$work/$name"
}
median() { sort -n "$work/$1" | awk '{v[NR]=$1} END {printf "%.3f", NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
# phases NAME: appends the phase timings envd logged at debug level as "NAME.PHASE seconds".
phases() {
  sed -n 's/.*msg="phase done" phase=\("[^"]*"\|[^ ]*\) ms=\([0-9.]*\).*/\1 \2/p' "$work/err" |
    tr -d '"' | while read -r line; do
      local ms=${line##* } phase=${line% *}
      echo "$ms / 1000" | bc -l >>"$work/$1.phase.${phase// /_}"
    done
}
snapshot() {  # snapshot BIN HOME
  ENVD_HOME="$2" ENVD_LOG_LEVEL=debug "$1" snapshot --prefix "$prefix" --no-src --json
}

files=$(find "$prefix" \( -type f -o -type l \) | wc -l)
bytes=$(find "$prefix" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')
find "$prefix" -type f -print0 | xargs -0 cat > /dev/null  # warm the page cache

# The hashing limit: OpenSSL's SHA-256 rate on this CPU (1 MiB blocks, one core) applied to every
# byte on all cores, and `openssl dgst` over every file with one process per core.
cores=$(nproc)
sha_kbps=$(openssl speed -evp sha256 -bytes 1048576 -seconds 2 2>/dev/null | awk '/^sha256/ {print $2}' | tr -d k)
sha_limit=$(echo "$bytes / ($sha_kbps * 1000 * $cores)" | bc -l)
for _ in 1 2 3; do
  timed sha_all sh -c "find '$prefix' -type f -print0 | xargs -0 -P$cores -n 4000 openssl dgst -sha256"
done

bins=(envd)
[ -z "$baseline" ] || bins+=(baseline)
for _ in $(seq "$runs"); do
  timed find find "$prefix" -printf '%s %T@\n'
  for b in "${bins[@]}"; do
    bin=$envd; [ "$b" = envd ] || bin=$baseline
    rm -rf "$work/home"
    timed "$b.cold" snapshot "$bin" "$work/home"; phases "$b.cold"
    timed "$b.warm" snapshot "$bin" "$work/home"; phases "$b.warm"
  done
done
rm -rf "$work/home"
rss_kb=$( { ENVD_HOME="$work/home" /usr/bin/time -f '%M' "$envd" snapshot --prefix "$prefix" --no-src --json >/dev/null 2>"$work/err"; } ; tail -1 "$work/err")
warm_rss_kb=$( { ENVD_HOME="$work/home" /usr/bin/time -f '%M' "$envd" snapshot --prefix "$prefix" --no-src --json >/dev/null 2>"$work/err"; } ; tail -1 "$work/err")

find_s=$(median find)
cold_s=$(median envd.cold)
warm_s=$(median envd.warm)
sha_all_s=$(median sha_all)
mb=$(echo "$bytes / 1000000" | bc -l)
printf 'machine: %s, %s cores, %s; load average %s\n' "$(uname -m)" "$cores" \
  "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'prefix: %s (%d files, %.0f MB); medians of %s runs\n' "$prefix" "$files" "$mb" "$runs"
printf '%-44s %8s s\n' "find -printf (stat walk baseline)" "$find_s"
printf '%-44s %8.3f s  (%.2f GB/s per core x %s cores)\n' "SHA-256 limit (openssl speed)" "$sha_limit" "$(echo "$sha_kbps / 1000000" | bc -l)" "$cores"
printf '%-44s %8s s\n' "openssl dgst of every file, $cores processes" "$sha_all_s"
printf '%-44s %8s s  (target <= 1.0 s)\n' "envd snapshot, cold (empty stat cache)" "$cold_s"
printf '%-44s %8s s  (target <= 1.5 x find)\n' "envd snapshot, warm (stat cache)" "$warm_s"
printf '%-44s %8.2f x\n' "ratio warm / find" "$(echo "$warm_s / $find_s" | bc -l)"
printf '%-44s %8.2f x\n' "ratio cold / openssl dgst, $cores processes" "$(echo "$cold_s / $sha_all_s" | bc -l)"
if [ -n "$baseline" ]; then
  printf '%-44s %8s s  (envd / baseline: %.2f x)\n' "baseline envd, cold" "$(median baseline.cold)" \
    "$(echo "$cold_s / $(median baseline.cold)" | bc -l)"
  printf '%-44s %8s s  (envd / baseline: %.2f x)\n' "baseline envd, warm" "$(median baseline.warm)" \
    "$(echo "$warm_s / $(median baseline.warm)" | bc -l)"
fi
printf '%-44s %8.0f MB (target <= 150 MB)\n' "peak RSS cold" "$(echo "$rss_kb / 1024" | bc -l)"
printf '%-44s %8.0f MB\n' "peak RSS warm" "$(echo "$warm_rss_kb / 1024" | bc -l)"
echo "phases (median seconds; phases may overlap):"
for b in "${bins[@]}"; do
  for kind in cold warm; do
    for f in "$work/$b.$kind.phase."*; do
      [ -e "$f" ] || continue
      name=${f##*/}
      printf '  %-42s %8s s\n' "$b $kind ${name#"$b.$kind.phase."}" "$(median "$name")"
    done
  done
done
