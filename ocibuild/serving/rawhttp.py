"""Azure's ``@rawhttp`` style: ``run(request)`` gets the HTTP request itself and may return an ``AMLResponse``.

Azure ML scripts import these from ``azureml_inference_server_http.api.aml_request`` / ``.aml_response`` (or the
older ``azureml.contrib.services.aml_request`` / ``.aml_response``), which need Flask. When those packages are not
installed in the image, ``install_shims()`` provides the same names (``rawhttp``, ``AMLRequest``, ``AMLResponse``)
so such a script imports unchanged; when they are installed, the real ones are used, and a Flask ``Response`` that
``run()`` returns is understood too (anything with ``status_code``, ``headers`` and ``get_data()``).

Which request object ``run(request)`` gets (``make_request``): where the image has Flask or werkzeug installed (a
script's requirements pulled them in), their own ``Request``, as Azure hands the script Flask's (see ``wsgi``);
otherwise ``RawRequest``, a standard-library imitation of Flask's ``Request``. Either way a multipart/form-data body
is checked before ``run()``: a malformed one is answered 400, one of more than 1000 parts 413 (``RawRequest`` also
refuses a text field over 500 kB with 413), see ``multipart``. ``RawRequest`` supports, with Flask's names and meanings: ``method``, ``path``
(percent-decoded), ``full_path``, ``url``, ``base_url``, ``host``, ``host_url``, ``scheme``, ``query_string``
(bytes), ``args``, ``form`` (multipart and URL-encoded bodies) and ``files`` (multipart uploads; ``FileStorage``
objects with ``filename``, ``name``, ``content_type``, ``mimetype``, ``headers``, ``stream``, ``read()``,
``save(dst)``), all three MultiDicts (mapping access to a key's first value, ``get(key, default, type)``,
``getlist``, ``items(multi=True)``, ``to_dict``; a missing key raises a ``KeyError``), ``values``, ``headers``
(case-insensitive; ``get``, ``getlist``, iteration as ``(name, value)`` pairs, so ``dict(request.headers)``
works), ``data`` (empty for form bodies, as in Flask), ``get_data(cache=True, as_text=False)`` (the raw body,
multipart ones too), ``get_json(force=False, silent=False)``, ``json``, ``is_json``, ``mimetype``,
``content_type``, ``content_length``, ``mimetype_params``, ``stream``, ``cookies``, ``remote_addr``, ``close()``.
Not supported: ``environ``, sessions, ``authorization``, ``user_agent`` (Flask's ``Request`` has them).
Uploaded files live in memory or in temporary files (see ``multipart``) until ``run()`` has returned.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import json
import sys
from collections.abc import Callable, Mapping
from http.cookies import SimpleCookie
from types import ModuleType
from typing import IO, Any
from urllib.parse import parse_qsl, unquote_to_bytes

from . import multipart, wsgi
from .datastructures import (
    BadRequest,
    BadRequestKeyError,
    ContentTypeMixin,
    FileStorage,
    Headers,
    MultiDict,
    parse_options,
)
from .log import logger

_REQUEST_MODULES = ("azureml_inference_server_http.api.aml_request", "azureml.contrib.services.aml_request")
_RESPONSE_MODULES = (
    "azureml_inference_server_http.api.aml_response",
    "azureml.contrib.services.aml_response",
)
_PACKAGES = ("azureml_inference_server_http", "azureml_inference_server_http.api", "azureml", "azureml.contrib",
             "azureml.contrib.services")  # fmt: skip
_MARK = "__ocibuild_rawhttp__"


# --- what the script imports --------------------------------------------------------------------------------------


def rawhttp(func: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``run`` as wanting the request object (Azure's ``@rawhttp``)."""
    with contextlib.suppress(AttributeError, TypeError):
        setattr(func, _MARK, True)
    module = sys.modules.get(getattr(rawhttp, "_shim_module", ""))
    if module is not None:
        module._rawHttpRequested = True  # type: ignore[attr-defined]
    return func


