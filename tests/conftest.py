"""Shared test infrastructure: the real tools (docs/architecture.md, Tests), started for real and stopped afterwards.

Session fixtures (each is started once, on first use):
  base_image / base_layout / base_ref / base_docker_archive
                 the Debian Python 3.11 base image (scripts/make-base-image.sh, cached outside the repo)
  base_image_py39  Debian bullseye's Python 3.9 base, the oldest the scoring server supports (`.ref` etc.)
  example_model  the example Ridge model trained from fixtures/example, with its host predictions
  dockerd        a private Docker daemon in a temporary directory (`.run(...)` drives the docker CLI)
  podman         podman with a private storage root and containers.conf (`.run(...)`)
Helpers: `run` (a command whose failure shows its output), `free_port`, `wait_http`; engines also have `.load(tar)`
and `.remove(*containers)`. Import them with `from tests.conftest import free_port, wait_http, ...`.

A fixture skips its tests only when a tool is not installed (scripts/install-deps.sh installs them all); a tool
that is installed but does not work fails them. Containers must use `--network host` (the daemons run without a
bridge) and `-e OCIBUILD_PORT=<free_port()>` so that tests never collide on a port.
Tests under tests/e2e are marked `slow` automatically (and should say so themselves).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
EXAMPLE_DIR = REPO / "fixtures" / "example"
E2E_DIR = Path(__file__).resolve().parent / "e2e"

BASE_TAG = "py311"
BASE_DOCKER_NAME = "ocibuild-test/debian-python:3.11"
BASE39_TAG = "py39"
BASE39_DOCKER_NAME = "ocibuild-test/debian-python:3.9"
FIXTURE_CACHE = Path(os.environ.get("OCIBUILD_FIXTURE_CACHE", Path.home() / ".cache" / "ocibuild-fixtures"))

EXAMPLE_INPUT = {"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]}

# The docker CLI: Debian's own (20.10, installed with docker.io, same version as the daemon) rather than whatever
# newer client may shadow it earlier on PATH; both work against the 20.10 daemon through API version negotiation.
DOCKER_CLI_PREFERRED = "/usr/bin/docker"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end tests with real engines, registries and base images")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E_DIR in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


# --- helpers ---------------------------------------------------------------------------------------------------


class CommandFailed(AssertionError):
    """A command exited non-zero; the message carries its output so the test report shows why."""


def run(
    cmd: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    env: dict[str, str] | None = None,
    timeout: float = 600,
    input: str | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `cmd` (no shell), capturing text output; with check, raise CommandFailed showing that output."""
    argv = [os.fspath(a) for a in cmd]
    full_env = {**os.environ, **env} if env else None
    proc = subprocess.run(
        argv, env=full_env, cwd=cwd, input=input, capture_output=True, text=True, timeout=timeout, check=False
    )
    if check and proc.returncode != 0:
        raise CommandFailed(
            f"command failed (exit {proc.returncode}): {' '.join(argv)}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def require(binary: str) -> str:
    """The path of `binary`, or skip the test: the tool is simply not installed."""
    path = shutil.which(binary)
    if path is None:
        pytest.skip(f"{binary} is not installed (scripts/install-deps.sh installs it)")
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"{what} runs as root in these tests")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, *, alive: Callable[[], str | None] | None = None) -> bytes:
    """Poll `url` until it answers 200 and return the body.

    `alive`, if given, is called between attempts and returns a reason when the server has died (e.g. its
    container exited), so a crash fails at once instead of after the timeout.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while True:
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                if resp.status == 200:
                    return resp.read()
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as e:
            last = f"HTTP {e.code}"
        except (OSError, urllib.error.URLError) as e:
            last = repr(e)
        if alive is not None and (reason := alive()):
            raise AssertionError(f"{url}: server died before answering: {reason}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer 200 within {timeout} s (last: {last})")
        time.sleep(0.1)


def unmount_under(path: Path) -> None:
    """Unmount everything mounted at or below `path`, deepest first (leftovers of a daemon that was killed)."""
    root = os.path.realpath(path)
    mounts = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # octal escapes such as \040
            if point == root or point.startswith(root + "/"):
                mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


def remove_tree(path: Path) -> None:
    unmount_under(path)
    shutil.rmtree(path, ignore_errors=True)


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def short_tempdir(prefix: str) -> Path:
    """A fresh directory under /tmp: daemons put unix sockets in it, whose paths must stay under 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


