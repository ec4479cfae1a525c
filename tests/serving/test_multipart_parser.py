"""The streaming multipart/form-data parser on its own: edge cases of the format, read in awkward pieces."""

from __future__ import annotations

import io
import random

import pytest

from ocibuild.serving import multipart
from ocibuild.serving.datastructures import parse_options


def parse(body: bytes, boundary: bytes = b"B", piece: int | None = None, **kwargs) -> multipart.Form:
    """Parse ``body``; ``piece`` makes every read return at most that many bytes (delimiters straddle reads)."""
    src = io.BytesIO(body)
    return multipart.parse((lambda n: src.read(min(n, piece))) if piece else src.read, boundary, **kwargs)


def files_of(form: multipart.Form) -> list[tuple[str, str, bytes]]:
    return [(name, f.filename, f.read()) for name, f in form.files]


@pytest.mark.parametrize("piece", [None, 1, 2, 3, 7])
def test_lf_line_breaks_preamble_epilogue_and_tiny_reads(piece) -> None:
    body = (
        b"This is the preamble; --B inside it is not a delimiter\n"
        b"--B\n"
        b'Content-Disposition: form-data; name="a"\n\n'
        b"line1\r\nline2\n--Bnot-yet\n"  # "--B" followed by more text on the line: still data
        b"\n--B \t\n"  # transport padding after the delimiter
        b'Content-Disposition: form-data; name="f"; filename="x.bin"\n\n'
        b"\r\r\n\x00"
        b"\r\n--B--   \r\nepilogue --B\r\n"
    )
    with pytest.raises(multipart.MultipartError, match="not followed by a line break"):
        parse(body, piece=piece)  # "--Bnot-yet" at a line start is a delimiter followed by junk
    fixed = body.replace(b"--Bnot-yet", b"-- Bnot-yet")
    form = parse(fixed, piece=piece)
    assert form.fields == [("a", "line1\r\nline2\n-- Bnot-yet\n")]
    assert files_of(form) == [("f", "x.bin", b"\r\r\n\x00")]


def test_random_bodies_in_random_pieces_round_trip() -> None:
    """Data full of CR, LF and boundary prefixes survives any chunking of the body."""
    rnd = random.Random(7)
    for _ in range(200):
        parts = [
            bytes(rnd.choice(b"\r\n-Bx") for _ in range(rnd.randint(0, 40))) for _ in range(rnd.randint(0, 4))
        ]
        body = b"".join(
            b'--Boundary\r\nContent-Disposition: form-data; name="p%d"; filename="f"\r\n\r\n%s\r\n'
            % (i, data)
            for i, data in enumerate(parts)
        )
        body += b"--Boundary--\r\n"
        if any(b"\n--Boundary" in data or data.startswith(b"--Boundary") for data in parts):
            continue  # the client would have chosen another boundary
        form = parse(body, b"Boundary", piece=rnd.randint(1, 30))
        assert [data for _, _, data in files_of(form)] == parts


def test_disposition_parameters_and_header_forms() -> None:
    body = (
        b"--B\r\n"
        b'content-disposition: FORM-DATA; name="semi;colon"; filename="a\\"b.txt"\r\n'
        b"Content-Type: text/plain;\r\n charset=latin-1\r\n"  # folded header line
        b"\r\nx\r\n"
        b"--B\r\n"
        b"Content-Disposition: form-data; name=u; filename=\"fallback.txt\"; filename*=UTF-8''%E2%82%AC.txt\r\n"
        b"\r\n\r\n"
        b"--B\r\n"
        b'Content-Disposition: form-data; name="t"\r\nContent-Type: text/plain; charset=latin-1\r\n\r\n\xe9\r\n'
        b"--B\r\n"
        b'Content-Disposition: form-data; name="r"; filename="C:\\dir\\raw.txt"\r\n\r\n\r\n'
        b"--B--"
    )
    form = parse(body)
    assert [(n, f.filename, f.content_type, f.mimetype, f.read()) for n, f in form.files] == [
        ("semi;colon", 'a"b.txt', "text/plain; charset=latin-1", "text/plain", b"x"),
        ("u", "€.txt", None, "", b""),
        ("r", "C:\\dir\\raw.txt", None, "", b""),  # Windows paths keep their backslashes
    ]
    assert form.fields == [("t", "é")]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('form-data; name="a"', ("form-data", {"name": "a"})),
        ("Text/Plain ; Charset = UTF-8", ("text/plain", {"charset": "UTF-8"})),
        ('x; a="1;2"; b=3', ("x", {"a": "1;2", "b": "3"})),
        ("x; filename*=bogus''%FF", ("x", {})),  # undecodable: dropped
        ("", ("", {})),
    ],
)
def test_parse_options(value, expected) -> None:
    assert parse_options(value) == expected


def test_uploads_spool_past_the_memory_budget(monkeypatch) -> None:
    """Files stay in memory while the request's total fits ``SPOOL_BYTES``; later or larger ones go to disk."""
    monkeypatch.setattr(multipart, "SPOOL_BYTES", 1000)

    def part(name: str, size: int) -> bytes:
        return b'--B\r\nContent-Disposition: form-data; name="%s"; filename="f"\r\n\r\n%s\r\n' % (
            name.encode(),
            b"x" * size,
        )

    form = parse(part("a", 600) + part("b", 600) + part("c", 300) + part("d", 100) + b"--B--")
    on_disk = {name: not isinstance(f.stream, io.BytesIO) for name, f in form.files}
    assert on_disk == {"a": False, "b": True, "c": False, "d": False}  # 600 + 300 + 100 in memory
    assert [len(f.read()) for _, f in form.files] == [600, 600, 300, 100]
    form.close()
    assert all(f.stream.closed for _, f in form.files)


def test_validation_only_keeps_nothing() -> None:
    body = (
        b'--B\r\nContent-Disposition: form-data; name="f"; filename="a"\r\n\r\n'
        + b"x" * 100_000
        + b"\r\n--B--"
    )
    form = parse(body, keep=False)
    assert (form.fields, form.files) == ([], [])
    with pytest.raises(multipart.MultipartError, match="no closing boundary"):
        parse(body[:-6], keep=False)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "without a boundary parameter"),
        ({"boundary": "x" * 201}, "not 1 to 200 printable ASCII"),
        ({"boundary": "tab\there"}, "not 1 to 200 printable ASCII"),
        ({"boundary": "ends with space "}, "not 1 to 200 printable ASCII"),
    ],
)
def test_bad_boundary_parameters(params, message) -> None:
    with pytest.raises(multipart.MultipartError, match=message) as info:
        multipart.boundary_of(params)
    assert info.value.status == 400


def test_part_headers_are_bounded() -> None:
    body = b"--B\r\nX-Long: " + b"y" * (multipart.MAX_HEADER_BYTES + 1) + b"\r\n\r\n\r\n--B--"
    with pytest.raises(multipart.MultipartError, match="part 1 headers are too long"):
        parse(body)
