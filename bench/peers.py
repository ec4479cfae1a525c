#!/usr/bin/env python3
"""The builders users would pick instead, side by side with ``ocibuild package --output``, in one run.

    python3 bench/peers.py                 # example, 1 GiB model, torch set (~40 min, ~35 GB of disk, ~9 GB from PyPI)
    python3 bench/peers.py --quick         # example and a 128 MiB model (a few minutes)
    python3 bench/peers.py --only torch    # one case (example / model / torch); repeatable

Tools, each cold then warm on the same inputs (bench/README.md says precisely what cold and warm mean):

* ``ocibuild package --output`` (an image tarball);
* ``docker build`` (BuildKit, on a private dockerd) + ``docker save``, of the Dockerfile context
  ``ocibuild package --dockerfile`` writes (dependencies already resolved and installed, as files);
* the same context with its dependency folders replaced by ``RUN pip install -r requirements.txt``
  (pip downloads from PyPI inside the build, as a hand-written Dockerfile does);
* ``buildah build --layers`` (private ``--root``/``--runroot``, overlay) + ``buildah push`` to a docker-archive,
  of both contexts.

Each run: wall time of the whole command; peak memory, the largest sum of the RSS of the tool's process tree seen
by sampling ``/proc`` every 0.1 s (for docker, the daemon's tree, dockerd, containerd and the build's containers,
is sampled separately and reported on its own); bytes written, ``write_bytes`` of ``/proc/PID/io`` (bytes the
processes dirtied for storage): for the tool's tree from ``wait4``'s ``ru_oublock`` (every descendant it reaped),
for docker's daemon tree the growth of the sampled counters; and the size of the tarball written. Writes
``bench/peers-results.json`` (``--json``) and prints a table of ratios to ocibuild from the same run.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
EXAMPLE = REPO / "fixtures" / "example"

from fleet import TORCH_SCORE  # noqa: E402  (the torch case's score.py, as bench/fleet.py builds it)
from report import finish, human, logger  # noqa: E402
from run import BASE_DOCKER_NAME, DOCKER_CLI, Dockerd, base_fixture, make_weights, tool_version  # noqa: E402

PY = sys.executable
MiB, GiB = 1 << 20, 1 << 30
PAGE = os.sysconf("SC_PAGE_SIZE")
BUILDAH = "buildah"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
TOOLS = {
    "ocibuild": "ocibuild package --output",
    "docker": "docker build (BuildKit) + docker save, ocibuild's context",
    "docker_pip": "docker build (BuildKit) + docker save, pip from PyPI",
    "buildah": "buildah build --layers + push docker-archive, ocibuild's context",
    "buildah_pip": "buildah build --layers + push docker-archive, pip from PyPI",
}


log = logger("peers")


# ---------------------------------------------------------------- measuring a process tree


def _table() -> dict[int, int]:
    """pid -> ppid of every process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            out[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return out


def _tree(roots: set[int], table: dict[int, int]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo += children.get(pid, [])
    return seen


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError):
        return 0


def _write_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class Daemon:
    """What to sample besides the tool's own tree: a daemon's processes (its tree, and processes whose command line
    names its private directory, such as containerd shims reparented to init)."""

    def __init__(self, pid: int, marker: str):
        self.pid, self.marker = pid, marker

    def pids(self, table: dict[int, int]) -> set[int]:
        pids = _tree({self.pid}, table)
        for pid in table:
            if pid not in pids:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        if self.marker.encode() in f.read():
                            pids |= _tree({pid}, table)
                except OSError:
                    pass
        return pids


class Sampler(threading.Thread):
    """Every 0.1 s: the RSS sum of the tool's tree and of the daemon's processes (their peaks), and the daemon's
    processes' ``write_bytes`` (first and last value seen; processes born during the run start at 0)."""

    def __init__(self, root: int, daemon: Daemon | None):
        super().__init__(daemon=True)
        self.root, self.watched = root, daemon
        self.stop = threading.Event()
        self.peak = {"tool": 0, "daemon": 0}
        self.io: dict[int, tuple[int, int]] = {}
        self.daemon_idle = 0
        if daemon is not None:
            pids = daemon.pids(_table())
            self.daemon_idle = sum(_rss(p) for p in pids)
            for pid in pids:
                w = _write_bytes(pid)
                if w is not None:
                    self.io[pid] = (w, w)

    def run(self) -> None:
        while not self.stop.is_set():
            table = _table()
            self.peak["tool"] = max(self.peak["tool"], sum(_rss(p) for p in _tree({self.root}, table)))
            if self.watched is not None:
                pids = self.watched.pids(table)
                self.peak["daemon"] = max(self.peak["daemon"], sum(_rss(p) for p in pids))
                for pid in pids:
                    w = _write_bytes(pid)
                    if w is not None:
                        self.io[pid] = (self.io.get(pid, (0, 0))[0], w)
            self.stop.wait(0.1)

    def daemon_written(self) -> int:
        return sum(last - first for first, last in self.io.values())


def run_tree(argv: list[str], env: dict, daemon: Daemon | None = None) -> dict:
    """Run ``argv`` (fail loudly if it fails) and return its wall time, peak tree RSS, bytes written."""
    os.sync()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, text=True)
        sampler = Sampler(proc.pid, daemon)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            wall = time.perf_counter() - start
            sampler.stop.set()
            sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(
            f"failed (exit {code}): {' '.join(argv)}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
        )
    result = {
        "seconds": round(wall, 2),
        "peak_rss_mb": round(sampler.peak["tool"] / 1e6, 1),
        "written_bytes": usage.ru_oublock * 512,  # write_bytes of the tree (ru_oublock counts 512-byte units)
    }
    if daemon is not None:
        result["daemon_idle_rss_mb"] = round(sampler.daemon_idle / 1e6, 1)
        result["daemon_peak_rss_mb"] = round(sampler.peak["daemon"] / 1e6, 1)
        result["daemon_written_bytes"] = sampler.daemon_written()
    result["stdout_tail"] = stdout.strip().splitlines()[-1:] if stdout.strip() else []
    return result


