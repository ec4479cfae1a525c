"""HTTP/1.1 on the standard library: framing, request bodies, keep-alive, the access log and draining.

A thread per connection (``socketserver.ThreadingMixIn``) so slow ``run()`` calls overlap. The measured pitfalls of
a plain ``ThreadingHTTPServer`` (measured here) are handled here: the listen backlog is raised, ``100 Continue`` is
written unbuffered and only after the body is known to be acceptable (so an oversized upload is refused before it
is sent), and ``Connection: close`` is echoed. Routing and answers live in ``app``; this module never looks at
what a body means.
"""

from __future__ import annotations

import collections
import http.server
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from . import __version__
from .app import App, BodyError, Request, Response, error_response, route_of
from .log import log_request, logger

_CHUNK = 1 << 16
# After refusing a body we leave unread, keep reading (and discarding) this long before closing, so the client
# sees our answer instead of a connection reset (Apache's "lingering close").
_LINGER_S = 2.0
# How long the next request waits for the one being answered before they run side by side (see FifoGate).
GATE_OVERFLOW_S = 0.02


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket for ``host`` (IPv4 or IPv6), non-blocking so several processes can share it."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
        # Worker processes share this socket; the ones that lose a race for a connection must not block in accept().
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class InFlight:
    """Counts requests being answered, so shutdown can wait for them."""

    def __init__(self) -> None:
        self._count = 0
        self._cond = threading.Condition()

    def __enter__(self) -> None:
        with self._cond:
            self._count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._count -= 1
            if self._count == 0:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._count == 0, timeout)

    @property
    def count(self) -> int:
        return self._count


class FifoGate:
    """Lets requests be answered one at a time in arrival order, unless the one being answered takes long.

    With a thread per connection and many busy keep-alive connections, every thread competes for the GIL and
    the interpreter does not hand it over in any fair order: at 64 connections a few requests waited 10-20x the
    median (bench/serving). Answering one request at a time in FIFO order, as a gunicorn sync
    worker does through its listen queue, gives every request the same wait. But ``run()`` may block on I/O (or
    sleep), and then serialising would waste the process: so when the request at the head of the queue has
    waited ``overflow_s`` without the gate being handed to it, it goes in anyway, and so on for the next one.
    Fast requests are served strictly in order; slow ones overlap after ``overflow_s`` each.
    """

    class _Waiter:
        __slots__ = ("granted", "wake")

        def __init__(self) -> None:
            self.granted = False
            self.wake = threading.Event()

    def __init__(self, overflow_s: float) -> None:
        self.overflow_s = overflow_s
        self._lock = threading.Lock()
        self._busy = 0
        self._queue: collections.deque[FifoGate._Waiter] = collections.deque()

    def __enter__(self) -> None:
        with self._lock:
            if not self._busy and not self._queue:
                self._busy = 1
                return
            me = self._Waiter()
            self._queue.append(me)
        while True:
            with self._lock:
                if me.granted:
                    return
                head = self._queue[0] is me
            woke = me.wake.wait(self.overflow_s if head else None)
            with self._lock:
                if me.granted:
                    return
                if head and not woke and self._queue[0] is me:  # nobody handed over in time: go in alongside
                    self._queue.popleft()
                    self._busy += 1
                    if self._queue:
                        self._queue[0].wake.set()  # the next one starts its own wait as head
                    return
                me.wake.clear()

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            if self._queue:
                nxt = self._queue.popleft()
                nxt.granted = True
                nxt.wake.set()
                if self._queue:
                    self._queue[0].wake.set()
            else:
                self._busy -= 1


class ScoringServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """The threaded server on an already listening socket (``listen()``)."""

    daemon_threads = True  # idle keep-alive connections must not keep the process alive
    block_on_close = False  # draining is bounded by InFlight.wait_idle instead

    def __init__(
        self, sock: socket.socket, app: App, max_request_bytes: int, keepalive_timeout_s: float
    ) -> None:
        # BaseServer, not TCPServer.__init__: the socket exists already (and is maybe shared with other workers).
        socketserver.BaseServer.__init__(self, sock.getsockname()[:2], RequestHandler)
        self.socket = sock
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        self.in_flight = InFlight()
        self.gate = FifoGate(GATE_OVERFLOW_S)

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, ConnectionError):  # the client went away; nothing to fix here
            logger.info("Connection from %s closed early: %s", client_address[0], exc)
        else:
            logger.exception("Error on the connection from %s", client_address[0])