class RawRequest(ContentTypeMixin):
    """The request as ``@rawhttp`` scripts see it without Flask: Flask's ``Request`` API (the module docstring)."""

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes | IO[bytes],
        remote_addr: str,
        *,
        form: multipart.Form | None = None,
    ) -> None:
        self.method = method
        self.path = unquote_to_bytes(path).decode("utf-8", "replace")  # Flask's path is percent-decoded
        self.query_string = query.encode("latin-1", "replace")
        self.headers = Headers(headers)
        self.args = MultiDict(parse_qsl(query, keep_blank_values=True))
        self.remote_addr = remote_addr
        self.scheme = "http"
        self._body = body  # bytes, or the spooled body of a multipart request
        self._data: bytes | None = body if isinstance(body, bytes) else None
        self._multipart = form
        self._json_cache: Any = _UNSET

    @property
    def full_path(self) -> str:
        return f"{self.path}?{self.query_string.decode('latin-1')}"

    @property
    def host(self) -> str:
        return self.headers.get("Host", "localhost")

    @property
    def host_url(self) -> str:
        return f"{self.scheme}://{self.host}/"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}{self.path}"

    @property
    def url(self) -> str:
        query = self.query_string.decode("latin-1")
        return self.base_url + (f"?{query}" if query else "")

    @property
    def content_length(self) -> int | None:
        return self.headers.get("Content-Length", type=int)

    @property
    def is_json(self) -> bool:
        mt = self.mimetype
        return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))

    @property
    def data(self) -> bytes:
        """The body, except for form bodies (multipart or URL-encoded), whose ``data`` is empty in Flask."""
        if self.mimetype in _FORM_TYPES:
            return b""
        return self.get_data()

    @property
    def stream(self) -> IO[bytes]:
        """The body as a binary file object, from its start."""
        if isinstance(self._body, bytes):
            return io.BytesIO(self._body)
        self._body.seek(0)
        return self._body

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        """The raw body (for multipart requests too: read from its temporary file into memory on first use)."""
        if self._data is None:
            self._data = self.stream.read()
        if as_text:
            return self._data.decode(self.mimetype_params.get("charset", "utf-8"), "replace")
        return self._data

    def get_json(self, force: bool = False, silent: bool = False, cache: bool = True) -> Any:
        """The body parsed as JSON; ``None`` when it is not JSON and ``silent`` (or, without ``force``, when the
        content type is not JSON, as Flask before 2.1)."""
        if self._json_cache is not _UNSET:
            return self._json_cache
        if not (force or self.is_json):
            if silent:
                return None
            raise BadRequest(f"Content-Type {self.content_type!r} is not JSON; use get_json(force=True)")
        try:
            value = json.loads(self.get_data())
        except ValueError as exc:
            if silent:
                return None
            raise BadRequest(f"Failed to decode JSON object: {exc}") from None
        if cache:
            self._json_cache = value
        return value

    @property
    def json(self) -> Any:
        return self.get_json()

    @property
    def form(self) -> MultiDict:
        """Text fields of a multipart or URL-encoded body (empty for other bodies)."""
        if self._multipart is not None:
            return MultiDict(self._multipart.fields)
        if self.mimetype != "application/x-www-form-urlencoded":
            return MultiDict()
        return MultiDict(parse_qsl(self.get_data().decode("utf-8", "replace"), keep_blank_values=True))

    @property
    def files(self) -> MultiDict:
        """Uploaded files of a multipart body: ``FileStorage`` objects by field name (``getlist`` for all)."""
        return MultiDict(self._multipart.files if self._multipart is not None else ())

    @property
    def values(self) -> MultiDict:
        """``args`` and ``form`` together (``args`` only for GET, as in Flask 2+)."""
        if self.method == "GET":
            return self.args
        return MultiDict([*self.args.items(multi=True), *self.form.items(multi=True)])

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.getlist("Cookie"):
            try:
                jar.load(header)
            except Exception:  # a malformed cookie header is ignored, as browsers' are
                continue
        return {k: m.value for k, m in jar.items()}

    def close(self) -> None:
        """Close the uploaded files and the spooled body (the server does this once ``run()`` has returned)."""
        if self._multipart is not None:
            self._multipart.close()
        if not isinstance(self._body, bytes):
            self._body.close()

    def __enter__(self) -> RawRequest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RawRequest {self.method} {self.url!r}>"


def make_request(
    *,
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes | IO[bytes],
    length: int,
    client: tuple[str, int],
    server: tuple[str, int],
    protocol: str,
) -> tuple[Any, Callable[[], None]]:
    """What ``run(request)`` gets for this request, and what to call once ``run()`` has returned.

    Flask's/werkzeug's ``Request`` when the image has them (see ``wsgi``), else ``RawRequest``. ``body`` is the
    whole body: bytes, or for multipart requests a file object holding ``length`` bytes. A multipart body is
    checked before ``run()`` either way: ``multipart.MultipartError`` (400, 413) when it is malformed or too large.
    """
    mimetype, params = parse_options(next((v for k, v in headers if k.lower() == "content-type"), ""))
    stream = io.BytesIO(body) if isinstance(body, bytes) else body
    boundary = multipart.boundary_of(params) if mimetype == "multipart/form-data" and length else None
    cls = wsgi.request_class()
    if boundary is not None and cls is not None:
        multipart.parse(stream.read, boundary, keep=False)  # werkzeug would take a malformed body as empty
        stream.seek(0)
    if cls is not None:
        try:
            request = cls(
                wsgi.environ(
                    method=method, path=path, query=query, headers=headers, body=stream, length=length,
                    client=client, server=server, protocol=protocol,
                )
            )  # fmt: skip
        except Exception as exc:
            wsgi.disable(f"building {cls.__module__}.{cls.__name__} failed ({type(exc).__name__}: {exc})")
            stream.seek(0)
        else:
            return request, _closer(request, stream)
    form = multipart.parse(stream.read, boundary) if boundary is not None else None
    stream.seek(0)
    raw = RawRequest(method, path, query, headers, body, client[0], form=form)
    return raw, raw.close


def _closer(request: Any, stream: IO[bytes]) -> Callable[[], None]:
    """Close werkzeug's temporary files and our body once ``run()`` is done."""

    def close() -> None:
        try:
            request.close()
        except Exception as exc:
            logger.warning("@rawhttp: closing the request failed: %s", exc)
        stream.close()

    return close


