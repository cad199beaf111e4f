"""`python -m functionary render|parse` as a user runs it: a real subprocess, stdin to stdout."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.golden.vectors_loader import load, request_of

CASES = [c for c in load("prompts") if c["id"] in ("C06", "C12") and c.get("prompt") is not None]


def run(args, stdin):
    return subprocess.run([sys.executable, "-m", "functionary", *args], input=stdin.encode("utf-8"),
                          capture_output=True, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['version']}-{c['id']}")
def test_render_writes_exactly_the_prompt(case):
    done = run(["render", "--template-version", case["version"]], json.dumps(request_of(case)))
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("utf-8") == case["prompt"]  # no trailing newline, no BOS


@pytest.mark.parametrize("stdin,args,message", [
    ("not json", ["render", "--template-version", "v2"], "not valid JSON"),
    ('{"model": "x"}', ["render", "--template-version", "v2"], "`messages` is required"),
    ('{"messages": [{"role": "wizard", "content": "hi"}]}', ["render", "--template-version", "v2"], "role"),
    ('{"messages": [{"role": "user", "content": "hi"}], "tools": [], "functions": []}',
     ["render", "--template-version", "v3.llama3"], "not both"),
    ('{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f"}}],'
     ' "tool_choice": {"type": "function", "function": {"name": "g"}}}', ["render", "--template-version", "v3.llama3"],
     "'g'"),
    ('{"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function", "function": {"name": "f",'
     ' "parameters": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}}]}',
     ["render", "--template-version", "v2"], "reference"),
    ("{}", ["render", "--template-version", "v9"], "invalid choice"),
    ("{}", ["render"], "--template-version"),
])
def test_bad_input_is_one_line_on_stderr_and_exit_code_2(stdin, args, message):
    done = run(args, stdin)
    assert done.returncode == 2
    assert done.stdout == b""
    err = done.stderr.decode()
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert "Traceback" not in err


def test_parse_prints_the_message():
    done = run(["parse", "--template-version", "v3.llama3"], 'all\nLet me check.>>>get_weather\n{"city": "Paris"}')
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)
    assert message["content"] == "Let me check."
    assert message["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


# The README's two command lines, run by bash as written (only the interpreter's path changes).
README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
README_COMMANDS = [
    line for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S)
    for line in block.splitlines() if "-m functionary " in line
]


def run_readme_line(verb: str) -> subprocess.CompletedProcess:
    (line,) = [c for c in README_COMMANDS if f"-m functionary {verb} " in c]
    line = line.replace(".venv/bin/python", shlex.quote(sys.executable))
    return subprocess.run(["bash", "-c", line], capture_output=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])


def test_readme_render_example_prints_the_reference_prompt():
    done = run_readme_line("render")
    assert done.returncode == 0, done.stderr
    # The reference vector for one user message on v3.llama3, with that message's text swapped in.
    (c01,) = [c for c in load("prompts") if c["version"] == "v3.llama3" and c["id"] == "C01"]
    assert request_of(c01)["messages"][0]["content"] == "Hello! Who are you?"
    assert done.stdout.decode("utf-8") == c01["prompt"].replace("Hello! Who are you?", "Hi")


def test_readme_parse_example_splits_text_and_call():
    done = run_readme_line("parse")
    assert done.returncode == 0, done.stderr
    message = json.loads(done.stdout)
    assert message["content"] == "Hello!"
    assert [c["function"] for c in message["tool_calls"]] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    ]
