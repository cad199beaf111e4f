"""The five Functionary prompt formats, as data plus a few small functions (FORMAT_SPEC.md §4-§5).

Each `Format` says how messages render, which system messages are injected in front of them, and
(through its `OutputSyntax`) how the model writes text and calls. Rendering, parsing, streaming
and grammar are all driven by these descriptions.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional

from ..parsing.syntax import OutputSyntax
from .typescript import render_namespace

SYSTEM_MESSAGE = (
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the user's questions. The assistant calls functions "
    "with appropriate input when necessary"
)
PYTHON_RUN_SYS_MSG = (
    "When you send a message containing Python code to python, it will be executed in a stateful "
    "Jupyter notebook environment. python will respond with the output of the execution or time out "
    "after 60.0 seconds. The drive at '/mnt/data' can be used to save and persist user files."
)
V3_SYS = (
    "You are capable of executing available function(s) if required.\n"
    "Only execute function(s) when absolutely necessary.\n"
    "Ask for the required input to:recipient==all\n"
    "Use JSON for function arguments.\n"
    "Respond in this format:\n"
    ">>>${recipient}\n"
    "${content}\n"
    "Available functions:\n"
)
V31_TRAILER = (
    "\nThink very carefully before calling functions.\n"
    "If a you choose to call a function ONLY reply in the following format:\n"
    "<{start_tag}={function_name}>{parameters}{end_tag}\n"
    "where\n\n"
    "start_tag => `<function`\n"
    "parameters => a JSON dict with the function argument name as key and function argument value as value.\n"
    "end_tag => `</function>`\n\n"
    "Here is an example,\n"
    '<function=example_function_name>{"example_name": "example_value"}</function>\n\n'
    "Reminder:\n"
    "- If looking for real time information use relevant functions before falling back to brave_search\n"
    "- Function calls MUST follow the specified format, start with <function= and end with </function>\n"
    "- Required parameters MUST be specified\n"
    "- Only call one function at a time\n"
    "- Put the entire function call reply on one line\n\n"
)

Message = Mapping[str, Any]


def text_of(content: Any) -> Any:
    """Message content as the renderer inserts it: a list of text parts is joined, None stays None."""
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, Mapping) else str(part) for part in content
        )
    return content


def calls_of(message: Message) -> list[tuple[str, str]]:
    """(name, arguments) of an assistant message's calls; a legacy `function_call` counts as one."""
    calls = message.get("tool_calls") or []
    if not calls and message.get("function_call"):
        calls = [{"function": message["function_call"]}]
    out = []
    for call in calls:
        function = call.get("function") or {}
        out.append((function.get("name"), function.get("arguments")))
    return out


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>\n\n"


# ---------------------------------------------------------------------------------------------
# v1 (functionary-7b-v1.4): legacy functions API, one call per turn.

def _v1_message(m: Message) -> str:
    role, c = m["role"], text_of(m.get("content"))
    if role == "system":
        return f"system:\n{c}<|END_OF_SYSTEM|>\n"
    if role == "user":
        return "user:\n" if c is None else f"user:\n{c}<|END_OF_USER|>\n"
    if role in ("function", "tool"):
        # The seed ended tool results with <|END_OF_ASSISTANT|>; kept, the vectors carry it.
        end = "<|END_OF_FUNCTION_RESULT|>" if role == "function" else "<|END_OF_ASSISTANT|>"
        return f"function name={m.get('name')}:\n{c}{end}\n"
    function_call = m.get("function_call")
    if function_call:
        lead = f"{c}\n" if c is not None else ""
        return (f"assistant:\n{lead}<|START_OF_FUNCTION_CALL|>{function_call.get('name')}:\n"
                f"{function_call.get('arguments')}<|END_OF_FUNCTION_CALL|>\n")
    if c is None:
        return "assistant:"
    return f"assistant:\n{c}<|END_OF_ASSISTANT|>\n"


def _v1_v2_system(functions: list, code_interpreter: bool) -> list[dict]:
    return [
        {"role": "system", "content": render_namespace(functions)},
        {"role": "system", "content": PYTHON_RUN_SYS_MSG if code_interpreter else SYSTEM_MESSAGE},
    ]


