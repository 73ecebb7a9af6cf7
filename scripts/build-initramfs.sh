#!/usr/bin/env bash
# Builds the guest initramfs: blink-guest as /init plus the kernel modules the
# guest needs, listed in load order in /lib/modules/blink/order, and the
# blink-vhub tool built next to blink-guest, which blink-guest puts on every
# VM's PATH (docs/vhub.md).
#
# usage: build-initramfs.sh BLINK_GUEST MODULES_DIR OUTPUT
#   MODULES_DIR is the unpacked kernel's lib/modules/<release> directory.
set -euo pipefail

guest=$1 modules=$2 output=$3

# Dependency order (the modules' own depends= fields): the virtio ring and core first, then the transport, then drivers.
# ext4, the 8250 console and cgroups are built into Debian's cloud kernel.
order=(
  drivers/virtio/virtio_ring.ko
  drivers/virtio/virtio.ko
  drivers/virtio/virtio_mmio.ko
  drivers/block/virtio_blk.ko
  drivers/char/virtio_console.ko
  drivers/char/hw_random/virtio-rng.ko
  net/vmw_vsock/vsock.ko
  net/vmw_vsock/vmw_vsock_virtio_transport_common.ko
  net/vmw_vsock/vmw_vsock_virtio_transport.ko
)

[ -x "$guest" ] || { echo "build-initramfs: no guest binary at $guest" >&2; exit 1; }
[ -d "$modules/kernel" ] || { echo "build-initramfs: no modules in $modules" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib/modules/blink" "$work/dev" "$work/proc" "$work/sys" "$work/newroot"
install -m 0755 "$guest" "$work/init"
tool=$(dirname "$guest")/blink-vhub
[ -x "$tool" ] || { echo "build-initramfs: no blink-vhub next to $guest" >&2; exit 1; }
install -m 0755 "$tool" "$work/blink-vhub"
for m in "${order[@]}"; do
  install -m 0644 "$modules/kernel/$m" "$work/lib/modules/blink/"
  basename "$m" >> "$work/lib/modules/blink/order"
done

tmp="$output.tmp.$$"
(cd "$work" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) > "$tmp"
mv -f "$tmp" "$output"
