#!/usr/bin/env python3
"""The multi-platform row: a two-platform build (linux/amd64 + linux/arm64, one index) against a one-platform
build (linux/amd64) of the same inputs, in the same run.

    python3 bench/platforms.py            # the example, then the example with a 1 GiB float32 model
    python3 bench/platforms.py --quick    # the example only

The base is an index of the Debian Python 3.11 amd64 and arm64 images (scripts/make-base-image.sh, the arm64 one
under qemu-user-static), as users' bases (python:3.11-slim) are. Every build starts from an empty ``--cache``
(nothing ocibuild made before); the installer's own wheel cache is this machine's, so no row waits on the package
index. The output is ``--oci-layout``. Each build runs ``--repeat`` times (default 3), the two alternating, and the
best of each is kept. What the second platform adds: its own dependencies (installed and checked for it; bytecode
only where this machine runs that platform's Python, so not for arm64 here) and its base; the server, model and
app layers are made once for both. Writes ``bench/platforms-results.json``.
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
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from report import logger  # noqa: E402

from tests.conftest import BASE_TAG, BaseImage, make_index_layout  # noqa: E402

EXAMPLE = REPO / "fixtures" / "example"


log = logger("platforms-bench")


def base(*args: str) -> BaseImage:
    out = subprocess.run(["bash", str(REPO / "scripts" / "make-base-image.sh"), *args], capture_output=True,
                         text=True, check=True, timeout=1800).stdout.strip().splitlines()[-1]  # fmt: skip
    return BaseImage(Path(out), Path(out) / "oci", BASE_TAG, Path(out) / "docker-archive.tar", "")


def build(work: Path, name: str, model: Path, base_ref: str, platforms: str) -> dict:
    cache, layout = work / f"cache-{name}", work / f"layout-{name}"
    argv = [sys.executable, "-m", "ocibuild", "package", str(model), "--entry-script", str(EXAMPLE / "score.py"),
            "--requirements", str(EXAMPLE / "requirements.txt"), "--base", base_ref, "--cache", str(cache),
            "--platform", platforms, "--oci-layout", str(layout), "--tag", "bench:1"]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=3600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        raise SystemExit(f"{name}: ocibuild failed: {proc.stderr[-2000:]}")
    shutil.rmtree(cache)
    shutil.rmtree(layout)
    return {"seconds": round(seconds, 2), "digest": proc.stdout.strip().splitlines()[-1]}


def case(work: Path, name: str, model: Path, base_ref: str, repeat: int) -> dict:
    """Each build ``repeat`` times, alternating (the machine's load moves the same way for both); the best kept."""
    runs: dict[str, list[dict]] = {"one platform": [], "two platforms": []}
    for i in range(repeat):
        for row, platforms in (("one platform", "linux/amd64"), ("two platforms", "linux/amd64,linux/arm64")):
            log(f"{name}: {row}, run {i + 1} of {repeat}")
            runs[row].append(build(work, f"{name}-{len(runs[row])}", model, base_ref, platforms))
    best = {row: min(r, key=lambda x: x["seconds"]) for row, r in runs.items()}
    ratio = best["two platforms"]["seconds"] / best["one platform"]["seconds"]
    seconds = {row: [x["seconds"] for x in r] for row, r in runs.items()}
    return {**best, "two_vs_one": round(ratio, 2), "runs": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the example only")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each build; the best is kept (default 3)")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "platforms-results.json")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocibuild-platforms-"))
    try:
        base_ref = make_index_layout(work / "base", [base(), base("--arch", "arm64")])
        subprocess.run(
            [sys.executable, str(EXAMPLE / "train.py"), str(work)], check=True, capture_output=True
        )
        results = {"example": case(work, "example", work / "model.pkl", base_ref, args.repeat)}
        if not args.quick:
            model = work / "model-1g"
            model.mkdir()
            shutil.copyfile(work / "model.pkl", model / "model.pkl")
            with open(model / "weights.bin", "wb") as f:  # float32-like: barely compresses
                for _ in range(1024):
                    f.write(os.urandom(1 << 20))
            results["1 GiB model"] = case(work, "1gib", model, base_ref, args.repeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"date": time.strftime("%Y-%m-%d"), "cores": os.cpu_count(), "load_after": os.getloadavg()[0],
           "cases": results}  # fmt: skip
    args.json.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{'case':<14} {'one platform':>13} {'two platforms':>14} {'two / one':>10}")
    for name, r in results.items():
        print(f"{name:<14} {r['one platform']['seconds']:>11.1f} s {r['two platforms']['seconds']:>12.1f} s "
              f"{r['two_vs_one']:>9.2f}x")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