# --- the base image ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseImage:
    """The cached Debian Python base image, as an OCI layout and as a docker-archive of the same image."""

    dir: Path
    layout: Path  # OCI image layout directory
    tag: str  # its tag inside the layout
    docker_archive: Path  # `docker save` tarball
    docker_name: str  # the name:tag the docker-archive carries

    @property
    def ref(self) -> str:
        return f"oci:{self.layout}:{self.tag}"

    @property
    def docker_archive_ref(self) -> str:
        return f"docker-archive:{self.docker_archive}"


def _make_base_image(out: Path, tag: str, docker_name: str, *script_args: str) -> BaseImage:
    """The base image cached in ``out``, built by make-base-image.sh (with ``script_args``) when missing."""
    if not (out / "COMPLETE").is_file():
        require_root("mmdebstrap")
        for tool in ("mmdebstrap", "umoci", "skopeo"):
            require(tool)
        # About 30-60 s once; later sessions find the cache complete.
        run(["bash", SCRIPTS / "make-base-image.sh", *script_args, out], timeout=1200)
    assert (out / "COMPLETE").is_file(), f"{out}: make-base-image.sh finished without COMPLETE"
    return BaseImage(
        dir=out,
        layout=out / "oci",
        tag=tag,
        docker_archive=out / "docker-archive.tar",
        docker_name=docker_name,
    )


@pytest.fixture(scope="session")
def base_image() -> BaseImage:
    # v2: with libstdc++6, which manylinux wheels (numpy) need
    return _make_base_image(FIXTURE_CACHE / "debian-python-3.11-v2", BASE_TAG, BASE_DOCKER_NAME)


@pytest.fixture(scope="session")
def base_image_arm64() -> BaseImage:
    """The same Debian Python 3.11 base for linux/arm64: a real arm64 root (mmdebstrap under qemu-user-static, about
    3-5 minutes once, then cached); scripts/enable-arm64.sh lets this machine run it."""
    require("qemu-aarch64-static")
    return _make_base_image(
        FIXTURE_CACHE / "debian-python-3.11-v2-arm64",
        BASE_TAG,
        f"{BASE_DOCKER_NAME}-arm64",
        "--arch",
        "arm64",
    )