# ---------------------------------------------------------------- inputs


@dataclass
class Case:
    name: str
    model: Path  # a file or a folder
    score: Path  # the score.py ocibuild packages (the copy the warm runs edit)
    requirements: Path
    label: str


def make_case(name: str, work: Path, quick: bool) -> Case:
    d = work / f"{name}-in"
    d.mkdir(parents=True, exist_ok=True)
    if name == "torch":
        (d / "score.py").write_text(TORCH_SCORE)
        (d / "requirements.txt").write_text("torch\n")
        (d / "model.bin").write_bytes(b"\0" * 4096)
        return Case(name, d / "model.bin", d / "score.py", d / "requirements.txt",
                    "torch (CUDA wheels from PyPI), 4 KiB model")  # fmt: skip
    shutil.copyfile(EXAMPLE / "score.py", d / "score.py")
    shutil.copyfile(EXAMPLE / "requirements.txt", d / "requirements.txt")
    subprocess.run([PY, str(EXAMPLE / "train.py"), str(d)], check=True, capture_output=True)
    if name == "example":
        return Case(name, d / "model.pkl", d / "score.py", d / "requirements.txt",
                    "the example (scikit-learn), model.pkl")  # fmt: skip
    size = 128 * MiB if quick else 1 * GiB
    model = d / "model"
    model.mkdir(exist_ok=True)
    os.replace(d / "model.pkl", model / "model.pkl")
    make_weights(model / "weights.bin", size, seed=1)
    size_label = f"{size // MiB} MiB" if size < GiB else f"{size // GiB} GiB"
    return Case(name, model, d / "score.py", d / "requirements.txt",
                f"the example + {size_label} float32 weights")  # fmt: skip


