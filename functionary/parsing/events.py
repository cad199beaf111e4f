"""What a stream parser emits: small immutable events, independent of the wire format.

The server turns them into OpenAI chunk deltas (`functionary.parsing.chunks`), the
non-streaming path folds them into one assistant message (`MessageBuilder`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class TextDelta:
    """A piece of the assistant's visible text (`message.content`)."""

    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A new tool call; its name is complete when this is emitted."""

    index: int
    id: str
    name: str


@dataclass(frozen=True)
class ToolCallArgsDelta:
    """A piece of the arguments string of the call at `index`."""

    index: int
    arguments: str


Event = Union[TextDelta, ToolCallStart, ToolCallArgsDelta]
