"""Routes and their answers, independent of sockets: a ``Request`` in, a ``Response`` out.

What the answers are follows Azure ML's inference server (azureml-inference-server-http 1.5.1), which entry-script
users rely on: ``run()``'s result is sent as ``json.dumps(result)`` (so a returned str becomes a JSON string and
``None`` becomes ``{}``), ``GET /score`` passes the query parameters as a JSON object string, errors are
``{"message": ...}``, the ``x-request-id`` / ``x-ms-*`` headers are echoed, and CORS follows ``AML_CORS_ORIGINS``
as flask-cors does there. Where ocibuild's contract differs it says so: a body that is not JSON is answered 400
here instead of reaching ``run()`` (except for ``@rawhttp`` scripts, which get every body), and a ``run()`` slower
than ``SCORING_TIMEOUT_MS`` is a 504 (Azure: 500). The KServe V2 routes under ``/v2`` answer errors as
``{"error": ...}`` (the protocol's shape) and map inference requests onto the same ``run()`` (see ``v2``).
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import parse_qs

from . import __version__, multipart, v2, wsgi
from .entry import OBJECT, RAW, EntryScript, InputError
from .log import logger
from .metrics import Metrics
from .multipart import MultipartError
from .rawhttp import is_response, make_request, response_parts
from .swagger import Swagger, SwaggerError

HEADER_LIMIT = 100  # longest accepted x-request-id (and x-ms-*), as in Azure
RUN_FAILED_MESSAGE = "An unexpected error occurred in scoring script. Check the logs for more info."
INTERNAL_ERROR_MESSAGE = "An unexpected internal error occurred. Check the logs for more info."
STARTING_MESSAGE = "The scoring service is starting: init() has not finished."
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"
_FIXED_ROUTES = frozenset(
    ("/", "/health/live", "/health/ready", "/score", "/swagger.json", "/metrics", "/v2", "/v2/health/live",
     "/v2/health/ready")
)  # fmt: skip


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
    client: str = ""  # the peer's address
    # The body in pieces, with read_body's checks (for bodies spooled to disk); None: read_body in one piece.
    body_chunks: Callable[[], Iterable[bytes]] | None = None
    client_port: int = 0
    server: tuple[str, int] = ("localhost", 0)  # the listening address, for a WSGI environ
    protocol: str = "HTTP/1.1"

    def spool_body(self) -> tuple[IO[bytes], int]:
        """The body in a temporary file (in memory up to ``multipart.SPOOL_BYTES``) at its start, and its size.

        Raises ``BodyError`` as ``read_body`` does, and a 500 one when the temporary file cannot be written.
        """
        spool = tempfile.SpooledTemporaryFile(max_size=multipart.SPOOL_BYTES)
        try:
            chunks = self.body_chunks() if self.body_chunks is not None else [self.read_body()]
            for chunk in chunks:
                try:
                    spool.write(chunk)
                except OSError as exc:
                    raise BodyError(
                        500, f"Cannot store the request body in a temporary file: {exc}"
                    ) from None
            size = spool.tell()
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool, size


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


def v2_error(status: int, message: str, **kwargs: Any) -> Response:
    return json_response(status, {"error": message}, **kwargs)


def route_of(path: str) -> str:
    """The route template a path belongs to (``/v2/models/{name}/infer``), or ``other``: metrics and log label."""
    if path in _FIXED_ROUTES:
        return path
    if path.startswith("/v2/models/"):
        rest = path[len("/v2/models/") :].split("/")[1:]
        if rest[:1] == ["versions"] and len(rest) >= 2:
            rest = rest[2:]
        if not rest:
            return "/v2/models/{name}"
        if rest in (["ready"], ["infer"]):
            return f"/v2/models/{{name}}/{rest[0]}"
    return "other"


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
        cors_origins: tuple[str, ...] = (),
        model_name: str = "model",
        model_version: str = "",
        metrics: Metrics | None = None,
    ) -> None:
        self.entry = entry
        self.ready = threading.Event()
        self.draining = threading.Event()
        self.scoring_timeout_ms = scoring_timeout_ms
        self._run_slots = threading.BoundedSemaphore(max_concurrent_runs) if max_concurrent_runs else None
        self.server_version = os.environ.get("HTTP_X_MS_SERVER_VERSION") or f"ocibuild-serving/{__version__}"
        self.cors_origins = cors_origins
        self.model_name = model_name
        self.model_version = model_version
        self.metrics = metrics or Metrics()
        self.swagger: Swagger | None = None

    def prepare(self) -> None:
        """What needs the loaded script and its finished ``init()``: the OpenAPI documents (never fatal)."""
        assert self.entry is not None
        from . import swagger

        if self.entry.style == RAW:
            wsgi.request_class()  # import Flask/werkzeug now, if the image has them, not on the first request
        dirs = [os.getcwd(), os.path.dirname(self.entry.path)]
        try:
            self.swagger = swagger.build(self.entry.run_function, self.entry.module, dirs, os.environ)
            logger.info("Swagger documents for versions: %s", ", ".join(self.swagger.supported) or "none")
        except Exception:
            logger.warning("Cannot build /swagger.json:\n%s", traceback.format_exc().rstrip())

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
        if self.cors_origins:
            resp.headers.extend(self._cors_headers(req))
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

    def _cors_headers(self, req: Request) -> list[tuple[str, str]]:
        """flask-cors's answer as Azure configures it (``AML_CORS_ORIGINS``; methods GET and POST)."""
        origin = req.headers.get("Origin")
        if not origin:
            return []
        if "*" in self.cors_origins:
            out = [("Access-Control-Allow-Origin", "*")]
        elif origin in self.cors_origins:
            out = [("Access-Control-Allow-Origin", origin), ("Vary", "Origin")]
        else:
            return []
        if _is_preflight(req):
            requested = req.headers.get("Access-Control-Request-Headers")
            if requested:
                out.append(
                    ("Access-Control-Allow-Headers", ", ".join(h.strip() for h in requested.split(",")))
                )
            out.append(("Access-Control-Allow-Methods", "GET, POST"))
        return out

    def _route(self, req: Request) -> Response:
        path = req.path
        if path == "/score":
            return self._score(req)
        if path in ("/", "/health/live", "/health/ready"):
            if req.method not in ("GET", "HEAD"):
                return self._preflight(req) or _not_allowed("GET, HEAD")
            return self._health(path)
        if path == "/swagger.json":
            if req.method not in ("GET", "HEAD"):
                return self._preflight(req) or _not_allowed("GET, HEAD")
            return self._swagger(req)
        if path == "/metrics":
            if req.method not in ("GET", "HEAD"):
                return _not_allowed("GET, HEAD")
            return Response(200, self.metrics.render().encode("utf-8"), PROMETHEUS)
        if path == "/v2" or path.startswith("/v2/"):
            return self._preflight(req) or self._v2(req)
        return error_response(404, f"No route for {path}; see /score, /swagger.json, /metrics and /v2")

    def _preflight(self, req: Request) -> Response | None:
        """A CORS preflight is answered 200 on every route when CORS is on (its headers come in ``handle``)."""
        if self.cors_origins and _is_preflight(req):
            return Response(200, b"", "text/html; charset=utf-8")
        return None

    def _health(self, path: str) -> Response:
        """Liveness answers whenever the process serves; ``/`` and readiness only once ``init()`` is done."""
        if path != "/health/live":
            if not self.ready.is_set():
                return error_response(503, STARTING_MESSAGE, headers=[("Retry-After", "1")])
            if path == "/health/ready" and self.draining.is_set():
                return error_response(503, "The scoring service is shutting down.")
        return Response(200, b"Healthy", TEXT)

    def _swagger(self, req: Request) -> Response:
        if not self.ready.is_set():
            return error_response(503, STARTING_MESSAGE, headers=[("Retry-After", "1")])
        if self.swagger is None:
            return error_response(404, "No swagger document: building it failed (see the log).")
        version = parse_qs(req.query, keep_blank_values=True).get("version", [None])[0]
        try:
            return json_response(200, self.swagger.get(version))
        except SwaggerError as exc:
            return error_response(404, str(exc))

    # -- /score ---------------------------------------------------------------------------------------------------

    def _score(self, req: Request) -> Response:
        entry = self.entry
        raw = entry is not None and entry.style == RAW
        if req.method == "OPTIONS" and (not raw or _is_preflight(req)):
            return Response(200, headers=[("Allow", "GET, POST, OPTIONS")])
        if req.method not in ("GET", "POST", "OPTIONS"):
            return _not_allowed("GET, POST, OPTIONS")
        if not self.ready.is_set():
            return error_response(503, STARTING_MESSAGE, headers=[("Retry-After", "1")])
        assert entry is not None
        if raw:
            return self._score_raw(req)
        parsed = _json_input(req)
        if isinstance(parsed, Response):
            return parsed
        data, text = parsed
        if entry.style == OBJECT:
            try:
                return self._score_answer(self._invoke(entry.arguments(data), req.headers))
            except InputError as exc:
                return error_response(400, str(exc))
        return self._score_answer(self._invoke(text, req.headers))

    def _score_raw(self, req: Request) -> Response:
        """/score for a ``@rawhttp`` ``run()``: it gets the request object, whatever the body holds."""
        try:
            request, close = self._raw_request(req)
        except BodyError as exc:
            return error_response(exc.status, exc.message, close=True)
        except MultipartError as exc:
            if exc.status >= 500:
                logger.error("Cannot answer a multipart request: %s", exc.message)
            return error_response(exc.status, exc.message)
        return self._score_answer(self._invoke(request, req.headers, close))

    def _raw_request(self, req: Request) -> tuple[Any, Callable[[], None]]:
        """The request object for a ``@rawhttp`` ``run()`` and what closes it after the call (see ``rawhttp``).

        A multipart body goes to a temporary file as it arrives (memory stays bounded); others are read whole.
        """
        pairs = list(req.headers.items())
        mimetype = (req.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        body: bytes | IO[bytes]
        if mimetype == "multipart/form-data":
            body, length = req.spool_body()
        else:
            body = req.read_body()
            length = len(body)
        try:
            return make_request(
                method=req.method, path=req.path, query=req.query, headers=pairs, body=body, length=length,
                client=(req.client, req.client_port), server=req.server, protocol=req.protocol,
            )  # fmt: skip
        except BaseException:
            if not isinstance(body, bytes):
                body.close()
            raise

    def _score_answer(self, outcome: Response | tuple[Any, float]) -> Response:
        """``run()``'s outcome as the /score answer: JSON, or the response object ``run()`` returned."""
        if isinstance(outcome, Response):
            return outcome
        result, elapsed_ms = outcome
        timing = ("x-ms-run-fn-exec-ms", f"{elapsed_ms:.3f}")
        if is_response(result):
            try:
                status, body, headers = response_parts(result)
            except Exception as exc:
                logger.error("run() returned a response that cannot be read: %s", exc)
                return error_response(500, INTERNAL_ERROR_MESSAGE)
            content_type = next((v for k, v in headers if k.lower() == "content-type"), None)
            rest = [
                (k, v)
                for k, v in headers
                if k.lower() not in ("content-type", "content-length", "x-ms-run-function-failed")
            ]
            failed = status >= 500 or any(
                k.lower() == "x-ms-run-function-failed" and v.lower() == "true" for k, v in headers
            )
            rest.append(("x-ms-run-function-failed", str(failed)))
            return Response(status, body, content_type, [*rest, timing])
        try:
            body = encode_result(result)
        except (TypeError, ValueError) as exc:
            logger.error("run() returned a %s that cannot be sent as JSON: %s", type(result).__name__, exc)
            return error_response(500, INTERNAL_ERROR_MESSAGE)
        return Response(200, body, JSON, headers=[timing])

    def _invoke(
        self, data: Any, headers: Mapping[str, str], close: Callable[[], None] | None = None
    ) -> Response | tuple[Any, float]:
        """Call ``run()``: its result and duration, or the 500/504 answer whose details go to the log only.

        ``close`` (the request's temporary files) runs once ``run()`` has really returned, even after a timeout.
        """
        try:
            return self._call_run(data, headers, close)
        except _RunTimeout:
            message = f"Scoring timeout after {self.scoring_timeout_ms} ms"
            return error_response(504, message, headers=_failed_header())
        except BaseException:
            logger.error("run() raised an exception:\n%s", traceback.format_exc().rstrip())
            return error_response(500, RUN_FAILED_MESSAGE, headers=_failed_header())

    def _call_run(
        self, data: Any, headers: Mapping[str, str], close: Callable[[], None] | None = None
    ) -> tuple[Any, float]:
        """``run()``'s result and its duration in ms, within the concurrency limit and the timeout if set."""
        assert self.entry is not None
        entry = self.entry
        slots = self._run_slots

        def call() -> tuple[Any, float]:
            try:
                start = time.perf_counter()
                result = entry.run(data, headers)
                return result, (time.perf_counter() - start) * 1000
            finally:
                if slots is not None:
                    slots.release()  # only when run() is really done, even after a timeout
                if close is not None:
                    try:
                        close()
                    except Exception:
                        logger.warning("Closing the request after run() failed:\n%s", traceback.format_exc())

        if slots is not None:
            slots.acquire()
        if self.scoring_timeout_ms is None:
            return call()
        return _run_with_timeout(call, self.scoring_timeout_ms)

    # -- KServe V2 ------------------------------------------------------------------------------------------------

    def _v2(self, req: Request) -> Response:
        parts = req.path.split("/")[2:]
        if parts in ([], [""]):
            meta = {"name": "ocibuild-serving", "version": __version__, "extensions": ["binary_tensor_data"]}
            return _v2_wrong_method(req, "GET", "HEAD") or json_response(200, meta)
        if parts in (["health", "live"], ["health", "ready"]):
            ok = parts[1] == "live" or self._model_ready()
            # the protocol: 200 is true, 4xx is false, bodies empty
            return _v2_wrong_method(req, "GET", "HEAD") or Response(200 if ok else 400)
        if len(parts) < 2 or parts[0] != "models":
            return v2_error(404, f"No route for {req.path}")
        return self._v2_model(req, parts[1:])

    def _v2_model(self, req: Request, parts: list[str]) -> Response:
        """The routes under ``/v2/models/{name}[/versions/{version}]``; ``parts`` starts with the name."""
        address = _model_address(parts)
        if address is None:
            return v2_error(404, f"No route for {req.path}")
        name, version, rest = address
        if name != self.model_name or (version is not None and version != self.model_version):
            served = self.model_name + (f" version {self.model_version}" if self.model_version else "")
            asked = name + (f" version {version}" if version is not None else "")
            return v2_error(404, f"Model {asked} not found; this server serves {served}")
        if not rest:
            return _v2_wrong_method(req, "GET", "HEAD") or json_response(200, self._model_metadata())
        if rest == ["ready"]:
            return _v2_wrong_method(req, "GET", "HEAD") or Response(200 if self._model_ready() else 400)
        if rest == ["infer"]:
            return _v2_wrong_method(req, "POST") or self._v2_infer(req)
        return v2_error(404, f"No route for {req.path}")

    def _model_ready(self) -> bool:
        return self.ready.is_set() and not self.draining.is_set()

    def _model_metadata(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.model_name}
        if self.model_version:
            meta["versions"] = [self.model_version]
        meta["platform"] = "azureml_entry_script"
        sw = self.swagger
        meta["inputs"] = v2.metadata_tensors(sw.input_example if sw else None)
        meta["outputs"] = v2.metadata_tensors(sw.output_example if sw else None)
        return meta

    def _v2_infer(self, req: Request) -> Response:
        if not self.ready.is_set():
            return v2_error(503, STARTING_MESSAGE, headers=[("Retry-After", "1")])
        assert self.entry is not None
        try:
            body = req.read_body()
        except BodyError as exc:
            return v2_error(exc.status, exc.message, close=True)
        try:
            request = v2.decode_request(body, req.headers)
            data, close = self._v2_run_argument(req, request.run_input())
        except (v2.V2Error, InputError) as exc:
            return v2_error(400, str(exc))
        outcome = self._invoke(data, req.headers, close)
        if isinstance(outcome, Response):
            return _as_v2_error(outcome)
        result, elapsed_ms = outcome
        return self._v2_answer(request, result, elapsed_ms)

    def _v2_run_argument(self, req: Request, payload: Any) -> tuple[Any, Callable[[], None] | None]:
        """``run()``'s argument for the V2 input ``payload``, in the script's style, and what closes it."""
        entry = self.entry
        assert entry is not None
        if entry.style == OBJECT:
            return entry.arguments(payload), None
        if entry.style == RAW:
            return _v2_raw_request(req, payload)
        return json.dumps(payload), None

    def _v2_answer(self, request: v2.InferRequest, result: Any, elapsed_ms: float) -> Response:
        """``run()``'s result as the inference response: its outputs as tensors, in JSON or binary."""
        try:
            if is_response(result):
                status, raw_body, _ = response_parts(result)
                if status >= 400:
                    return v2_error(status, raw_body.decode("utf-8", "replace"), headers=_failed_header())
                result = json.loads(raw_body.decode("utf-8"))
            else:
                result = json.loads(encode_result(result))
        except (TypeError, ValueError) as exc:
            logger.error("run() returned a %s that cannot be sent as JSON: %s", type(result).__name__, exc)
            return v2_error(500, INTERNAL_ERROR_MESSAGE)
        try:
            outputs = v2.encode_outputs(result, request)
        except v2.V2Error as exc:
            return v2_error(400, str(exc))
        out, json_length = v2.response_body(self.model_name, self.model_version or None, request, outputs)
        headers = [("x-ms-run-fn-exec-ms", f"{elapsed_ms:.3f}")]
        if json_length is None:
            return Response(200, out, JSON, headers)
        headers.append((v2.HEADER_LENGTH, str(json_length)))
        return Response(200, out, "application/octet-stream", headers)


def _json_input(req: Request) -> Response | tuple[Any, str]:
    """The /score input as data and as JSON text: GET's query parameters or the body; or the 400 answer."""
    if req.method == "GET":
        data = _query_params(req.query)
        return data, json.dumps(data)
    try:
        body = req.read_body()
    except BodyError as exc:
        return error_response(exc.status, exc.message, close=True)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return error_response(400, f"Input cannot be decoded as UTF-8: {exc}")
    try:
        return json.loads(text), text
    except ValueError as exc:
        return error_response(400, f"Input is not valid JSON: {exc}")


def _model_address(parts: list[str]) -> tuple[str, str | None, list[str]] | None:
    """``name[/versions/version]/rest...`` as name, version and the rest; None when a version is missing."""
    name, rest = parts[0], parts[1:]
    if rest[:1] != ["versions"]:
        return name, None, rest
    if len(rest) < 2:
        return None
    return name, rest[1], rest[2:]


def _v2_raw_request(req: Request, payload: Any) -> tuple[Any, Callable[[], None]]:
    """A ``@rawhttp`` ``run()``'s request for a V2 inference: the input as a JSON POST to the same path."""
    text = json.dumps(payload).encode("utf-8")
    headers = [(k, v) for k, v in req.headers.items() if k.lower() not in ("content-type", "content-length")]
    headers += [("Content-Type", JSON), ("Content-Length", str(len(text)))]
    return make_request(
        method="POST", path=req.path, query="", headers=headers, body=text, length=len(text),
        client=(req.client, req.client_port), server=req.server, protocol=req.protocol,
    )  # fmt: skip


def _as_v2_error(resp: Response) -> Response:
    """A ``{"message"}`` answer rewritten in the V2 error shape."""
    try:
        message = json.loads(resp.body)["message"]
    except (ValueError, KeyError, TypeError):
        message = resp.body.decode("utf-8", "replace")
    return v2_error(resp.status, message, headers=resp.headers, close=resp.close)


def _v2_wrong_method(req: Request, *allowed: str) -> Response | None:
    """The 405 answer when the request's method is not one of ``allowed``, else None."""
    if req.method in allowed:
        return None
    return v2_error(405, "Method not allowed", headers=[("Allow", ", ".join(allowed))])


def _is_preflight(req: Request) -> bool:
    return req.method == "OPTIONS" and bool(req.headers.get("Access-Control-Request-Method"))


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
    else:
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
