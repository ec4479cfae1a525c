#!/usr/bin/env python3
"""ocibuild's benchmark: every figure of one table measured in the same run, so that its ratios hold on a noisy
machine.

    python3 bench/run.py            # the full run: 1 GiB and 4 GiB models (10-15 minutes, ~20 GB of disk)
    python3 bench/run.py --quick    # 128 MiB and 512 MiB, a couple of minutes

Prints the table and writes it as JSON (``bench/results.json`` for a full run: the README's reference;
``bench/results-quick.json`` for --quick). What it measures (bench/README.md says more):

1. Layer build of a synthetic float32 model (random normal weights written by numpy, which barely compress, as
   real weights): ocibuild's layer writer (default gzip, and none and zstd) against one bare sha256 pass over the
   same file (the limit), the stock-zlib gzip path the peers use, and the directions tried on the way.
2. ``ocibuild package --output`` of the example with the 1 GiB model (dependencies cached) against
   ``docker build`` + ``docker save`` of the equivalent Dockerfile on a private dockerd, and against
   ``umoci insert`` + ``skopeo copy`` to a docker-archive.
3. Rebuild after editing only ``score.py``, with the 4 GiB model (cache warm), and the bytes it read.
4. Push of the package image (``--oci-layout``, the same model as 2.) to a local plain-HTTP docker-registry:
   ocibuild's first push, its second push of the same image (blob bytes counted by a recording proxy), and
   ``skopeo copy`` of the same layout into a fresh repository; and the peak RSS of pushing one big layer (2 GiB)
   against a small one, to show it is flat.
5. Peak RSS of every ocibuild run.

Files are read from the page cache in every run (the machine has the RAM): the figures compare CPU and write
paths, not the disk's read speed. Every timed run starts after ``sync``, so that one run's dirty pages do not slow
the next. Big files live in a temporary directory (``--workdir``) deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
EXAMPLE = REPO / "fixtures" / "example"
PY = sys.executable
MiB = 1 << 20
GiB = 1 << 30
DOCKER_CLI = "/usr/bin/docker" if os.access("/usr/bin/docker", os.X_OK) else "docker"
BASE_TAG = "py311"
BASE_DOCKER_NAME = "ocibuild-test/debian-python:3.11"


@dataclass(frozen=True)
class Plan:
    layer_sizes: tuple[int, ...]
    package_size: int
    rebuild_size: int
    reps: int  # best of this many, where a run is cheap
    peer_reps: int  # docker / umoci runs
    disk_needed: int
    flat_size: int  # the one big layer of the push memory check


FULL = Plan(
    (1 * GiB, 4 * GiB), 1 * GiB, 4 * GiB, reps=3, peer_reps=2, disk_needed=24 * GiB, flat_size=2 * GiB
)
QUICK = Plan(
    (128 * MiB, 512 * MiB),
    128 * MiB,
    512 * MiB,
    reps=2,
    peer_reps=1,
    disk_needed=5 * GiB,
    flat_size=256 * MiB,
)


def human(n: float) -> str:
    return f"{n / GiB:.0f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- running and measuring processes


@dataclass
class Measured:
    wall: float  # seconds, outside the process (includes its start)
    maxrss_mb: float  # peak RSS of the process (wait4)
    stdout: str
    report: dict = field(default_factory=dict)  # what the process reported about itself (tasks.py / probe.py)
    cpu: float = 0.0  # user + system seconds of the process (wait4), its start included

    @property
    def seconds(self) -> float:
        return self.report.get("seconds", self.wall)

    @property
    def rss_mb(self) -> float:
        """The process's own peak (VmHWM) when it reported one; else wait4's, which counts the parent at fork."""
        return self.report["vmhwm_kb"] / 1024 if "vmhwm_kb" in self.report else self.maxrss_mb


def measure(
    argv: list[str], *, env: dict | None = None, timeout: float = 3600, sync: bool = True
) -> Measured:
    """Run ``argv`` once; fail loudly (with its output) if it fails."""
    if sync:
        os.sync()
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    # Python's modules compiled once, as pip compiles an installed ocibuild's: with this set (as in some shells)
    # every run compiles ocibuild's ~95 modules again, 0.1 s that no user's build pays.
    full_env.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=full_env, text=True)
        deadline = start + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.01)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(
            f"failed (exit {proc.returncode}): {' '.join(argv)}\n--- stdout\n{stdout[-3000:]}\n"
            f"--- stderr\n{stderr[-3000:]}"
        )
    return Measured(wall, usage.ru_maxrss / 1024, stdout, cpu=usage.ru_utime + usage.ru_stime)


def task(*args: str) -> Measured:
    m = measure([PY, str(BENCH / "tasks.py"), *args])
    m.report = json.loads(m.stdout.strip().splitlines()[-1])
    return m


def probe(report: Path, *args: str, env: dict | None = None) -> Measured:
    m = measure([PY, str(BENCH / "probe.py"), str(report), "-m", *args], env=env)
    m.report = json.loads(report.read_text())
    report.unlink()
    return m


def best(runs: list[Measured]) -> dict:
    """The fastest run's figures, and every run's time."""
    top = min(runs, key=lambda m: m.seconds)
    doc = {
        "seconds": round(top.seconds, 3),
        "wall": round(top.wall, 3),
        "maxrss_mb": round(max(m.rss_mb for m in runs), 1),
        "runs": [round(m.seconds, 3) for m in runs],
        "cpu_seconds": round(top.cpu, 3),
    }
    keys = ("blob_bytes", "input_bytes", "stored", "media_type", "rchar", "read_bytes", "image_bytes", "peer_cpu_seconds")
    for key in keys:
        if key in top.report:
            doc[key] = top.report[key]
    return doc


def loadavg() -> float:
    return os.getloadavg()[0]


def rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def tool_version(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "not installed"


# ---------------------------------------------------------------- inputs


def make_weights(path: Path, size: int, seed: int) -> Path:
    """Random normal float32 weights, written in 16 MiB chunks (real weights barely compress either)."""
    import numpy as np

    if path.exists() and path.stat().st_size == size:
        return path
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(16 * MiB, left)
            f.write(rng.standard_normal(n // 4, dtype=np.float32).tobytes())
            left -= n
    return path


def base_fixture() -> Path | None:
    proc = subprocess.run(
        ["bash", str(REPO / "scripts" / "make-base-image.sh")], capture_output=True, text=True, timeout=1800
    )
    if proc.returncode != 0:
        log(f"no base image fixture (scripts/make-base-image.sh failed): {proc.stderr.strip()[-500:]}")
        return None
    return Path(proc.stdout.strip().splitlines()[-1])


def model_dir(work: Path, name: str, weights: Path) -> Path:
    """The example's trained model.pkl plus the synthetic weights (hard-linked: no second copy on disk)."""
    d = work / name
    d.mkdir(exist_ok=True)
    shutil.copyfile(work / "example" / "model.pkl", d / "model.pkl")
    target = d / "weights.bin"
    rm(target)
    os.link(weights, target)
    return d


