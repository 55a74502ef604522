#!/usr/bin/env bash
# Builds Ferry's RISC-V Linux guest: a Linux 6.1 Image with /init embedded, plus the same initramfs as a cpio.
# Prints the Image's path (in the repo's .out/guest-linux/) on stdout; progress and errors go to stderr.
#
# The kernel tree lives in a cache outside the repo, keyed by (kernel source version, kernel.config, this
# script), so a fresh clone reuses it: ${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/guest-linux/<key>/.
# The first build takes ~5 min on 2 cores. When only the /init program changes, the configured tree is
# reused and the kernel is relinked (~12 s). Each finished Image is kept under <key>/images/<program hash>/,
# so switching back and forth costs nothing. A second run with nothing changed takes well under a second.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
out=$repo/.out/guest-linux
src_pkg=linux-source-6.1
src_tar=/usr/src/linux-source-6.1.tar.xz
kmake=(make ARCH=riscv CROSS_COMPILE=riscv64-linux-gnu- KBUILD_BUILD_USER=ferry KBUILD_BUILD_HOST=ferry)

die() { echo "guest-linux/build.sh: error: $*" >&2; exit 1; }
say() { echo "guest-linux: $*" >&2; }

# What the build and the guest need, as Debian packages: checked first, rather than failing halfway through a 5-minute
# build. OpenSBI is the guest's firmware (the VM loads it, the build does not).
find_missing() {
    missing=()
    command -v gcc >/dev/null || missing+=(gcc)
    command -v riscv64-linux-gnu-gcc >/dev/null || missing+=(gcc-riscv64-linux-gnu)
    [[ -f /usr/riscv64-linux-gnu/lib/libc.a ]] || missing+=(libc6-dev-riscv64-cross)
    [[ -f $src_tar ]] || missing+=("$src_pkg")
    [[ -f /usr/lib/riscv64-linux-gnu/opensbi/generic/fw_dynamic.bin ]] || missing+=(opensbi)
    for tool in flex bison bc cpio make; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    command -v sha256sum >/dev/null || missing+=(coreutils)
}
find_missing
# On a fresh Debian machine, as root, the first `./ferry demo` installs them (FERRY_NO_INSTALL=1: only name them).
if ((${#missing[@]} > 0)) && [[ $(id -u) == 0 && -z ${FERRY_NO_INSTALL:-} ]] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]} (a minute or two; FERRY_NO_INSTALL=1 to only name them)"
    mkdir -p "$out"
    apt_log=$out/apt-get.log
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$apt_log" 2>&1; then
        tail -n 5 "$apt_log" >&2
        die "apt-get install ${missing[*]} failed (full log: $apt_log)"
    fi
    find_missing
fi
((${#missing[@]} == 0)) || die "missing: ${missing[*]} (install with: apt-get install -y ${missing[*]})"

src_version=$(dpkg-query -W -f='${Version}' "$src_pkg" 2>/dev/null) || die "cannot read the version of $src_pkg"
key=$( { echo "$src_version"; cat "$here/kernel.config" "$here/build.sh"; } | sha256sum | cut -c1-16)
cache=${FERRY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry}/guest-linux/$key
tree=$cache/linux
mkdir -p "$cache" "$out"

# One build per cache key at a time; a second caller waits and then finds the work done.
exec 9>"$cache/lock"
flock 9

# 1. The /init program (seconds).
make -s -C "$here/init" OUT="$out/init" >&2 || die "building the /init program failed"
init_bin=$out/init/init

# 2. The configured kernel tree (once per key).
if [[ ! -f $tree/.ferry-configured ]]; then
    say "unpacking $src_pkg $src_version into $cache"
    rm -rf "$cache/unpack" "$tree"
    mkdir -p "$cache/unpack"
    tar -xJf "$src_tar" -C "$cache/unpack" || die "unpacking $src_tar failed"
    mv "$cache/unpack/linux-source-6.1" "$tree"
    rmdir "$cache/unpack"
    (
        cd "$tree"
        "${kmake[@]}" tinyconfig
        scripts/kconfig/merge_config.sh -m .config "$here/kernel.config"
        "${kmake[@]}" olddefconfig
    ) >"$cache/configure.log" 2>&1 || die "configuring the kernel failed; see $cache/configure.log"
    # merge_config only warns when Kconfig drops an option (an unmet dependency); here that is an error.
    dropped=$(grep -E '^CONFIG_[A-Z0-9_]+=|^# CONFIG_[A-Z0-9_]+ is not set' "$here/kernel.config" |
        while IFS= read -r line; do grep -qxF -- "$line" "$tree/.config" || echo "  $line"; done)
    [[ -z $dropped ]] || die "the kernel config lost options (unmet dependencies?):"$'\n'"$dropped"
    touch "$tree/.ferry-configured"
fi

# 3. The embedded initramfs: /init and the few nodes the kernel needs before devtmpfs is mounted.
# (CONFIG_DEVTMPFS_MOUNT does not apply to an initramfs, so /dev/console must be in the archive.)
# Paths are relative to the tree, as CONFIG_INITRAMFS_SOURCE is, so the tree can be moved.
list=$(cat <<'EOF'
dir /dev 0755 0 0
nod /dev/console 0600 0 0 c 5 1
dir /proc 0555 0 0
dir /sys 0555 0 0
dir /tmp 1777 0 0
dir /mnt 0755 0 0
file /init usr/ferry-init 0755 0 0
EOF
)
prog_key=$( { echo "$list"; cat "$init_bin"; } | sha256sum | cut -c1-16)
image_dir=$cache/images/$prog_key

if [[ ! -f $image_dir/Image ]]; then
    if [[ ! -f $tree/.ferry-built ]]; then
        say "building the guest kernel (first time, ~5 min; log: $cache/build.log)..."
    else
        say "relinking the guest kernel with the new /init (~15 s)..."
    fi
    cmp -s "$init_bin" "$tree/usr/ferry-init" || cp "$init_bin" "$tree/usr/ferry-init"
    [[ "$(cat "$tree/usr/ferry_initramfs.list" 2>/dev/null)" == "$list" ]] || echo "$list" >"$tree/usr/ferry_initramfs.list"
    start=$SECONDS
    (cd "$tree" && "${kmake[@]}" -j"$(nproc)" Image) >"$cache/build.log" 2>&1 ||
        { tail -n 30 "$cache/build.log" >&2; die "the kernel build failed; see $cache/build.log"; }
    touch "$tree/.ferry-built"
    mkdir -p "$image_dir.tmp"
    cp "$tree/arch/riscv/boot/Image" "$tree/usr/initramfs_data.cpio" "$image_dir.tmp/"
    mv "$image_dir.tmp/initramfs_data.cpio" "$image_dir.tmp/initramfs.cpio"
    rm -rf "$image_dir" && mv "$image_dir.tmp" "$image_dir"
    say "kernel ready in $((SECONDS - start)) s"
fi

# 4. Stable paths in the repo; copied only when different, so their timestamps mean something.
for f in Image initramfs.cpio; do
    cmp -s "$image_dir/$f" "$out/$f" || cp "$image_dir/$f" "$out/$f"
done
echo "$out/Image"
