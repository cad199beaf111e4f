"""Model output -> OpenAI assistant messages and stream deltas (pure; no engine, no HTTP)."""
from .events import Event, TextDelta, ToolCallArgsDelta, ToolCallStart
from .message import MessageBuilder
from .stream import StreamParser, new_tool_call_id

__all__ = [
    "Event", "TextDelta", "ToolCallArgsDelta", "ToolCallStart", "MessageBuilder", "StreamParser",
    "new_tool_call_id",
]
