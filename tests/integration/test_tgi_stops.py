"""The TGI back end's pure parts: cutting stops out of TGI's output, seeds, grammar plans.

TGI keeps a matched stop sequence in its output and takes only `max_stop_sequences` of them,
so the back end cuts every stop itself. The reference here is the plain definition: the
output is the text before the earliest occurrence of any stop, however the text was chunked.
"""
from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from functionary.backends.base import GenerationParams
from functionary.backends.tgi import StopCutter, grammar_for, sampling_parameters, tgi_seed

ALPHABET = "ab<|>\n "


def reference_cut(text: str, stops: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return (text[: min(hits)], True) if hits else (text, False)


@given(
    text=st.text(ALPHABET, max_size=40),
    stops=st.lists(st.text(ALPHABET, min_size=1, max_size=5), max_size=4),
    cuts=st.lists(st.integers(0, 40), max_size=10),
)
def test_stop_cutter_equals_the_definition_for_any_chunking(text, stops, cuts):
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    cutter = StopCutter(stops)
    out, stopped = "", False
    for start, end in zip(bounds, bounds[1:]):
        piece, stopped = cutter.feed(text[start:end])
        out += piece
        if stopped:
            break
    if not stopped:
        out += cutter.flush()
    assert (out, stopped) == reference_cut(text, stops)


def test_stop_cutter_holds_back_only_what_may_start_a_stop():
    cutter = StopCutter(["<|eot_id|>"])
    assert cutter.feed("Hello <|eo") == ("Hello ", False)
    assert cutter.feed("t") == ("", False)
    assert cutter.feed("_id|> more") == ("", True)


def test_seeds_are_valid_tgi_seeds_and_differ_per_choice():
    assert [tgi_seed(0, i) for i in range(3)] == [1, 2, 3]
    assert tgi_seed(-1, 0) == 2**64 - 1  # negative OpenAI seeds map into TGI's range too
    assert 1 <= tgi_seed(2**70, 5) <= 2**64 - 1


def test_grammar_only_for_a_named_choice():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer", "default": None}}}}}]
    named = grammar_for({"version": "v3.llama3", "tools": tools,
                         "tool_choice": {"type": "function", "function": {"name": "f"}}})
    assert named.grammar["type"] == "json"
    # a JSON string: null defaults survive the client's null-dropping
    assert json.loads(named.grammar["value"]) == tools[0]["function"]["parameters"]
    for mode in ("auto", "required", "none"):
        plan = grammar_for({"version": "v3.llama3", "tools": tools, "tool_choice": mode})
        assert plan.grammar is None and mode in plan.guarantee
    assert grammar_for(None).grammar is None


def test_greedy_sends_nothing_that_samples():
    assert sampling_parameters(GenerationParams(temperature=0, top_p=0.5, top_k=3)) == {"do_sample": False}
    assert sampling_parameters(GenerationParams(temperature=1.0)) == {"do_sample": True, "temperature": 1.0}
