#!/usr/bin/env bash
# The main job on one machine: install, build, push this machine's Python environment (the
# active conda env or venv, else the python3 on PATH, with the git tree around the current
# directory) to the embedded builder, start a worker from the image with the node daemon, and
# check that the worker sees the same packages, at the same versions, at the same paths.
# Arguments are passed to `envd push` (e.g. --prefix DIR, --name team/env:v1).
set -euo pipefail
cd "$(dirname "$0")/.."
ENVD_DEPS_MODE=--build-only bash packaging/build.sh
envd=$PWD/build/envd/cli/envd
json_field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])[sys.argv[1]])' "$1"; }

echo
echo "== envd snapshot (the stat cache makes a second run cost a stat per file)"
"$envd" snapshot "$@"
echo
echo "== envd push (embedded builder: a reproducible OCI image under \${ENVD_HOME:-~/.local/share/envd}/builder)"
push=$("$envd" push --json "$@")
image=$(json_field image <<<"$push")
echo "pushed $image"
echo
echo "== envd push again (nothing changed: every layer reused, same digest)"
"$envd" push "$@"
echo
echo "== envd node run: a worker started from the image by the node daemon"
prefix=$("$envd" snapshot --json "$@" | python3 -c 'import json,sys; print(json.loads(sys.stdin.read().splitlines()[-1])["environments"][0]["prefix"])')
# The environment's own interpreter, by absolute path: the worker must see it at the same path.
python="$prefix/bin/python3"
[ -x "$python" ] || python="$prefix/bin/python"
check='import importlib.metadata as m, sys
print(sys.prefix)
for n, v in sorted({(d.metadata["Name"].lower(), d.version) for d in m.distributions()}):
    print(n, v)'
"$python" -c "$check" >/tmp/envd-quickstart-local.txt
"$envd" node run "$image" -- "$python" -c "$check" >/tmp/envd-quickstart-worker.txt
if diff -u /tmp/envd-quickstart-local.txt /tmp/envd-quickstart-worker.txt; then
  echo "MATCH: the worker runs $(head -1 /tmp/envd-quickstart-worker.txt) with the same" \
       "$(($(wc -l </tmp/envd-quickstart-worker.txt) - 1)) packages and versions as this machine"
else
  echo "MISMATCH between this machine and the worker (diff above)" >&2
  exit 1
fi
