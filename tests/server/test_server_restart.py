"""Nothing is lost on a crash: the server runs as a subprocess, is killed with SIGKILL mid-run and restarted.

A test-only node pack (written to a temporary folder and loaded through FLUXGRAPH_EXTRA_NODE_PACKAGES) logs
every run of its node to a file, so the test can count how often each prompt really ran.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]

SLOW_PACK = '''
import os
import time
from pathlib import Path
from engine.core.schema import Float, NodeResult, String, node

@node("SlowLogged", inputs=[String("label", "x"), Float("first_seconds", 0.0, min=0, max=600),
                            Float("later_seconds", 0.0, min=0, max=600)],
      outputs=[], output_node=True, category="test")
def slow_logged(ctx, label, first_seconds, later_seconds):
    log = Path(ctx.folders.base_dir) / "runs.txt"
    previous = log.read_text().split() if log.exists() else []
    with open(log, "a") as stream:
        stream.write(label + "\\n")
        stream.flush()
        os.fsync(stream.fileno())
    seconds = first_seconds if label not in previous else later_seconds
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.02)
        ctx.check_interrupt()
    return NodeResult(ui={"text": [label]})

NODES = [slow_logged]
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, base: Path, packages: Path, port: int) -> None:
        env = {**os.environ, "PYTHONPATH": f"{packages}{os.pathsep}{ROOT}",
               "FLUXGRAPH_EXTRA_NODE_PACKAGES": "fg_restart_nodes", "HF_HUB_OFFLINE": "1"}
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(base / f"server-{time.time_ns()}.log", "wb")  # noqa: SIM115 - closed in kill()
        self.process = subprocess.Popen([sys.executable, "-m", "engine.server", "--base-dir", str(base),
                                         "--port", str(port)], env=env, cwd=base, stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self.wait_until_up()

    def wait_until_up(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {Path(self.log.name).read_text()}")
            try:
                self.get("/system_stats")
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        raise TimeoutError("server did not start")

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict):
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read() or b"null")

    def job(self, prompt_id: str):
        return self.get(f"/api/jobs/{prompt_id}")

    def wait_for(self, prompt_id: str, statuses, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(prompt_id)
            if job["status"] in statuses:
                return job
            time.sleep(0.02)
        raise TimeoutError(f"{prompt_id} never reached {statuses}: {self.job(prompt_id)}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        self.process.send_signal(sig)
        self.process.wait(20)
        self.log.close()


def slow_prompt(label: str, first: float = 0.0, later: float = 0.0) -> dict:
    return {"prompt": {"1": {"class_type": "SlowLogged", "inputs": {"label": label, "first_seconds": first,
                                                                    "later_seconds": later}}},
            "prompt_id": label}


@pytest.mark.slow
def test_sigkill_mid_run_loses_nothing_and_resumes_the_running_prompt_once(tmp_path):
    packages = tmp_path / "packages"
    (packages / "fg_restart_nodes" / "slow").mkdir(parents=True)
    (packages / "fg_restart_nodes" / "__init__.py").write_text("")
    (packages / "fg_restart_nodes" / "slow" / "__init__.py").write_text(textwrap.dedent(SLOW_PACK))
    base = tmp_path / "base"
    base.mkdir()
    port = free_port()

    server = ServerProcess(base, packages, port)
    server.post("/prompt", slow_prompt("done"))
    server.wait_for("done", ("completed",))
    server.post("/prompt", slow_prompt("crash", first=120.0, later=1.5))  # only its first run is slow
    server.post("/prompt", slow_prompt("next1"))
    server.post("/prompt", slow_prompt("next2"))
    server.wait_for("crash", ("in_progress",))
    wait_until(lambda: "crash" in (base / "runs.txt").read_text().split(), what="the crash prompt to start its node")
    server.kill(signal.SIGKILL)
    assert server.process.returncode == -signal.SIGKILL

    server = ServerProcess(base, packages, port)
    try:
        history = server.get("/history")
        assert list(history) == ["done"] and history["done"]["status"]["status_str"] == "success"
        queue = server.get("/queue")
        waiting = [item[1] for item in queue["queue_running"] + sorted(queue["queue_pending"], key=lambda i: i[0])]
        assert waiting == ["crash", "next1", "next2"]  # the resumed prompt first, the pending ones kept
        assert server.job("crash")["resumed"] is True
        for label in ("crash", "next1", "next2"):
            assert server.wait_for(label, ("completed", "failed", "cancelled"))["status"] == "completed"
        entry = server.get("/history/crash")["crash"]
        assert entry["status"]["resumed"] is True and entry["outputs"]["1"]["text"] == ["crash"]
        assert (base / "runs.txt").read_text().split() == ["done", "crash", "crash", "next1", "next2"]
        assert list(server.get("/history")) == ["done", "crash", "next1", "next2"]

        # A graceful stop (SIGTERM) in the middle of a prompt puts it back: it runs again after the restart.
        server.post("/prompt", slow_prompt("graceful", first=120.0, later=0.0))
        server.wait_for("graceful", ("in_progress",))
    finally:
        server.kill(signal.SIGTERM)
    assert server.process.returncode in (0, -signal.SIGTERM)
    server = ServerProcess(base, packages, port)
    try:
        job = server.wait_for("graceful", ("completed", "failed", "cancelled"))
        assert job["status"] == "completed" and job["resumed"] is True
        assert (base / "runs.txt").read_text().split()[-2:] == ["graceful", "graceful"]
    finally:
        server.kill(signal.SIGTERM)
