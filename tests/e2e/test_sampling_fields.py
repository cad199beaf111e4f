"""`logprobs`, `response_format` and `logit_bias` on the real engine with the default model,
through the official `openai` client (marked slow; CI runs it)."""
from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.support.server import running_server

pytestmark = pytest.mark.slow
MESSAGES = [{"role": "user", "content": "Name a large city and its population."}]
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 30}, "population": {"type": "integer", "minimum": 0}},
    "required": ["city", "population"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("server")) as base:
        yield openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0, timeout=300)


MODEL = "SmolLM2-135M-Instruct"


def _streamed(client, **kwargs):
    content, logprobs = "", []
    for chunk in client.chat.completions.create(model=MODEL, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            if choice.logprobs is not None:
                logprobs += choice.logprobs.content
    return content, logprobs


def test_logprobs_with_alternatives_whole_and_streamed(client):
    kwargs = dict(messages=MESSAGES, max_tokens=20, temperature=0, logprobs=True, top_logprobs=3)
    whole = client.chat.completions.create(model=MODEL, **kwargs)
    content = whole.choices[0].message.content
    entries = whole.choices[0].logprobs.content
    assert len(entries) == whole.usage.completion_tokens
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        ranked = [t.logprob for t in entry.top_logprobs]
        assert ranked == sorted(ranked, reverse=True)
        # Greedy decoding picks the most likely token.
        assert entry.top_logprobs[0].token == entry.token
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    assert content.strip() and content.strip() in "".join(e.token for e in entries)
    streamed_content, streamed_entries = _streamed(client, **kwargs)
    assert streamed_content == content
    assert [e.token for e in streamed_entries] == [e.token for e in entries]
    # The repeat reuses the cached prompt: bf16 arithmetic over other block shapes moves the
    # values a little, never the greedy tokens.
    assert [e.logprob for e in streamed_entries] == pytest.approx([e.logprob for e in entries], abs=0.25)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_response_validates(client, stream):
    kwargs = dict(
        messages=MESSAGES, max_tokens=60, temperature=0.7, seed=3,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": CITY, "strict": True}},
    )
    if stream:
        content, _ = _streamed(client, **kwargs)
    else:
        content = client.chat.completions.create(model=MODEL, **kwargs).choices[0].message.content
    jsonschema.validate(json.loads(content), CITY)


def test_json_object_response_is_a_json_object(client):
    response = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=60, temperature=0, response_format={"type": "json_object"}
    )
    assert response.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(response.choices[0].message.content), dict)


def test_logit_bias_bans_the_greedy_first_token(client):
    first = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True
    ).choices[0].logprobs.content[0].token
    from tokenizers import Tokenizer

    from functionary.backends.default_model import ensure_default_model

    tokenizer = Tokenizer.from_file(str(ensure_default_model() / "tokenizer.json"))
    banned = [tid for tid in range(tokenizer.get_vocab_size()) if tokenizer.decode([tid]) == first]
    assert banned
    biased = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=4, temperature=0, logprobs=True,
        logit_bias={str(tid): -100 for tid in banned},
    ).choices[0].logprobs.content[0].token
    assert biased != first
