"""Bad tool definitions are a 400 in OpenAI's format naming the offending `param`, before anything
is rendered or reaches the engine (functionary/protocol/tool_validation.py).

Expected shapes are OpenAI's: `type` "invalid_request_error", code "invalid_function_parameters"
and a message "Invalid schema for function '<name>': ..." for a bad schema; OpenAI's name pattern
`^[a-zA-Z0-9_-]{1,64}$`; at most 128 tools. The deeper `param` (down to the offending keyword)
is ours. Driven by raw HTTP and by the real `openai` client.
"""
from __future__ import annotations

import copy
from typing import Any

import openai
import pytest

from tests.integration.conftest import CALL_OUT, FUNCTIONS, MODEL, TEXT_OUT, TOOLS, USER, WEATHER_TOOL

pytestmark = pytest.mark.anyio


def tool(parameters: Any, name: str = "get_weather", **extra: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters, **extra}}


def weather_with(**changes: Any) -> dict[str, Any]:
    """The weather tool's parameters with `changes` applied at the top level."""
    parameters = copy.deepcopy(WEATHER_TOOL["function"]["parameters"])
    parameters.update(changes)
    return tool(parameters)


CITY_TYPE = lambda kind: tool({"type": "object", "properties": {"city": {"type": kind}}})  # noqa: E731

BAD_TOOLS = [
    # (id, tools, param, code)
    ("properties not an object", [weather_with(properties=5)], "tools[0].function.parameters.properties",
     "invalid_function_parameters"),
    ("type not a string", [CITY_TYPE(5)], "tools[0].function.parameters.properties.city.type",
     "invalid_function_parameters"),
    ("unknown type", [CITY_TYPE("text")], "tools[0].function.parameters.properties.city.type",
     "invalid_function_parameters"),
    ("required a string", [weather_with(required="city")], "tools[0].function.parameters.required",
     "invalid_function_parameters"),
    ("required not strings", [weather_with(required=[1])], "tools[0].function.parameters.required[0]",
     "invalid_function_parameters"),
    ("top level not an object schema", [tool({"type": "string"})], "tools[0].function.parameters.type",
     "invalid_function_parameters"),
    ("minimum not a number", [tool({"type": "object", "properties": {"n": {"type": "integer", "minimum": "0"}}})],
     "tools[0].function.parameters.properties.n.minimum", "invalid_function_parameters"),
    ("strict: required names a missing property",
     [tool({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city", "country"]}, strict=True)],
     "tools[0].function.parameters.required", "invalid_function_parameters"),
    ("duplicate names", [WEATHER_TOOL, tool({"type": "object", "properties": {}})], "tools[1].function.name",
     "duplicate_function_name"),
    ("name with a space", [tool({}, name="get weather")], "tools[0].function.name", "invalid_value"),
    ("name with a dot", [tool({}, name="weather.get")], "tools[0].function.name", "invalid_value"),
    ("empty name", [tool({}, name="")], "tools[0].function.name", "invalid_value"),
    ("name of 65 characters", [tool({}, name="a" * 65)], "tools[0].function.name", "string_above_max_length"),
    ("bad second tool", [WEATHER_TOOL, tool({"type": "object", "properties": []}, name="b")],
     "tools[1].function.parameters.properties", "invalid_function_parameters"),
]


def nested(levels: int) -> dict[str, Any]:
    """An object schema whose JSON nests 2 * levels + 1 deep."""
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"x": schema}}
    return schema


def assert_openai_error(body: dict[str, Any], param: str, code: str) -> None:
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


@pytest.mark.parametrize("tools,param,code", [case[1:] for case in BAD_TOOLS], ids=[case[0] for case in BAD_TOOLS])
async def test_bad_tools_are_400_over_raw_http(harness, tools, param, code):
    h = await harness((CALL_OUT,))
    r = await h.post({"model": MODEL, "messages": USER, "tools": tools})
    assert r.status_code == 400, r.text
    assert_openai_error(r.json(), param, code)
    assert h.fake.requests == []  # nothing reached the engine


@pytest.mark.parametrize("tools,param,code", [case[1:] for case in BAD_TOOLS], ids=[case[0] for case in BAD_TOOLS])
async def test_bad_tools_are_400_through_the_openai_client(harness, tools, param, code):
    h = await harness((CALL_OUT,))
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as caught:
            await h.client.chat.completions.create(model=MODEL, messages=USER, tools=tools, stream=stream)
        assert caught.value.status_code == 400
        assert caught.value.param == param
        assert caught.value.code == code
        assert caught.value.type == "invalid_request_error"
    assert h.fake.requests == []


async def test_schema_message_names_the_function_like_openai(harness):
    h = await harness((CALL_OUT,))
    r = await h.post({"model": MODEL, "messages": USER, "tools": [weather_with(properties=5)]})
    assert r.json()["error"]["message"].startswith("Invalid schema for function 'get_weather': ")


async def test_duplicate_names_are_refused_with_grammar_sampling_on(harness):
    """Two tools with one name used to switch grammar sampling off silently for the request."""
    h = await harness((CALL_OUT,), grammar_sampling=True)
    r = await h.post({"model": MODEL, "messages": USER, "tools": [WEATHER_TOOL, WEATHER_TOOL]})
    assert r.status_code == 400
    assert_openai_error(r.json(), "tools[1].function.name", "duplicate_function_name")
    assert "get_weather" in r.json()["error"]["message"]


async def test_legacy_functions_are_checked_the_same_way(harness):
    h = await harness(('get_weather\n{"city": "Paris"}<|eot_id|>',))
    bad = [dict(FUNCTIONS[0], parameters={"type": "object", "properties": {"city": {"type": 5}}})]
    r = await h.post({"model": MODEL, "messages": USER, "functions": bad})
    assert r.status_code == 400
    assert_openai_error(r.json(), "functions[0].parameters.properties.city.type", "invalid_function_parameters")
    r = await h.post({"model": MODEL, "messages": USER, "functions": [FUNCTIONS[0], FUNCTIONS[0]]})
    assert_openai_error(r.json(), "functions[1].name", "duplicate_function_name")
    r = await h.post({"model": MODEL, "messages": USER, "functions": [dict(FUNCTIONS[0], name="get-weather!")]})
    assert_openai_error(r.json(), "functions[0].name", "invalid_value")


async def test_a_named_tool_choice_carrying_parameters_is_checked(harness):
    h = await harness((CALL_OUT,))
    choice = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "required": 3}}}
    r = await h.post({"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": choice})
    assert r.status_code == 400
    assert_openai_error(r.json(), "tool_choice.function.parameters.required", "invalid_function_parameters")


