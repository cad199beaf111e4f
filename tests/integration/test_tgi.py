"""server_tgi.py's app on a local TGI stand-in, through the real `openai` client and raw HTTP.

No real TGI runs here (it needs a GPU and its container): the stand-in
(`tests/support/tgi_standin.py`) validates every request against TGI's published OpenAPI
document and TGI's run-time rules and answers in its documented shapes; its text comes from a
script per test, tokenized by a real tokenizer and streamed token by token with special
tokens as text, as TGI streams them.

Expected prompts and outputs follow the published formats (FORMAT_SPEC: v3.llama3 ends the
prompt with the assistant header and ``>>>``, a named choice adds ``name\\n``; v2 writes
``<|from|>``/``<|recipient|>``/``<|content|>`` segments).
"""
from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import httpx
import openai
import pytest
from openai import AsyncOpenAI

import server_tgi
from tests.support.tgi_standin import Fault, TGIStandIn, contract_errors
from tests.support.tokenizers import build_format_tokenizer, default_tokenizer

from .conftest import TOOLS, USER, WEATHER_TOOL, sse_chunks, start_live, wait_for

pytestmark = pytest.mark.anyio
MODEL = "functionary-tgi"
NAMED = {"type": "function", "function": {"name": "get_weather"}}
ASSISTANT_V3 = "<|start_header_id|>assistant<|end_header_id|>\n\n>>>"


def _saved(tokenizer: Any, folder: Path) -> str:
    tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory) -> dict[str, str]:
    """Local model folders (tokenizer only) as `--model` takes them."""
    root = tmp_path_factory.mktemp("tgi-models")
    return {
        "v3.llama3": _saved(build_format_tokenizer("v3.llama3"), root / "functionary-v3"),
        "v2": _saved(build_format_tokenizer("v2"), root / "functionary-v2"),
        "default": _saved(default_tokenizer(), root / "smollm2"),
    }


@pytest.fixture
def standins():
    started: list[TGIStandIn] = []

    def make(tokenizer: Any, script: Any = lambda body: "Hello!", **kwargs: Any) -> TGIStandIn:
        standin = TGIStandIn(tokenizer, script, **kwargs)
        standin.start()
        started.append(standin)
        return standin

    yield make
    for standin in started:
        standin.stop()
        # every answer the stand-in gave followed TGI's documented shapes
        assert standin.self_check_errors == []


@asynccontextmanager
async def serving(standin: TGIStandIn, model: str, *flags: str) -> AsyncIterator[tuple[httpx.AsyncClient, AsyncOpenAI]]:
    """server_tgi's own app (its flags, its back end) in process on `standin`."""
    args = server_tgi.build_parser().parse_args(
        ["--model", model, "--endpoint", standin.url, "--served-model-name", MODEL, *flags]
    )
    app = server_tgi.build_app(args)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            client = AsyncOpenAI(api_key="unused", base_url="http://testserver/v1", http_client=http, max_retries=0)
            yield http, client


async def both(client: AsyncOpenAI, **request: Any) -> tuple[dict, dict]:
    """The whole answer and the streamed one folded by openai-python's own accumulator."""
    whole = await client.chat.completions.create(model=MODEL, **request)
    async with client.chat.completions.stream(model=MODEL, **request) as stream:
        async for _ in stream:
            pass
        streamed = await stream.get_final_completion()
    return whole.model_dump(), streamed.model_dump()


def message_of(response: dict) -> tuple[Any, list[tuple[str, Any]], str]:
    choice = response["choices"][0]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"]))
             for c in choice["message"].get("tool_calls") or []]
    return choice["message"]["content"], calls, choice["finish_reason"]


def parameters_of(standin: TGIStandIn, k: int = -1) -> dict:
    return standin.requests[k].body.get("parameters", {})


# ---------------------------------------------------------------------------------------------
# named, required and plain requests


async def test_named_choice_is_held_to_the_schema_by_tgi_grammar(standins, model_folders, caplog):
    # The default model is not a Functionary model: grammar sampling is on by default.
    standin = standins(default_tokenizer(), lambda body: '{"city": "Paris"}')
    async with serving(standin, model_folders["default"]) as (_, client):
        with caplog.at_level("INFO", logger="functionary.backends.tgi"):
            whole, streamed = await both(client, messages=USER, tools=TOOLS, tool_choice=NAMED, temperature=0)
    assert "named tool_choice 'get_weather': arguments guaranteed by TGI's JSON grammar" in caplog.text
    assert message_of(whole) == (None, [("get_weather", {"city": "Paris"})], "tool_calls")
    assert message_of(streamed) == message_of(whole)
    for record in standin.requests:
        params = record.body["parameters"]
        grammar = params["grammar"]
        assert grammar["type"] == "json"
        # the function's own schema (TGI needs `properties`, which it has)
        assert json.loads(grammar["value"]) == WEATHER_TOOL["function"]["parameters"]
        # the prompt already names the function: the grammar covers only the arguments
        assert record.body["inputs"].endswith(ASSISTANT_V3 + "get_weather\n")
        assert params["do_sample"] is False and "temperature" not in params


