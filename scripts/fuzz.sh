#!/usr/bin/env bash
# Builds and runs the libFuzzer target for the BLIN decoder (clang and its
# libFuzzer runtime from Debian: clang, libclang-rt-dev), starting from the
# seed corpus in tests/fuzz/corpus/blin.
#
# usage: scripts/fuzz.sh [SECONDS]   (default 60)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE \
  -I"$repo/src/protocol" -I"$repo/src/common" \
  "$repo/tests/fuzz/fuzz_blin.c" "$repo/src/protocol/blin.c" -o "$out/fuzz_blin"
mkdir -p "$out/corpus"
cp "$repo"/tests/fuzz/corpus/blin/* "$out/corpus/"
"$out/fuzz_blin" -max_total_time="$seconds" -rss_limit_mb=512 "$out/corpus"
