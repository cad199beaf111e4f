"""Grammar sampling: the character-level constraint and the token-level masks.

Token-level tests run on real tokenizers built from the default model's tokenizer
(`tests.support.tokenizers`): per format, with the format's markers as special tokens (as in
the real Functionary models), and the plain default tokenizer, where every marker is spelled
with several ordinary tokens (as when the default model is served in a Functionary format).
"""
from __future__ import annotations

import json
import random

import jsonschema
import numpy as np
import pytest

from functionary.grammar import (
    CONSTRAINT_KEY,
    GrammarError,
    GrammarViolation,
    TokenizerIndex,
    compile_constraint,
    constraint_for_prompt,
    parse_spec,
)
from functionary.parsing import MessageBuilder, StreamParser
from functionary.prompt_template import build_inference_prompt, get_prompt_template_by_version
from functionary.prompt_template.formats import FORMATS
from tests.support.tokenizers import build_format_tokenizer

VERSIONS = tuple(FORMATS)
NAMED = {"type": "function", "function": {"name": "get_weather"}}
CHOICES = ("auto", "none", "required", "named")

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit", "北京", "Zürich"]},
        "days": {"type": "integer"},
        "where": {"$ref": "#/$defs/place"},
        "stops": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}, "km": {"type": "number"}},
                      "required": ["name"]},
        },
    },
    "required": ["city"],
    "$defs": {"place": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                        "required": ["lat", "lon"]}},
}
TOOLS = [
    {"type": "function", "function": {"name": "get_w", "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_weather_v2", "parameters": {"type": "object", "properties": {}}}},
    {"type": "function", "function": {"name": "ping"}},
]
CODE = [{"type": "code_interpreter"}]


def choice_value(choice):
    return NAMED if choice == "named" else choice  # or a tool_choice object as it is


def grammar(version, choice="auto", tools=TOOLS, **extra):
    return compile_constraint({"version": version, "tools": tools, "tool_choice": choice_value(choice), **extra})


def cursor(version, choice="auto", tools=TOOLS, **extra):
    return grammar(version, choice, tools, **extra).cursor()


def render_output(version, content, calls):
    """What the model writes after the generation prompt for an assistant turn."""
    fmt = FORMATS[version]
    message = {"role": "assistant", "content": content}
    if calls:
        if version == "v1":
            message["function_call"] = {"name": calls[0][0], "arguments": calls[0][1]}
        else:
            message["tool_calls"] = [{"function": {"name": n, "arguments": a}} for n, a in calls]
    if fmt.render_conversation is not None:  # formats rendered in context: cut the turn out
        rendered = fmt.render_conversation([message], [], False)
        return rendered[rendered.rindex(fmt.generation_prompt) + len(fmt.generation_prompt):]
    rendered = fmt.render_message(message)
    assert rendered.startswith(fmt.generation_prompt)
    return rendered[len(fmt.generation_prompt):]


# Pieces of every format's markers, but no whole marker of any (a whole one would end the call).
ARGS = '{"city": "Paris >> </function <|eot_id| <|stop|", "unit": "北京", "where": {"lat": 1.5, "lon": -2}, "stops": [{"name": "x", "km": 3e2}]}'
TURNS = [  # (content, calls)
    (None, [("get_weather", ARGS)]),
    (None, [("get_weather", '{"city": "Oslo"}'), ("get_weather", '{"city": "Rome", "days": 3}')]),
    (None, [("get_w", '{"q": "x"}'), ("get_weather_v2", "{}")]),
    ("Hello there!", []),
    ("Let me check.", [("get_weather", '{"city": "Oslo"}')]),
    (None, [("ping", "{}")]),
]


def turn_is_valid(version, choice, content, calls):
    if version == "v1" and len(calls) > 1:
        return None  # v1 writes one call per turn
    if choice == "none":
        return not calls
    if choice == "auto":
        return True
    if choice == "required":
        return bool(calls) and content is None
    # A named choice: exactly one call of that function.
    return len(calls) == 1 and content is None and calls[0][0] == "get_weather"


