"""Azure ML entry-script features beyond plain ``run(raw_data)``: swagger, inference_schema, @rawhttp, CORS."""

from __future__ import annotations

import json
import os

import pytest
import requests

from .conftest import launch

SCHEMA_SCRIPT = """
    from inference_schema.schema_decorators import input_schema, output_schema
    from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType

    def init():
        pass

    @input_schema("data", StandardPythonParameterType([[1.0, 2.0, 3.0]]))
    @input_schema("scale", StandardPythonParameterType(2.0), optional=True)
    @output_schema(StandardPythonParameterType([6.0]))
    def run(data, scale=1.0):
        return [sum(row) * scale for row in data]
"""


@pytest.fixture(scope="module")
def schema_server(server_pythonpath, inference_schema_path, tmp_path_factory):
    env = {"PYTHONPATH": f"{server_pythonpath}{os.pathsep}{inference_schema_path}", "SERVICE_NAME": "adder"}
    srv = launch(server_pythonpath, tmp_path_factory.mktemp("app"), SCHEMA_SCRIPT, env=env)
    yield srv
    srv.kill()


def test_inference_schema_script_scores_unchanged(schema_server) -> None:
    r = schema_server.post("/score", json={"data": [[1, 2, 3], [4, 5, 6]]})
    assert r.status_code == 200, r.text
    assert r.json() == [6.0, 15.0]
    assert schema_server.post("/score", json={"data": [[1, 2]], "scale": 10}).json() == [30.0]
    assert "run() style: object" in schema_server.log()


def test_inference_schema_missing_parameter_is_400(schema_server) -> None:
    r = schema_server.post("/score", json={"scale": 2})
    assert r.status_code == 400 and "'data'" in r.json()["message"]
    assert schema_server.post("/score", json=[1, 2]).status_code == 400  # not an object


def test_swagger_from_inference_schema(schema_server) -> None:
    doc = schema_server.get("/swagger.json").json()
    assert doc["swagger"] == "2.0" and doc["info"]["title"] == "adder"
    service_input = doc["definitions"]["ServiceInput"]
    assert service_input["example"] == {"data": [[1.0, 2.0, 3.0]], "scale": 2.0}
    assert service_input["properties"]["data"]["type"] == "array"
    assert doc["definitions"]["ServiceOutput"]["example"] == [6.0]
    assert set(doc["paths"]) == {"/", "/score", "/swagger.json"}
    v3 = schema_server.get("/swagger.json", params={"version": "3"}).json()
    assert v3["openapi"] == "3.0.3" and v3["components"]["schemas"]["ServiceInput"] == service_input
    assert schema_server.get("/swagger.json", params={"version": "3.1"}).json()["openapi"] == "3.1.0"


def test_swagger_documents_are_valid_openapi(schema_server) -> None:
    validator = pytest.importorskip("openapi_spec_validator")
    for version in ("2", "3", "3.1"):
        validator.validate(schema_server.get("/swagger.json", params={"version": version}).json())


def test_swagger_unknown_version_is_404_naming_supported(schema_server) -> None:
    r = schema_server.get("/swagger.json", params={"version": "7"})
    assert r.status_code == 404
    assert r.json() == {"message": "Swagger version [7] is not valid. Supported versions: [2, 3, 3.1]."}


def test_v2_metadata_describes_the_schema_example(schema_server) -> None:
    meta = schema_server.get("/v2/models/model").json()
    assert {"name": "data", "datatype": "FP64", "shape": [-1, 3]} in meta["inputs"]
    assert meta["outputs"] == [{"name": "output-0", "datatype": "FP64", "shape": [-1]}]


