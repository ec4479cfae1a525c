"""Package sources, source-only packages and ``--exclude-newer``, with the real installers (uv and pip) against a
real pypiserver behind Basic auth (the ``package_index`` fixture), a find-links folder, and a PEP 691 index of the
tests' own that publishes upload times (pypiserver does not)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from ocibuild.errors import DependencyError, UsageError
from ocibuild.packaging.sdist import SourceBuild, build_pure_wheel, pure_wheel_tags
from ocibuild.packaging.sources import PackageSources, Redactor, parse_exclude_newer, redact_urls
from ocibuild.packaging.wheels import _find_uv, install_dependencies
from ocibuild.rootfs.pyenv import TargetPython
from tests.conftest import INDEX_PASSWORD, INDEX_USER, NETRC_PASSWORD, NETRC_USER, free_port, run, write_wheel

INSTALLERS = [
    "pip",
    pytest.param("uv", marks=pytest.mark.skipif(_find_uv() is None, reason="uv is not installed")),
]


def target() -> TargetPython:
    return TargetPython((3, 11), 2, "/usr/bin/python3", "glibc", (2, 36), "amd64", None)


def forms(secret: str, user: str = INDEX_USER) -> set[str]:
    """Every spelling in which the password could leak."""
    return {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        repr(secret)[1:-1],
        base64.b64encode(f"{user}:{secret}".encode()).decode(),
    }


def assert_no_secret(haystack: str | bytes, where: str, secret: str = INDEX_PASSWORD) -> None:
    for form in forms(secret):
        needle = form.encode() if isinstance(haystack, bytes) else form
        assert needle not in haystack, f"the index password ({form[:3]}…) leaked into {where}"


def imports(site: Path, module: str) -> str:
    """Import ``module`` from ``site`` alone, in a fresh interpreter, and return its NAME."""
    out = run([sys.executable, "-S", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); import {module}; "
               f"print({module}.NAME)"])  # fmt: skip
    return out.stdout.strip()


# ---- options, keys and redaction: no installer ---------------------------------------------------------------


def test_redaction_of_urls_and_known_secrets(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".netrc").write_text("machine idx.example login bob password n3trc-Secret\n")
    monkeypatch.setenv("UV_INDEX_CORP_PASSWORD", "uv-Env-Secret")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://alice:pip%2Fenv@idx.example/simple")
    sources = PackageSources.create(
        index_url=f"http://{INDEX_USER}:{quote(INDEX_PASSWORD, safe='')}@h/simple/"
    )
    redact = Redactor(sources.secrets())
    text = (
        f"GET http://{INDEX_USER}:{quote(INDEX_PASSWORD, safe='')}@h/simple/x/ failed; password {INDEX_PASSWORD}; "
        "netrc n3trc-Secret; uv uv-Env-Secret; pip pip/env and pip%2Fenv; token https://tok3n@h2/simple"
    )
    out = redact(text)
    assert_no_secret(out, "redacted text")
    for secret in ("n3trc-Secret", "uv-Env-Secret", "pip/env", "pip%2Fenv", "tok3n"):
        assert secret not in out
    assert "http://****@h/simple/x/" in out and "https://****@h2/simple" in out
    assert redact_urls("see https://u:p@host/a and file:///x") == "see https://****@host/a and file:///x"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"index_url": "https://h/simple", "no_index": True, "find_links": ["."]}, "--no-index contradicts"),
        ({"no_index": True}, "--no-index leaves nowhere to find packages; add --find-links DIR"),
        ({"find_links": ["/no/such/dir"]}, "--find-links /no/such/dir: no such directory"),
        ({"index_url": "ftp://u:secret@h/simple"}, "--index-url 'ftp://****@h/simple' is not an index URL"),
        (
            {"extra_index_urls": ["pypi.org/simple"]},
            "--extra-index-url 'pypi.org/simple' is not an index URL",
        ),
    ],
)
def test_bad_sources_are_one_line(kwargs, message):
    with pytest.raises(UsageError) as e:
        PackageSources.create(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "secret" not in str(e.value)


def test_exclude_newer_forms():
    assert parse_exclude_newer("2021-06-01") == "2021-06-01T00:00:00Z"
    assert parse_exclude_newer("2021-06-01T12:30:00Z") == "2021-06-01T12:30:00Z"
    assert parse_exclude_newer("2021-06-01T14:30:00+02:00") == "2021-06-01T12:30:00Z"
    with pytest.raises(UsageError, match="--exclude-newer 'last tuesday' is not a date; give YYYY-MM-DD"):
        parse_exclude_newer("last tuesday")


def test_key_doc_drops_credentials_and_follows_find_links_content(tmp_path):
    folder = tmp_path / "wheels"
    folder.mkdir()
    (folder / "a-1.0-py3-none-any.whl").write_bytes(b"one")
    one = PackageSources.create("https://u:pw1@h/simple", ["https://t0ken@x/simple"], [folder])
    two = PackageSources.create("https://u:pw2@h/simple", ["https://other@x/simple"], [folder])
    assert one.key_doc() == two.key_doc()  # a new password is not a new layer
    assert "pw1" not in json.dumps(one.key_doc()) and "t0ken" not in json.dumps(one.key_doc())
    before = one.key_doc()
    (folder / "a-1.0-py3-none-any.whl").write_bytes(b"two")
    assert one.key_doc() != before  # a wheel replaced in the folder is
    assert one.key_doc()["find_links"][0] == [["a-1.0-py3-none-any.whl", hashlib.sha256(b"two").hexdigest()]]


def test_uv_index_credentials_reach_a_pip_source_build(tmp_path):
    env = {"UV_INDEX": "corp=https://idx.example/simple", "UV_INDEX_CORP_USERNAME": "bob",
           "UV_INDEX_CORP_PASSWORD": "p@ss", "PIP_INDEX_URL": "https://elsewhere/simple"}  # fmt: skip
    PackageSources().pip_env_like_uv(env)
    assert env["PIP_EXTRA_INDEX_URL"] == "https://bob:p%40ss@idx.example/simple"
    assert "PIP_INDEX_URL" not in env and env["PIP_CONFIG_FILE"] == os.devnull


# ---- source-only packages -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("installer", INSTALLERS)
def test_source_only_pure_package_installs(package_index, isolated_env, tmp_path, installer):
    lines: list[str] = []
    site = tmp_path / "site"
    sources = PackageSources.create(find_links=[package_index.dists], no_index=True)
    install_dependencies(target(), site, packages=["ocitest-puresrc", "ocitest-pure"], sources=sources,
                         installer=installer, progress=lines.append)  # fmt: skip
    assert any(ln.startswith("building ocitest-puresrc") for ln in lines), lines
    assert (
        "built ocitest-puresrc 1.0 from source (pure Python: ocitest_puresrc-1.0-py3-none-any.whl)" in lines
    )
    assert imports(site, "ocitest_puresrc") == "ocitest-puresrc 1.0"
    assert imports(site, "ocitest_pure") == "ocitest-pure 1.0"
    assert not any(site.glob("*.dist-info/direct_url.json"))
    assert not (site / ".lock").exists()  # uv's lock of the folder it installed into is not shipped


@pytest.mark.parametrize("installer", INSTALLERS)
def test_compiled_source_only_package_is_refused_in_one_line(
    package_index, isolated_env, tmp_path, installer
):
    sources = PackageSources.create(find_links=[package_index.dists], no_index=True)
    with pytest.raises(DependencyError) as e:
        install_dependencies(target(), tmp_path / "site", packages=["ocitest-cext"], sources=sources,
                             installer=installer)  # fmt: skip
    message = str(e.value)
    assert "\n" not in message
    name = "ocitest-cext 1.0" if installer == "uv" else "ocitest-cext"
    assert message.startswith(
        f"{name} has no wheel for cp311 manylinux_2_36_x86_64 and its source needs a compiler"
    )
    assert "pin a version of ocitest-cext that publishes a wheel" in message and "--find-links DIR" in message
    assert not list((tmp_path / "site").glob("ocitest_cext*"))


def test_a_compiled_sdist_is_refused_even_when_it_builds(package_index, isolated_env, tmp_path, monkeypatch):
    """Were a compiler to slip past the stubs, the wheel's own tags still refuse it."""
    from ocibuild.packaging import sdist

    monkeypatch.setattr(sdist, "_COMPILERS", ())
    monkeypatch.setattr(sdist, "_build_env", lambda env, stubs: {**env, "SOURCE_DATE_EPOCH": "315532800"})

    def runner(cmd, env):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).splitlines()

    with pytest.raises(DependencyError, match=r"its source builds a platform wheel \(ocitest_cext-1.0-cp311"):
        build_pure_wheel(SourceBuild("ocitest-cext", "==1.0"), tmp_path / "wh", env=dict(os.environ),
                         source_args=["--no-index", "--find-links", str(package_index.dists)], run=runner,
                         platform="cp311 manylinux_2_36_aarch64")  # fmt: skip
    assert not (tmp_path / "wh").exists()


