#!/usr/bin/env bash
# The main job on one machine: install, build, snapshot this machine's active Python environment
# (the active conda env or venv, else the python3 on PATH) with the source tree, and push it to
# the embedded builder as an OCI image.
set -euo pipefail
cd "$(dirname "$0")/.."
ENVD_DEPS_MODE=--build-only bash packaging/build.sh
envd=./build/envd/cli/envd
echo
echo "== envd snapshot (first run: every file is hashed)"
"$envd" snapshot "$@"
echo
echo "== envd snapshot again (the stat cache answers: a stat per file)"
"$envd" snapshot "$@"
echo
echo "== envd push (embedded builder: a reproducible OCI image under \$ENVD_HOME/builder)"
"$envd" push "$@"
echo
echo "== envd push again (nothing changed: every layer reused, same digest)"
"$envd" push "$@"
