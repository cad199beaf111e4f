"""Start the real `server_vllm.py` as a user would, for end-to-end tests (loopback only)."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence

import httpx

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerProcess:
    base: str  # http://127.0.0.1:PORT
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def running_server(tmp: Path, args: Sequence[str] = (), api_key: Optional[str] = None,
                   timeout: float = 600.0, script: str = "server_vllm.py") -> Iterator[str]:
    """Yield `http://127.0.0.1:PORT` of a healthy server (`script`: the entry point); stop it
    after and check that no process it started outlives it. The server log is in `tmp/server.log`."""
    with server_process(tmp, args, api_key, timeout, script) as server:
        yield server.base


@contextlib.contextmanager
def server_process(tmp: Path, args: Sequence[str] = (), api_key: Optional[str] = None,
                   timeout: float = 600.0, script: str = "server_vllm.py") -> Iterator[ServerProcess]:
    """`running_server`, yielding the process too (for tests that watch it exit)."""
    port = free_port()
    log_path = tmp / "server.log"
    env = {**os.environ, "TMPDIR": str(tmp), "VLLM_RPC_BASE_PATH": str(tmp), "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, str(ROOT / script), "--host", "127.0.0.1", "--port", str(port), *args]
    if api_key:
        command += ["--api-key", api_key]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            deadline = time.time() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError("server exited:\n" + log_path.read_text()[-4000:])
                try:
                    if httpx.get(f"{base}/health", headers=headers, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError("server never became healthy:\n" + log_path.read_text()[-4000:])
                time.sleep(1)
            yield ServerProcess(base, process, log_path)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
    # A worker whose parent was killed (an engine-death test) notices on its own within seconds.
    deadline = time.time() + 15
    while True:
        leftovers = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
        if not leftovers or time.time() > deadline:
            break
        time.sleep(0.5)
    assert leftovers == [], f"processes of the server outlived it: {leftovers}"
