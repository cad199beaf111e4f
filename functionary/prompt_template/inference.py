"""From an OpenAI chat request to the exact prompt the engine sees (FORMAT_SPEC.md §2, §5).

Shared by the server and `python -m functionary render`, so what the CLI prints is what is served.
Inputs are plain OpenAI-JSON dicts; invalid requests raise `PromptError` (HTTP 400 in the server).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

from .errors import PromptError
from .formats import choice_name
from .template import PromptTemplate
from .typescript import resolve_refs

ToolChoice = Union[str, dict]
_ROLES = ("system", "developer", "user", "assistant", "tool", "function")


@dataclass(frozen=True)
class InferencePrompt:
    """A rendered request: the prompt and what the parser and sampler need to know about it."""

    prompt: str  # no BOS: the tokenizer adds it
    tool_choice: ToolChoice  # the effective choice: "auto" | "none" | "required" | {"type": "function", ...}
    tools: list[dict]  # the tools after tool_choice enforcement, in OpenAI tool form
    legacy_functions: bool  # the request used `functions` / `function_call`
    stop: tuple[str, ...]  # the format's stop strings

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.tools if t.get("type") == "function"]

    @property
    def code_interpreter(self) -> bool:
        return any(t.get("type") == "code_interpreter" for t in self.tools)


def build_inference_prompt(
    template: PromptTemplate,
    messages: Sequence[Mapping[str, Any]],
    tools: Optional[Sequence[Mapping[str, Any]]] = None,
    functions: Optional[Sequence[Mapping[str, Any]]] = None,
    tool_choice: Optional[ToolChoice] = None,
    function_call: Optional[ToolChoice] = None,
) -> InferencePrompt:
    """Validate and render a chat request: system messages, history, generation prompt, prefix."""
    if tools is not None and functions is not None:
        raise PromptError("Use either `tools` or the legacy `functions`, not both.", "functions")
    if tool_choice is not None and tools is None:
        raise PromptError("`tool_choice` is only allowed when `tools` are given.", "tool_choice")
    if function_call is not None and functions is None:
        raise PromptError("`function_call` is only allowed when `functions` are given.", "function_call")

    legacy = functions is not None
    if tools is not None:
        normalized = [_normalize_tool(t, i) for i, t in enumerate(tools)]
        choice = _normalize_choice(tool_choice, "tool_choice", legacy=False)
    elif functions is not None:
        normalized = [
            {"type": "function", "function": _normalize_function(f, f"functions[{i}]")}
            for i, f in enumerate(functions)
        ]
        choice = _normalize_choice(function_call, "function_call", legacy=True)
    else:
        normalized, choice = [], "none"
    replacement = _own_definition(function_call if legacy else tool_choice)
    if replacement is not None:  # the choice's own definition replaces the tool list
        enforced = [replacement]
    else:
        enforced = _enforce(normalized, choice, "function_call" if legacy else "tool_choice")

    history = [_normalize_message(m, i) for i, m in enumerate(messages)]
    if not history:
        raise PromptError("`messages` must contain at least one message.", "messages")
    if template.default_system is not None and history[0]["role"] != "system":
        history.insert(0, {"role": "system", "content": template.default_system})
    history.append({"role": "assistant", "content": None})
    history = template.pre_process_messages_before_inference(history)
    prompt = template.get_prompt_from_messages(history, enforced) + template.get_generation_prefix(choice)
    return InferencePrompt(
        prompt=prompt, tool_choice=choice, tools=enforced, legacy_functions=legacy,
        stop=template.stop_tokens,
    )


def _normalize_function(function: Any, where: str) -> dict:
    if not isinstance(function, Mapping):
        raise PromptError(f"`{where}` must be an object.", where)
    name = function.get("name")
    if not isinstance(name, str) or not name:
        raise PromptError(f"`{where}.name` must be a non-empty string.", where)
    parameters = function.get("parameters")
    if parameters is not None:
        if not isinstance(parameters, Mapping):
            raise PromptError(f"`{where}.parameters` must be a JSON Schema object.", where)
        resolve_refs(parameters)  # fail here, with a 400, on a broken $ref
    # An absent or null description renders as nothing (the seed printed "// None" for null).
    description = function.get("description")
    if description is None:
        description = ""
    # Key order matters: v3-llama3.1 renders json.dumps of this dict.
    return {"name": name, "description": description, "parameters": parameters}


def _normalize_tool(tool: Any, i: int) -> dict:
    where = f"tools[{i}]"
    if not isinstance(tool, Mapping):
        raise PromptError(f"`{where}` must be an object.", "tools")
    kind = tool.get("type", "function")
    if kind == "code_interpreter":
        return {"type": "code_interpreter"}
    if kind != "function":
        raise PromptError(f"`{where}.type` must be 'function' or 'code_interpreter', got {kind!r}.", "tools")
    return {"type": "function", "function": _normalize_function(tool.get("function"), f"{where}.function")}


def _normalize_choice(choice: Any, param: str, legacy: bool) -> ToolChoice:
    if choice is None:
        return "auto"
    allowed = ("none", "auto") if legacy else ("none", "auto", "required")
    if isinstance(choice, str):
        if choice not in allowed:
            raise PromptError(f"`{param}` must be one of {', '.join(allowed)} or name a function.", param)
        return choice
    name = choice_name(choice) if isinstance(choice, Mapping) else None
    if not isinstance(name, str) or not name:
        raise PromptError(f"`{param}` names no function.", param)
    return {"type": "function", "function": {"name": name}}


def _own_definition(choice: Any) -> Optional[dict]:
    """The tool a named `tool_choice` defines itself, or None.

    FORMAT_SPEC §2 `enforce_tool_choice`: a named choice with a description or parameters
    becomes the whole tool list, whatever `tools` holds; one with neither (the usual
    `{"type": "function", "function": {"name": ...}}`; null or "" count as absent) picks that
    tool out of `tools`. (A legacy `function_call`, `{"name": ...}`, only ever picks by name.)
    """
    if not isinstance(choice, Mapping) or not isinstance(choice.get("function"), Mapping):
        return None
    function = choice["function"]
    if function.get("description") in (None, "") and function.get("parameters") is None:
        return None
    return {"type": "function", "function": _normalize_function(function, "tool_choice.function")}


def _enforce(tools: list[dict], choice: ToolChoice, param: str) -> list[dict]:
    if choice == "none":
        return []
    name = choice_name(choice)
    if name is None:
        return tools
    chosen = [t for t in tools if t.get("type") == "function" and t["function"]["name"] == name]
    if not chosen:
        raise PromptError(f"`{param}` names the function {name!r}, which is not among the given tools.", param)
    return chosen[:1]


def _normalize_message(message: Any, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(message, Mapping):
        raise PromptError(f"`{where}` must be an object.", "messages")
    role = message.get("role")
    if role not in _ROLES:
        raise PromptError(f"`{where}.role` must be one of {', '.join(_ROLES)}, got {role!r}.", "messages")
    content = message.get("content")
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise PromptError(f"`{where}.content` may only contain text parts.", "messages")
            texts.append(part["text"])
        content = "".join(texts)
    elif content is not None and not isinstance(content, str):
        raise PromptError(f"`{where}.content` must be a string, a list of text parts or null.", "messages")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
    for key in ("name", "tool_call_id"):
        if message.get(key) is not None:
            out[key] = message[key]
    if role == "assistant":
        calls = message.get("tool_calls")
        if calls:
            if not isinstance(calls, list):
                raise PromptError(f"`{where}.tool_calls` must be a list.", "messages")
            out["tool_calls"] = [_normalize_call(c, f"{where}.tool_calls[{k}]") for k, c in enumerate(calls)]
        if message.get("function_call"):
            fc = message["function_call"]
            if not isinstance(fc, Mapping) or not isinstance(fc.get("name"), str):
                raise PromptError(f"`{where}.function_call` must have a name.", "messages")
            out["function_call"] = {"name": fc["name"], "arguments": fc.get("arguments") or ""}
    return out


def _normalize_call(call: Any, where: str) -> dict:
    if not isinstance(call, Mapping) or not isinstance(call.get("function"), Mapping):
        raise PromptError(f"`{where}` must have a `function`.", "messages")
    function = call["function"]
    if not isinstance(function.get("name"), str):
        raise PromptError(f"`{where}.function.name` must be a string.", "messages")
    arguments = function.get("arguments")
    if arguments is None:
        arguments = ""
    if not isinstance(arguments, str):
        raise PromptError(f"`{where}.function.arguments` must be a string.", "messages")
    return {"id": call.get("id"), "type": "function", "function": {"name": function["name"], "arguments": arguments}}
