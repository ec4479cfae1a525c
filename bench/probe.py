"""Run ``python -m MODULE ARGS`` in this process and record what it cost (used by bench/run.py).

    python3 bench/probe.py REPORT.json -m ocibuild package ...

At exit, REPORT.json gets the wall time of the module's run, the bytes the process read (``rchar``: every
read(2), page cache or not, including Python's own imports) and its peak RSS (``VmHWM``). ``rchar`` is how the benchmark shows
that a rebuild reads none of the model's bytes.
"""

from __future__ import annotations

import json
import runpy
import sys
import time


def _io() -> dict[str, int]:
    out = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def _vmhwm_kb() -> int:
    """Peak RSS of this process since exec (``ru_maxrss`` would include the parent's RSS at fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def main() -> int:
    report, flag, module, *args = sys.argv[1:]
    if flag != "-m":
        raise SystemExit("usage: probe.py REPORT.json -m MODULE ARGS...")
    sys.argv = [module, *args]
    start = time.perf_counter()
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        io = _io()
        doc = {
            "seconds": time.perf_counter() - start,
            "rchar": io.get("rchar", 0),
            "read_bytes": io.get("read_bytes", 0),
            "wchar": io.get("wchar", 0),
            "vmhwm_kb": _vmhwm_kb(),
            "exit": code,
        }
        with open(report, "w") as f:
            json.dump(doc, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
