"""Folding parser events into one OpenAI assistant message (the non-streaming result)."""
from __future__ import annotations

from typing import Any, Iterable, Optional

from .events import Event, TextDelta, ToolCallArgsDelta, ToolCallStart


class MessageBuilder:
    """Accumulates events; `message()` is the OpenAI assistant message they describe."""

    def __init__(self) -> None:
        self._text: list[str] = []
        self._calls: list[dict[str, Any]] = []

    def add(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, TextDelta):
                self._text.append(event.text)
            elif isinstance(event, ToolCallStart):
                self._calls.append(
                    {"id": event.id, "type": "function", "function": {"name": event.name, "arguments": ""}}
                )
            elif isinstance(event, ToolCallArgsDelta):
                self._calls[event.index]["function"]["arguments"] += event.arguments

    @property
    def content(self) -> Optional[str]:
        return "".join(self._text) if self._text else None

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        return self._calls

    def message(self) -> dict[str, Any]:
        """`{"role": "assistant", "content": str|None, "tool_calls": [...]|None}`."""
        return {"role": "assistant", "content": self.content, "tool_calls": self._calls or None}
