"""Non-streamed chat completions through the real `openai` clients and raw HTTP."""
from __future__ import annotations

import httpx
import pytest
from openai import OpenAI

from functionary.backends.fake import FakeBackend

from .conftest import (
    AUTO_TEXT_OUT,
    CALL_OUT,
    MODEL,
    TEXT_OUT,
    TEXT_THEN_CALL_OUT,
    TOOLS,
    TWO_CALLS_OUT,
    USER,
    WEATHER_TOOL,
)

pytestmark = pytest.mark.anyio


def test_sync_client_text_and_tool_calls(live):
    server = live([TEXT_OUT])
    with httpx.Client() as http:
        client = OpenAI(api_key="unused", base_url=f"{server.url}/v1", http_client=http, max_retries=0)
        text = client.chat.completions.create(model=MODEL, messages=USER)
        assert text.choices[0].message.content == "It is sunny in Paris today."
        assert text.choices[0].message.role == "assistant"
        assert text.choices[0].message.tool_calls is None
        assert text.choices[0].finish_reason == "stop"
        assert text.object == "chat.completion"
        assert text.model == MODEL
        assert text.id.startswith("chatcmpl-")

        server.fake.outputs = [CALL_OUT]
        call = client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS)
        message = call.choices[0].message
        assert message.content is None
        assert [(c.type, c.function.name, c.function.arguments) for c in message.tool_calls] == [
            ("function", "get_weather", '{"city": "Paris"}')
        ]
        assert call.choices[0].finish_reason == "tool_calls"


async def test_async_client_text(harness):
    h = await harness([TEXT_OUT])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert result.choices[0].message.content == "It is sunny in Paris today."
    assert result.choices[0].finish_reason == "stop"
    assert result.choices[0].index == 0


async def test_raw_response_shape(harness):
    h = await harness([TEXT_THEN_CALL_OUT])
    response = await h.post({"model": MODEL, "messages": USER, "tools": TOOLS})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert isinstance(body["created"], int)
    (choice,) = body["choices"]
    assert set(choice) == {"index", "message", "logprobs", "finish_reason"}
    assert choice["logprobs"] is None
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["content"] == "Let me check."
    assert set(message) == {"role", "content", "tool_calls"}
    (call,) = message["tool_calls"]
    assert set(call) == {"id", "type", "function"}
    assert call["type"] == "function"
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("call_") and len(call["id"]) == 29
    assert choice["finish_reason"] == "tool_calls"


async def test_text_response_has_no_tool_call_keys(harness):
    h = await harness([TEXT_OUT])
    message = (await h.post({"model": MODEL, "messages": USER})).json()["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "It is sunny in Paris today."}


async def test_parallel_tool_calls_have_unique_ids(harness):
    h = await harness([TWO_CALLS_OUT])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, n=3)
    ids = [c.id for choice in result.choices for c in choice.message.tool_calls]
    assert len(ids) == 6 and len(set(ids)) == 6
    for choice in result.choices:
        assert [c.function.name for c in choice.message.tool_calls] == ["get_weather", "get_time"]
        assert [c.function.arguments for c in choice.message.tool_calls] == ['{"city": "Paris"}', "{}"]
        assert choice.finish_reason == "tool_calls"


async def test_parallel_tool_calls_false_keeps_the_first_call(harness):
    h = await harness([TWO_CALLS_OUT])
    result = await h.client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, parallel_tool_calls=False
    )
    (call,) = result.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert result.choices[0].finish_reason == "tool_calls"
    # The engine request was stopped as soon as the second call began.
    assert h.fake.aborted == [result.id]


async def test_n_choices_each_with_its_own_output(harness):
    h = await harness([AUTO_TEXT_OUT, CALL_OUT])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, n=4)
    assert [c.index for c in result.choices] == [0, 1, 2, 3]
    assert [c.finish_reason for c in result.choices] == ["stop", "tool_calls", "stop", "tool_calls"]
    assert result.choices[2].message.content == "It is sunny in Paris today."
    assert result.choices[3].message.tool_calls[0].function.name == "get_weather"
    assert h.fake.requests[-1].params.n == 4


async def test_usage_counts_prompt_and_all_choices(harness):
    h = await harness([TEXT_OUT])
    one = await h.client.chat.completions.create(model=MODEL, messages=USER)
    prompt_ids = h.fake.requests[-1].prompt_token_ids
    generated = len(h.fake.split(TEXT_OUT.replace("<|eot_id|>", ""))) + 1  # + the stop token
    assert one.usage.prompt_tokens == len(prompt_ids)
    assert one.usage.completion_tokens == generated
    assert one.usage.total_tokens == len(prompt_ids) + generated
    three = await h.client.chat.completions.create(model=MODEL, messages=USER, n=3)
    assert three.usage.completion_tokens == 3 * generated