def make_index_layout(out: Path, bases: Sequence[BaseImage]) -> str:
    """An OCI layout in ``out`` whose tag names an image index of ``bases`` (each one platform's image), its
    blobs hard-linked from theirs. Returns its reference."""
    blobs = out / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    manifests = []
    for base in bases:
        for blob in (base.layout / "blobs" / "sha256").iterdir():
            if not (blobs / blob.name).exists():
                os.link(blob, blobs / blob.name)
        (entry,) = [m for m in json.loads((base.layout / "index.json").read_text())["manifests"]
                    if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == base.tag]  # fmt: skip
        manifest = json.loads((blobs / entry["digest"].split(":")[1]).read_bytes())
        config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
        platform = {"architecture": config["architecture"], "os": config["os"]}
        manifests.append({k: entry[k] for k in ("mediaType", "digest", "size")} | {"platform": platform})
    raw = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                      "manifests": manifests}).encode()  # fmt: skip
    digest = hashlib.sha256(raw).hexdigest()
    (blobs / digest).write_bytes(raw)
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": f"sha256:{digest}", "size": len(raw),
        "annotations": {"org.opencontainers.image.ref.name": BASE_TAG}}]}  # fmt: skip
    (out / "index.json").write_text(json.dumps(index))
    (out / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    return f"oci:{out}:{BASE_TAG}"


@pytest.fixture(scope="session")
def multiarch_base(base_image, base_image_arm64, tmp_path_factory) -> str:
    """A base as users' bases are (python:3.11-slim is one): an OCI layout whose tag names an image index of the
    linux/amd64 and linux/arm64 images above. Returns its reference."""
    return make_index_layout(tmp_path_factory.mktemp("multiarch-base"), [base_image, base_image_arm64])


@pytest.fixture(scope="session")
def base_image_py39() -> BaseImage:
    """Debian bullseye's Python 3.9, the oldest Python the scoring server supports (tag ``py39``)."""
    return _make_base_image(
        FIXTURE_CACHE / "debian-python-3.9", BASE39_TAG, BASE39_DOCKER_NAME, "--suite", "bullseye"
    )


@pytest.fixture(scope="session")
def base_layout(base_image: BaseImage) -> Path:
    """Path of the base image's OCI layout (tag BASE_TAG)."""
    return base_image.layout


@pytest.fixture(scope="session")
def base_ref(base_image: BaseImage) -> str:
    """`oci:<layout>:py311`, the base image as an ocibuild/skopeo reference."""
    return base_image.ref


@pytest.fixture(scope="session")
def base_docker_archive(base_image: BaseImage) -> Path:
    """Path of the base image as a `docker save` tarball, named BASE_DOCKER_NAME."""
    return base_image.docker_archive


# --- the example model ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExampleModel:
    """fixtures/example trained on this host: what a user would hand to `ocibuild package`."""

    model: Path  # model.pkl, in a session temporary directory
    score: Path  # fixtures/example/score.py
    requirements: Path  # fixtures/example/requirements.txt
    source_dir: Path  # fixtures/example
    input: dict = field(default_factory=lambda: EXAMPLE_INPUT)
    predictions: list[float] = field(default_factory=list)  # score.run() on this host for `input`

    @property
    def model_dir(self) -> Path:
        return self.model.parent

    @property
    def input_json(self) -> str:
        return json.dumps(self.input)


_HOST_SCORE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import score
score.init()
print(json.dumps(score.run(sys.argv[2])))
"""


@pytest.fixture(scope="session")
def example_model(tmp_path_factory: pytest.TempPathFactory) -> ExampleModel:
    if importlib.util.find_spec("sklearn") is None or importlib.util.find_spec("joblib") is None:
        pytest.skip("scikit-learn is not installed (pip install -e '.[example]')")
    out = tmp_path_factory.mktemp("example-model")
    run([sys.executable, EXAMPLE_DIR / "train.py", out], timeout=300)
    model = out / "model.pkl"
    assert model.is_file(), "train.py wrote no model.pkl"
    # The host's answer, computed by the unchanged entry script the way the scoring server calls it.
    scored = run(
        [sys.executable, "-c", _HOST_SCORE, EXAMPLE_DIR, json.dumps(EXAMPLE_INPUT)],
        env={"AZUREML_MODEL_DIR": str(out)},
        timeout=300,
    )
    predictions = json.loads(scored.stdout)
    assert len(predictions) == len(EXAMPLE_INPUT["data"]), predictions
    return ExampleModel(
        model=model,
        score=EXAMPLE_DIR / "score.py",
        requirements=EXAMPLE_DIR / "requirements.txt",
        source_dir=EXAMPLE_DIR,
        predictions=predictions,
    )


# --- container engines ------------------------------------------------------------------------------------------


@dataclass
class Engine:
    """A container engine CLI bound to one private instance: `run("load", "-i", tar)` etc."""

    name: str
    argv: list[str]  # the CLI and its global flags
    env: dict[str, str]  # what the CLI needs in its environment to reach this instance
    dir: Path  # the instance's private directory
    storage_driver: str
    startup_seconds: float = 0.0

    def run(
        self,
        *args: str | os.PathLike[str],
        check: bool = True,
        timeout: float = 600,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        return run([*self.argv, *args], check=check, env=self.env, timeout=timeout, input=input)

    def remove(self, *containers: str) -> None:
        """Kill and remove containers at once, ignoring ones already gone (podman's `rm -f` would first wait
        10 s for a SIGTERM that a PID-1 process without a handler ignores)."""
        if containers:
            extra = ["--time", "0"] if self.name == "podman" else []
            self.run("rm", "--force", *extra, *containers, check=False, timeout=120)

    def load(self, archive: str | os.PathLike[str]) -> str:
        """Load a docker-archive/OCI tarball and return the image name (or ID) the engine reports."""
        out = self.run("load", "-i", archive).stdout
        for line in out.splitlines():
            for prefix in ("Loaded image: ", "Loaded image(s): ", "Loaded image ID: "):
                if line.startswith(prefix):
                    return line[len(prefix) :].split(",")[0].strip()
        raise AssertionError(f"{self.name} load printed no image name: {out!r}")


@dataclass
class Dockerd(Engine):
    sock: Path = Path()
    log: Path = Path()


def _start_dockerd(d: Path, driver: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = d / f"dockerd-{driver}.log"
    argv = [
        "dockerd",
        "-H", f"unix://{d}/docker.sock",
        "--data-root", f"{d}/root",
        "--exec-root", f"{d}/exec",
        "--pidfile", f"{d}/pid",
        "--iptables=false",
        "--ip6tables=false",
        "--bridge=none",
        f"--storage-driver={driver}",
        "--exec-opt", "native.cgroupdriver=cgroupfs",
    ]  # fmt: skip
    with open(log, "wb") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


@pytest.fixture(scope="session")
def dockerd() -> Iterator[Dockerd]:
    """A private Docker daemon (the flags bench/run.py uses too): overlay2, or vfs where overlay2 cannot work."""
    require("dockerd")
    cli = DOCKER_CLI_PREFERRED if os.access(DOCKER_CLI_PREFERRED, os.X_OK) else require("docker")
    require_root("dockerd")
    d = short_tempdir("ocibuild-dockerd-")
    sock = d / "docker.sock"
    env = {"DOCKER_HOST": f"unix://{sock}", "DOCKER_CONFIG": str(d / "config")}
    proc = None
    try:
        failures = []
        for driver in ("overlay2", "vfs"):
            start = time.monotonic()
            proc, log = _start_dockerd(d, driver)
            engine = Dockerd(
                name="docker", argv=[cli], env=env, dir=d, storage_driver=driver, sock=sock, log=log
            )
            while proc.poll() is None and time.monotonic() - start < 60:
                if sock.exists() and engine.run("version", check=False, timeout=30).returncode == 0:
                    break
                time.sleep(0.05)
            if proc.poll() is None:
                engine.run("version", timeout=30)  # not ready after 60 s: fail with the CLI's own words
                engine.startup_seconds = time.monotonic() - start
                break
            failures.append(
                f"--- dockerd --storage-driver={driver} exited {proc.returncode}:\n{log.read_text()}"
            )
        else:
            pytest.fail("dockerd does not start:\n" + "\n".join(failures))
        yield engine
        engine.remove(*engine.run("ps", "-aq", check=False).stdout.split())
    finally:
        if proc is not None:
            stop_process(proc)
        remove_tree(d)


_CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
# runc, not crun: on a hybrid cgroup host (v1 controllers + an empty v2 hierarchy) crun 1.8 refuses to run
# ("cgroups in hybrid mode not supported"), and with --no-install-recommends apt picks crun for podman.
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{d}/events.log"
tmp_dir = "{d}/tmp"

[network]
network_config_dir = "{d}/networks"
"""


@pytest.fixture(scope="session")
def podman() -> Iterator[Engine]:
    """podman with its own storage root, run root and containers.conf (docs/decisions.md: runc, cgroupfs, ulimits)."""
    cli = require("podman")
    require_root("podman")
    d = short_tempdir("ocibuild-podman-")
    try:
        (d / "containers.conf").write_text(_CONTAINERS_CONF.format(d=d))
        failures = []
        for driver in ("overlay", "vfs"):
            start = time.monotonic()
            root, runroot = d / f"root-{driver}", d / f"run-{driver}"
            # Our own storage.conf: the machine's (other roots, a mount_program) must not leak into the tests.
            storage_conf = d / f"storage-{driver}.conf"
            storage_conf.write_text(
                f'[storage]\ndriver = "{driver}"\ngraphroot = "{root}"\nrunroot = "{runroot}"\n'
            )
            engine = Engine(
                name="podman",
                argv=[cli, "--root", str(root), "--runroot", str(runroot), "--storage-driver", driver],
                env={
                    "CONTAINERS_CONF": str(d / "containers.conf"),
                    "CONTAINERS_STORAGE_CONF": str(storage_conf),
                },
                dir=d,
                storage_driver=driver,
            )
            info = engine.run("info", "--format", "{{.Store.GraphDriverName}}", check=False, timeout=120)
            if info.returncode == 0 and info.stdout.strip() == driver:
                engine.startup_seconds = time.monotonic() - start
                break
            failures.append(f"--- podman --storage-driver={driver}:\n{info.stdout}{info.stderr}")
        else:
            pytest.fail("podman does not work:\n" + "\n".join(failures))
        yield engine
        engine.remove(*engine.run("ps", "-aq", check=False).stdout.split())
    finally:
        remove_tree(d)


# A `registry` fixture (docker-registry serve on 127.0.0.1:<free_port()>, plain, basic-auth over TLS, and bearer
# token variants) belongs here next to the engines.


# --- registries ---------------------------------------------------------------------------------------------------

REGISTRY_USER = "ocitest"
REGISTRY_PASSWORD = "s3cret-Pa55"
REGISTRY_REFRESH_TOKEN = "refresh-0c1b"  # an OAuth2 refresh token the "token" registry's token server accepts
BASE_REPO = "base/python:3.11"  # where `Registry.push_base` puts the Debian base image


@dataclass
class Registry:
    """A real `docker-registry serve` on 127.0.0.1, as clients reach it.

    kind: "plain" (HTTP, no auth), "basic" (htpasswd Basic auth over TLS with the tests' own CA) or "token"
    (HTTP, bearer tokens from `tokens`, the tests' token server). "plain" and "token" sit behind `proxy`, a
    recording proxy (`host` is the proxy's address), so tests can assert what the registry was sent.
    """

    kind: str
    host: str
    dir: Path
    log: Path
    user: str | None = None
    password: str | None = None
    tls: object = None  # tests.registry.servers.TLSFiles for "basic"
    proxy: object = None  # tests.registry.servers.RecordingProxy
    tokens: object = None  # tests.registry.servers.TokenServer
    _bases: set[str] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}"

    @property
    def creds(self) -> str | None:
        return f"{self.user}:{self.password}" if self.user else None

    def ocibuild_args(self) -> list[str]:
        """Flags that let ocibuild reach this registry (credentials and CA)."""
        out = ["--creds", self.creds] if self.user else []
        return out + (["--ca-cert", str(self.tls.ca_cert)] if self.tls else [])

    def skopeo_args(self, prefix: str = "") -> list[str]:
        """skopeo flags for this registry; prefix "dest-" or "src-" for `skopeo copy`."""
        out = [f"--{prefix}cert-dir", str(self.tls.cert_dir)] if self.tls else [f"--{prefix}tls-verify=false"]
        return out + ([f"--{prefix}creds", self.creds] if self.user else [])

    def ref(self, repo_tag: str) -> str:
        return f"{self.host}/{repo_tag}"

    def push_base(self, base_image: BaseImage, repo_tag: str = BASE_REPO) -> str:
        """Copy the Debian base image into the registry with skopeo (once per session); returns its reference."""
        if repo_tag not in self._bases:
            run(
                ["skopeo", "copy", "--quiet", *self.skopeo_args("dest-"), base_image.ref,
                 f"docker://{self.ref(repo_tag)}"],
                timeout=300,
            )  # fmt: skip
            self._bases.add(repo_tag)
        return self.ref(repo_tag)

    def referrer_blobs(self, repo: str, digest: str) -> dict[str, int]:
        """The blobs (digest: size) of the artifacts the referrers tag of ``digest`` lists in ``repo`` (the image's
        SBOM and provenance: distribution 2.8 has no referrers API)."""
        tag_index = json.loads(run(["skopeo", "inspect", "--raw", *self.skopeo_args(),
                                    f"docker://{self.ref(repo)}:{digest.replace(':', '-')}"]).stdout)  # fmt: skip
        sizes = {}
        for entry in tag_index["manifests"]:
            doc = json.loads(run(["skopeo", "inspect", "--raw", *self.skopeo_args(),
                                  f"docker://{self.ref(repo)}@{entry['digest']}"]).stdout)  # fmt: skip
            sizes.update({x["digest"]: x["size"] for x in [doc["config"], *doc["layers"]]})
        return sizes

    def skopeo_inspect(self, repo_tag: str) -> dict:
        return json.loads(
            run(["skopeo", "inspect", *self.skopeo_args(), f"docker://{self.ref(repo_tag)}"]).stdout
        )


