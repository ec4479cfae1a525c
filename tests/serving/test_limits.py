"""Request bodies at the HTTP level: size limit, ``Expect: 100-continue``, chunked uploads, bad framing."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
import requests

from .conftest import launch

LIMIT = 1000
SCRIPT = """
    def init():
        pass

    def run(raw_data):
        return {"length": len(raw_data)}
"""


@pytest.fixture(scope="module")
def server(server_pythonpath, tmp_path_factory):
    srv = launch(
        server_pythonpath,
        tmp_path_factory.mktemp("app"),
        SCRIPT,
        env={"OCIBUILD_MAX_REQUEST_BYTES": str(LIMIT)},
    )
    yield srv
    srv.kill()


def raw_exchange(port: int, head: bytes, timeout: float = 2.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(head)
    return sock


def read_response_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_body_at_the_limit_is_accepted(server) -> None:
    body = '"' + "x" * (LIMIT - 2) + '"'
    assert server.post("/score", data=body).json() == {"length": LIMIT}


def test_oversized_content_length_is_413_without_reading_the_body(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.putrequest("POST", "/score")
    conn.putheader("Content-Length", str(10**12))  # a terabyte the client never sends
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413
    assert resp.getheader("Connection") == "close"
    assert "exceeds the limit of 1000 bytes" in resp.read().decode()
    conn.close()


def test_oversized_body_sent_in_full_still_gets_413(server) -> None:
    r = server.post("/score", data=b"1" * 200_000)
    assert r.status_code == 413
    assert server.post("/score", data="{}").status_code == 200


def test_expect_100_continue_is_answered_at_once(server) -> None:
    body = b'{"a": 1}'
    sock = raw_exchange(
        server.port,
        b"POST /score HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body),
    )
    start = time.monotonic()
    interim = read_response_head(sock)
    assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
    assert time.monotonic() - start < 0.9  # clients that get no 100 wait 1 s before sending anyway
    sock.sendall(body)
    final = sock.makefile("rb").read()
    sock.close()
    assert final.startswith(b"HTTP/1.1 200 OK") and final.endswith(b'{"length": 8}')


def test_expect_100_continue_over_the_limit_is_413_before_any_100(server) -> None:
    sock = raw_exchange(
        server.port,
        b"POST /score HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    head = read_response_head(sock)
    sock.close()
    assert head.startswith(b"HTTP/1.1 413 ")


def test_chunked_body_is_accepted(server) -> None:
    def chunks():
        yield b'{"data": '
        yield b"[1, 2, 3]}"

    r = requests.post(server.url + "/score", data=chunks(), timeout=5)  # a generator is sent chunked
    assert r.status_code == 200 and r.json() == {"length": 19}


def test_chunked_body_over_the_limit_is_413(server) -> None:
    def chunks():
        for _ in range(20):
            yield b"[" + b"1," * 50 + b"1]"

    r = requests.post(server.url + "/score", data=chunks(), timeout=5)
    assert r.status_code == 413


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (b"Content-Length: abc\r\n", 400),
        (b"Content-Length: -5\r\n", 400),
        (b"Transfer-Encoding: gzip\r\n", 501),
    ],
)
def test_bad_framing(server, headers, status) -> None:
    sock = raw_exchange(server.port, b"POST /score HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    head = read_response_head(sock)
    sock.close()
    assert head.startswith(b"HTTP/1.1 %d " % status)


def test_malformed_request_line_gets_json_error(server) -> None:
    sock = raw_exchange(server.port, b"GET / HTTP/one\r\n\r\n")
    data = sock.makefile("rb").read()
    sock.close()
    assert data.startswith(b"HTTP/1.1 400 ")
    assert data.endswith(b"}") and b'"message": "Bad request version' in data


def test_oversized_v2_infer_is_413_in_v2_shape(server) -> None:
    r = server.post("/v2/models/model/infer", data=b"x" * (LIMIT + 1))
    assert r.status_code == 413 and "exceeds the limit" in r.json()["error"]
