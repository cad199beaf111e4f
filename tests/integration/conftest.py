"""Shared fixtures: the app in process on a `FakeBackend`, reached three ways.

* `harness(...)`: lifespan run in the test's loop; raw `httpx.AsyncClient` over
  `httpx.ASGITransport` and an `AsyncOpenAI` client on top of it.
* `live(...)`: the same app served by uvicorn on 127.0.0.1 (random port) in a thread, for the
  sync `OpenAI` client (sync httpx cannot drive an ASGI app) and for real disconnects.
* `asgi_call(...)`: one request straight into the ASGI app with a scripted `receive`, to
  disconnect at an exact moment.
"""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import anyio
import httpx
import pytest
import uvicorn
from openai import AsyncOpenAI

from functionary.api import ServerSettings, create_app
from functionary.backends.fake import FakeBackend

MODEL = "functionary-test"
BASE = "http://testserver"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
TOOLS = [WEATHER_TOOL, TIME_TOOL]
FUNCTIONS = [WEATHER_TOOL["function"], TIME_TOOL["function"]]
USER = [{"role": "user", "content": "What is the weather in Paris?"}]

# Scripted outputs in the default format (v3.llama3: the prompt ends with ">>>", the model
# writes a recipient, "\n", then text or arguments; ">>>" opens the next segment). Without
# tools the choice is "none" and the prompt already ends with ">>>all\n": plain text follows.
TEXT_OUT = "It is sunny in Paris today.<|eot_id|>"
AUTO_TEXT_OUT = "all\nIt is sunny in Paris today.<|eot_id|>"
CALL_OUT = 'get_weather\n{"city": "Paris"}<|eot_id|>'
TWO_CALLS_OUT = 'get_weather\n{"city": "Paris"}>>>get_time\n{}<|eot_id|>'
TEXT_THEN_CALL_OUT = 'all\nLet me check.>>>get_weather\n{"city": "Paris"}<|eot_id|>'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"served_model_names": [MODEL], "prompt_template_version": "v3.llama3"}
    values.update(overrides)
    return ServerSettings(**values)


@dataclass
class Harness:
    app: Any
    fake: FakeBackend
    http: httpx.AsyncClient
    client: AsyncOpenAI

    async def post(self, body: dict[str, Any], **kwargs: Any) -> httpx.Response:
        return await self.http.post("/v1/chat/completions", json=body, **kwargs)


@pytest.fixture
async def harness():
    """`await harness(outputs, api_key=..., fake=..., **settings)` -> a running `Harness`."""
    stack = AsyncExitStack()

    async def make(
        outputs: Any = (TEXT_OUT,),
        *,
        fake: Optional[FakeBackend] = None,
        api_key: Optional[str] = None,
        auth: bool = True,
        **settings: Any,
    ) -> Harness:
        backend = fake if fake is not None else FakeBackend(outputs)
        app = create_app(make_settings(api_key=api_key, **settings), lambda: backend)
        await stack.enter_async_context(app.router.lifespan_context(app))
        headers = {"Authorization": f"Bearer {api_key}"} if api_key and auth else {}
        http = await stack.enter_async_context(
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
                base_url=BASE,
                headers=headers,
            )
        )
        client = AsyncOpenAI(
            api_key=(api_key if auth else None) or "unused", base_url=f"{BASE}/v1", http_client=http, max_retries=0
        )
        return Harness(app, backend, http, client)

    yield make
    await stack.aclose()


# ---------------------------------------------------------------------------------------------
# A real server in a thread


@dataclass
class LiveServer:
    app: Any
    fake: FakeBackend
    url: str
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def start_live(app: Any, fake: FakeBackend) -> LiveServer:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    return LiveServer(app, fake, f"http://127.0.0.1:{port}", server, thread)


@pytest.fixture
def live():
    """`live(outputs, fake=..., **settings)` -> a `LiveServer` on 127.0.0.1 (stopped afterwards)."""
    servers: list[LiveServer] = []

    def make(outputs: Any = (TEXT_OUT,), *, fake: Optional[FakeBackend] = None, **settings: Any) -> LiveServer:
        backend = fake if fake is not None else FakeBackend(outputs)
        app = create_app(make_settings(**settings), lambda: backend)
        server = start_live(app, backend)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Raw ASGI


@dataclass
class AsgiResult:
    status: Optional[int] = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    messages: list[dict[str, Any]] = field(default_factory=list)


async def asgi_call(
    app: Any,
    body: dict[str, Any],
    *,
    disconnect_when: Callable[[AsgiResult], bool],
    path: str = "/v1/chat/completions",
    timeout: float = 10.0,
) -> AsgiResult:
    """POST `body` into `app`; `receive` reports a disconnect once `disconnect_when(result)`
    holds (checked after every message the app sends, and every 10 ms)."""
    payload = json.dumps(body).encode()
    result = AsgiResult()
    request_sent = False
    changed = anyio.Event()

    async def receive() -> dict[str, Any]:
        nonlocal request_sent, changed
        if not request_sent:
            request_sent = True
            return {"type": "http.request", "body": payload, "more_body": False}
        while not disconnect_when(result):
            with anyio.move_on_after(0.01):
                await changed.wait()
            changed = anyio.Event()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        result.messages.append(message)
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = list(message.get("headers", []))
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")
        changed.set()

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode())],
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
    }
    with anyio.fail_after(timeout):
        await app(scope, receive, send)
    return result


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def sse_events(text: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n"), "an SSE body ends with a blank line"
    events = []
    for block in text.split("\n\n")[:-1]:
        lines = block.split("\n")
        assert len(lines) == 1 and lines[0].startswith("data: "), f"bad SSE block {block!r}"
        events.append(lines[0][len("data: "):])
    return events


def sse_chunks(text: str) -> list[dict[str, Any]]:
    events = sse_events(text)
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]
