#!/usr/bin/env bash
# Prepares the end-to-end tests to run as an unprivileged user when the suite
# is started as root: creates the user `blinktest` if needed, and a stage it
# owns holding the built CLI, the tests, and a BLINK_HOME whose kernel and
# image are hard links (or copies) of the set-up ones. Prints shell variable
# assignments for scripts/test.sh.
#
# usage: stage-test-user.sh SETUP_BLINK_HOME
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
src_home=$1
user=blinktest

id -u "$user" >/dev/null 2>&1 || useradd --system --create-home --home-dir /var/lib/blinktest \
  --shell /usr/sbin/nologin "$user"

stage=/var/tmp/blink-e2e-stage
rm -rf "$stage"
mkdir -p "$stage/build/src/cli" "$stage/build/src/shim" "$stage/build/src/server" \
  "$stage/home/blink/kernels/current" \
  "$stage/home/blink/images/debian-12"
cp "$repo/build/src/cli/blink-cli" "$stage/build/src/cli/"
cp "$repo/build/src/shim/blink-shim" "$stage/build/src/shim/"
cp "$repo/build/src/server/blink-server" "$stage/build/src/server/"
cp -r "$repo/tests" "$repo/examples" "$repo/share" "$stage/"

link_or_copy() { ln -f "$1" "$2" 2>/dev/null || cp "$1" "$2"; }
kernel=$(readlink -f "$src_home/kernels/current")
link_or_copy "$kernel/vmlinuz" "$stage/home/blink/kernels/current/vmlinuz"
link_or_copy "$kernel/initramfs.cpio" "$stage/home/blink/kernels/current/initramfs.cpio"
link_or_copy "$src_home/images/debian-12/disk.qcow2" "$stage/home/blink/images/debian-12/"
cp "$src_home/images/debian-12/image.json" "$stage/home/blink/images/debian-12/"
# Hard links share their inode with the set-up files: leave those root's.
find "$stage" \( -type d -o -links 1 \) -exec chown "$user:" {} +
chmod 0755 "$stage"

echo "TEST_USER=$user"
echo "TEST_STAGE=$stage"
echo "TEST_HOME=$stage/home"
