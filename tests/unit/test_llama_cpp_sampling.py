"""The llama.cpp back end's numpy sampler against independent references: vLLM's own
`apply_penalties` for the penalties, the softmax distribution for draws, and the definitions
of top_k / top_p / min_p (OpenAI's and vLLM's documentation)."""
from __future__ import annotations

import numpy as np
import pytest

from functionary.backends.base import GenerationParams
from functionary.backends.llama_cpp_sampling import Sampler, SamplerSettings, check_params

V = 64


def logits_row(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 2, V).astype(np.float32)


def test_penalties_equal_vllms_apply_penalties():
    torch = pytest.importorskip("torch")
    utils = pytest.importorskip("vllm.model_executor.layers.utils")
    prompt = [1, 2, 3, 3, 10]
    output = [3, 4, 4, 4, 11, 12, 12]
    settings = SamplerSettings(presence_penalty=0.7, frequency_penalty=0.3, repetition_penalty=1.3)
    sampler = Sampler(settings, V, prompt, stop_ids=[0])
    for token in output:
        sampler.accept(token)
    row = logits_row(1)
    ours = sampler.adjust(row.copy())
    reference = utils.apply_penalties(
        torch.tensor(row).unsqueeze(0), torch.tensor([prompt]), torch.tensor([output]),
        torch.tensor([0.7]), torch.tensor([0.3]), torch.tensor([1.3]),
    )[0].numpy()
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_greedy_takes_the_largest_allowed_logit():
    row = logits_row(2)
    best = int(np.argmax(row))
    assert Sampler(SamplerSettings(temperature=0.0), V, [], []).sample(row.copy()) == best
    allowed = np.ones(V, dtype=bool)
    allowed[best] = False
    second = int(np.argsort(row)[-2])
    assert Sampler(SamplerSettings(temperature=0.0), V, [], []).sample(row.copy(), allowed) == second


def test_min_tokens_holds_back_stop_tokens_until_reached():
    row = np.zeros(V, dtype=np.float32)
    row[5] = 10.0  # the stop token is by far the likeliest
    sampler = Sampler(SamplerSettings(temperature=0.0, min_tokens=2), V, [], stop_ids=[5])
    assert sampler.sample(row.copy()) != 5
    sampler.accept(1)
    assert sampler.sample(row.copy()) != 5
    sampler.accept(1)
    assert sampler.sample(row.copy()) == 5


def test_draws_follow_the_softmax_distribution():
    row = np.log(np.array([0.5, 0.3, 0.2] + [1e-12] * (V - 3), dtype=np.float64)).astype(np.float32)
    sampler = Sampler(SamplerSettings(temperature=1.0), V, [], [], seed=7)
    draws = np.bincount([sampler.sample(row.copy()) for _ in range(6000)], minlength=V)
    np.testing.assert_allclose(draws[:3] / 6000, [0.5, 0.3, 0.2], atol=0.03)


def test_top_k_top_p_min_p_keep_only_their_tokens():
    probs = np.array([0.4, 0.25, 0.2, 0.1, 0.05] + [0.0] * (V - 5))
    row = np.where(probs > 0, np.log(np.maximum(probs, 1e-300)), -np.inf).astype(np.float32)

    def support(**kw):
        sampler = Sampler(SamplerSettings(**kw), V, [], [], seed=3)
        return {sampler.sample(row.copy()) for _ in range(800)}

    assert support(top_k=2) == {0, 1}
    # top_p=0.6: 0.4 alone is short of 0.6, 0.4+0.25 reaches it -> two tokens.
    assert support(top_p=0.6) == {0, 1}
    # min_p=0.45: tokens at least 0.45 times as likely as the best (0.4 -> 0.18): 0.4, 0.25, 0.2.
    assert support(min_p=0.45) == {0, 1, 2}


def test_same_seed_same_tokens_and_choices_differ():
    row = np.zeros(V, dtype=np.float32)

    def draws(seed, index):
        sampler = Sampler(SamplerSettings(), V, [], [], seed=seed, index=index)
        return [sampler.sample(row.copy()) for _ in range(20)]

    assert draws(42, 0) == draws(42, 0)
    assert draws(42, 0) != draws(42, 1)


@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("top_p", 0.0), ("top_k", -2), ("min_p", 1.5), ("repetition_penalty", 0.0),
    ("presence_penalty", 2.5), ("frequency_penalty", -3.0), ("max_tokens", 0), ("min_tokens", -1),
])
def test_out_of_range_parameters_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        check_params(GenerationParams(**{field: value}))
