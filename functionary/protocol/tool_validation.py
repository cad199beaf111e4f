"""Tool definitions checked at the edge, before anything renders or compiles them.

    check_tool_definitions(tools=..., functions=..., tool_choice=..., limits=ToolLimits())

raises `ToolDefinitionError` (message, `param`, `code`: an OpenAI-format 400) for:

* a function name outside OpenAI's `^[a-zA-Z0-9_-]{1,64}$`, or one given twice (two tools with
  one name cannot both be called, and the grammar could not tell them apart);
* `parameters` that are not a JSON Schema: checked against the JSON Schema meta-schema with
  `jsonschema` (Draft 2020-12 unless the schema's `$schema` names another draft), which refuses
  `"properties": 5`, `"type": 5`, `"type": "foo"`, `"required": "a"`, ...;
* what the meta-schema cannot say: the top level must be an object schema (OpenAI's rule), and
  with `strict: true` every `required` name must be a property (OpenAI's strict-mode rule; without
  `strict`, OpenAI accepts such a schema, as JSON Schema does, and so do we);
* absurd sizes: more tools than `max_tools`, a schema nested deeper than `max_schema_depth`,
  more than `max_tools_bytes` of tool JSON.

The checks see plain OpenAI JSON (dicts), the shape the request's tools are dumped to.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Optional, Sequence

FUNCTION_NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")

DEFAULT_MAX_TOOLS = 128  # OpenAI's own limit on `tools`
DEFAULT_MAX_SCHEMA_DEPTH = 64  # JSON nesting of one function's `parameters` (objects and arrays)
DEFAULT_MAX_TOOLS_BYTES = 256 * 1024  # JSON text of all tool definitions of a request


@dataclass(frozen=True)
class ToolLimits:
    """0 switches a limit off."""

    max_tools: int = DEFAULT_MAX_TOOLS
    max_schema_depth: int = DEFAULT_MAX_SCHEMA_DEPTH
    max_tools_bytes: int = DEFAULT_MAX_TOOLS_BYTES


class ToolDefinitionError(ValueError):
    """A tool definition the server refuses (HTTP 400, OpenAI's `invalid_request_error`)."""

    def __init__(self, message: str, param: Optional[str], code: Optional[str]) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


@dataclass(frozen=True)
class _Function:
    where: str  # "tools[0].function", "functions[2]", "tool_choice.function"
    definition: Mapping[str, Any]


def check_tool_definitions(
    *,
    tools: Optional[Sequence[Any]] = None,
    functions: Optional[Sequence[Any]] = None,
    tool_choice: Any = None,
    limits: ToolLimits = ToolLimits(),
) -> None:
    """Raise `ToolDefinitionError` for the first bad definition among `tools`, legacy
    `functions` and a `tool_choice` that carries its own definition."""
    for param, listed in (("tools", tools), ("functions", functions)):
        if listed is not None and limits.max_tools and len(listed) > limits.max_tools:
            raise ToolDefinitionError(
                f"Invalid '{param}': array too long. Expected an array with maximum length "
                f"{limits.max_tools}, but got an array with length {len(listed)} instead.",
                param,
                "array_above_max_length",
            )
    found = list(_functions(tools, functions, tool_choice))
    size = _json_size([tools, functions, tool_choice])
    if limits.max_tools_bytes and size > limits.max_tools_bytes:
        raise ToolDefinitionError(
            f"The tool definitions are {size} bytes of JSON; this server accepts at most "
            f"{limits.max_tools_bytes}.",
            "tools" if tools is not None else "functions" if functions is not None else "tool_choice",
            "tools_too_large",
        )
    seen: dict[tuple[str, str], str] = {}  # (list, name) -> where
    for fn in found:
        name = fn.definition.get("name")
        _check_name(name, f"{fn.where}.name")
        source = fn.where.split("[", 1)[0]
        if source != "tool_choice.function":  # a named choice repeats a listed name on purpose
            if (source, name) in seen:
                raise ToolDefinitionError(
                    f"Invalid '{fn.where}.name': the function name '{name}' is already used by "
                    f"{seen[source, name]}. Function names must be unique.",
                    f"{fn.where}.name",
                    "duplicate_function_name",
                )
            seen[source, name] = fn.where
        parameters = fn.definition.get("parameters")
        if parameters is not None:
            _check_parameters(name, parameters, f"{fn.where}.parameters", bool(fn.definition.get("strict")), limits)


def _functions(tools: Optional[Sequence[Any]], functions: Optional[Sequence[Any]], tool_choice: Any) -> Iterable[_Function]:
    for i, tool in enumerate(tools or ()):
        if isinstance(tool, Mapping) and tool.get("type", "function") == "function":
            function = tool.get("function")
            if isinstance(function, Mapping):
                yield _Function(f"tools[{i}].function", function)
    for i, function in enumerate(functions or ()):
        if isinstance(function, Mapping):
            yield _Function(f"functions[{i}]", function)
    if isinstance(tool_choice, Mapping):
        function = tool_choice.get("function")
        if isinstance(function, Mapping) and function.get("parameters") is not None:
            yield _Function("tool_choice.function", function)


def _json_size(value: Any) -> int:
    try:
        return len(json.dumps(value, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError, RecursionError):
        return 0  # not JSON-shaped: the schema check names the problem


def _check_name(name: Any, param: str) -> None:
    if not isinstance(name, str):
        raise ToolDefinitionError(f"Invalid '{param}': expected a string.", param, "invalid_type")
    if len(name) > 64:
        raise ToolDefinitionError(
            f"Invalid '{param}': string too long. Expected a string with maximum length 64, but got "
            f"a string with length {len(name)} instead.",
            param,
            "string_above_max_length",
        )
    if not FUNCTION_NAME_RE.match(name):
        raise ToolDefinitionError(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the "
            f"pattern '{FUNCTION_NAME_RE.pattern}'.",
            param,
            "invalid_value",
        )


def _depth(value: Any, limit: int) -> int:
    """JSON nesting depth of `value` (objects and arrays), counted without recursion and
    given up on once past `limit`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[Any] = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest


def _pointer(base: str, path: Iterable[Any]) -> str:
    out = base
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _check_parameters(name: str, parameters: Any, param: str, strict: bool, limits: ToolLimits) -> None:
    prefix = f"Invalid schema for function '{name}'"
    if not isinstance(parameters, Mapping):
        raise ToolDefinitionError(f"{prefix}: parameters must be a JSON Schema object.", param, "invalid_function_parameters")
    if limits.max_schema_depth and _depth(parameters, limits.max_schema_depth) > limits.max_schema_depth:
        raise ToolDefinitionError(
            f"{prefix}: the schema is nested more than {limits.max_schema_depth} levels deep.",
            param,
            "invalid_function_parameters",
        )
    try:
        text = json.dumps(parameters, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ToolDefinitionError(f"{prefix}: {exc}.", param, "invalid_function_parameters") from None
    try:
        problem = _meta_schema_problem(text)
    except RecursionError:  # only without a depth limit
        raise ToolDefinitionError(f"{prefix}: the schema is nested too deeply.", param, "invalid_function_parameters") from None
    if problem is not None:
        path, message = problem
        context = tuple(path)
        raise ToolDefinitionError(
            f"{prefix}: In context={context!r}, {message}.", _pointer(param, path), "invalid_function_parameters"
        )
    kind = parameters.get("type")
    if kind is not None and kind != "object":
        raise ToolDefinitionError(
            f"{prefix}: schema must be a JSON Schema of 'type: \"object\"', got 'type: {json.dumps(kind)}'.",
            f"{param}.type",
            "invalid_function_parameters",
        )
    if strict:
        _check_strict_required(prefix, parameters, param, ())


@lru_cache(maxsize=1024)
def _meta_schema_problem(schema_json: str) -> Optional[tuple[tuple[Any, ...], str]]:
    """(path inside the schema, message) of the meta-schema's best objection, or None.
    Cached by the schema's canonical JSON: clients send the same tools again and again."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import best_match

    schema = json.loads(schema_json)
    cls = Draft202012Validator
    declared = schema.get("$schema")
    if isinstance(declared, str) and declared.rstrip("#") in _KNOWN_META_SCHEMAS:
        cls = validators.validator_for(schema, default=Draft202012Validator)
    meta = cls(cls.META_SCHEMA)
    error = best_match(meta.iter_errors(schema))
    if error is None:
        return None
    return tuple(error.absolute_path), error.message


_KNOWN_META_SCHEMAS = {
    "http://json-schema.org/draft-03/schema",
    "http://json-schema.org/draft-04/schema",
    "http://json-schema.org/draft-06/schema",
    "http://json-schema.org/draft-07/schema",
    "https://json-schema.org/draft/2019-09/schema",
    "https://json-schema.org/draft/2020-12/schema",
}


def _check_strict_required(prefix: str, schema: Any, param: str, path: tuple[Any, ...]) -> None:
    """OpenAI's strict mode: in every object schema, `required` names only its properties."""
    if isinstance(schema, Mapping):
        required = schema.get("required")
        if isinstance(required, list):
            properties = schema.get("properties")
            known = set(properties) if isinstance(properties, Mapping) else set()
            extra = [key for key in required if key not in known]
            if extra:
                raise ToolDefinitionError(
                    f"{prefix}: In context={path!r}, 'required' must name only keys of 'properties' "
                    f"(strict mode). Extra required key '{extra[0]}' supplied.",
                    _pointer(param, (*path, "required")),
                    "invalid_function_parameters",
                )
        for key, child in schema.items():
            if key in ("enum", "const", "default", "examples"):
                continue  # values, not schemas
            _check_strict_required(prefix, child, param, (*path, key))
    elif isinstance(schema, list):
        for i, child in enumerate(schema):
            _check_strict_required(prefix, child, param, (*path, i))


__all__ = [
    "DEFAULT_MAX_SCHEMA_DEPTH",
    "DEFAULT_MAX_TOOLS",
    "DEFAULT_MAX_TOOLS_BYTES",
    "FUNCTION_NAME_RE",
    "ToolDefinitionError",
    "ToolLimits",
    "check_tool_definitions",
]
