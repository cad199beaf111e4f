"""JSON Schema tool definitions -> the TypeScript-like namespace the Functionary models were trained on.

This is FORMAT_SPEC.md §3, byte for byte. The seed de-duplicated `oneOf` member types with a
Python set, so their order depended on PYTHONHASHSEED; the golden vectors were made with seed 0.
We reproduce that order deterministically (`seed_set_order`) for the JSON Schema type names, and
keep input order for anything else.
"""
from __future__ import annotations

import copy
import json
from typing import Any, Iterable, Mapping, Optional

import jsonref

from .errors import PromptError

HEADER = "// Supported function definitions that should be called when necessary.\n"
_INDENT = "    "


def render_namespace(functions: Iterable[Mapping[str, Any]], namespace: str = "functions") -> str:
    """Render function definitions (dicts with name/description/parameters) as the TS namespace."""
    out = HEADER + f"namespace {namespace} {{\n\n"
    for function in functions:
        if hasattr(function, "model_dump"):
            function = function.model_dump()
        name = function.get("name")
        if name is None:
            continue
        out += f"// {function.get('description', '')}\n"
        out += f"type {name}"
        parameters = function.get("parameters")
        if isinstance(parameters, Mapping) and parameters.get("properties") is not None:
            parameters = resolve_refs(parameters)
            lines = param_lines(parameters["properties"], parameters.get("required", []), 0)
            out += " = (_: {\n" + "\n".join(lines) + "\n}) => any;\n\n"
        else:
            out += " = () => any;\n\n"
    out += f"}} // namespace {namespace}"
    return out


def resolve_refs(schema: Mapping[str, Any]) -> dict:
    """Inline every local `$ref` (JSON pointers relative to `schema`); sibling keys of a $ref are dropped.
    Returns a copy."""
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError):
        text = None
    if text is not None and '"$ref"' not in text:
        return json.loads(text)  # nothing to inline; a JSON round trip copies fastest
    try:
        resolved = jsonref.replace_refs(copy.deepcopy(dict(schema)), proxies=False, lazy_load=False)
        # A recursive schema cannot be written out as a finite type; json.dumps detects the cycle.
        json.dumps(resolved)
    except (jsonref.JsonRefError, ValueError, RecursionError) as exc:
        raise PromptError(f"Invalid JSON Schema reference in tool parameters: {exc}", "tools") from None
    return resolved


def param_lines(properties: Any, required: Any, depth: int) -> list[str]:
    """The body lines of an object type: one declaration per property, with comments."""
    offset = _INDENT * depth
    lines: list[str] = []
    if not isinstance(properties, Mapping):
        return lines
    for name, prop in properties.items():
        if not isinstance(prop, Mapping):
            continue
        comment = param_info(prop)
        examples: list[str] = []
        if "examples" in prop:
            values = prop["examples"] if isinstance(prop["examples"], (list, tuple)) else [prop["examples"]]
            examples = [f"// Example {name}:"] + [f"// {_example(v)}" for v in values]
        decl = name
        if isinstance(required, list) and name not in required:
            decl += "?"
        ptype = param_type(prop)
        if ptype == "object":
            if comment is not None:
                lines.append(offset + comment)
            lines.extend(offset + e for e in examples)
            lines.append(offset + decl + ": {")
            lines.extend(param_lines(prop.get("properties") or {}, prop.get("required") or [], depth + 1))
            lines.append(offset + "},")
            continue
        if ptype == "array":
            items = prop.get("items", {})
            if not isinstance(items, Mapping) or "type" not in items:
                decl += ": [],"
            else:
                if comment is not None:
                    lines.append(offset + comment)
                lines.extend(offset + e for e in examples)
                array_decl = array_ts(decl, prop, depth)
                if not array_decl.endswith(","):
                    array_decl += ","
                lines.append(array_decl)
                continue
        else:
            if "enum" in prop:
                ptype = enum_str(prop["enum"])
            if prop.get("nullable") is True:
                ptype += " | null"
            decl += ": " + ptype + ","
        # Scalar emission: examples only appear together with a comment (seed behaviour).
        if comment is not None:
            lines.append(offset + comment)
            lines.extend(offset + e for e in examples)
        lines.append(offset + decl)
    return lines


