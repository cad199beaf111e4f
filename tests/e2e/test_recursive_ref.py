"""Tool definitions the server must take as they are, end to end on the real engine (marked slow),
under both grammar back ends:

* a `functionary.client` tool whose argument is a recursive dataclass: the client writes a
  recursive `$ref`, the server renders and constrains it, and the call comes back valid for the
  client's own validation (it was a 400 before);
* a named `tool_choice` carrying its own definition (FORMAT_SPEC §2 `enforce_tool_choice`): the
  call follows that definition, not the stale one in `tools`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Annotated

import jsonschema
import openai
import pytest
from pydantic import Field

from functionary.client import Toolbox, tool
from tests.support.server import running_server

pytestmark = pytest.mark.slow


@dataclass
class Node:
    """A node of a tree."""

    label: Annotated[str, Field(max_length=12)]
    children: Annotated[list["Node"], Field(max_length=2)] = field(default_factory=list)


def _count(node: Node) -> int:
    return 1 + sum(_count(child) for child in node.children)


@tool
def plant_tree(root: Node) -> str:
    """Plant a tree of labelled nodes.

    Args:
        root: The root node.
    """
    return f"planted {_count(root)} nodes"


STALE_WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Old weather lookup.",
    "parameters": {"type": "object", "properties": {"query": {"type": "integer"}}, "required": ["query"]}}}
OWN_DEFINITION = {"name": "get_weather", "description": "Weather of one of two cities.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string", "enum": ["Oslo", "Rome"]}},
    "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module", params=["xgrammar", "lm-format-enforcer"])
def client(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"tooldefs-{request.param}")
    with running_server(tmp, ["--grammar-backend", request.param]) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)


def test_a_recursive_dataclass_argument_round_trips(client):
    toolbox = Toolbox([plant_tree])
    (spec,) = toolbox.openai_tools()
    assert "$ref" in json.dumps(spec)
    response = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "Plant a tree: root 'oak' with one child 'ash'. Ash has no children."}],
        tools=[spec], tool_choice={"type": "function", "function": {"name": "plant_tree"}},
        max_tokens=160, temperature=0,
    )
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, spec["function"]["parameters"])  # $refs included
    args, kwargs = toolbox.get("plant_tree").validate(call.function.arguments)
    assert isinstance(kwargs["root"], Node)
    assert plant_tree(*args, **kwargs) == f"planted {_count(kwargs['root'])} nodes"


def test_a_named_choice_with_its_own_definition_is_what_the_call_follows(client):
    response = client.chat.completions.create(
        model=client.models.list().data[0].id,
        messages=[{"role": "user", "content": "What is the weather in Rome?"}],
        tools=[STALE_WEATHER], tool_choice={"type": "function", "function": OWN_DEFINITION},
        max_tokens=40, temperature=0,
    )
    (call,) = response.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), OWN_DEFINITION["parameters"])
