#!/usr/bin/env bash
# Build the "Debian Python 3" base images that the tests and the example use.
#
#   scripts/make-base-image.sh [--suite bookworm|bullseye] [--arch amd64|arm64] [OUT_DIR]
#
# --suite bookworm (the default) gives Python 3.11; --suite bullseye gives Python 3.9, the oldest Python the scoring
# server is tested on. --arch (default: this machine's) arm64 on an amd64 machine runs Debian's arm64 programs under
# qemu-user-static (scripts/enable-arm64.sh registers it); it takes about 5 minutes. OUT_DIR (default
# ${OCIBUILD_FIXTURE_CACHE:-$HOME/.cache/ocibuild-fixtures}/NAME, NAME being debian-python-3.11-v2 or
# debian-python-3.9, with -arm64 added for a foreign arm64 base) receives:
#   oci/                 an OCI image layout, tag "py311" (bullseye: "py39")  -> oci:OUT_DIR/oci:TAG
#   docker-archive.tar   the same image as a `docker save` tarball, named ocibuild-test/debian-python:3.11 (or :3.9)
#   COMPLETE             written last; its presence means everything above is whole
#
# The rootfs comes from mmdebstrap (the suite, variant essential, + python3 and libstdc++6) using the mirror this
# machine's apt already uses (override with OCIBUILD_DEBIAN_MIRROR); umoci turns it into a one-layer image. The
# digest is not stable across builds; nothing may depend on it. A finished OUT_DIR is reused as is; the build
# happens in a temporary sibling directory that is renamed into place, so an interrupted build leaves nothing behind.
# Everything is made world-readable (one test runs the builder as an unprivileged user).
# The only line on stdout is OUT_DIR.
set -euo pipefail

SUITE=bookworm
ARCH=$(dpkg --print-architecture)
HOST_ARCH=$ARCH
while [[ ${1:-} == --suite || ${1:-} == --arch ]]; do
    [[ $# -ge 2 ]] || { echo "make-base-image: error: $1 needs a value" >&2; exit 2; }
    if [[ $1 == --suite ]]; then SUITE=$2; else ARCH=$2; fi
    shift 2
done
case $ARCH in
    amd64 | arm64) ;;
    *)
        echo "make-base-image: error: unknown architecture '$ARCH' (amd64 or arm64)" >&2
        exit 2
        ;;
esac
case $SUITE in
    bookworm)
        TAG=py311
        DOCKER_NAME=ocibuild-test/debian-python:3.11
        DEFAULT_NAME=debian-python-3.11-v2 # v2: with libstdc++6
        ;;
    bullseye)
        TAG=py39
        DOCKER_NAME=ocibuild-test/debian-python:3.9
        DEFAULT_NAME=debian-python-3.9
        ;;
    *)
        echo "make-base-image: error: unknown suite '$SUITE' (bookworm or bullseye)" >&2
        exit 2
        ;;
esac
if [[ $ARCH != "$HOST_ARCH" ]]; then
    DEFAULT_NAME=$DEFAULT_NAME-$ARCH
    DOCKER_NAME=$DOCKER_NAME-$ARCH
fi
IMAGE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

out=${1:-${OCIBUILD_FIXTURE_CACHE:-$HOME/.cache/ocibuild-fixtures}/$DEFAULT_NAME}
out=${out%/}

log() { echo "make-base-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

if [[ -f $out/COMPLETE ]]; then
    echo "$out"
    exit 0
fi

for tool in mmdebstrap umoci skopeo flock; do
    command -v "$tool" >/dev/null || die "$tool not found (run scripts/install-deps.sh)"
done
[[ $(id -u) == 0 ]] || die "mmdebstrap needs root here"

# The Debian mirror this machine's apt is configured with: the URIs of the first enabled "deb" entry for $SUITE,
# from deb822 .sources files, else from one-line sources.list files. A suite the machine does not list (bullseye on
# a bookworm host) comes from the mirror of the machine's own release: a Debian mirror serves every suite.
debian_mirror() {
    local suite uri host_suite
    if [[ -n ${OCIBUILD_DEBIAN_MIRROR:-} ]]; then
        echo "$OCIBUILD_DEBIAN_MIRROR"
        return
    fi
    host_suite=$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")
    for suite in "$SUITE" $host_suite; do
        uri=$(mirror_of "$suite")
        if [[ -n $uri ]]; then
            [[ $suite == "$SUITE" ]] || log "no '$SUITE' entry in apt's sources; using the '$suite' mirror"
            echo "$uri"
            return
        fi
    done
    die "no '$SUITE' mirror in /etc/apt/sources.list{,.d/*}; set OCIBUILD_DEBIAN_MIRROR"
}

# The URIs of the first enabled "deb" entry for suite $1, or nothing.
mirror_of() {
    local f uri
    for f in /etc/apt/sources.list.d/*.sources; do
        [[ -f $f ]] || continue
        uri=$(awk -v suite="$1" '
            BEGIN { RS = ""; FS = "\n" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                for (i = 1; i <= NF; i++) {
                    line = $i
                    if (line ~ /^[ \t]*#/) continue
                    key = tolower(line); sub(/:.*/, "", key)
                    val = line; sub(/^[^:]*:[ \t]*/, "", val)
                    if (key == "types") types = val
                    else if (key == "uris") uris = val
                    else if (key == "suites") suites = val
                    else if (key == "enabled") enabled = tolower(val)
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                if ((" " suites " ") ~ (" " suite " ")) { split(uris, u, /[ \t]+/); print u[1]; exit }
            }' "$f")
        if [[ -n $uri ]]; then
            echo "$uri"
            return
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [[ -f $f ]] || continue
        uri=$(awk -v suite="$1" '
            $1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/ && i < NF) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }' "$f")
        if [[ -n $uri ]]; then
            echo "$uri"
            return
        fi
    done
}

