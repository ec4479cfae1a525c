#!/usr/bin/env python3
"""The fleet row: a fresh CI runner with a warm ``--cache-repo``, against the same runner with no cache.

    python3 bench/fleet.py                # the example, then the CUDA torch set (~3 GB download, ~25 GB disk)
    python3 bench/fleet.py --skip-torch   # only the example (about a minute)

Every run is a fresh runner: a new ``--cache``, a new installer cache (``UV_CACHE_DIR``, ``PIP_CACHE_DIR``) and
``XDG_CACHE_HOME``; the base is in a local docker-registry (pushed once with skopeo), and the image is pushed to
that registry through the recording proxy of ``tests/registry/servers.py``, which counts the bytes uploaded. For
each dependency set, in one run:

1. **no cache**: ``package --push``: what every CI job pays today;
2. **fill**: the same with ``--cache-repo`` on an empty cache repository: the first runner of the fleet;
3. **warm**: ``--cache-repo`` as 2. left it, with the package index unreachable (every proxy variable points at
   a closed port; only the registry on 127.0.0.1 is reached).

Each row: seconds, blob bytes uploaded to the registry and downloaded from it (both counted by the
proxy), and bytes received from the network, which here is the package index (``/proc/net/dev`` but loopback). Writes ``bench/fleet-results.json`` (or ``--json``); the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
EXAMPLE = REPO / "fixtures" / "example"

from report import human, logger  # noqa: E402
from run import LocalRegistry, base_fixture  # noqa: E402  (bench/run.py: the registry and the base)

TORCH_SCORE = """\
import torch


def init():
    global model
    model = torch.nn.Linear(10, 1)


def run(raw_data):
    return model(torch.ones(1, 10)).tolist()
"""


log = logger("fleet-bench")


def network_received() -> int:
    """Bytes received on every interface but loopback: what came from the package index (the registry is on
    127.0.0.1)."""
    total = 0
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, fields = line.partition(":")
        if name.strip() != "lo":
            total += int(fields.split()[0])
    return total


def runner(work: Path, name: str) -> tuple[Path, dict[str, str]]:
    """A fresh runner's folder and environment: nothing cached anywhere."""
    home = work / name
    if home.exists():
        shutil.rmtree(home)
    home.mkdir(parents=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "UV_CACHE_DIR": str(home / "uv"),
        "PIP_CACHE_DIR": str(home / "pip"),
        "XDG_CACHE_HOME": str(home / "xdg"),
        "TMPDIR": str(home / "tmp"),
    }
    (home / "tmp").mkdir()
    return home, env


def offline(env: dict[str, str]) -> dict[str, str]:
    dead = "http://127.0.0.1:9"
    proxies = {k: dead for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")}
    return {**env, **proxies, "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}


def build(registry: LocalRegistry, home: Path, env: dict, argv: list[str]) -> dict:
    """One ``ocibuild package`` run, measured."""
    os.sync()
    registry.proxy.reset()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        received = network_received()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, text=True)
        _, status, _ = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        received = network_received() - received
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"failed: {' '.join(argv)}\n{stderr[-3000:]}")
    return {
        "seconds": round(seconds, 2),
        "uploaded_to_registry": registry.proxy.blob_bytes_uploaded(),
        "downloaded_from_registry": registry.proxy.blob_bytes_downloaded(),
        "downloaded_from_index": received,
        "digest": stdout.strip().splitlines()[-1],
        "layers_from_cache_repo": stderr.count("from the cache repo"),
        "resolved": "resolving wheels" in stderr,
        "checked": "native files of the dependencies against the base: they load" in stderr,
    }