async def test_response_format_is_held_by_tgi_json_grammar(standins, model_folders, caplog):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    standin = standins(default_tokenizer(), lambda body: '{"city": "Paris"}')
    async with serving(standin, model_folders["default"]) as (_, client):
        with caplog.at_level("INFO", logger="functionary.backends.tgi"):
            response = await client.chat.completions.create(
                messages=USER, model=MODEL, temperature=0,
                response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}},
            )
    assert json.loads(response.choices[0].message.content) == {"city": "Paris"}
    assert json.loads(parameters_of(standin)["grammar"]["value"]) == schema
    assert "response_format 'json_schema': the answer is held to it by TGI's JSON grammar" in caplog.text


# How each published format's prompt ends for a named choice: the model continues with the
# arguments only, so TGI's JSON grammar covers exactly them.
NAMED_PREFIXES = {
    "v1": "assistant:\n<|START_OF_FUNCTION_CALL|>get_weather:\n",
    "v2": "<|from|>assistant\n<|recipient|>get_weather\n<|content|>",
    "v2.llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n<|reserved_special_token_249|>get_weather\n",
    "v3.llama3": ASSISTANT_V3 + "get_weather\n",
    "v3-llama3.1": "<|start_header_id|>assistant<|end_header_id|>\n\n<function=get_weather>",
}


@pytest.mark.parametrize("version", sorted(NAMED_PREFIXES))
async def test_named_choice_in_every_functionary_format(standins, tmp_path, version):
    tokenizer = build_format_tokenizer(version)
    standin = standins(tokenizer, lambda body: '{"city": "Paris"}')
    folder = _saved(tokenizer, tmp_path / version)
    # (these tokenizers carry no chat template, which is where v2.llama3 is told from v3.llama3)
    async with serving(standin, folder, "--enable-grammar-sampling", "--prompt-template-version", version) as (
        _, client,
    ):
        whole, streamed = await both(client, messages=USER, tools=TOOLS, tool_choice=NAMED)
    assert message_of(whole) == (None, [("get_weather", {"city": "Paris"})], "tool_calls")
    assert message_of(streamed) == message_of(whole)
    body = standin.requests[-1].body
    assert body["inputs"].endswith(NAMED_PREFIXES[version])
    assert json.loads(body["parameters"]["grammar"]["value"]) == WEATHER_TOOL["function"]["parameters"]


async def test_named_choice_without_properties_gets_an_empty_properties_grammar(standins, model_folders):
    tool = {"type": "function", "function": {"name": "ping", "parameters": {"type": "object"}}}
    standin = standins(default_tokenizer(), lambda body: "{}")
    async with serving(standin, model_folders["default"]) as (_, client):
        response = await client.chat.completions.create(
            model=MODEL, messages=USER, tools=[tool], tool_choice={"type": "function", "function": {"name": "ping"}})
    assert message_of(response.model_dump()) == (None, [("ping", {})], "tool_calls")
    assert json.loads(parameters_of(standin)["grammar"]["value"]) == {"type": "object", "properties": {}}


async def test_required_and_auto_run_without_grammar_and_log_it(standins, model_folders, caplog):
    outputs = {
        "required": 'get_weather\n{"city": "Paris"}<|eot_id|>',
        "auto": 'all\nLet me check.>>>get_weather\n{"city": "Paris"}<|eot_id|>',
    }
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: outputs["required"])
    async with serving(standin, model_folders["v3.llama3"], "--enable-grammar-sampling") as (_, client):
        for mode in ("required", "auto"):
            standin.script = lambda body, mode=mode: outputs[mode]
            caplog.clear()
            with caplog.at_level("INFO", logger="functionary.backends.tgi"):
                whole, streamed = await both(client, messages=USER, tools=TOOLS, tool_choice=mode)
            assert "grammar" not in parameters_of(standin)
            assert f"tool_choice {mode!r}: NOT guaranteed on TGI" in caplog.text
            expected_text = None if mode == "required" else "Let me check."
            assert message_of(whole) == (expected_text, [("get_weather", {"city": "Paris"})], "tool_calls")
            assert message_of(streamed) == message_of(whole)


