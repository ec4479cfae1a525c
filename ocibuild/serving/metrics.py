"""Request metrics in the Prometheus text format (``GET /metrics``), summed over all worker processes.

The counters live in one anonymous shared memory map that the launcher creates before it forks the workers: each
worker writes only its own slot (a fixed block of doubles) and ``/metrics``, whichever worker answers it, adds all
slots up. So the numbers are the service's, not one worker's, without a collector process or any dependency. A
worker that is replaced takes over its predecessor's slot, so counters never go backwards; its in-flight gauge
starts again from zero.

Series (``route`` is a route template such as ``/v2/models/{name}/infer``, never a raw path, so the number of series
stays bounded; paths that match no route are counted as ``other``):

- ``ocibuild_serving_requests_total{route,code}``: answered requests (counter)
- ``ocibuild_serving_request_duration_seconds{route}``: time from the request line to the last byte of the answer
  (histogram, buckets ``BUCKETS``)
- ``ocibuild_serving_requests_in_flight``: requests being answered now (gauge)
- ``ocibuild_serving_ready``: 1 once ``init()`` has finished in every live worker that reported (gauge, per worker
  summed, so with ``WORKER_COUNT`` = N a fully ready service shows N)
"""

from __future__ import annotations

import bisect
import mmap
import threading

ROUTES = (
    "/",
    "/health/live",
    "/health/ready",
    "/score",
    "/swagger.json",
    "/metrics",
    "/v2",
    "/v2/health/live",
    "/v2/health/ready",
    "/v2/models/{name}",
    "/v2/models/{name}/ready",
    "/v2/models/{name}/infer",
    "other",
)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_ROUTE_INDEX = {r: i for i, r in enumerate(ROUTES)}
_CODES = 500  # status codes 100..599
_PREFIX = "ocibuild_serving"

# One slot: counts[route][code], then per route the histogram (buckets + +Inf, sum, count), then two gauges.
_COUNTS = 0
_HIST = _COUNTS + len(ROUTES) * _CODES
_HIST_WIDTH = len(BUCKETS) + 3
_IN_FLIGHT = _HIST + len(ROUTES) * _HIST_WIDTH
_READY = _IN_FLIGHT + 1
_SLOT = _READY + 1


class Metrics:
    """Counters for ``slots`` processes in shared memory; ``slot`` is the one this process writes."""

    def __init__(self, slots: int = 1) -> None:
        self.slots = slots
        self._map = mmap.mmap(-1, slots * _SLOT * 8)  # anonymous and shared: survives fork()
        self._values = memoryview(self._map).cast("d")
        self._lock = threading.Lock()
        self._base = 0

    def use_slot(self, slot: int) -> None:
        """Write to ``slot`` from now on (a worker's index); a fresh process has nothing in flight yet."""
        self._base = slot * _SLOT
        with self._lock:
            self._values[self._base + _IN_FLIGHT] = 0.0
            self._values[self._base + _READY] = 0.0

    def set_ready(self, ready: bool) -> None:
        self._values[self._base + _READY] = 1.0 if ready else 0.0

    def started(self) -> None:
        with self._lock:
            self._values[self._base + _IN_FLIGHT] += 1

    def finished(self, route: str, code: int, seconds: float) -> None:
        r = _ROUTE_INDEX.get(route, len(ROUTES) - 1)
        c = code - 100 if 100 <= code < 600 else 499  # out-of-range codes would be a bug; keep them visible
        h = self._base + _HIST + r * _HIST_WIDTH
        v = self._values
        with self._lock:
            v[self._base + _IN_FLIGHT] -= 1
            v[self._base + _COUNTS + r * _CODES + c] += 1
            v[h + bisect.bisect_left(BUCKETS, seconds)] += 1
            v[h + len(BUCKETS) + 1] += seconds
            v[h + len(BUCKETS) + 2] += 1

    def render(self) -> str:
        """All series in the Prometheus text exposition format (version 0.0.4)."""
        totals = [sum(self._values[s * _SLOT + i] for s in range(self.slots)) for i in range(_SLOT)]
        out = [
            f"# HELP {_PREFIX}_requests_total Requests answered, by route template and status code.",
            f"# TYPE {_PREFIX}_requests_total counter",
        ]
        for r, route in enumerate(ROUTES):
            for c in range(_CODES):
                n = totals[_COUNTS + r * _CODES + c]
                if n:
                    out.append(f'{_PREFIX}_requests_total{{route="{route}",code="{c + 100}"}} {_num(n)}')
        out += [
            f"# HELP {_PREFIX}_request_duration_seconds Time to answer a request, by route template.",
            f"# TYPE {_PREFIX}_request_duration_seconds histogram",
        ]
        for r, route in enumerate(ROUTES):
            h = _HIST + r * _HIST_WIDTH
            count = totals[h + len(BUCKETS) + 2]
            if not count:
                continue
            cumulative = 0.0
            for i, bound in enumerate((*BUCKETS, float("inf"))):
                cumulative += totals[h + i]
                le = "+Inf" if i == len(BUCKETS) else repr(bound)
                out.append(
                    f'{_PREFIX}_request_duration_seconds_bucket{{route="{route}",le="{le}"}} {_num(cumulative)}'
                )
            out.append(
                f'{_PREFIX}_request_duration_seconds_sum{{route="{route}"}} {totals[h + len(BUCKETS) + 1]!r}'
            )
            out.append(f'{_PREFIX}_request_duration_seconds_count{{route="{route}"}} {_num(count)}')
        out += [
            f"# HELP {_PREFIX}_requests_in_flight Requests being answered now.",
            f"# TYPE {_PREFIX}_requests_in_flight gauge",
            f"{_PREFIX}_requests_in_flight {_num(totals[_IN_FLIGHT])}",
            f"# HELP {_PREFIX}_ready Worker processes whose init() has finished.",
            f"# TYPE {_PREFIX}_ready gauge",
            f"{_PREFIX}_ready {_num(totals[_READY])}",
        ]
        return "\n".join(out) + "\n"


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)
