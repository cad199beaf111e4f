"""The random grammar sweep of `test_grammar_server.py` (tests/support/grammar_sweep.py: same hypothesis-drawn schemas, every
tool_choice, parallel calls on and off, streaming and not, the same checks) against
`server_llama_cpp.py`: the same structural tag, compiled by xgrammar for the GGUF's vocabulary and
applied to llama.cpp's logits, gives the same guarantee as on vLLM."""
from __future__ import annotations

import pytest

from tests.support.grammar_sweep import BATCH_SIZE, CONCURRENCY, run_sweep
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
    totals = run_sweep(server, BATCHES)
    assert totals["requests"] >= BATCHES * BATCH_SIZE
    assert totals["valid_calls"] >= totals["requests"] // 3
