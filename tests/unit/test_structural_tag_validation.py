"""vLLM's per-request xgrammar validation, made to remember structural tags that passed."""
from __future__ import annotations

import json
import types

import pytest

pytest.importorskip("vllm")
pytest.importorskip("xgrammar")

from vllm.exceptions import VLLMValidationError  # noqa: E402
from vllm.sampling_params import SamplingParams, StructuredOutputsParams  # noqa: E402
from vllm.v1.structured_output import backend_xgrammar  # noqa: E402

from functionary.backends.vllm_adapter import remember_valid_structural_tags  # noqa: E402


def _tag(name: str) -> str:
    return json.dumps({"type": "structural_tag", "format": {
        "type": "sequence", "elements": [
            {"type": "const_string", "value": f"{name}\n"},
            {"type": "json_schema", "json_schema": {"type": "object", "properties": {"x": {"type": "integer"}}}},
        ]}})


@pytest.fixture
def builds(monkeypatch):
    """Count the grammars vLLM's validation builds from structural tags."""
    real = backend_xgrammar.xgr
    calls: list[str] = []

    def from_structural_tag(tag, *rest):
        calls.append(tag)
        return real.Grammar.from_structural_tag(tag, *rest)

    grammar = types.SimpleNamespace(from_structural_tag=from_structural_tag,
                                    from_json_schema=real.Grammar.from_json_schema)
    monkeypatch.setattr(backend_xgrammar, "xgr", types.SimpleNamespace(Grammar=grammar))
    assert remember_valid_structural_tags()
    return calls


def _params(**so) -> SamplingParams:
    return SamplingParams(max_tokens=8, structured_outputs=StructuredOutputsParams(**so))


def test_a_tag_that_passed_is_not_rebuilt(builds):
    tag = _tag("get_weather_remembered")
    for _ in range(3):
        backend_xgrammar.validate_xgrammar_grammar(_params(structural_tag=tag))
    assert builds == [tag]
    other = _tag("another_tool_remembered")
    backend_xgrammar.validate_xgrammar_grammar(_params(structural_tag=other))
    assert builds == [tag, other]


def test_an_invalid_tag_fails_every_time(builds):
    bad = json.dumps({"type": "structural_tag", "format": {"type": "no_such_format"}})
    for _ in range(2):
        with pytest.raises(VLLMValidationError):
            backend_xgrammar.validate_xgrammar_grammar(_params(structural_tag=bad))
    assert builds == [bad, bad]


def test_other_requests_are_validated_by_vllm_as_before(builds):
    with pytest.raises(VLLMValidationError):
        backend_xgrammar.validate_xgrammar_grammar(_params(json={"type": "object", "properties": 5}))
    backend_xgrammar.validate_xgrammar_grammar(_params(json={"type": "object"}))
    assert builds == []


def test_installing_twice_wraps_once():
    assert remember_valid_structural_tags()
    first = backend_xgrammar.validate_xgrammar_grammar
    assert remember_valid_structural_tags()
    assert backend_xgrammar.validate_xgrammar_grammar is first
