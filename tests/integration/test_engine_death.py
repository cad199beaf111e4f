"""The server's runner when the engine dies: 503 at once, then the process exits non-zero
(`functionary.api.serve`), on a fake engine that can be told to die (the real engines are
killed in tests/e2e/test_engine_reliability.py)."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx

from functionary.api import create_app
from functionary.api.serve import ENGINE_DEAD_EXIT_CODE, serve
from functionary.backends.base import WatchableBackend
from functionary.backends.fake import FakeBackend
from tests.integration.conftest import MODEL, USER, make_settings
from tests.support.server import free_port


class MortalBackend(FakeBackend):
    """A fake engine that dies when `kill()` is called from any thread."""

    def __init__(self) -> None:
        super().__init__(("Hello!",))
        self._killed = threading.Event()

    def kill(self) -> None:
        self._killed.set()

    async def wait_dead(self) -> BaseException:
        while not self._killed.is_set():
            await asyncio.sleep(0.01)
        self.healthy = False
        return RuntimeError("engine process exited with signal 9")


def test_engine_death_answers_503_then_the_server_exits_non_zero():
    backend = MortalBackend()
    assert isinstance(backend, WatchableBackend)
    app = create_app(make_settings(), lambda: backend)
    port = free_port()
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(serve(app, "127.0.0.1", port, "warning")), daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)
    body = {"model": MODEL, "messages": USER}
    assert httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10).status_code == 200

    # Stop the runner from exiting before we looked at the 503s: hold the exit until checked.
    checked = threading.Event()
    on_dead = app.state.on_engine_dead

    def hold_then_exit(cause: BaseException) -> None:
        checked.wait(10)
        on_dead(cause)

    app.state.on_engine_dead = lambda cause: threading.Thread(target=hold_then_exit, args=(cause,)).start()
    backend.kill()
    deadline = time.monotonic() + 5
    while httpx.get(f"{base}/health", timeout=2).status_code != 503:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=10)
    assert response.status_code == 503
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "service_unavailable_error"
    assert "signal 9" in error["message"]
    checked.set()
    thread.join(30)
    assert codes == [ENGINE_DEAD_EXIT_CODE]
    assert backend.shut_down
