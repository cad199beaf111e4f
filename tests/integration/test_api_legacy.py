"""Legacy `functions` / `function_call`: only the first call, as `function_call`."""
from __future__ import annotations

import pytest

from .conftest import CALL_OUT, FUNCTIONS, MODEL, TEXT_THEN_CALL_OUT, TWO_CALLS_OUT, USER, sse_chunks

pytestmark = pytest.mark.anyio


async def test_function_call_non_streamed(harness):
    h = await harness([TEXT_THEN_CALL_OUT])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, functions=FUNCTIONS)
    choice = result.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.content == "Let me check."
    assert choice.message.tool_calls is None
    assert (choice.message.function_call.name, choice.message.function_call.arguments) == (
        "get_weather",
        '{"city": "Paris"}',
    )
    raw = (await h.post({"model": MODEL, "messages": USER, "functions": FUNCTIONS})).json()
    assert "tool_calls" not in raw["choices"][0]["message"]


async def test_only_the_first_call_is_kept(harness):
    h = await harness([TWO_CALLS_OUT])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, functions=FUNCTIONS)
    call = result.choices[0].message.function_call
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    assert result.choices[0].finish_reason == "function_call"
    assert h.fake.aborted == [result.id]  # generation stopped at the second call


async def test_function_call_streamed(harness):
    h = await harness([CALL_OUT])
    response = await h.post({"model": MODEL, "messages": USER, "functions": FUNCTIONS, "stream": True})
    chunks = sse_chunks(response.text)
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant"}
    assert deltas[1] == {"function_call": {"name": "get_weather", "arguments": ""}}
    assert all(set(d) == {"function_call"} and set(d["function_call"]) == {"arguments"} for d in deltas[2:-1])
    assert "".join(d["function_call"]["arguments"] for d in deltas[2:-1]) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "function_call"}


async def test_stream_stops_when_a_second_call_starts(harness):
    h = await harness([TWO_CALLS_OUT])
    response = await h.post({"model": MODEL, "messages": USER, "functions": FUNCTIONS, "stream": True})
    assert response.text.endswith("data: [DONE]\n\n")
    chunks = sse_chunks(response.text)
    assert chunks[-1]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"][0]["finish_reason"] == "function_call"
    assert all("get_time" not in str(c) for c in chunks)
    assert all("tool_calls" not in c["choices"][0]["delta"] for c in chunks)
    arguments = "".join(c["choices"][0]["delta"].get("function_call", {}).get("arguments", "") for c in chunks)
    assert arguments == '{"city": "Paris"}'
    assert len(h.fake.aborted) == 1


async def test_function_call_none_and_named(harness):
    h = await harness(["Just text.<|eot_id|>"])
    result = await h.client.chat.completions.create(
        model=MODEL, messages=USER, functions=FUNCTIONS, function_call="none"
    )
    assert result.choices[0].message.content == "Just text."
    assert result.choices[0].finish_reason == "stop"
    h.fake.outputs = ['{"city": "Rome"}<|eot_id|>']
    result = await h.client.chat.completions.create(
        model=MODEL, messages=USER, functions=FUNCTIONS, function_call={"name": "get_weather"}
    )
    assert result.choices[0].message.function_call.arguments == '{"city": "Rome"}'
    assert h.fake.requests[-1].prompt.endswith(">>>get_weather\n")


async def test_legacy_function_messages_in_history_v1(harness):
    h = await harness(["The weather is fine.<|END_OF_ASSISTANT|>"], prompt_template_version="v1")
    messages = [
        *USER,
        {"role": "assistant", "content": None, "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
        {"role": "function", "name": "get_weather", "content": '{"temp": 21}'},
    ]
    result = await h.client.chat.completions.create(model=MODEL, messages=messages, functions=FUNCTIONS)
    assert result.choices[0].message.content == "The weather is fine."
    assert '{"temp": 21}' in h.fake.requests[-1].prompt
