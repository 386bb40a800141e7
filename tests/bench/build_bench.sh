#!/usr/bin/env bash
# Benchmark of the builder (issue 3) on a copy of a real Python prefix, against its baselines in
# the same run: `tar -cf - . | zstd -3 -T0` and `tar -cf - . | pigz -p2 -6` (reading and
# compressing the same bytes), and umoci / buildah as peer image builders when installed.
# Usage: tests/bench/build_bench.sh [PREFIX] (default: $(pyenv root)/versions/3.11.7, copied).
# ENVD=path picks the binary; PEERS=0 skips umoci and buildah.
set -euo pipefail
cd "$(dirname "$0")/../.."
. tests/bench/lib.sh
envd=$(realpath "${ENVD:-./build/envd/cli/envd}")
src_prefix=${1:-$( (pyenv root 2>/dev/null || echo /root/.pyenv) | head -1)/versions/3.11.7}
[ -x "$envd" ] || { echo "build envd first (bash packaging/build.sh)" >&2; exit 1; }
work=$(mktemp -d /tmp/envd-build-bench.XXXXXX)
# buildah names the image it imports from oci:DIR after DIR, and an image name must be lowercase:
# its OCI layout is reached through a link named by this shell's pid.
buildah_oci=/tmp/envd-buildah.$$
trap 'rm -rf "$work" "$buildah_oci"' EXIT
# A copy at a fixed path, so the one-file change below does not touch the original.
prefix=$work/prefix
cp -a "$src_prefix" "$prefix"
find "$prefix" -type f -print0 | xargs -0 cat > /dev/null  # warm the page cache

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
now() { date +%s.%N; }
# secs CMD...: its wall time in seconds, or n/a when it fails.
# A failing command prints its last lines of output on stderr.
secs() {
  local t0 t1
  t0=$(now)
  "$@" >"$work/cmd.log" 2>&1 || { { echo "failed: $*"; tail -5 "$work/cmd.log"; } >&2; echo n/a; return; }
  t1=$(now)
  echo "$t1 - $t0" | bc -l
}
json() { python3 -c "import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])['$1'])"; }

export ENVD_HOME=$work/home
"$envd" snapshot --prefix "$prefix" --no-src >/dev/null 2>&1  # warm stat cache: measure the build

tar_zstd=$(secs sh -c "tar -C '$prefix' -cf - . | zstd -3 -T0 > /dev/null")
tar_pigz=$(secs sh -c "tar -C '$prefix' -cf - . | pigz -p2 -6 > /dev/null")

