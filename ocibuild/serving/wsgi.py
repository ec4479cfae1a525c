"""Flask's own ``Request`` for ``@rawhttp`` scripts, when the image has Flask or werkzeug installed.

Azure's server hands ``run(request)`` Flask's ``request``; a script's requirements often pull Flask and werkzeug in
(``azureml-inference-server-http``, ``azureml-defaults``), and then the script gets the real thing instead of
``rawhttp.RawRequest``: ``flask.Request`` when Flask imports, else ``werkzeug.wrappers.Request`` (which Flask's
subclasses) from werkzeug 2.0 on (before, only Flask's had ``get_json``). They are built from a WSGI environ
(PEP 3333) whose ``wsgi.input`` is the body, already read and bounded by the server (``CONTENT_LENGTH`` is its
true size, also for chunked uploads), so werkzeug parses forms and files itself, with its own limits and temporary
files. Both are imported lazily, once per process; one that is missing, fails to import or cannot build a request
leaves the standard-library ``RawRequest`` in use.
"""

from __future__ import annotations

import importlib
import io
import sys
from collections.abc import Iterable
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from .log import logger

# Where the request class is looked for, in order: the module and the attribute.
CANDIDATES = (("flask", "Request"), ("werkzeug.wrappers", "Request"))
_UNSET: Any = object()
_request_class: Any = _UNSET


def request_class() -> type | None:
    """The Flask/werkzeug ``Request`` class to build, or None; looked up on first use and remembered."""
    global _request_class
    if _request_class is _UNSET:
        _request_class = _find_request_class()
    return _request_class


def disable(reason: str) -> None:
    """Stop using werkzeug for the rest of the process (building a request with it failed)."""
    global _request_class
    if _request_class is not None:
        logger.warning("@rawhttp: %s; using the standard-library request object from now on", reason)
    _request_class = None


def _find_request_class() -> type | None:
    for module_name, attr in CANDIDATES:
        top = module_name.split(".")[0]
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except ModuleNotFoundError as exc:
            if exc.name == top or (exc.name or "").startswith(top + "."):
                continue  # simply not installed
            logger.warning("@rawhttp: %s is installed but does not import (%s); not using it", top, exc)
            continue
        except Exception as exc:  # a broken install may raise anything while importing
            logger.warning(
                "@rawhttp: %s is installed but does not import (%s: %s); not using it",
                top,
                type(exc).__name__,
                exc,
            )
            continue
        version = _version(top)
        if not isinstance(cls, type) or not callable(getattr(cls, "get_json", None)):
            # werkzeug before 2.0: only Flask's subclass had get_json; the imitation has more than this
            logger.info(
                "@rawhttp: %s.%s (%s %s) has no get_json(); not using it", module_name, attr, top, version
            )
            continue
        logger.info("@rawhttp requests are %s.%s objects (%s %s)", cls.__module__, cls.__name__, top, version)
        return cls
    logger.info("@rawhttp requests are standard-library imitations of Flask's Request (no Flask or werkzeug)")
    return None


def _version(distribution: str) -> str:
    try:
        from importlib.metadata import version

        return version(distribution)
    except Exception:
        return getattr(sys.modules.get(distribution), "__version__", "version unknown")


class BoundedInput(io.RawIOBase):
    """At most ``length`` bytes of ``stream`` from where it stands: the body as ``wsgi.input``."""

    def __init__(self, stream: IO[bytes], length: int) -> None:
        self._stream = stream
        self._left = length

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._left <= 0:
            return 0
        view = memoryview(buffer).cast("B")
        data = self._stream.read(min(len(view), self._left))
        n = len(data)
        view[:n] = data
        self._left -= n
        return n

    def readline(self, size: int | None = -1) -> bytes:
        if self._left <= 0:
            return b""
        limit = self._left if size is None or size < 0 else min(size, self._left)
        line = self._stream.readline(limit)
        self._left -= len(line)
        return line


def environ(
    *,
    method: str,
    path: str,
    query: str,
    headers: Iterable[tuple[str, str]],
    body: IO[bytes],
    length: int,
    client: tuple[str, int],
    server: tuple[str, int],
    protocol: str,
) -> dict[str, Any]:
    """The WSGI environ of a request whose body (``length`` bytes) is readable from ``body``.

    ``PATH_INFO`` is the percent-decoded path as Latin-1 text (PEP 3333's "bytes in a str"); header names become
    ``HTTP_*`` keys, repeated ones joined with commas; a name holding ``_`` is dropped, as gunicorn and nginx
    do, because it would be indistinguishable from ``-`` there (``Content_Length`` must not become the length).
    ``Transfer-Encoding`` is dropped: the server has already decoded a chunked body.
    """
    env: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(length) if length or method in ("POST", "PUT", "PATCH") else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": BoundedInput(body, length),
        "wsgi.input_terminated": True,  # already bounded: werkzeug uses it as it is
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers:
        key = name.upper().replace("-", "_")
        if "_" in name or key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue
        value = value.replace("\r", " ").replace("\n", " ")  # http.server keeps folded lines' breaks
        if key != "CONTENT_TYPE":
            key = "HTTP_" + key
        env[key] = f"{env[key]},{value}" if key in env else value
    return env
