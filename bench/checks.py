#!/usr/bin/env python3
"""What the build checks (native libraries, the entry script's imports) cost.

    python3 bench/checks.py                       # scikit-learn cold builds, then the CUDA torch set (~5 GB)
    python3 bench/checks.py --skip-torch          # only the scikit-learn builds (about a minute)
    python3 bench/checks.py --torch-site DIR      # reuse a torch set installed before (kept after the run)

1. The example (``fixtures/example``, scikit-learn) built cold (a new ocibuild cache each time, the installer's own
   download cache warm) with the checks and with ``--skip-check native --skip-check imports``, alternating,
   ``--reps`` times each: whole ``package --oci-layout`` wall time, and the seconds the checks report themselves.
2. ``pip install torch`` from PyPI (the CUDA build: about 5 GB installed), installed for the base's Python by
   ocibuild's own installer, then the checks' phases on it, each timed in this process: reading the base's files,
   scanning the installed folder's ELF files, judging them against the base, listing its modules. Best of
   ``--reps``; the files are in the page cache, as they are right after an install.

Writes ``bench/checks-results.json`` (or ``--json``); the README quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
EXAMPLE = REPO / "fixtures" / "example"
CHECKED = re.compile(r"^checked .*\((\d+(?:\.\d+)?) s\)$", re.M)


def log(msg: str) -> None:
    print(f"[checks-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_ref() -> str:
    out = subprocess.run(
        ["bash", REPO / "scripts" / "make-base-image.sh"], capture_output=True, text=True, check=True
    )
    return f"oci:{out.stdout.strip().splitlines()[-1]}/oci:py311"


def cold_builds(work: Path, base: str, reps: int) -> dict:
    model_dir = work / "model"
    model_dir.mkdir(exist_ok=True)
    subprocess.run([sys.executable, EXAMPLE / "train.py", model_dir], check=True, capture_output=True)
    runs: dict[str, list[float]] = {"checks": [], "no checks": []}
    reported: list[float] = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for rep in range(reps):
        for mode in ("checks", "no checks"):
            cache, out = work / f"cache-{rep}-{mode[0]}", work / f"out-{rep}-{mode[0]}"
            skip = [] if mode == "checks" else ["--skip-check", "native", "--skip-check", "imports"]
            argv = [sys.executable, "-m", "ocibuild", "package", model_dir / "model.pkl", "--entry-script",
                    EXAMPLE / "score.py", "--requirements", EXAMPLE / "requirements.txt", "--base", base,
                    "--oci-layout", out, "--cache", cache, *skip]  # fmt: skip
            started = time.perf_counter()
            proc = subprocess.run(argv, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - started
            if proc.returncode != 0:
                raise SystemExit(f"build failed:\n{proc.stderr[-3000:]}")
            runs[mode].append(round(wall, 3))
            if mode == "checks":
                reported.append(round(sum(float(s) for s in CHECKED.findall(proc.stderr)), 3))
            shutil.rmtree(cache)
            shutil.rmtree(out)
            log(f"scikit-learn cold build, {mode}: {wall:.2f} s")
    return {
        "what": "fixtures/example (scikit-learn) package --oci-layout, new ocibuild cache each build",
        "wall_s": runs,
        "median_with_checks_s": statistics.median(runs["checks"]),
        "median_without_checks_s": statistics.median(runs["no checks"]),
        "median_added_s": round(statistics.median(runs["checks"]) - statistics.median(runs["no checks"]), 3),
        "checks_report_s": reported,
    }


def torch_set(work: Path, base: str, site: Path | None, reps: int) -> dict:
    from ocibuild.checks import native
    from ocibuild.checks.imports import module_tree
    from ocibuild.events import Progress
    from ocibuild.oci.descriptor import Platform
    from ocibuild.oci.store import BlobStore
    from ocibuild.packaging.package import SITE_PACKAGES
    from ocibuild.packaging.wheels import install_dependencies
    from ocibuild.rootfs.files import read_base_files
    from ocibuild.rootfs.pyenv import detect_target_python
    from ocibuild.transports.open import resolve_base

    store = BlobStore(work / "cache")
    image = resolve_base(base, Platform.parse("linux/amd64"), store, None, Progress(quiet=True))
    openers = [partial(image.open_uncompressed, d) for d in image.layers]
    target = detect_target_python(openers, image.platform.architecture)
    doc: dict = {"target": target.describe()}
    if site is None or not site.is_dir():
        site = site or work / "torch-site"
        site.mkdir(parents=True)
        log("installing torch from PyPI (the CUDA build, ~3 GB to download)")
        started = time.perf_counter()
        install_dependencies(target, site, packages=["torch"], progress=lambda m: None)
        doc["install_s"] = round(time.perf_counter() - started, 1)
    sizes = [p.stat().st_size for p in site.rglob("*") if p.is_file() and not p.is_symlink()]
    doc["installed"] = {
        "files": len(sizes),
        "bytes": sum(sizes),
        "distributions": len(list(site.glob("*.dist-info"))),
    }
    env = (image.config.get("config") or {}).get("Env") or []
    phases: dict[str, list[float]] = {
        "read base files": [],
        "scan ELF files": [],
        "check": [],
        "list modules": [],
    }
    for _ in range(reps):
        t0 = time.perf_counter()
        files = read_base_files(openers, target, env)
        t1 = time.perf_counter()
        needs = native.scan(site)
        t2 = time.perf_counter()
        errors, warnings = native.check(needs, files, target, SITE_PACKAGES)
        t3 = time.perf_counter()
        module_tree(site)
        t4 = time.perf_counter()
        for name, seconds in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            phases[name].append(round(seconds, 3))
    doc["elf_files"] = len(needs.files)
    doc["elf_bytes"] = sum((site / rel).stat().st_size for rel in needs.files)
    doc["phases_s"] = phases
    doc["best_s"] = {name: min(v) for name, v in phases.items()}
    doc["checks_total_best_s"] = round(sum(doc["best_s"].values()), 3)
    doc["errors"] = [str(g) for g in errors]
    doc["warnings"] = [str(g) for g in warnings]
    log(
        f"torch set: {doc['installed']['bytes'] / 1e9:.1f} GB, {doc['elf_files']} ELF files; checks {doc['best_s']}"
    )
    return doc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument(
        "--torch-site", type=Path, help="an installed torch set to use (installed there if absent)"
    )
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "checks-results.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ocibuild-checks-bench-"))
    try:
        base = base_ref()
        results = {
            "machine": {"cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]},
            "scikit_learn": cold_builds(work, base, args.reps),
        }
        if not args.skip_torch:
            results["torch_cuda"] = torch_set(work, base, args.torch_site, args.reps)
        results["machine"]["loadavg_after"] = os.getloadavg()[0]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