def touch(path: Path) -> None:
    """A new mtime: the model "was trained again", so the layer cache cannot answer."""
    ns = time.time_ns()
    os.utime(path, ns=(ns, ns))


# ---------------------------------------------------------------- 1. layer build


LAYER_ROWS = [
    # key, label, task and flags (bench/tasks.py), reps: "cheap" (best of plan.reps) or "once"
    ("sha256", "sha256 pass, 1 MiB reads", "sha256 1 0", "cheap"),
    ("sha256_fast", "sha256 pass, 4 MiB reads, buffer 64 B off page", "sha256 4 64", "cheap"),
    ("zlib6", "stock zlib -6 gzip, one stream (peers' path)", "zlib", "once"),
    ("isal1", "isal -1 gzip, one stream, one thread (ocibuild before)", "isal1", "cheap"),
    ("all_deflate", "libdeflate -1 on all cores, every segment, into the cache", "layer gzip --all-deflate --store-blob", "once"),
    ("stored_blocks", "gzip of stored deflate blocks (not plain tar), derived", "layer gzip --no-plain", "once"),
    ("gzip_cached", "ocibuild default, but the blob copied into the cache", "layer gzip --store-blob", "once"),
    ("gzip", "ocibuild default (gzip, or plain tar if incompressible)", "layer gzip", "cheap"),
    ("gzip_no_file_digests", "the same without each file's sha256 (before the SBOM)", "layer gzip --no-file-digests", "cheap"),
    ("none", "ocibuild --compression none", "layer none", "cheap"),
    ("zstd", "ocibuild --compression zstd", "layer zstd", "once"),
]  # fmt: skip


def _layer_task(key: str, spec: str, path: Path, work: Path) -> Measured:
    scratch = work / "scratch"
    rm(scratch)
    scratch.mkdir()
    try:
        name, *rest = spec.split()
        if name == "sha256":
            return task("sha256", str(path), *rest)
        if name in ("zlib", "isal1"):
            return task(name, str(path), str(scratch / "out.gz"))
        codec, *flags = rest
        return task("layer", codec, str(path), str(scratch / "store"), *flags)
    finally:
        rm(scratch)


def bench_layers(plan: Plan, work: Path, files: dict[int, Path]) -> dict:
    """Rounds: every cheap row runs once per round, so the best of each row comes from the same stretch of
    time as the others' (the machine's load drifts over minutes); the slow rows run in the first round only."""
    results: dict = {}
    for size in plan.layer_sizes:
        path = files[size]
        runs: dict[str, list[Measured]] = {key: [] for key, *_ in LAYER_ROWS}
        log(f"layer build, {human(size)}")
        for round_ in range(plan.reps):
            for key, label, spec, reps in LAYER_ROWS:
                if reps == "once" and round_:
                    continue
                m = _layer_task(key, spec, path, work)
                m.report["load"] = loadavg()
                runs[key].append(m)
                log(f"  {label}: {m.seconds:.2f} s (load {m.report['load']:.1f})")
        rows = {key: {"label": label, **best(runs[key])} for key, label, *_ in LAYER_ROWS}
        # The limit is the faster of the two sha256 passes (reading into a buffer that is not page-aligned
        # saves most of the kernel's copy time here: tasks.sha256), so that no ratio is flattered by a slow one.
        limit = min(rows["sha256"]["seconds"], rows["sha256_fast"]["seconds"])
        for row in rows.values():
            row["ratio_to_sha256"] = round(row["seconds"] / limit, 2)
            if "blob_bytes" in row:
                row["blob_ratio"] = round(row["blob_bytes"] / size, 4)
        results[str(size)] = rows
    return results


# ---------------------------------------------------------------- 2. whole package vs docker and umoci


