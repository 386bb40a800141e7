#!/usr/bin/env bash
# Installs every Debian package envd's build, tests and benchmarks need.
# Idempotent; run as root on Debian 12. Runs `apt-get update` once per call.
set -euo pipefail

build_pkgs=(
  build-essential cmake ninja-build pkg-config git python3
  libgit2-dev libarchive-dev libcpp-httplib-dev libssl-dev libsqlite3-dev
  libyaml-cpp-dev doctest-dev nlohmann-json3-dev libzstd-dev libcli11-dev zlib1g-dev libjemalloc-dev
)
test_pkgs=(
  python3-venv python3-pip python3-setuptools python3-distributed
  skopeo umoci oci-image-tool docker-registry bubblewrap busybox-static buildah
  python3-jsonschema python3-yaml openssl zstd pigz curl jq bc time
)

want=("${build_pkgs[@]}")
if [ "${1:-}" != "--build-only" ]; then want+=("${test_pkgs[@]}"); fi

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#want[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# docker-registry's package starts a system service on :5000; tests run their own instances.
if command -v systemctl >/dev/null && systemctl is-active --quiet docker-registry 2>/dev/null; then
  systemctl stop docker-registry || true
fi
echo "install-deps: done"
