"""Load benchmark: ocibuild's scoring server against Azure ML's (azureml-inference-server-http), same run.

    python3 bench/serving/run.py                     # the full matrix, about 5 minutes on 2 cores
    python3 bench/serving/run.py --quick             # one repeat, 2 s runs
    python3 bench/serving/run.py --json out.json --workers 1 --concurrency 1,8,64 --repeats 3

Both servers serve the same ``score.py`` on the same Python (this interpreter's version) from the same model:
``tiny`` (``run()`` returns its input) and ``ridge`` (fixtures/example: a scikit-learn Ridge model, trained here
into a temporary directory). Azure's server is installed from PyPI into its own venv (``--azure-venv``, default
``/tmp/ocibuild-bench-azure``) so its Flask/gunicorn pins never touch the project's environment; it runs as
``azmlinfsrv --entry_script score.py --port P`` with ``AZUREML_MODEL_DIR`` set, exactly as documented.

Load comes from ``wrk`` (Debian's package; a Lua script sends the POST body and reports percentiles as JSON).
Each (model, workers, concurrency) cell runs both servers back to back, alternating which goes first on each
repeat, so that drift in a noisy shared machine hits both alike; the table reports medians over repeats and the
ratios ocibuild/Azure. wrk's own CPU time is reported too, to show the client is not the bottleneck.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SERVING_SRC = REPO / "ocibuild" / "serving"
EXAMPLE = REPO / "fixtures" / "example"
DEFAULT_AZURE_VENV = Path("/tmp/ocibuild-bench-azure")
AZURE_PACKAGE = "azureml-inference-server-http"

TINY_SCORE = """\
import json


def init():
    pass


def run(raw_data):
    return json.loads(raw_data)
"""

BODY = json.dumps({"data": [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]]})

# wrk: POST the body; at the end print one JSON line (latencies in microseconds).
WRK_LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = %s

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p90_us": %%d, "p99_us": %%d, ' ..
    '"max_us": %%d, "connect_errors": %%d, "read_errors": %%d, "write_errors": %%d, "status_errors": %%d, ' ..
    '"timeouts": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass
class Sample:
    server: str
    model: str
    workers: int
    concurrency: int
    repeat: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    errors: int
    requests: int
    client_cpu_pct: float  # wrk's CPU time over the run's wall time (100 = one core)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- setting up ---------------------------------------------------------------------------------------------------


def ensure_azure_venv(venv: Path) -> Path:
    """A venv holding azureml-inference-server-http and the example's pinned requirements; its azmlinfsrv."""
    azmlinfsrv = venv / "bin" / "azmlinfsrv"
    if azmlinfsrv.exists():
        return azmlinfsrv
    log(f"Installing {AZURE_PACKAGE} into {venv} (once)")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    reqs = ["-r", str(EXAMPLE / "requirements.txt")]
    if shutil.which("uv"):
        subprocess.run(["uv", "venv", "-q", "--python", sys.executable, str(venv)], check=True)
        subprocess.run(
            ["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), AZURE_PACKAGE, *reqs],
            check=True,
        )
    else:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", AZURE_PACKAGE, *reqs], check=True)
    got = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if got != version:
        raise SystemExit(f"{venv} has Python {got}, not {version}: remove it and run again")
    return azmlinfsrv


def prepare_models(work: Path) -> dict[str, tuple[Path, Path]]:
    """{model: (app_dir with score.py, model_dir)} for the tiny echo model and the example Ridge model."""
    tiny = work / "tiny"
    tiny.mkdir()
    (tiny / "score.py").write_text(TINY_SCORE)
    ridge = work / "ridge"
    ridge.mkdir()
    shutil.copy(EXAMPLE / "score.py", ridge / "score.py")
    subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), str(ridge / "model")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return {"tiny": (tiny, tiny), "ridge": (ridge, ridge / "model")}


# --- the servers --------------------------------------------------------------------------------------------------


