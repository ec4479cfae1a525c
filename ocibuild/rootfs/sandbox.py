"""Running a program of an unpacked image (``unpack``) at build time, without a container engine: the image's own
Python, with the image's environment, working directory and user, in a chroot of the unpacked folder.

How, by what the machine allows (``find_method``), first that works:

- root: ``unshare --mount --pid`` and a chroot: the program runs as the image's user (``setuid``), its root
  read-only with a tmpfs on ``/tmp`` (as ``docker run --read-only --tmpfs /tmp``), its own ``/proc`` and ``/dev``;
  then a plain ``chroot`` (no namespaces: the root stays writable; e.g. inside a container without
  ``CAP_SYS_ADMIN``);
- a normal user: ``bwrap`` (the image's user is mapped to the builder's), then ``unshare --user
  --map-root-user`` (the program runs as uid 0 of a user namespace: the builder outside; only one uid can be
  mapped without ``newuidmap``). The read-only root and ``/tmp`` are the same.

The network is the host's: a server must listen on 127.0.0.1. Leaving a ``Sandbox`` block kills the program and
everything it started (its PID namespace; without one, its process group), and a SIGKILLed build does the same
(``_sandbox_child``). ``Workdir`` is the temporary folder, removed at the end and swept by the next build if a
killed one left it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

from .unpack import remove_unpacked

__all__ = ["Launch", "Method", "Sandbox", "Workdir", "emulator", "find_method", "native"]

CHILD = Path(__file__).resolve().with_name("_sandbox_child.py")
METHODS = ("unshare", "chroot", "bwrap", "unshare-user")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# OCI architecture → what ``uname -m`` says on a machine that runs it natively.
_MACHINES = {
    "amd64": {"x86_64"},
    "arm64": {"aarch64", "arm64"},
    "386": {"i386", "i686", "x86_64"},
    "arm": {"armv7l", "armv6l", "aarch64"},
    "ppc64le": {"ppc64le"},
    "s390x": {"s390x"},
    "riscv64": {"riscv64"},
}


@dataclass(frozen=True)
class Method:
    """One way of running the image here. ``userns``: inside a user namespace (uid 0 there is the builder);
    ``isolated``: own mount and PID namespaces (read-only root, tmpfs ``/tmp``, and all processes die together)."""

    name: str
    userns: bool
    isolated: bool

    def describe(self, user: tuple[int, int] | None) -> str:
        """How the program runs, for the progress line."""
        if self.name == "chroot":
            return f"in a chroot as {_who(user)} (no mount namespace here: the root stays writable)"
        if self.name == "unshare":
            return f"in a chroot as {_who(user)} (unshare: read-only root, tmpfs /tmp, own /proc and PIDs)"
        who = "uid 0" if self.name == "unshare-user" or user is None else _who(user)
        tool = "bwrap" if self.name == "bwrap" else "unshare -r"
        return (
            f"in a chroot as {who} of a user namespace, the builder outside ({tool}: read-only root, tmpfs "
            "/tmp, own /proc and PIDs)"
        )

    def command(self, spec: Path) -> list[str]:
        """The command that starts the program described in ``spec`` (the launch, written by ``Sandbox``)."""
        stage = "inner" if self.name == "chroot" else "outer"
        return [sys.executable, "-I", "-S", str(CHILD), stage, str(spec)]


def _who(user: tuple[int, int] | None) -> str:
    return "root" if user is None else f"{user[0]}:{user[1]}"


_ROOT_METHODS = (Method("unshare", False, True), Method("chroot", False, False))
_USER_METHODS = (Method("bwrap", True, True), Method("unshare-user", True, True))
_UNSHARE = ["--mount", "--pid", "--fork", "--kill-child"]


def _probe_command(method: Method) -> list[str]:
    probe = [sys.executable, "-I", "-S", str(CHILD), "probe"]
    if method.name == "unshare":
        return ["unshare", *_UNSHARE, *probe]
    if method.name == "unshare-user":
        return ["unshare", "--user", "--map-root-user", *_UNSHARE, *probe]
    if method.name == "bwrap":
        return ["bwrap", "--die-with-parent", "--unshare-user", "--unshare-pid", "--ro-bind", "/", "/",
                "--proc", "/proc", "--dev", "/dev", "true"]  # fmt: skip
    return ["chroot", "/", "true"]


def _probe(method: Method) -> str | None:
    """None if ``method`` works here, else why not (one short clause)."""
    argv = _probe_command(method)
    if shutil.which(argv[0]) is None:
        return f"{argv[0]} is not installed"
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{argv[0]}: {e}"
    if proc.returncode == 0:
        return None
    said = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return f"{' '.join(argv[:2])} failed ({said[:200]})"


# OCI architecture → the name of its qemu-user binfmt_misc entry (Debian's qemu-user-static, binfmt-support).
_QEMU = {"arm64": "aarch64", "arm": "arm", "386": "i386", "ppc64le": "ppc64le", "s390x": "s390x",
         "riscv64": "riscv64", "amd64": "x86_64"}  # fmt: skip
BINFMT_MISC = Path("/proc/sys/fs/binfmt_misc")


def native(architecture: str) -> bool:
    """Whether this machine runs ``architecture``'s programs itself."""
    return platform.machine() in _MACHINES.get(architecture, {architecture})


def emulator(architecture: str) -> str | None:
    """The qemu-user entry through which this machine's kernel runs ``architecture``'s programs, if there is one
    that works in a chroot: enabled, with the ``F`` flag (the interpreter opened at registration, so the image
    needs no copy of it)."""
    name = f"qemu-{_QEMU.get(architecture, architecture)}"
    try:
        text = (BINFMT_MISC / name).read_text()
    except OSError:
        return None
    lines = text.splitlines()
    flags = next((ln.split(":", 1)[1] for ln in lines if ln.startswith("flags:")), "")
    return name if lines[:1] == ["enabled"] and "F" in flags else None


