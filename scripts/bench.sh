#!/usr/bin/env bash
# make bench: every benchmark, JSON on stdout.
set -euo pipefail
build=${1:-build}
"$build/bin/rpc_roundtrip_bench" --benchmark_format=json
"$build/bin/bench-create-exec" --iterations "${BENCH_ITERATIONS:-100}"
"$build/bin/bench-exec" --iterations "${BENCH_ITERATIONS:-200}"
"$build/bin/bench-sched-switch"
"$build/bin/bench-egress-overhead"
"$build/bin/bench-dns-latency"
"$build/bin/bench-fleet-place" --iterations "${BENCH_ITERATIONS:-100}"