def _registry_config(d: Path, port: int, kind: str, tls, tokens) -> dict:
    config: dict = {
        "version": "0.1",
        "log": {"level": "warn", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(d / "data")},
            "delete": {"enabled": True},
            "maintenance": {"uploadpurging": {"enabled": False}},
        },
        "http": {"addr": f"127.0.0.1:{port}", "secret": "ocibuild-test-secret"},
    }
    if kind == "basic":
        hashed = run(["htpasswd", "-Bbn", REGISTRY_USER, REGISTRY_PASSWORD]).stdout.strip()
        (d / "htpasswd").write_text(hashed + "\n")
        config["auth"] = {"htpasswd": {"realm": "ocibuild-test", "path": str(d / "htpasswd")}}
        config["http"]["tls"] = {"certificate": str(tls.server_cert), "key": str(tls.server_key)}
    elif kind == "token":
        config["auth"] = {
            "token": {
                "realm": tokens.realm,
                "service": tokens.service,
                "issuer": tokens.issuer,
                "rootcertbundle": str(tokens.root_cert_bundle),
            }
        }
    return config


class Registries:
    """Starts each kind of registry on first use and stops them all at the end of the session."""

    def __init__(self) -> None:
        self._started: dict[str, Registry] = {}
        self._procs: list[subprocess.Popen[bytes]] = []
        self._stops: list[Callable[[], None]] = []
        self._dirs: list[Path] = []

    def get(self, kind: str) -> Registry:
        if kind not in self._started:
            self._started[kind] = self._start(kind)
        return self._started[kind]

    def _start(self, kind: str) -> Registry:
        import requests

        from tests.registry.servers import RecordingProxy, TokenServer, make_tls

        assert kind in ("plain", "basic", "token"), kind
        require("docker-registry")
        if kind == "basic":
            require("htpasswd")
        d = short_tempdir(f"ocibuild-registry-{kind}-")
        self._dirs.append(d)
        tls = make_tls(d / "tls") if kind == "basic" else None
        tokens = None
        if kind == "token":
            tokens = TokenServer(
                d / "token",
                {REGISTRY_USER: REGISTRY_PASSWORD},
                refresh_tokens={REGISTRY_REFRESH_TOKEN: REGISTRY_USER},
            ).start()
            self._stops.append(tokens.stop)
        port = free_port()
        config = d / "config.yml"
        config.write_text(json.dumps(_registry_config(d, port, kind, tls, tokens), indent=1))  # YAML ⊃ JSON
        log = d / "registry.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                ["docker-registry", "serve", str(config)],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs.append(proc)
        scheme = "https" if tls else "http"
        deadline = time.monotonic() + 30
        while True:
            try:
                r = requests.get(
                    f"{scheme}://127.0.0.1:{port}/v2/", timeout=2, verify=str(tls.ca_cert) if tls else True
                )
                if r.status_code in (200, 401):
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"docker-registry ({kind}) did not start:\n{log.read_text()}")
            time.sleep(0.02)
        host = f"127.0.0.1:{port}"
        proxy = None
        if kind in ("plain", "token"):
            proxy = RecordingProxy(port)
            self._stops.append(proxy.stop)
            host = f"127.0.0.1:{proxy.port}"
        user, password = (REGISTRY_USER, REGISTRY_PASSWORD) if kind != "plain" else (None, None)
        return Registry(kind, host, d, log, user, password, tls, proxy, tokens)

    def close(self) -> None:
        for proc in self._procs:
            stop_process(proc)
        for stop in self._stops:
            stop()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registries]:
    """`registry.get("plain" | "basic" | "token")`: real docker-registry instances, started on first use."""
    registries = Registries()
    try:
        yield registries
    finally:
        registries.close()


