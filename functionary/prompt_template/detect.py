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


_CHATML_SYSTEM = re.compile(r"<\|im_start\|>system\n(?P<text>.*?)<\|im_end\|>\n<\|im_start\|>user\n", re.S)


def default_system_prompt(chat_template: str) -> Optional[str]:
    """The system turn a ChatML chat template writes for a conversation that brings none
    (SmolLM2's "You are a helpful AI assistant named SmolLM, ..."), or None: no such default,
    not ChatML, or a template that does not render (as transformers renders it: jinja2's
    sandbox, trimmed blocks)."""
    if "<|im_start|>" not in chat_template:
        return None
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    mark = "\x00user\x00"
    try:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        text = env.from_string(chat_template).render(
            messages=[{"role": "user", "content": mark}], add_generation_prompt=False,
            bos_token="", eos_token="", tools=None)
    except Exception:  # noqa: BLE001 - a template we cannot render names no default
        return None
    match = _CHATML_SYSTEM.match(text)
    if match is None or not text[match.end():].startswith(mark):
        return None
    return match.group("text")
