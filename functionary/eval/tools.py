"""BFCL function docs -> OpenAI `tools`, and OpenAI function names back to BFCL's.

BFCL writes parameter types Python-style (`dict`, `float`, `tuple`, `any`, ...); OpenAI-compatible
servers take JSON Schema. The mapping is BFCL's own `GORILLA_TO_OPENAPI` (constants/type_mappings.py),
applied as BFCL's `_cast_to_openai_type` does (a `float` also gets `"format": "float"` and a note in
its description), but at every depth. Names such as `math.factorial` are not valid OpenAI function
names (`^[a-zA-Z0-9_-]{1,64}$`): BFCL replaces the dots with `_`; we do the same, keep the names
unique, and map the model's calls back to the original names before scoring.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass

# BFCL's GORILLA_TO_OPENAPI (bfcl_eval/constants/type_mappings.py), Python-relevant part.
PYTHON_TO_JSON_SCHEMA = {
    "integer": "integer", "number": "number", "float": "number", "string": "string",
    "boolean": "boolean", "bool": "boolean", "array": "array", "list": "array",
    "dict": "object", "object": "object", "tuple": "array", "any": "string",
    "byte": "integer", "short": "integer", "long": "integer", "double": "number", "char": "string",
    "ArrayList": "array", "Array": "array", "HashMap": "object", "Hashtable": "object",
    "Queue": "array", "Stack": "array", "Any": "string", "String": "string", "Bigint": "integer",
}

_INVALID_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")


def schema_type(python_type: object) -> str:
    """A BFCL type name as a JSON Schema type (unknown or missing -> string, as BFCL does)."""
    return PYTHON_TO_JSON_SCHEMA.get(python_type, "string") if isinstance(python_type, str) else "string"


def convert_schema(schema: dict, is_property: bool = True) -> dict:
    """One BFCL parameter schema (a copy) in JSON Schema, nested properties and items included.

    Like BFCL, only a named property (not an array's `items`) gets the float note."""
    out = dict(schema)
    python_type = out.get("type")
    out["type"] = schema_type(python_type)
    if python_type == "float" and is_property:
        out["format"] = "float"
        out["description"] = out.get("description", "") + " This is a float type value."
    if isinstance(out.get("properties"), dict):
        out["properties"] = {k: convert_schema(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = convert_schema(out["items"], is_property=False)
    return out


@dataclass(frozen=True)
class ToolSet:
    """The OpenAI `tools` for one entry and the way back from an OpenAI name to BFCL's."""

    tools: list
    original_names: dict  # OpenAI name -> BFCL name

    def original_name(self, openai_name: str) -> str:
        # A name the model invented stays as it is (and fails the name check).
        return self.original_names.get(openai_name, openai_name)


def openai_name(name: str, taken: set) -> str:
    """A valid, unused OpenAI function name for a BFCL one (dots -> `_`, as BFCL does)."""
    base = _INVALID_NAME_CHARS.sub("_", name)[:64] or "function"
    candidate, n = base, 1
    while candidate in taken:
        n += 1
        suffix = f"_{n}"
        candidate = base[: 64 - len(suffix)] + suffix
    return candidate


def to_openai_tools(functions: list) -> ToolSet:
    tools, names, taken = [], {}, set()
    for function in copy.deepcopy(functions):
        name = openai_name(function["name"], taken)
        taken.add(name)
        names[name] = function["name"]
        parameters = function.get("parameters") or {"type": "dict", "properties": {}}
        parameters = convert_schema(parameters)
        parameters["type"] = "object"
        parameters.setdefault("properties", {})
        tool_function = {"name": name, "description": function.get("description", ""), "parameters": parameters}
        tools.append({"type": "function", "function": tool_function})
    return ToolSet(tools, names)
