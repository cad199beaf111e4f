"""Limits of a public endpoint (functionary/api/limits.py): body size 413, header size 431,
request timeout 408 (or an error event ending a stream), concurrent requests 429; each an
OpenAI-format error, over raw HTTP and through the real `openai` client."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
from typing import Any, AsyncIterator

import httpx
import openai
import pytest
import uvicorn

from functionary.api import create_app
from functionary.api.limits import uvicorn_options
from functionary.backends.fake import FakeBackend
from tests.integration.conftest import (
    CALL_OUT,
    MODEL,
    TEXT_OUT,
    TOOLS,
    USER,
    make_settings,
    sse_events,
    wait_for,
)

pytestmark = pytest.mark.anyio

SLOW_TEXT = "one two three four five six seven eight nine ten<|eot_id|>"


def assert_openai_error(response: httpx.Response, status: int, error_type: str, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


# ------------------------------------------------------------------------------------ body size


async def test_body_over_the_limit_by_content_length_is_413(harness):
    h = await harness((TEXT_OUT,), max_request_body_bytes=1000)
    big = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 2000}]}
    r = await h.post(big)
    error = assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert "at most 1000" in error["message"]
    assert h.fake.requests == []
    r = await h.post({"model": MODEL, "messages": USER})  # small bodies still pass
    assert r.status_code == 200


async def test_chunked_body_over_the_limit_is_413(harness):
    """No Content-Length: the body is counted as it arrives."""
    h = await harness((TEXT_OUT,), max_request_body_bytes=1000)
    payload = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 300):
            yield payload[i:i + 300]

    r = await h.http.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert_openai_error(r, 413, "invalid_request_error", "request_too_large")
    assert h.fake.requests == []


async def test_body_limit_through_the_openai_client(harness):
    h = await harness((TEXT_OUT,), max_request_body_bytes=1000)
    with pytest.raises(openai.APIStatusError) as caught:
        await h.client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "y" * 3000}])
    assert caught.value.status_code == 413
    assert caught.value.code == "request_too_large"
    answer = await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "It is sunny in Paris today."


# ---------------------------------------------------------------------------------- header size


async def test_headers_over_the_limit_are_431(harness):
    h = await harness((TEXT_OUT,), max_header_bytes=2000)
    r = await h.post({"model": MODEL, "messages": USER}, headers={"x-big": "a" * 3000})
    error = assert_openai_error(r, 431, "invalid_request_error", "headers_too_large")
    assert "at most 2000" in error["message"]
    with pytest.raises(openai.APIStatusError) as caught:
        await h.client.chat.completions.create(model=MODEL, messages=USER, extra_headers={"x-big": "b" * 3000})
    assert caught.value.status_code == 431
    r = await h.post({"model": MODEL, "messages": USER}, headers={"x-small": "a" * 100})
    assert r.status_code == 200
    assert h.fake.requests and len(h.fake.requests) == 1


def test_the_http_parser_stops_buffering_an_endless_header():
    """Served with `uvicorn_options`, a head that outgrows the limit is refused by the HTTP
    parser (400, connection closed) after a bounded amount was read, not buffered forever."""
    settings = make_settings(max_header_bytes=4096)
    app = create_app(settings, lambda: FakeBackend((TEXT_OUT,)))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="error", **uvicorn_options(settings)))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline and thread.is_alive()
            time.sleep(0.01)
        client = socket.create_connection(("127.0.0.1", port), timeout=10)
        client.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Endless: ")
        sent = 0
        try:
            while sent < 64 * 1024 * 1024:
                client.sendall(b"a" * 65536)
                sent += 65536
        except OSError:
            pass  # the server closed the connection: it stopped reading
        assert sent < 64 * 1024 * 1024, "the server kept reading a 64 MiB header"
        reply = b""
        try:
            while chunk := client.recv(4096):
                reply += chunk
        except OSError:
            pass
        if reply:  # the reset may overtake the reply; if it arrived, it is the parser's 400
            assert reply.startswith(b"HTTP/1.1 400")
        client.close()
        # The server is unharmed.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# -------------------------------------------------------------------------------------- timeout


async def test_a_request_past_the_timeout_is_408_and_aborted(harness):
    fake = FakeBackend((SLOW_TEXT,), delay=0.5)
    h = await harness(fake=fake, request_timeout=0.3)
    r = await h.post({"model": MODEL, "messages": USER})
    error = assert_openai_error(r, 408, "timeout_error", "request_timeout")
    assert "0.3 seconds" in error["message"]
    await wait_for(lambda: len(fake.aborted) == 1)
    assert fake.running == set()
    with pytest.raises(openai.APIStatusError) as caught:
        await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert caught.value.status_code == 408
    await wait_for(lambda: len(fake.aborted) == 2)


async def test_a_stream_past_the_timeout_ends_with_an_error_event(harness):
    fake = FakeBackend((SLOW_TEXT,), delay=0.2)
    h = await harness(fake=fake, request_timeout=0.7)
    r = await h.post({"model": MODEL, "messages": USER, "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant"}
    assert any(c.get("choices") and c["choices"][0]["delta"].get("content") for c in chunks[:-1])
    assert chunks[-1] == {"error": {"message": "The request took longer than this server's limit of 0.7 seconds.",
                                    "type": "timeout_error", "param": None, "code": "request_timeout"}}
    assert not any(c.get("choices") and c["choices"][0].get("finish_reason") for c in chunks[:-1])
    await wait_for(lambda: len(fake.aborted) == 1)
    # The openai client surfaces the error event as an exception.
    with pytest.raises(openai.APIError):
        async for _ in await h.client.chat.completions.create(model=MODEL, messages=USER, stream=True):
            pass


async def test_requests_within_the_timeout_are_untouched(harness):
    h = await harness((SLOW_TEXT,), fake=FakeBackend((SLOW_TEXT,), delay=0.01), request_timeout=5)
    answer = await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "one two three four five six seven eight nine ten"


# ---------------------------------------------------------------------------------- concurrency


async def test_requests_beyond_the_concurrency_cap_are_429(harness):
    fake = FakeBackend((SLOW_TEXT,), delay=0.05)
    h = await harness(fake=fake, max_concurrent_requests=2)
    body = {"model": MODEL, "messages": USER}
    first = asyncio.ensure_future(h.post(body))
    second = asyncio.ensure_future(h.post(dict(body, stream=True)))
    await wait_for(lambda: len(fake.running) == 2)
    r = await h.post(body)
    error = assert_openai_error(r, 429, "rate_limit_error", "rate_limit_exceeded")
    assert "2 concurrent" in error["message"]
    assert r.headers["retry-after"] == "1"
    with pytest.raises(openai.RateLimitError) as caught:
        await h.client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
    assert caught.value.code == "rate_limit_exceeded"
    # Probes are never refused.
    assert (await h.http.get("/health")).status_code == 200
    assert (await h.http.get("/metrics")).status_code == 200
    assert (await first).status_code == 200
    assert (await second).status_code == 200
    assert len(fake.requests) == 2  # the refused ones never reached the engine
    # Capacity is back once they finished.
    answer = await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert answer.choices[0].message.content == "one two three four five six seven eight nine ten"


async def test_refusals_are_counted_in_metrics(harness):
    fake = FakeBackend((CALL_OUT,), delay=0.05)
    h = await harness(fake=fake, max_concurrent_requests=1)
    running = asyncio.ensure_future(h.post({"model": MODEL, "messages": USER, "tools": TOOLS}))
    await wait_for(lambda: len(fake.running) == 1)
    assert (await h.post({"model": MODEL, "messages": USER})).status_code == 429
    await running
    metrics = (await h.http.get("/metrics")).text
    # Refused before routing, so under the route label "unmatched".
    assert re.search(r'^functionary_http_requests_total\{method="POST",route="[^"]+",status="429"\} 1\.0$', metrics, re.M)


async def test_limits_can_be_switched_off(harness):
    h = await harness((TEXT_OUT,), max_request_body_bytes=0, max_header_bytes=0, request_timeout=0,
                      max_concurrent_requests=0)
    r = await h.post({"model": MODEL, "messages": [{"role": "user", "content": "z" * 100_000}]},
                     headers={"x-big": "a" * 100_000})
    assert r.status_code == 200


def test_limit_flags_become_settings():
    import argparse

    from functionary.api.server_flags import add_server_args, server_settings

    parser = add_server_args(argparse.ArgumentParser())
    args = parser.parse_args(["--max-request-body-bytes", "123", "--max-header-bytes", "4567", "--request-timeout", "2.5",
                              "--max-concurrent-requests", "7", "--max-tools", "3", "--max-tool-schema-depth", "5",
                              "--max-tools-bytes", "999"])
    settings = server_settings(args, ["m"])
    assert (settings.max_request_body_bytes, settings.max_header_bytes, settings.request_timeout,
            settings.max_concurrent_requests) == (123, 4567, 2.5, 7)
    assert (settings.tool_limits.max_tools, settings.tool_limits.max_schema_depth,
            settings.tool_limits.max_tools_bytes) == (3, 5, 999)
    defaults = server_settings(parser.parse_args([]), ["m"])
    assert (defaults.max_request_body_bytes, defaults.max_header_bytes, defaults.request_timeout,
            defaults.max_concurrent_requests, defaults.max_tools) == (8 * 1024 * 1024, 64 * 1024, 600.0, 512, 128)
    with pytest.raises(SystemExit):
        parser.parse_args(["--max-concurrent-requests", "-1"])
