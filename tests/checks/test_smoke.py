"""Tests for ocibuild.checks.smoke and the sandbox under it (``rootfs.sandbox``), on images built on the real Debian
Python base with stdlib-only entry scripts: each way of running the image serves it (read-only root, only /tmp
writable, the image's user where the sandbox can), a failing ``init()`` or ``run()`` is one line plus the server's
log, and neither a folder nor a process outlives the test, Ctrl-C and SIGKILL included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ocibuild import Environment, InferenceConfig, package
from ocibuild.checks.smoke import SmokeOptions, image_user, smoke_test
from ocibuild.errors import CheckError
from ocibuild.events import Progress, Step, Warned
from ocibuild.rootfs import sandbox
from ocibuild.rootfs.sandbox import METHODS, Workdir, find_method, sweep
from tests.conftest import REPO

pytestmark = pytest.mark.slow  # the real base image, unpacked for every run

PROBE = """import json
import os

input_sample = {"data": [1, 2, 3]}


def init():
    global facts
    facts = {"uid": os.getuid(), "gid": os.getgid(), "home": os.environ.get("HOME")}
    try:
        open("/var/azureml-app/written", "w").close()
        facts["app"] = "writable"
    except OSError as e:
        facts["app"] = e.strerror
    with open("/tmp/probe", "w") as f:
        f.write("x")


def run(raw_data):
    return {"doubled": [2 * x for x in json.loads(raw_data)["data"]], **facts}
"""
FAILS_INIT = "def init():\n    raise RuntimeError('no model at ' + '/var/azureml-app/model.bin')\n\n\ndef run(raw):\n    return 1\n"
FAILS_RUN = "def init():\n    pass\n\n\ndef run(raw):\n    raise ValueError('cannot score ' + raw)\n"
NO_SAMPLE = "def init():\n    pass\n\n\ndef run(raw):\n    return raw\n"
SLOW_INIT = "import time\n\n\ndef init():\n    time.sleep(600)\n\n\ndef run(raw):\n    return raw\n"


def build(tmp: Path, base_ref: str, script: str, name: str, **kwargs) -> package:
    folder = tmp / name
    folder.mkdir()
    (folder / "score.py").write_text(script)
    (folder / "model.bin").write_bytes(b"weights")
    return package(
        [folder / "model.bin"],
        InferenceConfig(folder / "score.py", environment=Environment()),
        base_ref,
        cache=tmp / "cache",
        **kwargs,
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory, base_ref):
    tmp = tmp_path_factory.mktemp("smoke-images")
    scripts = {"probe": PROBE, "fails-init": FAILS_INIT, "fails-run": FAILS_RUN, "no-sample": NO_SAMPLE}
    return {name: build(tmp, base_ref, script, name).image for name, script in scripts.items()}


def smoke_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("ocibuild-smoke-*"))


def sandboxed_pids() -> list[int]:
    """Processes whose root is inside a smoke test's folder: a server still running."""
    prefix = os.path.join(tempfile.gettempdir(), "ocibuild-smoke-")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "root").startswith(prefix):
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def run_smoke(image, options: SmokeOptions | None = None, methods=None) -> list:
    events: list = []
    before = smoke_dirs()
    try:
        smoke_test(image, options or SmokeOptions(), Progress(events.append), methods)
    finally:
        assert smoke_dirs() <= before, "the smoke test left its folder behind"
        assert not sandboxed_pids(), "the smoke test left a process running"
    return events


def answer(events) -> dict:
    (line,) = [e.message for e in events if isinstance(e, Step) and "POST /score" in e.message]
    return json.loads(line.split("answered 200: ", 1)[1])


@pytest.mark.parametrize("name", METHODS)
def test_each_sandbox_serves_the_image_read_only_as_its_user(images, name):
    method = find_method("amd64", [name])
    if isinstance(method, str):
        pytest.skip(f"{name} cannot run here: {method}")
    got = answer(run_smoke(images["probe"], methods=[name]))
    assert got["doubled"] == [2, 4, 6]  # the script's own input_sample, scored
    assert got["home"] == "/tmp"
    # unshare -r maps only the builder's own uid, as 0; every other way runs as the image's 65532:65532.
    assert (got["uid"], got["gid"]) == ((0, 0) if name == "unshare-user" else (65532, 65532))
    # A plain chroot cannot make the root read-only: there the non-root user is what keeps the app folder safe.
    assert got["app"] == ("Permission denied" if name == "chroot" else "Read-only file system")


def test_a_failing_init_is_one_line_with_the_servers_log(images):
    with pytest.raises(CheckError) as caught:
        run_smoke(images["fails-init"])
    first, *rest = str(caught.value).splitlines()
    assert first.startswith("smoke test failed: the server did not become Healthy: init() of entry script ")
    assert (
        "raised RuntimeError: no model at /var/azureml-app/model.bin (the server exited with status 3)"
        in first
    )
    assert rest[0] == "the server's last log lines:"
    assert any("Traceback (most recent call last)" in line for line in rest)


def test_a_failing_run_is_one_line(images):
    options = SmokeOptions(b'{"data": [1]}', "--sample-input sample.json")
    with pytest.raises(CheckError) as caught:
        run_smoke(images["fails-run"], options)
    first = str(caught.value).splitlines()[0]
    assert first.startswith("smoke test failed: POST /score with --sample-input sample.json answered 500 ")
    assert "cannot score" in first


