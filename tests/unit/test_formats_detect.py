"""A model's own chat template picks the tool format it was trained on (issue 16)."""
from __future__ import annotations

from pathlib import Path

import pytest

from functionary.prompt_template import (
    detect_format, detect_version, get_prompt_template_by_version, get_prompt_template_from_tokenizer,
)
from functionary.prompt_template.detect import default_system_prompt
from tests.support.tokenizers import build_format_tokenizer

REFERENCE = Path(__file__).resolve().parents[1] / "reference" / "chat_templates"


def test_a_qwen_style_template_with_tool_call_blocks_is_hermes():
    tok = build_format_tokenizer("hermes", chat_template=(REFERENCE / "qwen2.5-instruct.jinja").read_text())
    assert detect_format(tok) == "hermes"
    assert get_prompt_template_from_tokenizer(tok).version == "hermes"
    assert detect_version(tok) is None  # not a Functionary model: grammar sampling is on by default


def test_metas_llama31_template_is_llama3_json_although_its_vocabulary_is_llama31():
    # The vocabulary alone (<|eom_id|> a single token) says Functionary's v3-llama3.1.
    assert detect_format(build_format_tokenizer("llama3-json")) == "v3-llama3.1"
    tok = build_format_tokenizer("llama3-json", chat_template=(REFERENCE / "llama3.1-instruct.jinja").read_text())
    assert detect_format(tok) == "llama3-json"
    assert detect_version(tok) is None


@pytest.mark.parametrize("version", ["hermes", "llama3-json"])
def test_our_own_templates_carry_their_version(version):
    jinja = get_prompt_template_by_version(version).get_chat_template_jinja()
    assert detect_format(build_format_tokenizer("v3-llama3.1", chat_template=jinja)) == version


@pytest.mark.parametrize("template,expected", [
    # The system turn each vendor's template writes when a conversation brings none (read off
    # the templates' own text).
    ("smollm2-instruct.jinja", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ("qwen2.5-instruct.jinja", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ("llama3.1-instruct.jinja", None),  # not ChatML
])
def test_the_default_system_prompt_of_a_chatml_template(template, expected):
    assert default_system_prompt((REFERENCE / template).read_text()) == expected


@pytest.mark.parametrize("chat_template", [
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}",  # none
    "<|im_start|>system\n{{ raise_exception('no') }}",  # does not render
    "{{ '<|im_start|>system\nAlways' }}<|im_end|>\n",  # the user's turn does not follow
])
def test_templates_without_a_default_system_prompt(chat_template):
    assert default_system_prompt(chat_template) is None
