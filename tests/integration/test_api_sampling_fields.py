"""`logprobs`/`top_logprobs`, `response_format` and `logit_bias` through the API on the fake
engine: OpenAI's shapes, streamed == whole, what reaches the engine, and 400s naming the field.
(The real engine's behaviour is checked in tests/e2e/test_sampling_fields.py.)"""
from __future__ import annotations

import pytest

from tests.integration.conftest import MODEL, TEXT_OUT, TOOLS, USER, sse_chunks

pytestmark = pytest.mark.anyio

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


async def test_logprobs_whole_and_streamed_agree_and_follow_openais_shape(harness):
    h = await harness((TEXT_OUT,))
    body = {"model": MODEL, "messages": USER, "logprobs": True, "top_logprobs": 2}
    whole = (await h.post(body)).json()["choices"][0]["logprobs"]
    streamed = [c for chunk in sse_chunks((await h.post({**body, "stream": True})).text)
                for c in chunk["choices"]]
    pieces = [entry for c in streamed if c.get("logprobs") for entry in c["logprobs"]["content"]]
    assert whole == {"content": pieces, "refusal": None}
    assert "".join(e["token"] for e in pieces).startswith("It is sunny in Paris today.")
    for entry in pieces:
        assert set(entry) == {"token", "logprob", "bytes", "top_logprobs"}
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        assert len(entry["top_logprobs"]) == 2
        assert entry["top_logprobs"][0]["token"] == entry["token"]
    assert h.fake.requests[-1].params.logprobs == 2


async def test_openai_client_reads_the_logprobs(harness):
    h = await harness((TEXT_OUT,))
    response = await h.client.chat.completions.create(model=MODEL, messages=USER, logprobs=True)
    content = response.choices[0].logprobs.content
    assert content and content[0].top_logprobs == []
    assert h.fake.requests[-1].params.logprobs == 0


async def test_no_logprobs_unless_asked(harness):
    h = await harness((TEXT_OUT,))
    assert (await h.post({"model": MODEL, "messages": USER})).json()["choices"][0]["logprobs"] is None
    assert h.fake.requests[-1].params.logprobs is None


async def test_top_logprobs_without_logprobs_is_refused(harness):
    h = await harness((TEXT_OUT,))
    response = await h.post({"model": MODEL, "messages": USER, "top_logprobs": 3})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "top_logprobs"


@pytest.mark.parametrize(
    "response_format, expected",
    [
        ({"type": "json_object"}, {"type": "json_object"}),
        ({"type": "json_schema", "json_schema": {"name": "city", "schema": SCHEMA, "strict": True}},
         {"type": "json_schema", "schema": SCHEMA}),
    ],
)
async def test_response_format_reaches_the_engine_instead_of_the_text_constraint(harness, response_format, expected):
    h = await harness(('{"city": "Paris"}',), grammar_sampling=True)
    response = await h.post({"model": MODEL, "messages": USER, "response_format": response_format})
    assert response.status_code == 200, response.text
    params = h.fake.requests[-1].params
    assert params.response_format == expected
    assert params.constraint is None


async def test_response_format_with_forced_calls_keeps_the_call_constraint(harness):
    h = await harness(('get_weather\n{"city": "Paris"}<|eot_id|>',), grammar_sampling=True)
    body = {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "required",
            "response_format": {"type": "json_object"}}
    response = await h.post(body)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    params = h.fake.requests[-1].params
    assert params.response_format is None and params.constraint is not None


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"response_format": {"type": "json_schema"}}, None),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
         "response_format.json_schema.schema"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"12": 101}}, "logit_bias"),
    ],
)
async def test_bad_sampling_fields_are_refused_naming_them(harness, extra, param):
    h = await harness((TEXT_OUT,))
    response = await h.post({"model": MODEL, "messages": USER, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param
    else:
        assert "json_schema" in error["message"]
    assert h.fake.requests == []


async def test_logit_bias_reaches_the_engine_as_token_ids(harness):
    h = await harness((TEXT_OUT,))
    response = await h.post({"model": MODEL, "messages": USER, "logit_bias": {"42": -100, "7": 2.5}})
    assert response.status_code == 200
    assert h.fake.requests[-1].params.logit_bias == {42: -100.0, 7: 2.5}