def find_method(
    architecture: str, names: Sequence[str] | None = None, *, emulated: bool = False
) -> Method | str:
    """The first way of running an image of ``architecture`` that works on this machine, or why there is none
    (one line). ``names`` limits the choice (of ``METHODS``; tests use it). ``emulated``: an image of another
    architecture runs too where the kernel hands its programs to qemu (``emulator``): slow, so only for a run
    whose result does not depend on the machine (a smoke test, not the bytecode that goes into a layer)."""
    machine = platform.machine()
    if not native(architecture):
        if not emulated:
            return f"the image is for {architecture} and this machine is {machine}"
        if emulator(architecture) is None:
            return (
                f"the image is for {architecture} and this machine is {machine}, with no qemu-user emulator "
                f"for it registered in {BINFMT_MISC} (with the F flag)"
            )
    root = os.geteuid() == 0
    candidates = [m for m in (_ROOT_METHODS if root else _USER_METHODS) if names is None or m.name in names]
    if root and names is not None:
        candidates += [m for m in _USER_METHODS if m.name in names]
    reasons = []
    for method in candidates:
        why = _probe(method)
        if why is None:
            return method
        reasons.append(why)
    if not root and not reasons:
        reasons.append("not root")
    return "; ".join(reasons) or "no way of running it was asked for"


@dataclass(frozen=True)
class Launch:
    """What to run in an unpacked image: ``argv`` (looked up in ``env``'s PATH inside the image), its environment
    (only this), working directory, user (uid, gid; None: whoever the sandbox makes us) and whether the root is
    read-only with a tmpfs on ``/tmp``."""

    root: Path
    argv: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: tuple[int, int] | None = None
    read_only: bool = False


def _bwrap(launch: Launch) -> list[str]:
    argv = ["bwrap", "--die-with-parent", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--ro-bind" if launch.read_only else "--bind", str(launch.root), "/",
            "--proc", "/proc", "--dev", "/dev"]  # fmt: skip
    if launch.read_only:
        argv += ["--tmpfs", "/tmp"]
    argv += ["--chdir", launch.cwd, "--clearenv"]
    for key, value in launch.env.items():
        argv += ["--setenv", key, value]
    if launch.user is not None:
        argv += ["--uid", str(launch.user[0]), "--gid", str(launch.user[1])]
    return [*argv, "--", *launch.argv]


def _spec(method: Method, launch: Launch, spec_path: Path) -> dict:
    keeps_user = method.name in ("unshare", "chroot")
    spec = {
        "root": str(launch.root),
        "argv": list(launch.argv),
        "env": dict(launch.env),
        "cwd": launch.cwd,
        "uid": launch.user[0] if keeps_user and launch.user else None,
        "gid": launch.user[1] if keeps_user and launch.user else None,
        "isolate": method.isolated,
        "read_only": launch.read_only and method.isolated,
    }
    if method.name == "bwrap":
        spec["outer"] = _bwrap(launch)
    elif method.name in ("unshare", "unshare-user"):
        userns = ["--user", "--map-root-user"] if method.userns else []
        inner = [sys.executable, "-I", "-S", str(CHILD), "inner", str(spec_path)]
        spec["outer"] = ["unshare", *userns, *_UNSHARE, *inner]
    return spec


class Sandbox:
    """A program of the image, started on entering the block, killed (with everything it started) on leaving it.

    Its output (stdout and stderr) goes to ``output``; ``stdin`` as ``subprocess.Popen`` takes it."""

    def __init__(
        self,
        method: Method,
        launch: Launch,
        work: Path,
        output: IO[bytes] | int,
        stdin: IO[bytes] | int | None = subprocess.DEVNULL,
    ) -> None:
        self.method, self.launch, self.work = method, launch, work
        self.output, self.stdin = output, stdin
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> subprocess.Popen[bytes]:
        spec_path = self.work / "launch.json"
        spec_path.write_text(json.dumps(_spec(self.method, self.launch, spec_path)))
        self.proc = subprocess.Popen(
            self.method.command(spec_path),
            stdin=self.stdin,
            stdout=self.output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed as one
        )
        return self.proc

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.kill()

    def kill(self) -> None:
        proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


class Workdir:
    """A temporary folder for one sandbox (``root``, the launch, the output), locked while in use, removed on
    leaving the block (Ctrl-C included); one a SIGKILLed build left behind is removed by the next ``Workdir``."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.path = Path()
        self._fd = -1

    def __enter__(self) -> Workdir:
        parent = Path(tempfile.gettempdir())
        sweep(parent, self.prefix)
        self.path = Path(tempfile.mkdtemp(prefix=self.prefix, dir=parent))
        self._fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        self.root.mkdir()
        return self

    @property
    def root(self) -> Path:
        return self.path / "root"

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        interrupted: BaseException | None = None
        while True:
            try:
                remove_unpacked(self.path)
                break
            except KeyboardInterrupt as e:  # a second Ctrl-C must not leave half a tree behind
                interrupted = e
        os.close(self._fd)
        if interrupted is not None and kind is None:
            raise interrupted


_GRACE_SECONDS = 10  # a folder this young may be between mkdtemp and its lock


def sweep(parent: Path, prefix: str) -> None:
    """Remove ``prefix*`` folders in ``parent`` whose ``Workdir`` is gone (their lock can be taken)."""
    for path in parent.glob(f"{prefix}*"):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            if time.time() - os.fstat(fd).st_mtime < _GRACE_SECONDS:
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            remove_unpacked(path)
        except OSError:
            pass
        finally:
            os.close(fd)