def _v1_named_prefix(name: str) -> str:
    # The seed raised here; the model writes calls as "\n<|START_OF_FUNCTION_CALL|>name:\n{...}".
    return f"\n<|START_OF_FUNCTION_CALL|>{name}:\n"


# ---------------------------------------------------------------------------------------------
# v2 (7b-v2 ... small/medium-v2.4): <|from|>/<|recipient|>/<|content|> segments.

def _v2_message(m: Message) -> str:
    role, c = m["role"], text_of(m.get("content"))
    if role in ("system", "user"):
        return f"<|from|>{role}\n<|recipient|>all\n<|content|>{c}\n"
    if role in ("tool", "function"):
        return f"<|from|>{m.get('name')}\n<|recipient|>all\n<|content|>{c}\n"
    calls = calls_of(m)
    if not calls:
        if c is None:
            return "<|from|>assistant\n<|recipient|>"
        return f"<|from|>assistant\n<|recipient|>all\n<|content|>{c}<|stop|>\n"
    segments = [f"<|from|>assistant\n<|recipient|>all\n<|content|>{c}\n"] if c is not None else []
    segments += [f"<|from|>assistant\n<|recipient|>{n}\n<|content|>{a}\n" for n, a in calls]
    return "".join(segments).strip() + "<|stop|>\n"


# ---------------------------------------------------------------------------------------------
# Llama-3 based formats.

SEP = "<|reserved_special_token_249|>"


def _llama3_common(m: Message, tool_body: Callable[[Message, Any], str], tool_role: str) -> Optional[str]:
    role, c = m["role"], text_of(m.get("content"))
    if role in ("system", "user"):
        return f"{_header(role)}{c}<|eot_id|>"
    if role in ("tool", "function"):
        return f"{_header(tool_role)}{tool_body(m, c)}<|eot_id|>"
    return None


def _v2_llama3_message(m: Message) -> str:
    rendered = _llama3_common(m, lambda m, c: f"name={m.get('name')}\n{c}", "tool")
    if rendered is not None:
        return rendered
    c, calls = text_of(m.get("content")), calls_of(m)
    if not calls:
        return _header("assistant") if c is None else f"{_header('assistant')}{c}<|eot_id|>"
    body = "".join(f"{SEP}{n}\n{a}" for n, a in calls)
    return f"{_header('assistant')}{c or ''}{body}<|eot_id|>"


def _v3_llama3_message(m: Message) -> str:
    rendered = _llama3_common(m, lambda m, c: f"{c}", "tool")
    if rendered is not None:
        return rendered
    c, calls = text_of(m.get("content")), calls_of(m)
    if c is None and not calls:
        return _header("assistant") + ">>>"
    segments = ([("all", c)] if c is not None else []) + calls
    return _header("assistant") + ">>>" + ">>>".join(f"{n}\n{a}" for n, a in segments) + "<|eot_id|>"


def _v3_llama3_system(functions: list, code_interpreter: bool) -> list[dict]:
    messages = [{"role": "system", "content": V3_SYS + render_namespace(functions)}]
    if code_interpreter:
        messages.append({"role": "system", "content": PYTHON_RUN_SYS_MSG})
    return messages


def _v31_message(m: Message) -> str:
    rendered = _llama3_common(m, lambda m, c: f"{c}", "ipython")
    if rendered is not None:
        return rendered
    c, calls = text_of(m.get("content")), calls_of(m)
    if c is None and not calls:
        return _header("assistant")
    body = "".join(
        f"<|python_tag|>{a}" if n == "python" else f"<function={n}>{a}</function>" for n, a in calls
    )
    return f"{_header('assistant')}{c or ''}{body}{'<|eom_id|>' if calls else '<|eot_id|>'}"


