"""Waiting for and stopping the server processes a benchmark measures (ours, vLLM's stock
server, llama-cpp-python's server), started with `start_new_session=True` so that a whole
server, its engine processes included, is stopped through its process group."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Optional

import httpx


def wait_healthy(port: int, process: subprocess.Popen, log: Optional[Path] = None, *,
                 timeout: float = 900.0, path: str = "/health") -> None:
    """Until `GET path` on 127.0.0.1:`port` answers 200 (`/v1/models` for servers without
    `/health`). Raises RuntimeError, with the end of `log` when given, if the process exits or
    `timeout` seconds pass first."""
    def failed(what: str) -> RuntimeError:
        tail = f":\n{log.read_text()[-3000:]}" if log is not None and log.exists() else ""
        return RuntimeError(f"server on port {port} {what}{tail}")

    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            return_code = process.returncode
            raise failed(f"exited with {return_code}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise failed("did not become ready")


def stop(process: subprocess.Popen, grace: float = 60.0) -> None:
    """Stop the server's process group: SIGTERM (SIGINT is ignored in a background job, e.g.
    `nohup ... &`; uvicorn shuts down gracefully on either), SIGKILL after `grace` seconds."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


__all__ = ["stop", "wait_healthy"]