async def test_plain_text_streams_token_by_token_and_equals_the_whole_answer(standins, model_folders):
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: "It is sunny in Paris today.<|eot_id|>")
    async with serving(standin, model_folders["v3.llama3"]) as (http, client):
        whole, streamed = await both(client, messages=USER)
        raw = await http.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert message_of(whole) == ("It is sunny in Paris today.", [], "stop")
    assert message_of(streamed) == message_of(whole)
    contents = [c["choices"][0]["delta"].get("content") for c in sse_chunks(raw.text) if c["choices"]]
    assert len([c for c in contents if c]) > 3  # streamed as it came, not in one piece
    # without tools the prompt ends with the text recipient (tool_choice "none")
    assert standin.requests[-1].body["inputs"].endswith(ASSISTANT_V3 + "all\n")


async def test_v2_special_tokens_arrive_as_text_and_parse_into_two_calls(standins, model_folders):
    # v2 writes each call as its own <|from|>/<|recipient|>/<|content|> segment (special tokens)
    out = ('get_weather\n<|content|>{"city": "Paris"}\n<|from|>assistant\n<|recipient|>get_time\n'
           "<|content|>{}<|stop|>")
    standin = standins(build_format_tokenizer("v2"), lambda body: out)
    async with serving(standin, model_folders["v2"]) as (_, client):
        whole, streamed = await both(client, messages=USER, tools=TOOLS, tool_choice="required")
    assert message_of(whole) == (None, [("get_weather", {"city": "Paris"}), ("get_time", {})], "tool_calls")
    assert message_of(streamed) == message_of(whole)
    # the special tokens really came as tokens with `special` set, and TGI got the format's stop
    assert "<|stop|>" in parameters_of(standin)["stop"]


async def test_usage_is_tgis_token_count(standins, model_folders):
    text = "It is sunny.<|eot_id|>"
    tokenizer = build_format_tokenizer("v3.llama3")
    standin = standins(tokenizer, lambda body: text)
    async with serving(standin, model_folders["v3.llama3"]) as (_, client):
        response = await client.chat.completions.create(model=MODEL, messages=USER)
    generated = len(tokenizer(text, add_special_tokens=False)["input_ids"])  # <|eot_id|> is EOS
    assert response.usage.completion_tokens == generated
    assert response.usage.prompt_tokens == standin.requests[-1].input_length
    assert response.usage.total_tokens == generated + standin.requests[-1].input_length


# ---------------------------------------------------------------------------------------------
# parameters


async def test_sampling_parameters_map_onto_tgis(standins, model_folders):
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: "Hi.<|eot_id|>")
    async with serving(standin, model_folders["v3.llama3"]) as (_, client):
        await client.chat.completions.create(
            model=MODEL, messages=USER, temperature=0.7, top_p=0.9, seed=0, max_tokens=20,
            frequency_penalty=0.5, extra_body={"top_k": 5, "repetition_penalty": 1.1})
        sampled = parameters_of(standin)
        await client.chat.completions.create(model=MODEL, messages=USER, temperature=0, top_p=0.5, max_tokens=7)
        greedy = parameters_of(standin)
        response = await client.chat.completions.create(model=MODEL, messages=USER, n=3, seed=41, max_tokens=5)
    assert {k: v for k, v in sampled.items() if k != "stop"} == {
        "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "repetition_penalty": 1.1,
        "frequency_penalty": 0.5, "seed": 1, "max_new_tokens": 20, "details": True,
    }
    # greedy: nothing that would make TGI sample
    assert {k: v for k, v in greedy.items() if k != "stop"} == {"do_sample": False, "max_new_tokens": 7, "details": True}
    # n=3: three TGI requests, each with its own seed
    assert len(response.choices) == 3
    assert sorted(parameters_of(standin, k)["seed"] for k in (-3, -2, -1)) == [42, 43, 44]
    assert standin.refused == []


@pytest.mark.parametrize(("body", "param"), [
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"min_p": 0.1}, "min_p"),
    ({"min_tokens": 3}, "min_tokens"),
    ({"ignore_eos": True}, "ignore_eos"),
    ({"logprobs": True}, "logprobs"),
    ({"logit_bias": {"5": 1.0}}, "logit_bias"),
])
async def test_parameters_tgi_cannot_honour_are_a_400_naming_them(standins, model_folders, body, param):
    standin = standins(build_format_tokenizer("v3.llama3"), lambda b: "Hi.<|eot_id|>")
    async with serving(standin, model_folders["v3.llama3"]) as (http, client):
        for stream in (False, True):
            response = await http.post("/v1/chat/completions", json={"messages": USER, "stream": stream, **body})
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error["param"] == param and error["type"] == "invalid_request_error"
            assert param in error["message"]
    assert standin.requests == []


