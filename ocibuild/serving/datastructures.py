"""Flask's/werkzeug's request containers, for ``@rawhttp`` scripts in images without werkzeug (see ``rawhttp``).

``Headers`` (case-insensitive, multi-valued), ``MultiDict`` (``request.args``, ``.form`` and ``.files``: mapping
access to a key's first value, ``getlist`` for all of them) and ``FileStorage`` (one uploaded file) keep werkzeug's
names, signatures and meanings, so a script written against Flask reads them unchanged.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any
from urllib.parse import unquote


class BadRequest(ValueError):
    """Raised like werkzeug's ``BadRequest`` (by ``get_json``); from ``run()`` it becomes a 500 as in Azure."""

    code = 400


class BadRequestKeyError(BadRequest, KeyError):
    """A missing key in ``request.args``/``.form``/``.files``: a ``KeyError``, as werkzeug's is."""

    def __str__(self) -> str:
        return KeyError.__str__(self)


class Headers:
    """Case-insensitive, multi-valued headers, with Flask's/werkzeug's reading and writing methods."""

    def __init__(self, items: Iterable[tuple[str, str]] | None = None) -> None:
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
            raise BadRequestKeyError(name)
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

    def __str__(self) -> str:
        return "".join(f"{k}: {v}\r\n" for k, v in self._items) + "\r\n"

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


class MultiDict(Mapping):  # not Mapping[str, Any]: subscripting it fails on Python 3.8
    """Keys with one or more values in arrival order (werkzeug's ``ImmutableMultiDict``): mapping access gives a
    key's first value, ``getlist`` all of them; a missing key raises ``BadRequestKeyError``."""

    def __init__(self, pairs: Iterable[tuple[str, Any]] = ()) -> None:
        self._pairs = list(pairs)
        self._first: dict[str, Any] = {}
        for k, v in self._pairs:
            self._first.setdefault(k, v)

    def __getitem__(self, key: str) -> Any:
        try:
            return self._first[key]
        except KeyError:
            raise BadRequestKeyError(key) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def __contains__(self, key: object) -> bool:
        return key in self._first

    def get(self, key: str, default: Any = None, type: Callable[[Any], Any] | None = None) -> Any:  # type: ignore[override]
        if key not in self._first:
            return default
        if type is None:
            return self._first[key]
        try:
            return type(self._first[key])
        except (ValueError, TypeError):
            return default

    def getlist(self, key: str, type: Callable[[Any], Any] | None = None) -> list[Any]:
        values = [v for k, v in self._pairs if k == key]
        if type is None:
            return values
        out = []
        for v in values:
            try:
                out.append(type(v))
            except (ValueError, TypeError):
                continue  # werkzeug skips values the type refuses
        return out

    def keys(self) -> Iterator[str]:  # type: ignore[override]
        return iter(self._first)

    def values(self) -> Iterator[Any]:  # type: ignore[override]
        """Each key's first value."""
        return iter(self._first.values())

    def items(self, multi: bool = False) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        """``(key, first value)`` pairs, or with ``multi`` every pair."""
        return iter(list(self._pairs) if multi else list(self._first.items()))

    def lists(self) -> Iterator[tuple[str, list[Any]]]:
        return iter([(k, self.getlist(k)) for k in self._first])

    def listvalues(self) -> Iterator[list[Any]]:
        return iter([self.getlist(k) for k in self._first])

    def to_dict(self, flat: bool = True) -> dict[str, Any]:
        if flat:
            return dict(self._first)
        return {k: self.getlist(k) for k in self._first}

    def copy(self) -> MultiDict:
        return type(self)(self._pairs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._pairs!r})"


class ContentTypeMixin:
    """``content_type``, ``mimetype`` and ``mimetype_params`` from ``self.headers``, as werkzeug's request and
    ``FileStorage`` both have them."""

    headers: Headers

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    @property
    def mimetype(self) -> str:
        return (self.content_type or "").split(";", 1)[0].strip().lower()

    @property
    def mimetype_params(self) -> dict[str, str]:
        return content_type_params(self.content_type or "")


