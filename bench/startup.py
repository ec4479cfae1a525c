#!/usr/bin/env python3
"""Start time of a packaged image, from ``docker run`` to ``GET /`` answering ``Healthy``: writable root against
``--read-only --tmpfs /tmp``, with the dependencies' bytecode compiled at build time against ``--no-bytecode``.

    python3 bench/startup.py                      # the example and the torch set, 5 starts of each variant
    python3 bench/startup.py --skip-torch --reps 3

Each image is built twice by ``ocibuild package`` (a new ocibuild cache each time, so both builds install and
check the dependencies; the installer's download cache is warm): with the default bytecode and with
``--no-bytecode``. Both run in a private dockerd (``--network host``, as the tests run them) as they would in
production: as the image's user (65532), writable and read-only. The starts are interleaved (every variant once,
then again), so a burst of load on this shared machine hits all of them alike; the figure is the median of
``--reps``, and the ratios are between figures of this one run. Writes ``bench/startup-results.json`` (or
``--json``); the README quotes it.

The large set is ``torch==2.13.0`` (the CPU build: ``--torch-find-links`` names a folder holding its wheel, on this
machine ``/opt/wheels``; its own dependencies come from the index), with an entry script that imports torch and
builds a small network in ``init()`` (built with ``--skip-check native``: see ``apps``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "fixtures" / "example"
DOCKER = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
TORCH_SCORE = """import json

import torch


def init():
    global model
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1)).eval()


def run(raw_data):
    with torch.no_grad():
        return model(torch.tensor(json.loads(raw_data)["data"], dtype=torch.float32)).squeeze(-1).tolist()
"""
MODES = {"writable": [], "read-only": ["--read-only", "--tmpfs", "/tmp"]}
_COMPILED = re.compile(r"^bytecode: compiled (\d+) modules .* in (\d+(?:\.\d+)?) s", re.M)
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def log(msg: str) -> None:
    print(f"[startup-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Dockerd:
    """A private dockerd with the flags of tests/conftest.py (no bridge: containers use the host's network)."""

    def __init__(self, work: Path) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ocibuild-startup-dockerd-", dir="/tmp"))
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.dir}/docker.sock",
                    "DOCKER_CONFIG": str(self.dir / "config")}  # fmt: skip
        d = self.dir
        argv = ["dockerd", "-H", f"unix://{d}/docker.sock", "--data-root", f"{d}/root", "--exec-root",
                f"{d}/exec", "--pidfile", f"{d}/pid", "--iptables=false", "--ip6tables=false", "--bridge=none",
                "--storage-driver=overlay2", "--exec-opt", "native.cgroupdriver=cgroupfs"]  # fmt: skip
        with open(work / "dockerd.log", "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"dockerd does not start; see {work / 'dockerd.log'}")
            time.sleep(0.1)

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, check=check)

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        root = os.path.realpath(self.dir)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(root + "/")]
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def base_ref() -> str:
    out = subprocess.run(
        ["bash", REPO / "scripts" / "make-base-image.sh"], capture_output=True, text=True, check=True
    )
    return f"oci:{out.stdout.strip().splitlines()[-1]}/oci:py311"


