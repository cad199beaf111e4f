"""The same constraint as an xgrammar structural tag: the fast back end (vLLM's structured outputs).

The compiled `Grammar` (`constraint.py`) is a small graph of regions: text up to one of its
markers, a choice of recipient, one function's arguments. This module walks that very graph,
so the two back ends cannot disagree about a format, and turns it into one expression over
xgrammar's structural-tag formats (``const_string``, ``any_text`` without the markers,
``json_schema``, ``sequence``, ``or``, ``optional``, ``star``) by state elimination: the
loop of parallel calls becomes a ``star``.

`structural_tag(spec)` returns the JSON that vLLM takes as
``StructuredOutputsParams(structural_tag=json.dumps(...))``; it is cached by the spec's digest
(and vLLM's xgrammar compiler caches the compiled grammar by that string). Building it needs
neither xgrammar nor vLLM; when xgrammar is installed, a tool schema it cannot compile is
replaced by "any JSON object" with a warning, as the lm-format-enforcer back end does.
"""
from __future__ import annotations

import itertools
import json
import logging
import re
from collections import OrderedDict
from typing import Any, Mapping, Optional, Union

from .cache import LRUCache
from .constraint import Grammar, compile_constraint
from .errors import GrammarError
from .json_args import ANY_OBJECT, MAX_CONSECUTIVE_WHITESPACE, NO_PARAMETERS, ArgsState
from .markers import Marker
from .spec import ConstraintSpec, parse_spec
from .states import DONE, NameState, TextState

logger = logging.getLogger(__name__)

_SCHEMA_KEYS = ("type", "anyOf", "oneOf", "allOf", "enum", "const", "properties", "items", "additionalProperties",
                "$ref")

# -- expressions: hashable tuples, simplified as they are built -----------------------------------
Expr = tuple
EPS: Expr = ("seq", ())


def _const(text: str) -> Expr:
    return ("const", text) if text else EPS


def _seq(*items: Optional[Expr]) -> Expr:
    out: list = []
    for item in items:
        if item is None or item == EPS:
            continue
        if item[0] == "seq":
            out.extend(item[1])
        elif item[0] == "const" and out and out[-1][0] == "const":
            out[-1] = ("const", out[-1][1] + item[1])
        else:
            out.append(item)
    return out[0] if len(out) == 1 else ("seq", tuple(out))


def _alt(*items: Optional[Expr]) -> Optional[Expr]:
    out: list = []
    for item in items:
        if item is None:
            continue
        for x in item[1] if item[0] == "or" else (item,):
            if x not in out:
                out.append(x)
    if not out:
        return None
    if len(out) > 1:
        out = _factor(_factor(out, 0), -1)
    return out[0] if len(out) == 1 else ("or", tuple(out))


def _parts(e: Expr) -> list:
    return list(e[1]) if e[0] == "seq" else [e]


def _factor(items: list, end: int) -> list:
    """Alternatives that begin (end=0) or end (end=-1) alike share that part: ``a b | a c`` is
    ``a (b | c)``. Keeps each schema and text region once where the paths meet."""
    groups: "OrderedDict[Any, list]" = OrderedDict()
    for item in items:
        parts = _parts(item)
        groups.setdefault(parts[end] if parts else None, []).append(parts)
    out = []
    for key, members in groups.items():
        if key is None or len(members) == 1:
            out.extend(_seq(*p) for p in members)
        elif end == 0:
            out.append(_seq(key, _alt(*(_seq(*p[1:]) for p in members))))
        else:
            out.append(_seq(_alt(*(_seq(*p[:-1]) for p in members)), key))
    return out


def _star(item: Optional[Expr]) -> Expr:
    if item is None or item == EPS:
        return EPS
    return ("star", item)