class FileStorage(ContentTypeMixin):
    """One uploaded file of a multipart form (werkzeug's ``FileStorage``).

    ``filename`` is what the client sent, unchanged: never use it as a path without cleaning it (werkzeug's
    ``secure_filename``). Unknown attributes (``read``, ``seek``, ``tell``, ...) are the stream's.
    """

    def __init__(
        self,
        stream: IO[bytes] | None = None,
        filename: str | None = None,
        name: str | None = None,
        content_type: str | None = None,
        content_length: int | None = None,
        headers: Headers | None = None,
    ) -> None:
        self.name = name
        self.stream: IO[bytes] = stream if stream is not None else io.BytesIO()
        self.filename = filename
        self.headers = headers if headers is not None else Headers()
        if content_type is not None:
            self.headers["Content-Type"] = content_type
        if content_length is not None:
            self.headers["Content-Length"] = str(content_length)

    @property
    def content_length(self) -> int:
        return self.headers.get("Content-Length", 0, type=int)

    def save(self, dst: str | os.PathLike[str] | IO[bytes], buffer_size: int = 16384) -> None:
        """Copy the stream (from where it stands, as werkzeug does) to a path or a binary file object."""
        if isinstance(dst, (str, os.PathLike)):
            with open(dst, "wb") as out:
                shutil.copyfileobj(self.stream, out, buffer_size)
        else:
            shutil.copyfileobj(self.stream, dst, buffer_size)

    def close(self) -> None:
        self.stream.close()

    def __bool__(self) -> bool:
        return bool(self.filename)

    def __getattr__(self, name: str) -> Any:
        if name == "stream":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.stream, name)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.stream)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}: {self.filename!r} ({self.content_type!r})>"


def content_type_params(value: str) -> dict[str, str]:
    """The parameters of a Content-Type value, names lower-cased, quotes removed: ``{"charset": "utf-8"}``."""
    return parse_options(value)[1]


def parse_options(value: str) -> tuple[str, dict[str, str]]:
    """A header value's first token and its ``; key=value`` parameters (werkzeug's ``parse_options_header``).

    Quoted values may hold ``;`` and escape ``"`` and ``\\`` with a backslash (other backslashes stay, as in
    Windows paths); ``key*=charset'lang'percent-encoded`` (RFC 2231/5987) is decoded and wins over ``key=``.
    """
    main, _, rest = value.partition(";")
    params: dict[str, str] = {}
    extended: dict[str, str] = {}
    i = 0
    while i < len(rest):
        key, val, i = _next_param(rest, i)
        if not key:
            continue
        if key.endswith("*"):
            decoded = _decode_extended(val)
            if decoded is not None:  # undecodable: the plain parameter, if any, stands
                extended[key[:-1]] = decoded
        else:
            params.setdefault(key, val)
    params.update(extended)
    return main.strip().lower(), params


def _next_param(rest: str, i: int) -> tuple[str, str, int]:
    """The ``key=value`` parameter at or after ``rest[i]`` (key lower-cased, value unquoted), and its end."""
    n = len(rest)
    while i < n and rest[i] in " \t;":
        i += 1
    start = i
    while i < n and rest[i] not in "=;":
        i += 1
    key = rest[start:i].strip().lower()
    if i >= n or rest[i] != "=":
        return key, "", i
    i += 1
    while i < n and rest[i] in " \t":
        i += 1
    if i < n and rest[i] == '"':
        val, i = _quoted_value(rest, i + 1)
        return key, val, i
    start = i
    while i < n and rest[i] != ";":
        i += 1
    return key, rest[start:i].strip(), i


def _quoted_value(rest: str, i: int) -> tuple[str, int]:
    """The quoted string that opens before ``rest[i]``, unescaped, and where its parameter ends."""
    n = len(rest)
    chars = []
    while i < n and rest[i] != '"':
        if rest[i] == "\\" and i + 1 < n and rest[i + 1] in '"\\':
            i += 1
        chars.append(rest[i])
        i += 1
    i += 1  # the closing quote
    while i < n and rest[i] != ";":  # anything after it, up to the next parameter, is dropped
        i += 1
    return "".join(chars), i


def _decode_extended(value: str) -> str | None:
    """An RFC 2231/5987 ``charset'lang'percent-encoded`` value decoded, or None when it cannot be."""
    charset, _, encoded = value.partition("'")
    _, _, encoded = encoded.partition("'")
    try:
        return unquote(encoded, encoding=charset or "utf-8", errors="strict")
    except (LookupError, UnicodeDecodeError):
        return None
