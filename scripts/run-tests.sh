#!/usr/bin/env bash
# Runs the whole suite: every test of the main build, then the unit tests of
# the ASan+UBSan build.
set -euo pipefail
build=${1:-build}
asan=${2:-build-asan}
status=0
ctest --test-dir "$build" --output-on-failure -j 2 || status=1
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$asan" --output-on-failure -L unit -j 2 || status=1
exit $status
