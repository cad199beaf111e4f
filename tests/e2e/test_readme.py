"""The README's client examples, run as written against the real server (marked slow; CI runs it).

Only the address changes: the examples say 127.0.0.1:8000, the test server listens elsewhere.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support.server import running_server

pytestmark = pytest.mark.slow
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("readme")) as base:
        yield base


def test_the_openai_client_example_prints_the_named_call(server):
    (example,) = code_blocks(section("The `openai` client"), "python")
    assert "http://127.0.0.1:8000/v1" in example
    script = example.replace("http://127.0.0.1:8000/v1", f"{server}/v1")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "name='get_car_price'" in done.stdout and "car_name" in done.stdout, done.stdout


def test_the_raw_http_example_returns_one_call(server):
    (example,) = code_blocks(section("Raw HTTP"), "bash")
    words = shlex.split(example)
    assert words[:2] == ["curl", "-s"] and words[2] == "http://127.0.0.1:8000/v1/chat/completions"
    body = json.loads(words[words.index("-d") + 1])
    response = httpx.post(f"{server}/v1/chat/completions", json=body, timeout=300)
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    (call,) = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert len(json.loads(call["function"]["arguments"])["city"]) <= 40


def test_the_streaming_example_streams_chunks_then_usage(server):
    (example,) = code_blocks(section("Streaming"), "python")
    (client_example,) = code_blocks(section("The `openai` client"), "python")
    setup = client_example.split("response = ")[0].replace("http://127.0.0.1:8000/v1", f"{server}/v1")
    script = setup + example.replace(
        "model=..., messages=...",
        'model=client.models.list().data[0].id, messages=[{"role": "user", "content": "Hi"}], max_tokens=16',
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("ChoiceDelta(") and "role='assistant'" in lines[0], lines[:3]
    assert lines[-1].startswith("CompletionUsage(") and "completion_tokens=" in lines[-1], lines[-3:]
