"""Property: whatever a model samples under the grammar parses into valid calls.

Random walks pick only tokens the mask allows (biased toward markers and JSON punctuation, so
that calls actually happen), on real tokenizers, for random JSON Schemas, every format and
every tool_choice. The output goes through the server's `StreamParser`; every call must name an
existing function and carry arguments that validate with `jsonschema`, unless the walk's length
cut the last one.
"""
from __future__ import annotations

import copy
import json
import random

import jsonschema
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from functionary.grammar import TokenizerIndex, compile_constraint
from functionary.parsing import MessageBuilder, StreamParser
from functionary.prompt_template.formats import FORMATS
from tests.support.tokenizers import build_format_tokenizer

VERSIONS = tuple(FORMATS)
NAMES = ("get_w", "get_weather", "get_weather_v2", "search", "ping_1")
PUNCT = b'{}[]":,<>|\n=/'

# -- schemas (the subset lm-format-enforcer enforces; see functionary/grammar/json_args.py) ----

ENUMS = st.lists(st.sampled_from(["x", "北京", "Zürich", "a b", "é", "日本語", "yes", "y"]), min_size=1, max_size=4,
                 unique=True)
PRIMITIVES = st.one_of(
    st.just({"type": "string"}),
    st.just({"type": "integer"}),
    st.just({"type": "number"}),
    st.just({"type": "boolean"}),
    st.just({"type": "null"}),
    st.just({"type": ["string", "null"]}),
    st.just({"type": ["integer", "boolean"]}),
    ENUMS.map(lambda e: {"type": "string", "enum": e}),
    st.integers(0, 6).map(lambda n: {"type": "string", "maxLength": n}),
    st.integers(1, 4).map(lambda n: {"type": "string", "minLength": n}),
    st.just({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
    st.just({"type": "string", "const": "fixed"}),
    # Rewritten before lm-format-enforcer sees them (functionary/grammar/json_args.py::_normalize):
    st.just({}),
    st.just({"description": "no type: any value"}),
    st.just({"enum": ["x", 1, None, 2.5]}),
    st.just({"const": 3}),
    st.just({"type": ["object", "null"], "properties": {"k": {"type": "integer"}}, "required": ["k", "missing"]}),
)
KEYS = st.sampled_from(["a", "b", "city", "n", "items", "深", "long_key_name"])


def objects(values):
    def build(props):
        return st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda required: {"type": "object", "properties": props, **({"required": required} if required else {})}
        ) if props else st.just({"type": "object", "properties": {}})

    return st.dictionaries(KEYS, values, max_size=3).flatmap(build)


def arrays(values):
    return st.tuples(values, st.sampled_from([None, 1, 3])).map(
        lambda t: {"type": "array", "items": t[0], **({"maxItems": t[1]} if t[1] else {})}
    )


SCHEMAS = st.recursive(PRIMITIVES, lambda children: st.one_of(objects(children), arrays(children)), max_leaves=6)


@st.composite
def parameters(draw):
    schema = draw(objects(SCHEMAS))
    if schema["properties"] and draw(st.booleans()):  # move one property behind a $ref
        key = sorted(schema["properties"])[0]
        schema = copy.deepcopy(schema)
        schema["$defs"] = {"Moved": schema["properties"][key]}
        schema["properties"][key] = {"$ref": "#/$defs/Moved"}
    return draw(st.sampled_from([schema, schema, schema, None, {"type": "object"}]))


@st.composite
def requests(draw):
    version = draw(st.sampled_from(VERSIONS))
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    tools = [{"type": "function", "function": {"name": n, "parameters": draw(parameters())}} for n in names]
    code = draw(st.booleans())
    if code:
        tools.append({"type": "code_interpreter"})
    choice = draw(st.sampled_from(["auto", "none", "required", "named"]))
    if choice == "named":
        choice = {"type": "function", "function": {"name": draw(st.sampled_from(names))}}
    spec = {"version": version, "tools": tools, "tool_choice": choice,
            "parallel_tool_calls": draw(st.sampled_from([True, True, False]))}
    return spec


# -- walking ------------------------------------------------------------------------------------

_INDEXES: dict = {}


def tokenizer(name):
    if name not in _INDEXES:
        tok = build_format_tokenizer(name)
        index = TokenizerIndex.from_tokenizer(tok)
        punct = np.array([bool(b) and any(c in b for c in PUNCT) for b in index.token_bytes])
        punct[list(index.special_tokens)] = True
        _INDEXES[name] = (tok, index, punct, {})
    return _INDEXES[name]


def marker_pieces(name, version):
    tok, index, _, cache = tokenizer(name)
    if version not in cache:
        g = compile_constraint({"version": version, "tools": [], "tool_choice": "none"})
        texts = [t for t in g.marker_texts() if t] + ["all", "python"]
        pieces = np.zeros(index.vocab_size, dtype=bool)
        for tid, data in enumerate(index.token_bytes):
            piece = data or (index.special_tokens.get(tid) or "").encode()
            if piece and any(piece.decode("utf-8", "ignore") in t for t in texts if piece.decode("utf-8", "ignore")):
                pieces[tid] = True
        cache[version] = pieces
    return cache[version]


def random_walk(name, spec, rng, max_steps):
    """(output text as the engine returns it, cursor)."""
    tok, index, punct, _ = tokenizer(name)
    g = compile_constraint(spec)
    pieces = marker_pieces(name, spec["version"])
    s = g.syntax
    markers = [m for m in (s.call_open, s.code_open, *s.stop_tokens) if m]
    cur = index.cursor(g)
    out = bytearray()
    burst: list[int] = []  # a marker being written, token by token
    for _ in range(max_steps):
        if cur.done:
            break
        mask = cur.mask()
        allowed = np.flatnonzero(mask)
        assert len(allowed), cur.state
        if not burst and rng.random() < 0.08:
            burst = tok.encode(rng.choice(markers), add_special_tokens=False)
        if burst and mask[burst[0]]:
            t = burst.pop(0)
            cur.advance(t)
            out += index.token_bytes[t] or index.special_tokens[t].encode()
            continue
        burst = []
        r = rng.random()
        eos = [e for e in index.eos_token_ids if mask[e]]
        pool = allowed
        if eos and r < 0.05:
            pool = np.array(eos)
        elif r < 0.35:
            pool = np.flatnonzero(mask & pieces)
        elif r < 0.75:
            pool = np.flatnonzero(mask & punct)
        if not len(pool):
            pool = allowed
        t = int(pool[rng.randrange(len(pool))])
        cur.advance(t)
        if t in index.eos_token_ids:
            continue  # the engine does not return an end token's text
        out += index.token_bytes[t] or index.special_tokens[t].encode()
    return out.decode("utf-8", errors="ignore"), cur, g


def check_output(spec, g, text, cur, json_arguments=False):
    """Checks what a user would: names, schema-valid arguments, tool_choice; `cur` says whether
    the output is complete (`done`, `can_end()`). Returns the number of calls validated."""
    parser = StreamParser(g.syntax, prefix=g.prefix, json_arguments=json_arguments)
    builder = MessageBuilder()
    builder.add(parser.feed(text))
    builder.add(parser.finish())
    message = builder.message()
    calls = message["tool_calls"] or []
    schemas = {t["function"]["name"]: t["function"].get("parameters") for t in spec["tools"] if "function" in t}
    code = any(t.get("type") == "code_interpreter" for t in spec["tools"])
    complete = cur.done or cur.can_end()
    checked = 0
    for i, call in enumerate(calls):
        name, args = call["function"]["name"], call["function"]["arguments"]
        if not complete and i == len(calls) - 1:
            break  # cut by the walk's length, maybe inside the name
        assert name in schemas or (code and name == "python"), (name, text)
        if name == "python" and name not in schemas:
            continue
        value = json.loads(args)
        assert isinstance(value, dict), (args, text)
        jsonschema.validate(value, schemas[name] if schemas[name] is not None else {"type": "object", "maxProperties": 0})
        checked += 1
    choice = spec["tool_choice"]
    if choice == "none":
        assert not calls, text
    if cur.done:
        if choice == "required" or isinstance(choice, dict):
            assert calls, text
        if isinstance(choice, dict):
            assert message["content"] is None, text
            assert [c["function"]["name"] for c in calls] == [choice["function"]["name"]], text  # one call
        if not spec.get("parallel_tool_calls", True):
            assert len(calls) <= 1, text
    return checked


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=requests(), which=st.sampled_from(["format", "default"]), seed=st.integers(0, 2**32 - 1),
       max_steps=st.sampled_from([40, 120, 300]))
