"""JSON Schema tool definitions -> the TypeScript-like namespace the Functionary models were trained on.

This is FORMAT_SPEC.md §3, byte for byte. The seed de-duplicated `oneOf` member types with a
Python set, so their order depended on PYTHONHASHSEED; the golden vectors were made with seed 0.
We reproduce that order deterministically (`seed_set_order`) for the JSON Schema type names, and
keep input order for anything else.
"""
from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Mapping, Optional
from urllib.parse import unquote

from .errors import PromptError

HEADER = "// Supported function definitions that should be called when necessary.\n"
_INDENT = "    "


def render_namespace(functions: Iterable[Mapping[str, Any]], namespace: str = "functions") -> str:
    """Render function definitions (dicts with name/description/parameters) as the TS namespace."""
    functions = [f.model_dump() if hasattr(f, "model_dump") else f for f in functions]
    aliases = _Aliases({str(f.get("name")) for f in functions if f.get("name") is not None})
    out = HEADER + f"namespace {namespace} {{\n\n"
    for function in functions:
        name = function.get("name")
        if name is None:
            continue
        parameters = function.get("parameters")
        body = " = () => any;\n\n"
        if isinstance(parameters, Mapping) and parameters.get("properties") is not None:
            parameters = aliases.resolve(parameters)
            out += aliases.declarations()
            lines = param_lines(parameters["properties"], parameters.get("required", []), 0)
            body = " = (_: {\n" + "\n".join(lines) + "\n}) => any;\n\n"
        out += f"// {function.get('description', '')}\n"
        out += f"type {name}" + body
    out += f"}} // namespace {namespace}"
    return out


class _Aliases:
    """Named types for recursive definitions, which cannot be written out inline.

    The original renderer inlined every `$ref` and never ended on a recursive one. Here every
    `$ref` to a recursive definition renders as a type alias named after it (`#/$defs/TreeNode`
    -> `TreeNode`), declared in the namespace before the first function that uses it:

        type TreeNode = {
        label: string,
        children?: TreeNode[],
        };

    Schemas without recursion render exactly as before.
    """

    def __init__(self, taken: set[str]) -> None:
        self._taken = set(taken)  # function names and alias names: each alias name is new
        self._root: Mapping[str, Any] = {}
        self._recursive: frozenset[str] = frozenset()
        self._names: dict[str, str] = {}  # pointer -> alias name, for the current function
        self._pending: list[str] = []  # pointers named but not declared yet
        self._by_definition: dict[tuple, str] = {}  # every function's aliases, by what they stand for

    def resolve(self, parameters: Mapping[str, Any]) -> dict:
        """`parameters` with its `$ref`s inlined, recursive ones as alias references."""
        found: set[str] = set()
        resolve_refs(parameters, on_cycle=lambda pointer: found.add(pointer) or {})
        self._root, self._recursive, self._names, self._pending = parameters, frozenset(found), {}, []
        if not found:
            return resolve_refs(parameters)
        return resolve_refs(parameters, on_cycle=self._reference, as_reference=self._recursive)

    def _reference(self, pointer: str) -> dict:
        if pointer not in self._names:
            key = self._definition_key(pointer)
            if key in self._by_definition:  # another function's alias for the same type
                self._names[pointer] = self._by_definition[key]
            else:
                base = name = _identifier(pointer)
                n = 2
                while name in self._taken:
                    name, n = f"{base}_{n}", n + 1
                self._taken.add(name)
                self._names[pointer] = self._by_definition[key] = name
                self._pending.append(pointer)
        return {"type": self._names[pointer]}

    def _definition_key(self, pointer: str) -> tuple:
        """What the alias stands for: the definition and every one it refers to, transitively."""
        seen: dict[str, str] = {}
        todo = [pointer]
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            node = _lookup(self._root, current, "#" + current)
            seen[current] = json.dumps(node, sort_keys=True)
            todo.extend(_local_pointer(ref) for ref in _refs_in(node))
        return (pointer, tuple(sorted(seen.items())))

    def declarations(self) -> str:
        out = ""
        while self._pending:
            pointer = self._pending.pop(0)
            target = resolve_refs(self._root, on_cycle=self._reference, start=pointer,
                                  as_reference=self._recursive)
            out += _alias_declaration(self._names[pointer], target)
        return out


