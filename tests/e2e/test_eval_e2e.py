"""`functionary eval bfcl` against the real server on the default model (marked slow; CI runs it).

The README's Evaluation commands run as written (only the server's address changes). Every item
must be scored, and each simple_python verdict must equal that of an independent AST check of
the same answer: BFCL's own checker code (bfcl_eval's ast_checker), given BFCL's own function
docs and possible answers read straight from the package's files.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from functionary.eval.data import package_dir
from tests.support.bfcl_reference import bfcl_verdict
from tests.support.server import running_server

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def evaluation_commands() -> list[str]:
    start = README.index("\n## Evaluation\n")
    end = README.find("\n## ", start + 1)
    blocks = re.findall(r"```bash\n(.*?)```", README[start:end], flags=re.S)
    return [line for block in blocks for line in block.splitlines() if "-m functionary eval bfcl" in line]


def bfcl_file(name: str) -> dict[str, dict]:
    with open(package_dir() / "data" / name, encoding="utf-8") as f:
        return {entry["id"]: entry for entry in map(json.loads, filter(str.strip, f))}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("eval")) as base:
        yield base


def run_line(line: str, server: str, cwd: Path) -> subprocess.CompletedProcess:
    line = line.replace(".venv/bin/python", shlex.quote(sys.executable))
    line = re.sub(r"http://127\.0\.0\.1:800[01]", server, line)  # both endpoints: the test server
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=1500, cwd=cwd)


def test_readme_run_scores_every_item_and_agrees_with_bfcls_checker(server, tmp_path):
    (line,) = [c for c in evaluation_commands() if "--json" in c]
    done = run_line(line, server, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    report = json.loads((tmp_path / "bfcl.json").read_text())
    limit = int(re.search(r"--limit (\d+)", line).group(1))
    categories = re.search(r"--categories (\S+)", line).group(1).split(",")
    assert {r["category"]: (r["total"], r["errors"]) for r in report["results"]} == {c: (limit, 0) for c in categories}
    items = report["items"]
    assert sorted(i["id"] for i in items) == sorted(f"{c}_{k}" for c in categories for k in range(limit))
    for item in items:  # every item answered and scored
        assert item["error"] is None and isinstance(item["correct"], bool), item
        assert item["latency_s"] > 0 and item["completion_tokens"] > 0, item
        assert item["finish_reason"] in ("stop", "tool_calls", "length"), item

    questions, answers = bfcl_file("BFCL_v4_simple_python.json"), bfcl_file("possible_answer/BFCL_v4_simple_python.json")
    simple = [i for i in items if i["category"] == "simple_python"]
    for item in simple:
        reference = bfcl_verdict("simple_python", questions[item["id"]]["function"], item["calls"],
                                 answers[item["id"]]["ground_truth"])
        assert item["correct"] == reference, item
    (row,) = [r for r in report["results"] if r["category"] == "simple_python"]
    assert row["correct"] == sum(i["correct"] for i in simple)


def test_readme_side_by_side_run_writes_the_table(server, tmp_path):
    (line,) = [c for c in evaluation_commands() if "--markdown" in c]
    assert line.count("--base-url") == 2
    done = run_line(line, server, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    table = (tmp_path / "bfcl.md").read_text()
    limit = re.search(r"--limit (\d+)", line).group(1)
    (row,) = [r for r in table.splitlines() if r.startswith("| simple_python |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 4  # category, endpoint 1, endpoint 2, difference
    assert all(re.match(rf"\d+\.\d % \(\d+/{limit}; errors 0;", c) for c in cells[1:3]), row
    assert re.fullmatch(r"[+-]\d+\.\d pt", cells[3]), row
