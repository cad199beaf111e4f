"""The real `server_vllm.py` process on the real vLLM engine with the default model, through the
official `openai` client and raw HTTP over loopback (marked slow; CI runs it)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from tests.support.server import running_server

pytestmark = pytest.mark.slow
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
MESSAGES = [{"role": "user", "content": "What is the weather like in Paris today?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("server"), api_key="test-key") as base:
        yield base


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="test-key", max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def test_models_and_a_plain_completion(client, model):
    assert model == "SmolLM2-135M-Instruct"
    response = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Say hello."}],
                                              max_tokens=16, temperature=0)
    choice = response.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert "<|" not in choice.message.content  # no special-token text leaks into content
    assert response.usage.completion_tokens > 0 and response.usage.prompt_tokens > 0


@pytest.mark.parametrize("tool_choice", [None, "auto", {"type": "function", "function": {"name": "get_weather"}}])
def test_streamed_equals_whole_at_temperature_zero(client, model, tool_choice):
    kwargs = dict(model=model, messages=MESSAGES, tools=[WEATHER], max_tokens=40, temperature=0)
    if tool_choice is not None:
        kwargs["tool_choice"] = tool_choice
    whole = client.chat.completions.create(**kwargs)
    state = ChatCompletionStreamState()  # openai-python's own accumulator is the oracle
    for chunk in client.chat.completions.create(**kwargs, stream=True):
        state.handle_chunk(chunk)
    streamed = state.current_completion_snapshot
    a, b = whole.choices[0], streamed.choices[0]
    assert a.message.content == b.message.content
    calls = lambda m: [(c.function.name, c.function.arguments) for c in m.tool_calls or []]  # noqa: E731
    assert calls(a.message) == calls(b.message)
    assert a.finish_reason == b.finish_reason


def test_a_named_tool_choice_yields_that_tools_call(client, model):
    response = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=[WEATHER], max_tokens=40, temperature=0,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    choice = response.choices[0]
    assert [c.function.name for c in choice.message.tool_calls] == ["get_weather"]
    assert re.fullmatch(r"call_[A-Za-z0-9]{24}", choice.message.tool_calls[0].id)
    assert choice.finish_reason in ("tool_calls", "length")


def test_raw_sse_framing(server, model):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": "Bearer test-key"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["usage"]["completion_tokens"] == 8 and chunks[-1]["choices"] == []


def test_errors_in_openai_format(server, client, model):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong", max_retries=0).models.list()
    response = httpx.post(f"{server}/v1/chat/completions", headers={"Authorization": "Bearer test-key"},
                          json={"model": model, "messages": MESSAGES, "max_tokens": 10_000}, timeout=60)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and "context" in error["message"]


def running_requests(server) -> float:
    text = httpx.get(f"{server}/metrics", headers={"Authorization": "Bearer test-key"}, timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("vllm:num_requests_running")]
    assert values, "the engine's own metrics are exported"
    return sum(values)


def wait_idle(server, seconds=30.0) -> float:
    deadline = time.time() + seconds
    while (running := running_requests(server)) and time.time() < deadline:
        time.sleep(0.5)
    return running


@pytest.mark.parametrize("stream", [True, False])
def test_a_client_disconnect_aborts_the_engine_request(server, model, stream):
    body = {"model": model, "messages": MESSAGES, "max_tokens": 1500, "ignore_eos": True, "stream": stream}
    headers = {"Authorization": "Bearer test-key"}
    if stream:
        with httpx.stream("POST", f"{server}/v1/chat/completions", json=body, headers=headers, timeout=60) as r:
            for n, _ in enumerate(r.iter_lines()):
                if n > 3:
                    break
        # the response is closed here, mid-stream
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server}/v1/chat/completions", json=body, headers=headers, timeout=3)
    # 1500 tokens would take a minute on 2 cores: an idle engine within seconds means it was aborted.
    assert wait_idle(server, 20) == 0


def test_ignore_eos_runs_to_max_tokens_past_the_end_of_a_call(client, model):
    # vLLM's ignore_eos: generation goes on after the EOS token, here also after the grammar
    # ended the named call with it (the llama.cpp server must do the same).
    response = client.chat.completions.create(
        model=model, messages=MESSAGES, tools=[WEATHER], tool_choice={"type": "function", "function": {
            "name": "get_weather"}}, temperature=0, max_tokens=80, extra_body={"ignore_eos": True})
    assert response.usage.completion_tokens == 80
    assert response.choices[0].finish_reason == "length"


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_grammar_sampling_makes_the_default_model_call_validly(client, model, tool_choice):
    # SmolLM2 was never trained on a Functionary format; grammar sampling (on by default for
    # such models) makes its calls name a given tool with schema-valid arguments.
    import jsonschema

    tools = [WEATHER, {"type": "function", "function": {"name": "get_time", "parameters": {
        "type": "object", "properties": {"zone": {"type": "string", "enum": ["UTC", "CET"]}}, "required": ["zone"]}}}]
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    for temperature in (0.0, 0.7, 1.0):
        response = client.chat.completions.create(model=model, messages=MESSAGES, tools=tools, tool_choice=tool_choice,
                                                  max_tokens=96, temperature=temperature, seed=7)
        choice = response.choices[0]
        assert choice.finish_reason == "tool_calls", choice
        for call in choice.message.tool_calls:
            jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        if isinstance(tool_choice, dict):
            assert {c.function.name for c in choice.message.tool_calls} == {"get_weather"}


def compute_threads(server) -> float:
    text = httpx.get(f"{server}/metrics", headers={"Authorization": "Bearer test-key"}, timeout=10).text
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("functionary_engine_compute_threads ")]
    assert values, "the in-process CPU engine exports its compute threads"
    return values[0]


def test_a_busy_process_beside_the_engine_takes_a_compute_thread_and_gives_it_back(server, client, model):
    full = compute_threads(server)
    if full < 2 or full < len(os.sched_getaffinity(0)):
        pytest.skip("the engine has CPUs to spare beside its compute threads: nothing to give up")

    def generate() -> None:  # the engine looks at the machine between its steps
        client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=48,
                                       extra_body={"ignore_eos": True})

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        seen, deadline = [], time.time() + 120
        while time.time() < deadline and min(seen, default=full) >= full:
            generate()
            seen.append(compute_threads(server))
        assert min(seen) < full, f"compute threads stayed at {seen} while another process was busy"
        generate()  # and the engine still answers while it shares the machine
    finally:
        hog.kill()
        hog.wait()
    deadline = time.time() + 120
    while compute_threads(server) < full and time.time() < deadline:
        generate()
    assert compute_threads(server) == full