class Dockerd:
    """A private dockerd with the flags tests/conftest.py starts it with."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="ocibuild-bench-dockerd-", dir="/tmp"))
        self.env = {
            "DOCKER_HOST": f"unix://{self.dir}/docker.sock",
            "DOCKER_CONFIG": str(self.dir / "config"),
        }
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        d = self.dir
        for driver in ("overlay2", "vfs"):
            argv = [
                "dockerd", "-H", f"unix://{d}/docker.sock", "--data-root", f"{d}/root",
                "--exec-root", f"{d}/exec", "--pidfile", f"{d}/pid", "--iptables=false", "--ip6tables=false",
                "--bridge=none", f"--storage-driver={driver}", "--exec-opt", "native.cgroupdriver=cgroupfs",
            ]  # fmt: skip
            log_file = open(d / f"dockerd-{driver}.log", "wb")
            self.proc = subprocess.Popen(
                argv, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
            log_file.close()
            deadline = time.monotonic() + 60
            while self.proc.poll() is None and time.monotonic() < deadline:
                if self.docker("version", check=False).returncode == 0:
                    self.driver = driver
                    return
                time.sleep(0.1)
            self.stop()
        raise RuntimeError(f"dockerd does not start; see {d}/dockerd-*.log")

    def docker(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(
            [DOCKER_CLI, *args], env={**os.environ, **self.env}, capture_output=True, text=True, check=check,
            timeout=1800,
        )  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def remove(self) -> None:
        self.stop()
        root = os.path.realpath(self.dir)
        with open("/proc/self/mountinfo") as f:
            mounts = [ln.split()[4] for ln in f if ln.split()[4].startswith(root + "/")]
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


def package_argv(model: Path, script: Path, base: Path, cache: Path, *output: str) -> list[str]:
    return [
        "ocibuild", "package", str(model), "--entry-script", str(script),
        "--requirements", str(EXAMPLE / "requirements.txt"), "--base", f"oci:{base}/oci:{BASE_TAG}",
        "--name", "bench", "--tag", "bench:1", "--cache", str(cache), "-q", *output,
    ]  # fmt: skip


def warm_cache(work: Path, base: Path) -> None:
    """The dependencies layer (wheels resolved once) and the base image's Python in the cache, as a user's second
    build finds them. Model layers are not: every timed build gets a model file with a new mtime."""
    log("warming the cache: dependencies layer")
    model = work / "warm-model"
    model.mkdir(exist_ok=True)
    trained = work / "example" / "model.pkl"
    if not trained.exists():
        subprocess.run([PY, str(EXAMPLE / "train.py"), str(trained.parent)], check=True, capture_output=True)
    shutil.copyfile(trained, model / "model.pkl")
    out = work / "warm.tar"
    probe(
        work / "probe.json",
        *package_argv(model, EXAMPLE / "score.py", base, work / "cache", "--output", str(out)),
    )
    rm(out)


def bench_package(plan: Plan, work: Path, files: dict[int, Path], base: Path) -> dict:
    """Rounds again: ocibuild, docker (legacy builder, BuildKit) and umoci + skopeo one after the other in each
    round, so that each comparison is made under the same load; the best of each is kept."""
    size = plan.package_size
    log(f"whole package --output, {human(size)} model")
    model = model_dir(work, "package-model", files[size])
    cache = work / "cache"
    out = work / "package-out"
    out.mkdir(exist_ok=True)
    script = EXAMPLE / "score.py"
    context = work / "context"
    rm(context)
    probe(work / "probe.json", *package_argv(model, script, base, cache, "--dockerfile", str(context)))
    layer_dirs = sorted(p for p in context.iterdir() if p.is_dir())
    result: dict = {"model_bytes": size}
    labels = {
        "ocibuild": "ocibuild package --output",
        "docker_legacy": "docker build (legacy) + docker save",
        "docker_buildkit": "docker build (BuildKit) + docker save",
        "umoci_skopeo": "umoci insert + skopeo copy (docker-archive)",
    }
    runs: dict[str, list[Measured]] = {key: [] for key in labels}
    engine = _private_dockerd(base, result) if shutil.which("dockerd") else None
    peers: list[tuple[str, Callable[[], Measured]]] = []
    if engine is not None:
        peers += [("docker_legacy", partial(_docker_build, engine, "legacy", context, out))]
        peers += [("docker_buildkit", partial(_docker_build, engine, "buildkit", context, out))]
    if shutil.which("umoci") and shutil.which("skopeo"):
        peers.append(("umoci_skopeo", partial(_umoci_build, work, base, layer_dirs, out)))
    try:
        for round_ in range(max(plan.reps, plan.peer_reps)):
            runs["ocibuild"].append(_package_once(work, model, script, base, cache, out))
            log(f"  {labels['ocibuild']}: {runs['ocibuild'][-1].seconds:.2f} s")
            if round_ < plan.peer_reps:
                _run_peers(peers, labels, runs, result)
    finally:
        if engine is not None:
            engine.remove()
        rm(context)
        rm(out)
    add_best(result, labels, runs)
    mine = result["ocibuild"]["seconds"]
    for key in ("docker_legacy", "docker_buildkit", "umoci_skopeo"):
        if key in result:
            result[key]["times_ocibuild"] = round(result[key]["seconds"] / mine, 1)
    return result


def _private_dockerd(base: Path, result: dict) -> Dockerd | None:
    """A started private dockerd with the base image loaded, its version in ``result``; None (and the error in
    ``result``) when it cannot be had."""
    engine = Dockerd()
    try:
        engine.start()
        engine.docker("load", "-i", str(base / "docker-archive.tar"))
        result["docker_version"] = engine.docker("version", "--format", "{{.Server.Version}}").stdout.strip()
        result["docker_storage_driver"] = engine.driver
    except (RuntimeError, subprocess.SubprocessError) as e:
        log(f"  docker: {e}")
        result["docker_error"] = str(e)[:1000]
        engine.remove()
        return None
    return engine


def _package_once(work: Path, model: Path, script: Path, base: Path, cache: Path, out: Path) -> Measured:
    """One ``ocibuild package --output``, the model "trained again" first: its layer is built in every run."""
    touch(model / "weights.bin")
    try:
        m = probe(
            work / "probe.json", *package_argv(model, script, base, cache, "--output", str(out / "o.tar"))
        )
        m.report["seconds"] = m.wall  # whole commands on both sides
        return m
    finally:
        rm(out / "o.tar")


def _docker_build(engine: Dockerd, builder: str, context: Path, out: Path) -> Measured:
    """``docker build`` of the Dockerfile context (no cache) and ``docker save`` of the image."""
    engine.docker("rmi", "-f", "bench-docker:1", check=False)
    engine.docker("builder", "prune", "-af", check=False)
    argv = [
        "sh", "-c",
        f'"{DOCKER_CLI}" build -q --no-cache -t bench-docker:1 --build-arg BASE_IMAGE={BASE_DOCKER_NAME} '
        f'"{context}" >/dev/null && "{DOCKER_CLI}" save -o "{out}/docker.tar" bench-docker:1',
    ]  # fmt: skip
    try:
        return measure(argv, env={**engine.env, "DOCKER_BUILDKIT": "1" if builder == "buildkit" else "0"})
    finally:
        rm(out / "docker.tar")


def _umoci_build(work: Path, base: Path, layer_dirs: list[Path], out: Path) -> Measured:
    """``umoci insert`` of the context's layer directories into a copy of the base, then ``skopeo copy`` of it
    to a docker-archive."""
    layout = work / "umoci-layout"
    rm(layout)
    shutil.copytree(base / "oci", layout)
    inserts = " && ".join(f'umoci insert --image "{layout}:{BASE_TAG}" "{d}" /' for d in layer_dirs)
    argv = [
        "sh", "-c",
        f'{inserts} >/dev/null && skopeo copy --quiet "oci:{layout}:{BASE_TAG}" '
        f'"docker-archive:{out}/umoci.tar:bench-umoci:1"',
    ]  # fmt: skip
    try:
        return measure(argv)
    finally:
        rm(out / "umoci.tar")
        rm(layout)


def _run_peers(
    peers: list[tuple[str, Callable[[], Measured]]],
    labels: dict[str, str],
    runs: dict[str, list[Measured]],
    result: dict,
) -> None:
    """One run of each peer; a failed one is logged and its error kept in ``result``."""
    for key, run in peers:
        try:
            runs[key].append(run())
            log(f"  {labels[key]}: {runs[key][-1].seconds:.2f} s")
        except RuntimeError as e:
            log(f"  {labels[key]} failed: {str(e)[:500]}")
            result[f"{key}_error"] = str(e)[:1000]


def add_best(result: dict, labels: dict[str, str], runs: dict[str, list[Measured]]) -> None:
    """Each row that ran: its label and its best run's figures."""
    for key, label in labels.items():
        if runs[key]:
            result[key] = {"label": label, **best(runs[key])}