def _v31_system(functions: list, code_interpreter: bool) -> list[dict]:
    content = "Environment: ipython\n" if code_interpreter else ""
    content += "\nCutting Knowledge Date: December 2023\n\n"
    if functions:
        content += "\nYou have access to the following functions:\n\n"
        for f in functions:
            # json.dumps with its defaults (ensure_ascii=True), keys as given: what training used.
            content += f"Use the function '{f.get('name')}' to '{f.get('description', '')}'\n"
            content += json.dumps(f) + "\n\n"
        content += V31_TRAILER
    return [{"role": "system", "content": content}]


# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Format:
    """One prompt-template version: how a conversation renders and how the model answers."""

    version: str
    syntax: OutputSyntax
    generation_prompt: str  # what the prompt ends with before the tool_choice prefix
    render_message: Callable[[Message], str]
    system_messages: Callable[[list, bool], list[dict]]
    reorder_tool_results: bool = True
    # Generation prefixes (FORMAT_SPEC §5) where they are not derived from the syntax.
    required_prefix: Optional[str] = None
    named_prefix: Optional[Callable[[str], str]] = None

    def prefix_for(self, choice: Any) -> str:
        """The text appended after the generation prompt for an effective tool_choice."""
        s = self.syntax
        name = choice_name(choice)
        if name is not None:
            if self.named_prefix is not None:
                return self.named_prefix(name)
            return ("" if s.recipient_first else s.call_open) + name + s.name_end_written
        if choice == "none":
            return s.text_recipient + s.name_end_written if s.text_recipient else ""
        if choice == "required":
            if self.required_prefix is not None:
                return self.required_prefix
            return "" if s.recipient_first else s.call_open
        return ""


def choice_name(choice: Any) -> Optional[str]:
    """The function a tool_choice names (OpenAI or legacy form), or None for the string modes."""
    if isinstance(choice, Mapping):
        if isinstance(choice.get("function"), Mapping):
            return choice["function"].get("name")
        return choice.get("name")
    return None


LLAMA3_STOPS = ("<|eot_id|>", "<|end_of_text|>")

FORMATS: dict[str, Format] = {
    f.version: f
    for f in (
        Format(
            version="v1",
            syntax=OutputSyntax(
                call_open="<|START_OF_FUNCTION_CALL|>", name_end=":", name_end_render=":\n",
                stop_tokens=("<|END_OF_ASSISTANT|>", "<|END_OF_FUNCTION_CALL|>"),
            ),
            generation_prompt="assistant:",
            render_message=_v1_message,
            system_messages=_v1_v2_system,
            reorder_tool_results=False,
            required_prefix="",
            named_prefix=_v1_named_prefix,
        ),
        Format(
            version="v2",
            syntax=OutputSyntax(
                call_open="\n<|from|>assistant\n<|recipient|>", name_end="\n<|content|>",
                stop_tokens=("<|stop|>",), recipient_first=True, text_recipient="all",
                drop_space_after=("<|from|>", "<|recipient|>", "<|content|>"),
            ),
            generation_prompt="<|from|>assistant\n<|recipient|>",
            render_message=_v2_message,
            system_messages=_v1_v2_system,
        ),
        Format(
            version="v2.llama3",
            syntax=OutputSyntax(call_open=SEP, name_end="\n", stop_tokens=LLAMA3_STOPS),
            generation_prompt=_header("assistant"),
            render_message=_v2_llama3_message,
            system_messages=_v1_v2_system,
        ),
        Format(
            version="v3.llama3",
            syntax=OutputSyntax(
                call_open=">>>", name_end="\n", stop_tokens=LLAMA3_STOPS,
                recipient_first=True, text_recipient="all",
            ),
            generation_prompt=_header("assistant") + ">>>",
            render_message=_v3_llama3_message,
            system_messages=_v3_llama3_system,
        ),
        Format(
            version="v3-llama3.1",
            syntax=OutputSyntax(
                call_open="<function=", name_end=">", call_close="</function>",
                code_open="<|python_tag|>", stop_tokens=LLAMA3_STOPS + ("<|eom_id|>",),
                strip_text_segments=False, text_joiner="",
            ),
            generation_prompt=_header("assistant"),
            render_message=_v31_message,
            system_messages=_v31_system,
        ),
    )
}
