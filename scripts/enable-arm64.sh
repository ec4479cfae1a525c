#!/usr/bin/env bash
# Let this amd64 machine run arm64 programs (for the arm64 base image and the arm64 images' runs), idempotently:
# mount binfmt_misc if it is not, and register qemu-aarch64-static (from Debian's qemu-user-static, which
# scripts/install-deps.sh installs) with the F flag: the kernel opens the interpreter once, at registration, so it
# also works inside chroots and containers that do not hold /usr/bin/qemu-aarch64-static.
# An existing qemu-aarch64 entry without F is replaced. Needs root. Prints nothing on success.
set -euo pipefail

die() { echo "enable-arm64: error: $*" >&2; exit 1; }

[[ $(uname -m) == x86_64 ]] || { [[ $(uname -m) == aarch64 ]] && exit 0; die "unsupported host $(uname -m)"; }
qemu=/usr/bin/qemu-aarch64-static
[[ -x $qemu ]] || die "$qemu not found (run scripts/install-deps.sh)"
[[ $(id -u) == 0 ]] || die "registering a binfmt interpreter needs root"

misc=/proc/sys/fs/binfmt_misc
if [[ ! -e $misc/register ]]; then
    mount -t binfmt_misc binfmt_misc "$misc" || die "cannot mount binfmt_misc on $misc"
fi
entry=$misc/qemu-aarch64
if [[ -e $entry ]]; then
    if grep -q '^enabled' "$entry" && grep -q '^flags:.*F' "$entry"; then
        exit 0
    fi
    echo -1 >"$entry" # registered without F (or disabled): replace it
fi
# An aarch64 ELF executable's header: magic, 64-bit, little-endian, version 1, type EXEC or DYN, machine 0xb7.
magic='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
mask='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
echo ":qemu-aarch64:M::$magic:$mask:$qemu:OCF" >"$misc/register" || die "the kernel refused the qemu-aarch64 entry"
