"""The xgrammar back end: the constraint as a structural tag, checked with xgrammar's own matcher.

The same properties as the logits processor's (`test_grammar_property.py`): random walks that
pick only tokens xgrammar's mask allows, on real tokenizers, for random JSON Schemas, every
format and tool_choice, must parse (with the JSON-aware parser the server uses under grammar
sampling) into calls that name existing functions and carry arguments that validate. Plus
exact accept/reject cases for what the tag admits.
"""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

xgr = pytest.importorskip("xgrammar")

from functionary.grammar import GrammarError, compile_constraint  # noqa: E402
from functionary.grammar.structural_tag import structural_tag, structural_tag_json  # noqa: E402
from functionary.prompt_template.formats import FORMATS  # noqa: E402
from tests.unit.test_grammar_property import (  # noqa: E402
    check_output, marker_pieces, requests, seeded_sweep, tokenizer,
)

VERSIONS = tuple(FORMATS)
_COMPILERS: dict = {}


def compiler(name):
    if name not in _COMPILERS:
        tok = tokenizer(name)[0]
        info = xgr.TokenizerInfo.from_huggingface(tok)
        _COMPILERS[name] = (info, xgr.GrammarCompiler(info))
    return _COMPILERS[name]


def stop_ids(name, version):
    """The engine's stop tokens for a request: EOS plus the format's single-token stops."""
    tok = tokenizer(name)[0]
    ids = {tok.eos_token_id}
    for stop in FORMATS[version].syntax.stop_tokens:
        pieces = tok.encode(stop, add_special_tokens=False)
        if len(pieces) == 1:
            ids.add(pieces[0])
    return sorted(ids)


class Walk:
    """A finished walk: `done` (a stop token ended it), `can_end()` (it may end here)."""

    def __init__(self, matcher, done):
        self.done = done
        self._can_end = done or matcher.is_completed()

    def can_end(self):
        return self._can_end


def matcher_for(name, spec):
    info, comp = compiler(name)
    grammar = comp.compile_structural_tag(structural_tag_json(spec))
    return xgr.GrammarMatcher(grammar, override_stop_tokens=stop_ids(name, spec["version"])), info


def mask_of(matcher, info):
    bitmask = xgr.allocate_token_bitmask(1, info.vocab_size)
    matcher.fill_next_token_bitmask(bitmask)
    bits = np.unpackbits(bitmask[0].numpy().view(np.uint8), bitorder="little")
    return bits[: info.vocab_size].astype(bool)


def xgrammar_walk(name, spec, rng, max_steps):
    """Like `test_grammar_property.random_walk`, with xgrammar's mask: (text, Walk, Grammar)."""
    tok, index, punct, _ = tokenizer(name)
    g = compile_constraint(spec)
    pieces = marker_pieces(name, spec["version"])
    matcher, info = matcher_for(name, spec)
    stops = set(stop_ids(name, spec["version"]))
    s = g.syntax
    markers = [m for m in (s.call_open, s.code_open, *s.stop_tokens) if m]
    n = min(info.vocab_size, index.vocab_size)
    out = bytearray()
    burst: list[int] = []
    for _ in range(max_steps):
        if matcher.is_terminated():
            break
        mask = mask_of(matcher, info)[:n]
        allowed = np.flatnonzero(mask)
        assert len(allowed), out
        if not burst and rng.random() < 0.08:
            burst = tok.encode(rng.choice(markers), add_special_tokens=False)
        if burst and mask[burst[0]]:
            t = burst.pop(0)
        else:
            burst = []
            r = rng.random()
            ends = [e for e in stops if e < n and mask[e]]
            pool = allowed
            if ends and r < 0.05:
                pool = np.array(ends)
            elif r < 0.35:
                pool = np.flatnonzero(mask & pieces[:n])
            elif r < 0.75:
                pool = np.flatnonzero(mask & punct[:n])
            if not len(pool):
                pool = allowed
            t = int(pool[rng.randrange(len(pool))])
        assert matcher.accept_token(t), (t, out)
        if t in stops:
            continue  # the engine returns no text for a stop token
        out += index.token_bytes[t] or index.special_tokens[t].encode()
    return out.decode("utf-8", errors="ignore"), Walk(matcher, matcher.is_terminated()), g


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(spec=requests(), which=st.sampled_from(["format", "default"]), seed=st.integers(0, 2**32 - 1),
       max_steps=st.sampled_from([40, 120, 300]))
def test_random_walks_give_valid_calls(spec, which, seed, max_steps):
    name = spec["version"] if which == "format" else "default"
    text, walk, g = xgrammar_walk(name, spec, random.Random(seed), max_steps)
    check_output(spec, g, text, walk, json_arguments=True)


@pytest.mark.parametrize("which", ["format", "default"])
@pytest.mark.parametrize("version", VERSIONS)
def test_seeded_walks_produce_and_validate_calls(version, which):
    """The walks really produce complete, valid calls in every mode."""
    assert seeded_sweep(xgrammar_walk, version, which, "xgrammar", json_arguments=True) >= 8


# -- exactly what the tag admits (v3.llama3 and v3-llama3.1 on the default tokenizer) ------------

