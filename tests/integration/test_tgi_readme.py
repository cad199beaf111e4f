"""The README's TGI commands, run as far as this machine allows.

Only what cannot exist here changes: the model folder (a local tokenizer folder instead of a
downloaded Functionary model), the endpoint's address (the TGI stand-in), the listening port,
and the save folder (a temporary one). There is no Docker daemon here, so the second command
ends with its one-line error, which is what it must do without Docker.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support.server import ROOT, free_port
from tests.support.tgi_standin import TGIStandIn
from tests.support.tokenizers import build_format_tokenizer

README = (ROOT / "README.md").read_text()


def tgi_commands() -> list[list[str]]:
    start = README.index("\n## TGI\n")
    end = README.index("\n## ", start + 1)
    (block,) = re.findall(r"```bash\n(.*?)```", README[start:end], flags=re.S)
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def replaced(words: list[str], flag: str, value: str) -> list[str]:
    out = list(words)
    out[out.index(flag) + 1] = value
    return out


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("readme-tgi") / "functionary-small-v3.2"
    build_format_tokenizer("v3.llama3").save_pretrained(str(folder))
    return str(folder)


def test_the_readme_shows_both_ways_to_start():
    running, started = tgi_commands()
    assert running[:2] == [".venv/bin/python", "server_tgi.py"] and "--endpoint" in running
    assert started[:2] == [".venv/bin/python", "server_tgi.py"] and "--endpoint" not in started


def test_the_command_for_a_running_tgi_serves_tool_calls(model_folder, tmp_path):
    running, _ = tgi_commands()
    standin = TGIStandIn(build_format_tokenizer("v3.llama3"), lambda body: 'get_weather\n{"city": "Paris"}<|eot_id|>')
    url = standin.start()
    port = free_port()
    command = replaced(replaced(running, "--model", model_folder), "--endpoint", url)
    command = [sys.executable, *command[1:], "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        response = httpx.post(f"{base}/v1/chat/completions", timeout=30, json={
            "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required",
        })
        assert response.status_code == 200, response.text
        (call,) = response.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    finally:
        process.terminate()
        process.wait(30)
        standin.stop()


def test_the_command_that_starts_tgi_says_what_to_start_without_docker(tmp_path):
    _, started = tgi_commands()
    save = tmp_path / "tgi-data"
    port = free_port()
    command = [sys.executable, *replaced(started, "--remote_model_save_folder", str(save))[1:],
               "--endpoint", f"http://127.0.0.1:{port}"]
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    (line,) = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: no TGI answers at http://127.0.0.1:{port}/health and Docker is not available")
    assert "--model-id meetkai/functionary-small-v3.2" in line
    assert not Path(save).exists()  # nothing is created before Docker is there