class AMLResponse:
    """Azure's ``AMLResponse(message, status_code, response_headers={}, json_str=False, run_function_failed=False)``.

    ``message`` is sent as it is (str or bytes), or as JSON with ``json_str=True``; ``None`` sends ``{}``. Header
    values holding commas become repeated headers, as in Azure.
    """

    def __init__(
        self,
        message: Any,
        status_code: int,
        response_headers: Mapping[str, str] | None = None,
        json_str: bool = False,
        run_function_failed: bool = False,
    ) -> None:
        self.status_code = int(status_code)
        self.headers = Headers()
        if message is None or json_str:
            self._data = json.dumps({} if message is None else message).encode("utf-8")
            self.headers["Content-Type"] = "application/json"
        else:
            self._data = message if isinstance(message, bytes) else str(message).encode("utf-8")
            self.headers["Content-Type"] = "text/html; charset=utf-8"  # Flask's default, which Azure keeps
        self.headers["x-ms-run-function-failed"] = str(bool(run_function_failed))
        for name, value in (response_headers or {}).items():
            if name.lower() == "content-type":
                self.headers.remove(name)
            for part in str(value).split(","):
                self.headers.add(name, part.strip())

    @property
    def status(self) -> str:
        return str(self.status_code)

    @property
    def data(self) -> bytes:
        return self._data

    def get_data(self, as_text: bool = False) -> Any:
        return self._data.decode("utf-8", "replace") if as_text else self._data

    def set_data(self, value: Any) -> None:
        self._data = value if isinstance(value, bytes) else str(value).encode("utf-8")

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @content_type.setter
    def content_type(self, value: str) -> None:
        self.headers["Content-Type"] = value

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip()

    @mimetype.setter
    def mimetype(self, value: str) -> None:
        """Set as Flask's ``Response.mimetype`` (Azure's binary-payload sample does): text types get a charset."""
        if value.startswith("text/") or value in _CHARSET_TYPES or value.endswith("+xml"):
            value += "; charset=utf-8"
        self.headers["Content-Type"] = value


# werkzeug's get_content_type: mimetypes that get "; charset=utf-8" besides text/* and */*+xml
_CHARSET_TYPES = frozenset(
    ("application/ecmascript", "application/javascript", "application/sql", "application/xml",
     "application/xml-dtd", "application/xml-external-parsed-entity")
)  # fmt: skip

AMLRequest = RawRequest  # only named in type hints and isinstance checks by scripts
Args = MultiDict  # the name before multipart support
_UNSET = object()
_FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
__all__ = [
    "AMLRequest", "AMLResponse", "BadRequest", "BadRequestKeyError", "FileStorage", "Headers", "MultiDict",
    "RawRequest", "install_shims", "make_request", "rawhttp", "wants_raw_request",
]  # fmt: skip


def is_response(value: Any) -> bool:
    """Whether ``run()`` returned an HTTP response (our ``AMLResponse`` or a Flask/werkzeug ``Response``)."""
    return (
        isinstance(getattr(value, "status_code", None), int)
        and callable(getattr(value, "get_data", None))
        and hasattr(value, "headers")
    )


def response_parts(value: Any) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers of a response object ``run()`` returned."""
    body = value.get_data()
    if isinstance(body, str):
        body = body.encode("utf-8")
    pairs = value.headers.items()  # ours, werkzeug's Headers and a plain dict all give (name, value) pairs
    return value.status_code, bytes(body), [(str(k), str(v)) for k, v in pairs]


# --- making the imports work --------------------------------------------------------------------------------------


def wants_raw_request(run: Callable[..., Any]) -> bool:
    """Whether ``@rawhttp`` was used: on ``run`` itself, or anywhere (Azure's flag is module-global)."""
    if getattr(run, _MARK, False):
        return True
    return any(getattr(sys.modules.get(name), "_rawHttpRequested", False) for name in _REQUEST_MODULES)


class _ShimFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Provides the Azure modules above, last on ``sys.meta_path``: only when no installed package does."""

    _NAMES = frozenset((*_PACKAGES, *_REQUEST_MODULES, *_RESPONSE_MODULES))

    def find_spec(
        self, fullname: str, path: Any = None, target: Any = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self._NAMES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self, is_package=fullname in _PACKAGES)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return None

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__dict__["__ocibuild_shim__"] = True
        if name in _REQUEST_MODULES:
            module.__dict__.update(rawhttp=rawhttp, AMLRequest=AMLRequest, _rawHttpRequested=False)
            rawhttp._shim_module = name  # type: ignore[attr-defined]
        elif name in _RESPONSE_MODULES:
            module.__dict__.update(AMLResponse=AMLResponse)
        if name in _PACKAGES:
            module.__path__ = []  # type: ignore[attr-defined]


def install_shims() -> None:
    """Let entry scripts import Azure's ``rawhttp``/``AMLRequest``/``AMLResponse`` without Azure's packages."""
    if not any(isinstance(f, _ShimFinder) for f in sys.meta_path):
        sys.meta_path.append(_ShimFinder())
