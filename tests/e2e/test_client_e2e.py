"""`functionary.client` against the real `server_vllm.py` on the default model (marked slow).

The default model is tiny and not trained on the functionary format, so a named `tool_choice`
makes the call happen; what it writes as arguments is up to it. The runner must run the call,
send its result (or the validation error) back tied to the call's id, and finish the round trip.
"""
from __future__ import annotations

import re

import pytest
from openai import AsyncOpenAI

from functionary.client import ChatRunner, tool
from tests.support.server import running_server

pytestmark = pytest.mark.slow
QUESTION = "What is the price of the car named Tang?"


@tool
def get_car_price(car_name: str) -> dict:
    """Get the price of a car given its name.

    Args:
        car_name: The name of the car.
    """
    prices = {"tang": 20000, "song": 25000}
    return {"car_name": car_name, "price": f"${prices[car_name.strip().lower()]}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("client-server")) as base:
        yield f"{base}/v1"


@pytest.mark.anyio
@pytest.mark.parametrize("stream", [False, True])
async def test_car_price_with_a_named_tool_choice(server, stream):
    async with AsyncOpenAI(base_url=server, api_key="unused", max_retries=0, timeout=300) as client:
        model = (await client.models.list()).data[0].id
        runner = ChatRunner(client, model=model, tools=[get_car_price], max_rounds=2, temperature=0, max_tokens=40,
                            tool_choice={"type": "function", "function": {"name": "get_car_price"}})
        messages = [{"role": "user", "content": QUESTION}]
        if stream:
            events = [e async for e in runner.stream(messages)]
            result = events[-1].result
        else:
            result = await runner.run(messages)
    first = result.tool_results[0]
    assert first.name == "get_car_price" and re.fullmatch(r"call_[A-Za-z0-9]{24}", first.tool_call_id)
    assert first.error in (None, "invalid_arguments", "exception")
    if first.error is None:
        assert "price" in first.content
    else:
        assert first.content.startswith("Error: ")
    assistant, tool_message = result.new_messages[:2]
    assert assistant["tool_calls"][0]["id"] == tool_message["tool_call_id"] == first.tool_call_id
    assert tool_message["content"] == first.content
    assert result.rounds >= 2 and len(result.new_messages) >= 3  # the result went back to the model