# ---------------------------------------------------------------- 3. rebuild after editing score.py


def bench_rebuild(plan: Plan, work: Path, files: dict[int, Path], base: Path) -> dict:
    size = plan.rebuild_size
    log(f"rebuild after editing score.py, {human(size)} model")
    model = model_dir(work, "rebuild-model", files[size])
    app = work / "app"
    app.mkdir(exist_ok=True)
    script = app / "score.py"
    shutil.copyfile(EXAMPLE / "score.py", script)
    cache = work / "cache"
    layout = work / "rebuild-layout"
    rm(layout)
    first = probe(work / "probe.json", *package_argv(model, script, base, cache, "--oci-layout", str(layout)))
    result: dict = {
        "model_bytes": size,
        "first_build_layout": {
            "label": "first build --oci-layout (model layer built and written)",
            **best([first]),
        },
    }
    # Proof that no model byte is read: an old atime (mtime, size, inode: the cache key, untouched) is updated
    # by the first read(2) of the file (relatime), so it must still be there after the rebuilds.
    weights = model / "weights.bin"
    old_atime = 1_000_000_000 * 10**9
    os.utime(weights, ns=(old_atime, weights.stat().st_mtime_ns))
    runs = []
    for i in range(plan.reps):
        with open(script, "a") as f:
            f.write(f"\n# edit {i}\n")
        runs.append(
            probe(work / "probe.json", *package_argv(model, script, base, cache, "--oci-layout", str(layout)))
        )
    untouched = weights.stat().st_atime_ns == old_atime
    with open(weights, "rb") as f:
        f.read(1)
    tracked = weights.stat().st_atime_ns != old_atime  # the control: this file system does record reads
    result["layout"] = {"label": "rebuild --oci-layout (same layout)", **best(runs)}
    result["layout"]["seconds"] = round(min(m.wall for m in runs), 3)
    result["layout"]["model_not_read"] = untouched if tracked else None
    with open(script, "a") as f:
        f.write("\n# edit tar\n")
    tar = work / "rebuild.tar"
    m = probe(work / "probe.json", *package_argv(model, script, base, cache, "--output", str(tar)))
    result["output"] = {"label": "rebuild --output (writes the whole tarball)", **best([m])}
    result["output"]["seconds"] = round(m.wall, 3)
    rm(tar)
    rm(layout)
    for key in ("layout", "output"):
        log(
            f"  {result[key]['label']}: {result[key]['seconds']:.2f} s, read {result[key]['rchar'] / MiB:.0f} MiB"
        )
    return result


