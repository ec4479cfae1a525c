"""What every benchmark script prints and writes the same way: progress lines, byte counts, and the results file
with the machine's load around the run."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


def logger(name: str) -> Callable[[str], None]:
    """``log(msg)``: a timestamped progress line on stderr, prefixed with the benchmark's name."""

    def log(msg: str) -> None:
        print(f"[{name} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    return log


def human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def finish(doc: dict, path: Path, started: float) -> str:
    """Record the load after the run and its length in ``doc``, write it to ``path``; the closing line."""
    doc["load_after"] = os.getloadavg()[0]
    doc["total_seconds"] = round(time.perf_counter() - started, 1)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return f"(load {doc['load_before']:.2f} before, {doc['load_after']:.2f} after; {doc['total_seconds']:.0f} s; {path})"
