"""A named `tool_choice` that carries its own description or parameters replaces the tool list
(FORMAT_SPEC §2 `enforce_tool_choice`), as the original server does.

Reference: vector C10 forces `search_flights` by name; the original rendered its prompt with the
tool list `[search_flights]` (`tools_or_functions_after_enforce`). Under the rule, a choice that
carries that same definition must render that same prompt whatever `tools` holds: a stale
definition of the same name, other tools, the code interpreter, or no tool of that name at all.
v1 is left out: the original could not force a call on v1 (its C10 vector is an error).
"""
from __future__ import annotations

import copy
import subprocess
import sys
import json

import pytest

from functionary.prompt_template import get_prompt_template_by_version
from functionary.prompt_template.errors import PromptError
from functionary.prompt_template.inference import build_inference_prompt
from tests.golden.vectors_loader import load

C10 = [c for c in load("prompts") if c["id"] == "C10" and c["version"] != "v1"]
STALE = {"description": "Old flight search (do not use).",
         "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}
OTHER = {"type": "function", "function": {"name": "lookup_timezone", "description": "Time zone of a city",
                                          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def defined_choice(case: dict) -> dict:
    (tool,) = case["tools_or_functions_after_enforce"]
    function = copy.deepcopy(tool["function"])
    assert function["name"] == case["tool_choice"]["function"]["name"]
    assert function["description"] or function["parameters"]  # so the rule applies
    return {"type": "function", "function": function}


def with_stale_definition(case: dict) -> list[dict]:
    tools = copy.deepcopy(case["tools"])
    name = case["tool_choice"]["function"]["name"]
    hits = [t for t in tools if t.get("function", {}).get("name") == name]
    assert len(hits) == 1
    hits[0]["function"].update(copy.deepcopy(STALE))
    return tools + [OTHER, {"type": "code_interpreter"}]


def render(case: dict, tools: list[dict], tool_choice) -> str:
    template = get_prompt_template_by_version(case["version"])
    return build_inference_prompt(template, case["messages"], tools=tools, tool_choice=tool_choice).prompt


@pytest.mark.parametrize("case", C10, ids=lambda c: c["version"])
def test_reference_prompt_of_a_plain_named_choice(case):
    # The reference itself: filtering by name renders the vector's prompt.
    assert render(case, case["tools"], case["tool_choice"]) == case["prompt"]


@pytest.mark.parametrize("case", C10, ids=lambda c: c["version"])
def test_the_choices_definition_replaces_a_stale_one(case):
    tools = with_stale_definition(case)
    assert render(case, tools, case["tool_choice"]) != case["prompt"]  # the stale one shows by name
    assert render(case, tools, defined_choice(case)) == case["prompt"]


@pytest.mark.parametrize("case", C10, ids=lambda c: c["version"])
def test_the_choices_definition_needs_no_listed_tool_of_that_name(case):
    assert render(case, [OTHER, {"type": "code_interpreter"}], defined_choice(case)) == case["prompt"]


@pytest.mark.parametrize("case", C10, ids=lambda c: c["version"])
def test_parameters_alone_or_description_alone_also_replace(case):
    # The original replaces as soon as either differs from its defaults ("" / None).
    function = defined_choice(case)["function"]
    template = get_prompt_template_by_version(case["version"])
    for own in ({"name": function["name"], "parameters": function["parameters"]},
                {"name": function["name"], "description": function["description"]}):
        built = build_inference_prompt(template, case["messages"], tools=with_stale_definition(case),
                                       tool_choice={"type": "function", "function": own})
        expected = {"name": own["name"], "description": own.get("description", ""),
                    "parameters": own.get("parameters")}
        assert built.tools == [{"type": "function", "function": expected}]
        assert built.tool_choice == {"type": "function", "function": {"name": function["name"]}}


def test_a_bare_named_choice_still_needs_the_listed_tool():
    (case,) = [c for c in C10 if c["version"] == "v3.llama3"]
    for bare in ({"name": "no_such_tool"}, {"name": "no_such_tool", "description": "", "parameters": None}):
        with pytest.raises(PromptError, match="no_such_tool"):
            render(case, case["tools"], {"type": "function", "function": bare})


def test_cli_render_applies_the_rule():
    (case,) = [c for c in C10 if c["version"] == "v3.llama3"]
    request = {"messages": case["messages"], "tools": with_stale_definition(case), "tool_choice": defined_choice(case)}
    done = subprocess.run([sys.executable, "-m", "functionary", "render", "--template-version", "v3.llama3"],
                          input=json.dumps(request).encode(), capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode("utf-8") == case["prompt"]
