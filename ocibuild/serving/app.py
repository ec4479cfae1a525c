"""Routes and their answers, independent of sockets: a ``Request`` in, a ``Response`` out.

What the answers are follows Azure ML's inference server (azureml-inference-server-http), which entry-script users
rely on: ``run()``'s result is sent as ``json.dumps(result)`` (so a returned str becomes a JSON string and ``None``
becomes ``{}``), ``GET /score`` passes the query parameters as a JSON object string, errors are
``{"message": ...}``, and the ``x-request-id`` / ``x-ms-*`` headers are echoed. Where ocibuild's contract differs
it says so: a body that is not JSON is answered 400 here instead of reaching ``run()``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from . import __version__
from .entry import EntryScript
from .log import logger

HEADER_LIMIT = 100  # longest accepted x-request-id (and x-ms-*), as in Azure
RUN_FAILED_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."
INTERNAL_ERROR_MESSAGE = "An unexpected internal error occurred. Check the logs for more info."
STARTING_MESSAGE = "The scoring service is starting: init() has not finished."
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"


class BodyError(Exception):
    """The request body cannot be read; ``status`` is the answer (400, 411, 413, 501)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Request:
    method: str
    path: str
    query: str
    headers: Mapping[str, str]  # case-insensitive lookup (http.client.HTTPMessage)
    # Reads the body; raises BodyError, and answers "100 Continue" first when the client expects it.
    read_body: Callable[[], bytes]


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    close: bool = False  # the connection cannot be reused (e.g. a body was left unread)

    def header(self, name: str) -> str | None:
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)


def json_response(status: int, payload: Any, **kwargs: Any) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), JSON, **kwargs)


def error_response(status: int, message: str, **kwargs: Any) -> Response:
    return json_response(status, {"message": message}, **kwargs)


def encode_result(result: Any) -> bytes:
    """``run()``'s result as JSON bytes, like Azure's ``json.dumps(result)``; numpy values via ``.tolist()``."""
    if result is None:
        result = {}  # Azure answers an empty object for None
    return json.dumps(result, default=_to_builtin).encode("utf-8")


def _to_builtin(obj: Any) -> Any:
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


