#!/usr/bin/env bash
# The main job on one machine: install, build, and snapshot this machine's active Python
# environment (the active conda env or venv, else the python3 on PATH) with the source tree.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVD_DEPS_MODE=--build-only bash packaging/build.sh
echo
echo "== envd snapshot (first run: every file is hashed)"
./build/envd/cli/envd snapshot "$@"
echo
echo "== envd snapshot again (the stat cache answers: a stat per file)"
./build/envd/cli/envd snapshot "$@"
