"""Which format a tokenizer belongs to (FORMAT_SPEC.md §1), without magic token ids."""
from __future__ import annotations

import re
from typing import Any, Optional

_VERSION_MARKER = re.compile(r"\{# version=(?P<version>.+?) #\}")


# Functionary's own formats; the others (hermes, llama3-json) are other model families'.
FUNCTIONARY_VERSIONS = ("v1", "v2", "v2.llama3", "v3.llama3", "v3-llama3.1")


def detect_version(tokenizer: Any) -> Optional[str]:
    """The Functionary format of `tokenizer`, or None if it is not a Functionary model's (a model
    whose template teaches another tool format is not: see `detect_format`)."""
    version = detect_format(tokenizer)
    return version if version in FUNCTIONARY_VERSIONS else None


def detect_format(tokenizer: Any) -> Optional[str]:
    """The prompt format of `tokenizer`, or None if neither its template nor its vocabulary names one.

    Order: the `{# version=... #}` marker of its chat template, the tool format the template
    teaches (`tool_format_of_template`), then which format's special strings are single tokens
    in its vocabulary.
    """
    chat_template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(chat_template, dict):  # several named templates
        chat_template = chat_template.get("default") or next(iter(chat_template.values()), "")
    match = _VERSION_MARKER.search(chat_template)
    if match:
        return match.group("version").strip()
    named = tool_format_of_template(chat_template)
    if named is not None:
        return named
    if _single_token(tokenizer, "<|eom_id|>"):
        return "v3-llama3.1"
    if _single_token(tokenizer, "<|reserved_special_token_249|>"):
        # v2.5 writes the reserved token into its chat template; v3.x (and llava) do not.
        return "v2.llama3" if "<|reserved_special_token_249|>" in chat_template else "v3.llama3"
    if _single_token(tokenizer, "<|from|>"):
        return "v2"
    if _single_token(tokenizer, "<|START_OF_FUNCTION_CALL|>"):
        return "v1"
    return None


def tool_format_of_template(chat_template: str) -> Optional[str]:
    """The tool format a model's own chat template teaches, where it names one: `<tool_call>`
    blocks (Hermes, Qwen 2.5/3 and the models trained on their data) are `hermes`; Meta's JSON
    tool calls (`{"name": function name, "parameters": ...}`, Llama 3.1+) are `llama3-json`.
    Checked before the vocabulary: a Llama 3.1 Instruct template is JSON tool calling although
    its vocabulary also has the tokens of Functionary's v3-llama3.1."""
    if "<tool_call>" in chat_template:
        return "hermes"
    if '"parameters": dictionary of argument name' in chat_template:
        return "llama3-json"
    return None


def _single_token(tokenizer: Any, text: str) -> bool:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except Exception:  # a tokenizer that cannot encode this is not of that family
        return False
    if len(ids) > 1:  # SentencePiece may put a lone "▁" in front
        ids = [i for i in ids if tokenizer.decode([i]).strip() != ""]
    return len(ids) == 1 and tokenizer.decode(ids) .strip() == text
