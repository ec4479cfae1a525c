"""The sandbox's own steps, run by the host's Python as a script (``python3 -I -S _sandbox_child.py STAGE SPEC``),
so it imports nothing but the standard library.

``outer``: ask for SIGKILL when the parent (ocibuild) dies, then exec the namespace tool (``unshare``, ``bwrap``):
the request survives that exec, so even a SIGKILLed build leaves no server running.
``probe``: mount a ``/proc``, as ``inner`` does, in namespaces made for the test.
``inner``: inside the new mount and PID namespaces (or, for a plain chroot, right away): mount ``/proc``, a small
``/dev``, and with ``read_only`` a tmpfs on ``/tmp`` and the root read-only; then chroot, chdir, change user and
exec the image's program with the image's environment. It is PID 1 of its namespace, so when it dies every
process of the image dies with it.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import warnings  # noqa: F401  os.execvpe imports it to search PATH, after the chroot hides the host's library

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC = 32, 4096, 16384
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# statvfs flags that a bind remount inside a user namespace must keep (the kernel locks them): ST_* → MS_*
_LOCKED = ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME), (2048, MS_NODIRATIME),
           (4096, MS_RELATIME))  # fmt: skip
_DEVICES = ("null", "zero", "full", "random", "urandom")
_PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags,
                   data.encode() if data else None) != 0:  # fmt: skip
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype or 'bind'} on {target}: {os.strerror(err)}")


def _dev(root: str) -> None:
    """A small /dev: a tmpfs with the host's harmless character devices bound in, and a shared-memory tmpfs."""
    dev = os.path.join(root, "dev")
    _mount("tmpfs", dev, "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755")
    for name in _DEVICES:
        if not os.path.exists(f"/dev/{name}"):
            continue
        os.close(os.open(os.path.join(dev, name), os.O_CREAT | os.O_WRONLY, 0o666))
        _mount(f"/dev/{name}", os.path.join(dev, name), None, MS_BIND)
    os.mkdir(os.path.join(dev, "shm"))
    _mount("tmpfs", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):  # fmt: skip
        os.symlink(target, os.path.join(dev, name))


def _mounts(root: str, read_only: bool) -> None:
    _mount(root, root, None, MS_BIND | MS_REC)  # the root becomes a mount of its own, to be made read-only
    _mount("proc", os.path.join(root, "proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _dev(root)
    if read_only:
        _mount("tmpfs", os.path.join(root, "tmp"), "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
        held = os.statvfs(root).f_flag
        locked = sum(ms for st, ms in _LOCKED if held & st)
        _mount(root, root, None, MS_REMOUNT | MS_BIND | MS_RDONLY | locked)


def _become(uid: int | None, gid: int | None) -> None:
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
    _die_with_parent()  # a change of user clears the request


def inner(spec: dict) -> None:
    root = spec["root"]
    if spec["isolate"]:
        _mounts(root, spec["read_only"])
    os.chroot(root)
    os.chdir(spec["cwd"])
    _become(spec["uid"], spec["gid"])
    argv = spec["argv"]
    try:
        os.execvpe(argv[0], argv, spec["env"])
    except OSError as e:
        print(f"cannot start {argv[0]} in the image: {e.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


def main() -> None:
    if sys.argv[1] == "probe":  # in the namespaces a sandbox makes: can it mount what ``inner`` mounts?
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        return
    stage, spec_path = sys.argv[1], sys.argv[2]
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    _die_with_parent()
    try:
        if stage == "outer":
            os.execvp(spec["outer"][0], spec["outer"])
        inner(spec)
    except OSError as e:
        print(
            f"sandbox: {e.strerror if e.filename is None and e.strerror else e}", file=sys.stderr, flush=True
        )
        os._exit(126)


if __name__ == "__main__":
    main()