class Server:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, port: int, log_path: Path):
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.log_path = log_path

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited with {self.proc.returncode}; see {self.log_path}")
            try:
                req = urllib.request.Request(
                    self.url + "/score", BODY.encode(), {"Content-Type": "application/json"}
                )
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit(f"{self.name} did not answer within {timeout}s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


def start_ocibuild(app: Path, model_dir: Path, workers: int, server_path: Path, logs: Path) -> Server:
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(server_path), *sys.path[1:]]),
        "AZUREML_ENTRY_SCRIPT": "score.py",
        "AZUREML_MODEL_DIR": str(model_dir),
        "OCIBUILD_PORT": str(port),
        "OCIBUILD_HOST": "127.0.0.1",
        "WORKER_COUNT": str(workers),
        "AZUREML_LOG_LEVEL": "WARNING",  # an access line per request is I/O neither side should pay here
    }
    argv = [sys.executable, "-m", "ocibuild_serving"]
    return Server("ocibuild", argv, env, app, port, logs / f"ocibuild-{app.name}-{workers}.log")


def start_azure(app: Path, model_dir: Path, workers: int, azmlinfsrv: Path, logs: Path) -> Server:
    port = free_port()
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))
    }  # its own venv only
    env.update(
        {
            "AZUREML_MODEL_DIR": str(model_dir),
            "WORKER_COUNT": str(workers),
            "AZUREML_LOG_LEVEL": "WARNING",
        }
    )
    argv = [str(azmlinfsrv), "--entry_script", "score.py", "--port", str(port)]
    return Server("azure", argv, env, app, port, logs / f"azure-{app.name}-{workers}.log")


# --- load ---------------------------------------------------------------------------------------------------------


def run_wrk(url: str, concurrency: int, seconds: float, lua: Path) -> tuple[dict, float]:
    """One wrk run; its JSON summary and wrk's CPU use in percent of one core."""
    threads = 1 if concurrency < 8 else 2
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{max(1, round(seconds))}s", "--timeout", "10s", "-s", str(lua),
         url + "/score"],
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    for line in proc.stdout.splitlines():
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :]), 100 * cpu / wall
    raise RuntimeError(f"wrk printed no summary:\n{proc.stdout}\n{proc.stderr}")