# --- a package index ----------------------------------------------------------------------------------------------

INDEX_USER = "wheeltest"
# A password that every encoding spells differently: a colon, an at sign, a percent sign, a quote, a space, a hash.
INDEX_PASSWORD = 'Pi-9x:q"uo te%\\rd@#'
# A second account for ~/.netrc, whose format cannot carry quotes, spaces or "#" in a password.
NETRC_USER = "netrcuser"
NETRC_PASSWORD = "n3trc:Pa55%w0rd"

_PURE_SETUP = """from setuptools import setup
setup(name={name!r}, version={version!r}, packages=[{module!r}])
"""
_CEXT_SETUP = """from setuptools import Extension, setup
setup(name="ocitest-cext", version="1.0", ext_modules=[Extension("ocitest_cext", ["ocitest_cext.c"])])
"""
_CEXT_SOURCE = """#include <Python.h>
static struct PyModuleDef m = {PyModuleDef_HEAD_INIT, "ocitest_cext", NULL, -1, NULL};
PyMODINIT_FUNC PyInit_ocitest_cext(void) { return PyModule_Create(&m); }
"""


@dataclass(frozen=True)
class PackageIndex:
    """A real pypiserver on 127.0.0.1 behind htpasswd (bcrypt) Basic auth, serving `dists`.

    `dists` holds distributions built here from tiny projects: `ocitest-pure` 1.0 (a pure wheel),
    `ocitest-puresrc` 1.0 (a pure-Python source archive only, built with setuptools, like `fusepy`) and
    `ocitest-cext` 1.0 (a source archive only, whose build compiles a C extension); plus a setuptools wheel, the
    build backend that source builds need when there is no other index. The same folder serves `--find-links`.
    """

    host: str
    dists: Path
    user: str = INDEX_USER
    password: str = INDEX_PASSWORD

    @property
    def url(self) -> str:
        return f"http://{self.host}/simple/"

    def url_with(self, user: str | None = None, password: str | None = None) -> str:
        from urllib.parse import quote

        user = self.user if user is None else user
        password = self.password if password is None else password
        return f"http://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}/simple/"


