"""The smoke test (``--smoke-test``): the assembled image is unpacked and its own Python runs the scoring server
there, as the container would (the image's entrypoint, environment, working directory and, where the sandbox can,
its user; a read-only root with a tmpfs on ``/tmp``), without a container engine (``rootfs.sandbox``).

It waits for ``GET /`` to say ``Healthy`` (the script loaded and ``init()`` returned), then posts a sample to
``/score``: ``--sample-input FILE`` if given, else the script's own input sample (its inference-schema
``@input_schema`` sample or ``input_sample``, which the server publishes in ``/swagger.json``), else it only says
that ``init()`` succeeded. A failure is one line (what failed, from the server's own error record) followed by the
server's last log lines; a machine that cannot run the image is one warning, and the build goes on.

The server listens on 127.0.0.1, on a port the kernel picks (``OCIBUILD_PORT=0``; the port is read from the
server's log), and nothing else is contacted. The folder and every process are gone when the test ends, however it
ends (``rootfs.sandbox``).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CheckError, InputError
from ..rootfs.sandbox import DEFAULT_PATH, Launch, Method, Sandbox, Workdir, emulator, find_method, native
from ..rootfs.unpack import ensure_dir, read_file, unpack

if TYPE_CHECKING:
    from ..events import Progress
    from ..oci.image import Image

__all__ = ["SmokeOptions", "image_user", "smoke_test"]

_LISTENING = re.compile(rb"Listening on http://127\.0\.0\.1:(\d+)")
_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (?:ERROR|CRITICAL) \[\d+\] (.*)$")
_ANY_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ \[\d+\] ")
_TRACEBACK_HEADS = ("Traceback (most recent call last)", "During handling of", "The above exception")
_HEALTH_POLL = re.compile(r"access method=GET path=/ route=/ status=503")
_TAIL = 20
_SHOWN = 300  # characters of an answer shown


@dataclass(frozen=True)
class SmokeOptions:
    """Whether and how the smoke test runs: ``sample`` (the bytes of ``--sample-input``, or None) and how long the
    server may take to become healthy."""

    sample: bytes | None = None
    sample_name: str = ""
    timeout_s: float = 600.0

    @classmethod
    def with_sample(cls, path: Path | None) -> SmokeOptions:
        if path is None:
            return cls()
        try:
            return cls(Path(path).read_bytes(), f"--sample-input {path}")
        except OSError as e:
            raise InputError(f"--sample-input {path}: {e.strerror}") from None


def smoke_test(
    image: Image, options: SmokeOptions, progress: Progress, methods: Sequence[str] | None = None
) -> None:
    """Run ``image``'s server and score a sample; raises ``CheckError`` (one line, then the server's last log
    lines) when it does not start or does not answer 200. ``methods`` limits the sandboxes tried (tests)."""
    method = find_method(image.platform.architecture, methods, emulated=True)
    if isinstance(method, str):
        progress.warn(f"smoke test skipped: this machine cannot run the image ({method}); the build goes on")
        return
    with Workdir("ocibuild-smoke-") as work:
        started = time.monotonic()
        layers = [partial(image.open_uncompressed, layer) for layer in image.layers]
        try:
            done = unpack(
                layers, work.root, image.name or "image", owners=not method.userns and os.geteuid() == 0
            )
        except OSError as e:
            raise CheckError(
                f"smoke test: cannot unpack the image into {work.path}: {e.strerror or e}"
            ) from None
        progress.step(
            f"smoke test: unpacked the image ({done.entries} entries, {done.file_bytes / 1e6:.0f} MB) in "
            f"{time.monotonic() - started:.1f} s"
        )
        launch = _launch(image, work.root, method)
        qemu = emulator(image.platform.architecture) if not native(image.platform.architecture) else None
        under = f" under {qemu} (emulated: slow)" if qemu else ""
        progress.step(f"smoke test: starting the server {method.describe(launch.user)}{under}")
        log_path = work.path / "server.log"
        with open(log_path, "wb") as log, Sandbox(method, launch, work.path, log) as proc:
            server = _Server(proc, log_path, options.timeout_s)
            port = server.wait_listening()
            progress.step(f"smoke test: Healthy after {server.wait_healthy(port):.1f} s")
            _score(server, port, options, progress)


def _launch(image: Image, root: Path, method: Method) -> Launch:
    """What the container runtime would start: entrypoint and command, environment, working directory, user."""
    run = image.config.get("config") or {}
    argv = [*_words(run.get("Entrypoint")), *_words(run.get("Cmd"))]
    if not argv:
        raise CheckError("smoke test: the image has neither an Entrypoint nor a Cmd; nothing would start")
    env = dict(str(item).partition("=")[::2] for item in run.get("Env") or [])
    env.setdefault("PATH", DEFAULT_PATH)
    env.update({"OCIBUILD_HOST": "127.0.0.1", "OCIBUILD_PORT": "0"})
    cwd = run.get("WorkingDir") or "/"
    ensure_dir(root, cwd)
    if method.isolated:
        for mount_point in ("/proc", "/dev", "/tmp"):
            ensure_dir(root, mount_point)
    user = image_user(run.get("User") or "", root)
    return Launch(root, argv, env, cwd, user, read_only=True)


def _words(value: object) -> list[str]:
    if isinstance(value, str):  # the shell form
        return ["/bin/sh", "-c", value]
    return [str(v) for v in value or []]


def image_user(user: str, root: Path) -> tuple[int, int] | None:
    """The uid and gid ``user`` (``NAME|UID[:GROUP|GID]``, as a config's ``User``) means in the unpacked image:
    names are looked up in its ``/etc/passwd`` and ``/etc/group``, a uid without an entry gets gid 0 (as Docker
    does); None for an empty ``user`` (root)."""
    if not user:
        return None
    name, _, group = user.partition(":")
    entry = _lookup(root, "/etc/passwd", name)
    if name.isdigit():
        uid = int(name)
    elif entry is not None:
        uid = int(entry[2])
    else:
        raise CheckError(
            f"smoke test: the image's user {name!r} is not in its /etc/passwd; no container starts"
        )
    if not group:
        return uid, int(entry[3]) if entry is not None and entry[3].isdigit() else 0
    if group.isdigit():
        return uid, int(group)
    found = _lookup(root, "/etc/group", group)
    if found is None:
        raise CheckError(
            f"smoke test: the image's group {group!r} is not in its /etc/group; no container starts"
        )
    return uid, int(found[2])


def _lookup(root: Path, path: str, key: str) -> list[str] | None:
    """The ``/etc/passwd``-style line whose name (or, for a number, whose id) is ``key``."""
    text = (read_file(root, path) or b"").decode("utf-8", "replace")
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) >= 3 and fields[2].isdigit() and (fields[0] == key or fields[2] == key):
            return fields
    return None


class _Server:
    """The server process and its log, as the smoke test watches them."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
        self.proc, self.log, self.timeout_s = proc, log, timeout_s
        self.started = time.monotonic()

    def failed(self, what: str) -> CheckError:
        """``what`` went wrong: one line, with the server's own error record if it wrote one, then its log."""
        lines = self.log.read_bytes().decode("utf-8", "replace").splitlines()
        status = self.proc.poll()
        said = _what_the_server_said(lines, status is not None)
        exited = f" (the server exited with status {status})" if status is not None else ""
        shown = [line for line in lines if not _HEALTH_POLL.search(line)][-_TAIL:]
        tail = "\n".join(f"  | {line}" for line in shown) or "  | (nothing)"
        head = f"smoke test failed: {what}{': ' + said if said else ''}{exited}"
        return CheckError(f"{head}\nthe server's last log lines:\n{tail}")

    def check_time(self, what: str) -> None:
        if self.proc.poll() is not None:
            raise self.failed(what)
        if time.monotonic() - self.started > self.timeout_s:
            raise self.failed(f"{what} within {self.timeout_s:.0f} s")

    def wait_listening(self) -> int:
        while True:
            found = _LISTENING.search(self.log.read_bytes())
            if found:
                return int(found.group(1))
            self.check_time("the server did not start listening")
            time.sleep(0.05)

    def wait_healthy(self, port: int) -> float:
        """Seconds from the start until ``GET /`` said ``Healthy``."""
        while True:
            try:
                status, body = _request(port, "GET", "/")
                if status == 200 and body.strip() == b"Healthy":
                    return time.monotonic() - self.started
            except OSError:
                pass
            self.check_time("the server did not become Healthy")
            time.sleep(0.1)


def _what_the_server_said(lines: list[str], exited: bool) -> str:
    """The server's last error record (with the exception its traceback ends in), else, once it exited, its last
    line (what stopped it before it could log: ``cannot start ...``)."""
    records = [(i, m.group(1)) for i, line in enumerate(lines) if (m := _RECORD.match(line))]
    if not records:
        return next((line for line in reversed(lines) if line.strip()), "") if exited else ""
    index, said = records[-1]
    said = re.sub(r"; exiting with status \d+$", "", said)
    exception = _exception_after(lines[index + 1 :])
    if exception and exception not in said:
        said = f"{said.rstrip(' :')}: {exception}"
    return said


def _exception_after(lines: list[str]) -> str:
    """The exception a traceback ends in: its last unindented line before the next log record."""
    found = ""
    for line in lines:
        if _ANY_RECORD.match(line):
            break
        if line.strip() and not line[0].isspace() and not line.startswith(_TRACEBACK_HEADS):
            found = line.strip()
    return found


def _request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    content_type: str = "",
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One request to the server on 127.0.0.1 (never through a proxy)."""
    import http.client  # with ssl: only a smoke test needs them

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _script_sample(port: int) -> bytes | None:
    """The input sample the script declares, as the server publishes it in its OpenAPI document."""
    for path in ("/swagger.json", "/swagger.json?version=3"):
        try:
            status, body = _request(port, "GET", path)
            doc = json.loads(body) if status == 200 else None
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict):
            continue
        schemas = doc.get("definitions") or (doc.get("components") or {}).get("schemas") or {}
        example = (schemas.get("ServiceInput") or {}).get("example") if isinstance(schemas, dict) else None
        if example not in (None, {}, []):
            return json.dumps(example).encode()
    return None


def _score(server: _Server, port: int, options: SmokeOptions, progress: Progress) -> None:
    sample, source = options.sample, options.sample_name
    if sample is None:
        sample, source = _script_sample(port), "the script's input sample"
    if sample is None:
        progress.step(
            "smoke test: init() succeeded; no sample sent (the script declares no input sample: pass "
            "--sample-input FILE to score one)"
        )
        return
    try:
        json.loads(sample)
        content_type = "application/json"
    except ValueError:
        content_type = "application/octet-stream"
    try:
        status, body = _request(
            port, "POST", "/score", sample, content_type, timeout=max(server.timeout_s, 10)
        )
    except OSError as e:
        raise server.failed(f"POST /score with {source} got no answer ({e})") from None
    answer = body.decode("utf-8", "replace").strip().replace("\n", " ")
    if len(answer) > _SHOWN:
        answer = answer[:_SHOWN] + "…"
    if status != 200:
        raise server.failed(f"POST /score with {source} answered {status} {answer}")
    progress.step(f"smoke test: POST /score with {source} answered 200: {answer}")