def build(work: Path, name: str, app: dict, base: str, bytecode: bool) -> dict:
    """``ocibuild package --output`` of one variant with a new ocibuild cache; what it took and made."""
    tag = f"startup/{name}:{'pyc' if bytecode else 'nopyc'}"
    out = work / f"{name}-{'pyc' if bytecode else 'nopyc'}.tar"
    cache = work / "cache-build"
    argv = [sys.executable, "-m", "ocibuild", "package", app["model"], "--entry-script", app["score"],
            "--requirements", app["requirements"], *app["extra"], "--base", base, "--tag", tag, "--output", out,
            "--cache", cache, *([] if bytecode else ["--no-bytecode"])]  # fmt: skip
    started = time.perf_counter()
    proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env={**os.environ,
                          "PYTHONPATH": str(REPO)}, cwd=REPO)  # fmt: skip
    wall = time.perf_counter() - started
    shutil.rmtree(cache, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"build of {tag} failed:\n{proc.stderr[-3000:]}")
    compiled = _COMPILED.search(proc.stderr)
    log(f"built {tag} in {wall:.1f} s")
    return {"tag": tag, "archive": out, "build_s": round(wall, 2), "image_bytes": out.stat().st_size,
            "compiled_modules": int(compiled.group(1)) if compiled else 0,
            "compile_s": float(compiled.group(2)) if compiled else 0.0}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_once(engine: Dockerd, tag: str, flags: list[str], timeout: float = 600) -> float:
    """Seconds from ``docker run -d`` to ``GET /`` answering 200 (the container is removed after)."""
    port = free_port()
    name = f"startup-{port}"
    started = time.perf_counter()
    engine.docker(
        "run", "-d", "--name", name, "--network", "host", "-e", f"OCIBUILD_PORT={port}", *flags, tag
    )
    try:
        while True:
            try:
                with _NO_PROXY.open(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    if resp.status == 200:
                        return time.perf_counter() - started
            except (OSError, urllib.error.URLError):
                pass
            if time.perf_counter() - started > timeout:
                logs = engine.docker("logs", name, check=False)
                raise SystemExit(f"{tag} not Healthy after {timeout} s:\n{logs.stderr[-2000:]}")
            time.sleep(0.02)
    finally:
        engine.docker("rm", "-f", name, check=False)


def apps(work: Path, torch_links: Path | None) -> dict[str, dict]:
    model_dir = work / "model"
    model_dir.mkdir()
    subprocess.run([sys.executable, EXAMPLE / "train.py", model_dir], check=True, capture_output=True)
    found = {"example": {"model": model_dir / "model.pkl", "score": EXAMPLE / "score.py",
                         "requirements": EXAMPLE / "requirements.txt", "extra": []}}  # fmt: skip
    if torch_links is not None:
        torch_dir = work / "torch-app"
        torch_dir.mkdir()
        (torch_dir / "score.py").write_text(TORCH_SCORE)
        (torch_dir / "requirements.txt").write_text("torch==2.13.0\n")
        (torch_dir / "weights.bin").write_bytes(os.urandom(4096))  # not read: init() builds its own network
        found["torch"] = {"model": torch_dir / "weights.bin", "score": torch_dir / "score.py",
                          "requirements": torch_dir / "requirements.txt",
                          # torch 2.13.0+cpu ships torch/bin/test_shim, a test program whose RUNPATH ($ORIGIN)
                          # misses torch/lib: the native check refuses it although nothing ever runs it
                          "extra": ["--find-links", torch_links, "--skip-check", "native"]}  # fmt: skip
    return found


def summarise(starts: dict[str, list[float]]) -> dict:
    medians = {k: round(statistics.median(v), 3) for k, v in starts.items()}
    ratios = {}
    for name in {k.split(" ")[0] for k in starts}:
        pyc_rw, pyc_ro = medians[f"{name} pyc writable"], medians[f"{name} pyc read-only"]
        src_rw, src_ro = medians[f"{name} nopyc writable"], medians[f"{name} nopyc read-only"]
        ratios[name] = {
            "read-only / writable, with bytecode": round(pyc_ro / pyc_rw, 2),
            "read-only / writable, without bytecode": round(src_ro / src_rw, 2),
            "without / with bytecode, read-only": round(src_ro / pyc_ro, 2),
            "without / with bytecode, writable": round(src_rw / pyc_rw, 2),
        }
    return {"median_s": medians, "ratios": ratios}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-find-links", type=Path, default=Path("/opt/wheels"))
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "startup-results.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocibuild-startup-bench-"))
    machine = {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}
    engine = None
    try:
        base = base_ref()
        builds = {}
        for name, app in apps(work, None if args.skip_torch else args.torch_find_links).items():
            for bytecode in (True, False):
                builds[f"{name} {'pyc' if bytecode else 'nopyc'}"] = build(work, name, app, base, bytecode)
        engine = Dockerd(work)
        for variant in builds.values():
            engine.docker("load", "-i", str(variant.pop("archive")))
        starts: dict[str, list[float]] = {f"{v} {m}": [] for v in builds for m in MODES}
        for rep in range(args.reps):
            for variant, built in builds.items():
                for mode, flags in MODES.items():
                    seconds = start_once(engine, built["tag"], flags)
                    starts[f"{variant} {mode}"].append(round(seconds, 3))
            log(f"round {rep + 1}/{args.reps}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in starts.items()))
        results = {
            "machine": machine,
            "what": "docker run -d to GET / = 200, as the image's user (65532); median of --reps, interleaved",
            "builds": builds,
            "starts_s": starts,
            **summarise(starts),
        }
        machine["loadavg_after"] = os.getloadavg()[0]
    finally:
        if engine is not None:
            engine.close()
        shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps({k: results[k] for k in ("median_s", "ratios")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
