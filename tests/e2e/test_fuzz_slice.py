"""A seeded slice of the fuzz campaign (benchmarks/fuzz.py) against the real server on the default
model, plus the edge checks there: a bad tool definition and the limits, with limit flags given on
the command line, so this also proves they reach `server_vllm.py` (marked slow; CI runs it)."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.server import running_server

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SLICE_REQUESTS = 300
SLICE_SEED = 20261203
BODY_LIMIT = 1_000_000
MAX_TOOLS = 8


def load_fuzz():
    spec = importlib.util.spec_from_file_location("functionary_fuzz", ROOT / "benchmarks" / "fuzz.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fuzz")
    args = ["--max-request-body-bytes", str(BODY_LIMIT), "--max-tools", str(MAX_TOOLS)]
    with running_server(tmp, args) as base:
        yield base
    log = (tmp / "server.log").read_text(errors="replace")
    serving = log.split("Shutting down", 1)[0]  # what happened while serving, not the engine's teardown
    assert "Traceback" not in serving, serving[-4000:]


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=300)


def test_a_seeded_fuzz_slice_finds_no_5xx_and_leaves_the_server_healthy(server):
    fuzz = load_fuzz()
    report = asyncio.run(fuzz.run_campaign(server, SLICE_REQUESTS, SLICE_SEED, concurrency=4))
    assert report["requests"] == SLICE_REQUESTS
    assert report["server_errors_5xx"] == 0, json.dumps(report["failure_examples"], indent=1)
    assert report["failures"] == 0, json.dumps(report["failure_examples"], indent=1)
    assert report["after"]["health"] == 200
    assert report["after"]["valid_request_answered"]
    assert not any(report["after"]["engine_gauges"].values()), report["after"]
    # The slice exercised both sides: answers and refusals.
    assert report["statuses"].get("200", 0) >= 20 and report["statuses"].get("400", 0) >= 50, report["statuses"]


def test_a_bad_tool_definition_is_a_400_naming_it(client):
    model = client.models.list().data[0].id
    bad = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": 5}}}}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], tools=[bad],
                                       max_tokens=2)
    assert caught.value.param == "tools[0].function.parameters.properties.city.type"
    assert caught.value.code == "invalid_function_parameters"
    twice = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}] * 2
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], tools=twice,
                                       max_tokens=2)
    assert caught.value.param == "tools[1].function.name"


def test_limit_flags_reach_the_server(server, client):
    model = client.models.list().data[0].id
    many = [{"type": "function", "function": {"name": f"f{i}", "parameters": {"type": "object", "properties": {}}}}
            for i in range(MAX_TOOLS + 1)]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], tools=many,
                                       max_tokens=2)
    assert caught.value.code == "array_above_max_length"
    big = {"model": model, "messages": [{"role": "user", "content": "x" * BODY_LIMIT}], "max_tokens": 1}
    response = httpx.post(f"{server}/v1/chat/completions", json=big, timeout=60)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    response = httpx.post(f"{server}/v1/chat/completions", json={"model": model, "messages": [
        {"role": "user", "content": "hi"}], "max_tokens": 1}, headers={"x-big": "a" * 70_000}, timeout=60)
    assert response.status_code in (431, 400)  # 431 from the app; 400 if the h11 parser refused the head first
    if response.status_code == 431:
        assert response.json()["error"]["code"] == "headers_too_large"