def write_wheel(folder: Path, name: str, version: str) -> Path:
    """A pure ``py3-none-any`` wheel whose one module holds ``NAME = "<name> <version>"``, written directly."""
    import zipfile

    module = name.replace("-", "_")
    path = folder / f"{module}-{version}-py3-none-any.whl"
    info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"NAME = {f'{name} {version}'!r}\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: ocibuild-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    with zipfile.ZipFile(path, "w") as z:
        for member, text in files.items():
            z.writestr(member, text)
        z.writestr(f"{info}/RECORD", "".join(f"{m},,\n" for m in [*files, f"{info}/RECORD"]))
    return path


def _build_distributions(out: Path, work: Path) -> None:
    """The test distributions: a wheel written directly, source archives made offline by the host's setuptools."""
    env = {"SOURCE_DATE_EPOCH": "315532800"}
    write_wheel(out, "ocitest-pure", "1.0")
    proj = work / "ocitest-puresrc"
    (proj / "ocitest_puresrc").mkdir(parents=True)
    (proj / "setup.py").write_text(
        _PURE_SETUP.format(name="ocitest-puresrc", version="1.0", module="ocitest_puresrc")
    )
    (proj / "ocitest_puresrc" / "__init__.py").write_text("NAME = 'ocitest-puresrc 1.0'\n")
    run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "-d", out], cwd=proj, env=env)
    proj = work / "ocitest-cext"
    proj.mkdir()
    (proj / "setup.py").write_text(_CEXT_SETUP)
    (proj / "ocitest_cext.c").write_text(_CEXT_SOURCE)
    run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "-d", out], cwd=proj, env=env)


