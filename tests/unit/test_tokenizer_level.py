"""Detection and streaming on real tokenizers built locally from the default model's tokenizer,
with each format's special strings as single tokens (tests/support/tokenizers.py)."""
from __future__ import annotations

import copy

import pytest

from functionary.parsing import MessageBuilder
from functionary.prompt_template import (
    PromptError,
    build_inference_prompt,
    detect_version,
    get_prompt_template_by_version,
    get_prompt_template_from_tokenizer,
)
from tests.golden.vectors_loader import case_id, load
from tests.support.tokenizers import build_format_tokenizer, default_tokenizer, format_special_tokens

VERSIONS = ("v1", "v2", "v2.llama3", "v3.llama3", "v3-llama3.1")


@pytest.mark.parametrize("version,expected", [
    ("v1", "v1"), ("v2", "v2"), ("v3.llama3", "v3.llama3"), ("v3-llama3.1", "v3-llama3.1"),
])
def test_detection_from_special_tokens(version, expected):
    assert detect_version(build_format_tokenizer(version)) == expected


def test_a_llama3_vocabulary_is_v2_llama3_only_when_its_template_uses_the_separator():
    template = "{% for m in messages %}<|reserved_special_token_249|>{{ m.content }}{% endfor %}"
    assert detect_version(build_format_tokenizer("v2.llama3", chat_template=template)) == "v2.llama3"
    assert detect_version(build_format_tokenizer("v2.llama3")) == "v3.llama3"


@pytest.mark.parametrize("version", VERSIONS)
def test_the_chat_template_marker_wins_over_the_vocabulary(version):
    # A v3.2 model has the Llama-3.1 vocabulary (<|eom_id|>) but is v3.llama3: its template says so.
    jinja = get_prompt_template_by_version(version).get_chat_template_jinja()
    tokenizer = build_format_tokenizer("v3-llama3.1", chat_template=jinja)
    assert get_prompt_template_from_tokenizer(tokenizer).version == version


def test_a_non_functionary_tokenizer_needs_an_explicit_version():
    tokenizer = default_tokenizer()
    assert detect_version(tokenizer) is None
    with pytest.raises(PromptError, match="Cannot detect prompt template"):
        get_prompt_template_from_tokenizer(tokenizer)
    assert get_prompt_template_from_tokenizer(tokenizer, version="v3.llama3").version == "v3.llama3"


PROMPTS = [c for c in load("prompts") if c.get("prompt") is not None and c["id"] in ("C06", "C07", "C12", "C16")]


@pytest.mark.parametrize("case", PROMPTS, ids=case_id)
def test_prompt_special_strings_are_single_tokens_and_bos_comes_once(case):
    version = case["version"]
    tokenizer = build_format_tokenizer(version)
    template = get_prompt_template_by_version(version)
    prompt = build_inference_prompt(
        template, case["messages"], case["tools"], case["functions"], case["tool_choice"], case["function_call"]
    ).prompt
    ids = tokenizer(prompt)["input_ids"]
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    for special in format_special_tokens(version):
        token_id = tokenizer.convert_tokens_to_ids(special)
        assert ids[1:].count(token_id) == prompt.count(special), special
    assert tokenizer.decode(ids[1:]) == prompt


def _decode_stream(tokenizer, text):
    """Text pieces as an engine's incremental detokenizer yields them, one token at a time."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    pieces, previous = [], ""
    for n in range(1, len(ids) + 1):
        current = tokenizer.decode(ids[:n])
        if current.endswith("\ufffd"):  # an incomplete UTF-8 sequence waits for the next token
            continue
        pieces.append(current[len(previous):])
        previous = current
    assert previous == text
    return pieces


PARSES = load("parse")


@pytest.mark.parametrize("case", PARSES, ids=case_id)
def test_streaming_token_by_token_equals_the_whole_parse(case):
    template = get_prompt_template_by_version(case["version"])
    tokenizer = build_format_tokenizer(case["version"])
    parser, builder = template.stream_parser(case["tool_choice"]), MessageBuilder()
    for piece in _decode_stream(tokenizer, case["llm_output"]):
        builder.add(parser.feed(piece))
    builder.add(parser.finish())
    streamed = builder.message()
    whole = template.parse_assistant_response(case["llm_output"], case["tool_choice"])
    if case["version"] == "v1":
        streamed = {"role": "assistant", "content": streamed["content"],
                    **({"function_call": streamed["tool_calls"][0]["function"]} if streamed["tool_calls"] else {})}
    for message in (streamed, whole):
        for call in message.get("tool_calls") or []:
            call["id"] = "<ID>"
    assert streamed == whole
    expected = copy.deepcopy(case["parsed"])
    for call in expected.get("tool_calls") or []:
        call["id"] = "<ID>"
    assert whole == expected
