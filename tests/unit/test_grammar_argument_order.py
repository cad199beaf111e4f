"""Both grammar back ends keep each tool's own property order (issue 16, item 1).

A tool's property order is part of its meaning (`start_location, end_location`): a grammar that
sorts the keys makes the model write `end_location` first. Checked char by char on the
lm-format-enforcer back end (`compile_constraint`) and with xgrammar's own matcher on the
structural tag, for a tool whose properties are not in alphabetical order.
"""
from __future__ import annotations

import pytest

from functionary.grammar import compile_constraint, parse_spec

ROUTE = {
    "type": "object",
    "properties": {
        "start_location": {"type": "string"},
        "end_location": {"type": "string"},
        "mode": {"type": "string"},
        "avoid": {"type": "object", "properties": {"tolls": {"type": "boolean"}, "ferries": {"type": "boolean"}}},
    },
    "required": ["start_location", "end_location"],
}
TOOLS = [{"type": "function", "function": {"name": "route", "parameters": ROUTE}}]
SPEC = {"version": "v3.llama3", "tools": TOOLS, "tool_choice": "required"}

IN_ORDER = [
    'route\n{"start_location": "Paris", "end_location": "Rome"}',
    'route\n{"start_location": "Paris", "end_location": "Rome", "mode": "car"}',
    'route\n{"start_location": "Paris", "end_location": "Rome", "avoid": {"tolls": true}}',  # mode left out
    'route\n{"start_location": "P", "end_location": "R", "avoid": {"tolls": true, "ferries": false}}',
]
OUT_OF_ORDER = [
    'route\n{"end_location": "Rome", "start_location": "Paris"}',  # the alphabetical order
    'route\n{"start_location": "Paris", "mode": "car", "end_location": "Rome"}',  # skips a required key
    'route\n{"start_location": "P", "end_location": "R", "mode": "car", "avoid": {"ferries": false, "tolls": true}}',
    'route\n{"start_location": "P", "end_location": "R", "avoid": {}, "mode": "car"}',
]


def lmfe_accepts(spec, text: str) -> bool:
    cursor = compile_constraint(spec).cursor()
    return cursor.allows(text)


@pytest.mark.parametrize("text", IN_ORDER)
def test_lm_format_enforcer_admits_the_tools_order(text):
    assert lmfe_accepts(SPEC, text)


@pytest.mark.parametrize("text", OUT_OF_ORDER)
def test_lm_format_enforcer_rejects_other_orders(text):
    assert not lmfe_accepts(SPEC, text)


def test_the_spec_keeps_the_order_and_the_digest_tells_orders_apart():
    spec = parse_spec(SPEC)
    assert list(spec.parameters("route")["properties"]) == ["start_location", "end_location", "mode", "avoid"]
    swapped = {**ROUTE, "properties": dict(reversed(list(ROUTE["properties"].items())))}
    other = parse_spec({**SPEC, "tools": [{"type": "function", "function": {"name": "route", "parameters": swapped}}]})
    assert other.digest != spec.digest  # a cache keyed by a sorted form would hand back the wrong order


def _xgrammar_accepts(spec, text: str) -> bool:
    xgr = pytest.importorskip("xgrammar")
    from functionary.grammar.structural_tag import structural_tag_json
    from tests.unit.test_grammar_structural_tag import compiler, stop_ids

    info, comp = compiler("default")
    matcher = xgr.GrammarMatcher(comp.compile_structural_tag(structural_tag_json(spec)),
                                 override_stop_tokens=stop_ids("default", spec["version"]))
    return matcher.accept_string(text) and matcher.is_completed()


@pytest.mark.parametrize("text", IN_ORDER)
def test_xgrammar_admits_the_tools_order(text):
    assert _xgrammar_accepts(SPEC, text)


@pytest.mark.parametrize("text", OUT_OF_ORDER)
def test_xgrammar_rejects_other_orders(text):
    assert not _xgrammar_accepts(SPEC, text)
