"""Grammar sampling for the hermes and llama3-json formats: the same outputs are admitted by both
back ends (lm-format-enforcer's character cursor and xgrammar's matcher on the structural tag),
decided from the models' own call syntax: `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`
blocks (Qwen2.5 / Hermes) and `{"name": ..., "parameters": ...}` (Meta's Llama 3.1 JSON calls,
`<|python_tag|>` code for its built-in code interpreter)."""
from __future__ import annotations

import pytest

from functionary.grammar import compile_constraint
from tests.unit.test_grammar_argument_order import _xgrammar_accepts

WEATHER = {"type": "object", "properties": {"city": {"type": "string"}, "n": {"type": "integer"}}, "required": ["city"]}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
         {"type": "function", "function": {"name": "get_w"}}]
CODE = [{"type": "code_interpreter"}]
NAMED = {"type": "function", "function": {"name": "get_weather"}}

CASES = [
    # version, tool_choice, tools, output after the generation prefix, admitted
    ("hermes", "auto", TOOLS, '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>', True),
    ("hermes", "auto", TOOLS, 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "a}\\n</tool_call>"}}'
                              '\n</tool_call>\n<tool_call>\n{"name": "get_w", "arguments": {}}\n</tool_call><|im_end|>', True),
    ("hermes", "auto", TOOLS, '<tool_call>\n{"name": "nope", "arguments": {}}\n</tool_call>', False),
    ("hermes", "auto", TOOLS, '<tool_call>\n{"name": "get_weather", "arguments": {"n": 1, "city": "x"}}\n</tool_call>', False),
    ("hermes", "auto", TOOLS, "Hello there", True),
    ("hermes", "none", TOOLS, 'Hi <tool_call>\n{"name": "get_w", "arguments": {}}\n</tool_call>', False),
    ("hermes", "required", TOOLS, 'get_weather", "arguments": {"city": "x"}}\n</tool_call>', True),  # prompt opened the call
    ("hermes", "required", TOOLS, 'get_weather", "arguments": {"city": "x"}}', False),  # the block must close
    ("hermes", NAMED, TOOLS, '{"city": "x"}}\n</tool_call>', True),
    ("hermes", NAMED, TOOLS, '{"city": "x"}}\n</tool_call>\n<tool_call>\n{"name": "get_w", "arguments": {}}\n</tool_call>', False),
    ("hermes", "auto", TOOLS + CODE, '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>', True),
    ("hermes", "auto", TOOLS, '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>', False),
    # Text may follow a turn's calls, as in the Functionary formats (a sample of BFCL showed the
    # default model repeating its call when only another call or the end could follow).
    ("hermes", "required", TOOLS, 'get_w", "arguments": {}}\n</tool_call>\n\nThe weather is', True),
    ("llama3-json", "auto", TOOLS, '{"name": "get_weather", "parameters": {"city": "Paris", "n": 3}}', True),
    ("llama3-json", "auto", TOOLS, '{"name": "get_weather", "parameters": {"city": "P"}}\n{"name": "get_w", "parameters": {}}<|eot_id|>', True),
    ("llama3-json", "auto", TOOLS, '{"name": "get_weather", "parameters": {"city": 3}}', False),
    ("llama3-json", "auto", TOOLS + CODE, "<|python_tag|>print(1)<|eom_id|>", True),
    ("llama3-json", "auto", TOOLS, "<|python_tag|>print(1)", False),  # no code interpreter
    ("llama3-json", "required", TOOLS, 'get_weather", "parameters": {"city": "P"}}', True),
    ("llama3-json", "required", TOOLS, "Hi", False),
    ("llama3-json", "auto", TOOLS, "Hi there", True),
    ("llama3-json", "none", TOOLS, 'Hi {"name": "get_w", "parameters": {}}', False),
]


def lmfe_accepts(spec, text):
    cursor = compile_constraint(spec).cursor()
    return cursor.allows(text) and cursor.feed(text).can_end()


@pytest.mark.parametrize("version,choice,tools,text,admitted", CASES)
def test_both_back_ends_admit_the_same_outputs(version, choice, tools, text, admitted):
    spec = {"version": version, "tools": tools, "tool_choice": choice}
    assert lmfe_accepts(spec, text) is admitted
    assert _xgrammar_accepts(spec, text) is admitted


@pytest.mark.parametrize("version,text", [
    ("hermes", '<tool_call>\n{"name": "get_w", "arguments": {}}\n</tool_call>\n<tool_call>\n{"name": "get_w", "arguments": {}}\n</tool_call>'),
    ("llama3-json", '{"name": "get_w", "parameters": {}}\n{"name": "get_w", "parameters": {}}'),
])
def test_parallel_tool_calls_false_allows_one_call(version, text):
    spec = {"version": version, "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False}
    assert not lmfe_accepts(spec, text) and not _xgrammar_accepts(spec, text)
    assert lmfe_accepts({**spec, "parallel_tool_calls": True}, text)
