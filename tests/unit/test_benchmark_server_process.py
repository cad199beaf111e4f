"""benchmarks/server_process.py, which every benchmark uses to wait for the servers it starts and
to stop them: on a real process serving real HTTP on loopback."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from benchmarks.server_process import stop, wait_healthy

# Answers 200 on /health only, after a second (as a server that is still loading its model).
SERVER = """
import http.server, sys, time
time.sleep(1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404); self.end_headers()
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_waits_until_the_server_answers_and_stops_it():
    port = free_port()
    process = start(SERVER, str(port))
    try:
        started = time.monotonic()
        wait_healthy(port, process, timeout=60)
        assert time.monotonic() - started >= 0.9  # it did wait for the server's start-up
    finally:
        stop(process, grace=10)
    assert process.returncode is not None  # the whole group is gone


def test_another_path_is_waited_for():
    port = free_port()
    process = start(SERVER, str(port))
    try:
        with pytest.raises(RuntimeError, match="did not become ready"):
            wait_healthy(port, process, timeout=3, path="/v1/models")  # 404 there
    finally:
        stop(process, grace=10)


def test_a_server_that_exits_is_reported_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("ValueError: no such model\n")
    process = start("import sys; sys.exit(3)")
    with pytest.raises(RuntimeError, match=r"exited with 3:\nValueError: no such model"):
        wait_healthy(free_port(), process, log, timeout=30)


def test_a_server_that_ignores_sigterm_is_killed():
    process = start("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(flush=True); "
                    "time.sleep(60)")
    time.sleep(0.5)  # let it install its handler
    stop(process, grace=1)
    assert process.returncode == -9