def test_without_a_sample_it_says_init_succeeded_and_a_given_sample_is_sent(images):
    steps = [e.message for e in run_smoke(images["no-sample"]) if isinstance(e, Step)]
    assert any(s.startswith("smoke test: Healthy after ") for s in steps)
    assert any("init() succeeded; no sample sent" in s for s in steps)
    options = SmokeOptions(b"[1, 2]", "--sample-input s.json")  # run(raw_data) returns the body's text
    steps = [e.message for e in run_smoke(images["no-sample"], options) if isinstance(e, Step)]
    assert 'smoke test: POST /score with --sample-input s.json answered 200: "[1, 2]"' in steps


def test_a_machine_that_cannot_run_the_image_warns_and_goes_on(images, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no unshare, no chroot, no bwrap
    events = run_smoke(images["probe"])
    (warning,) = [e.message for e in events if isinstance(e, Warned)]
    assert warning.startswith("smoke test skipped: this machine cannot run the image (")
    assert "unshare is not installed" in warning and warning.endswith("the build goes on")
    arm = find_method("arm64")
    assert arm == "the image is for arm64 and this machine is x86_64"


def test_another_architecture_runs_emulated_only_through_a_usable_binfmt_entry(monkeypatch, tmp_path):
    """A qemu-user entry counts when it is enabled and has the F flag (its interpreter works inside a chroot)."""
    monkeypatch.setattr(sandbox, "BINFMT_MISC", tmp_path)
    assert sandbox.emulator("arm64") is None
    msg = find_method("arm64", emulated=True)
    assert isinstance(msg, str) and "no qemu-user emulator" in msg
    entry = tmp_path / "qemu-aarch64"
    entry.write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OC\noffset 0\n")
    assert sandbox.emulator("arm64") is None  # without F the chroot would need the interpreter inside
    entry.write_text("disabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\n")
    assert sandbox.emulator("arm64") is None
    entry.write_text("enabled\ninterpreter /usr/bin/qemu-aarch64-static\nflags: OCF\noffset 0\n")
    assert sandbox.emulator("arm64") == "qemu-aarch64"
    assert (
        find_method("arm64") == "the image is for arm64 and this machine is x86_64"
    )  # bytecode: never emulated
    assert not isinstance(find_method("arm64", emulated=True), str)


def test_the_image_user_is_read_from_its_own_files(images, tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\nstaff:x:50:\n")
    assert image_user("", tmp_path) is None
    assert image_user("65532:65532", tmp_path) == (65532, 65532)
    assert image_user("app", tmp_path) == (1000, 1001)
    assert image_user("1000", tmp_path) == (1000, 1001)
    assert image_user("4242", tmp_path) == (4242, 0)  # no entry: group 0, as Docker does
    assert image_user("app:staff", tmp_path) == (1000, 50)
    with pytest.raises(CheckError, match="user 'ghost' is not in its /etc/passwd"):
        image_user("ghost", tmp_path)


def _cli_smoke(tmp: Path, base_ref: str) -> subprocess.Popen[str]:
    """``ocibuild package --smoke-test`` of an image whose init() sleeps, with its output readable."""
    (tmp / "score.py").write_text(SLOW_INIT)
    (tmp / "model.bin").write_bytes(b"weights")
    argv = [sys.executable, "-m", "ocibuild", "package", tmp / "model.bin", "--entry-script", tmp / "score.py",
            "--base", base_ref, "--cache", tmp / "cache", "--oci-layout", tmp / "out", "--smoke-test"]  # fmt: skip
    # A suite started in the background of a non-interactive shell hands its children SIGINT ignored: give the
    # build the default disposition a user's terminal gives it, so that Ctrl-C (SIGINT) reaches it.
    return subprocess.Popen(
        [str(a) for a in argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _wait_for_server(proc: subprocess.Popen[str]) -> list[int]:
    deadline = time.monotonic() + 120
    while not (pids := sandboxed_pids()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the smoke test's server never started"
        time.sleep(0.1)
    return pids


def test_ctrl_c_kills_the_server_and_removes_the_folder(tmp_path, base_ref):
    before = smoke_dirs()
    proc = _cli_smoke(tmp_path, base_ref)
    _wait_for_server(proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "ocibuild: interrupted; nothing was written at the destination"
    assert not sandboxed_pids() and smoke_dirs() <= before
    assert not (tmp_path / "out").exists()


def test_a_sigkilled_build_takes_its_server_along_and_the_next_sweeps_the_folder(tmp_path, base_ref):
    before = smoke_dirs()
    proc = _cli_smoke(tmp_path, base_ref)
    _wait_for_server(proc)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while sandboxed_pids():  # the server got SIGKILL when its parent died
        assert time.monotonic() < deadline, "the server outlived the SIGKILLed build"
        time.sleep(0.1)
    (left,) = smoke_dirs() - before  # a SIGKILLed process cannot clean up; the next one does
    os.utime(left, (time.time() - 60, time.time() - 60))
    sweep(left.parent, "ocibuild-smoke-")
    assert not left.exists()
    with Workdir("ocibuild-smoke-") as work:  # and a live one is never swept
        sweep(work.path.parent, "ocibuild-smoke-")
        os.utime(work.path, (time.time() - 60, time.time() - 60))
        sweep(work.path.parent, "ocibuild-smoke-")
        assert work.root.is_dir()
