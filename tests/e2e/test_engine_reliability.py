"""The real server under concurrent seeded requests, and what users see when its engine dies.

For each engine mode (vLLM's engine in the server process, and vLLM's multi-process
`AsyncLLM`), one server:

1. 48 concurrent seeded requests with prompts of ~300 tokens (far more than one engine step's
   token budget, so prompts are prefilled in chunks), half constrained by grammar sampling
   (tools, `tool_choice: required`) and half free text, streamed and not: all answered, and the
   server keeps serving. A seeded request repeated alone gives the same answer each time.
2. Then the engine is made to die while a request streams: in-process by a logits processor that
   raises inside the engine (`tests/support/engine_fault.py`), multi-process by killing vLLM's
   engine-core process. `/health` answers 503, the streaming request ends with an OpenAI-format
   error event, and the server exits on its own with a non-zero status, leaving no process.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import httpx
import psutil
import pytest

pytest.importorskip("vllm")
from openai import AsyncOpenAI  # noqa: E402

from tests.support.engine_fault import FAULT_SEED  # noqa: E402
from tests.support.server import server_process  # noqa: E402

pytestmark = pytest.mark.slow

CONCURRENT = 48
MODEL = "SmolLM2-135M-Instruct"
TOOLS = [{
    "type": "function",
    "function": {
        "name": "record_item",
        "description": "Record one inventory item",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "kg": {"type": "integer"}},
            "required": ["name", "kg"],
        },
    },
}]
MODES = {
    "in_process": ["--engine-in-process", "--logits-processors", "tests.support.engine_fault:FailOnSeed"],
    "multiprocess": ["--no-engine-in-process"],
}


def _request(i: int) -> dict:
    notes = " ".join(f"item {i}-{j} weighs {(i * j) % 13} kg." for j in range(40))
    body: dict = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Inventory {i}: {notes} Record the heaviest item."}],
        "seed": 1000 + i,
        "temperature": 0.9,
        "max_tokens": 24,
    }
    if i % 2 == 0:
        body.update(tools=TOOLS, tool_choice="required", parallel_tool_calls=False)
    return body


def _answer(completion) -> tuple:
    message = completion.choices[0].message
    calls = tuple((c.function.name, c.function.arguments) for c in message.tool_calls or ())
    return message.content, calls


async def _one(client: AsyncOpenAI, body: dict, stream: bool):
    if not stream:
        return await client.chat.completions.create(**body)
    chunks = [c async for c in await client.chat.completions.create(**body, stream=True)]
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length", "tool_calls")
    return chunks


@pytest.fixture(scope="module", params=list(MODES), ids=list(MODES))
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"server-{request.param}")
    with server_process(tmp, MODES[request.param]) as srv:
        yield request.param, srv


def test_concurrent_seeded_requests_are_all_answered(server):
    mode, srv = server

    async def main() -> list:
        async with AsyncOpenAI(base_url=f"{srv.base}/v1", api_key="none", max_retries=0, timeout=300) as client:
            return await asyncio.gather(*(_one(client, _request(i), stream=i % 4 < 2) for i in range(CONCURRENT)))

    results = asyncio.run(main())
    assert len(results) == CONCURRENT
    prompt_tokens = [r.usage.prompt_tokens for r in results if not isinstance(r, list)]
    assert min(prompt_tokens) > 250  # 48 such prompts are more than one step prefills at once
    assert httpx.get(f"{srv.base}/health", timeout=30).status_code == 200
    assert "CPU Generator" not in srv.log()


def test_seeded_request_repeated_alone_gives_the_same_answer(server):
    mode, srv = server

    async def main() -> list:
        async with AsyncOpenAI(base_url=f"{srv.base}/v1", api_key="none", max_retries=0, timeout=300) as client:
            return [_answer(await client.chat.completions.create(**_request(i))) for i in (6, 6, 6, 7, 7)]

    a1, a2, a3, b1, b2 = asyncio.run(main())
    assert a1 == a2 == a3 and a1[1]  # a schema-valid call, the same each time
    assert b1 == b2 and b1[0]


def _engine_core_process(server_pid: int) -> psutil.Process:
    children = psutil.Process(server_pid).children(recursive=True)
    cores = [p for p in children if "EngineCore" in " ".join(p.cmdline()) or "EngineCore" in p.name()]
    assert cores, [(p.name(), p.cmdline()) for p in children]
    return cores[0]


def test_engine_death_fails_requests_and_exits_non_zero(server):
    mode, srv = server
    streamed: list[str] = []

    async def stream_until_end(client: httpx.AsyncClient) -> None:
        body = {**_request(1), "max_tokens": 1500, "ignore_eos": True, "stream": True}
        async with client.stream("POST", f"{srv.base}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                if line.startswith("data: "):
                    streamed.append(line[len("data: "):])

    async def main() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            running = asyncio.create_task(stream_until_end(client))
            while len(streamed) < 5:  # the stream is under way
                assert not running.done(), running
                await asyncio.sleep(0.05)
            if mode == "in_process":
                fault = {**_request(2), "seed": FAULT_SEED, "max_tokens": 4}
                response = await client.post(f"{srv.base}/v1/chat/completions", json=fault)
                assert response.status_code == 503, response.text
                assert set(response.json()["error"]) == {"message", "type", "param", "code"}
            else:
                _engine_core_process(srv.process.pid).kill()
            deadline = time.monotonic() + 20
            while True:  # the server notices within seconds, whether or not it has exited yet
                try:
                    health = await client.get(f"{srv.base}/health", timeout=5)
                    if health.status_code == 503:
                        assert "error" in health.json()
                        break
                except httpx.TransportError:
                    break  # already gone
                assert time.monotonic() < deadline, "the server still reports itself healthy"
                await asyncio.sleep(0.1)
            await asyncio.wait_for(running, 30)

    asyncio.run(main())
    assert streamed[-1] == "[DONE]"
    error = json.loads(streamed[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "service_unavailable_error"
    code = srv.process.wait(60)
    assert code not in (0, None), code
    assert "the engine died" in srv.log()
