#!/usr/bin/env bash
# The test suite from a fresh Debian 12 machine: install everything the build and the tests need,
# build with warnings as errors, run every test (unit, integration) with CTest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash packaging/build.sh -DENVD_WERROR=ON
ctest --test-dir "${ENVD_BUILD_DIR:-build}" --output-on-failure -j"${ENVD_JOBS:-2}" --timeout 600
