"""``@rawhttp`` scripts reading uploads as Flask's ``request.files``/``.form``: the standard-library request in
images without werkzeug (the multipart parser, its limits and temporary files), and werkzeug's/Flask's own
``Request`` where the image has them."""

from __future__ import annotations

import hashlib
import os
import textwrap
import time
from pathlib import Path

import pytest
from urllib3 import encode_multipart_formdata

from .conftest import install_for_server

# Reads every upload in pieces (so run() itself holds little memory) and reports what a script sees.
UPLOAD_SCRIPT = """
    import hashlib, os
    from azureml_inference_server_http.api.aml_request import rawhttp
    from azureml_inference_server_http.api.aml_response import AMLResponse

    calls = []

    def init():
        pass

    def tmp_files():
        # this process's open files in TMPDIR: where uploads spool
        tmp = os.environ["TMPDIR"].rstrip("/") + "/"
        found = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                target = os.readlink("/proc/self/fd/" + fd)
            except OSError:
                continue
            if target.startswith(tmp):
                found.append(target)
        return found

    def digest(f):
        h, size = hashlib.sha256(), 0
        for chunk in iter(lambda: f.read(65536), b""):
            h.update(chunk)
            size += len(chunk)
        return size, h.hexdigest()

    @rawhttp
    def run(request):
        if request.args.get("op") == "calls":
            return {"calls": len(calls), "tmp_files": tmp_files()}
        calls.append(request.method)
        spooled = tmp_files()  # before any upload is read
        if request.args.get("op") == "sample":  # Azure's binary-payload sample, without PIL
            data = request.files.getlist("file")[0]
            resp = AMLResponse(message=data.stream.read()[::-1], status_code=200)
            resp.mimetype = "image/jpg"
            return resp
        if request.mimetype != "multipart/form-data":
            return {"length": len(request.get_data())}
        files = []
        for field, f in request.files.items(multi=True):
            size, sha = digest(f)
            files.append({"field": field, "name": f.name, "filename": f.filename, "content_type": f.content_type,
                          "mimetype": f.mimetype, "size": size, "sha256": sha})
        saved = None
        if "second" in request.files:
            second = request.files["second"]
            second.stream.seek(0)
            dst = os.path.join(os.environ["TMPDIR"], "saved.bin")
            second.save(dst)
            saved = os.path.getsize(dst)
            os.remove(dst)
        try:
            request.files["no-such-field"]
            missing = None
        except KeyError:
            missing = "KeyError"
        try:
            import werkzeug.wrappers
            is_werkzeug = isinstance(request, werkzeug.wrappers.Request)
        except Exception:  # not installed, or broken
            is_werkzeug = False
        return {
            "type": type(request).__module__ + "." + type(request).__name__,
            "is_werkzeug": is_werkzeug,
            "files": files,
            "first_filenames": [f.filename for f in request.files.getlist("first")],
            "form": request.form.to_dict(flat=False),
            "form_first": request.form.get("note"),
            "args": request.args.to_dict(flat=False),
            "values": sorted(request.values.keys()),
            "full_path": request.full_path,
            "header": request.headers.get("X-Client"),
            "content_length": request.content_length,
            "saved": saved,
            "missing": missing,
            "tmp_files": spooled,
        }
"""

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40  # binary, with CR/LF bytes inside
CSV = b"a,b\r\n1,2\r\n--not-a-boundary\r\n"


def two_files() -> list:
    """Two files under different fields, a second file under a repeated field, and form fields."""
    return [
        ("first", ("photo.png", PNG, "image/png")),
        ("second", ("../../etc/data.csv", CSV, "text/csv; charset=utf-8")),
        ("first", ("empty.bin", b"", "application/octet-stream")),
    ]


