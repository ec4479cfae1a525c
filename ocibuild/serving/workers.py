"""Several worker processes on one port (``WORKER_COUNT`` > 1), supervised by the parent.

One thread-per-connection process is limited by the GIL (measured: p99 5x Azure's at 64 connections), so
like gunicorn we fork workers, each loading the script and running ``init()`` itself. They share the parent's
one listening socket rather than binding their own with SO_REUSEPORT: a worker takes connections only once it is
ready, so one that is restarting never answers 503, a worker's death never resets connections queued for it, and
an idle worker wins the race for the next connection over a busy one.

The parent forwards SIGTERM/SIGINT to the workers and waits for them to drain. A worker that dies before it is
ready (its script or ``init()`` failed) stops the whole service with its status; one that dies later is replaced.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .log import logger

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_POLL_S = 0.1
_KILL_GRACE_S = 5.0  # beyond the workers' own graceful timeout


class _Worker:
    def __init__(self, index: int, pid: int, ready_fd: int) -> None:
        self.index = index
        self.pid = pid
        self.ready_fd = ready_fd
        self.ready = False


def supervise(
    count: int,
    worker_main: Callable[[int, Callable[[], None]], int],
    *,
    graceful_timeout_s: float,
    on_stop: Callable[[], None],
) -> int:
    """Fork ``count`` workers running ``worker_main(index, notify_ready)``; return the service's exit status.

    ``index`` is the worker's number (0 to ``count`` - 1); a replacement gets the index of the worker it replaces.

    ``on_stop`` runs when stopping begins (the parent closes its copy of the listening socket there).
    """
    supervisor = _Supervisor(worker_main, graceful_timeout_s, on_stop)

    def on_signal(signum: int, frame: Any) -> None:
        supervisor.stop_reasons.append(f"received {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        return supervisor.run(count)
    finally:
        for worker in supervisor.workers.values():  # only when the supervisor itself failed
            _kill(worker.pid, signal.SIGKILL)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class _Supervisor:
    """The workers and the service's state: why it stops, its exit status, once stopping a kill deadline."""

    def __init__(
        self,
        worker_main: Callable[[int, Callable[[], None]], int],
        graceful_timeout_s: float,
        on_stop: Callable[[], None],
    ) -> None:
        self.worker_main = worker_main
        self.graceful_timeout_s = graceful_timeout_s
        self.on_stop = on_stop
        self.workers: dict[int, _Worker] = {}
        self.stop_reasons: list[str] = []
        self.status = 0
        self.deadline: float | None = None  # set when stopping begins

    def run(self, count: int) -> int:
        """Start ``count`` workers and look after them until none is left; the service's exit status."""
        for index in range(count):
            _spawn(index, self.worker_main, self.workers)
        while self.workers:
            self._stop_if_asked()
            self._kill_if_late()
            _read_ready(self.workers, _POLL_S)
            for worker in list(self.workers.values()):
                code = _exit_status(worker.pid)
                if code is not None:
                    self._exited(worker, code)
        return self.status

    def _stop_if_asked(self) -> None:
        """At the first stop reason: ``on_stop``, SIGTERM to every worker, and a deadline to kill them."""
        if self.stop_reasons and self.deadline is None:
            logger.info("Stopping %d worker(s): %s", len(self.workers), self.stop_reasons[0])
            self.deadline = time.monotonic() + self.graceful_timeout_s + _KILL_GRACE_S
            self.on_stop()
            _signal_all(self.workers, signal.SIGTERM)

    def _kill_if_late(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            logger.warning("Workers did not stop in time; killing %d", len(self.workers))
            _signal_all(self.workers, signal.SIGKILL)
            self.deadline = float("inf")

    def _exited(self, worker: _Worker, code: int) -> None:
        """Forget an exited worker and replace it, unless the service is stopping.

        One that exits before it was ready (script or ``init()`` failed) stops the service with its status.
        """
        del self.workers[worker.pid]
        _read_ready({worker.pid: worker}, 0)
        os.close(worker.ready_fd)
        if self.deadline is not None:
            if code != 0:
                self.status = self.status or 1
        elif not worker.ready:
            logger.error("Worker %d exited with status %d before it was ready; stopping", worker.pid, code)
            self.status = code or 1
            self.stop_reasons.append(f"worker {worker.index} failed")
        else:
            logger.warning("Worker %d exited with status %d; starting a new one", worker.pid, code)
            _spawn(worker.index, self.worker_main, self.workers)


def _spawn(
    index: int, worker_main: Callable[[int, Callable[[], None]], int], workers: dict[int, _Worker]
) -> None:
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker: never returns into the supervisor's code
        code = 1
        try:
            for sig in _STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            os.close(read_fd)
            for other in workers.values():
                os.close(other.ready_fd)
            _stop_when_orphaned(os.getppid())

            def notify_ready() -> None:
                os.write(write_fd, b"r")
                os.close(write_fd)

            code = worker_main(index, notify_ready)
        except BaseException:
            logger.exception("Worker failed")
        finally:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
            os._exit(code)
    os.close(write_fd)
    workers[pid] = _Worker(index, pid, read_fd)
    logger.info("Started worker %d (pid %d)", index, pid)


def _stop_when_orphaned(parent: int) -> None:
    """Stop gracefully if the supervisor dies (e.g. SIGKILLed), instead of serving on unsupervised."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        logger.warning("Supervisor %d is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="orphan-watch", daemon=True).start()


def _read_ready(workers: dict[int, _Worker], timeout: float) -> None:
    """Wait up to ``timeout`` for workers to report ready; sleeps when none is pending."""
    pending = {w.ready_fd: w for w in workers.values() if not w.ready}
    if not pending:
        if timeout:
            time.sleep(timeout)
        return
    readable, _, _ = select.select(list(pending), [], [], timeout)
    for fd in readable:
        worker = pending[fd]
        if os.read(fd, 1):
            worker.ready = True
            logger.info("Worker %d (pid %d) is ready", worker.index, worker.pid)


def _exit_status(pid: int) -> int | None:
    """The exit status of ``pid`` if it has exited (128 + signal when killed), else None."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return 1
    if done == 0:
        return None
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _signal_all(workers: dict[int, _Worker], sig: int) -> None:
    for worker in workers.values():
        _kill(worker.pid, sig)


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
