"""KServe V2 / Open Inference Protocol routes over real HTTP, including requests built by ``tritonclient``."""

from __future__ import annotations

import json

import pytest
import requests

from ocibuild.serving import v2

from .conftest import launch

SCRIPT = """
    import json, time

    def init():
        pass

    def run(raw_data):
        data = json.loads(raw_data)
        if "data" in data:
            x = data["data"]
            if x == ["raise"]:
                raise RuntimeError("boom")
            if x == ["sleep"]:
                time.sleep(1)
            if isinstance(x, list) and x and isinstance(x[0], list) and isinstance(x[0][0], (int, float)):
                return [sum(row) for row in x]  # a prediction per row
            return x
        return {"sum": [sum(v) for v in data["a"]], "names": data["b"], "flags": [True, False], "meta": {"k": 1}}
"""


@pytest.fixture(scope="module")
def server(server_pythonpath, tmp_path_factory):
    env = {"OCIBUILD_MODEL_NAME": "ridge", "OCIBUILD_MODEL_VERSION": "3", "SCORING_TIMEOUT_MS": "300"}
    srv = launch(server_pythonpath, tmp_path_factory.mktemp("app"), SCRIPT, env=env)
    yield srv
    srv.kill()


def infer(server, body, path="/v2/models/ridge/infer", **kwargs):
    return server.post(path, data=json.dumps(body) if not isinstance(body, bytes) else body, **kwargs)


def test_health_and_metadata(server) -> None:
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/ridge/ready",
        "/v2/models/ridge/versions/3/ready",
    ):
        r = server.get(path)
        assert (r.status_code, r.content) == (200, b""), path
    meta = server.get("/v2").json()
    assert meta["name"] == "ocibuild-serving" and "binary_tensor_data" in meta["extensions"]
    model = server.get("/v2/models/ridge").json()
    assert model["name"] == "ridge" and model["versions"] == ["3"]
    assert model["inputs"] == [] and model["outputs"] == []  # nothing declares them in this script


def test_unknown_model_or_version_is_404_in_v2_shape(server) -> None:
    for path in ("/v2/models/other", "/v2/models/ridge/versions/9/infer", "/v2/models/ridge/nope"):
        r = server.get(path) if not path.endswith("infer") else infer(server, {}, path)
        assert r.status_code == 404 and set(r.json()) == {"error"}, path


def test_infer_one_input_reshapes_and_maps_to_data(server) -> None:
    body = {
        "id": "req-7",
        "inputs": [{"name": "input-0", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6.5]}],
    }
    r = infer(server, body)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_name": "ridge",
        "model_version": "3",
        "id": "req-7",
        "outputs": [{"name": "output-0", "datatype": "FP64", "shape": [2], "data": [6, 15.5]}],
    }
    nested = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "INT64", "data": [[1, 2], [3, 4]]}]}
    out = infer(server, nested, "/v2/models/ridge/versions/3/infer").json()["outputs"][0]
    assert (out["datatype"], out["shape"], out["data"]) == ("INT64", [2], [3, 7])


def test_infer_several_inputs_and_dict_outputs(server) -> None:
    body = {
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "INT32", "data": [1, 2, 3, 4]},
            {"name": "b", "shape": [2], "datatype": "BYTES", "data": ["x", "y"]},
        ],
        "outputs": [{"name": "sum"}, {"name": "names"}, {"name": "flags"}, {"name": "meta"}],
    }
    outputs = {o["name"]: o for o in infer(server, body).json()["outputs"]}
    assert outputs["sum"] == {"name": "sum", "datatype": "INT64", "shape": [2], "data": [3, 7]}
    assert outputs["names"] == {"name": "names", "datatype": "BYTES", "shape": [2], "data": ["x", "y"]}
    assert outputs["flags"]["datatype"] == "BOOL" and outputs["flags"]["data"] == [True, False]
    assert outputs["meta"] == {"name": "meta", "datatype": "BYTES", "shape": [1], "data": ['{"k": 1}']}
    body["outputs"] = [{"name": "sum"}]
    assert [o["name"] for o in infer(server, body).json()["outputs"]] == ["sum"]


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "not valid JSON"),
        ({"inputs": []}, "non-empty list"),
        ({"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2]}]}, "needs 3 elements"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP99", "data": [1]}]}, "datatype"),
        ({"inputs": [{"name": "x", "shape": [1], "datatype": "INT64", "data": ["a"]}]}, "str value"),
        ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": [1]}]}, "non-negative"),
        ({"inputs": [{"shape": [1], "datatype": "FP32", "data": [1]}]}, "name"),
    ],
)
def test_malformed_infer_requests_are_400(server, body, fragment) -> None:
    r = infer(server, body)
    assert r.status_code == 400, r.text
    assert fragment in r.json()["error"]