# ---------------------------------------------------------------- 4. push to a local registry


class LocalRegistry:
    """``docker-registry serve`` on 127.0.0.1:<free port>, plain HTTP, filesystem storage under ``d`` (the config
    of tests/conftest.py's "plain" registry), and a RecordingProxy in front (tests/registry/servers.py) for the
    runs whose blob bytes are counted. The proxy holds each request body in memory, so the timed uploads go to
    the registry directly."""

    def __init__(self, d: Path) -> None:
        import socket
        import urllib.request

        self.dir = d
        d.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        config = {
            "version": "0.1",
            "log": {"level": "warn", "accesslog": {"disabled": True}},
            "storage": {
                "filesystem": {"rootdirectory": str(d / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": "ocibuild-bench-secret"},
        }
        (d / "config.yml").write_text(json.dumps(config, indent=1))  # YAML ⊃ JSON
        with open(d / "registry.log", "wb") as f:
            self.proc = subprocess.Popen(
                ["docker-registry", "serve", str(d / "config.yml")],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.proxy = None
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/v2/", timeout=2):
                    break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(
                    f"docker-registry did not start:\n{(d / 'registry.log').read_text()[-2000:]}"
                )
            time.sleep(0.05)
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from tests.registry.servers import RecordingProxy

        self.proxy = RecordingProxy(self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def proxy_host(self) -> str:
        return f"127.0.0.1:{self.proxy.port}"

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def synthetic_layout(root: Path, layer: Path) -> str:
    """An OCI layout holding one image whose single layer is ``layer`` (hard-linked as its blob: the registry
    does not look inside layers); returns its ref name."""
    import hashlib

    def sha(path: Path) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        return h.hexdigest()

    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def put(raw: bytes) -> str:
        digest = hashlib.sha256(raw).hexdigest()
        (blobs / digest).write_bytes(raw)
        return digest

    layer_digest = sha(layer)
    os.link(layer, blobs / layer_digest)
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    }).encode()  # fmt: skip
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": f"sha256:{put(config)}",
                   "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": f"sha256:{layer_digest}",
                    "size": layer.stat().st_size}],
    }).encode()  # fmt: skip
    (root / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": f"sha256:{put(manifest)}",
            "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": "1"},
        }],
    }  # fmt: skip
    (root / "index.json").write_text(json.dumps(index))
    return "1"


def bench_push(plan: Plan, work: Path, files: dict[int, Path], base: Path) -> dict:
    """The package image written with ``package --oci-layout`` (the model layer built once, outside the timings),
    then pushed in rounds: ocibuild's first push into a fresh repository and skopeo copy of the same layout into
    another fresh one, one after the other in each round; then ocibuild's second push of the unchanged image. The
    registry keeps one copy of each blob, but a blob of another repository is not visible from a fresh one, so
    each first push uploads every blob; each round gets a new registry all the same (see below)."""
    size = plan.package_size
    log(f"push, {human(size)} model, to a local docker-registry")
    model = model_dir(work, "push-model", files[size])
    cache = work / "cache"
    layout = work / "push-layout"
    rm(layout)
    probe(
        work / "probe.json",
        *package_argv(model, EXAMPLE / "score.py", base, cache, "--oci-layout", str(layout)),
    )
    ref_name = json.loads((layout / "index.json").read_text())["manifests"][0]["annotations"][
        "org.opencontainers.image.ref.name"
    ]
    registry = LocalRegistry(work / "registry-0")
    registries = [registry]
    result: dict = {"model_bytes": size}
    labels = {
        "first": "ocibuild first push (layout, fresh repository)",
        "skopeo": "skopeo copy oci: -> docker:// (fresh repository)",
        "copy": "ocibuild copy docker-archive: -> registry (fresh repo)",
        "skopeo_copy": "skopeo copy docker-archive: -> registry (fresh repo)",
        "second": "ocibuild second push (unchanged image)",
        "package_push": "package --push again (rebuild from cache + push)",
        "small": "ocibuild push, one 16 MiB layer",
        "flat": f"ocibuild push, one {human(plan.flat_size)} layer",
    }
    runs: dict[str, list[Measured]] = {key: [] for key in labels}
    push = partial(_push_layout, layout, ref_name)

    # The air-gapped leg: the same image as the tarball a user carries across (written once, untimed).
    archive = work / "push-image.tar"
    measure(
        [PY, "-m", "ocibuild", "copy", "-q", f"oci:{layout}:{ref_name}", f"docker-archive:{archive}:bench:1"]
    )
    try:
        have_skopeo = bool(shutil.which("skopeo"))
        for i in range(plan.reps):
            # A new registry (and port) per round: skopeo remembers where it put blobs (its blob info cache)
            # and would mount them from the previous round's repository instead of uploading them.
            reg = registry if i == 0 else LocalRegistry(work / f"registry-{i}")
            registries.append(reg)
            runs["first"].append(push(f"{reg.host}/bench/app:1"))
            log(f"  {labels['first']}: {runs['first'][-1].seconds:.2f} s")
            if have_skopeo:
                runs["skopeo"].append(
                    measure(
                        [
                            "skopeo",
                            "copy",
                            "--quiet",
                            "--dest-tls-verify=false",
                            f"oci:{layout}:{ref_name}",
                            f"docker://{reg.host}/bench/skopeo:1",
                        ]
                    )  # fmt: skip
                )
                log(f"  {labels['skopeo']}: {runs['skopeo'][-1].seconds:.2f} s")
            if reg is not registry:
                reg.stop()
                rm(reg.dir)
            # The copy pair gets a registry of its own: skopeo's blob info cache knows the blobs it just put in
            # this round's registry and would mount them instead of uploading the archive's bytes.
            _copy_archive(work / f"registry-copy-{i}", archive, labels, runs, have_skopeo)
        for _ in range(plan.reps):
            runs["second"].append(push(f"{registry.host}/bench/app:1"))
            log(f"  {labels['second']}: {runs['second'][-1].seconds:.2f} s")
        result["second_push_counted"] = _counted_push(registry, push)
        # The CLI's path: package --push rebuilds from the cache (nothing built) and pushes (nothing uploaded).
        m = probe(
            work / "probe.json",
            *package_argv(model, EXAMPLE / "score.py", base, cache, "--push", f"{registry.host}/bench/app:1"),
        )
        m.report["seconds"] = m.wall
        runs["package_push"].append(m)
        rm(layout)
        _push_one_layer(plan, work, registry, labels, runs)
    finally:
        for reg in registries:
            reg.stop()
            rm(reg.dir)
        rm(layout)
        rm(archive)
    add_best(result, labels, runs)
    _push_ratios(result)
    return result


