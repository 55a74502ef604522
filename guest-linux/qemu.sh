#!/usr/bin/env bash
# Boots the guest under QEMU (the reference machine), console on stdio. Builds it first if needed.
#   guest-linux/qemu.sh [ferry.* options...]
# Environment: SMP (2), MEM (1G), DISK (a raw image file: adds a virtio-blk device), NET=1 (virtio-net, user
# networking, host port $HOSTFWD (5555) forwarded to the guest's echo port 7), RNG=1 (virtio-rng),
# QEMU_EXTRA (more QEMU arguments, word-split).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
image=$("$here/build.sh")
bios=/usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin
[[ -f $bios ]] || { echo "guest-linux/qemu.sh: error: $bios missing (apt-get install -y opensbi)" >&2; exit 1; }
args=(-M virt -m "${MEM:-1G}" -smp "${SMP:-2}" -nographic -no-reboot -bios "$bios" -kernel "$image")
[[ -n ${DISK:-} ]] && args+=(-drive "file=$DISK,if=none,format=raw,id=d0" -device virtio-blk-device,drive=d0)
[[ ${NET:-0} == 1 ]] && args+=(-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:${HOSTFWD:-5555}-:7" -device virtio-net-device,netdev=n0)
[[ ${RNG:-0} == 1 ]] && args+=(-device virtio-rng-device)
# shellcheck disable=SC2206
[[ -n ${QEMU_EXTRA:-} ]] && args+=($QEMU_EXTRA)
exec qemu-system-riscv64 "${args[@]}" -append "console=ttyS0 earlycon=sbi $*"
