"""multipart/form-data (RFC 7578) read from a stream with bounded memory, for ``@rawhttp`` requests.

The standard library has no parser fit for uploads (``cgi`` is gone in 3.13; ``email`` holds the whole message in
memory), so this is a small streaming one. It reads the body in chunks; file parts stay in memory while the
request's in-memory total is within ``SPOOL_BYTES`` and move to temporary files beyond that (``Spool``: in
``TMPDIR``, unlinked at once, closed after ``run()``); text fields become str, each at most ``MAX_FIELD_BYTES`` (werkzeug 3.1's
limit) and together at most ``MAX_FIELDS_TOTAL``. A malformed body (no boundary parameter or delimiter, bad part
headers, truncated, no closing delimiter) raises ``MultipartError`` with status 400, too many parts or too large
fields 413, so it is answered before ``run()`` sees it. Line breaks may be CRLF or LF and a preamble and epilogue
are skipped, as werkzeug's parser allows. Filenames are kept as the client sent them and never used as paths here.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable
from typing import IO, Any

from .datastructures import FileStorage, Headers, parse_options

SPOOL_BYTES = 1 << 20  # file data one request may hold in memory; the rest goes to temporary files
MAX_FIELD_BYTES = 500_000  # one text field (werkzeug 3.1's max_form_memory_size)
MAX_FIELDS_TOTAL = 4 << 20  # all text fields of one request
MAX_PARTS = 1000  # werkzeug's max_form_parts
MAX_HEADER_BYTES = 16 * 1024  # one part's header block
_CHUNK = 1 << 16
_BOUNDARY_CHARS = frozenset(range(0x20, 0x7F))  # printable ASCII; werkzeug allows up to 200 of them


class MultipartError(Exception):
    """The body cannot be taken as multipart/form-data; ``status`` is the answer (400, 413, 500)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Form:
    """The parsed parts: text fields as ``(name, str)``, files as ``(name, FileStorage)``, in body order."""

    def __init__(self) -> None:
        self.fields: list[tuple[str, str]] = []
        self.files: list[tuple[str, FileStorage]] = []

    def close(self) -> None:
        """Close (and so delete) every spooled file."""
        for _, storage in self.files:
            storage.close()


def boundary_of(params: dict[str, str]) -> bytes:
    """The ``boundary`` parameter of a multipart Content-Type, checked (RFC 2046: 1-70 characters; werkzeug
    accepts up to 200 printable ones, and so do we)."""
    boundary = params.get("boundary", "")
    if not boundary:
        raise MultipartError(400, "multipart/form-data without a boundary parameter in Content-Type")
    raw = boundary.encode("latin-1", "replace")
    if len(raw) > 200 or not set(raw) <= _BOUNDARY_CHARS or raw.endswith(b" "):
        raise MultipartError(400, "multipart/form-data boundary is not 1 to 200 printable ASCII characters")
    return raw


def parse(read: Callable[[int], bytes], boundary: bytes, *, keep: bool = True) -> Form:
    """Parse a multipart/form-data body read through ``read(n)``.

    With ``keep=False`` only the structure is checked and the data discarded (used before handing the body to
    werkzeug, whose own parser silently returns an empty form for a malformed body).
    """
    parser = _Parser(read, boundary, keep)
    try:
        parser.run()
    except BaseException:
        parser.form.close()
        raise
    return parser.form