def _marker(m: Marker) -> Expr:
    """A marker, with its optional spaces (v2's decoder shows one after some special tokens)."""
    parts: list = []
    last = 0
    for pos in sorted(m.opt):
        parts += [_const(m.text[last:pos]), _alt(EPS, _const(" "))]
        last = pos
    parts.append(_const(m.text[last:]))
    return _seq(*parts)


def _spellings(markers) -> tuple[str, ...]:
    """Every way each marker can be written (with and without each optional space)."""
    out: dict[str, None] = {}
    for m in markers:
        cuts = sorted(m.opt)
        for spaces in itertools.product((False, True), repeat=len(cuts)):
            text, last = "", 0
            for pos, space in zip(cuts, spaces):
                text += m.text[last:pos] + (" " if space else "")
                last = pos
            out[text + m.text[last:]] = None
    return tuple(out)


# -- the graph of the compiled grammar --------------------------------------------------------------
_END = "end"


def _node(state: Any) -> Any:
    if state is DONE:
        return _END
    if isinstance(state, TextState):
        if state.partial or state.ws:
            raise GrammarError(f"cannot start a structural tag inside a marker ({state!r})")
        return state.ctx
    if isinstance(state, NameState):
        if state.partial != state.ctx.mset.start():
            raise GrammarError(f"cannot start a structural tag inside a name ({state!r})")
        return (state.ctx, state.lead)
    if isinstance(state, ArgsState):
        return state.ctx
    raise GrammarError(f"unknown grammar state {state!r}")


def _edges(grammar: Grammar, state: Any) -> list[tuple[Expr, Any]]:
    """(expression, next state) for each way out of `state`'s region; DONE is the end."""
    if isinstance(state, TextState):
        ctx = state.ctx
        markers = ctx.mset.markers
        body = ("text", _spellings(markers)) if ctx.free else _whitespace(ctx.ws_limit)
        out = [(_seq(body, _marker(m)), t(m.ends_with_drop)) for m, t in zip(markers, ctx.targets) if t is not None]
        if ctx.end_ok:
            out.append((body, DONE))
        return out
    if isinstance(state, NameState):
        ctx = state.ctx
        space = _alt(EPS, _const(" "))
        out = []
        for m, t in zip(ctx.mset.markers, ctx.targets):
            nxt = t(m.ends_with_drop)
            # xgrammar's JSON has no leading whitespace: the decoder's space goes here (v2).
            tail = space if m.ends_with_drop and isinstance(nxt, ArgsState) else EPS
            out.append((_seq(space if state.lead else EPS, _marker(m), tail), nxt))
        return out
    if isinstance(state, ArgsState):
        ctx = state.ctx
        # No marker exclusion inside the arguments: xgrammar would drop length bounds for it,
        # and compiling it costs ~0.1 s per tool. Markers in string values are harmless: under
        # grammar sampling the parser reads the arguments as one JSON object
        # (`StreamParser(json_arguments=True)`), and the server sends no textual stop strings.
        return [(_arguments(grammar.functions.get(ctx.name), grammar.syntax.json_separators), ctx.after(False))]
    return []


# A number's digit runs: an int64 has 19 digits, a float64 17 significant ones; small models
# otherwise write digits until max_tokens. Only xgrammar's number rules are cut: a string's
# `pattern` keeps what it says.
MAX_DIGITS = 19
_UNBOUNDED_DIGITS = re.compile(r"^((?:basic_integer|basic_number_2) ::= .*)\[0-9\]\*", re.M)
_FRACTION_DIGITS = re.compile(r"\bbasic_number_digits\{1, -1\}")
_RANGED_DIGITS = re.compile(r"^(\w+ ::= \(\(\[1-9\]\) \| \(\[1-9\] \w+)\{1, -1\}\)\)$", re.M)
# xgrammar 0.2.8 writes a string with a length bound as `[^"\\\r\n]`, which admits raw control
# characters (a tab), invalid in JSON; its other strings exclude them.
_LOOSE_STRING_CHAR = '[^\\"\\\\\\r\\n]'
_STRING_CHAR = '[^\\"\\\\\\0-\\x1f]'


