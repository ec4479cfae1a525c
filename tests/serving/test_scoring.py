"""Routes, answers and headers against one running server whose ``run()`` does what the request asks."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import socket
import time
import uuid

import pytest
import requests

from .conftest import launch, wait_for

SCRIPT = """
    import json, os, time

    calls = []

    class Tensor:  # stands in for a numpy array: not JSON, but has tolist()
        def __init__(self, rows):
            self.rows = rows
        def tolist(self):
            return [list(r) for r in self.rows]

    def init():
        with open("init.log", "a") as f:
            f.write(f"{os.getpid()}\\n")

    def run(raw_data, request_headers):
        data = json.loads(raw_data)
        op = data.get("op") if isinstance(data, dict) else None
        if op == "raise":
            raise ValueError("boom from run")
        if op == "sleep":
            time.sleep(data["s"])
            return {"slept": data["s"]}
        if op == "str":
            return "plain string"
        if op == "none":
            return None
        if op == "tensor":
            return {"predictions": Tensor([(1.5, 2), (3, 4)])}
        if op == "object":
            return object()
        if op == "headers":
            return {k.lower(): v for k, v in request_headers.items()}
        if op == "raw":
            return raw_data
        return {"echo": data}
"""


@pytest.fixture(scope="module")
def server(server_pythonpath, tmp_path_factory):
    srv = launch(server_pythonpath, tmp_path_factory.mktemp("app"), SCRIPT)
    yield srv
    srv.kill()


def test_health_routes(server) -> None:
    for path in ("/", "/health/live", "/health/ready"):
        r = server.get(path)
        assert (r.status_code, r.text) == (200, "Healthy"), path
    head = requests.head(server.url + "/", timeout=5)
    assert head.status_code == 200 and head.text == ""


def test_post_root_is_405_and_unknown_route_404(server) -> None:
    r = server.post("/", data="{}")
    assert r.status_code == 405 and r.json() == {"message": "Method not allowed"}
    assert server.get("/nope").status_code == 404


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_score_round_trip(server, content_type) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    r = server.post("/score", data=json.dumps({"data": [[1, 2], [3, 4]]}), headers=headers)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json"
    assert r.json() == {"echo": {"data": [[1, 2], [3, 4]]}}
    assert r.headers["x-ms-run-function-failed"] == "False"
    assert float(r.headers["x-ms-run-fn-exec-ms"]) >= 0
    assert r.headers["x-ms-server-version"].startswith("ocibuild-serving/")
    assert uuid.UUID(r.headers["x-request-id"]).version == 4
    assert r.headers["x-ms-request-id"] == r.headers["x-request-id"]


def test_raw_body_reaches_run_unchanged(server) -> None:
    body = '{"op": "raw",   "x": "caf\u00e9"}'
    r = server.post("/score", data=body.encode("utf-8"))
    assert r.json() == body  # a str from run() is sent as a JSON string, as Azure does


@pytest.mark.parametrize(
    ("op", "expected"),
    [("str", "plain string"), ("none", {}), ("tensor", {"predictions": [[1.5, 2], [3, 4]]})],
)
def test_result_serialisation_matches_azure(server, op, expected) -> None:
    r = server.post("/score", data=json.dumps({"op": op}))
    assert r.status_code == 200 and r.json() == expected


def test_request_ids_are_echoed(server) -> None:
    r = server.post(
        "/score",
        data="{}",
        headers={"x-request-id": "req-1", "x-ms-client-request-id": "client-1", "TraceId": "t-1"},
    )
    assert r.headers["x-request-id"] == "req-1"
    assert r.headers["x-ms-client-request-id"] == "client-1"
    assert r.headers["x-ms-request-id"] == "client-1"  # Azure's fallback for the legacy header
    assert r.headers["TraceId"] == "t-1"
    legacy = server.post("/score", data="{}", headers={"x-ms-request-id": "legacy-1"})
    assert legacy.headers["x-ms-request-id"] == "legacy-1"
    assert legacy.headers["x-ms-client-request-id"] == "legacy-1"


def test_request_id_over_100_chars_is_431(server) -> None:
    r = server.post("/score", data="{}", headers={"x-request-id": "x" * 101})
    assert r.status_code == 431 and "x-request-id" in r.json()["message"]
    assert server.post("/score", data="{}", headers={"x-request-id": "x" * 100}).status_code == 200


def test_run_gets_request_headers_when_it_asks(server) -> None:
    r = server.post("/score", data='{"op": "headers"}', headers={"X-Custom": "yes"})
    assert r.json()["x-custom"] == "yes"


def test_malformed_json_is_400(server) -> None:
    r = server.post("/score", data="{not json")
    assert r.status_code == 400
    assert "not valid JSON" in r.json()["message"]
    assert r.headers["x-ms-run-function-failed"] == "False"


def test_empty_body_is_400(server) -> None:
    assert server.post("/score", data=b"").status_code == 400


def test_invalid_utf8_is_400(server) -> None:
    r = server.post("/score", data=b'{"x": "\xff\xfe"}')
    assert r.status_code == 400
    assert "UTF-8" in r.json()["message"]


def test_run_raising_is_500_and_server_keeps_serving(server) -> None:
    r = server.post("/score", data='{"op": "raise"}', headers={"x-request-id": "failing-req"})
    assert r.status_code == 500
    assert r.json() == {
        "message": "An unexpected error occurred in scoring script. Check the logs for more info."
    }
    assert r.headers["x-ms-run-function-failed"] == "True"
    assert "x-ms-run-fn-exec-ms" not in r.headers
    assert "boom" not in r.text
    wait_for(lambda: "failing-req" in server.log())  # the access line is written after the answer
    log = server.log()
    assert "ValueError: boom from run" in log and "Traceback" in log
    assert "access method=POST path=/score route=/score status=500 " in log
    assert server.post("/score", data="{}").status_code == 200


def test_unserialisable_result_is_500(server) -> None:
    r = server.post("/score", data='{"op": "object"}')
    assert r.status_code == 500 and "message" in r.json()
    assert "cannot be sent as JSON" in server.log()


def test_get_score_passes_query_parameters_as_json(server) -> None:
    r = server.get("/score", params=[("a", "1"), ("b", "[1, 2]"), ("c", "text"), ("a", "2")])
    assert r.status_code == 200
    assert r.json() == {"echo": {"a": [1, 2], "b": [1, 2], "c": "text"}}
    assert server.get("/score").json() == {"echo": {}}  # no parameters: run("{}"), as Azure


def test_options_score_is_200_empty(server) -> None:
    r = requests.options(server.url + "/score", timeout=5)
    assert r.status_code == 200 and r.content == b""


def test_one_log_line_per_request(server) -> None:
    server.post("/score", data="{}", headers={"x-request-id": "log-line-id"})
    wait_for(lambda: "log-line-id" in server.log())
    lines = [line for line in server.log().splitlines() if "log-line-id" in line]
    assert len(lines) == 1
    fields = dict(pair.split("=", 1) for pair in lines[0].split(" access ", 1)[1].split())
    assert fields["method"] == "POST" and fields["path"] == "/score" and fields["route"] == "/score"
    assert fields["status"] == "200" and float(fields["ms"]) >= 0 and fields["request_id"] == "log-line-id"


def test_keep_alive_and_connection_close(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    for _ in range(3):  # one connection, several requests
        conn.request("POST", "/score", body="{}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read()
        assert resp.getheader("Connection") is None
    conn.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = sock.makefile("rb").read()  # returns only when the server closes: a timeout fails the test
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nConnection: close\r\n" in answer


def test_concurrent_requests_overlap(server) -> None:
    def call(_: int) -> int:
        return server.post("/score", data='{"op": "sleep", "s": 0.2}', timeout=10).status_code

    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        statuses = list(pool.map(call, range(32)))
    elapsed = time.monotonic() - start
    assert statuses == [200] * 32
    assert elapsed < 2.0, f"32 x 0.2 s took {elapsed:.2f}s: requests did not run concurrently"


def test_init_ran_once(server) -> None:
    assert len((server.app_root / "init.log").read_text().splitlines()) == 1