def test_same_source_archive_same_wheel_bytes(package_index, isolated_env, tmp_path):
    """Two builds with nothing cached give the same bytes; every zip entry carries SOURCE_DATE_EPOCH's time."""

    def runner(cmd, env):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).splitlines()

    (archive,) = package_index.dists.glob("ocitest?puresrc-1.0.tar.gz")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    wheels = []
    for n in (1, 2):
        env = {**os.environ, "PIP_CACHE_DIR": str(tmp_path / f"cache{n}")}
        wheels.append(build_pure_wheel(SourceBuild("ocitest-puresrc", "==1.0", sha), tmp_path / f"wh{n}",
                                       env=env, source_args=["--no-index", "--find-links", str(package_index.dists)],
                                       run=runner, platform="cp311 manylinux_2_36_x86_64"))  # fmt: skip
    assert wheels[0].read_bytes() == wheels[1].read_bytes()
    with zipfile.ZipFile(wheels[0]) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert pure_wheel_tags(wheels[0]) == (["py3-none-any"], True)


def test_wrong_hash_is_refused(package_index, isolated_env, tmp_path):
    """The build takes the very archive the resolver chose: another one with the same name is refused."""

    def runner(cmd, env):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        return proc.returncode, (proc.stdout + proc.stderr).splitlines()

    with pytest.raises(DependencyError, match="building it from source failed"):
        build_pure_wheel(SourceBuild("ocitest-puresrc", "==1.0", "0" * 64), tmp_path / "wh", env=dict(os.environ),
                         source_args=["--no-index", "--find-links", str(package_index.dists)], run=runner,
                         platform="cp311 manylinux_2_36_x86_64")  # fmt: skip


