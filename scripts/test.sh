#!/usr/bin/env bash
# Runs every test and ends with one line of counts: "tests: N passed, M failed".
#   1. lint (banned calls, line width, markers)
#   2. C unit tests, plain, under valgrind, and built with ASan+UBSan
#   3. end-to-end tests (pytest) that drive blink-cli and boot real VMs; when
#      started as root they run as the unprivileged user `blinktest`, since
#      Blink is meant to run as an ordinary user
# Sets up first (fast when already set up).
#
# usage: scripts/test.sh [PYTEST_ARGS...]
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
home=${BLINK_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/blink}
export BLINK_HOME=$home

passed=0 failed=0
count() { # count NAME STATUS
  if [ "$2" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); echo "FAILED: $1"; fi
}
finish() {
  echo "tests: $passed passed, $failed failed"
  [ "$failed" -eq 0 ]
  exit
}

if ! scripts/setup.sh >&2; then
  count setup 1
  finish
fi

# 1. lint
scripts/lint.sh
count lint $?

# The SDK example builds against libblink found by pkg-config (the build
# tree's uninstalled .pc file) and runs far enough to print its usage.
example_dir=$(mktemp -d)
usage=""
if PKG_CONFIG_PATH="$repo/build/meson-uninstalled" \
    make -s -C examples run-agent CFLAGS="-O2 -Wall -Wextra -Werror" >/dev/null &&
  mv examples/run-agent "$example_dir/" &&
  usage=$(LD_LIBRARY_PATH="$repo/build/src/lib" "$example_dir/run-agent" 2>&1) ;
  [[ $usage == usage:* ]]; then
  count "example with pkg-config" 0
else
  count "example with pkg-config" 1
fi
rm -rf "$example_dir"

# 2. unit tests: meson's summary has "Ok: N" and "Fail: N" lines.
unit_suite() { # unit_suite LABEL BUILD_DIR [meson test args]
  local label=$1 dir=$2 log ok bad
  shift 2
  log=$(mktemp)
  meson test -C "$dir" --suite unit --print-errorlogs "$@" > "$log" 2>&1
  sed -n '/^Ok:/,/^Timeout:/p' "$log" | sed "s/^/$label /"
  grep -E '^ *[0-9]+/[0-9]+ .*(FAIL|TIMEOUT)' "$log"
  ok=$(awk '/^Ok:/ {print $2}' "$log")
  bad=$(awk '/^(Fail|Timeout|Unexpected Pass):/ {n += $2} END {print n + 0}' "$log")
  [ -n "$ok" ] || { cat "$log"; bad=$((bad + 1)); }
  rm -f "$log"
  passed=$((passed + ${ok:-0}))
  failed=$((failed + bad))
}

unit_suite plain build
unit_suite valgrind build \
  --wrapper 'valgrind --quiet --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite'
if [ ! -f build-asan/build.ninja ]; then
  meson setup build-asan -Db_sanitize=address,undefined -Db_lundef=false -Dwerror=true \
    >/dev/null
fi
if ninja -C build-asan >/dev/null; then
  UBSAN_OPTIONS=halt_on_error=1 unit_suite asan build-asan --no-rebuild
else
  count "asan build" 1
fi

# A short fuzzing run of the BLIN decoder from its seed corpus.
if scripts/fuzz.sh 15 > /tmp/blink-fuzz.$$.log 2>&1; then
  count "fuzz blin decoder (15 s)" 0
else
  tail -30 /tmp/blink-fuzz.$$.log
  count "fuzz blin decoder (15 s)" 1
fi
rm -f /tmp/blink-fuzz.$$.log

# 3. end-to-end tests. Python modules come from Debian's packages, so run
# Debian's interpreter.
e2e_log=$(mktemp)
if [ "$(id -u)" -eq 0 ]; then
  scripts/stage-test-user.sh "$home" > "$e2e_log.env" || { count "stage test user" 1; finish; }
  # shellcheck disable=SC1090
  . "$e2e_log.env"
  # From the stage: the clone may sit in a folder the test user cannot enter.
  (cd "$TEST_STAGE" && runuser -u "$TEST_USER" -- env HOME="$TEST_HOME" \
    BLINK_HOME="$TEST_HOME/blink" BLINK_BUILD_DIR="$TEST_STAGE/build" \
    PATH=/usr/local/bin:/usr/bin:/bin \
    /usr/bin/python3 -m pytest -p no:cacheprovider -q "$TEST_STAGE/tests/e2e" "$@") 2>&1 |
    tee "$e2e_log"
  rm -f "$e2e_log.env"
  rm -rf "$TEST_STAGE"
else
  /usr/bin/python3 -m pytest -p no:cacheprovider -q tests/e2e "$@" 2>&1 | tee "$e2e_log"
fi
summary=$(grep -E '^[=]* ?[0-9]+ (passed|failed|error)' "$e2e_log" | tail -1)
rm -f "$e2e_log"
e2e_passed=$(grep -oE '[0-9]+ passed' <<<"$summary" | grep -oE '[0-9]+')
e2e_failed=$(grep -oE '[0-9]+ (failed|error|errors)' <<<"$summary" |
  awk '{n += $1} END {print n + 0}')
[ -n "$summary" ] || e2e_failed=$((e2e_failed + 1))
passed=$((passed + ${e2e_passed:-0}))
failed=$((failed + ${e2e_failed:-0}))

finish