class App:
    """The routes. ``ready`` is set once ``init()`` has finished; ``draining`` once shutdown has begun."""

    def __init__(
        self,
        entry: EntryScript | None = None,
        *,
        scoring_timeout_ms: int | None = None,
        max_concurrent_runs: int | None = None,
    ) -> None:
        self.entry = entry
        self.ready = threading.Event()
        self.draining = threading.Event()
        self.scoring_timeout_ms = scoring_timeout_ms
        self._run_slots = threading.BoundedSemaphore(max_concurrent_runs) if max_concurrent_runs else None
        self.server_version = os.environ.get("HTTP_X_MS_SERVER_VERSION") or f"ocibuild-serving/{__version__}"

    def handle(self, req: Request) -> Response:
        ids, resp = self._request_ids(req.headers)
        if resp is None:
            try:
                resp = self._route(req)
            except OSError:
                raise  # the connection failed; the server logs it
            except Exception:
                logger.error(
                    "Unhandled error answering %s %s:\n%s", req.method, req.path, traceback.format_exc()
                )
                resp = error_response(500, INTERNAL_ERROR_MESSAGE, close=True)
        resp.headers.append(("x-ms-server-version", self.server_version))
        resp.headers.extend(ids)
        if resp.header("x-ms-run-function-failed") is None:
            resp.headers.append(("x-ms-run-function-failed", "False"))
        return resp

    def _request_ids(self, headers: Mapping[str, str]) -> tuple[list[tuple[str, str]], Response | None]:
        """The echoed id headers, or a 431 answer when one is too long (Azure's rules, including its fallbacks)."""
        request_id = _clean(headers.get("x-request-id")) or str(uuid.uuid4())
        if len(request_id) > HEADER_LIMIT:
            return [], error_response(431, f"x-request-id must not exceed {HEADER_LIMIT} characters")
        ids = [("x-request-id", request_id)]
        legacy = _clean(headers.get("x-ms-request-id"))
        client = _clean(headers.get("x-ms-client-request-id"))
        if legacy:
            client = client or legacy
        else:
            legacy = client or request_id
        if len(legacy) > HEADER_LIMIT or len(client) > HEADER_LIMIT:
            message = f"x-ms-request-id and x-ms-client-request-id must not exceed {HEADER_LIMIT} characters"
            return ids, error_response(431, message)
        ids.append(("x-ms-request-id", legacy))
        if client:
            ids.append(("x-ms-client-request-id", client))
        trace_id = _clean(headers.get("TraceId"))
        if trace_id:
            ids.append(("TraceId", trace_id))
        return ids, None

    def _route(self, req: Request) -> Response:
        if req.path == "/score":
            return self._score(req)
        if req.path in ("/", "/health/live", "/health/ready"):
            if req.method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return self._health(req.path)
        return error_response(404, f"No route for {req.path}; see /score and /")

    def _health(self, path: str) -> Response:
        """Liveness answers whenever the process serves; ``/`` and readiness only once ``init()`` is done."""
        if path != "/health/live":
            if not self.ready.is_set():
                return error_response(503, STARTING_MESSAGE, headers=[("Retry-After", "1")])
            if path == "/health/ready" and self.draining.is_set():
                return error_response(503, "The scoring service is shutting down.")
        return Response(200, b"Healthy", TEXT)

    def _score(self, req: Request) -> Response:
        if req.method == "OPTIONS":
            return Response(200, headers=[("Allow", "GET, POST, OPTIONS")])
        if req.method not in ("GET", "POST"):
            return _not_allowed("GET, POST, OPTIONS")
        if not self.ready.is_set():
            return error_response(503, STARTING_MESSAGE, headers=[("Retry-After", "1")])
        if req.method == "GET":
            return self._invoke(json.dumps(_query_params(req.query)), req.headers)
        try:
            body = req.read_body()
        except BodyError as exc:
            return error_response(exc.status, exc.message, close=True)
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            return error_response(400, f"Input cannot be decoded as UTF-8: {exc}")
        try:
            json.loads(text)
        except ValueError as exc:
            return error_response(400, f"Input is not valid JSON: {exc}")
        return self._invoke(text, req.headers)

    def _invoke(self, raw_data: str, headers: Mapping[str, str]) -> Response:
        """Call ``run()``: its result as JSON, or a 500 whose details go to the log only."""
        try:
            result, elapsed_ms = self._call_run(raw_data, headers)
        except _RunTimeout:
            message = f"Scoring timeout after {self.scoring_timeout_ms} ms"
            return error_response(500, message, headers=_failed_header())
        except BaseException:
            logger.error("run() raised an exception:\n%s", traceback.format_exc().rstrip())
            return error_response(500, RUN_FAILED_MESSAGE, headers=_failed_header())
        try:
            body = encode_result(result)
        except (TypeError, ValueError) as exc:
            logger.error("run() returned a %s that cannot be sent as JSON: %s", type(result).__name__, exc)
            return error_response(500, INTERNAL_ERROR_MESSAGE)
        return Response(200, body, JSON, headers=[("x-ms-run-fn-exec-ms", f"{elapsed_ms:.3f}")])

    def _call_run(self, raw_data: str, headers: Mapping[str, str]) -> tuple[Any, float]:
        """``run()``'s result and its duration in ms, within the concurrency limit and the timeout if set."""
        assert self.entry is not None
        entry = self.entry
        slots = self._run_slots

        def call() -> tuple[Any, float]:
            try:
                start = time.perf_counter()
                result = entry.run(raw_data, headers)
                return result, (time.perf_counter() - start) * 1000
            finally:
                if slots is not None:
                    slots.release()  # only when run() is really done, even after a timeout

        if slots is not None:
            slots.acquire()
        if self.scoring_timeout_ms is None:
            return call()
        return _run_with_timeout(call, self.scoring_timeout_ms)


class _RunTimeout(Exception):
    pass


def _run_with_timeout(call: Callable[[], Any], timeout_ms: int) -> Any:
    """Run ``call`` on its own thread and give up waiting after ``timeout_ms``; Python cannot stop the thread."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = call()
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="run", daemon=True)
    try:
        thread.start()
    except RuntimeError:  # cannot start a thread: run it here, without the timeout
        target()
    thread.join(timeout_ms / 1000)
    if thread.is_alive():
        logger.error(
            "run() did not finish within SCORING_TIMEOUT_MS=%d; it keeps running in the background",
            timeout_ms,
        )
        raise _RunTimeout()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _query_params(query: str) -> dict[str, Any]:
    """Query parameters as Azure passes them: each value parsed as JSON when it is, repeated keys as a list."""
    parsed: dict[str, Any] = {}
    for key, values in parse_qs(query, keep_blank_values=True).items():
        decoded = [_json_or_str(v) for v in values]
        parsed[key] = decoded[0] if len(decoded) == 1 else decoded
    return parsed


def _json_or_str(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value


def _clean(value: str | None) -> str:
    """A header value safe to echo: no line breaks."""
    if not value:
        return ""
    return value.replace("\r", " ").replace("\n", " ").strip()


def _failed_header() -> list[tuple[str, str]]:
    return [("x-ms-run-function-failed", "True")]


def _not_allowed(allow: str) -> Response:
    return error_response(405, "Method not allowed", headers=[("Allow", allow)])