def dependency_set(
    registry: LocalRegistry,
    work: Path,
    name: str,
    model: Path,
    score: Path,
    reqs: Path,
    more: str = "six==1.17.0",
) -> dict:
    base = f"{registry.proxy_host}/base/python:3.11"
    cache_repo = f"{registry.proxy_host}/fleet/{name}-cache"
    rows = {}
    for row, extra, net in (
        ("no cache", [], None),
        ("fill", ["--cache-repo", cache_repo], None),
        ("warm", ["--cache-repo", cache_repo], offline),
    ):
        home, env = runner(work, f"{name}-{row.replace(' ', '-')}")
        argv = [
            sys.executable, "-m", "ocibuild", "package", str(model), "--entry-script", str(score),
            "--requirements", str(reqs), "--base", base, "--cache", str(home / "cache"),
            "--push", f"{registry.proxy_host}/fleet/{name}-{row.replace(' ', '-')}:1", *extra,
        ]  # fmt: skip
        log(f"{name}: {row}")
        rows[row] = build(registry, home, net(env) if net else env, argv)
        log(f"{name}: {row}: {rows[row]['seconds']} s, uploaded {human(rows[row]['uploaded_to_registry'])}")
        shutil.rmtree(home)  # a runner's disk is gone with it
    if len({r["digest"] for row, r in rows.items() if row != "one more small requirement"}) != 1:
        layers = {row: _layers(registry, f"fleet/{name}-{row.replace(' ', '-')}") for row in rows}
        raise RuntimeError(f"{name}: the runs gave different digests: {rows}\nlayers: {layers}")
    rows["one more small requirement"] = _one_more(registry, work, name, model, score, reqs, more, cache_repo)
    warm = rows["warm"]
    if warm["resolved"] or warm["downloaded_from_index"] > 1 << 20 or not warm["checked"]:
        raise RuntimeError(
            f"{name}: the warm runner resolved, downloaded wheels or skipped the checks: {warm}"
        )
    return {
        "rows": rows,
        "warm_vs_no_cache": round(rows["no cache"]["seconds"] / warm["seconds"], 1),
    }


def _one_more(
    registry, work: Path, name: str, model: Path, score: Path, reqs: Path, more: str, cache_repo: str
):
    """A fresh runner adds one small requirement and pushes the new image over the one the warm runner pushed:
    what a small change costs (installed again; the big layers found by their contents, not compressed or sent)."""
    changed = work / f"{name}-more.txt"
    changed.write_text(reqs.read_text() + more + "\n")
    home, env = runner(work, f"{name}-more")
    argv = [
        sys.executable, "-m", "ocibuild", "package", str(model), "--entry-script", str(score),
        "--requirements", str(changed), "--base", f"{registry.proxy_host}/base/python:3.11",
        "--cache", str(home / "cache"), "--cache-repo", cache_repo,
        "--push", f"{registry.proxy_host}/fleet/{name}-warm:2",
    ]  # fmt: skip
    log(f"{name}: one more small requirement ({more})")
    row = build(registry, home, env, argv)
    layers = _layers(registry, f"fleet/{name}-warm", "2")
    row["dependency_layers"] = len(layers) - 4  # the base's one, server, model, app
    shutil.rmtree(home)
    return row


def _layers(registry: LocalRegistry, repo: str, tag: str = "1") -> list[str]:
    """The pushed image's layer digests (to see which layer differs when digests do)."""
    import urllib.request

    request = urllib.request.Request(
        f"http://{registry.host}/v2/{repo}/manifests/{tag}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        return [d["digest"][7:19] for d in json.load(r)["layers"]]


def example(registry: LocalRegistry, work: Path) -> dict:
    model_dir = work / "example-model"
    model_dir.mkdir(exist_ok=True)
    subprocess.run([sys.executable, EXAMPLE / "train.py", model_dir], check=True, capture_output=True)
    return dependency_set(
        registry, work, "example", model_dir / "model.pkl", EXAMPLE / "score.py", EXAMPLE / "requirements.txt"
    )


def torch(registry: LocalRegistry, work: Path) -> dict:
    d = work / "torch-app"
    d.mkdir(exist_ok=True)
    (d / "score.py").write_text(TORCH_SCORE)
    (d / "requirements.txt").write_text("torch\n")
    (d / "model.bin").write_bytes(b"\0" * 4096)
    return dependency_set(registry, work, "torch", d / "model.bin", d / "score.py", d / "requirements.txt")


def table(results: dict) -> str:
    lines = [
        "| dependencies | runner | seconds | uploaded to the registry | downloaded from it | from the index |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for name, doc in results["sets"].items():
        for row, r in doc["rows"].items():
            lines.append(
                f"| {name} | {row} | {r['seconds']} | {human(r['uploaded_to_registry'])} | "
                f"{human(r['downloaded_from_registry'])} | {human(r['downloaded_from_index'])} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--workdir", type=Path, help="where the runners live (default: a temp folder)")
    parser.add_argument("--json", type=Path, default=BENCH / "fleet-results.json")
    args = parser.parse_args()
    base = base_fixture()
    if base is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="ocibuild-fleet-", dir=args.workdir))
    registry = LocalRegistry(work / "registry")
    try:
        subprocess.run(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", f"oci:{base}/oci:py311",
             f"docker://{registry.host}/base/python:3.11"],
            check=True,
        )  # fmt: skip
        results = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "sets": {}}
        results["sets"]["example"] = example(registry, work)
        if not args.skip_torch:
            results["sets"]["torch (CUDA)"] = torch(registry, work)
    finally:
        registry.stop()
        shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
