"""Seeded sampling on the real CPU engine while prompts are prefilled in chunks.

vLLM samples (and discards) a token for a request whose prompt is still being prefilled, then
rewinds the request's generator by its CUDA offset, which a CPU generator does not have: the
engine died (`functionary/backends/vllm_adapter.py`). Here a step's token budget (128) is far
below the prompt (~700 tokens), so the first run is prefilled in several chunks, each one
drawing and discarding; the repeat finds the prompt in the prefix cache and is prefilled in one
step. A seed means the same output both times only if every discarded draw was undone.
float32 keeps chunked and cached prefill numerically identical, so only the random stream can
make the runs differ.
"""
from __future__ import annotations

import asyncio
import os
import tempfile

import pytest

pytest.importorskip("vllm")

from functionary.backends.base import GenerationParams  # noqa: E402
from functionary.backends.engine_args import default_engine_args  # noqa: E402
from functionary.backends.vllm_backend import VLLMBackend  # noqa: E402

pytestmark = pytest.mark.slow

BUDGET = 128


def _prompt() -> str:
    notes = " ".join(f"item {i} weighs {(i * 7) % 13} kg and costs {(i * 11) % 17} dollars." for i in range(60))
    return f"<|im_start|>user\nHere is an inventory: {notes} Describe it.<|im_end|>\n<|im_start|>assistant\n"


async def _text(backend: VLLMBackend, request_id: str, ids: list[int], params: GenerationParams) -> str:
    return "".join([d.text async for d in backend.generate(request_id, ids, params)])


async def _run(in_process: bool) -> tuple[int, list[str], str]:
    args = default_engine_args(
        kv_cache_memory_bytes=256 * 2**20,
        max_model_len=2048,
        max_num_batched_tokens=BUDGET,
        dtype="float32",
        enable_prefix_caching=True,
    )
    backend = await VLLMBackend.start(args, in_process=in_process)
    try:
        ids = backend.tokenize(_prompt())
        seeded = GenerationParams(temperature=1.0, seed=1234, max_tokens=40)
        runs = [await _text(backend, f"seeded-{i}", ids, seeded) for i in range(3)]
        other = await _text(backend, "other-seed", ids, GenerationParams(temperature=1.0, seed=99, max_tokens=40))
        return len(ids), runs, other
    finally:
        await backend.shutdown()


@pytest.mark.parametrize("in_process", [True, False], ids=["in_process", "multiprocess"])
def test_seeded_output_does_not_depend_on_chunked_prefill(in_process, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("VLLM_RPC_BASE_PATH", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", None)
    n_prompt, runs, other = asyncio.run(_run(in_process))
    assert n_prompt > 4 * BUDGET  # the cold run was prefilled in several chunks
    assert runs[0] and runs[0] == runs[1] == runs[2]
    assert other != runs[0]  # the seed decides the output: the runs sampled, not decoded greedily