def clean_env(home: Path | None = None) -> dict:
    """The environment of every tool: no local wheel folder or mirror of this machine (pip's config and
    PIP_FIND_LINKS point at them); with ``home``, fresh installer caches there."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PIP_FIND_LINKS", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL")
    }
    env.update({"PYTHONPATH": str(REPO), "PIP_CONFIG_FILE": os.devnull})
    if home is not None:
        for var, sub in (("UV_CACHE_DIR", "uv"), ("PIP_CACHE_DIR", "pip"), ("XDG_CACHE_HOME", "xdg")):
            env[var] = str(home / sub)
    return env


def ocibuild_argv(case: Case, base: Path, cache: Path, *output: str) -> list[str]:
    return [
        PY, "-m", "ocibuild", "package", str(case.model), "--entry-script", str(case.score),
        "--requirements", str(case.requirements), "--base", f"oci:{base}/oci:py311", "--name", "bench",
        "--tag", "bench:1", "--cache", str(cache), "-q", *output,
    ]  # fmt: skip


def contexts(case: Case, base: Path, work: Path, pip_wheel: Path) -> tuple[Path, Path, dict]:
    """ocibuild's Dockerfile context (written with the machine's own installer cache and a fresh ``--cache``:
    untimed preparation), and the pip variant next to it (the non-dependency folders hard-linked)."""
    ctx, ctx_pip = work / f"{case.name}-ctx", work / f"{case.name}-ctx-pip"
    cache = work / f"{case.name}-ctx-cache"
    log(f"{case.name}: writing ocibuild's Dockerfile context")
    env = clean_env()
    prep = run_tree(ocibuild_argv(case, base, cache, "--dockerfile", str(ctx)), env)
    shutil.rmtree(cache)
    ctx_pip.mkdir()
    for item in ctx.iterdir():
        if not re.fullmatch(r"\d+-dependencies", item.name) and item.name != "Dockerfile":
            subprocess.run(["cp", "-al", str(item), str(ctx_pip / item.name)], check=True)
    shutil.copyfile(pip_wheel, ctx_pip / pip_wheel.name)
    shutil.copyfile(CA_BUNDLE, ctx_pip / "ca.crt")
    (ctx_pip / "Dockerfile").write_text(pip_dockerfile((ctx / "Dockerfile").read_text(), pip_wheel.name))
    return (
        ctx,
        ctx_pip,
        {"seconds": prep["seconds"], "layers": sorted(p.name for p in ctx.iterdir() if p.is_dir())},
    )


def pip_dockerfile(text: str, wheel: str) -> str:
    """ocibuild's Dockerfile with its dependency ``COPY`` lines (and their comments) replaced by one ``RUN pip
    install`` into the same folder. pip runs from its wheel (the Debian base has no pip); ``--cert`` is this
    machine's CA bundle (its network to PyPI goes through a TLS-inspecting proxy)."""
    lines = text.splitlines()
    out, done = [], False
    for i, line in enumerate(lines):
        is_dep = re.fullmatch(r"COPY \d+-dependencies/ /", line)
        comment_of_dep = (
            line.startswith("#")
            and i + 1 < len(lines)
            and re.fullmatch(r"COPY \d+-dependencies/ /", lines[i + 1])
        )
        if is_dep or comment_of_dep:
            if not done:
                out += [
                    "# the dependencies, installed by pip from PyPI (what a hand-written Dockerfile does)",
                    f"COPY {wheel} ca.crt requirements.txt /tmp/pip/",
                    f"RUN python3 /tmp/pip/{wheel}/pip install --no-cache-dir --disable-pip-version-check "
                    "--root-user-action=ignore --cert /tmp/pip/ca.crt --target /opt/ocibuild/site-packages "
                    "-r /tmp/pip/requirements.txt && rm -rf /tmp/pip",
                ]
                done = True
            continue
        out.append(line)
    if not done:
        raise RuntimeError("no dependency COPY lines in ocibuild's Dockerfile")
    return "\n".join(out) + "\n"


def edit(case: Case, ctxs: list[Path]) -> None:
    """The warm runs' change: one comment line appended to score.py, in ocibuild's input and in the contexts
    (whose app folders are hard links of one file)."""
    seen = set()
    for path in [case.score, *(p for c in ctxs for p in c.glob("*-app/var/azureml-app/score.py"))]:
        if path.stat().st_ino not in seen:
            seen.add(path.stat().st_ino)
            with open(path, "a") as f:
                f.write("\n# edited\n")


def restore(case: Case, ctxs: list[Path], original: str) -> None:
    for path in [case.score, *(p for c in ctxs for p in c.glob("*-app/var/azureml-app/score.py"))]:
        path.write_text(original)


# ---------------------------------------------------------------- the tools


def tar_size(path: Path) -> int:
    size = path.stat().st_size
    path.unlink()
    return size


def run_ocibuild(case: Case, base: Path, work: Path, out: Path, ctxs: list[Path], original: str) -> dict:
    """Cold: an empty ``--cache`` and empty installer caches (uv, pip), so the wheels come from PyPI as they do
    for pip in a Dockerfile. Warm: the same caches, score.py edited."""
    home = work / "ocibuild-home"
    home.mkdir()
    env = clean_env(home)
    argv = ocibuild_argv(case, base, home / "cache", "--output", str(out / "o.tar"))
    rows = {}
    try:
        for row in ("cold", "warm"):
            if row == "warm":
                edit(case, ctxs)
            rows[row] = run_tree(argv, env)
            rows[row]["tarball_bytes"] = tar_size(out / "o.tar")
            log(f"  ocibuild {row}: {rows[row]['seconds']} s")
    finally:
        restore(case, ctxs, original)
        shutil.rmtree(home, ignore_errors=True)
    return rows


