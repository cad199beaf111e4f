"""The llama.cpp back end in process, on the real engine with the default GGUF: its tokenization
of rendered prompts against the vLLM back end's (the same Hugging Face tokenizer through vLLM's
own loader), and the engine's behaviour that HTTP does not show (n > 1 shares one prompt, a
stream closed early leaves no sequence behind)."""
from __future__ import annotations

import asyncio

import pytest

from functionary.backends.base import GenerationParams
from functionary.prompt_template import build_inference_prompt, get_prompt_template_by_version

pytest.importorskip("llama_cpp", reason="the llama.cpp back end needs: pip install 'functionary[llama-cpp]'")
pytestmark = pytest.mark.slow

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
CONVERSATIONS = [
    [{"role": "user", "content": "What is the weather in Paris?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Grüße aus Zürich, 深圳 and 🌧️!"}],
    [{"role": "user", "content": "Weather in Oslo?"},
     {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
         "name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
     {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": -3}"},
     {"role": "user", "content": "  and   tomorrow?\n\n"}],
]


def rendered_prompts() -> list[str]:
    prompts = []
    for version in ("v3.llama3", "v3-llama3.1", "hermes"):
        template = get_prompt_template_by_version(version)
        for messages in CONVERSATIONS:
            prompts.append(build_inference_prompt(template, messages, tools=TOOLS).prompt)
    return prompts


@pytest.fixture(scope="module")
def hf_folder():
    from functionary.backends.default_model import ensure_default_model

    return str(ensure_default_model())


@pytest.fixture(scope="module")
def backends(hf_folder):
    from functionary.backends.llama_cpp import LlamaCppBackend, LlamaCppOptions

    with_hf = LlamaCppBackend(LlamaCppOptions(tokenizer=hf_folder, parallel=4, n_ctx=2048))
    own = LlamaCppBackend(LlamaCppOptions(parallel=4, n_ctx=2048))
    yield with_hf, own
    asyncio.run(with_hf.shutdown())
    asyncio.run(own.shutdown())


def test_hf_tokenizer_path_gives_the_vllm_backends_token_ids(backends, hf_folder):
    registry = pytest.importorskip("vllm.tokenizers.registry")
    vllm_tokenizer = registry.get_tokenizer(hf_folder)  # what the vLLM engine loads for this model
    with_hf, own = backends
    for prompt in rendered_prompts():
        expected = list(vllm_tokenizer.encode(prompt, add_special_tokens=True))
        assert with_hf.tokenize(prompt) == expected
        # The GGUF's own vocabulary (llama.cpp's tokenizer) agrees on this model, too.
        assert own.tokenize(prompt) == expected


def test_n_choices_share_one_prompt_and_a_closed_stream_leaves_nothing(backends):
    _, backend = backends
    prompt = backend.tokenize(rendered_prompts()[0])

    async def run():
        params = GenerationParams(max_tokens=12, temperature=1.0, seed=5, n=3, ignore_eos=True)
        counts = {}
        async for delta in backend.generate("n3", prompt, params):
            counts[delta.index] = counts.get(delta.index, 0) + len(delta.token_ids)
        stream = backend.generate("gone", prompt, GenerationParams(max_tokens=500, ignore_eos=True))
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(100):
            state = await backend.engine_state()
            if state["running_sequences"] == 0:
                break
            await asyncio.sleep(0.02)
        return counts, state

    counts, state = asyncio.run(run())
    assert counts == {0: 12, 1: 12, 2: 12}
    assert state["running_sequences"] == 0 and state["waiting"] == 0


def test_n_ctx_and_parallel_bound_what_a_request_may_ask(backends):
    # `--n-ctx 2048 --parallel 4` (not the defaults, 4096 and 8): a prompt of 2048 tokens does not
    # fit one sequence's context, and n above the sequences decoded together is refused.
    from functionary.backends.llama_cpp import BadRequestError

    _, backend = backends
    assert backend.max_model_len == 2048
    prompt = backend.tokenize(rendered_prompts()[0])
    long_prompt = (prompt * (2048 // len(prompt) + 1))[:2048]

    async def first(token_ids, params):
        async for delta in backend.generate("flags", token_ids, params):
            return delta

    with pytest.raises(BadRequestError, match=r"does not fit the context \(2048\)"):
        asyncio.run(first(long_prompt, GenerationParams(max_tokens=1)))
    with pytest.raises(BadRequestError, match="n must be at most 4"):
        asyncio.run(first(prompt, GenerationParams(max_tokens=1, n=5)))
    assert asyncio.run(first(long_prompt[:2000], GenerationParams(max_tokens=1))) is not None
