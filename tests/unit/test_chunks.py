"""OpenAI chunk deltas, accumulated by the openai package's own stream state, equal the whole parse."""
from __future__ import annotations

import copy

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from functionary.parsing.chunks import DeltaStream, finish_reason
from functionary.prompt_template import get_prompt_template_by_version
from tests.strategies import VERSIONS, assistant_turns, chunkings, split


def chunk(delta, reason=None):
    return ChatCompletionChunk.model_validate({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 0, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
    })


def streamed_completion(version, pieces, tool_choice=None):
    template = get_prompt_template_by_version(version)
    parser, deltas = template.stream_parser(tool_choice), DeltaStream()
    state = ChatCompletionStreamState()
    sent = []
    for piece in [*pieces, None]:
        events = parser.feed(piece) if piece is not None else parser.finish()
        for delta in deltas.deltas(events):
            sent.append(delta)
            state.handle_chunk(chunk(delta))
    state.handle_chunk(chunk({}, finish_reason("stop", parser.has_tool_calls)))
    return state.get_final_completion().choices[0], sent


def without_ids(calls):
    calls = copy.deepcopy(calls or [])
    for call in calls:
        call["id"] = "<ID>"
    return calls


@pytest.mark.parametrize("version", [v for v in VERSIONS if v != "v1"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_openai_accumulates_our_chunks_into_the_whole_message(version, data):
    _, _, output = data.draw(assistant_turns(version))
    text, cuts = data.draw(chunkings(st.just(output)))
    choice, sent = streamed_completion(version, split(text, cuts))
    whole = get_prompt_template_by_version(version).parse_assistant_response(output)
    assert choice.message.content == whole["content"]
    got_calls = [c.model_dump(include={"id", "type", "function"}) for c in choice.message.tool_calls or []]
    for call in got_calls:
        call["function"] = {"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
    assert without_ids(got_calls) == without_ids(whole["tool_calls"])
    assert choice.finish_reason == ("tool_calls" if whole["tool_calls"] else "stop")
    # Only the first delta carries the role; every call opens with index, id, type and name.
    assert [("role" in d) for d in sent] == [True] + [False] * (len(sent) - 1)
    for d in sent:
        for call in d.get("tool_calls", []):
            assert ("id" in call) == ("name" in call["function"])
            if "id" in call:
                assert call["type"] == "function" and call["function"]["arguments"] == ""


def test_tool_call_ids_are_unique_within_a_response():
    output = "".join(f'>>>get_weather\n{{"n": {i}}}' for i in range(20))[3:]
    choice, _ = streamed_completion("v3.llama3", [output])
    ids = [c.id for c in choice.message.tool_calls]
    assert len(set(ids)) == 20


def test_finish_reason():
    assert finish_reason("stop", True) == "tool_calls"
    assert finish_reason("stop", False) == "stop"
    # A call cut by max_tokens may be incomplete: the client is told so, as OpenAI does.
    assert finish_reason("length", True) == "length"
    assert finish_reason(None, True) is None