def test_random_walks_give_valid_calls(spec, which, seed, max_steps):
    name = spec["version"] if which == "format" else "default"
    text, cur, g = random_walk(name, spec, random.Random(seed), max_steps)
    check_output(spec, g, text, cur)


FIXED_TOOLS = [
    {"type": "function", "function": {"name": "get_w", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city", "unit"],
        "properties": {
            "city": {"type": "string", "maxLength": 12},
            "unit": {"type": "string", "enum": ["北京", "Zürich", "c"]},
            "legs": {"type": "array", "maxItems": 3, "items": {
                "type": "object", "required": ["to"],
                "properties": {"to": {"type": "string"}, "km": {"type": "number"}, "stop": {"type": "boolean"}}}},
            "meta": {"type": "object", "properties": {"id": {"type": "integer"}, "tag": {"type": ["string", "null"]}}},
        }}}},
    {"type": "function", "function": {"name": "ping_1"}},
    {"type": "code_interpreter"},
]


def seeded_sweep(walk, version, which, seed, json_arguments=False):
    """Deterministic sweep over every tool_choice with `FIXED_TOOLS`: `walk(name, spec, rng,
    max_steps)` -> (text, cursor, grammar). Returns the number of complete calls validated."""
    name = version if which == "format" else "default"
    rng = random.Random(f"{seed}-{version}-{which}")
    checked = 0
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}, "none"):
        for _ in range(8):
            spec = {"version": version, "tools": FIXED_TOOLS, "tool_choice": choice}
            text, cur, g = walk(name, spec, rng, 250)
            checked += check_output(spec, g, text, cur, json_arguments=json_arguments)
    return checked


@pytest.mark.parametrize("which", ["format", "default"])
@pytest.mark.parametrize("version", VERSIONS)
def test_seeded_walks_produce_and_validate_calls(version, which):
    """The walks really produce complete, valid calls in every mode."""
    assert seeded_sweep(random_walk, version, which, "lm-format-enforcer") >= 8
