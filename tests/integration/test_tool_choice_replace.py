"""Through the HTTP API (the real `openai` client): a named `tool_choice` carrying its own
definition replaces the tool list in the prompt the engine gets and in the grammar it enforces
(FORMAT_SPEC §2 `enforce_tool_choice`; the expected prompt is the reference vector C10)."""
from __future__ import annotations

import pytest

from tests.golden.vectors_loader import load
from tests.unit.test_tool_choice_replace import defined_choice, with_stale_definition

pytestmark = pytest.mark.anyio

(C10,) = [c for c in load("prompts") if c["id"] == "C10" and c["version"] == "v3.llama3"]


async def test_the_engine_gets_the_reference_prompt_and_grammar(harness):
    h = await harness(['search_flights\n{"origin": "JFK", "destination": "LAX", "date": "2024-07-01"}<|eot_id|>'],
                      grammar_sampling=True)
    choice = defined_choice(C10)
    response = await h.client.chat.completions.create(
        model="functionary-test", messages=C10["messages"], tools=with_stale_definition(C10), tool_choice=choice,
    )
    assert response.choices[0].message.tool_calls[0].function.name == "search_flights"
    sent = h.fake.requests[-1]
    assert sent.prompt == C10["prompt"]
    assert sent.params.constraint["tools"] == C10["tools_or_functions_after_enforce"]
    assert sent.params.constraint["tool_choice"] == {"type": "function", "function": {"name": "search_flights"}}