# ---- a private index behind Basic auth ---------------------------------------------------------------------------


@pytest.mark.parametrize("installer", INSTALLERS)
def test_private_index_credentials_in_the_url(package_index, isolated_env, tmp_path, installer, capfd):
    lines: list[str] = []
    site = tmp_path / "site"
    sources = PackageSources.create(index_url=package_index.url_with())
    install_dependencies(target(), site, packages=["ocitest-pure", "ocitest-puresrc"], sources=sources,
                         installer=installer, progress=lines.append)  # fmt: skip
    assert imports(site, "ocitest_pure") == "ocitest-pure 1.0"
    assert imports(site, "ocitest_puresrc") == "ocitest-puresrc 1.0"  # built from the private index's archive
    assert_no_secret("\n".join(lines), "progress lines")
    out, err = capfd.readouterr()
    assert_no_secret(out + err, "stdout/stderr")
    for path in site.rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes(), f"installed file {path.relative_to(site)}")


@pytest.mark.parametrize("installer", INSTALLERS)
def test_wrong_password_fails_in_one_line_and_the_log_holds_no_secret(package_index, isolated_env, tmp_path,
                                                                      installer):  # fmt: skip
    wrong = 'Wr0ng:"pa ss%@'
    sources = PackageSources.create(index_url=package_index.url_with(password=wrong))
    with pytest.raises(DependencyError) as e:
        install_dependencies(target(), tmp_path / "site", packages=["ocitest-pure"], sources=sources,
                             installer=installer)  # fmt: skip
    message = str(e.value)
    assert "\n" not in message
    assert_no_secret(message, "the error", wrong)
    log = Path(re.search(r"log: (\S+?)\)?$", message)[1])
    try:
        data = log.read_bytes()
        assert b"$ " in data  # the log kept on failure is there and has the commands
        assert_no_secret(data, "the installer log kept on failure", wrong)
    finally:
        log.unlink()


@pytest.mark.parametrize("installer", INSTALLERS)
def test_credentials_from_netrc(package_index, isolated_env, tmp_path, installer):
    host = package_index.host.split(":")[0]
    netrc = isolated_env / ".netrc"
    netrc.write_text(f"machine {host}\n  login {NETRC_USER}\n  password {NETRC_PASSWORD}\n")
    netrc.chmod(0o600)
    lines: list[str] = []
    site = tmp_path / "site"
    install_dependencies(target(), site, packages=["ocitest-pure", "ocitest-puresrc"], installer=installer,
                         progress=lines.append, sources=PackageSources.create(index_url=package_index.url))  # fmt: skip
    assert imports(site, "ocitest_pure") == "ocitest-pure 1.0"
    assert imports(site, "ocitest_puresrc") == "ocitest-puresrc 1.0"
    assert_no_secret("\n".join(lines), "progress lines", NETRC_PASSWORD)