def _push_layout(layout: Path, ref_name: str, target: str) -> Measured:
    """ocibuild's push of the layout's image to ``target`` (bench/tasks.py), timed as a whole command."""
    m = task("push", str(layout), ref_name, target)
    m.report["seconds"] = m.wall  # whole commands on both sides
    return m


def _copy_archive(
    registry_dir: Path,
    archive: Path,
    labels: dict[str, str],
    runs: dict[str, list[Measured]],
    have_skopeo: bool,
) -> None:
    """``ocibuild copy``, then ``skopeo copy``, of the docker-archive into a registry started for them."""
    fresh = LocalRegistry(registry_dir)
    try:
        runs["copy"].append(measure([PY, "-m", "ocibuild", "copy", "-q", f"docker-archive:{archive}",
                                     f"docker://{fresh.host}/bench/copy:1"]))  # fmt: skip
        log(f"  {labels['copy']}: {runs['copy'][-1].seconds:.2f} s")
        if have_skopeo:
            runs["skopeo_copy"].append(measure(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                                                f"docker-archive:{archive}",
                                                f"docker://{fresh.host}/bench/skopeo:1"]))  # fmt: skip
            log(f"  {labels['skopeo_copy']}: {runs['skopeo_copy'][-1].seconds:.2f} s")
    finally:
        fresh.stop()
        rm(fresh.dir)


def _counted_push(registry: LocalRegistry, push: Callable[[str], Measured]) -> dict:
    """The same second push through the recording proxy: what the registry was sent of the blobs."""
    registry.proxy.reset()
    counted = push(f"{registry.proxy_host}/bench/app:1")
    records = registry.proxy.snapshot()
    return {
        "blob_bytes_sent": registry.proxy.blob_bytes_uploaded(records),
        "requests": len(records),
        "methods": sorted({r.method for r in records}),
        "seconds_through_proxy": round(counted.wall, 3),
    }


def _push_one_layer(
    plan: Plan, work: Path, registry: LocalRegistry, labels: dict[str, str], runs: dict[str, list[Measured]]
) -> None:
    """Memory flatness: a one-layer image, small and big, each into a fresh repository."""
    for key, n in (("small", 16 * MiB), ("flat", plan.flat_size)):
        weights = make_weights(work / f"push-layer-{n}.bin", n, seed=10 + n % 7)
        flat_layout = work / f"push-{key}"
        rm(flat_layout)
        name = synthetic_layout(flat_layout, weights)
        m = _push_layout(flat_layout, name, f"{registry.host}/bench/{key}:1")
        runs[key].append(m)
        log(f"  {labels[key]}: {m.seconds:.2f} s, {m.rss_mb:.0f} MB RSS")
        rm(flat_layout)
        rm(weights)


def _push_ratios(result: dict) -> None:
    """skopeo's times against ocibuild's, and the second push's blob bytes as counted through the proxy."""
    if "skopeo" in result:
        result["skopeo"]["times_ocibuild"] = round(
            result["skopeo"]["seconds"] / result["first"]["seconds"], 2
        )
    if "skopeo_copy" in result and "copy" in result:
        result["copy"]["times_ocibuild"] = 1.0
        result["skopeo_copy"]["times_ocibuild"] = round(
            result["skopeo_copy"]["seconds"] / result["copy"]["seconds"], 2
        )
    result["second"]["blob_bytes_sent"] = result["second_push_counted"]["blob_bytes_sent"]


# ---------------------------------------------------------------- report


