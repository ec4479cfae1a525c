"""Where credentials come from: --creds, the environment, podman's auth.json, Docker's config.json and its
credential helpers (a real ``docker-credential-test`` program on PATH), and ``ocibuild login``'s writing."""

from __future__ import annotations

import base64
import json
import os
import stat
import threading
from pathlib import Path

import pytest

from ocibuild.errors import UsageError
from ocibuild.registry import credentials as c
from ocibuild.registry.errors import RegistryError
from ocibuild.settings import Settings

HELPER = """#!/bin/sh
# A docker credential helper speaking the real protocol: `get` reads a server URL on stdin, prints JSON.
store="{store}"
case "$1" in
  get)
    read -r server
    echo "get $server" >> "$store.log"
    if [ -f "$store/$(echo "$server" | tr '/:' '__')" ]; then cat "$store/$(echo "$server" | tr '/:' '__')";
    else echo "credentials not found in native keychain"; exit 1; fi ;;
  store)
    doc=$(cat)
    server=$(printf '%s' "$doc" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ServerURL"])')
    printf '%s' "$doc" > "$store/$(echo "$server" | tr '/:' '__')" ;;
  *) exit 2 ;;
esac
"""


def lookup(host: str, auth_file: Path | None = None):
    """Stored credentials for ``host``, looked up where the environment says (``settings``)."""
    return c.lookup(host, Settings.from_environ().registry_options(auth_file=auth_file).auth_files)


