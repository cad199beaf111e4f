"""The `hermes` and `llama3-json` prompts are byte for byte what the models' own published chat
templates render (issue 16): the point of these formats is to show a model what it was trained on.

Reference: the vendors' templates saved under ``tests/reference/chat_templates/`` (see the README
there for where each came from), rendered by transformers' ``apply_chat_template`` on a locally
built tokenizer, with tool-call arguments decoded into objects as vLLM and transformers pass them.
Our side: ``build_inference_prompt`` on the same OpenAI request (arguments as JSON strings).
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from functionary.prompt_template import PromptError, build_inference_prompt, get_prompt_template_by_version
from functionary.prompt_template.formats import CODE_TOOL
from tests.support.tokenizers import build_format_tokenizer

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "chat_templates"
PUBLISHED = {"hermes": "qwen2.5-instruct.jinja", "llama3-json": "llama3.1-instruct.jinja"}

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city (°C), e.g. Zürich",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
ROUTE = {  # no description: the published templates print the tool as given
    "type": "function",
    "function": {
        "name": "route",
        "parameters": {"type": "object", "properties": {"start": {"type": "string"}, "end": {"type": "string"}},
                       "required": ["start", "end"]},
    },
}
TOOLS = [WEATHER, ROUTE]


def call(cid, name, args):
    return {"id": cid, "type": "function", "function": {"name": name, "arguments": json.dumps(args, ensure_ascii=False)}}


def compact_call(cid, name, args):  # a client may send compact JSON: it renders as the template prints it
    return {"id": cid, "type": "function",
            "function": {"name": name, "arguments": json.dumps(args, separators=(",", ":"), ensure_ascii=False)}}


USER = {"role": "user", "content": "What's the weather in Zürich and in 北京?"}
CASES = {
    "tools-first-turn": ([USER], TOOLS),
    "system-and-tools": ([{"role": "system", "content": "You are terse.\n"}, USER], TOOLS),
    "no-tools": ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "  Bye  "}], None),
    "system-no-tools": ([{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hi"}], None),
    "call-result-answer": ([
        USER,
        {"role": "assistant", "content": None, "tool_calls": [compact_call("c1", "get_weather", {"city": "Zürich"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "{\"temp\": 21, \"sky\": \"clear\"}"},
        {"role": "assistant", "content": "It is 21 °C and clear."},
        {"role": "user", "content": "And a route from Bern to Basel?"},
    ], TOOLS),
    "multiline-result": ([
        USER,
        {"role": "assistant", "content": "", "tool_calls": [call("c1", "route", {"start": "Bern", "end": "Basel"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "line 1\nline \"2\""},
    ], TOOLS),
}
# Qwen2.5's template also renders text before calls, several calls and grouped results;
# Meta's Llama 3.1 template allows one call per turn and drops the text of a calling turn.
HERMES_ONLY = {
    "parallel-calls-grouped-results": ([
        USER,
        {"role": "assistant", "content": "Checking both.", "tool_calls": [
            call("c1", "get_weather", {"city": "Zürich", "unit": "celsius"}), call("c2", "get_weather", {"city": "北京"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "21"},
        {"role": "tool", "tool_call_id": "c2", "content": "30"},
    ], TOOLS),
}
LLAMA_ONLY = {
    "text-of-a-calling-turn-dropped": ([
        USER,
        {"role": "assistant", "content": "Let me look.", "tool_calls": [call("c1", "get_weather", {"city": "Zürich"})]},
        {"role": "tool", "tool_call_id": "c1", "content": "21"},
    ], TOOLS),
}


def decoded(messages):
    """The messages as vLLM hands them to a chat template: arguments decoded into objects."""
    out = copy.deepcopy(messages)
    for m in out:
        for c in m.get("tool_calls") or []:
            c["function"]["arguments"] = json.loads(c["function"]["arguments"])
    return out


def published(version, messages, tools, **extra):
    tok = build_format_tokenizer(version, chat_template=(REFERENCE / PUBLISHED[version]).read_text())
    kwargs = {"tools": tools} if tools is not None else {}
    return tok.apply_chat_template(decoded(messages), add_generation_prompt=True, tokenize=False,
                                   bos_token="", **kwargs, **extra)


def ours(version, messages, tools=None, functions=None, tool_choice=None):
    template = get_prompt_template_by_version(version)
    return build_inference_prompt(template, copy.deepcopy(messages), tools=copy.deepcopy(tools),
                                  functions=functions, tool_choice=tool_choice).prompt


def params(*versions_and_cases):
    return [pytest.param(v, name, id=f"{v}-{name}") for v, cases in versions_and_cases for name in cases]


ALL = {**CASES, **HERMES_ONLY, **LLAMA_ONLY}


@pytest.mark.parametrize("version,case", params(("hermes", CASES), ("llama3-json", CASES), ("hermes", HERMES_ONLY),
                                                 ("llama3-json", LLAMA_ONLY)))
def test_prompt_is_the_published_templates(version, case):
    messages, tools = ALL[case]
    assert ours(version, messages, tools) == published(version, messages, tools)


@pytest.mark.parametrize("version", sorted(PUBLISHED))
def test_legacy_functions_render_as_tools(version):
    messages, _ = CASES["call-result-answer"]
    functions = [t["function"] for t in TOOLS]
    assert ours(version, messages, functions=functions) == published(version, messages, TOOLS)


def test_hermes_code_interpreter_is_a_python_function_in_the_tool_list():
    messages = [{"role": "user", "content": "Compute 2**10"}]
    rendered = ours("hermes", messages, tools=[WEATHER, {"type": "code_interpreter"}])
    assert rendered == published("hermes", messages, [WEATHER, CODE_TOOL])


def test_llama3_json_code_interpreter_is_metas_builtin_tool():
    messages = [USER, {"role": "assistant", "content": None, "tool_calls": [call("c1", "get_weather", {"city": "Bern"})]},
                {"role": "tool", "tool_call_id": "c1", "content": "21"}]
    rendered = ours("llama3-json", messages, tools=[WEATHER, {"type": "code_interpreter"}])
    assert rendered == published("llama3-json", messages, [WEATHER], builtin_tools=["code_interpreter"])
    assert "Environment: ipython\nTools: \n\n" in rendered and "<|eom_id|>" in rendered


def test_llama3_json_refuses_tools_without_a_first_user_message():
    with pytest.raises(PromptError):
        ours("llama3-json", [{"role": "system", "content": "x"}], tools=TOOLS)
    with pytest.raises(Exception):  # the published template raises too
        published("llama3-json", [{"role": "system", "content": "x"}], TOOLS)


def test_tool_choice_none_renders_as_no_tools():
    messages = [{"role": "user", "content": "Hi"}]
    for version in PUBLISHED:
        assert ours(version, messages, TOOLS, tool_choice="none") == published(version, messages, None)


@pytest.mark.parametrize("case", ["no-tools", "system-no-tools"])
def test_hermes_opens_with_the_models_own_system_prompt(case):
    # SmolLM2 (the default model) has a ChatML template that knows no tools but opens every
    # conversation without a system message with its own; the server's hermes prompt, built
    # for that model, is then that template's, byte for byte.
    from functionary.api.app import with_model_system_prompt

    smollm2 = (REFERENCE / "smollm2-instruct.jinja").read_text()
    tok = build_format_tokenizer("hermes", chat_template=smollm2)

    class Backend:
        def get_tokenizer(self):
            return tok

    template = with_model_system_prompt(get_prompt_template_by_version("hermes"), Backend())
    messages, _ = CASES[case]
    rendered = build_inference_prompt(template, copy.deepcopy(messages)).prompt
    assert rendered == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
