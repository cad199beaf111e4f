"""Every golden prompt vector renders byte for byte: through the API, the CLI and the server path."""
from __future__ import annotations

import io
import json

import pytest

from functionary.__main__ import main as cli_main
from functionary.prompt_template import (
    PromptError,
    build_inference_prompt,
    get_prompt_template_by_version,
)
from functionary.prompt_template.typescript import render_namespace
from tests.golden.vectors_loader import GOLDEN, VECTORS, case_id, load, request_of

PROMPT_CASES = load("prompts")
SERVED = [c for c in PROMPT_CASES if c.get("prompt") is not None]
SEED_ERRORS = [c for c in PROMPT_CASES if c.get("prompt") is None]


def test_vectors_are_all_there():
    assert len(PROMPT_CASES) == 100
    assert {c["id"] for c in SEED_ERRORS} == {"C10", "C14"}


@pytest.mark.parametrize("case", PROMPT_CASES, ids=case_id)
def test_training_prompt(case):
    template = get_prompt_template_by_version(case["version"])
    tools = case["tools"] if case["tools"] is not None else case["functions"]
    assert template.get_prompt_from_messages(case["messages"], tools) == case["training_prompt"]


@pytest.mark.parametrize("case", SERVED, ids=case_id)
def test_inference_prompt(case):
    template = get_prompt_template_by_version(case["version"])
    rendered = build_inference_prompt(
        template, case["messages"], case["tools"], case["functions"], case["tool_choice"], case["function_call"]
    )
    assert rendered.prompt == case["prompt"]
    assert rendered.prompt.endswith(template.get_generation_prompt() + case["generation_prefix"])
    expected_choice = case["effective_tool_choice"]
    if isinstance(expected_choice, dict):
        expected_name = (expected_choice.get("function") or expected_choice)["name"]
        assert rendered.tool_choice["function"]["name"] == expected_name
    else:
        assert rendered.tool_choice == expected_choice
    expected_tools = [
        t if "type" in t else {"type": "function", "function": t} for t in case["tools_or_functions_after_enforce"]
    ]
    assert rendered.tools == [
        {"type": t["type"], "function": t["function"]} if t["type"] == "function" else {"type": t["type"]}
        for t in expected_tools
    ]


@pytest.mark.parametrize("case", SERVED, ids=case_id)
def test_cli_prints_the_inference_prompt(case):
    stdout, stderr = io.StringIO(), io.StringIO()
    code = cli_main(["render", "--template-version", case["version"]],
                    stdin=io.StringIO(json.dumps(request_of(case))), stdout=stdout, stderr=stderr)
    assert (code, stderr.getvalue()) == (0, "")
    assert stdout.getvalue() == case["prompt"]


@pytest.mark.parametrize("case", SEED_ERRORS, ids=case_id)
def test_v1_named_choice_forces_the_call_instead_of_crashing(case):
    # The seed raised NotImplementedError; we prefix the forced call in v1's own call syntax.
    template = get_prompt_template_by_version("v1")
    rendered = build_inference_prompt(
        template, case["messages"], case["tools"], case["functions"], case["tool_choice"], case["function_call"]
    )
    name = (case["tool_choice"] or case["function_call"])
    name = name["function"]["name"] if "function" in name else name["name"]
    assert rendered.prompt.endswith(f"assistant:\n<|START_OF_FUNCTION_CALL|>{name}:\n")
    # Everything before the generation prompt is the training rendering of the enforced tool list.
    assert rendered.prompt.startswith("system:\n// Supported function definitions")


