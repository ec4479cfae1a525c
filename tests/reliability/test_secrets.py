"""Issue 6, part 6: a password or token given to ocibuild never shows up anywhere but where it was meant to go.

A distinctive password (quotes, a colon, a percent sign, a backslash, a space and a non-ASCII letter, so that every
way of encoding it differs) is used against the real registry in both set-ups — htpasswd Basic auth over TLS, and
bearer tokens from the tests' token server, whose every issued token is recorded — through every path that handles
credentials: ``--creds``, ``$OCIBUILD_REGISTRY_USER``/``PASSWORD``, ``--authfile`` (docker ``auths`` base64, and an
``identitytoken``), ``ocibuild login``, ``--base-creds`` for a registry base, and wrong passwords. Logging is at
DEBUG on the root logger (urllib3's connection and request lines included) and the CLI runs in-process, so
stdout, stderr, every log record, raised exceptions (``str``, ``repr``, traceback), the image pushed or written
(every blob, gunzipped), the build cache and the registry's storage are all searched for the secret in each form:
plain, base64 of ``user:password`` and of itself, URL-quoted, JSON- and repr-escaped.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
import stat
import subprocess
import tarfile
import traceback
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest

from ocibuild import cli
from ocibuild.oci.descriptor import Platform
from ocibuild.oci.digest import Digest
from ocibuild.oci.name import parse_reference
from ocibuild.oci.store import BlobStore
from ocibuild.registry.credentials import Credentials
from ocibuild.registry.errors import AuthenticationError
from ocibuild.registry.options import RegistryOptions
from ocibuild.registry.push import push_image
from ocibuild.registry.source import open_registry_image
from tests.conftest import BASE_REPO, EXAMPLE_DIR, REGISTRY_REFRESH_TOKEN
from tests.registry.images import FAST, make_image

USER = "leaktest"
PASSWORD = 'pW-7Hx:q"uo te%\\wörd'
WRONG = 'wr0ng-Zk4:"pa%\\ßword'
KINDS = ["basic", "token"]


def forms(secret: str, user: str = USER) -> set[str]:
    """Every spelling in which a secret could leak."""
    b64 = base64.b64encode
    return {
        secret,
        b64(f"{user}:{secret}".encode()).decode(),
        b64(secret.encode()).decode(),
        b64(f"{user}:{secret}".encode("latin-1", "replace")).decode(),
        quote(secret),
        quote_plus(secret),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
    }


class Secrets:
    """What must not leak, growing as the token server issues tokens; ``check`` searches text or bytes."""

    def __init__(self, reg):
        self.reg = reg
        self.fixed = forms(PASSWORD) | forms(WRONG) | forms(REGISTRY_REFRESH_TOKEN, "<token>")

    def all(self) -> set[str]:
        tokens = set(self.reg.tokens.issued) if self.reg.tokens else set()
        return self.fixed | tokens | {t.rsplit(".", 1)[-1] for t in tokens}  # a token, or its signature alone

    def check(self, haystack: str | bytes, where: str) -> None:
        for secret in self.all():
            needles = (
                [secret]
                if isinstance(haystack, str)
                else {secret.encode(), secret.encode("latin-1", "replace")}
            )
            for needle in needles:
                assert needle not in haystack, f"a secret ({secret[:4]}…) leaked into {where}"

    def check_exception(self, e: BaseException) -> None:
        self.check("".join(traceback.format_exception(e)), "a traceback")
        seen = e
        while seen is not None:
            self.check(str(seen) + repr(seen) + repr(seen.args), f"an exception ({type(seen).__name__})")
            seen = seen.__cause__ or seen.__context__

    def check_files(self, root: Path, where: str) -> None:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                self.check_blob(p.read_bytes(), f"{where}: {p.relative_to(root)}")

    def check_blob(self, data: bytes, where: str) -> None:
        """``data``, gunzipped if it is gzip, and each member (gunzipped in turn) if it is a tarball."""
        self.check(data, where)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
            self.check(data, where + " (gunzipped)")
        if data[257:262] == b"ustar":
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                for m in tar:
                    if m.isfile():
                        self.check_blob(tar.extractfile(m).read(), f"{where}/{m.name}")


@pytest.fixture(params=KINDS)
def reg(request, registry):
    """The registry, with USER/PASSWORD added to its htpasswd file (re-read on change) or token server."""
    r = registry.get(request.param)
    if r.kind == "basic":
        htpasswd = r.dir / "htpasswd"
        if f"{USER}:" not in htpasswd.read_text():
            line = subprocess.run(
                ["htpasswd", "-Bbn", USER, PASSWORD], capture_output=True, check=True
            ).stdout
            with open(htpasswd, "ab") as f:
                f.write(line.strip() + b"\n")
    else:
        r.tokens.users[USER] = PASSWORD
        r.tokens.reset()
    return r


@pytest.fixture
def home(tmp_path, monkeypatch):
    """No stored credentials anywhere (a fresh HOME, DOCKER_CONFIG and XDG dirs) and none in the environment."""
    for var in (
        "REGISTRY_AUTH_FILE",
        "OCIBUILD_REGISTRY_USER",
        "OCIBUILD_REGISTRY_PASSWORD",
        "XDG_CONFIG_HOME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "home" / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path / "home"


@pytest.fixture
def debug_logs(caplog):
    """Everything logged at DEBUG, from every logger (urllib3's request lines too)."""
    caplog.set_level(logging.DEBUG)
    for name in ("urllib3", "requests"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield caplog
    for name in ("urllib3", "requests"):
        logging.getLogger(name).setLevel(logging.NOTSET)


@pytest.fixture
def secrets(reg):
    return Secrets(reg)


def check_outputs(secrets: Secrets, capfd, caplog) -> tuple[str, str]:
    out, err = capfd.readouterr()
    secrets.check(out, "stdout")
    secrets.check(err, "stderr")
    for record in caplog.records:
        secrets.check(record.getMessage() + repr(record.args) + repr(record.__dict__), f"log {record.name}")
    assert any(r.name.startswith("urllib3") for r in caplog.records), "DEBUG logging was not on"
    return out, err


def tls_args(reg) -> list[str]:
    return ["--ca-cert", str(reg.tls.ca_cert)] if reg.tls else []


def package(tmp_path: Path, base: str, *args: str) -> int:
    model = tmp_path / "model.bin"
    model.write_bytes(b"weights")
    # Built without the example's requirements and never run: its imports are not this test's business.
    argv = ["package", str(model), "--entry-script", str(EXAMPLE_DIR / "score.py"), "--base", base,
            "--cache", str(tmp_path / "cache"), "--skip-check", "imports", *args]  # fmt: skip
    return cli.main(argv)


def check_pushed(secrets: Secrets, reg, repository: str, tag: str, tmp_path: Path) -> None:
    """The pushed image, every blob of it as the registry stores it, and the build cache hold no secret."""
    v2 = reg.dir / "data" / "docker" / "registry" / "v2"
    link = v2 / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    digest = link.read_text().strip()

    def blob(d: str) -> bytes:
        return (v2 / "blobs" / "sha256" / d[7:9] / d[7:] / "data").read_bytes()

    manifest = json.loads(blob(digest))
    for desc in [{"digest": digest}, manifest["config"], *manifest["layers"]]:
        if desc["digest"] not in _SCANNED:
            secrets.check_blob(blob(desc["digest"]), f"pushed blob {desc['digest'][:19]}")
            _SCANNED.add(desc["digest"])
    secrets.check_files(v2 / "repositories" / repository, "the registry's repository")
    if (tmp_path / "cache").is_dir():
        secrets.check_files(tmp_path / "cache", "the build cache")


_SCANNED: set[str] = set()  # blobs already searched (the base's layers are the same in every push)


def target(reg, name: str) -> tuple[str, str, str]:
    repository, tag = f"secrets/{name}", reg.kind
    return f"{reg.host}/{repository}:{tag}", repository, tag


# --- every way of giving credentials -----------------------------------------------------------------------------


def test_creds_flag(reg, home, base_ref, secrets, debug_logs, capfd, tmp_path):
    ref, repository, tag = target(reg, "creds")
    assert package(tmp_path, base_ref, "--push", ref, "--creds", f"{USER}:{PASSWORD}", *tls_args(reg)) == 0
    out, _ = check_outputs(secrets, capfd, debug_logs)
    assert out.strip().startswith("sha256:")
    assert not reg.tokens or reg.tokens.issued  # tokens were issued, so the search for them means something
    check_pushed(secrets, reg, repository, tag, tmp_path)


def test_inspect_with_creds_right_and_wrong(reg, home, secrets, debug_logs, capfd, tmp_path):
    image = make_image(BlobStore(tmp_path / "src"), [1000])
    ref = f"{reg.host}/secrets/inspect:{reg.kind}"
    right = RegistryOptions(ca_cert=reg.tls.ca_cert if reg.tls else None, retry=FAST.retry)
    push_image(image, parse_reference(ref), right.with_credentials(reg.host, Credentials(USER, PASSWORD)))
    assert cli.main(["inspect", ref, "--creds", f"{USER}:{PASSWORD}", *tls_args(reg)]) == 0
    assert cli.main(["inspect", ref, "--raw", "--creds", f"{USER}:{PASSWORD}", *tls_args(reg)]) == 0
    assert cli.main(["inspect", ref, "--creds", f"{USER}:{WRONG}", *tls_args(reg)]) == 1
    out, err = check_outputs(secrets, capfd, debug_logs)
    assert str(image.digest) in out and f"authentication failed for user {USER}" in err


def test_environment_variables(reg, home, base_ref, secrets, debug_logs, capfd, tmp_path, monkeypatch):
    monkeypatch.setenv("OCIBUILD_REGISTRY_USER", USER)
    monkeypatch.setenv("OCIBUILD_REGISTRY_PASSWORD", PASSWORD)
    ref, repository, tag = target(reg, "env")
    assert package(tmp_path, base_ref, "--push", ref, *tls_args(reg)) == 0
    check_outputs(secrets, capfd, debug_logs)
    check_pushed(secrets, reg, repository, tag, tmp_path)


def test_authfile(reg, home, base_ref, secrets, debug_logs, capfd, tmp_path):
    authfile = tmp_path / "auth.json"
    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    authfile.write_text(json.dumps({"auths": {reg.host: {"auth": auth}}}))
    ref, repository, tag = target(reg, "authfile")
    assert package(tmp_path, base_ref, "--push", ref, "--authfile", str(authfile), *tls_args(reg)) == 0
    check_outputs(secrets, capfd, debug_logs)
    check_pushed(secrets, reg, repository, tag, tmp_path)


def test_identity_token_in_docker_config(registry, home, base_ref, debug_logs, capfd, tmp_path):
    reg = registry.get("token")
    reg.tokens.reset()
    secrets = Secrets(reg)
    config = home / ".docker" / "config.json"
    config.parent.mkdir(parents=True)
    config.write_text(json.dumps({"auths": {reg.host: {
        "auth": base64.b64encode(b"<token>:").decode(), "identitytoken": REGISTRY_REFRESH_TOKEN}}}))  # fmt: skip
    ref, repository, tag = target(reg, "identitytoken")
    assert package(tmp_path, base_ref, "--push", ref) == 0
    # The refresh token was traded, really: once for the check of push rights before the build, once for the push.
    assert [r.granted for r in reg.tokens.requests] == [True, True]
    check_outputs(secrets, capfd, debug_logs)
    check_pushed(secrets, reg, repository, tag, tmp_path)


def test_login_then_push(reg, home, base_ref, secrets, debug_logs, capfd, tmp_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORD + "\n"))
    assert cli.main(["login", reg.host, "-u", USER, "--password-stdin", *tls_args(reg)]) == 0
    out, _ = check_outputs(secrets, capfd, debug_logs)
    assert out.startswith("Login Succeeded")
    config = home / ".docker" / "config.json"
    assert (
        stat.S_IMODE(config.stat().st_mode) == 0o600
    )  # the one place the secret belongs: private to the user
    ref, repository, tag = target(reg, "login")
    assert package(tmp_path, base_ref, "--push", ref, *tls_args(reg)) == 0
    check_outputs(secrets, capfd, debug_logs)
    check_pushed(secrets, reg, repository, tag, tmp_path)


def test_registry_base_with_creds_written_to_a_tarball(
    reg, home, base_image, secrets, debug_logs, capfd, tmp_path
):
    base = reg.push_base(base_image)
    out_tar = tmp_path / "image.tar"
    assert package(tmp_path, f"docker://{base}", "--output", str(out_tar), "--creds", f"{USER}:{PASSWORD}",
                   *tls_args(reg)) == 0  # fmt: skip
    check_outputs(secrets, capfd, debug_logs)
    secrets.check_blob(out_tar.read_bytes(), "the --output tarball")
    secrets.check_files(tmp_path / "cache", "the build cache")
    base_layers = reg.skopeo_inspect(BASE_REPO)["Layers"]
    assert all(
        BlobStore(tmp_path / "cache").has(Digest(d)) for d in base_layers
    )  # pulled with those credentials


def test_base_creds_for_one_registry_and_creds_for_another(
    registry, home, base_image, debug_logs, capfd, tmp_path
):
    """``--base-creds`` for a token-auth base, ``--creds`` for a Basic-auth push: each secret goes only where it
    was given for, and neither is printed."""
    source = registry.get("token")
    dest = registry.get("basic")
    base = source.push_base(base_image)
    source.tokens.users[USER] = PASSWORD
    source.tokens.reset()
    secrets = Secrets(source)
    ref, repository, tag = target(dest, "two-registries")
    code = package(tmp_path, f"docker://{base}", "--base-creds", f"{USER}:{PASSWORD}", "--push", ref,
                   "--creds", f"{dest.user}:{dest.password}", *tls_args(dest))  # fmt: skip
    assert code == 0
    assert {r.account for r in source.tokens.requests} == {USER} and source.tokens.issued
    secrets.fixed |= forms(dest.password, dest.user)
    check_outputs(secrets, capfd, debug_logs)
    check_pushed(secrets, dest, repository, tag, tmp_path)


# --- wrong passwords: the error path -----------------------------------------------------------------------------


def test_wrong_password_on_the_command_line(reg, home, base_ref, secrets, debug_logs, capfd, tmp_path):
    ref, _, _ = target(reg, "wrong")
    assert package(tmp_path, base_ref, "--push", ref, "--creds", f"{USER}:{WRONG}", *tls_args(reg)) == 1
    _, err = check_outputs(secrets, capfd, debug_logs)
    last = err.strip().splitlines()[-1]
    assert last.startswith("ocibuild: error: ") and f"authentication failed for user {USER}" in last, err
    assert "Traceback" not in err


def test_wrong_password_at_login_stores_nothing(reg, home, secrets, debug_logs, capfd, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(WRONG + "\n"))
    assert cli.main(["login", reg.host, "-u", USER, "--password-stdin", *tls_args(reg)]) == 1
    _, err = check_outputs(secrets, capfd, debug_logs)
    assert err.startswith("ocibuild: error: ") and err.count("\n") == 1, err
    assert not (home / ".docker" / "config.json").exists()


def test_api_with_debug_logging_right_and_wrong(reg, home, secrets, debug_logs, capfd, tmp_path):
    """Through the Python API: the exceptions themselves (message, repr, chain, traceback) hold no secret."""
    options = RegistryOptions(ca_cert=reg.tls.ca_cert if reg.tls else None, retry=FAST.retry)
    image = make_image(BlobStore(tmp_path / "src"), [1000])
    ref = parse_reference(f"{reg.host}/secrets/api:{reg.kind}")
    right = options.with_credentials(reg.host, Credentials(USER, PASSWORD, source="--creds"))
    assert push_image(image, ref, right) == image.digest
    pulled = open_registry_image(ref, Platform(), right, BlobStore(tmp_path / "cache"))
    pulled.open_blob(pulled.layers[0]).close()
    secrets.check(repr(right) + repr(right.credentials_for(reg.host)), "RegistryOptions' repr")
    for creds in (Credentials(USER, WRONG, source="--creds"), None):
        wrong = options.with_credentials(reg.host, creds)
        with pytest.raises(AuthenticationError) as e:
            push_image(image, parse_reference(f"{reg.host}/secrets/api:wrong"), wrong)
        secrets.check_exception(e.value)
        with pytest.raises(AuthenticationError) as e:
            open_registry_image(ref, Platform(), wrong, BlobStore(tmp_path / "cache2"))
        secrets.check_exception(e.value)
    check_outputs(secrets, capfd, debug_logs)
    check_pushed(secrets, reg, "secrets/api", reg.kind, tmp_path)


def test_the_secret_is_there_to_be_found(reg, secrets):
    """The searches above can fail: each form of the password, and a real token, is found where it is."""
    with pytest.raises(AssertionError, match="leaked"):
        secrets.check(f"x{base64.b64encode(f'{USER}:{PASSWORD}'.encode()).decode()}x", "a test string")
    with pytest.raises(AssertionError, match="leaked"):
        secrets.check(json.dumps({"password": PASSWORD}).encode(), "JSON bytes")
    with pytest.raises(AssertionError, match="leaked"):
        secrets.check_blob(gzip.compress(PASSWORD.encode()), "a gzipped blob")
    if reg.tokens:
        reg.tokens.issued.append("a.b.signature-of-a-token")
        with pytest.raises(AssertionError, match="leaked"):
            secrets.check("Bearer a.b.signature-of-a-token", "a header")
        reg.tokens.issued.pop()
