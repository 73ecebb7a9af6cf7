#!/usr/bin/env bash
# Sets Blink up on a fresh Debian 12 machine, and is fast and safe to re-run:
#   1. installs the Debian packages Blink needs (as root; skips what is there)
#   2. builds Blink (meson + ninja into ./build)
#   3. fetches Debian's cloud kernel into $BLINK_HOME/kernels (never /boot)
#   4. builds the initramfs with blink-guest as /init
#   5. builds the default image (Debian 12 minbase + Python 3, ext4 in qcow2)
#
# usage: scripts/setup.sh [--deps-only] [--no-deps]
# BLINK_HOME defaults to ${XDG_DATA_HOME:-~/.local/share}/blink.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
home=${BLINK_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/blink}
image_name=debian-12
deps_only=0 no_deps=0
for arg in "$@"; do
  case $arg in
    --deps-only) deps_only=1 ;;
    --no-deps) no_deps=1 ;;
    *) echo "setup: unknown option $arg" >&2; exit 2 ;;
  esac
done

say() { printf 'setup: %s\n' "$*" >&2; }

# Packages: the VM engine, the build, the image builder, the tests.
packages=(
  qemu-system-x86 qemu-utils
  gcc libc6-dev make meson ninja-build pkg-config
  libjansson-dev libarchive-dev libssl-dev libsqlite3-dev libmicrohttpd-dev libwslay-dev
  mmdebstrap e2fsprogs cpio zstd
  python3 python3-pytest python3-websocket valgrind clang libclang-rt-14-dev chromium wrk
)

install_packages() {
  local missing=()
  for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && { say "packages: all present"; return; }
  if [ "$(id -u)" -ne 0 ]; then
    say "missing packages: ${missing[*]}"
    say "install them as root: sudo $0 --deps-only"
    exit 1
  fi
  say "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_blink() {
  if [ ! -f "$repo/build/build.ninja" ]; then
    meson setup "$repo/build" "$repo" >/dev/null
  fi
  ninja -C "$repo/build" >/dev/null
  say "built blink in $repo/build"
}

fetch_kernel() {
  local meta=linux-image-cloud-amd64 pkg release dir
  pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  if [ -z "$pkg" ]; then
    # apt's lists may be empty on a fresh machine; only root can refresh them.
    [ "$(id -u)" -eq 0 ] && apt-get update -qq
    pkg=$(apt-cache depends "$meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
  fi
  [ -n "$pkg" ] || { say "cannot find the package behind $meta"; exit 1; }
  release=${pkg#linux-image-}
  dir=$home/kernels/$release
  if [ ! -f "$dir/vmlinuz" ]; then
    say "fetching kernel $pkg"
    local tmp
    tmp=$(mktemp -d "$home/tmp/kernel.XXXXXX")
    (cd "$tmp" && apt-get download "$pkg" >/dev/null 2>&1) ||
      { rm -rf "$tmp"; say "apt-get download $pkg failed"; exit 1; }
    dpkg-deb -x "$tmp"/*.deb "$tmp/root"
    mkdir -p "$tmp/out"
    cp "$tmp/root/boot/vmlinuz-$release" "$tmp/out/vmlinuz"
    mv "$tmp/root/lib/modules/$release" "$tmp/out/modules"
    echo "$release" > "$tmp/out/release"
    rm -rf "$dir"
    mv "$tmp/out" "$dir"
    rm -rf "$tmp"
  fi
  ln -sfn "$release" "$home/kernels/current"
  say "kernel $release in $dir"
}

build_initramfs() {
  local dir=$home/kernels/current
  "$repo/scripts/build-initramfs.sh" "$repo/build/src/guest/blink-guest" "$dir/modules" \
    "$dir/initramfs.cpio"
  say "initramfs built"
}

build_image() {
  local dir=$home/images/$image_name
  [ -f "$dir/disk.qcow2" ] && { say "image $image_name present"; return; }
  if [ "$(id -u)" -ne 0 ]; then
    # As a user, mmdebstrap falls back to modes that leave the image's files
    # owned by that user and its symlinks pointing into the build folder:
    # a root filesystem whose programs cannot start.
    say "the image $image_name is built as root; run once:"
    say "  sudo env BLINK_HOME=$home $0"
    say "(the files under $home stay yours)"
    exit 1
  fi
  say "building image $image_name (Debian 12 minbase + python3; about a minute)"
  local tmp
  tmp=$(mktemp -d "$home/tmp/image.XXXXXX")
  trap 'rm -rf "$tmp"' RETURN
  mmdebstrap --quiet --variant=minbase --include=python3,procps \
    --customize-hook='mkdir -p "$1/var/blink/memory" "$1/var/blink/agents"' \
    --customize-hook='echo blink > "$1/etc/hostname"' \
    --customize-hook='rm -f "$1/etc/machine-id"' \
    bookworm "$tmp/root" >/dev/null
  # 4 GiB of address space; qcow2 stores only what is written.
  mke2fs -q -t ext4 -L blink-root -d "$tmp/root" "$tmp/disk.raw" 4G >/dev/null
  qemu-img convert -f raw -O qcow2 "$tmp/disk.raw" "$tmp/disk.qcow2"
  printf '{"name":"%s","base":"debian bookworm minbase","packages":["python3","procps"]}\n' \
    "$image_name" > "$tmp/image.json"
  mkdir -p "$dir.tmp"
  mv "$tmp/disk.qcow2" "$tmp/image.json" "$dir.tmp/"
  chmod 0444 "$dir.tmp/disk.qcow2"
  rm -rf "$dir"
  mv "$dir.tmp" "$dir"
  say "image $image_name in $dir"
}

[ $no_deps -eq 1 ] || install_packages
[ $deps_only -eq 1 ] && exit 0
mkdir -p "$home/tmp" "$home/kernels" "$home/images"
build_blink
fetch_kernel
build_initramfs
build_image
# Run through sudo for a user's BLINK_HOME and clone: hand back what we made
# in places that are theirs.
if [ "$(id -u)" -eq 0 ] && [ -n "${SUDO_UID:-}" ] && [ "$SUDO_UID" != 0 ]; then
  for made in "$home" "$repo/build"; do
    if [ "$(stat -c %u "$(dirname "$made")")" = "$SUDO_UID" ]; then
      chown -R "$SUDO_UID:${SUDO_GID:-$SUDO_UID}" "$made"
    fi
  done
fi
say "ready: BLINK_HOME=$home"