class RequestHandler(http.server.BaseHTTPRequestHandler):
    server: ScoringServer
    protocol_version = "HTTP/1.1"  # keep-alive, and "Expect: 100-continue" is only honoured on 1.1
    default_request_version = "HTTP/1.0"  # so even an unparsable request line gets a status line back
    _expects_continue = False
    _body_read = False

    def version_string(self) -> str:
        return f"ocibuild-serving/{__version__}"

    def setup(self) -> None:
        self.timeout = self.server.keepalive_timeout_s
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    # -- dispatch -----------------------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def handle_expect_100(self) -> bool:
        """Defer ``100 Continue`` until the body is wanted and fits (see ``_read_body``)."""
        self._expects_continue = True
        return True

    def _dispatch(self) -> None:
        start = time.perf_counter()
        metrics = self.server.app.metrics
        path, _, query = self.path.partition("?")
        status = 500  # if answering fails half-way (the connection broke), that is what gets counted
        resp: Response | None = None
        metrics.started()
        try:
            with self.server.in_flight:
                self._body_read = False
                req = Request(
                    self.command,
                    path,
                    query,
                    self.headers,
                    self._read_body,
                    self.client_address[0],
                    body_chunks=self._body_chunks,
                    client_port=self.client_address[1],
                    server=self.server.server_address[:2],
                    protocol=self.request_version,
                )
                with self.server.gate:
                    resp = self.server.app.handle(req)
                    status = resp.status
                    if not self._body_read and self._has_body():
                        resp.close = True  # the unread body would be taken for the next request
                    self._send(resp)
        finally:
            seconds = time.perf_counter() - start
            route = route_of(path)
            metrics.finished(route, status, seconds)
            log_request(self.command, path, route, status, seconds * 1000, _request_id(resp) if resp else "")
        if self.close_connection and not self._body_read and self._has_body():
            self._linger()
        self._expects_continue = False

    def _send(self, resp: Response) -> None:
        if resp.close or self.server.app.draining.is_set():
            self.close_connection = True
        self.send_response(resp.status)
        if resp.content_type:
            self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        for name, value in resp.headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD" and resp.body:
            self.wfile.write(resp.body)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Framing errors found by ``http.server`` (bad request line, header limits) as JSON, then close."""
        self.close_connection = True
        resp = error_response(code, message or self.responses.get(code, ("Error",))[0])
        self.send_response(code)  # the standard phrase: ``message`` may hold bytes the status line can't
        self.send_header("Content-Type", resp.content_type or "")
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Connection", "close")
        self.end_headers()
        if getattr(self, "command", None) != "HEAD" and code >= 200 and code not in (204, 304):
            self.wfile.write(resp.body)
        path = _path_of(self)
        log_request(getattr(self, "command", None) or "-", path, route_of(path), code, 0.0, "")

    def log_message(self, format: str, *args: Any) -> None:
        # http.server's own messages (timeouts, errors); successful requests are logged by _dispatch.
        logger.debug("%s: %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass

    # -- request bodies -----------------------------------------------------------------------------------------

    def _has_body(self) -> bool:
        length = self.headers.get("Content-Length", "").strip()
        return bool(self.headers.get("Transfer-Encoding")) or (length not in ("", "0"))

    def _read_body(self) -> bytes:
        """The whole body, refusing it before reading (and before ``100 Continue``) when it cannot fit."""
        try:
            if self._chunked():
                body = b"".join(self._chunks(self.server.max_request_bytes))
            else:
                length = self._accepted_length()
                body = self.rfile.read(length) if length else b""
                if len(body) < length:
                    raise BodyError(400, f"Request body ended after {len(body)} of {length} bytes")
        except socket.timeout:  # noqa: UP041 - only an alias of TimeoutError from 3.10; images may have 3.9
            raise BodyError(408, "Timed out reading the request body") from None
        self._body_read = True
        return body

    def _body_chunks(self) -> Iterator[bytes]:
        """The body in pieces of at most 64 KiB, with ``_read_body``'s checks, for bodies spooled to disk."""
        try:
            if self._chunked():
                yield from self._chunks(self.server.max_request_bytes)
            else:
                left = self._accepted_length()
                while left:
                    data = self.rfile.read(min(_CHUNK, left))
                    if not data:
                        raise BodyError(400, "Request body ended before its Content-Length")
                    left -= len(data)
                    yield data
        except socket.timeout:  # noqa: UP041 - only an alias of TimeoutError from 3.10; images may have 3.9
            raise BodyError(408, "Timed out reading the request body") from None
        self._body_read = True

    def _chunked(self) -> bool:
        """Whether the body is chunked (then ``100 Continue`` is sent); 501 for other transfer encodings."""
        encoding = self.headers.get("Transfer-Encoding", "").strip().lower()
        if not encoding:
            return False
        if encoding != "chunked":
            raise BodyError(501, f"Transfer-Encoding {encoding!r} is not supported; send chunked or plain")
        self._continue()
        return True

    def _accepted_length(self) -> int:
        """The Content-Length, once it is known to fit (413 before ``100 Continue`` otherwise)."""
        length = self._content_length()
        limit = self.server.max_request_bytes
        if length > limit:
            raise BodyError(413, f"Request body of {length} bytes exceeds the limit of {limit} bytes")
        self._continue()
        return length

    def _content_length(self) -> int:
        values = self.headers.get_all("Content-Length") or []
        distinct = {v.strip() for v in values}
        if not distinct:
            return 0
        if len(distinct) > 1 or not next(iter(distinct)).isdigit():
            raise BodyError(400, f"Invalid Content-Length: {', '.join(values)}")
        return int(next(iter(distinct)))

    def _continue(self) -> None:
        if self._expects_continue:
            self._expects_continue = False
            self.send_response_only(100)
            self.end_headers()  # flushes at once: wfile is unbuffered

    def _chunks(self, limit: int) -> Iterator[bytes]:
        """The data of a chunked body, chunk by chunk, then its trailer consumed; 413 past ``limit`` bytes."""
        total = 0
        while True:
            size = self._chunk_size()
            if size == 0:
                break
            total += size
            if total > limit:
                raise BodyError(413, f"Request body exceeds the limit of {limit} bytes")
            yield from self._chunk_data(size)
        self._skip_trailer()

    def _chunk_size(self) -> int:
        """The size on the next chunk's size line (its extensions ignored)."""
        line = self.rfile.readline(1024)
        if not line.endswith(b"\n"):
            raise BodyError(400, "Malformed chunked body: chunk size line")
        size_text = line.split(b";", 1)[0].strip()
        try:
            return int(size_text, 16)
        except ValueError:
            raise BodyError(400, "Malformed chunked body: chunk size is not hexadecimal") from None

    def _chunk_data(self, size: int) -> Iterator[bytes]:
        """One chunk's data, in pieces when it is huge, then the line break that ends it."""
        while size:
            data = self.rfile.read(min(size, _CHUNK))
            if not data:
                raise BodyError(400, "Malformed chunked body: chunk shorter than its size")
            size -= len(data)
            yield data
        if self.rfile.readline(3).strip():
            raise BodyError(400, "Malformed chunked body: chunk shorter than its size")

    def _skip_trailer(self) -> None:
        """Read the trailer fields that follow the last chunk, up to the empty line."""
        while True:
            line = self.rfile.readline(65537)
            if not line.endswith(b"\n"):
                raise BodyError(400, "Malformed chunked body: trailer")
            if not line.strip():
                break

    def _linger(self) -> None:
        """Half-close, then discard what the client still sends for a moment, so it can read our answer."""
        try:
            self.connection.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER_S
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                if not self.connection.recv(_CHUNK):
                    break
        except OSError:
            pass


def _request_id(resp: Response) -> str:
    return resp.header("x-request-id") or ""


def _path_of(handler: RequestHandler) -> str:
    path = getattr(handler, "path", None)
    return path.partition("?")[0] if path else "-"