push() { "$envd" push --prefix "$prefix" --no-src --name bench/env:v1 --json "$@" 2>/dev/null | tail -1; }
push_as() { local tag=$1; shift; "$envd" push --prefix "$prefix" --no-src --name "bench/env:$tag" --json "$@" 2>/dev/null | tail -1; }
rm -rf "$ENVD_HOME/builder"
cold_out=$( { /usr/bin/time -f '%M' "$envd" push --prefix "$prefix" --no-src --name bench/env:v1 --json 2>"$work/time" | tail -1; } )
cold_build=$(echo "$cold_out" | json build_seconds)
cold_rss_kb=$(tail -1 "$work/time")
nochange=$(push | json build_seconds)
nochange_total=$(push | json seconds)
# The same snapshot under a tag that does not name it yet: `envd push` cannot answer from the tag,
# so the builder runs with every layer (the snapshot document's too) in its cache.
nochange_builder=$(push_as v1-again | json build_seconds)
# One file changed in one small package.
small=$(ls -d "$prefix"/lib/python3.11/site-packages/*/__init__.py | head -20 | tail -1)
echo "# changed" >> "$small"
changed_out=$(push)
changed_build=$(echo "$changed_out" | json build_seconds)
changed_total=$(echo "$changed_out" | json seconds)
# One new ~100 KB pip package (as pip lays it out): one small-package group layer and the snapshot
# document's layer are built, the rest reused.
add_pip_package "$prefix" pkgx >/dev/null
added_out=$(push)
added_build=$(echo "$added_out" | json build_seconds)
added_total=$(echo "$added_out" | json seconds)
added_reused="$(echo "$added_out" | json layers_reused) of $(echo "$added_out" | json layers)"
rm -rf "$ENVD_HOME/builder"
gzip_build=$(push --compression gzip | json build_seconds)

umoci_s=n/a
if [ "${PEERS:-1}" = 1 ] && command -v umoci >/dev/null; then
  umoci_s=$(secs sh -c "cd '$work' && umoci init --layout oci-umoci && umoci new --image oci-umoci:v1 && umoci unpack --rootless --image oci-umoci:v1 bundle && mkdir -p 'bundle/rootfs$prefix' && cp -a '$prefix/.' 'bundle/rootfs$prefix/' && umoci repack --image oci-umoci:v1 bundle")
  echo "# changed again" >> "$small"
  umoci_re=$(secs sh -c "cd '$work' && cp -a '$small' 'bundle/rootfs$small' && umoci repack --image oci-umoci:v1 bundle")
  rm -rf "$work/oci-umoci" "$work/bundle"
fi
buildah_s=n/a
if [ "${PEERS:-1}" = 1 ] && command -v buildah >/dev/null; then
  ln -sfn "$work" "$buildah_oci"
  buildah_s=$(secs sh -c "ctr=\$(buildah --storage-driver vfs from scratch) && buildah --storage-driver vfs copy \$ctr '$prefix' '$prefix' && buildah --storage-driver vfs commit \$ctr oci:$buildah_oci/oci-buildah:v1 && buildah --storage-driver vfs rm \$ctr")
  # The rebuild a buildah user makes: from the last image, copy the changed file in, commit.
  echo "# changed for buildah" >> "$small"
  buildah_re=$(secs sh -c "ctr=\$(buildah --storage-driver vfs from -q oci:$buildah_oci/oci-buildah:v1) && buildah --storage-driver vfs copy \$ctr '$small' '$small' && buildah --storage-driver vfs commit \$ctr oci:$buildah_oci/oci-buildah:v2 && buildah --storage-driver vfs rm \$ctr")
  rm -rf "$work/oci-buildah"
  # `from oci:DIR` imported the image into buildah's storage under the directory's name.
  buildah --storage-driver vfs rmi "localhost$buildah_oci/oci-buildah" >/dev/null 2>&1 || true
fi

files=$(find "$prefix" \( -type f -o -type l \) | wc -l)
mb=$(du -sm "$prefix" | cut -f1)
r() { echo "$1 / $2" | bc -l; }
printf 'load average: %s at the start, %s at the end\n' "$load_start" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'machine: %s, %s cores, %s\n' "$(uname -m)" "$(nproc)" "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
printf 'prefix: copy of %s (%d files, %d MB)\n' "$src_prefix" "$files" "$mb"
printf '%-46s %7.2f s\n' "tar | zstd -3 -T0" "$tar_zstd"
printf '%-46s %7.2f s  ratio %.2f (target <= 1.0)\n' "envd cold build, zstd" "$cold_build" "$(r "$cold_build" "$tar_zstd")"
printf '%-46s %7.2f s\n' "tar | pigz -p2 -6" "$tar_pigz"
printf '%-46s %7.2f s  ratio %.2f (target <= 1.0)\n' "envd cold build, gzip" "$gzip_build" "$(r "$gzip_build" "$tar_pigz")"
printf '%-46s %7.2f s  (target <= 0.1 s)\n' "envd no-change rebuild (build step)" "$nochange"
printf '%-46s %7.2f s\n' "envd no-change push (snapshot + build)" "$nochange_total"
printf '%-46s %7.2f s\n' "envd no-change rebuild, new tag (builder runs)" "$nochange_builder"
printf '%-46s %7.2f s  (target <= 0.3 s)\n' "envd rebuild, one file in one package" "$changed_build"
printf '%-46s %7.2f s\n' "envd push after that change (end to end)" "$changed_total"
printf '%-46s %7.2f s  (%s layers reused)\n' "envd rebuild, one ~100 KB package added" "$added_build" "$added_reused"
printf '%-46s %7.2f s  (target 1.0 s)\n' "envd push after adding it (end to end)" "$added_total"
# peer NAME COLD REBUILD: seconds and how many times envd's cold build and one-file rebuild are
# faster; n/a: not installed, PEERS=0, or the command failed (its output is above).
peer() {
  local cold=n/a rebuild=n/a
  [ "$2" != n/a ] && cold=$(printf '%.2f s: envd %.1f x faster (target >= 10 x)' "$2" "$(r "$2" "$cold_build")")
  [ "$3" != n/a ] && rebuild=$(printf '%.2f s: envd %.0f x faster (target >= 30 x)' "$3" "$(r "$3" "$changed_build")")
  printf '%-46s %s; rebuild %s\n' "$1" "$cold" "$rebuild"
}
peer "umoci (unpack, copy, repack)" "$umoci_s" "${umoci_re:-n/a}"
peer "buildah (from scratch, copy, commit)" "$buildah_s" "${buildah_re:-n/a}"
printf '%-46s %7.0f MB (target <= 200 MB; includes the snapshot)\n' "peak RSS of envd push, cold" "$(echo "$cold_rss_kb / 1024" | bc -l)"