class _Parser:
    def __init__(self, read: Callable[[int], bytes], boundary: bytes, keep: bool) -> None:
        self._read = read
        self._dash = b"--" + boundary
        self._delimiter = b"\n--" + boundary  # the CR before it, if any, is stripped from the data
        self._keep = keep
        self._buf = bytearray()
        self._eof = False
        self._memory_left = SPOOL_BYTES
        self._fields_total = 0
        self.form = Form()

    def _fill(self) -> bool:
        """Append the next chunk of the body; False at its end."""
        if self._eof:
            return False
        data = self._read(_CHUNK)
        if not data:
            self._eof = True
            return False
        self._buf += data
        return True

    def _need(self, n: int) -> bool:
        """Whether at least ``n`` bytes are (or could be made) buffered."""
        while len(self._buf) < n:
            if not self._fill():
                return False
        return True

    def run(self) -> None:
        self._skip_preamble()
        count = 0
        while True:
            if not self._need(2):
                raise MultipartError(
                    400, "Malformed multipart body: it ends right after a boundary delimiter"
                )
            if self._buf[:2] == b"--":
                return  # the close delimiter; the epilogue is ignored
            self._end_delimiter_line()
            count += 1
            if count > MAX_PARTS:
                raise MultipartError(413, f"multipart/form-data body has more than {MAX_PARTS} parts")
            self._part(count)

    def _skip_preamble(self) -> None:
        """Discard everything up to the first delimiter: at the very start or after a line break."""
        if self._need(len(self._dash)) and self._buf.startswith(self._dash):
            del self._buf[: len(self._dash)]
            return
        while True:
            i = self._buf.find(self._delimiter)
            if i >= 0:
                del self._buf[: i + len(self._delimiter)]
                return
            keep = len(self._delimiter) - 1
            if len(self._buf) > keep:
                del self._buf[: len(self._buf) - keep]
            if not self._fill():
                raise MultipartError(400, "Malformed multipart body: no boundary delimiter found")

    def _end_delimiter_line(self) -> None:
        """After a delimiter: optional spaces or tabs (transport padding), then the line break (CRLF or LF)."""
        while True:
            buf, i = self._buf, 0
            while i < len(buf) and buf[i] in (0x20, 0x09):
                i += 1
            if i < len(buf):
                if buf[i] == 0x0A:
                    del buf[: i + 1]
                    return
                if buf[i] != 0x0D:
                    break
                if i + 1 < len(buf):
                    if buf[i + 1] != 0x0A:
                        break
                    del buf[: i + 2]
                    return
            if i > 1024 or not self._fill():
                break
        raise MultipartError(
            400, "Malformed multipart body: a boundary delimiter is not followed by a line break"
        )

    def _headers(self, number: int) -> Headers:
        headers = Headers()
        for line in self._header_lines(number):
            name, sep, value = line.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name:
                shown = line[:60].decode("latin-1")
                raise MultipartError(
                    400, f"Malformed multipart body: part {number} has a bad header line {shown!r}"
                )
            headers.add(_text(name), _text(value.strip()))
        return headers

    def _header_lines(self, number: int) -> list[bytes]:
        """The part's header lines up to the empty one, each folded continuation joined to the line before."""
        lines: list[bytes] = []
        size = 0
        while True:
            line = self._header_line(number, size)
            size += len(line) + 1
            if size > MAX_HEADER_BYTES:
                raise MultipartError(400, f"Malformed multipart body: part {number} headers are too long")
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                return lines
            if line[:1] in (b" ", b"\t") and lines:  # an obsolete folded continuation line
                lines[-1] += b" " + line.strip()
            else:
                lines.append(line)

    def _header_line(self, number: int, size: int) -> bytes:
        """The next header line, without its LF; ``size``: the header bytes read before it (for the limit)."""
        j = self._buf.find(b"\n")
        while j < 0:
            if len(self._buf) + size > MAX_HEADER_BYTES:
                raise MultipartError(400, f"Malformed multipart body: part {number} headers are too long")
            if not self._fill():
                raise MultipartError(400, f"Malformed multipart body: it ends inside part {number}'s headers")
            j = self._buf.find(b"\n")
        line = bytes(self._buf[:j])
        del self._buf[: j + 1]
        return line

    def _part(self, number: int) -> None:
        headers = self._headers(number)
        disposition, params = parse_options(headers.get("Content-Disposition", ""))
        if disposition != "form-data" or "name" not in params:
            raise MultipartError(
                400,
                f"Malformed multipart body: part {number} has no 'Content-Disposition: form-data; name=...'",
            )
        name = params["name"]
        filename = params.get("filename")
        if filename is None:
            self._field(number, name, headers)
        else:
            self._file(number, name, filename, headers)

    def _copy_data(self, number: int, write: Callable[[Any], Any]) -> int:
        """Pass the part's data to ``write`` up to the next delimiter, which is consumed; the byte count."""
        total = 0
        keep = len(self._delimiter)  # a delimiter may straddle chunks, with its CR just before
        while True:
            i = self._buf.find(self._delimiter)
            if i >= 0:
                end = i - 1 if i > 0 and self._buf[i - 1] == 0x0D else i
                if end:
                    write(self._buf[:end])
                total += end
                del self._buf[: i + len(self._delimiter)]
                return total
            if len(self._buf) > keep:
                n = len(self._buf) - keep
                write(self._buf[:n])
                total += n
                del self._buf[:n]
            if not self._fill():
                raise MultipartError(
                    400, f"Malformed multipart body: it ends inside part {number} (no closing boundary)"
                )

    def _field(self, number: int, name: str, headers: Headers) -> None:
        data = bytearray()

        def write(chunk: Any) -> None:
            if not self._keep:
                return
            data.extend(chunk)
            if len(data) > MAX_FIELD_BYTES:
                raise MultipartError(
                    413, f"Form field {name!r} is larger than {MAX_FIELD_BYTES} bytes; send it as a file"
                )
            if self._fields_total + len(data) > MAX_FIELDS_TOTAL:
                raise MultipartError(413, f"Form fields are larger than {MAX_FIELDS_TOTAL} bytes in all")

        self._copy_data(number, write)
        if self._keep:
            self._fields_total += len(data)
            charset = parse_options(headers.get("Content-Type", ""))[1].get("charset", "utf-8")
            try:
                value = data.decode(charset, "replace")
            except LookupError:
                value = data.decode("utf-8", "replace")
            self.form.fields.append((name, value))

    def _file(self, number: int, name: str, filename: str, headers: Headers) -> None:
        if not self._keep:
            self._copy_data(number, lambda chunk: None)
            return
        spool = Spool(self._memory_left)
        storage = FileStorage(spool.file, filename, name, headers=headers)
        self.form.files.append((name, storage))  # closed with the form if anything below fails
        self._copy_data(number, spool.write)
        storage.stream = spool.file  # a file object now if the part outgrew the memory left
        if spool.in_memory:
            self._memory_left -= spool.size
        spool.file.seek(0)