def save_login(host: str, creds, auth_file: Path | None = None) -> str:
    return c.save_login(host, creds, auth_file, Settings.from_environ().docker_config)


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME, DOCKER_CONFIG and XDG dirs, and no credentials in the environment."""
    for var in ("REGISTRY_AUTH_FILE", c.ENV_USER, c.ENV_PASSWORD, "XDG_CONFIG_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / ".docker"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    return tmp_path


@pytest.fixture
def helper(tmp_path, monkeypatch):
    """``docker-credential-test`` on PATH, keeping its secrets in a folder; returns that folder."""
    store = tmp_path / "helper-store"
    store.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "docker-credential-test"
    exe.write_text(HELPER.format(store=store))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    return store


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def b64(s: str) -> str:
    return base64.b64encode(s.encode()).decode()


def test_parse_creds():
    got = c.parse_creds("alice:pa:ss")
    assert (got.username, got.secret) == ("alice", "pa:ss")
    for bad in ("alice", ":pw", "alice:"):
        with pytest.raises(UsageError):
            c.parse_creds(bad)


def test_secret_is_not_in_repr():
    assert "hunter2" not in repr(c.Credentials("alice", "hunter2"))


def _for_target(creds: str | None = None):
    """The credentials ``--creds`` (else the environment) bind to a registry, as the commands read them."""
    return Settings.from_environ().registry_options().for_target("r.example", creds).credentials.get("r.example")


def test_env_credentials(home, monkeypatch):
    assert _for_target() is None
    monkeypatch.setenv(c.ENV_USER, "ci")
    with pytest.raises(UsageError, match=c.ENV_PASSWORD):
        _for_target()
    monkeypatch.setenv(c.ENV_PASSWORD, "tok")
    assert (_for_target().username, _for_target().secret) == ("ci", "tok")
    assert _for_target("x:y").username == "x"  # --creds wins over the environment


@pytest.mark.parametrize(
    "key,host",
    [
        ("https://index.docker.io/v1/", "docker.io"),
        ("index.docker.io", "docker.io"),
        ("registry-1.docker.io", "docker.io"),
        ("http://localhost:5000", "localhost:5000"),
        ("https://ghcr.io/v2/", "ghcr.io"),
        ("quay.io/team", "quay.io/team"),
    ],
)
def test_normalise_host(key, host):
    assert c.normalise_host(key) == host


def test_docker_config_auths(home):
    write(home / ".docker/config.json", {"auths": {"https://index.docker.io/v1/": {"auth": b64("hub:pw")},
                                                     "reg.example:5000": {"auth": b64("bob:s:3")}}})  # fmt: skip
    hub = lookup("docker.io")
    assert (hub.username, hub.secret) == ("hub", "pw")
    assert lookup("reg.example:5000").secret == "s:3"
    assert lookup("other.example") is None


def test_identity_token(home):
    write(
        home / ".docker/config.json",
        {"auths": {"acr.example": {"auth": b64("00000000-0000:"), "identitytoken": "rt"}}},
    )
    got = lookup("acr.example")
    assert got.identity_token and got.secret == "rt"


def test_malformed_auth_entry_says_so_without_the_secret(home):
    write(home / ".docker/config.json", {"auths": {"r.example": {"auth": "!!!notbase64"}}})
    with pytest.raises(RegistryError, match="r.example.*log in again"):
        lookup("r.example")


def test_order_authfile_then_podman_then_docker(home, monkeypatch):
    write(home / ".docker/config.json", {"auths": {"r.example": {"auth": b64("docker:1")}}})
    assert lookup("r.example").username == "docker"
    write(home / ".config/containers/auth.json", {"auths": {"r.example": {"auth": b64("podman-home:1")}}})
    assert lookup("r.example").username == "podman-home"
    write(home / "run/containers/auth.json", {"auths": {"r.example": {"auth": b64("podman-run:1")}}})
    assert lookup("r.example").username == "podman-run"
    monkeypatch.setenv(
        "REGISTRY_AUTH_FILE", str(write(home / "a.json", {"auths": {"r.example": {"auth": b64("env:1")}}}))
    )
    assert lookup("r.example").username == "env"
    explicit = write(home / "b.json", {"auths": {"r.example": {"auth": b64("flag:1")}}})
    assert lookup("r.example", explicit).username == "flag"
    # --authfile replaces $REGISTRY_AUTH_FILE; a file that does not know the host is passed over.
    assert lookup("r.example", write(home / "c.json", {"auths": {}})).username == "podman-run"


def test_cred_helpers_and_creds_store_through_a_real_helper_program(home, helper):
    (helper / "reg.example").write_text(
        json.dumps({"ServerURL": "reg.example", "Username": "hh", "Secret": "s1"})
    )
    (helper / "https___index.docker.io_v1_").write_text(
        json.dumps({"ServerURL": "https://index.docker.io/v1/", "Username": "<token>", "Secret": "refresh"})
    )
    write(home / ".docker/config.json", {"credHelpers": {"reg.example": "test"}})
    got = lookup("reg.example")
    assert (got.username, got.secret, got.source) == ("hh", "s1", "docker-credential-test")
    assert lookup("docker.io") is None  # no helper for it, no credsStore
    write(home / ".docker/config.json", {"credsStore": "test", "auths": {"https://index.docker.io/v1/": {}}})
    hub = lookup("docker.io")
    assert hub.identity_token and hub.secret == "refresh"
    assert lookup("unknown.example") is None  # "credentials not found" is not an error
    assert "get https://index.docker.io/v1/" in (helper.parent / "helper-store.log").read_text()


def test_missing_helper_is_one_clear_error(home):
    write(home / ".docker/config.json", {"credsStore": "does-not-exist"})
    with pytest.raises(RegistryError, match="docker-credential-does-not-exist .* is not installed"):
        lookup("r.example")


def test_save_login_writes_docker_config_0600_and_keeps_other_entries(home):
    cfg = write(
        home / ".docker/config.json", {"auths": {"other.example": {"auth": b64("o:p")}}, "psFormat": "x"}
    )
    os.chmod(cfg, 0o644)
    where = save_login("docker.io", c.Credentials("me", "pw"))
    assert where == str(cfg)
    doc = json.loads(cfg.read_text())
    assert doc["psFormat"] == "x"
    assert doc["auths"]["https://index.docker.io/v1/"] == {"auth": b64("me:pw")}
    assert doc["auths"]["other.example"] == {"auth": b64("o:p")}
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert lookup("docker.io").secret == "pw"
    assert not [p for p in cfg.parent.iterdir() if p.name != "config.json"]  # no temp file left


def test_save_login_replaces_an_old_key_for_the_same_host(home):
    write(home / ".docker/config.json", {"auths": {"http://reg.example:5000/v2/": {"auth": b64("old:1")}}})
    save_login("reg.example:5000", c.Credentials("new", "2"))
    assert list(json.loads((home / ".docker/config.json").read_text())["auths"]) == ["reg.example:5000"]


def test_save_login_through_creds_store(home, helper):
    write(home / ".docker/config.json", {"credsStore": "test"})
    assert save_login("reg.example", c.Credentials("hs", "sec")) == "docker-credential-test"
    doc = json.loads((home / ".docker/config.json").read_text())
    assert doc["auths"] == {"reg.example": {}}  # the secret is in the helper, not the file
    assert "sec" not in (home / ".docker/config.json").read_text()
    assert lookup("reg.example").secret == "sec"


def test_concurrent_logins_leave_valid_json(home):
    threads = [
        threading.Thread(target=save_login, args=(f"r{i}.example", c.Credentials("u", "p")))
        for i in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    json.loads((home / ".docker/config.json").read_text())  # never a torn file