def test_v2_infer_reaches_a_schema_decorated_run(schema_server) -> None:
    body = {"inputs": [{"name": "data", "shape": [2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]}
    r = schema_server.post("/v2/models/model/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"] == [
        {"name": "output-0", "datatype": "FP64", "shape": [2], "data": [6.0, 15.0]}
    ]


def test_swagger_for_a_plain_script_and_from_samples(start_server) -> None:
    plain = start_server("def init():\n    pass\n\ndef run(raw_data):\n    return raw_data\n")
    doc = plain.get("/swagger.json").json()
    assert doc["definitions"]["ServiceInput"] == {"type": "object", "example": {}}  # as Azure, undecorated
    sampled = start_server(
        """
        input_sample = {"data": [[1, 2.5]]}
        output_sample = [3.5]

        def init():
            pass

        def run(raw_data):
            return raw_data
        """
    )
    schemas = sampled.get("/swagger.json", params={"version": "3"}).json()["components"]["schemas"]
    assert schemas["ServiceInput"]["example"] == {"data": [[1, 2.5]]}
    assert schemas["ServiceInput"]["properties"]["data"]["items"]["items"]["type"] == "integer"
    assert schemas["ServiceOutput"] == {
        "type": "array",
        "items": {"type": "number", "format": "double"},
        "example": [3.5],
    }


def test_swagger_written_by_the_user_is_served(start_server) -> None:
    own = {"swagger": "2.0", "info": {"title": "mine", "version": "9"}, "paths": {}}
    srv = start_server(
        "def init():\n    pass\n\ndef run(raw_data):\n    return 1\n", files={"swagger.json": json.dumps(own)}
    )
    assert srv.get("/swagger.json").json() == own
    assert srv.get("/swagger.json", params={"version": "3"}).json()["openapi"] == "3.0.3"


RAWHTTP_SCRIPT = """
    import json
    from azureml_inference_server_http.api.aml_request import AMLRequest, rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse

    def init():
        pass

    @rawhttp
    def run(request):
        if request.method == "GET":
            return AMLResponse(request.full_path.encode(), 200, {"X-Seen": "a, b"})
        if request.method == "POST":
            if request.args.get("fail"):
                return AMLResponse("model says no", 503)
            if request.args.get("json"):
                return {"json": request.get_json(), "is_json": request.is_json}
            return AMLResponse(request.get_data()[::-1], 201, {"Content-Type": "application/octet-stream"})
        return AMLResponse("bad request", 500)
"""


def test_rawhttp_without_azure_packages(start_server) -> None:
    srv = start_server(RAWHTTP_SCRIPT)
    assert "run() style: raw" in srv.log()
    r = srv.get("/score", params={"a": "1"})
    assert (r.status_code, r.text) == (200, "/score?a=1")
    assert r.headers["X-Seen"] == "a, b"  # requests joins the two repeated headers
    assert r.headers["Content-Type"].startswith("text/html")
    r = srv.post("/score", data=b"\x00\x01not json")  # raw scripts get any body, unchecked
    assert (r.status_code, r.content) == (201, b"\x00\x01not json"[::-1])
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert float(r.headers["x-ms-run-fn-exec-ms"]) >= 0
    r = srv.post("/score", params={"json": 1}, json={"k": [1]})
    assert r.json() == {"json": {"k": [1]}, "is_json": True}
    r = srv.post("/score", params={"fail": 1}, data=b"x")
    assert (r.status_code, r.text) == (503, "model says no")
    assert r.headers["x-ms-run-function-failed"] == "True"
    r = requests.options(srv.url + "/score", timeout=5)  # OPTIONS reaches a raw run(), as in Azure
    assert r.status_code == 500 and r.text == "bad request"


def test_rawhttp_with_the_older_azureml_contrib_import(start_server) -> None:
    srv = start_server(
        """
        from azureml.contrib.services.aml_request import rawhttp
        from azureml.contrib.services.aml_response import AMLResponse

        def init():
            pass

        @rawhttp
        def run(request):
            return AMLResponse({"h": request.headers.get("x-h"), "q": request.args.getlist("q")}, 200, json_str=True)
        """
    )
    r = srv.get("/score", params=[("q", "1"), ("q", "2")], headers={"X-H": "v"})
    assert r.json() == {"h": "v", "q": ["1", "2"]}


def test_cors_follows_aml_cors_origins(start_server) -> None:
    srv = start_server(
        "def init():\n    pass\n\ndef run(raw_data):\n    return 1\n",
        env={"AML_CORS_ORIGINS": "http://a.example, http://b.example"},
    )
    pre = requests.options(
        srv.url + "/score",
        headers={
            "Origin": "http://a.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-foo",
        },
        timeout=5,
    )
    assert pre.status_code == 200
    assert pre.headers["Access-Control-Allow-Origin"] == "http://a.example"
    assert pre.headers["Access-Control-Allow-Methods"] == "GET, POST"
    assert pre.headers["Access-Control-Allow-Headers"] == "content-type, x-foo"
    assert pre.headers["Vary"] == "Origin"
    r = srv.post("/score", data="{}", headers={"Origin": "http://b.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://b.example"
    other = srv.post("/score", data="{}", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_no_cors_headers_by_default(start_server) -> None:
    srv = start_server("def init():\n    pass\n\ndef run(raw_data):\n    return 1\n")
    r = srv.post("/score", data="{}", headers={"Origin": "http://a.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
