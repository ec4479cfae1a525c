#!/usr/bin/env bash
# Install everything the test suite needs on a Debian 12 machine (run as root), idempotently:
#   - the real tools the tests and benchmarks use (Docker, podman, buildah, skopeo, umoci, mmdebstrap, a registry,
#     htpasswd),
#     from Debian's own packages; apt is skipped entirely when every tool is already there;
#   - ocibuild itself, editable, with the test, example and uv extras.
# Services are never started by the install: the tests start their own daemons in temporary directories.
set -euo pipefail

cd "$(dirname "$0")/.."

# package -> a file it provides that the tests use
declare -A NEEDS=(
    [docker.io]=/usr/sbin/dockerd      # also /usr/bin/docker (20.10 client), containerd, runc
    [podman]=/usr/bin/podman           # pulls conmon, crun|runc and a network stack (unused: --network host)
    [runc]=/usr/sbin/runc              # podman's runtime in the tests: crun fails on hybrid cgroups (v1 + v2)
    [skopeo]=/usr/bin/skopeo
    [buildah]=/usr/bin/buildah         # bench/peers.py: the daemonless builder of CI without Docker-in-Docker
    [umoci]=/usr/bin/umoci
    [mmdebstrap]=/usr/bin/mmdebstrap   # builds the Debian Python base image (scripts/make-base-image.sh)
    [docker-registry]=/usr/bin/docker-registry
    [apache2-utils]=/usr/bin/htpasswd  # bcrypt htpasswd for the basic-auth registry
    [uidmap]=/usr/bin/newuidmap        # podman and umoci --rootless as a normal user
    [bubblewrap]=/usr/bin/bwrap        # the smoke test's sandbox for a normal user (unshare -r otherwise)
    [qemu-user-static]=/usr/bin/qemu-aarch64-static  # arm64 programs on amd64 (scripts/enable-arm64.sh)
    [arch-test]=/usr/bin/arch-test     # mmdebstrap's check that a foreign architecture runs
)

missing=()
for pkg in "${!NEEDS[@]}"; do
    [[ -x ${NEEDS[$pkg]} ]] || missing+=("$pkg")
done

if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || { echo "install-deps: need root to install: ${missing[*]}" >&2; exit 1; }
    echo "install-deps: apt-get install ${!NEEDS[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # Keep maintainer scripts from starting docker/containerd/registry services (policy-rc.d, exit 101).
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${!NEEDS[@]}" >/dev/null
fi

echo "install-deps: pip install -e .[test,example,uv]" >&2
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -e '.[test,example,uv]'
