"""Grammar sampling for the hermes and llama3-json formats: the same outputs are admitted by both
back ends (lm-format-enforcer's character cursor and xgrammar's matcher on the structural tag),
decided from the models' own call syntax: `<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`
blocks (Qwen2.5 / Hermes) and `{"name": ..., "parameters": ...}` (Meta's Llama 3.1 JSON calls,
`<|python_tag|>` code for its built-in code interpreter)."""
from __future__ import annotations

import json

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

NESTED = {"type": "object", "properties": {
    "city": {"type": "string"}, "days": {"type": "array", "items": {"type": "number"}},
    "opts": {"type": "object", "properties": {"unit": {"type": "string", "enum": ["C", "F"]}, "n": {"type": "integer"}}}}}
COMPACT_ARGS = {"city": "New York, NY: USA", "days": [1.5, 2, -3e-2], "opts": {"unit": "C", "n": 10}}
# The arguments as the formats' own prompts write JSON (`json.dumps` defaults) and variants with
# any other whitespace: (arguments text, admitted).
COMPACT_CASES = [
    (json.dumps(COMPACT_ARGS), True),
    (json.dumps({"city": " spaced  out "}), True),  # spaces inside strings are text
    (json.dumps(COMPACT_ARGS, separators=(",", ":")), False),
    (json.dumps(COMPACT_ARGS, indent=2), False),
    (json.dumps(COMPACT_ARGS).replace('{"city"', '{ "city"'), False),
    (json.dumps(COMPACT_ARGS).replace('": ', '" : ', 1), False),
    (json.dumps(COMPACT_ARGS).replace(', "days"', ',  "days"'), False),
    (json.dumps(COMPACT_ARGS).replace("}", " }", 1), False),
    (json.dumps({"days": [1, 2]}).replace("]", " ]"), False),
    (json.dumps({"days": [int("9" * 19)]}), True),  # a number's digit runs stop at 19
    (json.dumps({"days": [int("9" * 20)]}), False),
    (json.dumps({"days": [float("0." + "1" * 17)]}), True),
]


@pytest.mark.parametrize("version,template", [
    ("hermes", '<tool_call>\n{{"name": "get_weather", "arguments": {}}}\n</tool_call>'),
    ("llama3-json", '{{"name": "get_weather", "parameters": {}}}'),
])
@pytest.mark.parametrize("args,admitted", COMPACT_CASES)
def test_arguments_are_compact_json_on_both_back_ends(version, template, args, admitted):
    spec = {"version": version, "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": NESTED}}],
            "tool_choice": "auto"}
    text = template.format(args)
    assert _xgrammar_accepts(spec, text) is admitted
    if "9" * 19 not in args:  # lm-format-enforcer bounds a number by its characters (MAX_NUMBER_CHARS)
        assert lmfe_accepts(spec, text) is admitted


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
