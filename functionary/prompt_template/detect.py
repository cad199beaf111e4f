"""Which format a tokenizer belongs to (FORMAT_SPEC.md §1), without magic token ids."""
from __future__ import annotations

import re
from typing import Any, Optional

_VERSION_MARKER = re.compile(r"\{# version=(?P<version>.+?) #\}")


def detect_version(tokenizer: Any) -> Optional[str]:
    """The format version of `tokenizer`, or None if it is not a Functionary tokenizer.

    Order: the `{# version=... #}` marker of its chat template, then which format's special
    strings are single tokens in its vocabulary.
    """
    chat_template = getattr(tokenizer, "chat_template", None) or ""
    if isinstance(chat_template, dict):  # several named templates
        chat_template = chat_template.get("default") or next(iter(chat_template.values()), "")
    match = _VERSION_MARKER.search(chat_template)
    if match:
        return match.group("version").strip()
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


def _single_token(tokenizer: Any, text: str) -> bool:
    try:
        ids = tokenizer.encode(text, add_special_tokens=False)
    except Exception:  # a tokenizer that cannot encode this is not of that family
        return False
    if len(ids) > 1:  # SentencePiece may put a lone "▁" in front
        ids = [i for i in ids if tokenizer.decode([i]).strip() != ""]
    return len(ids) == 1 and tokenizer.decode(ids) .strip() == text
