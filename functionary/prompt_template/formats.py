"""The five Functionary prompt formats and two of other model families (hermes, llama3-json), as
data plus a few small functions (FORMAT_SPEC.md §4-§5).

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
# Formats of other model families: whole conversations, as their published chat templates
# render them (a message's bytes depend on its neighbours: merged system prompt, grouped tool
# results). Arguments are JSON: a JSON string renders as `tojson` of its value (what the
# templates print for the dicts vLLM and transformers pass), anything else verbatim.

def json_text(arguments: Any) -> str:
    """A call's arguments as the published templates print them (`tojson` of the decoded value)."""
    if arguments is None or arguments == "":
        return "{}"
    try:
        value = json.loads(arguments)
    except (TypeError, ValueError):
        return str(arguments)
    # Only an object is re-serialised (vLLM decodes arguments into dicts for chat templates).
    return json.dumps(value, ensure_ascii=False) if isinstance(value, dict) else str(arguments)


def tool_json(function: Mapping[str, Any]) -> dict:
    """A function as the OpenAI tool object templates print: absent description / parameters
    (our normalised "" / None) are left out, as a client that never sent them would render."""
    out: dict[str, Any] = {"name": function.get("name")}
    if function.get("description"):
        out["description"] = function["description"]
    if function.get("parameters") is not None:
        out["parameters"] = function["parameters"]
    return {"type": "function", "function": out}


CODE_PARAMETERS = {
    "type": "object",
    "properties": {"code": {"type": "string", "description": "The Python code to run."}},
    "required": ["code"],
}
# hermes has no built-in code interpreter: it is offered as a function of that name.
CODE_TOOL = {"type": "function", "function": {
    "name": "python", "description": PYTHON_RUN_SYS_MSG, "parameters": CODE_PARAMETERS}}

# hermes: ChatML with <tool_call> JSON, byte for byte as Qwen2.5-Instruct's chat template
# (tests/reference/chat_templates/qwen2.5-instruct.jinja), the layout Hermes-style tool data uses.
HERMES_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
HERMES_TOOLS_HEAD = (
    "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
HERMES_TOOLS_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    "<tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": "
    "<args-json-object>}\n</tool_call><|im_end|>\n"
)
_RESULT_ROLES = ("tool", "function")


def _hermes_render(messages: list, functions: list, code_interpreter: bool) -> str:
    tools = [tool_json(f) for f in functions] + ([CODE_TOOL] if code_interpreter else [])
    first_system = bool(messages) and messages[0]["role"] == "system"
    system = text_of(messages[0].get("content")) if first_system else HERMES_DEFAULT_SYSTEM
    if tools:
        out = [f"<|im_start|>system\n{system}{HERMES_TOOLS_HEAD}"]
        out += ["\n" + json.dumps(t, ensure_ascii=False) for t in tools]
        out.append(HERMES_TOOLS_TAIL)
    else:
        out = [f"<|im_start|>system\n{system}<|im_end|>\n"]
    for i, m in enumerate(messages):
        role, c = m["role"], text_of(m.get("content"))
        if role == "user" or (role == "system" and i > 0):
            out.append(f"<|im_start|>{role}\n{c}<|im_end|>\n")
        elif role == "assistant":
            calls = calls_of(m)
            if not calls:
                out.append("<|im_start|>assistant\n" if c is None else f"<|im_start|>assistant\n{c}<|im_end|>\n")
                continue
            out.append("<|im_start|>assistant" + (f"\n{c}" if c else ""))
            out += [f'\n<tool_call>\n{{"name": "{n}", "arguments": {json_text(a)}}}\n</tool_call>' for n, a in calls]
            out.append("<|im_end|>\n")
        elif role in _RESULT_ROLES:
            if i == 0 or messages[i - 1]["role"] not in _RESULT_ROLES:
                out.append("<|im_start|>user")
            out.append(f"\n<tool_response>\n{c}\n</tool_response>")
            if i == len(messages) - 1 or messages[i + 1]["role"] not in _RESULT_ROLES:
                out.append("<|im_end|>\n")
    return "".join(out)


