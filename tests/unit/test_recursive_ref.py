"""Recursive `$ref`s, as the client's `Toolbox` writes them for recursive types: the server renders
them (a named TypeScript type for the recursive definition) and both grammar back ends take them.

The original renderer inlined every `$ref` and never ended on a recursive one (FORMAT_SPEC §3.1),
so there is no reference rendering to compare with: the expected text is written out here from
the rule (TypeScript's own way to write a recursive type, a named alias).
"""
from __future__ import annotations

import json
import logging
from typing import Optional

import pytest
from pydantic import BaseModel

from functionary.client.functions import tool
from functionary.grammar import compile_constraint
from functionary.prompt_template import PromptError, build_inference_prompt, get_prompt_template_by_version
from functionary.prompt_template.typescript import render_namespace, resolve_refs
from tests.golden.vectors_loader import VERSIONS


class Node(BaseModel):
    """A node of a tree."""

    label: str
    children: list["Node"] = []


class Category(BaseModel):
    name: str
    parent: Optional["Category"] = None


@tool
def plant_tree(root: Node, note: str = "") -> str:
    """Plant a tree of labelled nodes."""
    return root.label


TREE_SCHEMA = {
    "type": "object",
    "properties": {"root": {"$ref": "#/$defs/TreeNode"}, "name": {"type": "string"}},
    "required": ["root"],
    "$defs": {"TreeNode": {
        "type": "object",
        "description": "A node",
        "properties": {"label": {"type": "string", "description": "The label"},
                       "children": {"type": "array", "items": {"$ref": "#/$defs/TreeNode"}}},
        "required": ["label"],
    }},
}
HEADER = "// Supported function definitions that should be called when necessary.\nnamespace functions {\n\n"


def test_a_recursive_definition_renders_as_a_named_type():
    text = render_namespace([{"name": "make_tree", "description": "Make a tree", "parameters": TREE_SCHEMA}])
    assert text == HEADER + (
        "// A node\n"
        "type TreeNode = {\n"
        "// The label.\n"
        "label: string,\n"
        "children?: TreeNode[],\n"
        "};\n\n"
        "// Make a tree\n"
        "type make_tree = (_: {\n"
        "root: TreeNode,\n"
        "name?: string,\n"
        "}) => any;\n\n"
        "} // namespace functions"
    )


def test_mutual_recursion_and_one_declaration_per_type():
    mutual = {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}, "t": {"$ref": "#/$defs/TreeNode"}},
              "$defs": {"A": {"type": "object", "properties": {"b": {"$ref": "#/$defs/B"}}},
                        "B": {"type": "object", "properties": {"a": {"$ref": "#/$defs/A"}}},
                        "TreeNode": TREE_SCHEMA["$defs"]["TreeNode"]}}
    other_tree = {"type": "object", "properties": {"n": {"$ref": "#/$defs/TreeNode"}},
                  "$defs": {"TreeNode": {"type": "object", "properties": {"next": {"$ref": "#/$defs/TreeNode"}}}}}
    text = render_namespace([
        {"name": "make_tree", "description": "Make a tree", "parameters": TREE_SCHEMA},
        {"name": "mutual", "description": "m", "parameters": mutual},
        {"name": "chain", "description": "c", "parameters": other_tree},
    ])
    assert text.count("type TreeNode = {") == 1  # the same definition: declared once, used twice
    assert "type A = {\nb?: B,\n};\n\n" in text and "type B = {\na?: A,\n};\n\n" in text
    assert "type mutual = (_: {\na?: A,\nt?: TreeNode,\n}) => any;" in text
    # Another definition under the same name gets a name of its own.
    assert "type TreeNode_2 = {\nnext?: TreeNode_2,\n};\n\n// c\ntype chain = (_: {\nn?: TreeNode_2,\n}) => any;" in text


def test_schemas_without_recursion_are_inlined_as_before():
    flat = {"type": "object", "properties": {"a": {"$ref": "#/definitions/P", "description": "dropped"}},
            "definitions": {"P": {"type": "string", "description": "kept"}}}
    assert resolve_refs(flat)["properties"]["a"] == {"type": "string", "description": "kept"}
    with pytest.raises(PromptError, match="reference"):
        resolve_refs({"properties": {"a": {"$ref": "#/$defs/missing"}}})
    with pytest.raises(PromptError, match="reference"):
        resolve_refs({"properties": {"a": {"$ref": "https://example.com/schema.json"}}})


@pytest.mark.parametrize("version", VERSIONS)
def test_a_toolbox_function_with_a_recursive_type_renders_in_every_format(version):
    spec = plant_tree.to_openai()
    assert "$ref" in json.dumps(spec)  # the client keeps the recursive definition as a reference
    template = get_prompt_template_by_version(version)
    built = build_inference_prompt(template, [{"role": "user", "content": "Plant one."}], tools=[spec])
    if version == "v3-llama3.1":  # this format shows the JSON Schema itself, `$ref`s included
        assert '"$ref": "#/$defs/Node"' in built.prompt
    else:
        assert "type Node = {" in built.prompt and "children?: Node[]," in built.prompt


@pytest.mark.parametrize("schema_of", [lambda: plant_tree.to_openai()["function"]["parameters"], lambda: TREE_SCHEMA])
def test_lm_format_enforcer_takes_a_recursive_schema(schema_of, caplog):
    parameters = schema_of()
    tools = [{"type": "function", "function": {"name": "plant", "parameters": parameters}}]
    spec = {"version": "v3.llama3", "tools": tools, "tool_choice": {"type": "function", "function": {"name": "plant"}}}
    with caplog.at_level(logging.WARNING):
        cursor = compile_constraint(spec).cursor()
    assert "any JSON object" not in caplog.text  # the recursion is unrolled, not given up on
    ok = '{"root": {"label": "a", "children": [{"label": "b", "children": [{"label": "c"}]}]}}'
    assert cursor.allows(ok)
    assert not compile_constraint(spec).cursor().allows('{"root": {"children": []}}')  # label is required
    assert not compile_constraint(spec).cursor().allows('{"root": 3')


def test_xgrammar_takes_a_recursive_schema():
    from tests.unit.test_grammar_structural_tag import accepts

    parameters = plant_tree.to_openai()["function"]["parameters"]
    tools = [{"type": "function", "function": {"name": "plant", "parameters": parameters}}]
    spec = {"version": "v3.llama3", "tools": tools, "tool_choice": {"type": "function", "function": {"name": "plant"}}}
    deep = {"label": "a", "children": [{"label": "b", "children": [{"label": "c", "children": [{"label": "d"}]}]}]}
    assert accepts(spec, json.dumps({"root": deep}))
    bad = {"label": "a", "children": [{"label": "b", "children": [{"label": "c", "children": [{"name": "d"}]}]}]}
    assert not accepts(spec, json.dumps({"root": bad}))  # enforced at any depth


@pytest.mark.parametrize("version", VERSIONS)
def test_jinja_templates_render_the_same_or_refuse_clearly(version):
    from tests.unit.test_jinja_parity import render_jinja

    tools = [plant_tree.to_openai()]
    messages = [{"role": "user", "content": "Plant one."}]
    if version == "v3-llama3.1":  # the JSON Schema as it is: nothing to recurse into
        expected = build_inference_prompt(get_prompt_template_by_version(version), messages, tools=tools).prompt
        assert render_jinja(version, messages, tools, None) == expected
    else:
        with pytest.raises(Exception, match="cannot render recursive types"):
            render_jinja(version, messages, tools, None)