@pytest.mark.parametrize("installer", INSTALLERS)
def test_credentials_from_the_installers_environment(
    package_index, isolated_env, tmp_path, installer, monkeypatch
):
    """``PIP_INDEX_URL`` for pip, ``UV_INDEX_URL`` for uv, with no ocibuild option: the source build (pip, also
    under uv) finds the same private index."""
    monkeypatch.setenv("PIP_INDEX_URL" if installer == "pip" else "UV_INDEX_URL", package_index.url_with())
    lines: list[str] = []
    site = tmp_path / "site"
    install_dependencies(
        target(), site, packages=["ocitest-puresrc"], installer=installer, progress=lines.append
    )
    assert imports(site, "ocitest_puresrc") == "ocitest-puresrc 1.0"
    assert_no_secret("\n".join(lines), "progress lines")


# ---- air-gapped: --no-index --find-links --------------------------------------------------------------------------


@pytest.mark.parametrize("installer", INSTALLERS)
def test_no_index_find_links_needs_no_network(package_index, isolated_env, tmp_path, installer, monkeypatch):
    closed = f"http://127.0.0.1:{free_port()}"
    for var in ("PIP_INDEX_URL", "UV_INDEX_URL", "UV_DEFAULT_INDEX"):
        monkeypatch.setenv(var, f"{closed}/simple/")
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, closed)  # anything that tried the network would fail
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "uv-cache"))  # nothing from earlier downloads
    monkeypatch.setenv("PIP_CACHE_DIR", str(tmp_path / "pip-cache"))
    site = tmp_path / "site"
    sources = PackageSources.create(find_links=[package_index.dists], no_index=True)
    install_dependencies(target(), site, packages=["ocitest-pure", "ocitest-puresrc"], sources=sources,
                         installer=installer)  # fmt: skip
    assert imports(site, "ocitest_pure") == "ocitest-pure 1.0"
    assert imports(site, "ocitest_puresrc") == "ocitest-puresrc 1.0"
    # The same install without --no-index does reach for the (closed) index, so the test can fail.
    with pytest.raises(DependencyError, match="cannot reach the package index") as e:
        install_dependencies(target(), tmp_path / "site2", packages=["ocitest-pure"], installer=installer)
    Path(re.search(r"log: (\S+?)\)?$", str(e.value))[1]).unlink()


# ---- --exclude-newer ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dated_index(tmp_path_factory) -> Iterator[str]:
    """A PEP 691 JSON simple index that publishes upload times: ocitest-dated 1.0 (2020) and 2.0 (2023)."""
    folder = tmp_path_factory.mktemp("dated")
    files = {write_wheel(folder, "ocitest-dated", "1.0"): "2020-03-01T10:00:00Z",
             write_wheel(folder, "ocitest-dated", "2.0"): "2023-03-01T10:00:00Z"}  # fmt: skip

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/") == "/simple/ocitest-dated":
                doc = {"meta": {"api-version": "1.1"}, "name": "ocitest-dated", "versions": ["1.0", "2.0"],
                       "files": [{"filename": p.name, "url": f"/files/{p.name}", "upload-time": t,
                                  "hashes": {"sha256": hashlib.sha256(p.read_bytes()).hexdigest()}}
                                 for p, t in files.items()]}  # fmt: skip
                body, kind = json.dumps(doc).encode(), "application/vnd.pypi.simple.v1+json"
            elif self.path.startswith("/files/") and (folder / self.path[7:]).is_file():
                body, kind = (folder / self.path[7:]).read_bytes(), "application/octet-stream"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802  (uv asks before a range request)
            self.send_error(405)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple/"
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("installer", INSTALLERS)
def test_exclude_newer_picks_the_release_of_that_time(dated_index, isolated_env, tmp_path, installer):
    sources = PackageSources.create(index_url=dated_index)
    for when, expected in [(None, "2.0"), ("2021-06-01", "1.0"), ("2023-03-01T10:00:01Z", "2.0")]:
        site = tmp_path / f"site-{when}"
        install_dependencies(target(), site, packages=["ocitest-dated"], sources=sources, installer=installer,
                             exclude_newer=parse_exclude_newer(when) if when else None)  # fmt: skip
        assert imports(site, "ocitest_dated") == f"ocitest-dated {expected}", when


