"""Call real Python functions from an OpenAI-compatible chat model (functionary first).

`tool` / `Toolbox` describe functions (JSON Schema from type hints and docstrings); `ChatRunner`
runs the conversation loop, including `python` calls in a sandboxed kernel
(`functionary.sandbox`, extra `interpreter`).
"""
from functionary.client.functions import FunctionTool, ToolArgumentsError, Toolbox, serialize_result, tool
from functionary.client.runner import (
    ChatRunner,
    RunFinished,
    RunResult,
    TextDelta,
    ToolCallDone,
    ToolCallResult,
    ToolCallStarted,
)

__all__ = [
    "ChatRunner",
    "FunctionTool",
    "RunFinished",
    "RunResult",
    "TextDelta",
    "ToolArgumentsError",
    "ToolCallDone",
    "ToolCallResult",
    "ToolCallStarted",
    "Toolbox",
    "serialize_result",
    "tool",
]
