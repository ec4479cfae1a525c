"""Killed builds (issue 6, part 2): SIGKILL and SIGINT at random points of ``ocibuild package``.

What a user needs after a build was killed or interrupted, and what each iteration checks:
- the cache holds no wrong entry: every stored blob hashes to its name, every record parses (a later build
  trusts them); temp files of a SIGKILLed build may remain in ``tmp/`` but are never used as content;
- the output path holds nothing, or the complete image, byte for byte the one a clean build writes;
- after Ctrl-C (SIGINT): exit 130, the one-line message, no temp file beside the output or in the cache, no
  installer process left running;
- the next build succeeds and writes exactly the clean build's image (so nothing the killed build cached is wrong).
Two builds sharing one cache at the same time both succeed with the same image.

The random points are drawn from a seeded RNG (printed; ``OCIBUILD_KILL_SEED`` replays a run).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.reliability.builds import (
    Reference,
    check_store,
    env,
    file_sha256,
    how_images_differ,
    make_model,
    package_argv,
    skopeo_inspect,
    temps_beside,
)

pytestmark = pytest.mark.slow

INTERRUPTED = "ocibuild: interrupted; nothing was written at the destination"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("killed")


@pytest.fixture(scope="module")
def model(work):
    return make_model(work / "model")


def _build(argv, tmpdir: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, env=env(tmpdir), capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def reference(work, model, base_image) -> Reference:
    require("skopeo")
    tmpdir = work / "tmp-ref"
    tmpdir.mkdir()
    out = work / "reference.tar"
    start = time.monotonic()
    r = _build(package_argv(model, base_image.ref, work / "cache-ref", "--output", out, "-q"), tmpdir)
    cold = time.monotonic() - start
    assert r.returncode == 0, r.stderr[-3000:]
    os.utime(model.weights)  # a new mtime: the model layer is made again, the rest comes from the cache
    start = time.monotonic()
    again = _build(package_argv(model, base_image.ref, work / "cache-ref", "--output", work / "again.tar", "-q"), tmpdir)  # fmt: skip
    warm = time.monotonic() - start
    assert again.returncode == 0 and again.stdout == r.stdout, again.stderr[-3000:]
    assert file_sha256(work / "again.tar") == file_sha256(out)
    (work / "again.tar").unlink()
    print(f"reference build: cold {cold:.1f} s, warm {warm:.1f} s, {r.stdout.strip()}")
    return Reference(r.stdout.strip(), out, file_sha256(out), cold, warm)


def _session_processes(sid: int) -> list[int]:
    """Processes still alive in the session the build was started in (the installer it ran, if any)."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            alive.append(int(entry))
    return alive


