"""Parsing model output: golden vectors, round trips, and streamed == whole for any chunking."""
from __future__ import annotations

import copy

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from functionary.parsing import MessageBuilder, TextDelta, ToolCallArgsDelta, ToolCallStart
from functionary.prompt_template import get_prompt_template_by_version
from tests.golden.vectors_loader import case_id, load
from tests.strategies import VERSIONS, assistant_turns, chunkings, marker_arguments, raw_outputs, split

PARSE_CASES = load("parse")
HYPOTHESIS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _without_ids(message: dict) -> dict:
    message = copy.deepcopy(message)
    for call in message.get("tool_calls") or []:
        assert call["id"] == "<ID>" or (call["id"].startswith("call_") and len(call["id"]) == 29)
        call["id"] = "<ID>"
    return message


@pytest.mark.parametrize("case", PARSE_CASES, ids=case_id)
def test_parse_vector(case):
    template = get_prompt_template_by_version(case["version"])
    parsed = template.parse_assistant_response(case["llm_output"], case["tool_choice"])
    assert _without_ids(parsed) == _without_ids(case["parsed"])


def stream(version, text_chunks, tool_choice=None, tool_names=None, json_arguments=False):
    template = get_prompt_template_by_version(version)
    parser = template.stream_parser(tool_choice, tool_names, json_arguments=json_arguments)
    builder = MessageBuilder()
    events = []
    for chunk in text_chunks:
        got = parser.feed(chunk)
        events += got
        builder.add(got)
        # Only a possible partial marker is ever held back: no re-parsing of the whole text.
        assert len(parser._buf) < 64
    tail = parser.finish()
    events += tail
    builder.add(tail)
    return builder.message(), events


def whole(version, text, tool_choice=None, tool_names=None, json_arguments=False):
    return stream(version, [text], tool_choice, tool_names, json_arguments)[0]


@pytest.mark.parametrize("json_arguments", [False, True])
@pytest.mark.parametrize("version", VERSIONS)
@HYPOTHESIS
@given(data=st.data())
def test_any_chunking_streams_to_the_whole_message(version, json_arguments, data):
    text, cuts = data.draw(chunkings(raw_outputs))
    choice = data.draw(st.sampled_from([None, "auto", "none", "required", {"type": "function", "function": {"name": "get_w"}}]))
    names = data.draw(st.sampled_from([None, ["get_w", "get_weather"]]))
    streamed, _ = stream(version, split(text, cuts), choice, names, json_arguments)
    assert _without_ids(streamed) == _without_ids(whole(version, text, choice, names, json_arguments))


@pytest.mark.parametrize("version", VERSIONS)
@HYPOTHESIS
@given(data=st.data())
def test_grammar_sampled_arguments_may_spell_markers(version, data):
    """Under grammar sampling the arguments are one JSON object: a marker inside a string value
    is part of the value, in any chunking (the reference parser would split the call there)."""
    message, calls, output = data.draw(assistant_turns(version, argument_values=marker_arguments, code=False))
    drops = get_prompt_template_by_version(version).syntax.drop_space_after
    assume(not any(token + " " in args for token in drops for _, args in calls))  # v2 decoding eats those
    text, cuts = data.draw(chunkings(st.just(output)))
    parsed, _ = stream(version, split(text, cuts), json_arguments=True)
    assert parsed["content"] == message["content"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed["tool_calls"] or []] == calls


def test_json_arguments_end_where_the_object_ends():
    text = 'get_w\n{"q": "a>>>b<|eot_id|>"}>>>get_weather\n{"city": "}>>>"}<|eot_id|>ignored'
    parsed = whole("v3.llama3", text, json_arguments=True)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed["tool_calls"]] == [
        ("get_w", '{"q": "a>>>b<|eot_id|>"}'), ("get_weather", '{"city": "}>>>"}')]
    # Without the grammar's guarantee the markers are found as text, as the reference does.
    textual = whole("v3.llama3", text)
    assert textual["tool_calls"][0]["function"]["arguments"] == '{"q": "a'


@pytest.mark.parametrize("version", VERSIONS)
@HYPOTHESIS
@given(data=st.data())
def test_rendered_turns_parse_back(version, data):
    message, calls, output = data.draw(assistant_turns(version))
    text, cuts = data.draw(chunkings(st.just(output)))
    parsed, events = stream(version, split(text, cuts))
    if version == "v1":
        assert parsed["content"] == message["content"]
    else:
        assert parsed["content"] == message["content"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed["tool_calls"] or []] == calls
    ids = [e.id for e in events if isinstance(e, ToolCallStart)]
    assert len(set(ids)) == len(ids)


def test_v1_answers_in_the_legacy_shape():
    template = get_prompt_template_by_version("v1")
    parsed = template.parse_assistant_response("Sure.\n<|START_OF_FUNCTION_CALL|>get_weather:\n{}<|END_OF_FUNCTION_CALL|>")
    assert parsed == {"role": "assistant", "content": "Sure.", "function_call": {"name": "get_weather", "arguments": "{}"}}


# -- the seed's bugs (FORMAT_SPEC §9) stay fixed ---------------------------------------------