def targets(doc: dict, plan: Plan) -> list[dict]:
    out = []
    big = str(max(plan.layer_sizes))
    layer = doc.get("layer_build", {}).get(big)
    if layer:
        r = layer["gzip"]["ratio_to_sha256"]
        out.append({"target": f"layer build {human(int(big))}, default gzip <= 2x sha256", "value": f"{r:.2f}x",
                    "met": r <= 2.0})  # fmt: skip
    pkg = doc.get("package", {})
    for key in ("docker_legacy", "docker_buildkit"):
        if key in pkg:
            x = pkg[key]["times_ocibuild"]
            out.append({"target": f"package --output {human(pkg['model_bytes'])} >= 5x faster than {pkg[key]['label']}",
                        "value": f"{x:.1f}x", "met": x >= 5})  # fmt: skip
    rb = doc.get("rebuild", {}).get("layout")
    if rb:
        model_bytes = doc["rebuild"]["model_bytes"]
        no_reread = rb.get("model_not_read")
        proof = {True: "atime untouched", False: "model file read", None: "atime not tracked"}[no_reread]
        out.append({"target": f"rebuild after editing score.py, {human(model_bytes)} model < 1.5 s",
                    "value": f"{rb['seconds']:.2f} s", "met": rb["seconds"] < 1.5})  # fmt: skip
        out.append({"target": "... with no model byte re-read",
                    "value": f"{proof}, {rb['rchar'] / MiB:.0f} MiB read in all", "met": no_reread})  # fmt: skip
    rss = max_rss(doc)
    if rss:
        out.append(
            {"target": "peak RSS of every ocibuild run < 200 MB", "value": f"{rss:.0f} MB", "met": rss < 200}
        )
    push = doc.get("push", {})
    if "second" in push:
        sent, secs = push["second"]["blob_bytes_sent"], push["second"]["seconds"]
        out.append({"target": "second push of an unchanged image: 0 blob bytes, < 1 s",
                    "value": f"{sent} B, {secs:.2f} s", "met": sent == 0 and secs < 1})  # fmt: skip
    if "skopeo" in push:
        x = push["skopeo"]["times_ocibuild"]
        out.append({"target": f"first push {human(push['model_bytes'])} no slower than skopeo copy",
                    "value": f"{x:.2f}x", "met": x >= 1})  # fmt: skip
    if "skopeo_copy" in push:
        x = push["skopeo_copy"]["times_ocibuild"]
        out.append({"target": f"copy {human(push['model_bytes'])} archive to a registry no slower than skopeo",
                    "value": f"{x:.2f}x", "met": x >= 1})  # fmt: skip
    if "small" in push and "flat" in push:
        small, big = push["small"]["maxrss_mb"], push["flat"]["maxrss_mb"]
        out.append({"target": f"push RSS flat: {push['flat']['label'].split('one ')[-1]} within 20 MB of 16 MiB",
                    "value": f"{big:.0f} vs {small:.0f} MB", "met": big - small < 20})  # fmt: skip
    return out


def max_rss(doc: dict) -> float:
    values = []
    for rows in doc.get("layer_build", {}).values():
        values += [
            r["maxrss_mb"]
            for k, r in rows.items()
            if k in ("gzip", "gzip_stored", "none", "zstd", "all_deflate")
        ]
    for section in ("package", "rebuild", "push"):
        for key, r in doc.get(section, {}).items():
            if isinstance(r, dict) and "maxrss_mb" in r and not key.startswith(("docker", "umoci", "skopeo")):
                values.append(r["maxrss_mb"])
    return max(values) if values else 0.0


def table(doc: dict, plan: Plan) -> str:
    lines = _layer_lines(doc.get("layer_build", {}))
    pkg = doc.get("package")
    if pkg:
        lines += _package_lines(pkg)
    rb = doc.get("rebuild")
    if rb:
        lines += _rebuild_lines(rb)
    push = doc.get("push")
    if push:
        lines += _push_lines(push)
    lines.append("\nTargets")
    for t in doc.get("targets", []):
        mark = {True: "met", False: "NOT MET", None: "-"}[t["met"]]
        lines.append(f"  {t['target']:<70} {t['value']:>22}  {mark}")
    return "\n".join(lines)


def _row(a: str, b: str = "", c: str = "", d: str = "", e: str = "") -> str:
    return f"{a:<58} {b:>9} {c:>9} {d:>8} {e:>8}"


def _layer_lines(layer_build: dict) -> list[str]:
    lines = []
    for size, rows in layer_build.items():
        lines.append(f"\nLayer build, {human(int(size))} float32 model (page cache warm)")
        lines.append(_row("", "seconds", "x limit", "size", "RSS MB"))
        for r in rows.values():
            ratio = f"{r['blob_ratio']:.3f}" if "blob_ratio" in r else ""
            rss = f"{r['maxrss_mb']:.0f}"
            lines.append(
                _row("  " + r["label"], f"{r['seconds']:.2f}", f"{r['ratio_to_sha256']:.2f}", ratio, rss)
            )
    return lines


def _package_lines(pkg: dict) -> list[str]:
    lines = [f"\nWhole package --output, {human(pkg['model_bytes'])} model (dependencies cached)"]
    lines.append(_row("", "seconds", "x ocibuild", "", "RSS MB"))
    for key in ("ocibuild", "docker_legacy", "docker_buildkit", "umoci_skopeo"):
        if key in pkg:
            r = pkg[key]
            x = f"{r['times_ocibuild']:.1f}" if "times_ocibuild" in r else "1.0"
            rss = f"{r['maxrss_mb']:.0f}" if key == "ocibuild" else ""
            lines.append(_row("  " + r["label"], f"{r['seconds']:.2f}", x, "", rss))
    return lines