async def test_stops_beyond_max_stop_sequences_are_still_enforced(standins, model_folders):
    text = "one two three four five " + " ".join(["more"] * 60) + "<|eot_id|>"
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: text, max_stop_sequences=2, delay=0.02)
    async with serving(standin, model_folders["v3.llama3"]) as (_, client):
        whole, streamed = await both(client, messages=USER, stop=["never", "nowhere", "four"])
        # TGI keeps a matched stop sequence in its output: we do not
        whole_two, _ = await both(client, messages=USER, stop=["two"])
    # only `max_stop_sequences` went to TGI; "four" (third) still ended the answer, locally
    assert parameters_of(standin, 0)["stop"] == ["never", "nowhere"]
    assert message_of(whole) == ("one two three", [], "stop")
    assert message_of(streamed) == message_of(whole)
    assert message_of(whole_two) == ("one", [], "stop")
    # a choice stopped here closes its upstream stream: TGI stops generating the 60 words left
    await wait_for(lambda: standin.requests[0].disconnected, timeout=10)
    assert not standin.requests[0].finished


# ---------------------------------------------------------------------------------------------
# errors, health, disconnects


@pytest.mark.parametrize(("fault", "status", "error_type"), [
    (Fault("validation", "Input validation error: `inputs` must have less than 7 tokens"), 400, "invalid_request_error"),
    (Fault("overloaded", "Model is overloaded"), 429, "rate_limit_error"),
    (Fault("generation", "Request failed during generation: CUDA OOM"), 502, "upstream_error"),
    (Fault("incomplete_generation", "Incomplete generation"), 502, "upstream_error"),
    (Fault("validation", "Input validation error", status=422), 400, "invalid_request_error"),
    (Fault("generation", "Request failed during generation", status=424), 502, "upstream_error"),
    (Fault("overloaded", "Model is overloaded", status=429), 429, "rate_limit_error"),
    (Fault("incomplete_generation", "Incomplete generation", status=500), 502, "upstream_error"),
])
async def test_tgi_errors_become_openai_errors(standins, model_folders, fault, status, error_type):
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: "Hi.<|eot_id|>")
    async with serving(standin, model_folders["v3.llama3"]) as (http, client):
        for stream in (False, True):
            standin.faults.append(Fault(**vars(fault)))
            response = await http.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert error["type"] == error_type and set(error) == {"message", "type", "param", "code"}
            assert fault.message.split(":")[0] in error["message"]
        # the openai client raises its typed error for the status
        standin.faults.append(Fault(**vars(fault)))
        expected = {400: openai.BadRequestError, 429: openai.RateLimitError, 502: openai.InternalServerError}[status]
        with pytest.raises(expected):
            await client.chat.completions.create(model=MODEL, messages=USER)


async def test_an_error_mid_stream_ends_the_stream_with_an_error_event(standins, model_folders):
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: "one two three four<|eot_id|>")
    standin.faults.append(Fault("generation", "Request failed during generation: shard died", after_tokens=3))
    async with serving(standin, model_folders["v3.llama3"]) as (http, _):
        response = await http.post("/v1/chat/completions", json={"messages": USER, "stream": True})
    assert response.status_code == 200
    events = response.text.strip().split("\n\n")
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2][len("data: "):])["error"]
    assert error["type"] == "upstream_error" and "shard died" in error["message"]
    assert "one" in response.text  # what came before the failure was streamed


async def test_endpoint_down_is_503_and_health_follows_the_endpoint(standins, model_folders):
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: "Hi.<|eot_id|>")
    async with serving(standin, model_folders["v3.llama3"]) as (http, client):
        assert (await http.get("/health")).status_code == 200
        standin.healthy = False
        unhealthy = await http.get("/health")
        assert unhealthy.status_code == 503 and unhealthy.json()["error"]["type"] == "service_unavailable_error"
        standin.healthy = True
        assert (await http.get("/health")).status_code == 200
        standin.stop()  # the endpoint dies
        for stream in (False, True):
            response = await http.post("/v1/chat/completions", json={"messages": USER, "stream": stream})
            assert response.status_code == 503, response.text
            assert response.json()["error"]["type"] == "service_unavailable_error"
            assert standin.url in response.json()["error"]["message"]
        with pytest.raises(openai.APIStatusError) as raised:
            await client.chat.completions.create(model=MODEL, messages=USER)
        assert raised.value.status_code == 503
        assert (await http.get("/health")).status_code == 503