TOOLS = [
    {"type": "function", "function": {"name": "get_w", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "required": ["city"],
        "properties": {"city": {"type": "string", "maxLength": 6},
                       "unit": {"type": "string", "enum": ["北京", "Zürich"]},
                       "legs": {"type": "array", "items": {"type": "object", "required": ["to"],
                                                           "properties": {"to": {"type": "integer"}}}}}}}},
]
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def accepts(spec, text):
    """Whether `text` is a whole output the tag admits (then end-of-sequence may follow)."""
    matcher, _ = matcher_for("default", spec)
    return matcher.accept_string(text) and matcher.is_completed()


CASES = [
    # version, tool_choice, parallel, output, accepted
    ("v3.llama3", "auto", True, "all\nHello there", True),
    ("v3.llama3", "auto", True, "all\nHi<|eot_id|>", True),
    ("v3.llama3", "auto", True, 'get_weather\n{"city": "Paris", "unit": "北京"}', True),
    ("v3.llama3", "auto", True, 'get_w\n{}>>>get_weather\n{"city": "a>>>b"}<|eot_id|>', True),
    ("v3.llama3", "auto", True, 'get_weather\n{"city": "Paris", "legs": [{"to": 1}, {"to": 2}]}', True),
    ("v3.llama3", "auto", True, 'get_weathe\n{"city": "x"}', False),  # no such function
    ("v3.llama3", "auto", True, 'get_weather\n{"unit": "Zürich"}', False),  # city is required
    ("v3.llama3", "auto", True, 'get_weather\n{"city": "Toulouse"}', False),  # maxLength 6
    ("v3.llama3", "auto", True, 'get_weather\n{"city": "x", "unit": "Bern"}', False),  # not in the enum
    ("v3.llama3", "auto", True, 'get_weather\n{"city": "x", "legs": [{"to": "1"}]}', False),
    ("v3.llama3", "auto", True, 'get_weather\n{"city": "x", "extra": 1}', False),
    ("v3.llama3", "auto", True, "all\nHi<|eot_id|>more", False),  # nothing after the end
    ("v3.llama3", "auto", False, 'get_w\n{}>>>get_w\n{}', False),  # one call only
    ("v3.llama3", "required", True, "all\nHello", False),
    ("v3.llama3", "required", True, 'get_w\n{}>>>all\nDone.', True),  # text after a call
    ("v3.llama3", "none", True, "Just text, no recipient: the prompt opened the text", True),
    ("v3.llama3", "none", True, "Text >>>get_w\n{}", False),
    ("v3.llama3", NAMED, True, '{"city": "Rome"}', True),  # the prompt already named it
    ("v3.llama3", NAMED, True, '{"city": "Rome"}>>>get_w\n{}', False),
    ("v3-llama3.1", "auto", True, 'Let me check. <function=get_weather>{"city": "Oslo"}</function>', True),
    ("v3-llama3.1", "auto", True, '<function=get_w>{}</function> and <function=get_w>{}</function>done', True),
    ("v3-llama3.1", "auto", True, '<function=nope>{}</function>', False),
    ("v3-llama3.1", "auto", True, '<|python_tag|>print(1)', False),  # no code interpreter
    ("v3-llama3.1", "required", True, 'get_weather>{"city": "Oslo"}</function>', True),  # prompt ends "<function="
    ("v3-llama3.1", "required", True, 'get_weather>{"city": "Oslo"}', False),  # the call must close
]


@pytest.mark.parametrize("version,choice,parallel,text,accepted", CASES)
def test_what_the_tag_admits(version, choice, parallel, text, accepted):
    spec = {"version": version, "tools": TOOLS, "tool_choice": choice, "parallel_tool_calls": parallel}
    assert accepts(spec, text) is accepted


def test_code_interpreter_and_text_recipients():
    spec = {"version": "v3.llama3", "tools": [*TOOLS, {"type": "code_interpreter"}], "tool_choice": "auto"}
    assert accepts(spec, "python\nprint('>' * 2)>>>all\nDone")
    spec31 = {**spec, "version": "v3-llama3.1"}
    assert accepts(spec31, "<|python_tag|>print(1)")


def test_v2_allows_the_decoders_space_after_special_tokens():
    spec = {"version": "v2", "tools": TOOLS, "tool_choice": "auto"}
    assert accepts(spec, 'get_w\n<|content|> {}\n<|from|> assistant\n<|recipient|> all\n<|content|> Done<|stop|>')


def test_the_tag_is_cached_and_plain_json():
    spec = {"version": "v3.llama3", "tools": TOOLS, "tool_choice": "auto"}
    assert structural_tag(spec) is structural_tag(dict(spec))
    assert json.loads(structural_tag_json(spec)) == structural_tag(spec)


def test_a_schema_xgrammar_cannot_compile_becomes_any_object(caplog):
    bad = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string", "pattern": "\\p{L}+"}}}}}]
    spec = {"version": "v3.llama3", "tools": bad, "tool_choice": "required"}
    assert accepts(spec, 'f\n{"anything": [1, 2]}')
    assert "any JSON object allowed" in caplog.text


def test_impossible_constraints_are_refused():
    with pytest.raises(GrammarError):
        structural_tag({"version": "v3.llama3", "tools": [], "tool_choice": "required"})