def measure(
    server: Server, model: str, workers: int, conc: int, repeat: int, seconds: float, lua: Path
) -> Sample:
    run_wrk(server.url, conc, 1, lua)  # warm-up: connections, caches, lazy imports
    summary, client_cpu = run_wrk(server.url, conc, seconds, lua)
    errors = sum(
        summary[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    duration = summary["duration_us"] / 1e6
    return Sample(
        server=server.name,
        model=model,
        workers=workers,
        concurrency=conc,
        repeat=repeat,
        rps=(summary["requests"] - summary["status_errors"]) / duration,
        p50_ms=summary["p50_us"] / 1000,
        p90_ms=summary["p90_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        max_ms=summary["max_us"] / 1000,
        errors=errors,
        requests=summary["requests"],
        client_cpu_pct=client_cpu,
    )


# --- report -------------------------------------------------------------------------------------------------------


def summarise(samples: list[Sample]) -> list[dict]:
    """Median over repeats per (model, workers, concurrency, server), with ocibuild/Azure ratios."""
    cells: dict[tuple, dict[str, list[Sample]]] = {}
    for s in samples:
        cells.setdefault((s.model, s.workers, s.concurrency), {}).setdefault(s.server, []).append(s)
    rows = []
    for (model, workers, conc), by_server in sorted(cells.items()):
        row: dict = {"model": model, "workers": workers, "concurrency": conc}
        for server, runs in by_server.items():
            row[server] = {
                "rps": statistics.median(r.rps for r in runs),
                "p50_ms": statistics.median(r.p50_ms for r in runs),
                "p99_ms": statistics.median(r.p99_ms for r in runs),
                "errors": sum(r.errors for r in runs),
                "client_cpu_pct": max(r.client_cpu_pct for r in runs),
                "repeats": len(runs),
            }
        if "ocibuild" in row and "azure" in row:
            row["rps_ratio"] = row["ocibuild"]["rps"] / row["azure"]["rps"]
            row["p99_ratio"] = row["ocibuild"]["p99_ms"] / row["azure"]["p99_ms"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    head = (
        "| model | workers | clients | ocibuild req/s | Azure req/s | req/s ratio | ocibuild p50 / p99 ms "
        "| Azure p50 / p99 ms | p99 ratio | errors (o/A) | wrk CPU % |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        o, a = r.get("ocibuild"), r.get("azure")
        if not o or not a:
            continue
        lines.append(
            f"| {r['model']} | {r['workers']} | {r['concurrency']} | {o['rps']:.0f} | {a['rps']:.0f} "
            f"| {r['rps_ratio']:.2f} | {o['p50_ms']:.1f} / {o['p99_ms']:.1f} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} "
            f"| {r['p99_ratio']:.2f} | {o['errors']} / {a['errors']} "
            f"| {max(o['client_cpu_pct'], a['client_cpu_pct']):.0f} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class Matrix:
    """What to measure: every (model, workers, concurrency) cell, ``repeats`` runs of ``seconds`` each."""

    models: list[str]
    concurrencies: list[int]
    worker_counts: list[int]
    servers: list[str]
    seconds: int
    repeats: int


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install -y wrk")
    matrix = Matrix(
        models=args.models.split(","),
        concurrencies=[int(c) for c in args.concurrency.split(",")],
        worker_counts=[int(w) for w in args.workers.split(",")],
        servers=args.servers.split(","),
        seconds=args.seconds,
        repeats=args.repeats,
    )
    azmlinfsrv = ensure_azure_venv(args.azure_venv) if "azure" in matrix.servers else None

    work = Path(tempfile.mkdtemp(prefix="ocibuild-bench-"))
    try:
        samples = _run_matrix(matrix, azmlinfsrv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    rows = summarise(samples)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {"seconds": args.seconds, "repeats": args.repeats, "body": BODY},
        "summary": rows,
        "samples": [asdict(s) for s in samples],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(table(rows))
    print(f"\n(medians of {args.repeats} repeat(s) of {args.seconds:g} s each; JSON in {args.json})")
    return 0


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny,ridge")
    parser.add_argument("--concurrency", default="1,8,64")
    parser.add_argument("--workers", default="1,2", help="WORKER_COUNT values, for both servers")
    parser.add_argument("--servers", default="ocibuild,azure")
    parser.add_argument("--seconds", type=int, default=4, help="length of each measured run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="--seconds 2 --repeats 1")
    parser.add_argument("--azure-venv", type=Path, default=DEFAULT_AZURE_VENV)
    parser.add_argument("--json", type=Path, default=Path(__file__).resolve().parent / "results.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.repeats = 2, 1
    return args


def _run_matrix(matrix: Matrix, azmlinfsrv: Path | None, work: Path) -> list[Sample]:
    """Every (model, workers) pair with its servers started for it (scratch files in ``work``)."""
    server_path = work / "server"
    shutil.copytree(
        SERVING_SRC, server_path / "ocibuild_serving", ignore=shutil.ignore_patterns("__pycache__")
    )
    lua = work / "post.lua"
    lua.write_text(WRK_LUA % json.dumps(BODY))
    logs = work / "logs"
    logs.mkdir()
    apps = prepare_models(work)
    samples: list[Sample] = []
    for model in matrix.models:
        app, model_dir = apps[model]
        for workers in matrix.worker_counts:
            started: dict[str, Server] = {}
            try:
                if "ocibuild" in matrix.servers:
                    started["ocibuild"] = start_ocibuild(app, model_dir, workers, server_path, logs)
                if azmlinfsrv is not None:
                    started["azure"] = start_azure(app, model_dir, workers, azmlinfsrv, logs)
                for server in started.values():
                    server.wait_ready()
                samples += _measure_cell(matrix, list(started.values()), model, workers, lua)
            finally:
                for server in started.values():
                    server.stop()
    return samples


def _measure_cell(matrix: Matrix, servers: list[Server], model: str, workers: int, lua: Path) -> list[Sample]:
    """Each concurrency ``repeats`` times, the servers back to back, alternating which goes first."""
    samples = []
    for conc in matrix.concurrencies:
        for repeat in range(matrix.repeats):
            order = list(servers)
            if repeat % 2:
                order.reverse()
            for server in order:
                s = measure(server, model, workers, conc, repeat, matrix.seconds, lua)
                samples.append(s)
                log(
                    f"{s.server:8} {model:5} w={workers} c={conc:<3} #{repeat}: {s.rps:7.0f} req/s "
                    f"p50 {s.p50_ms:6.1f} ms p99 {s.p99_ms:6.1f} ms errors {s.errors} "
                    f"wrk {s.client_cpu_pct:.0f}% CPU"
                )
    return samples


if __name__ == "__main__":
    raise SystemExit(main())
