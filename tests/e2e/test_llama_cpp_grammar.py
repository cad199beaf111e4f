"""The random grammar sweep of `test_grammar_server.py` (same hypothesis-drawn schemas, every
tool_choice, parallel calls on and off, streaming and not, the same checks) against
`server_llama_cpp.py`: the same structural tag, compiled by xgrammar for the GGUF's vocabulary and
applied to llama.cpp's logits, gives the same guarantee as on vLLM."""
from __future__ import annotations

import asyncio

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.test_grammar_server import BATCH_SIZE, CONCURRENCY, check, complete, requests
from tests.support.server import running_server

pytest.importorskip("llama_cpp", reason="the llama.cpp back end needs: pip install 'functionary[llama-cpp]'")
pytestmark = pytest.mark.slow

# The first BATCHES batches of the vLLM sweep (hypothesis draws the same ones, derandomized):
# 96 requests keep this suite within CI's budget on 2 shared cores.
BATCHES = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("llama-cpp-grammar"), ["--parallel", str(CONCURRENCY)],
                        script="server_llama_cpp.py") as base:
        yield base


def test_hundreds_of_random_requests_give_valid_calls_on_llama_cpp(server):
    totals = {"requests": 0, "valid_calls": 0}

    @settings(max_examples=BATCHES, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(batch=st.lists(requests(), min_size=BATCH_SIZE, max_size=BATCH_SIZE))
    def sweep(batch):
        async def run():
            gate = asyncio.Semaphore(CONCURRENCY)
            async with openai.AsyncOpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0,
                                          timeout=600) as client:
                model = (await client.models.list()).data[0].id

                async def one(body):
                    async with gate:
                        return await complete(client, model, body)

                return await asyncio.gather(*(one(body) for body in batch))

        for body, result in zip(batch, asyncio.run(run())):
            totals["valid_calls"] += check(body, *result)
            totals["requests"] += 1

    sweep()
    assert totals["requests"] >= BATCHES * BATCH_SIZE
    assert totals["valid_calls"] >= totals["requests"] // 3