@pytest.mark.parametrize("version,output", [
    ("v2.llama3", "<|reserved_special_token_249|>get_server_time"),
    ("v3.llama3", "get_server_time"),
    ("v3-llama3.1", "<function=get_server_time>"),
])
def test_a_name_without_arguments_keeps_its_last_character(version, output):
    parsed = get_prompt_template_by_version(version).parse_assistant_response(output)
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in parsed["tool_calls"]] == [("get_server_time", "{}")]


@pytest.mark.parametrize("version,output,content", [
    ("v3.llama3", "all\nIn Python, a prompt looks like >>> print(1)", "In Python, a prompt looks like >>> print(1)"),
    ("v3.llama3", "all\nuse a>>>b c", "use a>>>b c"),
    ("v3-llama3.1", "Compare a <function=x y> b", "Compare a <function=x y> b"),
    ("v2.llama3", "I see <|reserved_special_token_249|> here, oddly", "I see <|reserved_special_token_249|> here, oddly"),
])
def test_an_opener_inside_text_stays_text(version, output, content):
    parsed = get_prompt_template_by_version(version).parse_assistant_response(output)
    assert parsed == {"role": "assistant", "content": content, "tool_calls": None}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("choice", [None, "auto", "none", "required"])
def test_empty_output_is_an_empty_message(version, choice):
    parsed = get_prompt_template_by_version(version).parse_assistant_response("", choice)
    assert parsed["content"] is None and not parsed.get("tool_calls") and not parsed.get("function_call")


def test_v2_text_keeps_the_character_after_a_newline():
    # The seed streamed "Line one\nLine two" as "Line one\n two" (S09).
    chunks = ["all", "\n<|content|>", "Line", " one", "\n", "Line", " two", "<|stop|>"]
    parsed, _ = stream("v2", chunks)
    assert parsed["content"] == "Line one\nLine two"


def test_v2_sentencepiece_spaces_after_special_tokens_are_not_content():
    output = " all\n<|content|> Hi there\n<|from|> assistant\n<|recipient|> get_weather\n<|content|> {\"city\": \"Paris\"}"
    parsed = get_prompt_template_by_version("v2").parse_assistant_response(output)
    assert parsed["content"] == "Hi there"
    assert parsed["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


@pytest.mark.parametrize("version,chunks", [
    ("v3.llama3", ["all\nChecking.", ">", ">", ">get_", "weather\n", '{"city"', ': "Paris"}']),
    ("v3-llama3.1", ["Checking.", "<", "func", "tion=get_", "weather>", '{"city": "Paris"}', "</", "function", ">"]),
    ("v2.llama3", ["Checking.", "<|reserved_", "special_token_249|>", "get_weather", "\n", '{"city": "Paris"}']),
    ("v2", ["all\n<|content|>Checking.\n<|fr", "om|>assistant\n<|recip", "ient|>get_weather\n<|con", 'tent|>{"city": "Paris"}']),
])
def test_a_marker_split_across_chunks_never_leaks_into_content(version, chunks):
    parsed, events = stream(version, chunks)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Checking."
    assert parsed["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}


@pytest.mark.parametrize("version,chunks", [
    ("v3.llama3", ["get_weather\n{}", ">>>get_w", "\n{}"]),
    ("v2.llama3", ["<|reserved_special_token_249|>get_w", "eather\n{}<|reserved_special_token_249|>get_w\n{}"]),
])
def test_names_that_are_prefixes_of_each_other(version, chunks):
    parsed, _ = stream(version, chunks, tool_names=["get_w", "get_weather"])
    assert [c["function"]["name"] for c in parsed["tool_calls"]] == ["get_weather", "get_w"]


def test_known_tool_names_turn_an_unknown_recipient_into_text():
    # The 135M default model writes plain sentences where v3.llama3 expects a recipient.
    parsed = whole("v3.llama3", "Paris\nThe weather is nice.", tool_names=["get_weather"])
    assert parsed == {"role": "assistant", "content": "Paris\nThe weather is nice.", "tool_calls": None}


def test_stop_token_ends_the_turn():
    parsed, _ = stream("v3-llama3.1", ["Hi<|eot", "_id|>ignored <function=f>{}</function>"])
    assert parsed == {"role": "assistant", "content": "Hi", "tool_calls": None}


@pytest.mark.parametrize("version,choice,output,name", [
    ("v2", {"type": "function", "function": {"name": "get_weather"}}, '{"city": "Paris"}<|stop|>', "get_weather"),
    ("v2.llama3", {"type": "function", "function": {"name": "get_weather"}}, '{"city": "Paris"}<|eot_id|>', "get_weather"),
    ("v3.llama3", {"type": "function", "function": {"name": "get_weather"}}, '{"city": "Paris"}<|eot_id|>', "get_weather"),
    ("v3-llama3.1", {"type": "function", "function": {"name": "get_weather"}}, '{"city": "Paris"}</function>', "get_weather"),
    ("v1", {"type": "function", "function": {"name": "get_weather"}}, '{"city": "Paris"}<|END_OF_FUNCTION_CALL|>', "get_weather"),
])
def test_a_named_choice_opens_its_call_before_any_output(version, choice, output, name):
    parser = get_prompt_template_by_version(version).stream_parser(choice)
    first = parser.feed("")
    assert [type(e) for e in first] == [ToolCallStart] and first[0].name == name and first[0].index == 0
    rest = parser.feed(output) + parser.finish()
    assert "".join(e.arguments for e in rest if isinstance(e, ToolCallArgsDelta)) == '{"city": "Paris"}'