async def test_client_disconnect_closes_the_upstream_stream(standins, model_folders):
    long_text = " ".join(f"word{i}" for i in range(300)) + "<|eot_id|>"
    standin = standins(build_format_tokenizer("v3.llama3"), lambda body: long_text, delay=0.02)
    args = server_tgi.build_parser().parse_args(["--model", model_folders["v3.llama3"], "--endpoint", standin.url])
    server = start_live(server_tgi.build_app(args), None)  # real sockets: a real disconnect
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            async with http.stream("POST", "/v1/chat/completions",
                                   json={"messages": USER, "stream": True}) as response:
                seen = 0
                async for line in response.aiter_lines():
                    seen += '"content"' in line
                    if seen == 5:
                        break  # the client goes away mid-answer
        await wait_for(lambda: standin.requests[-1].disconnected, timeout=10)
        assert not standin.requests[-1].finished
    finally:
        server.stop()


async def test_server_starts_against_a_running_endpoint_without_docker(standins, model_folders, tmp_path):
    """`python server_tgi.py` as a user runs it: the endpoint answers, so no container starts
    (a Docker host that does not exist would fail the start otherwise)."""
    import os
    import subprocess
    import sys

    from tests.support.server import ROOT, free_port

    standin = standins(build_format_tokenizer("v3.llama3"),
                       lambda body: 'get_weather\n{"city": "Paris"}<|eot_id|>')
    port = free_port()
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "server_tgi.py"), "--model", model_folders["v3.llama3"],
             "--endpoint", standin.url, "--host", "127.0.0.1", "--port", str(port),
             "--served-model-name", MODEL], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = asyncio.get_running_loop().time() + 60
        async with httpx.AsyncClient() as http:
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    if (await http.get(f"{base}/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert asyncio.get_running_loop().time() < deadline, log.read_text()
                await asyncio.sleep(0.2)
        client = AsyncOpenAI(api_key="unused", base_url=f"{base}/v1", max_retries=0)
        response = await client.chat.completions.create(model=MODEL, messages=USER, tools=TOOLS,
                                                        tool_choice="required")
        assert message_of(response.model_dump()) == (None, [("get_weather", {"city": "Paris"})], "tool_calls")
    finally:
        process.terminate()
        process.wait(30)


def test_the_standin_holds_requests_to_tgis_contract():
    """The stand-in's validation is the contract's: a body TGI's schema forbids is refused."""
    assert contract_errors("GenerateRequest", {"inputs": "x", "parameters": {"top_p": 1.5}})
    assert contract_errors("GenerateRequest", {"inputs": "x", "parameters": {"stop": ["a"] * 5}})
    assert contract_errors("GenerateRequest", {"inputs": "x", "parameters": {"seed": 0}})
    assert contract_errors("GenerateRequest", {"parameters": {}})
    assert contract_errors("GenerateRequest", {"inputs": "x", "parameters": {"grammar": {"type": "xml", "value": ""}}})
    assert contract_errors("GenerateRequest", {"inputs": "x", "parameters": {"temperature": None, "seed": 3}}) == []


async def test_start_up_log_names_tgis_grammar_not_lm_format_enforcer(standins, model_folders, caplog):
    # The default model is not a Functionary model: grammar sampling is on, and on TGI it is TGI's
    # own `grammar` parameter that enforces it (the README's TGI section), not a vLLM back end.
    standin = standins(default_tokenizer())
    with caplog.at_level("INFO", logger="functionary.api.app"):
        async with serving(standin, model_folders["default"]):
            pass
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("serving ")]
    assert "grammar sampling on, TGI's JSON grammar (named tool_choice and response_format only)" in line
    assert "lm-format-enforcer" not in line and "xgrammar" not in line


async def test_max_total_tokens_lowers_the_endpoints_context(standins, model_folders):
    # README: --max_total_tokens is "a lower limit than the endpoint's own" (2048 on the stand-in):
    # a request that fits TGI's limit but not ours is refused here, before TGI sees it.
    standin = standins(default_tokenizer())
    async with serving(standin, model_folders["default"], "--max_total_tokens", "200") as (http, client):
        models = await client.models.list()
        assert models.data[0].id == MODEL
        response = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 500})
        assert response.status_code == 400
        error = response.json()["error"]
        assert (error["param"], error["code"]) == ("max_tokens", "context_length_exceeded")
        assert "maximum context length is 200 tokens" in error["message"]
        fits = await http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER, "max_tokens": 20})
        assert fits.status_code == 200
    assert len(standin.requests) == 1  # only the request that fits reached TGI