def _wait_gone(sid: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := _session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


# Where a kill lands: a moment after one of these progress lines (or the export's temp file) appears, plus a random
# delay; "start" is a random delay from the start. This covers every phase however fast this machine builds.
COLD_POINTS = ["start", "reading the base image", "installing wheels", "Installed", "dependencies layer:", "model layer:", "export"]  # fmt: skip
WARM_POINTS = ["start", "dependencies: cached", "model layer:", "export"]


def _kill_at(proc, point: str, delay: float, out: Path, lines: list[str]) -> bool:
    """Wait for ``point`` then ``delay`` seconds; False if the build ended first."""
    deadline = time.monotonic() + 300
    while point != "start":
        if point == "export" and temps_beside(out):
            break
        if any(point in line for line in list(lines)):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    time.sleep(delay)
    return proc.poll() is None


def test_killed_and_interrupted_builds_leave_nothing_wrong(work, model, base_image, reference):
    seed = int(os.environ.get("OCIBUILD_KILL_SEED", random.randrange(1 << 32)))
    print(f"OCIBUILD_KILL_SEED={seed}")
    rng = random.Random(seed)
    iterations = 18
    shared_cache = work / "cache-shared"
    out = work / "out" / "image.tar"
    out.parent.mkdir()
    tmpdir = work / "tmp-kill"
    tmpdir.mkdir()
    log: list[str] = []
    try:
        for i in range(iterations):
            _one_kill(i, rng, i % 3 == 0, work, shared_cache, out, tmpdir, model, base_image, reference, log)
    finally:
        print("\n".join(log))
    assert sum("rc 0" not in line for line in log) >= iterations // 2, "too few builds were actually stopped"


# The ways a build is stopped, by the name the log shows.
_STOPS = {
    "SIGKILL": lambda proc: proc.send_signal(signal.SIGKILL),
    # what Ctrl-C in a terminal does
    "SIGINT to the process group": lambda proc: os.killpg(proc.pid, signal.SIGINT),
    # what `kill -INT` or `timeout -s INT` does
    "SIGINT to the process": lambda proc: proc.send_signal(signal.SIGINT),
}


def _one_kill(i, rng, cold, work, shared_cache, out, tmpdir, model, base_image, reference, log) -> None:
    # Every third build starts from an empty cache (dependencies installed again); the others share one cache that
    # keeps whatever the killed builds left in it. The model layer is always made again (a new mtime).
    cache = work / f"cache-cold-{i}" if cold else shared_cache
    cold = cold or not shared_cache.exists()
    os.utime(model.weights)
    point = rng.choice(COLD_POINTS if cold else WARM_POINTS)
    seconds = reference.seconds_cold if cold else reference.seconds_warm
    delay = rng.uniform(0.2, seconds) if point == "start" else rng.uniform(0, 0.4)
    how = rng.choice(list(_STOPS))
    proc, lines, reader = _start_build(package_argv(model, base_image.ref, cache, "--output", out), tmpdir)
    if _kill_at(proc, point, delay, out, lines):
        _STOPS[how](proc)
    proc.wait(timeout=120)
    reader.join(10)
    stdout = proc.stdout.read()
    stderr = "".join(lines)
    finished = stdout.strip() == reference.digest
    phase = ([x for x in stderr.splitlines() if x and not x.startswith("ocibuild:")] or ["(starting)"])[-1]
    log.append(
        f"{i:2} {'cold' if cold else 'warm'} {how:27} at {point!r} + {delay:.2f} s: rc {proc.returncode}, "
        f"last progress: {phase[:60]}"
    )
    where = f"{log[-1]}\n{stderr[-2000:]}"
    _check_no_process_left(proc, how, where)
    _check_what_is_left(proc, how, finished, stderr, out, cache, tmpdir, reference, where)

    # The next build, with whatever the killed one cached, writes exactly the clean build's image.
    r = _build(package_argv(model, base_image.ref, cache, "--output", out, "-q"), tmpdir)
    assert r.returncode == 0, f"the build after: {r.stderr[-3000:]}: {where}"
    assert r.stdout.strip() == reference.digest, f"{where}\n{how_images_differ(out, reference.tar)}"
    assert file_sha256(out) == reference.sha256, where
    assert temps_beside(out) == [], where
    check_store(cache)
    out.unlink()
    if cache != shared_cache:
        shutil.rmtree(cache)


def _start_build(argv, tmpdir: Path) -> tuple[subprocess.Popen[str], list[str], threading.Thread]:
    """The build, in a session of its own, and its stderr lines as a thread reads them."""
    proc = subprocess.Popen(
        argv,
        env=env(tmpdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # A test run started in the background of a non-interactive shell inherits SIGINT ignored, and Python
        # then keeps ignoring it: give the build the default disposition a user's terminal gives it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    return proc, lines, reader


def _check_no_process_left(proc, how: str, where: str) -> None:
    """No process outlives an interrupted build; a SIGKILLed one cannot stop its installer: we do."""
    left = _wait_gone(proc.pid, 10 if how != "SIGKILL" else 0)
    if how == "SIGKILL":
        if left:
            os.killpg(proc.pid, signal.SIGKILL)
            _wait_gone(proc.pid, 10)
    else:
        assert not left, f"processes left running: {left}: {where}"


def _check_what_is_left(proc, how, finished, stderr, out, cache, tmpdir, reference, where) -> None:
    """The output holds nothing or the complete image, the cache no wrong entry; after SIGINT, no temp file
    anywhere and the one-line message (a SIGKILLed build's temp files are removed here)."""
    if out.exists():
        assert file_sha256(out) == reference.sha256, f"a partial or different image at the output: {where}"
    leftovers = temps_beside(out)
    stale = check_store(cache)  # every stored blob hashes to its name, every record parses
    temp_dirs = os.listdir(tmpdir)
    if how == "SIGKILL":
        assert proc.returncode in (-signal.SIGKILL, 0), where
        _remove_temps(out, leftovers, tmpdir, temp_dirs)
        return
    if finished:  # the signal came as it was exiting
        assert proc.returncode in (0, 130, -signal.SIGINT), where
    else:
        assert proc.returncode == 130, where
        assert "Traceback" not in stderr, where
        assert [x for x in stderr.splitlines() if x.startswith("ocibuild:")] == [INTERRUPTED], where
    assert leftovers == [], f"temp files beside the output: {leftovers}: {where}"
    assert stale == [], f"temp files in the cache: {stale}: {where}"
    assert temp_dirs == [], f"temp files in TMPDIR: {temp_dirs}: {where}"


def _remove_temps(out: Path, leftovers: list[str], tmpdir: Path, temp_dirs: list[str]) -> None:
    for name in leftovers:  # known: a SIGKILLed export leaves its temp file (see the xfail test below)
        (out.parent / name).unlink()
    for name in temp_dirs:  # and its temp files and dirs
        path = tmpdir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def test_two_builds_sharing_a_cache_at_once_both_succeed(work, model, base_image, reference):
    cache = work / "cache-concurrent"
    tmpdir = work / "tmp-concurrent"
    tmpdir.mkdir()
    os.utime(model.weights)
    rounds = [
        ("cold cache, two outputs", [work / "c1.tar", work / "c2.tar"]),
        ("warm cache, one output", [work / "same.tar", work / "same.tar"]),
    ]
    for what, outputs in rounds:
        procs = [
            subprocess.Popen(
                package_argv(model, base_image.ref, cache, "--output", o, "-q"),
                env=env(tmpdir),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for o in outputs
        ]
        results = [p.communicate(timeout=600) for p in procs]
        for p, (stdout, stderr) in zip(procs, results, strict=True):
            assert p.returncode == 0, f"{what}: {stderr[-3000:]}"
            assert stdout.strip() == reference.digest, what
        for o in set(outputs):
            assert file_sha256(o) == reference.sha256, what
            assert temps_beside(o) == []
        assert check_store(cache) == [], what
        os.utime(model.weights)
    assert skopeo_inspect(work / "same.tar") == skopeo_inspect(reference.tar)


# --- SIGKILL at a chosen point: what it leaves behind, and whether anything cleans it up ------------------------


def _kill_when(argv, tmpdir: Path, ready) -> None:
    proc = subprocess.Popen(argv, env=env(tmpdir), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not ready():
        assert proc.poll() is None, "the build ended before the point it was to be killed at"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def test_sigkill_during_export_leaves_no_temp_file_beside_the_output(work, model, base_image, reference):
    cache, tmpdir, out = work / "cache-export", work / "tmp-export", work / "export" / "image.tar"
    tmpdir.mkdir()
    out.parent.mkdir()
    argv = package_argv(model, base_image.ref, cache, "--output", out)
    _kill_when(argv, tmpdir, lambda: temps_beside(out))
    assert not out.exists()
    r = _build([*argv, "-q"], tmpdir)
    assert r.returncode == 0 and file_sha256(out) == reference.sha256
    assert temps_beside(out) == [], "the killed export's temp file is still there after the next build"


def test_sigkill_while_caching_a_layer_leaves_no_temp_file_in_the_cache(work, model, base_image, reference):
    cache, tmpdir = work / "cache-tmp", work / "tmp-cache"
    tmpdir.mkdir()
    argv = package_argv(model, base_image.ref, cache, "--output", work / "cache-tmp.tar")
    _kill_when(argv, tmpdir, lambda: (cache / "tmp").is_dir() and any((cache / "tmp").iterdir()))
    assert check_store(cache), "the kill was to leave a temp file"
    shutil.rmtree(tmpdir)
    tmpdir.mkdir()
    r = _build([*argv, "-q"], tmpdir)
    assert r.returncode == 0 and r.stdout.strip() == reference.digest
    assert check_store(cache) == [], (
        "the killed build's temp files are still in the cache after the next build"
    )