def _rebuild_lines(rb: dict) -> list[str]:
    lines = [f"\nRebuild after editing score.py, {human(rb['model_bytes'])} model (cache warm)"]
    lines.append(_row("", "seconds", "MiB read", "", "RSS MB"))
    for key in ("first_build_layout", "layout", "output"):
        r = rb[key]
        lines.append(
            _row(
                "  " + r["label"],
                f"{r['seconds']:.2f}",
                f"{r['rchar'] / MiB:.0f}",
                "",
                f"{r['maxrss_mb']:.0f}",
            )
        )
    return lines


def _push_lines(push: dict) -> list[str]:
    lines = [f"\nPush of the package image, {human(push['model_bytes'])} model, to a local docker-registry"]
    lines.append(_row("", "seconds", "x ocibuild", "blob MiB", "RSS MB"))
    for key in ("first", "skopeo", "copy", "skopeo_copy", "second", "package_push", "small", "flat"):
        if key in push:
            r = push[key]
            x = f"{r['times_ocibuild']:.2f}" if "times_ocibuild" in r else ("1.00" if key == "first" else "")
            rss = "" if key.startswith("skopeo") else f"{r['maxrss_mb']:.0f}"
            lines.append(_row("  " + r["label"], f"{r['seconds']:.2f}", x, _blob_mib(key, r), rss))
    c = push.get("second_push_counted")
    if c:
        lines.append(f"  second push through the recording proxy: {c['blob_bytes_sent']} blob bytes sent, "
                     f"{c['requests']} requests ({', '.join(c['methods'])})")  # fmt: skip
    return lines


def _blob_mib(key: str, r: dict) -> str:
    """The push table's blob column: what the second push sent; for ocibuild's other pushes, the image."""
    if key == "second":
        return f"{r['blob_bytes_sent'] / MiB:.0f}"
    if key in ("first", "small", "flat"):
        return f"{r['image_bytes'] / MiB:.0f}"
    return ""


def environment() -> dict:
    try:
        cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    import isal
    import zstandard

    commit = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": commit.stdout.strip(),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "isal": isal.__version__,
        "zstandard": zstandard.__version__,
        "dockerd": tool_version(["dockerd", "--version"]),
        "umoci": tool_version(["umoci", "--version"]),
        "skopeo": tool_version(["skopeo", "--version"]),
    }


def main() -> int:
    args = _parse_args()
    plan = QUICK if args.quick else FULL
    sections = set(args.only or ["layer", "package", "rebuild", "push"])
    json_path = args.json or BENCH / ("results-quick.json" if args.quick else "results.json")
    parent = args.workdir or Path("/tmp")
    parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(parent).free
    if free < plan.disk_needed:
        log(f"{parent} has {human(free)} free; this run needs about {human(plan.disk_needed)}. Use --workdir")
        return 1
    work = Path(tempfile.mkdtemp(prefix="ocibuild-bench-", dir=parent))
    doc: dict = {"quick": args.quick, "environment": environment(), "load_before": loadavg()}
    started = time.perf_counter()
    try:
        _run_sections(plan, sections, work, doc)
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            rm(work)
    doc["load_after"] = loadavg()
    doc["total_seconds"] = round(time.perf_counter() - started, 1)
    doc["targets"] = targets(doc, plan)
    json_path.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(doc, plan))
    print(f"\n(load average {doc['load_before']:.2f} before, {doc['load_after']:.2f} after; "
          f"{doc['total_seconds']:.0f} s in all; JSON: {json_path})")  # fmt: skip
    return 0


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="128 MiB and 512 MiB models: a couple of minutes"
    )
    parser.add_argument("--json", type=Path, help="where to write the results (default bench/results*.json)")
    parser.add_argument("--workdir", type=Path, help="where the big temporary files go (default: under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--only",
        action="append",
        choices=["layer", "package", "rebuild", "push"],
        help="run only these sections",
    )
    return parser.parse_args()


# The sections that build images from the base image fixture, in the order they run.
_IMAGE_SECTIONS = (("package", bench_package), ("rebuild", bench_rebuild), ("push", bench_push))


def _run_sections(plan: Plan, sections: set[str], work: Path, doc: dict) -> None:
    """Write the models the sections need, then run each section into ``doc``."""
    files = _model_files(plan, sections, work)
    if "layer" in sections:
        doc["layer_build"] = bench_layers(plan, work, files)
    base = base_fixture() if sections & {"package", "rebuild", "push"} else None
    if base is None:
        return
    warm_cache(work, base)
    for name, bench in _IMAGE_SECTIONS:
        if name in sections:
            doc[name] = bench(plan, work, files, base)


def _model_files(plan: Plan, sections: set[str], work: Path) -> dict[int, Path]:
    """One synthetic weights file of each size the sections need."""
    sizes = set(plan.layer_sizes if "layer" in sections else ())
    if sections & {"package", "push"}:
        sizes.add(plan.package_size)
    if "rebuild" in sections:
        sizes.add(plan.rebuild_size)
    files = {}
    for i, size in enumerate(sorted(sizes)):
        log(f"writing a {human(size)} float32 model")
        files[size] = make_weights(work / f"weights-{size}.bin", size, seed=i)
    return files


if __name__ == "__main__":
    sys.exit(main())