async def test_parameters_that_are_not_an_object_are_400(harness):
    h = await harness((CALL_OUT,))
    for parameters in (5, "object", [1]):
        r = await h.post({"model": MODEL, "messages": USER, "tools": [tool(parameters)]})
        assert r.status_code == 400, parameters
        assert r.json()["error"]["param"] == "tools[0].function.parameters"


@pytest.mark.parametrize(
    "tools",
    [
        [tool({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city", "country"]})],
        [tool({}, name="a" * 64)],
        [tool({}, name="Get_Weather-2")],
        [tool({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
               "properties": {"n": {"type": "integer", "exclusiveMinimum": 0}}})],
        [tool({"type": "object", "properties": {"city": {"type": ["string", "null"]}}})],
        [tool(nested(31))],  # JSON depth 63 <= 64
    ],
    ids=["required names a missing property without strict (OpenAI accepts it)", "name of 64 characters",
         "letters digits _ -", "draft-07 schema", "type list", "deep but within the limit"],
)
async def test_valid_tools_are_served(harness, tools):
    h = await harness((CALL_OUT,))
    answer = await h.client.chat.completions.create(model=MODEL, messages=USER, tools=tools)
    assert answer.choices[0].finish_reason in ("tool_calls", "stop")
    assert len(h.fake.requests) == 1


async def test_too_many_tools(harness):
    h = await harness((CALL_OUT,))
    many = [tool({"type": "object", "properties": {}}, name=f"f{i}") for i in range(129)]
    r = await h.post({"model": MODEL, "messages": USER, "tools": many})
    assert r.status_code == 400
    assert_openai_error(r.json(), "tools", "array_above_max_length")
    r = await h.post({"model": MODEL, "messages": USER, "tools": many[:128]})
    assert r.status_code == 200, r.text


async def test_tool_limits_are_configurable(harness):
    h = await harness((CALL_OUT,), max_tools=2, max_tool_schema_depth=9, max_tools_bytes=2000)
    three = [tool({"type": "object", "properties": {}}, name=f"f{i}") for i in range(3)]
    r = await h.post({"model": MODEL, "messages": USER, "tools": three})
    assert_openai_error(r.json(), "tools", "array_above_max_length")
    with pytest.raises(openai.BadRequestError) as caught:
        await h.client.chat.completions.create(model=MODEL, messages=USER, tools=[tool(nested(5))])  # depth 11
    assert caught.value.param == "tools[0].function.parameters"
    assert "nested more than 9 levels" in caught.value.message
    ok = await h.client.chat.completions.create(model=MODEL, messages=USER, tools=[tool(nested(4))])  # depth 9
    assert ok.choices[0].message is not None
    big = [tool({"type": "object", "properties": {}}, name="f", description="x" * 2000)]
    r = await h.post({"model": MODEL, "messages": USER, "tools": big})
    assert r.status_code == 400
    assert_openai_error(r.json(), "tools", "tools_too_large")


async def test_default_depth_limit(harness):
    h = await harness((CALL_OUT,))
    r = await h.post({"model": MODEL, "messages": USER, "tools": [tool(nested(40))]})
    assert r.status_code == 400
    assert_openai_error(r.json(), "tools[0].function.parameters", "invalid_function_parameters")


@pytest.mark.parametrize(
    "raw,param",
    [
        (b'{"model": "functionary-test", "messages": [{"role": "user", "content": "a\\ud800b"}]}', "messages[0].content"),
        (b'{"model": "functionary-test", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function",'
         b' "function": {"name": "f", "description": "\\udfff"}}]}', "tools[0].function.description"),
        (b'{"model": "functionary-test", "messages": [{"role": "user", "content": "x"}], "stop": ["\\ud83d"]}', "stop[0]"),
        (b'{"model": "\\udc00", "messages": [{"role": "user", "content": "x"}]}', "model"),
    ],
    ids=["message", "tool description", "stop string", "model"],
)
async def test_unpaired_surrogate_escapes_are_400(harness, raw, param):
    """Found by benchmarks/fuzz.py: JSON allows "\\ud800", UTF-8 (the tokenizer) does not; it was a 500."""
    h = await harness((CALL_OUT,))
    r = await h.http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert_openai_error(r.json(), param, "invalid_unicode")
    # A correctly paired escape (an emoji) is fine.
    ok = raw.replace(b"\\ud800", b"\\ud83d\\ude00").replace(b"\\udfff", b"\\ud83d\\ude00")
    ok = ok.replace(b'"\\ud83d"', b'"\\ud83d\\ude00"').replace(b'"\\udc00"', b'"functionary-test"')
    assert (await h.http.post("/v1/chat/completions", content=ok, headers={"content-type": "application/json"})).status_code == 200


@pytest.mark.parametrize("seed", [-(2**63) - 1, 2**63, 10**30])
async def test_a_seed_outside_64_bits_is_400(harness, seed):
    """Found by benchmarks/fuzz.py: such a seed reached torch's manual_seed inside the engine
    step and killed the engine. vLLM's own server bounds it the same way."""
    h = await harness((TEXT_OUT,))
    r = await h.post({"model": MODEL, "messages": USER, "seed": seed})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "seed"
    assert h.fake.requests == []
    for ok in (-(2**63), 2**63 - 1):
        assert (await h.post({"model": MODEL, "messages": USER, "seed": ok})).status_code == 200
