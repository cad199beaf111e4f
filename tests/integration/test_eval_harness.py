"""`functionary eval bfcl` against two in-process servers on the fake backend, side by side.

Each fake answers by script: it finds the BFCL question in the prompt it is given and answers
right (the first allowed value of every parameter of the possible answer, an assertion checked
with BFCL's own checker first) or wrong, by a rule on the item's position that the test knows.
So the expected counts come from the script, not from the code under test.
"""
from __future__ import annotations

import io
import json
import re

import pytest

from functionary.__main__ import main
from functionary.backends.fake import FakeBackend
from functionary.eval.data import load_category
from functionary.eval.tools import openai_name
from tests.support.bfcl_reference import bfcl_verdict

LIMIT = 4
CATEGORIES = ("simple_python", "parallel", "irrelevance")
ENTRIES = {c: load_category(c)[:LIMIT] for c in CATEGORIES}


def right_calls(entry) -> list[tuple[str, dict]]:
    calls = []
    for answer in entry.possible_answer:
        name, params = next(iter(answer.items()))
        calls.append((name, {k: v[0] for k, v in params.items() if v and v[0] != ""}))
    assert bfcl_verdict(entry.category, entry.functions, [{n: a} for n, a in calls], entry.possible_answer)
    return calls


def v3_output(calls: list[tuple[str, dict]]) -> str:
    """The calls in the v3.llama3 format the fake's server parses (the prompt ends with `>>>`)."""
    return ">>>".join(f"{openai_name(n, set())}\n{json.dumps(a)}" for n, a in calls) + "<|eot_id|>"


def script(good_positions: set[int], error_id: str | None = None):
    """Answers right at the given positions of each category, wrong elsewhere; irrelevance items
    are answered with text at those positions and with a call elsewhere."""
    def answer(prompt: str) -> str:
        for category, entries in ENTRIES.items():
            for position, entry in enumerate(entries):
                question = entry.turns[0][-1]["content"]
                if question not in prompt:
                    continue
                if entry.id == error_id:
                    raise RuntimeError("scripted engine failure")
                good = position in good_positions
                if category == "irrelevance":
                    function = entry.functions[0]
                    return "all\nI cannot help with that.<|eot_id|>" if good else \
                        v3_output([(function["name"], {})])
                if good:
                    return v3_output(right_calls(entry))
                return "all\nI do not know.<|eot_id|>"
        raise AssertionError("the prompt holds no BFCL question of this test")
    return answer