class Spool:
    """Bytes kept in memory up to ``memory`` bytes, then moved to an unnamed temporary file in ``TMPDIR``.

    ``file`` is an ``io.BytesIO`` or a real file, both complete binary file objects on every Python: not
    ``tempfile.SpooledTemporaryFile``, which before 3.11 has no ``readable()``/``seekable()``, so that
    ``io.TextIOWrapper`` (``csv``, pandas) refuses it. Failing to write the file (a full or read-only
    ``TMPDIR``) raises ``MultipartError`` 500: an answer, not a broken connection.
    """

    def __init__(self, memory: int) -> None:
        self.file: IO[bytes] = io.BytesIO()
        self.size = 0
        self.in_memory = True
        self._memory = memory

    def write(self, chunk: Any) -> None:
        try:
            if self.in_memory and self.size + len(chunk) > self._memory:
                disk = tempfile.TemporaryFile()
                with self.file.getbuffer() as kept:  # type: ignore[attr-defined]
                    disk.write(kept)
                self.file.close()
                self.file, self.in_memory = disk, False
            self.file.write(chunk)
        except OSError as exc:
            raise MultipartError(500, f"Cannot store the upload in a temporary file: {exc}") from None
        self.size += len(chunk)


def _text(raw: bytes) -> str:
    """Header bytes as text: UTF-8 (what browsers send for non-ASCII filenames), else Latin-1."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")