# Remove a build directory: first anything still mounted below it (mmdebstrap killed mid-run), then the files,
# never crossing into another filesystem.
remove_dir() {
    local dir
    for dir in "$@"; do
        [[ -e $dir ]] || continue
        dir=$(realpath "$dir")
        awk -v d="$dir" '$5 == d || index($5, d "/") == 1 { print $5 }' /proc/self/mountinfo |
            sort -r | while read -r point; do umount "$point" 2>/dev/null || umount --lazy "$point"; done
        rm -rf --one-file-system "$dir"
    done
}

parent=$(dirname "$out")
name=$(basename "$out")
mkdir -p "$parent"

# One builder at a time (parallel test sessions share the cache); the second one finds COMPLETE and returns.
exec 9>"$parent/.$name.lock"
flock 9
if [[ -f $out/COMPLETE ]]; then
    echo "$out"
    exit 0
fi
# Whatever is here without COMPLETE is the debris of a killed build.
remove_dir "$out" "$parent/.$name.tmp."*

tmp=$(mktemp -d "$parent/.$name.tmp.XXXXXX")
trap 'remove_dir "$tmp"' EXIT
# mmdebstrap's own scratch space goes inside ours, so a killed build's debris is found and removed next time.
export TMPDIR=$tmp
stage=$tmp/$name
mkdir "$stage"

mirror=$(debian_mirror)
arch=$ARCH
if [[ $arch != "$HOST_ARCH" ]]; then
    bash "$(dirname "$0")/enable-arm64.sh"
fi
start=$SECONDS

log "mmdebstrap $SUITE $arch (essential + python3, libstdc++6) from $mirror ..."
mmdebstrap --quiet --variant=essential --include=python3,libstdc++6 --architectures="$arch" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$tmp/rootfs.tar" "$mirror"
python=$(tar -tf "$tmp/rootfs.tar" | sed -n 's|^\./usr/bin/\(python3\.[0-9]*\)$|\1|p' | head -n1)
[[ -n $python ]] || die "no usr/bin/python3.X in the rootfs"

log "umoci: rootfs -> OCI layout ..."
umoci init --layout "$stage/oci"
umoci new --image "$stage/oci:$TAG"
umoci raw add-layer --image "$stage/oci:$TAG" \
    --history.created_by "mmdebstrap --variant=essential --include=python3,libstdc++6 $SUITE" "$tmp/rootfs.tar"
umoci config --image "$stage/oci:$TAG" --no-history \
    --architecture "$arch" --os linux \
    --config.env "PATH=$IMAGE_PATH" --config.env LANG=C.UTF-8 \
    --config.cmd python3
umoci gc --layout "$stage/oci"
rm -f "$tmp/rootfs.tar"

log "skopeo: OCI layout -> docker-archive ..."
skopeo copy --quiet "oci:$stage/oci:$TAG" "docker-archive:$stage/docker-archive.tar:$DOCKER_NAME"

{
    echo "suite=$SUITE"
    echo "mirror=$mirror"
    echo "arch=$arch"
    echo "python=$python"
    echo "oci=oci:$out/oci:$TAG"
    echo "docker_archive=docker-archive:$out/docker-archive.tar:$DOCKER_NAME"
    echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$stage/COMPLETE"
chmod -R a+rX "$stage"
mv -T "$stage" "$out"
log "done in $((SECONDS - start)) s: $out"
echo "$out"
