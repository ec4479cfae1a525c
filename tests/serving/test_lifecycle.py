"""Start-up, init(), failures, graceful stop and worker processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import pytest
import requests

from .conftest import wait_for

GATED_INIT = """
    import os, time

    def init():
        with open("init.log", "a") as f:
            f.write("started\\n")
        while not os.path.exists("go"):  # the test decides when init() ends
            time.sleep(0.01)

    def run(raw_data):
        return {"ok": True}
"""


def test_healthy_only_after_init(start_server) -> None:
    server = start_server(GATED_INIT, ready=False)
    server.wait_status("/health/live", 200)  # serving while init() runs
    wait_for(lambda: (server.app_root / "init.log").exists())
    assert server.status("/") == 503
    assert server.status("/health/ready") == 503
    r = server.post("/score", data="{}")
    assert r.status_code == 503 and "init()" in r.json()["message"]

    (server.app_root / "go").touch()
    server.wait_status("/", 200, timeout=5)
    assert server.status("/health/ready") == 200
    assert server.post("/score", data="{}").json() == {"ok": True}
    assert (server.app_root / "init.log").read_text() == "started\n"  # exactly once


def test_sigterm_during_init_exits_promptly(start_server) -> None:
    server = start_server(GATED_INIT, ready=False)
    wait_for(lambda: (server.app_root / "init.log").exists())
    assert server.stop(signal.SIGTERM, timeout=5) == 0


def test_init_raising_exits_nonzero_with_clear_log(start_server) -> None:
    server = start_server(
        """
        def init():
            raise RuntimeError("model file is missing")

        def run(raw_data):
            return 1
        """,
        ready=False,
    )
    assert server.proc.wait(10) == 3
    log = server.log()
    assert "init() of entry script" in log and "RuntimeError: model file is missing" in log
    assert "exiting with status 3" in log and "Traceback" in log


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("def init():\n    pass\n", "does not define a run(raw_data) function"),
        ("def run(raw_data):\n    pass\n", "does not define an init() function"),
        ("import no_such_module_here\n", "ModuleNotFoundError"),
    ],
)
def test_unusable_entry_script_exits_3(start_server, script, message) -> None:
    server = start_server(script, ready=False)
    assert server.proc.wait(10) == 3
    assert message in server.log()


def test_missing_entry_script_setting_exits_2(start_server) -> None:
    server = start_server("", env={"AZUREML_ENTRY_SCRIPT": ""}, ready=False)
    assert server.proc.wait(10) == 2
    assert "AZUREML_ENTRY_SCRIPT" in server.log()


def test_cli_arguments_model_dir_and_sibling_imports(start_server, tmp_path) -> None:
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "weights.json").write_text("[2, 3]")
    files = {
        "src/helper.py": """
            def scale(x, w):
                return [v * w[0] + w[1] for v in x]
        """,
        "src/main_script.py": """
            import json, os
            from helper import scale  # a sibling module of the entry script

            def init():
                global weights
                with open(os.path.join(os.environ["AZUREML_MODEL_DIR"], "weights.json")) as f:
                    weights = json.load(f)

            def run(data):
                return scale(json.loads(data)["x"], weights)
        """,
    }
    server = start_server(
        "raise SystemExit('the default entry script must not be used')",
        args=["--entry-script", "src/main_script.py", "--model-dir", str(model_dir), "--host", "127.0.0.1"],
        env={"AZUREML_ENTRY_SCRIPT": "score.py", "AZUREML_MODEL_DIR": "/nonexistent"},
        files=files,
    )
    assert server.post("/score", data='{"x": [1, 2]}').json() == [5, 7]


SLOW_RUN = """
    import json, os, time

    def init():
        pass

    def run(raw_data):
        open("started", "w").close()
        while not os.path.exists("go"):
            time.sleep(0.01)
        return {"finished": True}
"""


def test_sigterm_lets_in_flight_request_finish(start_server) -> None:
    server = start_server(SLOW_RUN)
    result: dict = {}

    def slow_request() -> None:
        r = server.post("/score", data="{}", timeout=10)
        result.update(status=r.status_code, body=r.json(), connection=r.headers.get("Connection"))

    client = threading.Thread(target=slow_request)
    client.start()
    wait_for(lambda: (server.app_root / "started").exists())
    server.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: server.status("/health/live") is None, timeout=5)  # no longer accepting
    assert client.is_alive() and server.proc.poll() is None  # still answering the slow request

    (server.app_root / "go").touch()
    client.join(10)
    assert result == {"status": 200, "body": {"finished": True}, "connection": "close"}
    assert server.proc.wait(10) == 0
    assert "Received SIGTERM" in server.log()


def test_scoring_timeout(start_server) -> None:
    server = start_server(SLOW_RUN, env={"SCORING_TIMEOUT_MS": "100"})
    start = time.monotonic()
    r = server.post("/score", data="{}")
    assert r.status_code == 504 and r.json() == {"message": "Scoring timeout after 100 ms"}
    assert r.headers["x-ms-run-function-failed"] == "True"
    assert time.monotonic() - start < 2
    (server.app_root / "go").touch()
    assert server.post("/score", data="{}").json() == {"finished": True}


def test_max_concurrent_runs_serialises_run(start_server) -> None:
    server = start_server(
        """
        import threading, time
        active = []
        lock = threading.Lock()
        def init():
            pass
        def run(raw_data):
            with lock:
                active.append(1)
                peak = len(active)
            time.sleep(0.05)
            with lock:
                active.pop()
            return peak
        """,
        env={"OCIBUILD_MAX_CONCURRENT_RUNS": "1"},
    )
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda: results.append(server.post("/score", data="{}").json()))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results == [1] * 6


WORKERS_SCRIPT = """
    import json, os

    def init():
        with open("init.log", "a") as f:
            f.write(f"{os.getpid()}\\n")
        if os.environ.get("FAIL_INIT"):
            raise ValueError("init failed on purpose")

    def run(raw_data):
        return {"pid": os.getpid()}
"""


def test_worker_count_2_serves_and_stops(start_server) -> None:
    server = start_server(WORKERS_SCRIPT, env={"WORKER_COUNT": "2"})
    init_log = server.app_root / "init.log"
    wait_for(lambda: len(init_log.read_text().splitlines()) == 2)
    pids = {int(p) for p in init_log.read_text().split()}
    assert server.proc.pid not in pids  # each worker, not the supervisor, ran init()
    wait_for(lambda: server.log().count("is ready") == 2)
    for _ in range(10):
        r = server.post("/score", data="{}")
        assert r.status_code == 200 and r.json()["pid"] in pids
    assert server.stop(signal.SIGTERM) == 0


def test_worker_init_failure_stops_the_service(start_server) -> None:
    server = start_server(WORKERS_SCRIPT, env={"WORKER_COUNT": "2", "FAIL_INIT": "1"}, ready=False)
    assert server.proc.wait(10) == 3
    assert "init failed on purpose" in server.log()
    with pytest.raises(requests.ConnectionError):
        requests.get(server.url, timeout=1)


def test_crashed_worker_is_replaced(start_server) -> None:
    server = start_server(WORKERS_SCRIPT, env={"WORKER_COUNT": "2"})
    wait_for(lambda: server.log().count("is ready") == 2)
    victim = int((server.app_root / "init.log").read_text().split()[0])
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: server.log().count("is ready") == 3)
    assert "starting a new one" in server.log()
    assert json.loads(server.post("/score", data="{}").text)["pid"] != victim
    assert server.stop(signal.SIGTERM) == 0