def array_ts(name: Optional[str], prop: Mapping[str, Any], depth: int) -> str:
    """The declaration of an array property (or, with no name, of a nested array type)."""
    offset = _INDENT * depth
    items = prop.get("items", {})
    if not isinstance(items, Mapping) or len(items) == 0:
        return f"{offset}{name}: []" if name is not None else "[]"
    item_type = param_type(items)
    if item_type == "object":
        head = f"{offset}{name}: {{" if name is not None else f"{offset}{{"
        body = param_lines(items.get("properties", {}), items.get("required", []), depth + 1)
        return "\n".join([head, *body, f"{offset}}}[]"])
    if item_type == "array":
        inner = array_ts(None, items, depth + 1)
        if name is None:
            return f"{inner}[]"
        return f"{offset}{name}: {inner.strip()}[]"
    if "enum" in items:
        options = enum_str(items["enum"])
        return f"({options})[]" if name is None else f"{offset}{name}: ({options})[]"
    return f"{item_type}[]" if name is None else f"{offset}{name}: {item_type}[],"


def param_type(prop: Mapping[str, Any]) -> str:
    """The TypeScript type of a schema: `type` (lists joined), else oneOf member types, else any."""
    if "type" in prop:
        ptype = prop["type"]
        ptype = " | ".join(str(t) for t in ptype) if isinstance(ptype, list) else str(ptype)
    elif "oneOf" in prop and isinstance(prop["oneOf"], list):
        types: list[str] = []
        for member in prop["oneOf"]:
            if isinstance(member, Mapping) and "type" in member:
                t = member["type"]
                t = " | ".join(str(x) for x in t) if isinstance(t, list) else str(t)
                t = "number" if t in ("integer", "float") else t
                types.append(t)
        ptype = " | ".join(seed_set_order(types))
    else:
        ptype = "any"
    return "number" if ptype in ("integer", "float") else ptype


def enum_str(values: Any) -> str:
    """`"a" | "b" | 1 | True`: strings quoted verbatim, everything else as Python's str()."""
    if not isinstance(values, (list, tuple)):
        values = [values]
    return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values)


def param_info(prop: Mapping[str, Any]) -> Optional[str]:
    """The `// ...` comment line: description, default, format, bounds; None when there is nothing."""
    info: list[str] = []
    if "description" in prop:
        description = str(prop["description"])
        if not description.endswith("."):
            description += "."
        info.append(description)
    if "default" in prop:
        default = prop["default"]
        value = f'"{default}"' if prop.get("type", "any") == "string" else str(default)
        info.append(f"Default={value}.")
    fmt = prop.get("format")
    if fmt is not None:
        info.append(f"Format={fmt}")
    elif isinstance(prop.get("oneOf"), list):
        formats = [str(m["format"]) for m in prop["oneOf"] if isinstance(m, Mapping) and "format" in m]
        if formats:
            info.append("Format=" + " or ".join(formats))
    for key, label in (("maximum", "Maximum"), ("minimum", "Minimum"),
                       ("maxLength", "Maximum length"), ("minLength", "Minimum length")):
        if key in prop:
            info.append(f"{label}={prop[key]}")
    if not info:
        return None
    return ("// " + " ".join(info)).replace("\n", " ")


def _example(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, (dict, list)) else str(value)
    return text.replace("\n", "\\n")


# hash() of the JSON Schema type names in CPython >= 3.11 with PYTHONHASHSEED=0 (as unsigned 64-bit).
_SEED0_HASHES = {
    "string": 2499641371229961923, "number": 11017538475595625822, "boolean": 5341816080060195703,
    "object": 857171841533594558, "array": 3396577837547464240, "null": 554423866510983744,
}


def seed_set_order(items: list[str]) -> list[str]:
    """The iteration order of `set(items)` in CPython under PYTHONHASHSEED=0 (what the vectors use).

    Emulates CPython's set table (size 8, 9 linear probes, perturbed probing, resize at 3/5 fill)
    for the JSON Schema type names; other names keep their first-seen order.
    """
    if not all(item in _SEED0_HASHES for item in items):
        return list(dict.fromkeys(items))
    table: list[Optional[str]] = [None] * 8
    used = 0
    for item in items:
        if _set_insert(table, item):
            used += 1
            if used * 5 >= (len(table) - 1) * 3:
                size = 8
                while size <= used * 4:
                    size <<= 1
                old = [k for k in table if k is not None]
                table = [None] * size
                for key in old:
                    _set_insert(table, key)
    return [k for k in table if k is not None]


def _set_insert(table: list[Optional[str]], key: str) -> bool:
    mask = len(table) - 1
    perturb = _SEED0_HASHES[key]
    i = perturb & mask
    while True:
        for j in range(i, i + (10 if i + 9 <= mask else 1)):
            if table[j] is None:
                table[j] = key
                return True
            if table[j] == key:
                return False
        perturb >>= 5
        i = (i * 5 + 1 + perturb) & mask
