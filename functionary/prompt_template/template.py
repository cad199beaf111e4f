"""`PromptTemplate`: one Functionary format's render / parse API (the names the original project used)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..parsing.message import MessageBuilder
from ..parsing.stream import StreamParser
from .formats import Format

PROMPTS_DIR = Path(__file__).resolve().parents[2] / "prompts"


def split_tools(tools_or_functions: Optional[Iterable[Any]]) -> tuple[list[dict], bool]:
    """(function definitions, code-interpreter flag) of a tools list, legacy functions or a mix."""
    functions: list[dict] = []
    code_interpreter = False
    for item in tools_or_functions or []:
        if hasattr(item, "model_dump"):
            item = item.model_dump()
        if item.get("function") is not None:
            functions.append(item["function"])
        elif item.get("type") == "code_interpreter":
            code_interpreter = True
        else:
            functions.append(item)
    return functions, code_interpreter


def reorder_tool_results(messages: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Put the results that follow an assistant turn in the order of its calls, by tool_call_id.

    Results whose id matches no call keep their relative order after the matched ones.
    """
    out = list(messages)
    i = 0
    while i < len(out):
        calls = out[i].get("tool_calls") if out[i].get("role") == "assistant" else None
        if calls and calls[0].get("id") is not None:
            order = {call.get("id"): k for k, call in enumerate(calls)}
            j = i + 1
            while j < len(out) and j - i <= len(calls) and out[j].get("role") in ("tool", "function"):
                j += 1
            results = out[i + 1 : j]
            results.sort(key=lambda m: order.get(m.get("tool_call_id"), len(calls)))
            out[i + 1 : j] = results
            i = j
        else:
            i += 1
    return out


class PromptTemplate:
    """Renders conversations and parses completions for one prompt-template version."""

    def __init__(self, fmt: Format, default_system: Optional[str] = None) -> None:
        self.format = fmt
        self.version = fmt.version
        self.syntax = fmt.syntax
        self.stop_tokens: tuple[str, ...] = fmt.syntax.stop_tokens
        # The model's own system prompt for conversations that bring none (its chat template's
        # default); None: the format's.
        self.default_system = default_system

    def __repr__(self) -> str:
        return f"PromptTemplate({self.version!r})"

    def with_default_system(self, text: Optional[str]) -> "PromptTemplate":
        """This format, opening conversations without a system message with `text`."""
        return PromptTemplate(self.format, default_system=text)

    # -- rendering ---------------------------------------------------------------------------

    def inject_system_messages(
        self, messages: Sequence[Mapping[str, Any]], tools_or_functions: Optional[Iterable[Any]] = None
    ) -> list[Mapping[str, Any]]:
        """The messages with this format's tool/system messages in front (before any user system message)."""
        functions, code_interpreter = split_tools(tools_or_functions)
        return [*self.format.system_messages(functions, code_interpreter), *messages]

    def get_prompt_from_messages(
        self, messages: Sequence[Mapping[str, Any]], tools_or_functions: Optional[Iterable[Any]] = None
    ) -> str:
        """The training-style rendering: system messages injected, every message rendered in order.

        No generation prompt or tool_choice prefix is added (see `inference.build_inference_prompt`).
        """
        if self.format.render_conversation is not None:
            functions, code_interpreter = split_tools(tools_or_functions)
            return self.format.render_conversation(list(messages), functions, code_interpreter)
        return "".join(
            self.format.render_message(m) for m in self.inject_system_messages(messages, tools_or_functions)
        )

    def pre_process_messages_before_inference(
        self, messages: Sequence[Mapping[str, Any]]
    ) -> list[Mapping[str, Any]]:
        """Reorders tool results by tool_call_id where the format matches results by position."""
        return reorder_tool_results(messages) if self.format.reorder_tool_results else list(messages)

    def get_generation_prompt(self) -> str:
        """What an inference prompt ends with before the tool_choice prefix."""
        return self.format.generation_prompt

    def get_generation_prefix(self, tool_choice: Any = None) -> str:
        """The text the prompt ends with for an effective tool_choice; the model continues from it."""
        return self.format.prefix_for(tool_choice)

    def get_chat_template_jinja(self) -> str:
        """The Jinja chat template (`prompts/<version>.jinja`) that renders like this class."""
        return (PROMPTS_DIR / f"{self.version}.jinja").read_text(encoding="utf-8")

    # -- parsing -----------------------------------------------------------------------------

    def stream_parser(
        self, tool_choice: Any = None, tool_names: Optional[Iterable[str]] = None, *, json_arguments: bool = False
    ) -> StreamParser:
        """An incremental parser for output generated after `get_generation_prefix(tool_choice)`.
        `json_arguments`: the output was generated under grammar sampling (see `StreamParser`)."""
        return StreamParser(
            self.syntax, prefix=self.get_generation_prefix(tool_choice), tool_names=tool_names,
            json_arguments=json_arguments,
        )

    def parse_assistant_response(self, llm_output: str, tool_choice: Any = None) -> dict[str, Any]:
        """A whole completion as an OpenAI assistant message (`content`, `tool_calls` with ids).

        v1 answers in the legacy shape (`function_call`, first call only), as its models were
        served with the legacy functions API.
        """
        parser = self.stream_parser(tool_choice)
        builder = MessageBuilder()
        builder.add(parser.feed(llm_output))
        builder.add(parser.finish())
        if self.version == "v1":
            message: dict[str, Any] = {"role": "assistant", "content": builder.content}
            if builder.tool_calls:
                function = builder.tool_calls[0]["function"]
                message["function_call"] = {"name": function["name"], "arguments": function["arguments"]}
            return message
        return builder.message()