def expected_files() -> list[dict]:
    def entry(field, filename, data, content_type):
        return {
            "field": field,
            "name": field,
            "filename": filename,
            "content_type": content_type,
            "mimetype": content_type.split(";")[0],
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    return [
        entry("first", "photo.png", PNG, "image/png"),
        entry("second", "../../etc/data.csv", CSV, "text/csv; charset=utf-8"),
        entry("first", "empty.bin", b"", "application/octet-stream"),
    ]


def group_by_field(files: list[dict]) -> list[dict]:
    """werkzeug's MultiDict lists all values of a key together; ours keeps body order: compare per field."""
    return sorted(files, key=lambda f: f["field"])


def check_two_file_upload(server) -> dict:
    r = server.post(
        "/score",
        params=[("q", "1"), ("q", "2")],
        files=two_files(),
        data=[("note", "hello wörld"), ("note", "again"), ("n", "3")],
        headers={"X-Client": "tests"},
    )
    assert r.status_code == 200, r.text
    got = r.json()
    assert group_by_field(got["files"]) == group_by_field(expected_files())
    assert got["first_filenames"] == ["photo.png", "empty.bin"]
    assert got["form"] == {"note": ["hello wörld", "again"], "n": ["3"]}
    assert got["form_first"] == "hello wörld"
    assert got["args"] == {"q": ["1", "2"]}
    assert got["values"] == ["n", "note", "q"]
    assert got["full_path"] == "/score?q=1&q=2"
    assert got["header"] == "tests"
    assert got["content_length"] == int(r.request.headers["Content-Length"])
    assert got["saved"] == len(CSV)
    assert got["missing"] == "KeyError"
    assert got["tmp_files"] == []  # small uploads stay in memory
    return got


def start_upload_server(start_server, tmp_path: Path, **kwargs):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {"TMPDIR": str(tmp), **kwargs.pop("env", {})}
    return start_server(UPLOAD_SCRIPT, env=env, **kwargs), tmp


# --- the standard-library request ----------------------------------------------------------------------------


def test_two_files_and_fields_reach_request_files(start_server, tmp_path) -> None:
    srv, _ = start_upload_server(start_server, tmp_path)
    got = check_two_file_upload(srv)
    assert (got["type"], got["is_werkzeug"]) == ("ocibuild_serving.rawhttp.RawRequest", False)
    assert "standard-library imitations" in srv.log()


def test_raw_body_and_data_of_a_multipart_request(start_server) -> None:
    srv = start_server(
        """
        import io
        from azureml.contrib.services.aml_request import rawhttp

        def init():
            pass

        @rawhttp
        def run(request):
            f = request.files["f"]
            read = f.read().decode()
            f.seek(0)
            text = io.TextIOWrapper(f.stream, "utf-8").read()  # as csv and pandas read uploads
            return {"data": len(request.data), "get_data": request.get_data(as_text=True), "read": read,
                    "text": text, "bool": bool(f), "repr": repr(f), "headers": f.headers.get("X-Part")}
        """
    )
    body = (
        b"preamble\r\n--XyZ\r\n"
        b'Content-Disposition: form-data; name="f"; filename="a.txt"\r\nContent-Type: text/plain\r\n'
        b"X-Part: 7\r\n\r\nhi\r\n--XyZ--\r\nepilogue"
    )
    r = srv.post("/score", data=body, headers={"Content-Type": 'multipart/form-data; boundary="XyZ"'})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "data": 0,  # Flask's request.data is empty for form bodies
        "get_data": body.decode(),  # the raw body stays available, as get_data() before form access in Flask
        "read": "hi",
        "text": "hi",
        "bool": True,
        "repr": "<FileStorage: 'a.txt' ('text/plain')>",
        "headers": "7",
    }


def test_azure_binary_payload_sample(start_server, tmp_path) -> None:
    srv, _ = start_upload_server(start_server, tmp_path)
    r = srv.post("/score", params={"op": "sample"}, files={"file": ("in.jpg", PNG, "image/jpeg")})
    assert r.status_code == 200, r.text
    assert r.content == PNG[::-1]
    assert r.headers["Content-Type"] == "image/jpg"  # resp.mimetype = "image/jpg", as the sample sets it


def test_chunked_multipart_upload(start_server, tmp_path) -> None:
    srv, _ = start_upload_server(start_server, tmp_path)
    body, content_type = encode_multipart_formdata([("first", ("photo.png", PNG, "image/png"))])

    def pieces():
        for i in range(0, len(body), 1000):
            yield body[i : i + 1000]

    r = srv.post("/score", data=pieces(), headers={"Content-Type": content_type})  # sent chunked
    assert r.status_code == 200, r.text
    assert r.json()["files"][0]["sha256"] == hashlib.sha256(PNG).hexdigest()


BOUNDARY = "b0undary"
PART = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="f"; filename="x"\r\n\r\ndata\r\n'