@pytest.fixture(scope="session")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PackageIndex]:
    """`pypi-server run -p PORT -P htpasswd -a download,list,update DIR` , started once."""
    server = require("pypi-server")
    require("htpasswd")
    root = tmp_path_factory.mktemp("package-index")
    dists = root / "dists"
    dists.mkdir()
    _build_distributions(dists, root / "projects")
    # The build backend for source builds, fetched once the way pip is configured here (PyPI or a mirror).
    fetched = run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", dists,
                   "setuptools>=70"], check=False, timeout=300)  # fmt: skip
    if fetched.returncode != 0:
        pytest.skip(f"cannot download a setuptools wheel for the test index: {fetched.stderr.strip()[-300:]}")
    htpasswd = root / "htpasswd"
    htpasswd.write_text(
        "".join(run(["htpasswd", "-Bbn", user, pw]).stdout.strip() + "\n"
                for user, pw in [(INDEX_USER, INDEX_PASSWORD), (NETRC_USER, NETRC_PASSWORD)])
    )  # fmt: skip
    port = free_port()
    log = root / "pypi-server.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            [server, "run", "-i", "127.0.0.1", "-p", str(port), "-P", htpasswd, "-a", "download,list,update",
             dists],
            stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/simple/", timeout=2).close()
            except urllib.error.HTTPError as e:
                if e.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"pypi-server did not start:\n{log.read_text()}")
            time.sleep(0.05)
        yield PackageIndex(f"127.0.0.1:{port}", dists)
    finally:
        stop_process(proc)