# llama3-json: Llama 3.1+ JSON tool calls, byte for byte as Meta's Llama-3.1-Instruct chat template
# (tests/reference/chat_templates/llama3.1-instruct.jinja) with its defaults (tools in the first
# user message, date "26 Jul 2024"); the code interpreter is its built-in `<|python_tag|>` tool.
LLAMA31_DATE = "26 Jul 2024"
LLAMA31_TOOLS_INTRO = (
    "Given the following functions, please respond with a JSON for a function call "
    "with its proper arguments that best answers the given prompt.\n\n"
    'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.'
    "Do not use variables.\n\n"
)


def _llama3_json_render(messages: list, functions: list, code_interpreter: bool) -> str:
    from .errors import PromptError

    tools = [tool_json(f) for f in functions] or None
    msgs = list(messages)
    system = ""
    if msgs and msgs[0]["role"] == "system":
        system = str(text_of(msgs[0].get("content"))).strip()
        msgs = msgs[1:]
    out = [_header("system")]
    if code_interpreter or tools is not None:
        out.append("Environment: ipython\n")
    if code_interpreter:
        out.append("Tools: \n\n")  # Meta's built-in tools minus code_interpreter: none
    out.append(f"Cutting Knowledge Date: December 2023\nToday Date: {LLAMA31_DATE}\n\n{system}<|eot_id|>")
    if tools is not None:
        if not msgs or msgs[0]["role"] != "user" or text_of(msgs[0].get("content")) is None:
            raise PromptError("llama3-json puts the tools in the first user message: the conversation needs one.",
                              "messages")
        first = str(text_of(msgs[0].get("content"))).strip()
        msgs = msgs[1:]
        out.append(_header("user") + LLAMA31_TOOLS_INTRO)
        out += [json.dumps(t, indent=4, ensure_ascii=False) + "\n\n" for t in tools]
        out.append(first + "<|eot_id|>")
    for m in msgs:
        role, c = m["role"], text_of(m.get("content"))
        calls = calls_of(m) if role == "assistant" else []
        if role in _RESULT_ROLES:
            # The template prints `tojson` of a string result too (a string is iterable in Jinja).
            out.append(_header("ipython") + ("None" if c is None else json.dumps(c, ensure_ascii=False)) + "<|eot_id|>")
        elif calls:
            # One call per turn in Meta's template; several are written one per line.
            body = "\n".join(
                f"<|python_tag|>{a}" if n == "python" else f'{{"name": "{n}", "parameters": {json_text(a)}}}'
                for n, a in calls
            )
            out.append(_header("assistant") + body + ("<|eom_id|>" if code_interpreter else "<|eot_id|>"))
        elif role == "assistant" and c is None:
            out.append(_header("assistant"))
        else:
            out.append(_header(role) + str(c).strip() + "<|eot_id|>")
    return "".join(out)


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
    # Formats whose messages render in context (other model families): the whole conversation
    # (messages, functions, code-interpreter flag) at once; `render_message` is then unused.
    render_conversation: Optional[Callable[[list, list, bool], str]] = None
    # Where a model's own chat template opens a conversation without a system message with a
    # system prompt of its own, the server does the same (`detect.default_system_prompt`).
    model_system_prompt: bool = False

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
        Format(
            version="hermes",
            syntax=OutputSyntax(
                call_open='<tool_call>\n{"name": "', name_end='", "arguments": ', call_close="}\n</tool_call>",
                stop_tokens=("<|im_end|>", "<|endoftext|>"), strip_text_segments=False, text_joiner="",
                json_arguments=True, code_parameters=json.dumps(CODE_PARAMETERS), json_separators=(", ", ": "),
            ),
            generation_prompt="<|im_start|>assistant\n",
            render_message=lambda m: "",
            system_messages=lambda functions, code: [],
            render_conversation=_hermes_render,
            model_system_prompt=True,
        ),
        Format(
            version="llama3-json",
            syntax=OutputSyntax(
                call_open='{"name": "', name_end='", "parameters": ', call_close="}",
                code_open="<|python_tag|>", stop_tokens=LLAMA3_STOPS + ("<|eom_id|>",),
                strip_text_segments=False, text_joiner="", json_arguments=True, json_separators=(", ", ": "),
            ),
            generation_prompt=_header("assistant"),
            render_message=lambda m: "",
            system_messages=lambda functions, code: [],
            render_conversation=_llama3_json_render,
        ),
    )
}
