"""Parser events -> OpenAI `chat.completion.chunk` deltas (one choice).

Shapes follow OpenAI's stream: the first delta carries `role`; a tool call starts with `index`,
`id`, `type` and `function.name` (arguments ""), then streams `function.arguments` fragments.
"""
from __future__ import annotations

from typing import Any, Iterable, Optional

from .events import Event, TextDelta, ToolCallArgsDelta, ToolCallStart


def coalesce(events: Iterable[Event]) -> list[Event]:
    """Merge adjacent text pieces and adjacent argument pieces of the same call."""
    out: list[Event] = []
    for event in events:
        last = out[-1] if out else None
        if isinstance(event, TextDelta) and isinstance(last, TextDelta):
            out[-1] = TextDelta(last.text + event.text)
        elif (isinstance(event, ToolCallArgsDelta) and isinstance(last, ToolCallArgsDelta)
              and last.index == event.index):
            out[-1] = ToolCallArgsDelta(last.index, last.arguments + event.arguments)
        else:
            out.append(event)
    return out


def event_delta(event: Event) -> dict[str, Any]:
    """The OpenAI delta for one event."""
    if isinstance(event, TextDelta):
        return {"content": event.text}
    if isinstance(event, ToolCallStart):
        return {"tool_calls": [{
            "index": event.index, "id": event.id, "type": "function",
            "function": {"name": event.name, "arguments": ""},
        }]}
    return {"tool_calls": [{"index": event.index, "function": {"arguments": event.arguments}}]}


class DeltaStream:
    """Turns one choice's events into OpenAI deltas; the first delta carries the role."""

    def __init__(self) -> None:
        self._role_sent = False
        self.tool_calls_started = 0

    def deltas(self, events: Iterable[Event]) -> list[dict[str, Any]]:
        out = []
        for event in coalesce(events):
            if isinstance(event, ToolCallStart):
                self.tool_calls_started += 1
            delta = event_delta(event)
            if not self._role_sent:
                delta = {"role": "assistant", **delta}
                self._role_sent = True
            out.append(delta)
        return out


def finish_reason(engine_reason: Optional[str], made_tool_calls: bool) -> Optional[str]:
    """`tool_calls` when the turn called a tool, else the engine's reason (`stop`/`length`)."""
    if engine_reason is None:
        return None
    if made_tool_calls and engine_reason != "length":
        return "tool_calls"
    return engine_reason