def _refs_in(node: Any) -> Iterable[str]:
    if isinstance(node, list):
        for value in node:
            yield from _refs_in(value)
    elif isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        else:
            for value in node.values():
                yield from _refs_in(value)


def _identifier(pointer: str) -> str:
    last = pointer.rstrip("/").rsplit("/", 1)[-1] if pointer.strip("/") else "Root"
    name = re.sub(r"\W", "_", last)
    return name if name and not name[0].isdigit() else f"T_{name}"


def _alias_declaration(name: str, schema: Any) -> str:
    head = ""
    if isinstance(schema, Mapping) and "description" in schema:
        head = f"// {schema['description']}\n".replace("\n", " ").rstrip() + "\n"
    if isinstance(schema, Mapping) and param_type(schema) == "object":
        lines = param_lines(schema.get("properties") or {}, schema.get("required") or [], 0)
        return head + f"type {name} = {{\n" + "\n".join(lines) + "\n};\n\n"
    if isinstance(schema, Mapping) and param_type(schema) == "array":
        return head + f"type {name} = {array_ts(None, schema, 0).strip()};\n\n"
    ptype = param_type(schema) if isinstance(schema, Mapping) else "any"
    return head + f"type {name} = {ptype};\n\n"


def resolve_refs(
    schema: Mapping[str, Any],
    on_cycle: Optional[Callable[[str], Any]] = None,
    start: Optional[str] = None,
    as_reference: frozenset = frozenset(),
) -> dict:
    """Inline every local `$ref` (JSON pointers relative to `schema`, jsonref's semantics: the
    whole object is replaced, sibling keys are dropped). Returns a copy.

    A `$ref` back into a definition that is being inlined (a recursive type) becomes
    `on_cycle(pointer)`; by default `{}`, JSON Schema's "any value" (the recursion unrolled
    once). `start`: resolve the node at that pointer instead of the root, as if entered by a
    `$ref` to it. `as_reference`: pointers whose every `$ref` goes to `on_cycle`, not only the
    cyclic ones. A broken reference raises PromptError (HTTP 400).
    """
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"Tool parameters are not JSON: {exc}", "tools") from None
    if start is None and '"$ref"' not in text:
        return json.loads(text)  # nothing to inline; a JSON round trip copies fastest
    root = json.loads(text)
    cycle = on_cycle if on_cycle is not None else (lambda pointer: {})

    def walk(node: Any, stack: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [walk(v, stack) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str):
            return enter(ref, stack)
        return {k: walk(v, stack) for k, v in node.items()}

    def enter(ref: str, stack: tuple[str, ...]) -> Any:
        pointer = _local_pointer(ref)
        if pointer in stack or pointer in as_reference:
            return cycle(pointer)
        if len(stack) > 64:
            raise PromptError("Invalid JSON Schema reference in tool parameters: $refs nested too deeply", "tools")
        return walk(_lookup(root, pointer, ref), stack + (pointer,))

    if start is not None:  # the start node itself is expanded, whatever `as_reference` says
        return walk(_lookup(root, start, "#" + start), (start,))
    return walk(root, ())


def _local_pointer(ref: str) -> str:
    if not ref.startswith("#"):
        raise PromptError(
            f"Invalid JSON Schema reference in tool parameters: only local references (\"#/...\") "
            f"are supported, got {ref!r}", "tools")
    return "/" + ref[1:].lstrip("/") if ref[1:] else ""


def _lookup(root: Any, pointer: str, ref: str) -> Any:
    node = root
    for raw in pointer.split("/")[1:] if pointer else []:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise PromptError(
                f"Invalid JSON Schema reference in tool parameters: unresolvable JSON pointer: {ref!r}", "tools")
    return node


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
