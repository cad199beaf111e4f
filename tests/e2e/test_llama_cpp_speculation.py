"""`server_llama_cpp.py --speculate-tool-calls` end to end, on the real engine with the default GGUF.

Two servers run side by side, one with speculation and one without; every request is sent to
both and the answers must be the same, byte for byte (content, tool calls, finish reason, token
count): greedy (seeded temperature 0.8 only where not compared, see EXACT_SAMPLING), tool_choice auto / required / named / none over
several tool sets, with stop strings, min_tokens, ignore_eos and max_tokens, for a sequence
decoded on its own (n=1, one request at a time). With several sequences in one batch (n=2) the
answers are not compared: llama.cpp's CPU attention accumulates in FP16 in KV-cell order, and
the cells the rejected drafts free are taken by the other sequences' next tokens, so their
cells, and with them the rounding, differ from plain decoding (README, llama.cpp). There n=2
must still give two schema-valid calls and max_tokens exactly. Streaming must give what the
whole response gives. The speculating server's /metrics must show drafted tokens that were
accepted (otherwise nothing here would test speculation), and a stream closed while its
request is being drafted must free its sequence and KV cells.
"""
from __future__ import annotations

import json
import re
import time
from typing import Any

import httpx
import jsonschema
import pytest

from tests.support.server import running_server

pytest.importorskip("llama_cpp", reason="the llama.cpp back end needs: pip install 'functionary[llama-cpp]'")
pytestmark = pytest.mark.slow

PARALLEL = 4


def tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required}}}


