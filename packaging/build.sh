#!/usr/bin/env bash
# Installs the build dependencies (unless ENVD_SKIP_DEPS=1), configures and builds envd into
# ${ENVD_BUILD_DIR:-build}. Extra arguments go to cmake's configure step.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${ENVD_SKIP_DEPS:-0}" != 1 ]; then bash packaging/install-deps.sh "${ENVD_DEPS_MODE:-}"; fi
build_dir=${ENVD_BUILD_DIR:-build}
cmake -S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
cmake --build "$build_dir" -j"${ENVD_JOBS:-2}"