def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(args, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_two_endpoints_side_by_side_json_shape_and_counts(live, tmp_path):
    a = live(fake=FakeBackend(script({0, 1, 2, 3})))  # all right
    b = live(fake=FakeBackend(script({0, 2}, error_id="parallel_1")))  # half right, one engine failure
    out_json, out_md = tmp_path / "out.json", tmp_path / "out.md"
    code, stdout, stderr = run_cli([
        "eval", "bfcl", "--base-url", f"{a.url}/v1", "--model", "functionary-test", "--base-url", f"{b.url}/v1",
        "--categories", ",".join(CATEGORIES), "--limit", str(LIMIT), "--concurrency", "3",
        "--json", str(out_json), "--markdown", str(out_md), "--no-progress"])
    assert code == 0, stderr
    assert "Traceback" not in stderr + stdout
    report = json.loads(out_json.read_text())
    assert set(report) == {"results", "items"}
    results = {(r["base_url"], r["category"]): r for r in report["results"]}
    assert len(report["results"]) == 2 * len(CATEGORIES)
    for r in report["results"]:
        assert {"base_url", "model", "category", "total", "correct", "errors"} <= set(r)
        assert r["model"] == "functionary-test"  # named for A, listed by B's /v1/models
    for category in CATEGORIES:
        assert results[(f"{a.url}/v1", category)] | {"base_url": None} == {
            "base_url": None, "model": "functionary-test", "category": category, "total": LIMIT,
            "correct": LIMIT, "errors": 0, "truncated": 0, "endpoint": 0}
    assert results[(f"{b.url}/v1", "simple_python")]["correct"] == 2
    assert results[(f"{b.url}/v1", "irrelevance")]["correct"] == 2
    assert results[(f"{b.url}/v1", "parallel")] | {"base_url": None} == {
        "base_url": None, "model": "functionary-test", "category": "parallel", "total": LIMIT, "correct": 2,
        "errors": 1, "truncated": 0, "endpoint": 1}

    items = report["items"]
    assert len(items) == 2 * LIMIT * len(CATEGORIES)
    keys = {"base_url", "model", "category", "id", "correct", "calls", "error", "latency_s", "completion_tokens"}
    for item in items:
        assert keys <= set(item)
    # alternating: entry 1 on A, entry 1 on B, entry 2 on A, ...
    assert [i["base_url"] for i in items[:4]] == [f"{a.url}/v1", f"{b.url}/v1"] * 2
    assert [i["id"] for i in items[:4]] == ["simple_python_0", "simple_python_0", "simple_python_1", "simple_python_1"]
    failed = [i for i in items if i["error"]]
    assert [(i["base_url"], i["id"]) for i in failed] == [(f"{b.url}/v1", "parallel_1")]
    assert failed[0]["error"].startswith("HTTP 5") and not failed[0]["correct"]
    # the calls come back under BFCL's names (math.factorial, not math_factorial)
    factorial = next(i for i in items if i["id"] == "simple_python_1" and i["base_url"] == f"{a.url}/v1")
    assert factorial["calls"] == [{"math.factorial": {"number": 5}}]
    answered = [i for i in items if not i["error"]]
    assert all(i["latency_s"] > 0 and i["completion_tokens"] > 0 for i in answered)

    # the console table and the Markdown file: accuracy per endpoint and the difference
    assert "-50.0 pt" in stdout
    markdown = out_md.read_text()
    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    assert "100.0 % (4/4" in rows["simple_python"] and "50.0 % (2/4" in rows["simple_python"]
    assert rows["simple_python"].rstrip(" |").endswith("-50.0 pt")
    assert "errors 1" in rows["parallel"]


def test_max_tokens_cut_is_reported(live, tmp_path):
    server = live(fake=FakeBackend(script({0, 1})))
    out_json = tmp_path / "out.json"
    code, _, stderr = run_cli(["eval", "bfcl", "--base-url", f"{server.url}/v1", "--categories", "simple_python",
                               "--limit", "2", "--max-tokens", "3", "--json", str(out_json), "--no-progress"])
    assert code == 0, stderr
    report = json.loads(out_json.read_text())
    assert report["results"][0]["truncated"] == 2 and report["results"][0]["correct"] == 0
    assert {i["finish_reason"] for i in report["items"]} == {"length"}
    assert server.fake.requests[0].params.max_tokens == 3


@pytest.mark.parametrize("args,message", [
    (["--categories", "simple_python,nope"], "unknown category 'nope'"),
    (["--limit", "0"], "--limit"),
    (["--tool-choice", "sometimes"], "--tool-choice"),
    (["--temperature", "hot"], "--temperature"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    code, stdout, stderr = run_cli(["eval", "bfcl", "--base-url", "http://127.0.0.1:9/v1", *args])
    assert code == 2
    assert stderr.count("\n") == 1 and stderr.startswith("error: ") and message in stderr
    assert "Traceback" not in stderr


def test_unreachable_endpoint_is_one_line(capsys):
    code, _, stderr = run_cli(["eval", "bfcl", "--base-url", "http://127.0.0.1:9/v1", "--limit", "1",
                               "--no-progress"])
    assert code == 1
    assert stderr.count("\n") == 1 and "cannot reach http://127.0.0.1:9/v1" in stderr


def test_tool_choice_and_tools_reach_the_server(live, tmp_path):
    server = live(fake=FakeBackend(script({0})))
    code, _, stderr = run_cli(["eval", "bfcl", "--base-url", f"{server.url}/v1", "--categories", "simple_python",
                               "--limit", "2", "--tool-choice", "required", "--no-progress"])
    assert code == 0, stderr
    prompts = [r.prompt for r in server.fake.requests]
    # the tool's JSON Schema, converted from BFCL's Python types, is in the rendered prompt
    assert any(re.search(r"namespace functions", p) for p in prompts)
    assert any("math_factorial" in p for p in prompts)


def test_the_same_endpoint_twice_is_an_a_a_run(live, tmp_path):
    server = live(fake=FakeBackend(script({0, 1})))
    out_json = tmp_path / "out.json"
    code, stdout, stderr = run_cli(["eval", "bfcl", "--base-url", f"{server.url}/v1", "--base-url", f"{server.url}/v1",
                                    "--categories", "simple_python", "--limit", "2", "--json", str(out_json),
                                    "--no-progress"])
    assert code == 0, stderr
    results = json.loads(out_json.read_text())["results"]
    assert [(r["endpoint"], r["total"], r["correct"]) for r in results] == [(0, 2, 2), (1, 2, 2)]
    assert "+0.0 pt" in stdout


# ---- multi-turn: BFCL's simulated APIs and checker, driven through the server ----------------

def _ground_truth_calls(texts: list[str]) -> list[tuple[str, dict]]:
    """BFCL's ground-truth call texts (`cd(folder='x')`) as (name, arguments)."""
    import ast

    calls = []
    for text in texts:
        node = ast.parse(text, mode="eval").body
        calls.append((node.func.id, {k.arg: ast.literal_eval(k.value) for k in node.keywords}))
    return calls


def multi_turn_script(entry, right: bool):
    """Each turn: the turn's ground-truth calls in one step (or `ls()` when not `right`), then,
    once the tool results are in, a text answer that ends the turn."""
    def answer(prompt: str) -> str:
        turn = prompt.count("<|start_header_id|>user<|end_header_id|>") - 1
        last = prompt.rsplit("<|start_header_id|>", 2)[-2]
        if last.startswith("tool<|end_header_id|>"):
            return "all\nDone.<|eot_id|>"
        calls = _ground_truth_calls(entry.ground_truth[turn]) if right else [("ls", {})]
        return v3_output(calls)
    return answer


def test_multi_turn_runs_bfcls_apis_and_checker(live, tmp_path):
    (entry,) = [e for e in load_category("multi_turn_base") if e.id == "multi_turn_base_12"]
    right = live(fake=FakeBackend(multi_turn_script(entry, True), max_model_len=1_000_000))
    wrong = live(fake=FakeBackend(multi_turn_script(entry, False), max_model_len=1_000_000))
    out_json = tmp_path / "out.json"
    code, _, stderr = run_cli(["eval", "bfcl", "--base-url", f"{right.url}/v1", "--base-url", f"{wrong.url}/v1",
                               "--categories", "multi_turn_base", "--limit", "13", "--json", str(out_json),
                               "--no-progress"])
    assert code == 0, stderr
    items = {(i["endpoint"], i["id"]): i for i in json.loads(out_json.read_text())["items"]}
    good, bad = items[(0, "multi_turn_base_12")], items[(1, "multi_turn_base_12")]
    assert good["correct"] and good["error"] is None, good
    # per turn, per step, the calls as BFCL executes them
    assert good["calls"] == [[["cd(folder='Documents')", "touch(file_name='summary.txt')"]],
                             [["echo(content='quantum computing',file_name='summary.txt')"]],
                             [["wc(file_name='summary.txt',mode='w')"]]]
    assert not bad["correct"] and bad["reason"], bad
    # three turns, each: one step with calls, then the text answer after the tool results
    question = entry.turns[0][0]["content"]
    prompts = [r.prompt for r in right.fake.requests if question in r.prompt]
    assert len(prompts) == 6
    assert [p.count("<|start_header_id|>tool<|end_header_id|>") for p in prompts] == [0, 2, 2, 3, 3, 4]


def test_an_interrupted_run_reports_the_items_done(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.integration.conftest import make_settings, start_live
    from functionary.api import create_app

    fake = FakeBackend(script({0, 1, 2, 3}), delay=0.05)  # slow enough to stop in the middle
    server = start_live(create_app(make_settings(), lambda: fake), fake)
    try:
        out_json = tmp_path / "out.json"
        process = subprocess.Popen([sys.executable, "-m", "functionary", "eval", "bfcl", "--base-url",
                                    f"{server.url}/v1", "--categories", "simple_python", "--concurrency", "1",
                                    "--json", str(out_json), "--no-progress"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while len(fake.requests) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        server.stop()
    assert process.returncode == 130, stderr
    assert "interrupted: reporting the" in stderr and "Traceback" not in stderr
    (row,) = json.loads(out_json.read_text())["results"]
    assert 2 <= row["total"] < 400 and row["correct"] >= 2
    assert "simple_python" in stdout
