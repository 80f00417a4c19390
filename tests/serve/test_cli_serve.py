"""`heron serve` as a user runs it: a subprocess on a free port, stopped with SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serve_helpers import encode_image, shapes_image, wait_ready

from heron.cli.main import main


def _read_url(process: subprocess.Popen, timeout: float = 60) -> str:
    """The URL from the server's "heron serve: <arch> on http://..." line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the server exited early: {process.wait()}")
        if line.startswith("heron serve:") and " on http://" in line:
            return line.rsplit(" on ", 1)[1].strip()
    raise AssertionError("the server printed no URL")


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")
def test_sigterm_finishes_the_request_in_flight_and_exits_0(tiny_model):
    _, config, weights = tiny_model
    # A batch waits up to 1 s for company, so the request below is in flight when SIGTERM comes.
    command = [sys.executable, "-m", "heron", "serve", "--config-file", config]
    command += ["--weights", weights, "--port", "0", "--max-wait-ms", "1000"]
    command += ["--log-level", "warning"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = _read_url(process)
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        client = httpx.Client(base_url=url, timeout=60)
        wait_ready(client)
        png = encode_image(shapes_image(64, 80))
        result = {}

        def send():
            result["response"] = client.post("/v1/predict", files={"image": ("a.png", png)})

        sender = threading.Thread(target=send)
        sender.start()
        deadline = time.monotonic() + 10
        while "heron_queue_depth 1.0" not in httpx.get(url + "/metrics").text:
            assert time.monotonic() < deadline, "the request never reached the queue"
            time.sleep(0.02)
        process.send_signal(signal.SIGTERM)
        sender.join(30)
        response = result["response"]
        assert response.status_code == 200, response.text
        assert response.json()["image"] == {"height": 64, "width": 80}
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_missing_weights_file_is_a_usage_error(tiny_model, tmp_path, capsys):
    _, config, _ = tiny_model
    missing = str(tmp_path / "none.pth")
    code = main(["serve", "--config-file", config, "--weights", missing, "--port", "0"])
    assert code == 2
    assert "--weights" in capsys.readouterr().err


def test_bad_limit_is_a_usage_error(tiny_model, capsys):
    _, config, weights = tiny_model
    code = main(["serve", "--config-file", config, "--weights", weights, "--max-batch", "0"])
    assert code == 2
    assert "--max-batch must be >= 1" in capsys.readouterr().err
