"""Strings a request may carry but no tokenizer can take: JSON lets a string hold an unpaired
UTF-16 surrogate escape (`"\\ud800"`), Python's decoder keeps it, and encoding it to UTF-8 (the
tokenizer, the JSON of an error message that quotes it) then fails. Found by the fuzz campaign
(benchmarks/fuzz.py) as a 500; the request is refused with a 400 naming the field instead.
"""
from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel


def first_unencodable(value: Any, where: str = "") -> Optional[str]:
    """The path (`messages[0].content`) of the first string in `value` (a pydantic model, dict,
    list) that cannot be encoded as UTF-8, or None."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not item.isascii() and not _encodable(item):
                return path or None
        elif isinstance(item, BaseModel):
            for name in reversed(type(item).model_fields):
                stack.append((getattr(item, name), f"{path}.{name}" if path else name))
        elif isinstance(item, dict):
            for key, child in reversed(list(item.items())):
                if isinstance(key, str) and not key.isascii() and not _encodable(key):
                    return path or None
                stack.append((child, f"{path}.{key}" if path else str(key)))
        elif isinstance(item, (list, tuple)):
            for i in range(len(item) - 1, -1, -1):
                stack.append((item[i], f"{path}[{i}]"))
    return None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


__all__ = ["first_unencodable"]
