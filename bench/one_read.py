#!/usr/bin/env python3
"""A cold build's model layer against one sha256 pass over the model, in one run (issue 16: one read of the model).

    python3 bench/one_read.py                      # a 1 GiB float32 model, best of 3
    python3 bench/one_read.py --size-mib 256       # quicker
    python3 bench/one_read.py --baseline REV       # and the same builds by ocibuild at git revision REV

Each build is ``ocibuild package MODEL --entry-script score.py --base <the Debian Python base>`` with no
dependencies, the model "trained again" first (a new mtime: its layer is a cache miss, written in this run), to
``--output FILE``, to ``--oci-layout DIR`` and with ``--push`` to a new repository of a local plain-HTTP
docker-registry (which has none of the blobs, so the model layer goes up every time; the registry hashes and
writes it on the same two cores). The limit is the faster of two bare sha256 passes over the same file
(bench/tasks.py). Every figure is measured here, in this run, with the page cache warm: ``seconds`` (the whole
command), the ratio to the sha256 pass, peak RSS, and ``rchar`` (the bytes the process read, per byte of the model:
about 1 when the model is read once; a push reads the layer once more, from the cache, to send it). The same build
with a 4 KiB model gives what a build costs besides its model; that plus one sha256 pass is the floor of any build
of this model (it must start, read its base, write its SBOM and read the model once), printed beside the ratios.
The same builds with neither document (``--sbom none --no-provenance``: the model's files are not hashed on their
own), and the least work of the model's part done by no builder (bench/tasks.py ``hash_write``: read once, one or
two sha256, write), which with the 4 KiB build is the floor of each kind of build on this machine.
Writes ``bench/one-read-results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import logger  # noqa: E402
from run import (  # noqa: E402
    BASE_TAG,
    REPO,
    LocalRegistry,
    Measured,
    MiB,
    base_fixture,
    best,
    loadavg,
    make_weights,
    probe,
    rm,
    task,
    touch,
)

log = logger("one-read")
SCORE = "def init():\n    pass\n\n\ndef run(raw_data):\n    return raw_data\n"


NO_DOCUMENTS = ("--sbom", "none", "--no-provenance")


def _build(work: Path, model: Path, base: Path, cache: Path, output: list[str], env: dict | None) -> Measured:
    touch(model / "weights.bin")
    argv = ["ocibuild", "package", str(model), "--entry-script", str(work / "score.py"),
            "--base", f"oci:{base}/oci:{BASE_TAG}", "--name", "bench", "--tag", "bench:1", "--cache", str(cache),
            "-q", *output]  # fmt: skip
    return probe(work / "probe.json", *argv, env=env)


def _rows(work: Path, model: Path, base: Path, reps: int, env: dict | None, tag: str, registry: LocalRegistry) -> dict:
    rows = {}
    cache = work / f"cache-{tag}"
    small = work / "small-model"  # what a build costs besides its model: start, base, SBOM, config, tarball
    small.mkdir(exist_ok=True)
    (small / "weights.bin").write_bytes(bytes(4096))
    outputs = {
        "output": (model, lambda i: ["--output", str(work / "o.tar")]),
        "oci_layout": (model, lambda i: ["--oci-layout", str(work / "layout")]),
        # a new repository each time: the registry has none of its blobs, so the model layer goes up every time
        "push": (model, lambda i: ["--push", f"{registry.host}/one-read/{tag}-{i}:1", "--insecure"]),
        "output_4k_model": (small, lambda i: ["--output", str(work / "o.tar")]),
        # neither document: the files' own sha256 (a second pass over the model's bytes) is not taken
        "output_no_documents": (model, lambda i: ["--output", str(work / "o.tar"), *NO_DOCUMENTS]),
        "output_4k_no_documents": (small, lambda i: ["--output", str(work / "o.tar"), *NO_DOCUMENTS]),
    }
    for name, (folder, output) in outputs.items():
        runs = []
        for i in range(reps):
            rm(work / "o.tar")
            rm(work / "layout")
            before = _cpu_seconds(registry.proc.pid)
            runs.append(_build(work, folder, base, cache, output(i), env))
            if name == "push":  # the registry's own work on the same two cores (it hashes and stores the blob)
                runs[-1].report["peer_cpu_seconds"] = round(_cpu_seconds(registry.proc.pid) - before, 3)
        rows[name] = best(runs)
        log(f"  {tag} {name}: {rows[name]['seconds']:.2f} s, rchar {rows[name].get('rchar', 0) / MiB:.0f} MiB")
    rm(work / "o.tar")
    rm(work / "layout")
    return rows


def _cpu_seconds(pid: int) -> float:
    """User + system time of a running process (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _least_work(work: Path, weights: Path, reps: int) -> dict:
    """The model's part of a build done by no builder (bench/tasks.py ``hash_write``): one read, one or two sha256
    (the layer's; and the file's own, for the documents) and the write to a new file, on the faster of two thread
    arrangements. What no build of the model can do in less time on this machine."""
    out = {}
    for hashes, name in ((1, "one_hash"), (2, "two_hashes")):
        runs = []
        for _ in range(reps):
            for arrangement in ("two", "three"):
                rm(work / "least.out")
                runs.append(task("hash_write", str(weights), str(work / "least.out"), str(hashes), arrangement))
        out[name] = best(runs)
        log(f"  least work, {name.replace('_', ' ')}: {out[name]['seconds']:.2f} s")
    rm(work / "least.out")
    return out


def _baseline(work: Path, rev: str) -> dict:
    tree = work / "baseline"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), rev], check=True,
                   capture_output=True)  # fmt: skip
    return {"PYTHONPATH": str(tree)}