@pytest.mark.parametrize(
    ("content_type", "body", "message"),
    [
        ("multipart/form-data", PART + f"--{BOUNDARY}--\r\n", "without a boundary parameter"),
        (f"multipart/form-data; boundary={BOUNDARY}", "no delimiter here", "no boundary delimiter found"),
        (f"multipart/form-data; boundary={BOUNDARY}", PART, "ends inside part 1 (no closing boundary)"),
        (f"multipart/form-data; boundary={BOUNDARY}", PART + f"--{BOUNDARY}", "ends right after a boundary"),
        (f"multipart/form-data; boundary={BOUNDARY}", PART[:-3], "ends inside part 1 (no closing boundary)"),
        (f"multipart/form-data; boundary={BOUNDARY}", PART[:40], "ends inside part 1's headers"),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f"--{BOUNDARY}\r\nno colon here\r\n\r\nx\r\n--{BOUNDARY}--\r\n",
            "part 1 has a bad header line 'no colon here'",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--\r\n",
            "part 1 has no 'Content-Disposition: form-data; name=...'",
        ),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            f"--{BOUNDARY}junk\r\n" + PART[len(BOUNDARY) + 4 :] + f"--{BOUNDARY}--\r\n",
            "not followed by a line break",
        ),
    ],
    ids=["no-boundary-param", "no-delimiter", "no-final", "cut-after-delimiter", "truncated-data",
         "truncated-headers", "bad-header", "no-disposition", "bad-delimiter-line"],
)  # fmt: skip
def test_malformed_multipart_is_400_before_run(start_server, tmp_path, content_type, body, message) -> None:
    srv, _ = start_upload_server(start_server, tmp_path)
    r = srv.post("/score", data=body.encode(), headers={"Content-Type": content_type})
    assert r.status_code == 400, r.text
    assert message in r.json()["message"]
    assert srv.get("/score", params={"op": "calls"}).json()["calls"] == 0  # run() never saw it


def test_too_many_parts_and_too_large_fields_are_413(start_server, tmp_path) -> None:
    srv, _ = start_upload_server(start_server, tmp_path)
    r = srv.post("/score", files=[("f", (None, "x")) for _ in range(1001)])
    assert r.status_code == 413 and "more than 1000 parts" in r.json()["message"]
    r = srv.post("/score", files={"big": (None, "x" * 500_001)})
    assert r.status_code == 413 and "'big' is larger than 500000 bytes" in r.json()["message"]
    r = srv.post("/score", files={"ok": (None, "x" * 500_000)})
    assert r.status_code == 200 and r.json()["form"] == {"ok": ["x" * 500_000]}


def test_multipart_over_the_request_limit_is_413(start_server, tmp_path) -> None:
    srv, _ = start_upload_server(start_server, tmp_path, env={"OCIBUILD_MAX_REQUEST_BYTES": "5000"})
    r = srv.post("/score", files={"f": ("a.bin", b"x" * 6000)})
    assert r.status_code == 413 and "exceeds the limit of 5000 bytes" in r.json()["message"]
    assert srv.get("/score", params={"op": "calls"}).json()["calls"] == 0


