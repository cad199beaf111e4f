"""The default model is served with its own context length (SmolLM2-135M: 8192 tokens), so a
request with many tools, which overflowed the 2048 tokens it once had, now works; with a KV cache
too small for that, the engine serves the longest context the cache holds (vLLM's "auto")."""
from __future__ import annotations

import asyncio
import json

import jsonschema
import openai
import pytest

from functionary.backends.default_model import ensure_default_model
from tests.support.server import running_server

pytestmark = pytest.mark.slow

N_TOOLS = 60


def tool(i: int) -> dict:
    return {
        "type": "function",
        "function": {
            "name": f"lookup_station_{i:02d}",
            "description": f"Read the weather station number {i} for a city and a number of days.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20, "description": "The city"},
                    "days": {"type": "integer", "minimum": 1, "maximum": 7, "description": "How many days"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "The unit"},
                },
                "required": ["city", "days", "unit"],
            },
        },
    }


def model_config() -> dict:
    return json.loads((ensure_default_model() / "config.json").read_text())


def test_default_server_takes_sixty_tools_beyond_2048_tokens(tmp_path):
    own_length = model_config()["max_position_embeddings"]
    assert own_length == 8192
    tools = [tool(i) for i in range(N_TOOLS)]
    with running_server(tmp_path) as base:
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0)
        (card,) = client.models.list().data
        assert card.model_extra["max_model_len"] == own_length
        response = client.chat.completions.create(
            model=card.id,
            messages=[{"role": "user", "content": "What is the weather in Oslo for 3 days, in celsius?"}],
            tools=tools,
            # "required", not a named choice: a named choice renders only the named tool.
            tool_choice="required",
            parallel_tool_calls=False,
            max_tokens=64,
            temperature=0,
        )
    assert response.usage.prompt_tokens > 2048  # would have been HTTP 400 with the old context
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name in {t["function"]["name"] for t in tools}
    jsonschema.validate(json.loads(call.function.arguments), tool(0)["function"]["parameters"])


def test_a_small_kv_cache_serves_the_longest_context_it_holds():
    from functionary.backends.engine_args import default_engine_args
    from functionary.backends.vllm_backend import VLLMBackend

    config = model_config()
    kv_bytes = 64 << 20
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    # K and V, per layer, per KV head, bf16.
    bytes_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2
    cache_tokens = kv_bytes // bytes_per_token
    assert cache_tokens < config["max_position_embeddings"]

    backend = VLLMBackend(default_engine_args(kv_cache_memory_bytes=kv_bytes), in_process=True)
    try:
        assert 2048 < backend.max_model_len <= cache_tokens
    finally:
        asyncio.run(backend.shutdown())