async def test_code_interpreter_tool(harness):
    h = await harness(["python\nprint(6 * 7)<|eot_id|>"])
    result = await h.client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Compute 6*7"}],
        tools=[{"type": "code_interpreter"}, WEATHER_TOOL],
    )
    (call,) = result.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("python", "print(6 * 7)")
    assert "python" in h.fake.requests[-1].prompt


async def test_tool_choice_named_and_none_shape_the_prompt(harness):
    h = await harness(['{"city": "Paris"}<|eot_id|>'])
    result = await h.client.chat.completions.create(
        model=MODEL,
        messages=USER,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    # The named choice's prefix ends the prompt; the model writes the arguments only.
    assert h.fake.requests[-1].prompt.endswith(">>>get_weather\n")
    (call,) = result.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')

    h.fake.outputs = ["It is sunny.<|eot_id|>"]
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, tool_choice="none")
    assert h.fake.requests[-1].prompt.endswith(">>>all\n")
    assert "get_weather" not in h.fake.requests[-1].prompt
    assert result.choices[0].message.content == "It is sunny."

    h.fake.outputs = [CALL_OUT]
    result = await h.client.chat.completions.create(
        model=MODEL, messages=USER, tools=TOOLS, tool_choice="required"
    )
    assert result.choices[0].finish_reason == "tool_calls"


async def test_tool_results_in_history(harness):
    h = await harness([AUTO_TEXT_OUT])
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "name": "get_weather", "content": '{"temp": 21}'},
    ]
    result = await h.client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    assert result.choices[0].message.content == "It is sunny in Paris today."
    prompt = h.fake.requests[-1].prompt
    assert '{"temp": 21}' in prompt and '{"city": "Paris"}' in prompt


async def test_developer_role_and_text_content_parts(harness):
    h = await harness([TEXT_OUT])
    await h.client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Weather "}, {"type": "text", "text": "in Paris?"}]},
        ],
    )
    prompt = h.fake.requests[-1].prompt
    assert "<|start_header_id|>system<|end_header_id|>\n\nBe brief." in prompt
    assert "Weather in Paris?" in prompt


async def test_sampling_parameters_reach_the_engine(harness):
    h = await harness([TEXT_OUT])
    await h.client.chat.completions.create(
        model=MODEL,
        messages=USER,
        temperature=0.3,
        top_p=0.9,
        seed=1234,
        presence_penalty=0.5,
        frequency_penalty=-0.5,
        max_tokens=50,
        stop=["STOP"],
        user="user-1",
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
        extra_body={
            "top_k": 5,
            "min_p": 0.1,
            "repetition_penalty": 1.2,
            "ignore_eos": True,
            "min_tokens": 2,
            "stop_token_ids": [42],
            "skip_special_tokens": False,
            "some_unknown_field": {"x": 1},
        },
    )
    params = h.fake.requests[-1].params
    assert params.temperature == 0.3
    assert params.top_p == 0.9
    assert params.seed == 1234
    assert params.presence_penalty == 0.5
    assert params.frequency_penalty == -0.5
    assert params.max_tokens == 50
    assert params.top_k == 5
    assert params.min_p == 0.1
    assert params.repetition_penalty == 1.2
    assert params.ignore_eos is True
    assert params.min_tokens == 2
    assert params.n == 1
    assert "STOP" in params.stop
    eot_id = h.fake.tokenize("<|eot_id|>")[-1]
    eot_text_id = h.fake.tokenize("<|end_of_text|>")[-1]
    assert params.stop_token_ids[:2] == [eot_id, eot_text_id]  # the format's stop tokens...
    assert 42 in params.stop_token_ids  # ...and the client's
    assert "<|eot_id|>" not in params.stop  # single tokens go as ids, not strings


async def test_defaults_when_nothing_is_given(harness):
    h = await harness([TEXT_OUT])
    await h.post({"messages": USER})  # `model` may be left out
    params = h.fake.requests[-1].params
    prompt_len = len(h.fake.requests[-1].prompt_token_ids)
    assert params.max_tokens == h.fake.max_model_len - prompt_len
    assert (params.temperature, params.top_p, params.top_k, params.min_p) == (1.0, 1.0, -1, 0.0)
    assert (params.presence_penalty, params.frequency_penalty, params.repetition_penalty) == (0.0, 0.0, 1.0)
    assert params.seed is None and params.n == 1
    # The fake names no Functionary format, so grammar sampling is on by default: text only here.
    assert params.constraint == {"version": "v3.llama3", "tools": [], "tool_choice": "none", "parallel_tool_calls": True}


WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