def run_docker(
    engine: Dockerd, ctx: Path, out: Path, case: Case, ctxs: list[Path], original: str, key: str
) -> dict:
    """Cold: the image removed, ``docker builder prune -af`` (BuildKit's cache and context snapshots gone) and
    ``--no-cache``; the base image loaded. Warm: the cache the cold build left, score.py edited."""
    env = {**clean_env(), **engine.env, "DOCKER_BUILDKIT": "1"}
    daemon = Daemon(engine.proc.pid, str(engine.dir))
    rows = {}
    try:
        for row in ("cold", "warm"):
            if row == "cold":
                engine.docker("rmi", "-f", "bench-docker:1", check=False)
                engine.docker("builder", "prune", "-af", check=False)
            else:
                edit(case, ctxs)
            no_cache = "--no-cache " if row == "cold" else ""
            argv = ["sh", "-c",
                    f'"{DOCKER_CLI}" build -q {no_cache}--network host -t bench-docker:1 '
                    f'--build-arg BASE_IMAGE={BASE_DOCKER_NAME} "{ctx}" >/dev/null && '
                    f'"{DOCKER_CLI}" save -o "{out}/d.tar" bench-docker:1']  # fmt: skip
            rows[row] = run_tree(argv, env, daemon)
            rows[row]["tarball_bytes"] = tar_size(out / "d.tar")
            log(f"  {key} {row}: {rows[row]['seconds']} s")
    finally:
        restore(case, ctxs, original)
        engine.docker("rmi", "-f", "bench-docker:1", check=False)
        engine.docker("builder", "prune", "-af", check=False)
    return rows


def run_buildah(
    base: Path, work: Path, ctx: Path, out: Path, case: Case, ctxs: list[Path], original: str, key: str
) -> dict:
    """A private store (``--root``/``--runroot`` under the work folder, overlay) holding only the base (pulled from
    its docker-archive, untimed). Cold: ``--layers --no-cache``. Warm: ``--layers`` on the store the cold build
    left (its intermediate images are the cache), score.py edited. Then ``buildah push`` to a docker-archive."""
    store = work / "buildah"
    flags = ["--root", str(store / "root"), "--runroot", str(store / "run"), "--storage-driver", "overlay"]
    env = clean_env()
    subprocess.run([BUILDAH, *flags, "pull", "-q", f"docker-archive:{base}/docker-archive.tar"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    rows = {}
    try:
        for row in ("cold", "warm"):
            if row == "warm":
                edit(case, ctxs)
            no_cache = ["--no-cache"] if row == "cold" else []
            b = " ".join(f'"{f}"' for f in flags)
            build = " ".join(
                f'"{a}"' for a in [BUILDAH, *flags, "build", "-q", "--layers", *no_cache, "--pull-never",
                                   "--network", "host", "--build-arg", f"BASE_IMAGE=docker.io/{BASE_DOCKER_NAME}",
                                   "-t", "bench-buildah:1", str(ctx)]
            )  # fmt: skip
            argv = ["sh", "-c", f'{build} >/dev/null && "{BUILDAH}" {b} push -q bench-buildah:1 '
                                f'"docker-archive:{out}/b.tar:bench-buildah:1"']  # fmt: skip
            rows[row] = run_tree(argv, env)
            rows[row]["tarball_bytes"] = tar_size(out / "b.tar")
            log(f"  {key} {row}: {rows[row]['seconds']} s")
    finally:
        restore(case, ctxs, original)
        subprocess.run([BUILDAH, *flags, "rmi", "-af"], capture_output=True, env=env)
        unmount_under(store)
        shutil.rmtree(store, ignore_errors=True)
    return rows


def unmount_under(path: Path) -> None:
    root = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f if ln.split()[4].startswith(root + "/")]
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], capture_output=True, check=False)


# ---------------------------------------------------------------- one case


