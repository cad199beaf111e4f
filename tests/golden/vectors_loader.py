"""Loads the golden vectors copied from shared/spec (never edited by tests)."""
from __future__ import annotations

import json
from pathlib import Path

GOLDEN = Path(__file__).resolve().parent
VECTORS = GOLDEN / "vectors"
VERSIONS = ("v1", "v2", "v2.llama3", "v3.llama3", "v3-llama3.1")


def load(kind: str) -> list[dict]:
    """All vectors of a kind ("prompts" or "parse") across versions."""
    cases = []
    for version in VERSIONS:
        path = VECTORS / f"{kind}_{version}.json"
        cases.extend(json.loads(path.read_text(encoding="utf-8")))
    return cases


def case_id(case: dict) -> str:
    return f"{case['version']}-{case['id']}"


def request_of(case: dict) -> dict:
    """The OpenAI request a prompt vector describes (null fields left out)."""
    keys = ("messages", "tools", "functions", "tool_choice", "function_call")
    return {k: case[k] for k in keys if case.get(k) is not None}