def json_grammar(schema: Mapping[str, Any], separators: Optional[tuple[str, str]] = None) -> str:
    """xgrammar EBNF for one function's arguments: `schema` written with `separators` and no
    other whitespace (as `json.dumps(..., separators=separators)` writes it), or with any
    whitespace (runs of at most `MAX_CONSECUTIVE_WHITESPACE`) where `separators` is None; every
    unbounded run of a number's digits cut at `MAX_DIGITS`."""
    import xgrammar

    text = json.dumps(schema, ensure_ascii=False)
    if separators is None:
        ebnf = str(xgrammar.Grammar.from_json_schema(text, max_whitespace_cnt=MAX_CONSECUTIVE_WHITESPACE))
    else:
        ebnf = str(xgrammar.Grammar.from_json_schema(text, any_whitespace=False, separators=tuple(separators)))
    ebnf = _UNBOUNDED_DIGITS.sub(rf"\1[0-9]{{0,{MAX_DIGITS - 1}}}", ebnf)
    ebnf = _FRACTION_DIGITS.sub(f"basic_number_digits{{1, {MAX_DIGITS}}}", ebnf)
    ebnf = _RANGED_DIGITS.sub(rf"\1{{1, {MAX_DIGITS - 1}}}))", ebnf)
    return ebnf.replace(_LOOSE_STRING_CHAR, _STRING_CHAR)


def _arguments(parameters: Optional[Mapping[str, Any]], separators: Optional[tuple[str, str]]) -> Expr:
    """The arguments' expression: xgrammar's own grammar for the schema, or, without xgrammar
    (building a tag needs none; vLLM has it), the schema itself with bounded whitespace. A
    schema xgrammar cannot compile becomes "any JSON object", with a warning, as the
    lm-format-enforcer back end does."""
    schema = _schema(parameters)
    try:
        import xgrammar  # noqa: F401
    except ImportError:
        return ("json", json.dumps(schema, ensure_ascii=False))
    try:
        return ("grammar", json_grammar(schema, separators))
    except Exception as exc:  # noqa: BLE001 - xgrammar raises several kinds
        logger.warning("xgrammar cannot compile a tool schema (%s); any JSON object allowed", exc)
        return ("grammar", json_grammar(ANY_OBJECT, separators))


def _whitespace(limit: int) -> Expr:
    return ("ws", limit) if limit > 0 else EPS


def _schema(parameters: Optional[Mapping[str, Any]]) -> dict:
    if parameters is None:
        return dict(NO_PARAMETERS)
    schema = _declare_required(parameters)
    if not any(k in schema for k in _SCHEMA_KEYS):
        schema["type"] = "object"
    return schema


_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA = ("items", "additionalProperties", "not", "if", "then", "else", "contains")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def _declare_required(schema: Any) -> Any:
    """`schema` with each `required` key that only `additionalProperties` allows declared as a
    property: xgrammar writes declared keys only and would drop that requirement (the
    lm-format-enforcer back end does the same, `json_args._normalize`)."""
    if not isinstance(schema, Mapping):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_declare_required(s) for s in out[key]]
    for key in _SUBSCHEMA:
        if key in out:
            out[key] = _declare_required(out[key])
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), Mapping):
            out[key] = {k: _declare_required(v) for k, v in out[key].items()}
    required, extra = out.get("required"), out.get("additionalProperties", True)
    if isinstance(required, list) and extra is not False and isinstance(out.get("properties", {}), Mapping):
        props = dict(out.get("properties", {}))
        for k in required:
            if isinstance(k, str) and k not in props:
                props[k] = extra if isinstance(extra, Mapping) else {}
        if props:
            out["properties"] = props
    return out