# ---- through `ocibuild package`: the image, its blobs, a real dockerd, the cache key ---------------------------

_SCORE = """import ocitest_pure
import ocitest_puresrc


def init():
    pass


def run(raw_data):
    return {"pure": ocitest_pure.NAME, "source": ocitest_puresrc.NAME}
"""


def ocibuild(*args: object, env: dict[str, str] | None = None, check: bool = True):
    from tests.conftest import REPO

    full = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ocibuild", *map(str, args)], env=full, capture_output=True,
                          text=True, timeout=900, check=check)  # fmt: skip


def blobs_of(archive: Path) -> Iterator[tuple[str, bytes]]:
    """Every member of an image tarball, and every file inside each layer (gunzipped)."""
    import gzip
    import io
    import tarfile

    with tarfile.open(archive) as tar:
        for member in tar:
            if not member.isfile():
                continue
            data = tar.extractfile(member).read()
            yield member.name, data
            raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
            if raw[257:262] == b"ustar":
                with tarfile.open(fileobj=io.BytesIO(raw)) as layer:
                    for entry in layer:
                        if entry.isfile():
                            yield f"{member.name}/{entry.name}", layer.extractfile(entry).read()


def test_package_from_a_private_index_scores_in_docker(
    package_index, isolated_env, base_ref, dockerd, tmp_path
):
    """A private index behind Basic auth serves a wheel and a pure source archive; the image imports both and
    answers; the password is nowhere in stdout, stderr, any blob or any file of any layer."""
    import requests

    from tests.conftest import wait_http

    score = tmp_path / "score.py"
    score.write_text(_SCORE)
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    out = tmp_path / "image.tar"
    proc = ocibuild("package", model, "--entry-script", score, "--base", base_ref, "--cache", tmp_path / "cache",
                    "--index-url", package_index.url_with(), "--pip", "ocitest-pure", "--pip", "ocitest-puresrc",
                    "--tag", "ocibuild-test/private-index:1", "--output", out)  # fmt: skip
    assert_no_secret(proc.stdout + proc.stderr, "ocibuild's output")
    assert "built ocitest-puresrc 1.0 from source (pure Python" in proc.stderr
    names = set()
    for name, data in blobs_of(out):
        assert_no_secret(data, f"the image: {name}")
        names.add(name.split("/", 3)[-1])
    assert "opt/ocibuild/site-packages/ocitest_puresrc/__init__.py" in names
    assert not any(n.endswith(("direct_url.json", "pip.conf", ".netrc")) for n in names), names
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert_no_secret(path.read_bytes(), f"the build cache: {path.name}")

    image = dockerd.load(out)
    port = free_port()
    container = dockerd.run(
        "run", "-d", "--network", "host", "-e", f"OCIBUILD_PORT={port}", image
    ).stdout.strip()
    try:
        assert wait_http(f"http://127.0.0.1:{port}/", timeout=90) == b"Healthy"
        answer = requests.post(f"http://127.0.0.1:{port}/score", data="{}", timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"pure": "ocitest-pure 1.0", "source": "ocitest-puresrc 1.0"}
    finally:
        dockerd.remove(container)


def test_package_wrong_password_is_one_line(package_index, isolated_env, base_ref, tmp_path):
    score = tmp_path / "score.py"
    score.write_text(_SCORE)
    wrong = 'Wr0ng:"pa ss%@'
    proc = ocibuild("package", score, "--entry-script", score, "--base", base_ref, "--cache", tmp_path / "cache",
                    "--index-url", package_index.url_with(password=wrong), "--pip", "ocitest-pure",
                    "--output", tmp_path / "x.tar", check=False)  # fmt: skip
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ocibuild: error: ") and "Traceback" not in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, "ocibuild's output", wrong)
    log = re.search(r"log: (\S+?)\)?$", last)
    assert log, last
    assert_no_secret(Path(log[1]).read_bytes(), "the kept installer log", wrong)
    Path(log[1]).unlink()


