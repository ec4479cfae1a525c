#!/usr/bin/env python3
"""Compression that fits the layer: zstd (levels, threads) against ocibuild's segmented gzip, on the
dependency layers.

    python3 bench/compression.py                # the example's scikit-learn set and the torch set (~8 min)
    python3 bench/compression.py --skip-torch   # the example's set only (a minute)

The inputs are the uncompressed dependency layers of an ``ocibuild package --oci-layout DIR --compression none``
build (the layers whose history says "python dependencies"; the machine's installer cache and a fresh
``--cache``). Each layer tar is read from the page cache and run through ocibuild's own layer pipeline
(``ocibuild.oci.pipeline.pump``: sha256 of the tar, the encoder, sha256 of the blob, the blob written to a file), with:

* ``gzip``: ``compress.GzipSegments``, what ocibuild writes by default (libdeflate level 1, a gzip member per 4 MiB segment, stored
  where a segment would not shrink 10 %, on every core);
* ``zstd-L`` / ``zstd-L-tN``: one zstd stream through ``zstandard`` at level L, single-threaded (what
  ``--compression zstd`` does today, at level 3) or with N worker threads (zstd's own multithreading).

Then each blob is decompressed once to nowhere (``decompressed``-style: ISA-L ``igzip`` for gzip, as ocibuild
reads layers; stock ``zlib`` for gzip as well, the reader most other tools have; ``zstandard`` for zstd). Figures
per set: the summed seconds, compressed bytes over tar bytes, decompress seconds, and each one's ratio to gzip,
all from the same run. Writes ``bench/compression-results.json`` (``--json``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import zstandard  # noqa: E402
from isal import igzip  # noqa: E402
from report import finish, logger  # noqa: E402

from ocibuild.oci import compress  # noqa: E402
from ocibuild.oci.pipeline import Output, pump  # noqa: E402
from ocibuild.oci.store import write_all  # noqa: E402

EXAMPLE = REPO / "fixtures" / "example"
PY = sys.executable
CHUNK = 1 << 20
# (key, zstd level, threads); threads 0 is zstandard's single-threaded mode (ocibuild's --compression zstd)
ZSTD = [(1, 0), (1, 2), (3, 0), (3, 2), (6, 2), (9, 2), (12, 2), (19, 2)]
ZSTD_QUICK = [(1, 0), (1, 2), (3, 0), (3, 2), (6, 2), (9, 2)]  # the torch set: level 12 and 19 take minutes


log = logger("compression")


class FileTar:
    """A tar file as the pipeline's stream (what ``TarStream`` offers it)."""

    def __init__(self, path: Path):
        self.size = path.stat().st_size
        self._f = open(path, "rb", buffering=0)

    def readinto(self, view) -> int:
        done = 0
        while done < len(view):
            n = self._f.readinto(view[done:])
            if not n:
                break
            done += n
        return done

    def main_file_start(self, offset: int, n: int) -> None:
        return None

    def close(self) -> None:
        self._f.close()


def encode(tar: Path, encoder, blob: Path) -> dict:
    with open(blob, "wb") as f:
        fd = f.fileno()

        def write(pieces: list, release) -> None:
            write_all(fd, pieces)
            release()

        start = time.perf_counter()
        out = Output(encoder, write)
        pump(FileTar(tar), out, diff=hashlib.sha256())
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "bytes": out.size}


def decompress(blob: Path, how: str, expected: int) -> float:
    """Seconds to decompress ``blob`` to nowhere (its length checked against the tar's)."""
    n = 0
    start = time.perf_counter()
    with open(blob, "rb") as raw:
        if how == "zlib":  # member after member (one per segment), as gzip readers do
            d = zlib.decompressobj(31)
            while chunk := raw.read(CHUNK):
                while chunk:
                    n += len(d.decompress(chunk))
                    chunk = d.unused_data if d.eof else b""
                    if d.eof:
                        d = zlib.decompressobj(31)
            n += len(d.flush())
        else:
            if how == "isal":
                stream = igzip.IGzipFile(fileobj=raw, mode="rb")
            else:
                stream = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            while chunk := stream.read(CHUNK):
                n += len(chunk)
    seconds = time.perf_counter() - start
    if n != expected:
        raise RuntimeError(f"{blob} ({how}) decompressed to {n} bytes, not {expected}")
    return seconds


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        while f.read(8 << 20):
            pass


def dependency_layers(layout: Path, out: Path) -> list[Path]:
    """The dependency layers' tars of the layout's one image (uncompressed blobs), linked into ``out``."""
    blobs = layout / "blobs" / "sha256"

    def blob(digest: str) -> Path:
        return blobs / digest.split(":", 1)[1]

    index = json.loads((layout / "index.json").read_text())
    manifest = json.loads(blob(index["manifests"][0]["digest"]).read_text())
    config = json.loads(blob(manifest["config"]["digest"]).read_text())
    history = [h for h in config["history"] if not h.get("empty_layer")]
    layers = []
    for h, desc in zip(history, manifest["layers"], strict=True):
        if "python dependencies" in h.get("created_by", ""):
            if desc["mediaType"] != "application/vnd.oci.image.layer.v1.tar":
                raise RuntimeError(f"not an uncompressed layer: {desc}")
            target = out / f"{len(layers) + 1:02d}-{desc['digest'][7:19]}.tar"
            shutil.copyfile(blob(desc["digest"]), target)
            layers.append(target)
    return layers


