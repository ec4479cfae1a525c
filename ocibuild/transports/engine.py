"""``EnginePublisher``: load an image straight into a running Docker or podman engine (``POST /images/load``).

What ko's ``--local`` and Jib's ``dockerBuild`` do: the tarball is produced as a stream and sent chunked, so no
file is written in between and memory stays flat. The engine is found as Docker's CLI finds it (``DOCKER_HOST``),
then podman's (``CONTAINER_HOST``), then the usual sockets (the caller passes what the environment says). Only
plain local sockets and tcp:// are supported.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from ..errors import EngineError, UsageError
from ..events import Progress
from ..oci.archive import archive_chunks
from ..oci.digest import Digest
from ..oci.image import Entry, Image, Tagged
from ..oci.name import ImageName

SEND_CHUNK = 1 << 20


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 600):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def engine_candidates(hosts: Sequence[str] = (), runtime_dir: str | None = None) -> list[str]:
    """Where to look for an engine: ``hosts`` (``$DOCKER_HOST``, ``$CONTAINER_HOST``) first, then Docker's socket,
    then podman's (the user's own under ``runtime_dir``, then the system's)."""
    found = [*hosts, "unix:///var/run/docker.sock"]
    if runtime_dir:
        found.append(f"unix://{runtime_dir}/podman/podman.sock")
    found.append("unix:///run/podman/podman.sock")
    return found


def _connect(url: str) -> http.client.HTTPConnection | None:
    u = urlparse(url)
    if u.scheme == "unix":
        if not os.path.exists(u.path):
            return None
        return _UnixConnection(u.path)
    if u.scheme in ("tcp", "http"):
        return http.client.HTTPConnection(u.hostname or "localhost", u.port or 2375, timeout=600)
    raise EngineError(
        f"engine address {url}: only unix:// and tcp:// are supported; unset it or use a local socket"
    )


def _rechunk(chunks: Iterable[bytes]) -> Iterator[bytes]:
    buf = bytearray()
    for c in chunks:
        buf += c
        if len(buf) >= SEND_CHUNK:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


@dataclass(frozen=True)
class EnginePublisher:
    """``--load``: the image, under ``names``, into the first engine that answers."""

    names: tuple[ImageName, ...] = ()
    hosts: tuple[str, ...] = ()
    runtime_dir: str | None = None
    mtime: int = 0
    destination: str = "--load"

    def check(self, entry: Entry) -> None:
        if not isinstance(entry, Image) or not entry.is_container_image:
            raise UsageError(
                "--load takes a single-platform image; write an index with --oci-layout or --push"
            )

    def publish(self, entry: Entry, progress: Progress) -> Digest:
        tagged = [Tagged(entry, n) for n in self.names] or [Tagged(entry)]
        progress.step(load_into_engine(tagged, engine_candidates(self.hosts, self.runtime_dir), self.mtime))
        return entry.digest


def load_into_engine(images: Sequence[Tagged], candidates: Sequence[str], mtime: int = 0) -> str:
    """Send the images to the first of ``candidates`` that answers; returns the engine's own summary (e.g.
    ``Loaded image: name:tag``)."""
    for url in candidates:
        conn = _connect(url)
        if conn is None:
            continue
        try:
            return _load(conn, images, url, mtime)
        except (ConnectionRefusedError, FileNotFoundError):
            continue
        finally:
            conn.close()
    raise EngineError(
        "no Docker or podman engine is reachable (tried DOCKER_HOST, CONTAINER_HOST, /var/run/docker.sock, the "
        "podman sockets); start one, or use --output FILE and load it yourself"
    )


def _load(conn: http.client.HTTPConnection, images: Sequence[Tagged], url: str, mtime: int) -> str:
    conn.putrequest("POST", "/images/load?quiet=0")
    conn.putheader("Content-Type", "application/x-tar")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for chunk in _rechunk(archive_chunks(images, mtime)):
            conn.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass  # the engine stopped reading: its answer says why
    resp = conn.getresponse()
    body = resp.read().decode("utf-8", "replace")
    messages, errors = [], []
    for line in body.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            messages.append(line.strip())
            continue
        if isinstance(doc, dict):
            if doc.get("error") or doc.get("errorDetail"):
                errors.append(str(doc.get("error") or doc["errorDetail"].get("message")))
            elif doc.get("stream"):
                messages.append(str(doc["stream"]).strip())
            elif doc.get("message"):  # podman / API errors
                (errors if resp.status >= 400 else messages).append(str(doc["message"]))
    if resp.status >= 400 or errors:
        raise EngineError(
            f"the engine at {url} refused the image: {'; '.join(errors or messages) or resp.status}"
        )
    return "; ".join(m for m in messages if m) or f"loaded into the engine at {url}"