def _expression(grammar: Grammar) -> Expr:
    """The whole continuation after the generation prefix, as one expression."""
    start = _node(grammar.initial_state)
    edges: dict[tuple[Any, Any], Expr] = {}
    order: list[Any] = []
    todo = [grammar.initial_state]
    seen = {start}
    while todo:
        state = todo.pop()
        src = _node(state)
        order.append(src)
        for expr, nxt in _edges(grammar, state):
            dst = _node(nxt)
            edges[(src, dst)] = _alt(edges.get((src, dst)), expr)
            if dst not in seen and dst != _END:
                seen.add(dst)
                todo.append(nxt)

    begin = object()
    edges[(begin, start)] = EPS
    remaining = list(order)
    while remaining:
        # Eliminate the node with the fewest paths through it: expressions stay small.
        def cost(q: Any) -> int:
            ins = sum(1 for (p, d) in edges if d == q and p != q)
            outs = sum(1 for (s, r) in edges if s == q and r != q)
            return ins * outs

        q = min(remaining, key=cost)
        remaining.remove(q)
        loop = _star(edges.pop((q, q), None))
        ins = [(p, e) for (p, d), e in edges.items() if d == q]
        outs = [(r, e) for (s, r), e in edges.items() if s == q]
        for key in [k for k in edges if q in k]:
            del edges[key]
        for p, a in ins:
            for r, b in outs:
                edges[(p, r)] = _alt(edges.get((p, r)), _seq(a, loop, b))
    expr = edges.get((begin, _END))
    if expr is None:
        raise GrammarError(f"the constraint {grammar!r} admits no output")
    return expr


# -- xgrammar's JSON ----------------------------------------------------------------------------------


def _emit(e: Expr) -> dict:
    kind = e[0]
    if kind == "const":
        return {"type": "const_string", "value": e[1]}
    if kind == "text":
        return {"type": "any_text", "excludes": list(e[1])}
    if kind == "ws":
        return {"type": "regex", "pattern": f"[ \\t\\n\\r]{{0,{e[1]}}}"}
    if kind == "grammar":
        return {"type": "grammar", "grammar": e[1]}
    if kind == "json":
        return {"type": "json_schema", "json_schema": json.loads(e[1]), "max_whitespace_cnt": MAX_CONSECUTIVE_WHITESPACE}
    if kind == "seq":
        if not e[1]:
            return {"type": "const_string", "value": ""}
        return {"type": "sequence", "elements": [_emit(x) for x in e[1]]}
    if kind == "or":
        if EPS in e[1]:
            return {"type": "optional", "content": _emit(_alt(*(x for x in e[1] if x != EPS)))}
        return {"type": "or", "elements": [_emit(x) for x in e[1]]}
    if kind == "star":
        return {"type": "star", "content": _emit(e[1])}
    raise AssertionError(kind)


# spec digest -> (the tag, its JSON text)
_CACHE: "LRUCache[tuple[dict, str]]" = LRUCache(256)


def _compiled(spec: Union[ConstraintSpec, Mapping[str, Any]]) -> tuple[dict, str]:
    spec = parse_spec(spec)

    def build() -> tuple[dict, str]:
        tag = {"type": "structural_tag", "format": _emit(_expression(compile_constraint(spec)))}
        return tag, json.dumps(tag, ensure_ascii=False)

    return _CACHE.get(spec.digest, build)


def structural_tag(spec: Union[ConstraintSpec, Mapping[str, Any]]) -> dict:
    """The xgrammar structural tag (``{"type": "structural_tag", "format": ...}``) that admits
    exactly the outputs the constraint `spec` admits after its generation prefix. Cached by the
    spec's digest; do not mutate the result. Raises `GrammarError` for an invalid spec."""
    return _compiled(spec)[0]


def structural_tag_json(spec: Union[ConstraintSpec, Mapping[str, Any]]) -> str:
    """`structural_tag` as the string vLLM's `StructuredOutputsParams(structural_tag=...)` takes."""
    return _compiled(spec)[1]