def test_package_usage_errors_are_one_line(base_ref, tmp_path):
    score = tmp_path / "score.py"
    score.write_text(_SCORE)
    for args, message in [
        (["--no-index"], "--no-index leaves nowhere to find packages; add --find-links DIR"),
        (["--find-links", tmp_path / "nope"], "no such directory"),
        (["--exclude-newer", "yesterday"], "--exclude-newer 'yesterday' is not a date"),
    ]:
        proc = ocibuild("package", score, "--entry-script", score, "--base", base_ref, "--pip", "six",
                        "--output", tmp_path / "x.tar", *args, check=False)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr


def test_dependencies_cache_key_follows_each_source_option(
    package_index, dated_index, isolated_env, base_ref, tmp_path
):
    """Same options: the layer comes from the cache. Each new option (or a changed find-links folder) builds it
    again; a changed password does not."""
    from ocibuild.api import Environment, InferenceConfig, package
    from ocibuild.events import Progress

    score = tmp_path / "score.py"
    score.write_text(_SCORE)
    links = tmp_path / "links"
    links.mkdir()
    for p in package_index.dists.iterdir():
        (links / p.name).write_bytes(p.read_bytes())
    netrc = isolated_env / ".netrc"
    netrc.write_text(
        f"machine {package_index.host.split(':')[0]} login {NETRC_USER} password {NETRC_PASSWORD}\n"
    )

    def cached(packages=("ocitest-pure", "ocitest-puresrc"), **options) -> bool:
        steps: list[str] = []
        env = Environment(pip_packages=list(packages), **options)
        # The script imports what the first option set installs; the cache key, not the import check, is tested.
        package([score], InferenceConfig(score, environment=env), base_ref, cache=tmp_path / "cache",
                progress=Progress(lambda e: steps.append(getattr(e, "message", ""))), skip_checks=["imports"])  # fmt: skip
        return "dependencies: cached" in " ".join(steps)

    index = {"index_url": package_index.url_with()}
    assert not cached(**index)
    assert cached(**index)
    assert cached(index_url=package_index.url_with(NETRC_USER, NETRC_PASSWORD))  # another user: same layer
    dated = {"packages": ["ocitest-dated"], "index_url": dated_index}  # pypiserver publishes no upload times
    assert not cached(**dated)
    assert not cached(**dated, exclude_newer="2021-06-01")
    assert cached(**dated, exclude_newer="2021-06-01T00:00:00Z")
    assert not cached(**index, extra_index_urls=[package_index.url])
    assert not cached(find_links=[links], no_index=True)
    assert not cached(find_links=[links])
    assert cached(find_links=[links])
    write_wheel(links, "ocitest-other", "1.0")  # the folder changed: so may the resolution
    assert not cached(find_links=[links])


def _platform_wheel(folder: Path, name: str, version: str, tag: str) -> Path:
    """A wheel of ``name`` for one platform only (``tag``, e.g. ``cp311-cp311-manylinux_2_17_x86_64``)."""
    import zipfile

    module = name.replace("-", "_")
    path = folder / f"{module}-{version}-{tag}.whl"
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": "",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": f"Wheel-Version: 1.0\nGenerator: ocibuild-tests\nRoot-Is-Purelib: false\nTag: {tag}\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
        z.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


@pytest.mark.parametrize("installer", INSTALLERS)
def test_no_wheel_for_the_image_platform_names_package_version_and_platform(
    isolated_env, tmp_path, installer
):
    """A distribution that publishes wheels for x86_64 only: an arm64 image gets one line naming it, its version
    and the platform, and nothing is built from source in its place."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _platform_wheel(wheels, "ocitest-amdonly", "1.0", "cp311-cp311-manylinux_2_17_x86_64")
    sources = PackageSources.create(find_links=[wheels], no_index=True)
    arm64 = TargetPython((3, 11), 2, "/usr/bin/python3", "glibc", (2, 36), "arm64", None)
    with pytest.raises(DependencyError) as e:
        install_dependencies(arm64, tmp_path / "site", packages=["ocitest-amdonly==1.0"], sources=sources,
                             installer=installer)  # fmt: skip
    message = str(e.value)
    assert "\n" not in message
    assert "'ocitest-amdonly' 1.0" in message and "manylinux_2_36_aarch64" in message, message
    assert not list((tmp_path / "site").glob("ocitest_amdonly*"))
    install_dependencies(target(), tmp_path / "site-amd64", packages=["ocitest-amdonly==1.0"], sources=sources,
                         installer=installer)  # fmt: skip
    assert (tmp_path / "site-amd64" / "ocitest_amdonly" / "__init__.py").is_file()
