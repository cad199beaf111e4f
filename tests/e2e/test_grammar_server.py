"""Grammar sampling through the real server (`server_vllm.py`, default flags: xgrammar back end,
default model and its default prompt template; then the hermes and llama3-json formats on a
smaller sweep), at scale: hundreds of requests with random JSON
Schemas drawn by hypothesis, every tool_choice, parallel calls on and off, temperatures 0 to 1,
streaming and not, sent concurrently through the official `openai` client.

What a user of the server relies on: every call names a tool of the request and its arguments
validate with `jsonschema` (a last call cut by max_tokens aside), `none` never calls, `required`
calls, a named choice is exactly that one call, `parallel_tool_calls: false` at most one.
"""
from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.server import running_server

pytestmark = pytest.mark.slow

BATCHES = 5
BATCH_SIZE = 48  # requests per batch, sent at once: 240 in all
# The default format (no flag) at full size, the other families' formats on a smaller sweep.
SERVERS = [(None, BATCHES), ("hermes", 2), ("llama3-json", 2)]
CONCURRENCY = 16

KEYS = st.sampled_from(["city", "date", "count", "unit", "query", "people", "tags", "深圳", "note"])
LEAVES = st.one_of(
    st.just({"type": "string"}),
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": ["string", "null"]}),
    st.integers(1, 8).map(lambda n: {"type": "string", "maxLength": n}),
    st.lists(st.sampled_from(["celsius", "fahrenheit", "北京", "Zürich", "ok", "é"]), min_size=1, max_size=4,
             unique=True).map(lambda e: {"type": "string", "enum": e}),
    st.tuples(st.integers(-5, 5), st.integers(0, 10)).map(
        lambda t: {"type": "integer", "minimum": t[0], "maximum": t[0] + t[1]}),
)


def objects(values):
    def build(props):
        if not props:
            return st.just({"type": "object", "properties": {}})
        return st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda req: {"type": "object", "properties": props, **({"required": req} if req else {})})

    return st.dictionaries(KEYS, values, max_size=4).flatmap(build)


SCHEMAS = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        objects(children),
        st.tuples(children, st.integers(1, 3)).map(lambda t: {"type": "array", "items": t[0], "maxItems": t[1]}),
    ),
    max_leaves=5,
)
NAMES = ["get_weather", "get_w", "book_table", "search", "convert_units"]
QUESTIONS = ["What is the weather in Paris?", "Book a table for two at 7pm.", "Find red shoes, size 42.",
             "Hello! Who are you?", "Convert 12 miles to km."]


@st.composite
def requests(draw):
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    tools = [{"type": "function", "function": {"name": n, "description": n.replace("_", " "),
                                               "parameters": draw(objects(SCHEMAS))}} for n in names]
    choice = draw(st.sampled_from(["auto", "required", "none", "named"]))
    if choice == "named":
        choice = {"type": "function", "function": {"name": draw(st.sampled_from(names))}}
    return {
        "messages": [{"role": "user", "content": draw(st.sampled_from(QUESTIONS))}],
        "tools": tools,
        "tool_choice": choice,
        "parallel_tool_calls": draw(st.booleans()),
        "temperature": draw(st.sampled_from([0.0, 0.3, 0.7, 1.0])),
        "max_tokens": draw(st.sampled_from([48, 96])),
        "stream": draw(st.booleans()),
    }


@pytest.fixture(scope="module", params=SERVERS, ids=[v or "default" for v, _ in SERVERS])
def server(request, tmp_path_factory):
    """(base URL, batches, version) of a server in one prompt format."""
    version, batches = request.param
    args = [] if version is None else ["--prompt-template-version", version]
    with running_server(tmp_path_factory.mktemp("grammar-server"), args) as base:
        yield base, batches, version


async def complete(client, model, body):
    """(finish_reason, content, [(name, arguments)]) for one request, streamed or not."""
    if not body["stream"]:
        response = await client.chat.completions.create(model=model, **body)
        choice = response.choices[0]
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
        return choice.finish_reason, choice.message.content, calls
    stream = await client.chat.completions.create(model=model, **body)
    content, calls, finish = "", {}, None
    async for chunk in stream:
        for choice in chunk.choices:
            delta = choice.delta
            content += delta.content or ""
            for tc in delta.tool_calls or []:
                name, args = calls.get(tc.index, ("", ""))
                calls[tc.index] = (name + (tc.function.name or ""), args + (tc.function.arguments or ""))
            finish = choice.finish_reason or finish
    return finish, content or None, [calls[i] for i in sorted(calls)]


def check(body, finish, content, calls):
    where = f"{json.dumps(body, ensure_ascii=False)[:600]} -> {finish} {content!r} {calls}"
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in body["tools"]}
    cut = finish == "length"
    for k, (name, args) in enumerate(calls):
        if cut and k == len(calls) - 1:
            break  # max_tokens cut the last call
        assert name in schemas, where
        jsonschema.validate(json.loads(args), schemas[name])
    choice = body["tool_choice"]
    if choice == "none":
        assert not calls and finish in ("stop", "length"), where
    if not cut:
        if choice == "required" or isinstance(choice, dict):
            assert calls and finish == "tool_calls", where
        if isinstance(choice, dict):
            assert [n for n, _ in calls] == [choice["function"]["name"]], where
    if not body["parallel_tool_calls"] or isinstance(choice, dict):
        assert len(calls) <= 1, where
    return sum(1 for k in range(len(calls)) if not (cut and k == len(calls) - 1))


def test_hundreds_of_random_requests_give_valid_calls(server):
    server, batches, version = server
    totals = {"requests": 0, "valid_calls": 0}

    @settings(max_examples=batches, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(requests(), min_size=BATCH_SIZE, max_size=BATCH_SIZE))
    def sweep(batch):
        async def run():
            gate = asyncio.Semaphore(CONCURRENCY)
            async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0,
                                          timeout=600) as client:
                model = (await client.models.list()).data[0].id

                async def one(body):
                    async with gate:
                        return await complete(client, model, body)

                return await asyncio.gather(*(one(body) for body in batch))

        for body, result in zip(batch, asyncio.run(run())):
            totals["valid_calls"] += check(body, *result)
            totals["requests"] += 1

    sweep()
    # Hundreds of requests went through, and enough of them made complete valid calls for the
    # sweep to check something. The 135M default model finishes a call within 48-96 tokens in a
    # third of these requests in its default format; in hermes and llama3-json it mostly writes
    # text under `auto` or repeats calls until max_tokens (7 and 8 of 96 measured), so there the
    # floor is one in twenty. Every complete call was checked above, whatever the count.
    assert totals["requests"] >= batches * BATCH_SIZE
    floor = 3 if version is None else 20
    assert totals["valid_calls"] >= totals["requests"] // floor