def turn_cases():
    for version in VERSIONS:
        for choice in CHOICES:
            for content, calls in TURNS:
                if version == "llama3-json" and calls:
                    content = None  # Meta's template drops the text of a calling turn
                valid = turn_is_valid(version, choice, content, calls)
                if valid is not None:
                    yield pytest.param(version, choice, content, calls, valid,
                                       id=f"{version}-{choice}-{'text' if content else 'notext'}-{len(calls)}calls")


# ---------------------------------------------------------------------------------------------
# Spec


def test_spec_validation_and_digest():
    a = parse_spec({"version": "v3.llama3", "tools": TOOLS, "tool_choice": "auto"})
    b = parse_spec({"version": "v3.llama3", "tools": TOOLS, "tool_choice": None})
    assert a.digest == b.digest and a.function_names == ["get_w", "get_weather", "get_weather_v2", "ping"]
    assert parse_spec({"version": "v3.llama3", "tools": TOOLS, "tool_choice": "required"}).digest != a.digest
    named = parse_spec({"version": "v2", "tools": TOOLS, "tool_choice": NAMED})
    assert named.named and named.function_names == ["get_weather"]
    assert parse_spec({"version": "v2", "tools": TOOLS + CODE, "tool_choice": "none"}).functions == ()
    assert compile_constraint(a) is compile_constraint(a.to_json())  # cached by digest
    for bad in (
        {"version": "v9", "tools": TOOLS},
        {"version": "v2", "tools": TOOLS, "tool_choice": "sometimes"},
        {"version": "v2", "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"version": "v2", "tools": [{"function": {}}]},
        {"version": "v2", "tools": TOOLS + TOOLS},
        "not an object",
    ):
        with pytest.raises(GrammarError):
            parse_spec(bad)
    with pytest.raises(GrammarError):
        compile_constraint({"version": "v2", "tools": [], "tool_choice": "required"})


def test_constraint_for_prompt_matches_the_prompt():
    template = get_prompt_template_by_version("v3.llama3")
    prompt = build_inference_prompt(template, [{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=NAMED)
    spec = constraint_for_prompt("v3.llama3", prompt, parallel_tool_calls=False)
    assert json.loads(json.dumps(spec)) == spec  # JSON only crosses to the engine
    g = compile_constraint(spec)
    assert prompt.prompt.endswith(g.prefix) and g.call_names == ["get_weather"] and not g.spec.parallel
    legacy = build_inference_prompt(
        get_prompt_template_by_version("v1"), [{"role": "user", "content": "hi"}],
        functions=[t["function"] for t in TOOLS],
    )
    assert constraint_for_prompt("v1", legacy)["parallel_tool_calls"] is False
    assert CONSTRAINT_KEY == "functionary_constraint"


# ---------------------------------------------------------------------------------------------
# Character level


@pytest.mark.parametrize("version, choice, content, calls, valid", list(turn_cases()))
def test_rendered_turns_char_by_char(version, choice, content, calls, valid):
    g = grammar(version, choice)
    output = render_output(version, content, calls)
    if not output.startswith(g.prefix):
        assert not valid  # the prompt already chose otherwise
        return
    c = g.cursor()
    body = output[len(g.prefix):]
    if valid:
        c.feed(body)
        assert c.done or c.can_end()
    else:
        with pytest.raises(GrammarViolation):
            c.feed(body)


@pytest.mark.parametrize("version", VERSIONS)
def test_names_that_are_prefixes_of_each_other(version):
    g = grammar(version, "required")
    c = g.cursor()
    if not g.syntax.recipient_first and g.prefix == "":  # v1 opens the call itself
        c.feed("\n" + g.syntax.call_open)
    end = g.syntax.name_end_written[0]
    c.feed("get_w")
    assert end in c.allowed() and "e" in c.allowed() and "x" not in c.allowed()
    assert c.allows("eather" + g.syntax.name_end_written) and c.allows(g.syntax.name_end_written)
    c.feed("eather")
    assert end in c.allowed() and "_" in c.allowed() and "s" not in c.allowed()
    assert c.allows("_v2" + g.syntax.name_end_written)
    assert not c.allows("_v3")
    assert not g.cursor().allows("get_x")
    assert not g.cursor().allows("python")  # no code interpreter


@pytest.mark.parametrize("version", VERSIONS)
def test_tool_choice_at_the_start(version):
    s = FORMATS[version].syntax
    auto, none, required = cursor(version, "auto"), cursor(version, "none"), cursor(version, "required")
    if s.recipient_first:
        assert auto.allows("all") and auto.allows("get_weather") and not auto.allows("xyz")
        assert not required.allows("all") and required.allows("get_w")
        assert none.allows("Just text.") and not none.allows(s.call_open + "get_w")
    else:
        assert auto.allows("Some text" + s.call_open + "get_weather")
        assert none.allows("Some text <function") and not none.allows("text" + s.call_open + "get_w")
        if version == "v1":
            assert not required.allows("Some text") and required.allows("\n" + s.call_open + "get_w")
        else:
            assert required.allows("get_w")  # the prefix opened the call
    named = cursor(version, "named")
    lead = "" if s.json_separators else " "  # compact JSON: the prefix wrote the separator's space
    assert "{" in named.allowed() and named.allows(lead + '{"city": "x"}')
    assert not named.can_end()


def g_opens(version):
    """Whether the `required` generation prefix already opened the call."""
    return grammar(version, "required").prefix.endswith(FORMATS[version].syntax.call_open)


@pytest.mark.parametrize("version", VERSIONS)
def test_stops_only_where_the_turn_may_end(version):
    s = FORMATS[version].syntax
    stop = s.stop_tokens[0]
    c = cursor(version, "named")
    assert not c.allows(stop) and not c.can_end()
    c.feed('{"city": "Pa')
    assert not c.can_end()
    assert not c.allows(stop)  # a stop inside a string is refused ...
    assert not c.allows('"' + stop)  # ... and so is one right after the value
    assert c.allows('ris "}')
    c.feed('ris"}')
    if s.call_close:
        assert not c.can_end() and not c.allows(stop)
        c.feed(s.call_close)
    assert c.can_end() and c.allows(stop)
    assert not c.allows(s.call_open)  # a named choice is one call
    if version != "v1":
        required = cursor(version, "required")
        required.feed(("" if s.recipient_first or g_opens(version) else "\n" + s.call_open) + "get_weather"
                      + s.name_end_written + '{"city": "x"}' + (s.call_close or ""))
        assert required.allows(s.call_open + "get_weather")  # parallel calls
    c2 = cursor(version, "named", parallel_tool_calls=False)
    c2.feed('{"city": "x"}' + (s.call_close or ""))
    assert c2.allows(stop) and not c2.allows(s.call_open)


@pytest.mark.parametrize("version", VERSIONS)
def test_markers_never_inside_arguments(version):
    s = FORMATS[version].syntax
    c = cursor(version, "named")
    c.feed('{"city": "')
    markers = (s.call_open, *(s.stop_tokens), *([s.call_close] if s.call_close else []))
    if s.json_arguments:
        # The parser always reads these arguments by their JSON extent: the call markers are
        # plain JSON text there; only the turn's stop tokens stay out.
        for marker in (s.call_open, *([s.call_close] if s.call_close else [])):
            assert c.allows(marker.replace("\n", "\\n").replace('"', '\\"')), marker
        markers = s.stop_tokens
    for marker in markers:
        assert not c.allows(marker), marker
        assert c.allows(marker[:-1].replace("\n", "\\n")), marker  # a part of it is fine
    assert c.allows('x >> </functio y"}')


def test_json_schema_is_enforced():
    c = cursor("v3.llama3", "named")
    assert not c.allows("{}")  # city is required
    assert not c.allows('{"cityx"') and not c.allows('{"town"')
    assert c.allows('{"city": "x", "unit": "北京"}') and c.allows('{"city": "", "unit": "Zürich"}')
    assert not c.allows('{"unit": "Zürich", "city": ""}')  # keys in the tool's own order
    assert not c.allows('{"city": "x", "unit": "Paris"') and not c.allows('{"city": "x", "unit": "北"}')
    assert not c.allows('{"city": 3')
    assert not c.allows('{"city": "x",}')  # trailing comma
    assert not c.allows('{"city": "x", "days": 1e3') and not c.allows('{"city": "x", "days": 1.5')
    assert c.allows('{"city": "x", "days": -12}')
    assert c.allows('{"city": "x", "where": {"lat": 1.25e-3, "lon": 0}}')
    assert not c.allows('{"city": "x", "where": {"lat": 1}}')  # nested required
    assert not c.allows('{"city": "x", "where": {"lat": 1.e3')
    assert c.allows('{"city": "x", "stops": [{"name": "a"}, {"name": "b", "km": 2}]}')
    assert not c.allows('{"city": "x", "stops": [{"km": 2}')  # item without its required key
    assert not c.allows('{"city": "x", "stops": [{"name": "a"},]')
    assert c.allows('{"city": "line\\nbreak \\"q\\" \\u00e9 日本語 😀"}')
    assert not c.allows('{"city": "raw\nnewline"}')
    nc = cursor("v3.llama3", "none")
    assert nc.allows("plain text with {json} and >> but no opener")


def test_functions_without_parameters_take_an_empty_object():
    c = cursor("v3.llama3", "required")
    assert c.allows("ping\n{}") and not c.allows('ping\n{"a"')
    assert c.allows("get_weather_v2\n{ }") and not c.allows('get_weather_v2\n{"x": 1}')


@pytest.mark.parametrize("version", VERSIONS)
def test_code_interpreter(version):
    s = FORMATS[version].syntax
    c = cursor(version, "auto", tools=TOOLS + CODE)
    code = "import math\nprint(math.pi > 3)  # {not json}"
    if s.code_parameters is not None:  # hermes: python is a function taking {"code": ...}
        call = s.call_open + "python" + s.name_end_written + json.dumps({"code": code}) + s.call_close
        assert c.allows(call) and c.copy().feed(call).can_end()
        assert not c.allows(s.call_open + "python" + s.name_end_written + code)
    elif s.code_open:
        assert c.allows(s.code_open + code + s.stop_tokens[0])
        assert not c.allows(s.call_open + "python")  # python only through its own opener
    else:
        lead = "" if s.recipient_first else ("\n" if version == "v1" else "") + s.call_open
        assert c.allows(lead + "python" + s.name_end_written + code)
        after = c.copy().feed(lead + "python" + s.name_end_written + code)
        assert after.can_end()
        if version != "v1":
            assert after.allows(s.call_open + "get_w" + s.name_end_written + "{}")
    off = cursor(version, "auto")
    assert not off.allows((s.code_open or s.call_open) + "python" + s.name_end_written)


def test_v2_space_after_special_tokens():
    # SentencePiece decoding shows a space after <|recipient|> etc.; the parser drops it.
    c = cursor("v2", "auto")
    assert c.allows(" get_weather\n<|content|> {") and c.allows("get_weather\n<|content|>{")
    assert not c.allows("  get_weather")
    c.feed('get_w\n<|content|>{"q": "x"}')
    assert c.allows("\n<|from|> assistant\n<|recipient|> ping\n<|content|>{}<|stop|>")


# ---------------------------------------------------------------------------------------------
# Token level


@pytest.fixture(scope="module")
def indexes():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = (tok := build_format_tokenizer(name), TokenizerIndex.from_tokenizer(tok))
        return cache[name]

    return get


TOKENIZERS = ("format", "default")


def tokenizer_for(indexes, version, which):
    return indexes(version if which == "format" else "default")


def test_token_bytes_match_the_tokenizer(indexes):
    for name in ("default", "v3-llama3.1", "v2"):
        tok, index = indexes(name)
        assert index.vocab_size == len(tok)
        for tid, data in index.regular:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                continue  # a piece of a character
            assert text == tok.decode([tid]), tid
        for marker in FORMATS[name].syntax.stop_tokens if name in FORMATS else ():
            tid = tok.convert_tokens_to_ids(marker)
            assert index.special_tokens[tid] == marker


def walk_tokens(tok, index, g, text, probes=64, rng=None):
    """Feed `text` token by token: every token must be in the mask; at each step, probe
    random tokens: in the mask exactly when the cursor accepts them."""
    rng = rng or random.Random(0)
    cur = index.cursor(g)
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    for i, tid in enumerate(ids):
        if cur.done:
            break
        mask = cur.mask()
        assert mask[tid], (i, tok.decode(ids[:i])[-40:], tok.decode([tid]), cur.state)
        for probe in rng.sample(range(index.vocab_size), probes):
            assert bool(mask[probe]) == cur.allows(probe), (probe, tok.decode([probe]), cur.state)
        for eos in index.eos_token_ids:
            assert bool(mask[eos]) == (cur.can_end() or cur.allows(eos))
        cur.advance(tid)
    return cur


@pytest.mark.parametrize("which", TOKENIZERS)
@pytest.mark.parametrize("version, choice, content, calls, valid", [p for p in turn_cases() if p.values[4]])
def test_rendered_turns_token_by_token(indexes, which, version, choice, content, calls, valid):
    tok, index = tokenizer_for(indexes, version, which)
    g = grammar(version, choice)
    output = render_output(version, content, calls)
    if not output.startswith(g.prefix):
        return
    cur = walk_tokens(tok, index, g, output[len(g.prefix):], probes=24)
    assert cur.done or cur.can_end()


@pytest.mark.parametrize("which", TOKENIZERS)
@pytest.mark.parametrize("version", VERSIONS)
def test_invalid_tokens_are_masked(indexes, which, version):
    tok, index = tokenizer_for(indexes, version, which)
    s = FORMATS[version].syntax
    ids = lambda text: tok.encode(text, add_special_tokens=False)  # noqa: E731

    g = grammar(version, "required")
    cur = index.cursor(g)
    if version == "v1":
        for t in ids("\n" + s.call_open):
            cur.advance(t)
    mask = cur.mask()
    assert not any(mask[t] for t in index.eos_token_ids)
    assert mask[ids("get_w")[0]]
    for word in ("hello", "Sure", "xyz", " the"):
        assert not mask[ids(word)[0]], word
    for t in ids("get_w"):
        cur.advance(t)
    mask = cur.mask()
    end_first = ids(s.name_end_written)[0]
    assert mask[end_first] and mask[ids("eather")[0]] and not mask[ids("x")[0]]

    g = grammar(version, "named")
    cur = index.cursor(g)
    for t in ids('{"city": "Pa'):
        cur.advance(t)
    mask = cur.mask()
    assert not any(mask[t] for t in index.eos_token_ids)
    for marker in s.stop_tokens:
        if marker in tok.get_vocab():
            assert not mask[tok.convert_tokens_to_ids(marker)]
    assert mask[ids("ris")[0]] and mask[ids('"')[0]]
    for t in ids('ris"}'):
        cur.advance(t)
    mask = cur.mask()
    if s.call_close:
        assert not any(mask[t] for t in index.eos_token_ids)
        assert mask[ids(s.call_close)[0]] and sum(mask) < 10
    else:
        assert all(mask[t] for t in index.eos_token_ids)
        assert not mask[ids(" ")[0]] and not mask[ids("Hello")[0]]


@pytest.mark.parametrize("which", TOKENIZERS)
def test_unicode_enum_values_split_over_tokens(indexes, which):
    tok, index = tokenizer_for(indexes, "v3.llama3", which)
    g = grammar("v3.llama3", "named")
    text = '{"city": "日本語 😀 Zürich", "unit": "北京"}'
    ids = tok.encode(text, add_special_tokens=False)
    assert any(b"\xe5" in (index.token_bytes[t] or b"") and len(index.token_bytes[t]) < 3 for t in ids)
    cur = walk_tokens(tok, index, g, text, probes=48)
    assert cur.can_end()
    cur = index.cursor(g)
    for t in tok.encode('{"city": "x", "unit": "', add_special_tokens=False):
        cur.advance(t)
    mask = cur.mask()
    allowed = [tok.decode([t]) for t in np.flatnonzero(mask)]
    assert "c" in allowed and "f" in allowed and "Z" in allowed and "x" not in allowed
    assert all(not a or a[0] in "cfZ\ufffd" for a in allowed)  # "北" starts with a split byte


def test_masks_are_cached_and_read_only(indexes):
    tok, index = indexes("v3.llama3")
    g = grammar("v3.llama3", "auto")
    a = index.cursor(g).mask()
    b = index.cursor(g).mask()
    assert a is b and index.is_cached(a)
    with pytest.raises(ValueError):
        a[0] = True


def test_walk_leaves_the_grammar_then_raises(indexes):
    tok, index = indexes("v3.llama3")
    cur = index.cursor(grammar("v3.llama3", "required"))
    with pytest.raises(GrammarViolation):
        cur.advance(tok.encode("Hello", add_special_tokens=False)[0])


@pytest.mark.parametrize("version", VERSIONS)
def test_rendered_turns_parse_into_the_calls(version):
    # The oracle of the property test: rendered calls parse back through the server's parser.
    g = grammar(version, "auto")
    output = render_output(version, None, [("get_weather", ARGS)])
    parser = StreamParser(g.syntax, prefix=g.prefix)
    builder = MessageBuilder()
    builder.add(parser.feed(output))
    builder.add(parser.finish())
    (call,) = builder.tool_calls
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"])["unit"] == "北京"


def test_split_characters_stay_valid_utf8(indexes):
    tok, index = indexes("default")
    lead = next(t for t, b in index.regular if b.endswith(b"\xed") and len(b) == 2)
    surrogate_tail = next(t for t, b in index.regular if b == b"\xb6")  # ED B6 would be a surrogate
    fine_tail = next(t for t, b in index.regular if b == b"\x95")  # ED 95 xx is Hangul
    cur = index.cursor(grammar("v3.llama3", "none"))
    cur.advance(lead)
    mask = cur.mask()
    assert mask.any() and not mask[surrogate_tail] and not cur.allows(surrogate_tail)
    assert mask[fine_tail] and cur.allows(fine_tail)
    assert not mask[tok.encode("a", add_special_tokens=False)[0]]


def test_numbers_end(indexes):
    c = cursor("v3.llama3", "named")
    c.feed('{"city": "x", "days": ' + "1" * 24)
    assert not any(ch in c.allowed() for ch in "0123456789.eE")
    assert "}" in c.allowed() and "," in c.allowed()


@pytest.mark.parametrize("schema, good, bad", [
    ({"type": "object", "properties": {"a": {}}, "required": ["a"]}, ['{"a": [1, {"x": null}]}', '{"a": "s"}'], ["{}"]),
    ({"type": "object", "properties": {"a": {"enum": ["x", 1, None]}}}, ['{"a": "x"}', '{"a": 1}', '{"a": null}'],
     ['{"a": 2}', '{"a": "y"}']),
    ({"type": "object", "properties": {"a": {"const": 3}}}, ['{"a": 3}'], ['{"a": 4}']),
    ({"type": "object", "properties": {"a": {"type": ["object", "null"], "properties": {"k": {"type": "integer"}},
                                             "required": ["k"]}}},
     ['{"a": null}', '{"a": {"k": 1}}'], ['{"a": {}}', '{"a": 1}']),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
     ['{"a": 1, "b": "anything"}'], ['{"a": 1}']),
    ({"properties": {"a": {"type": "string"}}}, ['{"a": "x"}'], ['{"b": 1}']),
])
def test_schemas_lm_format_enforcer_cannot_parse_as_given(schema, good, bad):
    tools = [{"type": "function", "function": {"name": "f", "parameters": schema}}]
    c = cursor("v3.llama3", {"type": "function", "function": {"name": "f"}}, tools=tools)
    for text in good:
        assert c.allows(text), text
        jsonschema.validate(json.loads(text), schema)
    for text in bad:
        assert not c.allows(text), text