SCHEMA_CASES = json.loads((VECTORS / "schema_typescript.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", SCHEMA_CASES, ids=lambda c: c["note"] or (c["function"] or {}).get("name", "list"))
def test_schema_typescript(case):
    functions = case["function"] if isinstance(case["function"], list) else [case["function"]]
    assert render_namespace(functions) == case["rendered"]


SEED_TESTS = GOLDEN / "seed-tests"


@pytest.mark.parametrize("version", ["v1", "v2", "v2.llama3", "v3.llama3", "v3-llama3.1"])
def test_original_project_prompt_files(version):
    case = json.loads((SEED_TESTS / ("test_case_v1.json" if version == "v1" else "test_case.json")).read_text())
    expected = (SEED_TESTS / f"prompt_test_{version}.txt").read_text(encoding="utf-8")
    template = get_prompt_template_by_version(version)
    tools = case.get("tools") if case.get("tools") is not None else case.get("functions")
    assert template.get_prompt_from_messages(case["messages"], tools).strip() == expected.strip()


def test_unknown_version_is_a_clear_error():
    with pytest.raises(PromptError, match="Unknown prompt template version 'v9'"):
        get_prompt_template_by_version("v9")


@pytest.mark.parametrize("version", ["v2", "v3.llama3", "v3-llama3.1"])
def test_a_null_tool_description_renders_like_an_absent_one(version):
    # OpenAI clients and vLLM's own tool model send `"description": null`; the seed printed "None".
    template = get_prompt_template_by_version(version)
    messages = [{"role": "user", "content": "hi"}]
    null = build_inference_prompt(template, messages, [{"type": "function", "function": {"name": "f", "description": None}}])
    absent = build_inference_prompt(template, messages, [{"type": "function", "function": {"name": "f"}}])
    assert null.prompt == absent.prompt
    assert "None" not in null.prompt


LEGACY_HISTORY = [
    {"role": "user", "content": "Quote for ORCL"},
    {"role": "assistant", "content": None, "function_call": {"name": "get_stock_quote", "arguments": '{"ticker": "ORCL"}'}},
    {"role": "function", "name": "get_stock_quote", "content": "140.2"},
]
LEGACY_FUNCTIONS = [{"name": "get_stock_quote", "description": "Latest quote for a ticker symbol",
                     "parameters": {"type": "object", "properties": {"ticker": {"type": "string"}}, "required": ["ticker"]}}]


@pytest.mark.parametrize("version,expected_tail", [
    ("v1", 'assistant:\n<|START_OF_FUNCTION_CALL|>get_stock_quote:\n{"ticker": "ORCL"}<|END_OF_FUNCTION_CALL|>\n'
           "function name=get_stock_quote:\n140.2<|END_OF_FUNCTION_RESULT|>\nassistant:"),
    ("v2", '<|from|>assistant\n<|recipient|>get_stock_quote\n<|content|>{"ticker": "ORCL"}<|stop|>\n'
           "<|from|>get_stock_quote\n<|recipient|>all\n<|content|>140.2\n<|from|>assistant\n<|recipient|>"),
    ("v2.llama3", '<|start_header_id|>assistant<|end_header_id|>\n\n<|reserved_special_token_249|>get_stock_quote\n'
                  '{"ticker": "ORCL"}<|eot_id|><|start_header_id|>tool<|end_header_id|>\n\nname=get_stock_quote\n140.2'
                  "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"),
    ("v3.llama3", '<|start_header_id|>assistant<|end_header_id|>\n\n>>>get_stock_quote\n{"ticker": "ORCL"}<|eot_id|>'
                  "<|start_header_id|>tool<|end_header_id|>\n\n140.2<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n>>>"),
    ("v3-llama3.1", '<|start_header_id|>assistant<|end_header_id|>\n\n<function=get_stock_quote>{"ticker": "ORCL"}</function>'
                    "<|eom_id|><|start_header_id|>ipython<|end_header_id|>\n\n140.2<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\n"),
])
def test_legacy_function_history_renders_in_every_version(version, expected_tail):
    # The seed asserted on role "function" and ignored function_call in v2 and later (C28).
    template = get_prompt_template_by_version(version)
    rendered = build_inference_prompt(template, LEGACY_HISTORY, functions=LEGACY_FUNCTIONS)
    assert rendered.prompt.endswith(expected_tail)
    assert rendered.legacy_functions and rendered.tool_choice == "auto"
