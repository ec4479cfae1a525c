"""``GET /metrics``: Prometheus text, counted per route template and status, summed over worker processes."""

from __future__ import annotations

import re

from ocibuild.serving.metrics import Metrics

from .conftest import wait_for

SCRIPT = """
    import json

    def init():
        pass

    def run(raw_data):
        if json.loads(raw_data).get("fail"):
            raise ValueError("no")
        return 1
"""


def parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` for every sample line."""
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    return samples


def test_metrics_count_routes_statuses_and_latency(start_server) -> None:
    srv = start_server(SCRIPT)
    for _ in range(3):
        srv.post("/score", data="{}")
    srv.post("/score", data='{"fail": 1}')
    srv.post("/score", data="{nope")
    srv.get("/v2/models/model/ready")
    srv.get("/v2/models/model/versions/1/ready")
    srv.get("/some/where/else")
    r = srv.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    m = parse(r.text)
    assert m['ocibuild_serving_requests_total{route="/score",code="200"}'] == 3
    assert m['ocibuild_serving_requests_total{route="/score",code="500"}'] == 1
    assert m['ocibuild_serving_requests_total{route="/score",code="400"}'] == 1
    # templates, not raw paths: the number of series stays bounded
    assert m['ocibuild_serving_requests_total{route="/v2/models/{name}/ready",code="404"}'] == 1
    assert m['ocibuild_serving_requests_total{route="/v2/models/{name}/ready",code="200"}'] == 1
    assert m['ocibuild_serving_requests_total{route="other",code="404"}'] == 1
    assert m['ocibuild_serving_request_duration_seconds_count{route="/score"}'] == 5
    assert m['ocibuild_serving_request_duration_seconds_bucket{route="/score",le="+Inf"}'] == 5
    assert 0 < m['ocibuild_serving_request_duration_seconds_sum{route="/score"}'] < 5
    buckets = [
        v
        for k, v in m.items()
        if k.startswith('ocibuild_serving_request_duration_seconds_bucket{route="/score"')
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert m["ocibuild_serving_requests_in_flight"] == 1  # this very request
    assert m["ocibuild_serving_ready"] == 1
    assert "/some/where" not in r.text
    assert re.search(r"^# TYPE ocibuild_serving_request_duration_seconds histogram$", r.text, re.M)


def test_metrics_are_summed_over_workers(start_server) -> None:
    srv = start_server(SCRIPT, env={"WORKER_COUNT": "2"})
    wait_for(lambda: srv.log().count("is ready") == 2)
    pids = set()
    for _ in range(40):  # new connections each time: the workers share them
        srv.post("/score", data="{}", headers={"Connection": "close"})
    for line in srv.log().splitlines():
        if "access method=POST" in line:
            pids.add(line.split("[", 1)[1].split("]", 1)[0])
    m = parse(srv.get("/metrics", headers={"Connection": "close"}).text)
    assert m['ocibuild_serving_requests_total{route="/score",code="200"}'] == 40
    assert m["ocibuild_serving_ready"] == 2
    assert len(pids) == 2, "both workers should have answered some of the 40 requests"


def test_render_without_requests() -> None:
    text = Metrics(2).render()
    assert "ocibuild_serving_requests_in_flight 0" in text and "_bucket" not in text