def main() -> int:
    args = _parse_args()
    base = base_fixture()
    if base is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="one-read-", dir=args.workdir))
    try:
        (work / "score.py").write_text(SCORE)
        model = work / "model"
        model.mkdir()
        size = args.size_mib * MiB
        log(f"writing a {args.size_mib} MiB float32 model")
        make_weights(model / "weights.bin", size, seed=16)
        limit_runs = [task("sha256", str(model / "weights.bin"), "4", "64") for _ in range(args.reps)]
        limit_runs += [task("sha256", str(model / "weights.bin"), "1", "0") for _ in range(args.reps)]
        limit = best(limit_runs)["seconds"]
        log(f"sha256 pass: {limit:.2f} s")
        doc: dict = {"model_bytes": size, "sha256_seconds": limit, "loadavg_before": loadavg()}
        doc["least_work"] = _least_work(work, model / "weights.bin", args.reps)
        registry = LocalRegistry(work / "registry")
        try:
            doc["now"] = _rows(work, model, base, args.reps, None, "now", registry)
            if args.baseline:
                doc["baseline_rev"] = args.baseline
                env = _baseline(work, args.baseline)
                doc["baseline"] = _rows(work, model, base, args.reps, env, "baseline", registry)
        finally:
            registry.stop()
        doc["loadavg_after"] = loadavg()
        for side in ("now", "baseline"):
            for row in doc.get(side, {}).values():
                row["ratio_to_sha256"] = round(row["seconds"] / limit, 2)
                row["bytes_read_per_model_byte"] = round(row.get("rchar", 0) / size, 2)
        out = Path(args.json)
        out.write_text(json.dumps(doc, indent=2) + "\n")
        print(_table(doc))
        return 0
    finally:
        if args.baseline:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(work / "baseline")],
                           capture_output=True, check=False)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def _table(doc: dict) -> str:
    lines = [f"one sha256 pass over {doc['model_bytes'] / MiB:.0f} MiB: {doc['sha256_seconds']:.2f} s",
             f"{'build':<32}{'seconds':>9}{'x sha256':>10}{'read/model':>12}{'peak RSS':>11}{'CPU s':>8}"]  # fmt: skip
    for side in ("now", "baseline"):
        for name, row in doc.get(side, {}).items():
            label = f"{side} {name}" if side == "now" else f"{doc['baseline_rev'][:12]} {name}"
            peer = f" (registry {row['peer_cpu_seconds']:.2f})" if "peer_cpu_seconds" in row else ""
            lines.append(f"{label:<32}{row['seconds']:>9.2f}{row['ratio_to_sha256']:>10.2f}"
                         f"{row['bytes_read_per_model_byte']:>12.2f}{row['maxrss_mb']:>8.0f} MB"
                         f"{row.get('cpu_seconds', 0):>8.2f}{peer}")  # fmt: skip
    now = doc["now"]
    lines.append(f"now, the model's part (output - output_4k_model): "
                 f"{(now['output']['seconds'] - now['output_4k_model']['seconds']) / doc['sha256_seconds']:.2f}x sha256")  # fmt: skip
    floor = now["output_4k_model"]["seconds"] + doc["sha256_seconds"]
    lines.append(f"floor of any build of this model (output_4k_model + one sha256 pass): {floor:.2f} s, "
                 f"{floor / doc['sha256_seconds']:.2f}x sha256")  # fmt: skip
    least = doc.get("least_work")
    if least:
        for fixed, work, what in (("output_4k_model", "two_hashes", "with the documents (two sha256)"),
                                  ("output_4k_no_documents", "one_hash", "without them (one sha256)")):  # fmt: skip
            seconds = least[work]["seconds"]
            floor = now[fixed]["seconds"] + seconds
            lines.append(f"least work {what}: read+hash+write {seconds:.2f} s ({seconds / doc['sha256_seconds']:.2f}x),"
                         f" + {fixed} = {floor:.2f} s, {floor / doc['sha256_seconds']:.2f}x sha256")  # fmt: skip
    return "\n".join(lines)


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mib", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--baseline", metavar="REV", help="also measure ocibuild at this git revision")
    p.add_argument("--workdir", help="where the model and outputs go (default: the system's temp)")
    p.add_argument("--json", default=str(REPO / "bench" / "one-read-results.json"))
    return p.parse_args()


if __name__ == "__main__":
    sys.exit(main())
