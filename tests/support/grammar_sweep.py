"""The random grammar sweep the e2e tests run against a real server (`server_vllm.py` in
tests/e2e/test_grammar_server.py, `server_llama_cpp.py` in tests/e2e/test_llama_cpp_grammar.py):
requests with hypothesis-drawn JSON Schemas, every tool_choice, parallel calls on and off,
temperatures 0 to 1, streaming and not, sent concurrently through the official `openai` client,
and the checks a user of grammar sampling relies on (`check`).
"""
from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

BATCH_SIZE = 48  # requests per batch, sent at once
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


def run_sweep(server: str, batches: int) -> dict[str, int]:
    """Send `batches` batches of BATCH_SIZE drawn requests to the server at base URL `server`,
    CONCURRENCY at a time, and `check` every answer. Returns the counts of requests sent and of
    complete valid calls. The draws are derandomized: hypothesis seeds them from the source of
    `sweep` below, so every run (and every server) gets the same requests; editing that function
    changes them, and the floors the tests assert were measured on these."""
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
    return totals