def bench_case(name: str, args, base: Path, work: Path, engine: Dockerd | None, pip_wheel: Path) -> dict:
    case = make_case(name, work, args.quick)
    original = case.score.read_text()
    log(f"case {name}: {case.label}")
    ctx, ctx_pip, prep = contexts(case, base, work, pip_wheel)
    ctxs = [ctx, ctx_pip]
    out = work / "out"
    out.mkdir(exist_ok=True)
    doc: dict = {"label": case.label, "context": prep, "tools": {}}
    tools = doc["tools"]
    try:
        tools["ocibuild"] = run_ocibuild(case, base, work, out, ctxs, original)
        if engine is not None:
            for key, c in (("docker", ctx), ("docker_pip", ctx_pip)):
                try:
                    tools[key] = run_docker(engine, c, out, case, ctxs, original, key)
                except RuntimeError as e:
                    log(f"  {key} failed: {str(e)[-800:]}")
                    doc[f"{key}_error"] = str(e)[-1500:]
        if shutil.which(BUILDAH):
            for key, c in (("buildah", ctx), ("buildah_pip", ctx_pip)):
                try:
                    tools[key] = run_buildah(base, work, c, out, case, ctxs, original, key)
                except RuntimeError as e:
                    log(f"  {key} failed: {str(e)[-800:]}")
                    doc[f"{key}_error"] = str(e)[-1500:]
    finally:
        for p in (ctx, ctx_pip, out, work / f"{name}-in"):
            shutil.rmtree(p, ignore_errors=True)
    mine = tools["ocibuild"]
    for rows in tools.values():
        for row, r in rows.items():
            r["x_ocibuild_seconds"] = round(r["seconds"] / mine[row]["seconds"], 2)
            written = r["written_bytes"] + r.get("daemon_written_bytes", 0)
            r["x_ocibuild_written"] = round(written / max(1, mine[row]["written_bytes"]), 2)
    return doc


# ---------------------------------------------------------------- report


def table(doc: dict) -> str:
    lines = []
    for case in doc["cases"].values():
        lines.append(f"\n{case['label']}")
        lines.append(
            f"  {'':<62} {'seconds':>8} {'x oci':>6} {'tool MB':>8} {'daemon MB':>9} {'written':>9} {'x oci':>6} {'tarball':>9}"
        )
        for key, rows in case["tools"].items():
            for row, r in rows.items():
                written = r["written_bytes"] + r.get("daemon_written_bytes", 0)
                daemon = f"{r['daemon_peak_rss_mb']:.0f}" if "daemon_peak_rss_mb" in r else ""
                lines.append(
                    f"  {TOOLS[key] + ', ' + row:<62} {r['seconds']:>8.2f} {r['x_ocibuild_seconds']:>6.2f} "
                    f"{r['peak_rss_mb']:>8.0f} {daemon:>9} {human(written):>9} {r['x_ocibuild_written']:>6.2f} "
                    f"{human(r['tarball_bytes']):>9}"
                )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the example and a 128 MiB model, no torch")
    parser.add_argument(
        "--only", action="append", choices=["example", "model", "torch"], help="run only these cases"
    )
    parser.add_argument("--workdir", type=Path, help="where the temporary files go (default: under /tmp)")
    parser.add_argument(
        "--json", type=Path, help="default bench/peers-results.json (--quick: peers-results-quick.json)"
    )
    args = parser.parse_args()
    cases = args.only or (["example", "model"] if args.quick else ["example", "model", "torch"])
    json_path = args.json or BENCH / ("peers-results-quick.json" if args.quick else "peers-results.json")
    base = base_fixture()
    if base is None:
        return 1
    work = Path(tempfile.mkdtemp(prefix="ocibuild-peers-", dir=args.workdir))
    doc: dict = {
        "quick": args.quick,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip(),
        "cores": len(os.sched_getaffinity(0)),
        "load_before": os.getloadavg()[0],
        "versions": {
            "dockerd": tool_version(["dockerd", "--version"]),
            "buildah": tool_version([BUILDAH, "--version"]),
        },
        "cases": {},
    }  # fmt: skip
    engine = None
    started = time.perf_counter()
    try:
        wheels = work / "pip-wheel"
        subprocess.run([PY, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), "pip"],
                       check=True, env=clean_env())  # fmt: skip
        pip_wheel = next(wheels.glob("pip-*.whl"))
        doc["versions"]["pip_in_dockerfile"] = pip_wheel.name
        if shutil.which("dockerd"):
            engine = Dockerd()
            engine.start()
            engine.docker("load", "-i", str(base / "docker-archive.tar"))
            doc["versions"]["docker_storage_driver"] = engine.driver
        for name in cases:
            doc["cases"][name] = bench_case(name, args, base, work, engine, pip_wheel)
    finally:
        if engine is not None:
            engine.remove()
        unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    closing = finish(doc, json_path, started)
    print(table(doc))
    print(f"\n{closing}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