def vm_hwm_kib(pid: int) -> int:
    """The process's peak resident memory so far."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def test_big_upload_spools_to_disk_with_bounded_memory(start_server, tmp_path) -> None:
    """64 MiB uploaded as a file raise the server's peak memory by a few MiB; the same bytes as a plain body (read
    whole, as ``get_data()`` needs them) by at least 64 MiB, which shows the measurement sees such growth."""
    srv, tmp = start_upload_server(start_server, tmp_path)
    big = os.urandom(1 << 20) * 64
    check_two_file_upload(srv)  # warm: every code path imported
    before = vm_hwm_kib(srv.proc.pid)
    start = time.monotonic()
    r = srv.post("/score", files=[("first", ("big.bin", big, "application/octet-stream"))], timeout=60)
    elapsed = time.monotonic() - start
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["files"][0]["size"] == len(big)
    assert got["files"][0]["sha256"] == hashlib.sha256(big).hexdigest()
    # While run() ran: the spooled body and the spooled file, both in TMPDIR (already unlinked); the file's
    # name is the client's and was never used as a path.
    assert len(got["tmp_files"]) == 2 and all(p.startswith(str(tmp)) for p in got["tmp_files"])
    assert sorted(os.listdir(tmp)) == []
    after_upload = vm_hwm_kib(srv.proc.pid)
    growth_mib = (after_upload - before) / 1024
    assert growth_mib < 16, f"a 64 MiB upload raised the peak memory by {growth_mib:.1f} MiB"
    assert srv.get("/score", params={"op": "calls"}).json()["tmp_files"] == []  # closed after run()
    r = srv.post("/score", data=big, headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert r.json() == {"length": len(big)}
    control_mib = (vm_hwm_kib(srv.proc.pid) - after_upload) / 1024
    assert control_mib >= 48, f"a 64 MiB plain body raised the peak by only {control_mib:.1f} MiB"
    print(
        f"64 MiB upload: {elapsed:.2f} s, peak memory +{growth_mib:.1f} MiB (plain body: +{control_mib:.1f} MiB)"
    )


# --- werkzeug's and Flask's own Request ------------------------------------------------------------------------

# What an image's requirements may bring: Azure's server 1.5 pins flask~=3.1; werkzeug 2.0.3 is the oldest
# werkzeug whose Request has get_json() and uses the pre-2.2 multipart parser.
WERKZEUG_INSTALLS = {
    "flask-3.1": (["flask==3.1.3"], "flask.wrappers.Request"),
    "werkzeug-3.1": (["werkzeug==3.1.9"], "werkzeug.wrappers.request.Request"),
    "werkzeug-2.0": (["werkzeug==2.0.3"], "werkzeug.wrappers.request.Request"),
}


@pytest.fixture(scope="module", params=sorted(WERKZEUG_INSTALLS))
def werkzeug_install(request) -> tuple[Path, str]:
    requirements, request_type = WERKZEUG_INSTALLS[request.param]
    return install_for_server(request.param, requirements), request_type


def test_werkzeug_request_when_the_image_has_it(start_server, server_pythonpath, tmp_path, werkzeug_install):
    path, request_type = werkzeug_install
    srv, tmp = start_upload_server(
        start_server, tmp_path, env={"PYTHONPATH": f"{server_pythonpath}{os.pathsep}{path}"}
    )
    got = check_two_file_upload(srv)
    assert (got["type"], got["is_werkzeug"]) == (request_type, True)
    assert f"@rawhttp requests are {request_type} objects" in srv.log()
    # Still refused before run(), though werkzeug itself would hand run() an empty form.
    r = srv.post(
        "/score", data=PART.encode(), headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )
    assert r.status_code == 400 and "no closing boundary" in r.json()["message"]
    big = os.urandom(1 << 20) * 3
    r = srv.post("/score", files={"first": ("big.bin", big)})
    assert r.json()["files"][0]["sha256"] == hashlib.sha256(big).hexdigest()
    assert len(r.json()["tmp_files"]) == 1  # the body, spooled by us; werkzeug parses it when run() asks
    assert srv.get("/score", params={"op": "calls"}).json()["tmp_files"] == []  # request.close() after run()
    r = srv.post("/score", data=b"x" * 10, headers={"Content-Type": "application/octet-stream"})
    assert r.json() == {"length": 10}


FAKE_WERKZEUG = {
    "import-fails": {"werkzeug/__init__.py": "raise RuntimeError('half-installed')"},
    "request-fails": {
        "werkzeug/__init__.py": "",
        "werkzeug/wrappers.py": """
            class Request:
                def __init__(self, environ):
                    raise TypeError("Request() needs something else here")

                def get_json(self):
                    pass
        """,
    },
}


@pytest.mark.parametrize("kind", sorted(FAKE_WERKZEUG))
def test_broken_werkzeug_falls_back_to_the_stdlib_request(
    start_server, server_pythonpath, tmp_path, kind
) -> None:
    site = tmp_path / "site"
    for name, text in FAKE_WERKZEUG[kind].items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_text(textwrap.dedent(text))
    srv, _ = start_upload_server(
        start_server, tmp_path, env={"PYTHONPATH": f"{server_pythonpath}{os.pathsep}{site}"}
    )
    for _ in range(2):
        got = check_two_file_upload(srv)
        assert got["type"] == "ocibuild_serving.rawhttp.RawRequest"
    log = srv.log()
    if kind == "import-fails":
        assert "werkzeug is installed but does not import (RuntimeError: half-installed)" in log
    else:
        assert "building werkzeug.wrappers.Request failed (TypeError: Request() needs something else" in log
        assert log.count("using the standard-library request object from now on") == 1


def test_werkzeug_1_without_get_json_is_not_used(start_server, server_pythonpath, tmp_path) -> None:
    path = install_for_server("werkzeug-1.0", ["werkzeug==1.0.1"])
    srv, _ = start_upload_server(
        start_server, tmp_path, env={"PYTHONPATH": f"{server_pythonpath}{os.pathsep}{path}"}
    )
    assert check_two_file_upload(srv)["type"] == "ocibuild_serving.rawhttp.RawRequest"
    assert "werkzeug.wrappers.Request (werkzeug 1.0.1) has no get_json(); not using it" in srv.log()