async def test_grammar_sampling_spec_follows_the_request(harness):
    h = await harness([TEXT_OUT], grammar_sampling=True)
    await h.post({"messages": USER, "tools": [WEATHER_TOOL], "tool_choice": "required", "parallel_tool_calls": False})
    normalized = {"type": "function", "function": {"description": "", **WEATHER_TOOL["function"]}}
    assert h.fake.requests[-1].params.constraint == {
        "version": "v3.llama3", "tools": [normalized], "tool_choice": "required", "parallel_tool_calls": False,
    }
    await h.post({"messages": USER, "functions": [WEATHER_TOOL["function"]]})
    legacy = h.fake.requests[-1].params.constraint
    assert legacy["parallel_tool_calls"] is False and legacy["tools"][0]["function"]["name"] == "get_weather"


async def test_grammar_sampling_off_sends_no_constraint(harness):
    h = await harness([TEXT_OUT], grammar_sampling=False)
    await h.post({"messages": USER, "tools": [WEATHER_TOOL]})
    assert h.fake.requests[-1].params.constraint is None


async def test_max_completion_tokens_wins_and_length_finish(harness):
    h = await harness(["one two three four five six seven<|eot_id|>"])
    result = await h.client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=100, max_completion_tokens=5
    )
    assert h.fake.requests[-1].params.max_tokens == 5
    assert result.choices[0].finish_reason == "length"
    assert result.usage.completion_tokens == 5
    assert result.choices[0].message.content == "one two three"


async def test_truncated_call_reports_length(harness):
    h = await harness([CALL_OUT])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS, max_tokens=6)
    assert result.choices[0].finish_reason == "length"
    assert result.choices[0].message.tool_calls[0].function.name == "get_weather"


async def test_client_stop_string_is_not_in_the_content(harness):
    h = await harness(["First part. STOP and more<|eot_id|>"])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, stop="STOP")
    assert result.choices[0].message.content == "First part."
    assert result.choices[0].finish_reason == "stop"


async def test_format_stop_token_never_leaks(harness):
    h = await harness(["Done.<|eot_id|>garbage after the stop token"])
    result = await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert result.choices[0].message.content == "Done."


async def test_stop_string_path_when_not_a_single_token(harness):
    """A tokenizer without the format's special tokens: they are sent as stop strings."""

    class NoSpecialTokens(FakeBackend):
        def split(self, text: str) -> list[str]:
            return list(text)  # every character is a token

    fake = NoSpecialTokens(["Done.<|eot_id|>garbage"])
    h = await harness(fake=fake, grammar_sampling=False)
    result = await h.client.chat.completions.create(model=MODEL, messages=USER)
    params = fake.requests[-1].params
    assert "<|eot_id|>" in params.stop and "<|end_of_text|>" in params.stop
    assert params.stop_token_ids == []
    assert result.choices[0].message.content == "Done."
    stream = await h.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Done."


@pytest.mark.parametrize("backend", ["xgrammar", "lm-format-enforcer"])
async def test_stop_strings_under_grammar_sampling(harness, backend):
    """A structural tag ends the turn itself: the format's stop strings (which would also cut an
    argument string containing them) are not sent; the user's are. The logits processor keeps
    markers out of arguments, so it keeps the stop strings."""

    class NoSpecialTokens(FakeBackend):
        def split(self, text: str) -> list[str]:
            return list(text)

    fake = NoSpecialTokens(["all\nDone.<|eot_id|>garbage"])
    h = await harness(fake=fake, grammar_sampling=True, grammar_backend=backend)
    result = await h.client.chat.completions.create(model=MODEL, messages=USER, stop=["END"], tools=TOOLS)
    params = fake.requests[-1].params
    assert params.constraint_backend == backend and params.constraint["tool_choice"] == "auto"
    format_stops = {"<|eot_id|>", "<|end_of_text|>"}
    if backend == "xgrammar":
        assert params.stop == ["END"]
    else:
        assert set(params.stop) == format_stops | {"END"}
    assert result.choices[0].message.content == "Done."  # the parser ends the turn at the marker


async def test_grammar_backend_is_checked(harness):
    with pytest.raises(ValueError, match="unknown grammar backend"):
        await harness(grammar_sampling=True, grammar_backend="outlines")


async def test_unknown_fields_are_ignored_and_logged(harness, caplog):
    h = await harness([TEXT_OUT])
    with caplog.at_level("INFO", logger="functionary.protocol.openai"):
        response = await h.post(
            {"model": MODEL, "messages": [{"role": "user", "content": "hi", "weird": 1}], "frobnicate": True}
        )
    assert response.status_code == 200
    assert "frobnicate" in caplog.text and "weird" in caplog.text


async def test_several_served_model_names(harness):
    h = await harness([TEXT_OUT], served_model_names=["alpha", "beta"])
    for name in ("alpha", "beta"):
        result = await h.client.chat.completions.create(model=name, messages=USER)
        assert result.model == name
    models = await h.client.models.list()
    assert [m.id for m in models.data] == ["alpha", "beta"]
