#!/usr/bin/env bash
# Runs every test: C unit tests (meson), then the end-to-end tests (pytest),
# which boot real VMs. Sets up first (fast when already set up). The last line
# reports the total counts: "tests: N passed, M failed".
#
# usage: scripts/test.sh [PYTEST_ARGS...]
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

scripts/setup.sh >&2 || { echo "tests: 0 passed, 1 failed"; exit 1; }

passed=0 failed=0

# 1. unit tests
unit_log=$(mktemp)
meson test -C build --suite unit --print-errorlogs > "$unit_log" 2>&1
cat "$unit_log"
ok=$(awk '/^Ok:/ {print $2}' "$unit_log")
bad=$(awk '/^Fail:/ {print $2}' "$unit_log")
bad2=$(awk '/^Timeout:/ {print $2}' "$unit_log")
rm -f "$unit_log"
passed=$((passed + ${ok:-0}))
failed=$((failed + ${bad:-0} + ${bad2:-0}))
[ -n "$ok" ] || failed=$((failed + 1))

# 2. end-to-end tests with real VMs. Python modules come from Debian's
# packages, so run Debian's interpreter.
e2e_log=$(mktemp)
/usr/bin/python3 -m pytest -p no:cacheprovider -q tests/e2e "$@" 2>&1 | tee "$e2e_log"
summary=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)' "$e2e_log" | tail -1)
rm -f "$e2e_log"
e2e_passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+')
e2e_failed=$(grep -oE '[0-9]+ (failed|error|errors)' <<<"$summary" |
  awk '{n += $1} END {print n + 0}')
[ -n "$summary" ] || e2e_failed=1
passed=$((passed + ${e2e_passed:-0}))
failed=$((failed + ${e2e_failed:-0}))

echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