def test_run_failure_and_timeout_in_v2_shape(server) -> None:
    r = infer(server, {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["raise"]}]})
    assert r.status_code == 500 and "scoring script" in r.json()["error"]
    r = infer(server, {"inputs": [{"name": "x", "shape": [1], "datatype": "BYTES", "data": ["sleep"]}]})
    assert r.status_code == 504 and r.json() == {"error": "Scoring timeout after 300 ms"}
    assert server.get("/v2/health/live").status_code == 200


def test_wrong_method_is_405(server) -> None:
    assert server.get("/v2/models/ridge/infer").status_code == 405
    assert server.post("/v2/health/live", data="").status_code == 405


# --- requests built by tritonclient, the standard Open Inference Protocol client ----------------------------------


def test_tritonclient_json_and_binary(server) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    np = pytest.importorskip("numpy")
    client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
    try:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("ridge")
        assert client.get_model_metadata("ridge")["name"] == "ridge"
        x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.5]], dtype=np.float32)
        for binary_in in (False, True):
            inp = httpclient.InferInput("input-0", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary_in)
            for outputs in (None, [httpclient.InferRequestedOutput("output-0", binary_data=False)]):
                result = client.infer("ridge", [inp], outputs=outputs, request_id="t-1")
                got = result.as_numpy("output-0")
                assert got.tolist() == [6.0, 15.5], (binary_in, outputs)
                assert result.get_response()["id"] == "t-1"
        strings = np.array([b"caf\xc3\xa9", b"x"], dtype=np.object_)
        inp = httpclient.InferInput("s", [2], "BYTES")
        inp.set_data_from_numpy(strings, binary_data=True)
        result = client.infer("ridge", [inp])  # outputs come back binary: BYTES length-prefixed
        assert result.as_numpy("output-0").tolist() == [b"caf\xc3\xa9", b"x"]
    finally:
        client.close()


def test_tritonclient_request_body_parsed_like_ours() -> None:
    """The exact bytes tritonclient sends (JSON header + binary tensor) decode to the same nested lists."""
    httpclient = pytest.importorskip("tritonclient.http")
    np = pytest.importorskip("numpy")
    from tritonclient.http._utils import _get_inference_request

    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    a = httpclient.InferInput("a", [2, 3], "INT32")
    a.set_data_from_numpy(x, binary_data=True)
    b = httpclient.InferInput("b", [3], "BOOL")
    b.set_data_from_numpy(np.array([True, False, True]), binary_data=False)
    body, json_size = _get_inference_request([a, b], "", None, 0, False, False, 0, None, None)
    request = v2.decode_request(body, {v2.HEADER_LENGTH: str(json_size)})
    assert request.run_input() == {"a": [[0, 1, 2], [3, 4, 5]], "b": [True, False, True]}
    assert request.wants_binary("output-0")


# --- the codec, without HTTP ---------------------------------------------------------------------------------------


def test_reshape_and_flatten() -> None:
    assert v2.reshape(list(range(6)), [2, 3]) == [[0, 1, 2], [3, 4, 5]]
    assert v2.reshape(list(range(8)), [2, 2, 2]) == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    assert v2.reshape([], [0, 3]) == []
    assert v2.reshape([], [2, 0]) == [[], []]
    assert v2.reshape([7], []) == 7
    assert v2.flatten([[1, [2, 3]], [4]], "x") == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ([[1, 2], [3, 4]], ("INT64", [2, 2], [1, 2, 3, 4])),
        ([1, 2.5], ("FP64", [2], [1, 2.5])),
        (True, ("BOOL", [1], [True])),
        ("text", ("BYTES", [1], ["text"])),
        ([], ("FP64", [0], [])),
        ([[1, 2], [3]], None),  # ragged
        ([1, "a"], None),  # mixed
        ([None], None),
    ],
)
def test_infer_tensor(value, expected) -> None:
    assert v2.infer_tensor(value) == expected


def test_binary_outputs_round_trip() -> None:
    req = v2.InferRequest({"parameters": {"binary_data_output": True}}, [])
    body, json_len = v2.response_body("m", None, req, [("o", [[1.5, 2.0]]), ("s", ["ab"])])
    head = json.loads(body[:json_len])
    assert [o["parameters"]["binary_data_size"] for o in head["outputs"]] == [16, 6]
    assert body[json_len:] == b"\x00\x00\x00\x00\x00\x00\xf8?" + b"\x00" * 7 + b"@" + b"\x02\x00\x00\x00ab"


def test_not_ready_model_is_400_then_200(start_server) -> None:
    srv = start_server(
        """
        import os, time
        def init():
            while not os.path.exists("go"):
                time.sleep(0.01)
        def run(raw_data):
            return 1
        """,
        ready=False,
    )
    srv.wait_status("/v2/health/live", 200)
    assert srv.status("/v2/health/ready") == 400
    assert requests.post(srv.url + "/v2/models/model/infer", data="{}", timeout=5).status_code == 503
    (srv.app_root / "go").touch()
    srv.wait_status("/v2/models/model/ready", 200)
