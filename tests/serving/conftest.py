"""Run the scoring server as images do: the package copied as ``ocibuild_serving``, ``python -S -m`` (no
site-packages, so anything outside the standard library fails to import), real HTTP on a free port."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

PACKAGE_SRC = Path(__file__).resolve().parents[2] / "ocibuild" / "serving"
START_TIMEOUT_S = 15.0
# The interpreter the server runs on; point it at an older Python (3.9+) to check the image contract there.
SERVER_PYTHON = os.environ.get("OCIBUILD_SERVING_PYTHON") or sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        time.sleep(interval)


class Server:
    """A server subprocess; ``log()`` is its stderr so far."""

    def __init__(self, proc: subprocess.Popen, port: int, app_root: Path) -> None:
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.app_root = app_root

    def log(self) -> str:
        return (self.app_root / "server.log").read_text(errors="replace")

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=kwargs.pop("timeout", 5), **kwargs)

    def post(self, path: str, data=None, **kwargs) -> requests.Response:
        return requests.post(self.url + path, data=data, timeout=kwargs.pop("timeout", 5), **kwargs)

    def status(self, path: str) -> int | None:
        """The status of ``GET path``, or None when nothing answers."""
        try:
            return requests.get(self.url + path, timeout=2).status_code
        except requests.RequestException:
            return None

    def wait_status(self, path: str, status: int, timeout: float = START_TIMEOUT_S) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            return self.status(path) == status

        wait_for(check, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(5)


@pytest.fixture(scope="session")
def server_pythonpath(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the package as ``ocibuild_serving``, exactly as the builder puts it into images."""
    root = tmp_path_factory.mktemp("server")
    shutil.copytree(PACKAGE_SRC, root / "ocibuild_serving", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def launch(
    pythonpath: Path,
    app_root: Path,
    script: str,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    files: dict[str, str] | None = None,
    ready: bool = True,
) -> Server:
    """Write ``script`` as ``app_root/score.py`` (and ``files``), start the server there with the app root as
    working directory, as in images; wait for ``GET /`` 200 if ``ready``."""
    (app_root / "score.py").write_text(textwrap.dedent(script))
    for name, text in (files or {}).items():
        (app_root / name).parent.mkdir(parents=True, exist_ok=True)
        (app_root / name).write_text(textwrap.dedent(text))
    port = free_port()
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(pythonpath),
        "PYTHONDONTWRITEBYTECODE": "1",
        "AZUREML_ENTRY_SCRIPT": "score.py",
        "OCIBUILD_PORT": str(port),
        "OCIBUILD_HOST": "127.0.0.1",
        **(env or {}),
    }
    log_path = app_root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [SERVER_PYTHON, "-S", "-m", "ocibuild_serving", *(args or [])],
            cwd=app_root,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so kill() reaches worker processes too
        )
    server = Server(proc, port, app_root)
    if ready:
        server.wait_status("/", 200)
    return server


@pytest.fixture()
def start_server(
    server_pythonpath: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Server]]:
    """``start_server(script, env=..., args=..., files=..., ready=True)``; every server is killed at teardown."""
    started: list[Server] = []

    def start(script: str, **kwargs) -> Server:
        server = launch(server_pythonpath, tmp_path_factory.mktemp("app"), script, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.kill()


FIXTURE_CACHE = Path(os.environ.get("OCIBUILD_FIXTURE_CACHE", Path.home() / ".cache" / "ocibuild-fixtures"))


def server_python_version() -> str:
    """``X.Y`` of the Python the server runs on (``SERVER_PYTHON``)."""
    return subprocess.run(
        [SERVER_PYTHON, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip


def install_for_server(name: str, requirements: list[str]) -> Path:
    """A folder holding ``requirements`` (and their dependencies) for the server's PYTHONPATH, as a user's
    requirements put them into an image: wheels for the server's Python, installed from PyPI by this host's pip
    (so a server Python without pip works too) once, and cached outside the repo as ``name-pyXY``."""
    version = server_python_version()
    target = FIXTURE_CACHE / f"{name}-py{version.replace('.', '')}"
    if not (target / "COMPLETE").is_file():
        shutil.rmtree(target, ignore_errors=True)
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
             "--only-binary=:all:", "--python-version", version, "--target", str(target), *requirements],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            pytest.skip(f"cannot install {' '.join(requirements)} from PyPI: {proc.stderr.strip()[-500:]}")
        (target / "COMPLETE").touch()
    return target


@pytest.fixture(scope="session")
def inference_schema_path() -> Path:
    """A folder holding the ``inference-schema`` package (and its dependencies) for servers' PYTHONPATH."""
    return install_for_server("inference-schema", ["inference-schema"])
