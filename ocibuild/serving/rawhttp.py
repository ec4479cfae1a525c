"""Azure's ``@rawhttp`` style: ``run(request)`` gets the HTTP request itself and may return an ``AMLResponse``.

Azure ML scripts import these from ``azureml_inference_server_http.api.aml_request`` / ``.aml_response`` (or the
older ``azureml.contrib.services.aml_request`` / ``.aml_response``), which need Flask. When those packages are not
installed in the image, ``install_shims()`` provides the same names (``rawhttp``, ``AMLRequest``, ``AMLResponse``)
so such a script imports unchanged; when they are installed, the real ones are used, and a Flask ``Response`` that
``run()`` returns is understood too (anything with ``status_code``, ``headers`` and ``get_data()``).

``RawRequest`` stands in for the Flask request Azure passes. Supported (Flask's names and meanings): ``method``,
``path``, ``full_path``, ``url``, ``base_url``, ``host``, ``host_url``, ``scheme``, ``query_string`` (bytes),
``args`` (``get(key, default, type)``, ``getlist``, ``to_dict``, mapping access), ``headers`` (case-insensitive;
``get``, ``getlist``, iteration as ``(name, value)`` pairs, so ``dict(request.headers)`` works), ``data``,
``get_data(cache=True, as_text=False)``, ``get_json(force=False, silent=False)``, ``json``, ``is_json``,
``mimetype``, ``content_type``, ``content_length``, ``mimetype_params``, ``stream``, ``form`` (URL-encoded
bodies only), ``cookies``, ``remote_addr``. Not supported: ``files`` and multipart forms (read
``get_data()``), ``environ``, sessions.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import io
import json
import sys
from collections.abc import Callable, Iterator, Mapping
from http.cookies import SimpleCookie
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

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


class Headers:
    """Case-insensitive, multi-valued headers, with Flask's/werkzeug's reading and writing methods."""

    def __init__(self, items: list[tuple[str, str]] | None = None) -> None:
        self._items: list[tuple[str, str]] = list(items or [])

    def get(self, name: str, default: Any = None, type: Callable[[str], Any] | None = None) -> Any:
        lname = name.lower()
        for k, v in self._items:
            if k.lower() == lname:
                if type is None:
                    return v
                try:
                    return type(v)
                except ValueError:
                    return default
        return default

    def getlist(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self._items if k.lower() == lname]

    get_all = getlist

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value

    def __setitem__(self, name: str, value: Any) -> None:
        self.remove(name)
        self._items.append((name, str(value)))

    def add(self, name: str, value: Any) -> None:
        self._items.append((name, str(value)))

    add_header = add
    set = __setitem__

    def remove(self, name: str) -> None:
        lname = name.lower()
        self._items = [(k, v) for k, v in self._items if k.lower() != lname]

    __delitem__ = remove

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def keys(self) -> list[str]:
        return [k for k, _ in self._items]

    def values(self) -> list[str]:
        return [v for _, v in self._items]

    def to_wsgi_list(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class Args(Mapping):  # not Mapping[str, str]: subscripting it fails on Python 3.8
    """Query (or form) parameters: a mapping to each key's first value, plus ``getlist`` (werkzeug's MultiDict)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self._pairs = pairs
        self._first: dict[str, str] = {}
        for k, v in pairs:
            self._first.setdefault(k, v)

    def __getitem__(self, key: str) -> str:
        return self._first[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def get(self, key: str, default: Any = None, type: Callable[[str], Any] | None = None) -> Any:  # type: ignore[override]
        if key not in self._first:
            return default
        if type is None:
            return self._first[key]
        try:
            return type(self._first[key])
        except ValueError:
            return default

    def getlist(self, key: str) -> list[str]:
        return [v for k, v in self._pairs if k == key]

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        if flat:
            return dict(self._first)
        return {k: self.getlist(k) for k in self._first}

    def __repr__(self) -> str:
        return f"Args({self._pairs!r})"


class RawRequest:
    """The request as ``@rawhttp`` scripts see it (a subset of Flask's ``Request``; see the module docstring)."""

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: list[tuple[str, str]],
        body: bytes,
        remote_addr: str,
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query.encode("latin-1", "replace")
        self.headers = Headers(headers)
        self.args = Args(parse_qsl(query, keep_blank_values=True))
        self.remote_addr = remote_addr
        self.scheme = "http"
        self._body = body
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
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    @property
    def mimetype_params(self) -> dict[str, str]:
        params = {}
        for part in (self.content_type or "").split(";")[1:]:
            key, _, value = part.partition("=")
            if key.strip():
                params[key.strip().lower()] = value.strip().strip('"')
        return params

    @property
    def content_length(self) -> int | None:
        return self.headers.get("Content-Length", type=int)

    @property
    def is_json(self) -> bool:
        mt = self.mimetype
        return mt == "application/json" or (mt.startswith("application/") and mt.endswith("+json"))

    @property
    def data(self) -> bytes:
        return self._body

    @property
    def stream(self) -> io.BytesIO:
        return io.BytesIO(self._body)

    def get_data(self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False) -> Any:
        if as_text:
            return self._body.decode(self.mimetype_params.get("charset", "utf-8"), "replace")
        return self._body

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
            value = json.loads(self._body)
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
    def form(self) -> Args:
        if self.mimetype != "application/x-www-form-urlencoded":
            return Args([])
        return Args(parse_qsl(self._body.decode("utf-8", "replace"), keep_blank_values=True))

    @property
    def values(self) -> Args:
        return Args([*self.args._pairs, *self.form._pairs])

    @property
    def cookies(self) -> dict[str, str]:
        jar: SimpleCookie = SimpleCookie()
        for header in self.headers.getlist("Cookie"):
            try:
                jar.load(header)
            except Exception:  # a malformed cookie header is ignored, as browsers' are
                continue
        return {k: m.value for k, m in jar.items()}

    def __repr__(self) -> str:
        return f"<RawRequest {self.method} {self.url!r}>"


class BadRequest(ValueError):
    """Raised by ``get_json`` like werkzeug's ``BadRequest``; from ``run()`` it becomes a 500 as in Azure."""

    code = 400


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

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip()


AMLRequest = RawRequest  # only named in type hints and isinstance checks by scripts
_UNSET = object()


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