def build_layers(name: str, work: Path, base: Path) -> list[Path]:
    d = work / name
    d.mkdir()
    if name == "torch":
        from fleet import TORCH_SCORE

        (d / "score.py").write_text(TORCH_SCORE)
        (d / "requirements.txt").write_text("torch\n")
        (d / "model.bin").write_bytes(b"\0" * 4096)
        model, score, reqs = d / "model.bin", d / "score.py", d / "requirements.txt"
    else:
        subprocess.run([PY, str(EXAMPLE / "train.py"), str(d)], check=True, capture_output=True)
        model, score, reqs = d / "model.pkl", EXAMPLE / "score.py", EXAMPLE / "requirements.txt"
    layout = d / "layout"
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    env.update({"PYTHONPATH": str(REPO), "PIP_CONFIG_FILE": os.devnull})
    log(f"{name}: ocibuild package --oci-layout --compression none")
    subprocess.run(
        [PY, "-m", "ocibuild", "package", str(model), "--entry-script", str(score), "--requirements", str(reqs),
         "--base", f"oci:{base}/oci:py311", "--name", "bench", "--cache", str(d / "cache"), "-q",
         "--compression", "none", "--oci-layout", str(layout)],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    layers = dependency_layers(layout, d)
    shutil.rmtree(layout)
    shutil.rmtree(d / "cache")
    return layers


def bench_set(name: str, layers: list[Path], settings: list[tuple[int, int]], work: Path) -> dict:
    tar_bytes = sum(p.stat().st_size for p in layers)
    log(f"{name}: {len(layers)} dependency layers, {tar_bytes / 1e6:.0f} MB of tar")
    rows: dict[str, dict] = {}
    codecs = [
        (
            "gzip",
            "ocibuild gzip (libdeflate -1, a member per 4 MiB segment, all cores)",
            compress.GzipSegments,
            ["isal", "zlib"],
        )
    ]
    for level, threads in settings:
        label = f"zstd -{level}, " + ("single-threaded" if threads == 0 else f"{threads} threads")
        if (level, threads) == (3, 0):
            label += " (ocibuild --compression zstd today)"
        codecs.append((f"zstd-{level}-t{threads}", label,
                       lambda lv=level, t=threads: compress.ZstdSegments(lv, t), ["zstd"]))  # fmt: skip
    blob = work / "blob"
    for key, label, make, readers in codecs:
        row = {
            "label": label,
            "seconds": 0.0,
            "bytes": 0,
            **{f"decompress_{r}_seconds": 0.0 for r in readers},
        }
        for layer in layers:
            warm(layer)
            os.sync()
            r = encode(layer, make(), blob)
            row["seconds"] += r["seconds"]
            row["bytes"] += r["bytes"]
            for reader in readers:
                row[f"decompress_{reader}_seconds"] += decompress(blob, reader, layer.stat().st_size)
            blob.unlink()
        row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
        row["size_ratio"] = round(row["bytes"] / tar_bytes, 4)
        row["mb_per_s"] = round(tar_bytes / 1e6 / row["seconds"], 1)
        rows[key] = row
        log(f"  {label}: {row['seconds']:.2f} s, {row['size_ratio']:.3f} of the tar")
    gz = rows["gzip"]
    for row in rows.values():
        row["x_gzip_seconds"] = round(row["seconds"] / gz["seconds"], 2)
        row["x_gzip_bytes"] = round(row["bytes"] / gz["bytes"], 3)
        dec = row.get("decompress_zstd_seconds", row.get("decompress_isal_seconds"))
        row["x_gzip_decompress"] = round(dec / gz["decompress_isal_seconds"], 2)
    return {
        "layers": len(layers),
        "layer_tar_bytes": [p.stat().st_size for p in layers],
        "tar_bytes": tar_bytes,
        "rows": rows,
    }


def table(doc: dict) -> str:
    lines = []
    for name, s in doc["sets"].items():
        lines.append(f"\n{name}: {s['layers']} dependency layers, {s['tar_bytes'] / 1e6:.0f} MB of tar")
        lines.append(
            f"  {'':<58} {'seconds':>8} {'x gzip':>7} {'size':>7} {'x gzip':>7} {'unpack s':>9} {'x gzip':>7}"
        )
        for r in s["rows"].values():
            dec = r.get("decompress_zstd_seconds", r.get("decompress_isal_seconds"))
            lines.append(
                f"  {r['label']:<58} {r['seconds']:>8.2f} {r['x_gzip_seconds']:>7.2f} {r['size_ratio']:>7.3f} "
                f"{r['x_gzip_bytes']:>7.3f} {dec:>9.2f} {r['x_gzip_decompress']:>7.2f}"
            )
            if "decompress_zlib_seconds" in r:
                lines.append(f"  {'  (the same gzip read by stock zlib)':<58} {'':>8} {'':>7} {'':>7} {'':>7} "
                             f"{r['decompress_zlib_seconds']:>9.2f}")  # fmt: skip
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--workdir", type=Path, help="where the layer tars go (default: under /tmp)")
    parser.add_argument("--json", type=Path, default=REPO / "bench" / "compression-results.json")
    args = parser.parse_args()
    from run import base_fixture, environment

    base = base_fixture()
    if base is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="ocibuild-compression-", dir=args.workdir))
    env = environment()
    doc: dict = {
        "date": env["date"], "commit": env["commit"], "cpu": env["cpu"], "cores": env["cores"],
        "isal": env["isal"], "zstandard": env["zstandard"], "zstd_library": zstandard.ZSTD_VERSION,
        "load_before": os.getloadavg()[0], "sets": {},
    }  # fmt: skip
    started = time.perf_counter()
    try:
        for name, settings in (("example (scikit-learn)", ZSTD), ("torch (CUDA)", ZSTD_QUICK)):
            if name.startswith("torch") and args.skip_torch:
                continue
            layers = build_layers(name.split()[0], work, base)
            doc["sets"][name] = bench_set(name, layers, settings, work)
            for p in layers:
                p.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    closing = finish(doc, args.json, started)
    print(table(doc))
    print(f"\n{closing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