WEATHER = tool("get_weather", "Current weather of a city",
               {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
               ["city", "unit"])
BOOK = tool("book_table", "Book a restaurant table",
            {"restaurant": {"type": "string"}, "people": {"type": "integer", "minimum": 1, "maximum": 12},
             "time": {"type": "string"}}, ["restaurant", "people", "time"])
EMAIL = tool("send_email", "Send an email",
             {"to": {"type": "string"}, "subject": {"type": "string"}, "body": {"type": "string"}},
             ["to", "subject", "body"])
NOTE = tool("save_note", "Save a note", {"text": {"type": "string"}}, ["text"])

WEATHER_ASK = [{"role": "user", "content": "What is the weather in Paris, in celsius?"}]
BOOK_ASK = [{"role": "user", "content": "Book a table at Chez Marcel for 4 people at 19:30."}]
EMAIL_ASK = [{"role": "user", "content": "Email alice@example.com with the subject Quarterly report and "
                                         "the body: The numbers are attached, see you on Monday."}]
LONG_NOTE = ("Save this note: The committee met on Tuesday to review the budget for the new library. "
             "Everyone agreed that the reading room needs more light, the children's corner needs "
             "new shelves, and the roof must be repaired before the winter storms arrive.") * 3


def named(name: str) -> dict:
    return {"type": "function", "function": {"name": name}}


# (tools, tool_choice, messages, extra body)
CASES = {
    "named-weather": ([WEATHER, BOOK], named("get_weather"), WEATHER_ASK, {}),
    "named-book": ([WEATHER, BOOK], named("book_table"), BOOK_ASK, {}),
    "named-email": ([EMAIL, NOTE], named("send_email"), EMAIL_ASK, {}),
    "required": ([WEATHER, BOOK, EMAIL], "required", BOOK_ASK, {"parallel_tool_calls": False}),
    "auto": ([WEATHER, BOOK], "auto", WEATHER_ASK, {}),
    "none": ([WEATHER, BOOK], "none", WEATHER_ASK, {}),
    "stop-string": ([EMAIL], named("send_email"), EMAIL_ASK, {"stop": ["Quarterly"]}),
    "min-tokens": ([WEATHER], named("get_weather"), WEATHER_ASK, {"min_tokens": 40}),
    "ignore-eos": ([WEATHER], named("get_weather"), WEATHER_ASK, {"ignore_eos": True, "max_tokens": 70}),
}
SAMPLING = {
    "greedy": {"temperature": 0},
    "seeded": {"temperature": 0.8, "seed": 11},
}


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    common = ["--parallel", str(PARALLEL), "--n-ctx", "2048"]
    with running_server(tmp_path_factory.mktemp("plain"), [*common, "--no-speculate-tool-calls"],
                        script="server_llama_cpp.py") as plain, \
            running_server(tmp_path_factory.mktemp("spec"), [*common, "--speculate-tool-calls"],
                           script="server_llama_cpp.py") as spec:
        yield plain, spec


@pytest.fixture(scope="module")
def model(servers):
    return httpx.get(f"{servers[0]}/v1/models", timeout=30).json()["data"][0]["id"]


def metrics(server: str) -> dict[str, float]:
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


def chat(server: str, body: dict) -> dict:
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    return response.json()


def essence(response: dict) -> dict:
    """What a user reads of a response (not its ids or timestamps)."""
    choices = []
    for c in sorted(response["choices"], key=lambda c: c["index"]):
        calls = [(t["function"]["name"], t["function"]["arguments"]) for t in c["message"].get("tool_calls") or []]
        choices.append((c["index"], c["message"].get("content"), calls, c["finish_reason"]))
    return {"choices": choices, "completion_tokens": response["usage"]["completion_tokens"]}


def streamed(server: str, body: dict) -> dict:
    """A streamed response put together as the whole one reads."""
    content: dict[int, str] = {}
    calls: dict[int, dict[int, list[str]]] = {}
    finish: dict[int, Any] = {}
    usage = None
    with httpx.stream("POST", f"{server}/v1/chat/completions", timeout=300,
                      json={**body, "stream": True, "stream_options": {"include_usage": True}}) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            usage = chunk.get("usage") or usage
            for c in chunk["choices"]:
                i = c["index"]
                delta = c.get("delta") or {}
                if delta.get("content"):
                    content[i] = content.get(i, "") + delta["content"]
                for t in delta.get("tool_calls") or []:
                    name_args = calls.setdefault(i, {}).setdefault(t["index"], ["", ""])
                    name_args[0] += (t.get("function") or {}).get("name") or ""
                    name_args[1] += (t.get("function") or {}).get("arguments") or ""
                if c.get("finish_reason"):
                    finish[i] = c["finish_reason"]
    choices = [(i, content.get(i), [tuple(v) for _, v in sorted(calls.get(i, {}).items())], finish.get(i))
               for i in sorted(finish)]
    return {"choices": choices, "completion_tokens": usage["completion_tokens"]}


def body_of(model: str, case: str, sampling: str) -> dict:
    tools, tool_choice, messages, extra = CASES[case]
    return {"model": model, "messages": messages, "tools": tools, "tool_choice": tool_choice,
            "max_tokens": 96, **SAMPLING[sampling], **extra}


# Greedy only: llama.cpp's CPU attention sums in FP16 in KV-cell order, so where a sequence's
# cells lie (which depends on what ran before) moves logits slightly; sampling at 0.8 turns that
# into a different token now and then even without speculation (seen in a clean-clone CI run),
# greedy decoding only on a near tie.
EXACT_SAMPLING = ["greedy"]


@pytest.mark.parametrize("sampling", EXACT_SAMPLING)
@pytest.mark.parametrize("case", list(CASES))
def test_speculation_gives_the_same_answer(servers, model, case, sampling):
    plain, spec = servers
    body = body_of(model, case, sampling)
    expected = essence(chat(plain, body))
    assert essence(chat(spec, body)) == expected
    if case == "ignore-eos":
        assert expected["completion_tokens"] == 70


@pytest.mark.parametrize("sampling", EXACT_SAMPLING)
@pytest.mark.parametrize("case", ["named-email", "required", "auto"])
def test_speculated_stream_equals_the_whole_answer(servers, model, case, sampling):
    plain, spec = servers
    body = body_of(model, case, sampling)
    assert streamed(spec, body) == essence(chat(spec, body)) == essence(chat(plain, body))


def test_two_choices_are_two_valid_calls(servers, model):
    _, spec = servers
    body = {**body_of(model, "named-email", "seeded"), "n": 2}
    response = chat(spec, body)
    assert len(response["choices"]) == 2
    schema = EMAIL["function"]["parameters"]
    for choice in response["choices"]:
        assert choice["finish_reason"] in ("tool_calls", "length"), choice
        (call, *_) = choice["message"]["tool_calls"]
        assert call["function"]["name"] == "send_email"
        if choice["finish_reason"] == "tool_calls":
            jsonschema.validate(json.loads(call["function"]["arguments"]), schema)


def test_drafted_tokens_are_accepted(servers, model):
    _, spec = servers
    before = metrics(spec)
    chat(spec, body_of(model, "named-email", "greedy"))
    after = metrics(spec)
    drafted = after["functionary_llama_cpp_draft_tokens_total"] - before["functionary_llama_cpp_draft_tokens_total"]
    accepted = (after["functionary_llama_cpp_draft_tokens_accepted_total"]
                - before["functionary_llama_cpp_draft_tokens_accepted_total"])
    # The keys, quotes and braces of the call are forced, the address is in the message.
    assert 10 <= accepted <= drafted, (accepted, drafted)
    plain_metrics = metrics(servers[0])
    assert plain_metrics["functionary_llama_cpp_draft_tokens_total"] == 0  # off: nothing drafted


@pytest.mark.parametrize("max_tokens", [1, 2, 5, 9, 17])
def test_max_tokens_is_exact(servers, model, max_tokens):
    plain, spec = servers
    body = {**body_of(model, "named-email", "seeded"), "max_tokens": max_tokens}
    expected = essence(chat(plain, body))
    got = essence(chat(spec, body))
    assert got == expected
    assert got["completion_tokens"] == max_tokens
    assert [c[3] for c in got["choices"]] == ["length"]
    two = chat(spec, {**body, "n": 2})  # n=2: each choice stops at max_tokens too
    assert two["usage"]["completion_tokens"] == 2 * max_tokens
    assert [c["finish_reason"] for c in two["choices"]] == ["length", "length"]


def test_a_stream_closed_while_drafting_frees_its_sequence_and_kv_cells(servers, model):
    _, spec = servers
    body = {"model": model, "messages": [{"role": "user", "content": LONG_NOTE}], "tools": [NOTE],
            "tool_choice": named("save_note"), "max_tokens": 1500, "temperature": 0, "stream": True}
    before = metrics(spec)["functionary_llama_cpp_draft_tokens_total"]
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{spec}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            for _ in range(8):
                next(lines)
            first = kv_tokens(metrics(spec))
            for _ in range(8):
                next(lines)
            now = metrics(spec)
            assert now["functionary_llama_cpp_running_sequences"] == 1
            assert now["functionary_llama_cpp_draft_tokens_total"] > before  # it is being drafted
            second = kv_tokens(now)
            grown = [seq for seq in second if second[seq] > first.get(seq, 0)]
            assert len(grown) == 1, (first, second)
            ours = grown[0]
        # leaving the `with` closes the connection mid-stream
    deadline = time.time() + 10
    while True:
        now = metrics(spec)
        if now["functionary_llama_cpp_running_sequences"] == 0 and kv_tokens(now)[ours] == 0:
            break
        assert time.time() < deadline, now
        time.sleep(0.1)
