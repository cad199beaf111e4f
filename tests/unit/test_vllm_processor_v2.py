"""Grammar sampling on vLLM's V2 model runner, driven by hand through the V2 interface.

vLLM's CPU build runs the V1 runner (the V2 one needs Triton), so the V2 processor is checked
here against the interface's contract (`vllm/v1/worker/gpu/sample/logits_processor/interface.py`):
vLLM's own V2 loader must accept the class path (and its V1 loader too), requests are keyed by
slot and re-initialised by `add_request`, the committed tokens are read from
`all_token_ids[slot, prompt_len:total_len]`, and `apply` maps rows to slots with the context.
The expected masks are the grammar's own (`TokenizerIndex.cursor`), as in the V1 tests.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import _load_logitsprocs_by_fqcns  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor.loader import _load_v2_logitsprocs  # noqa: E402

from functionary.grammar import CONSTRAINT_KEY, VLLM_LOGITS_PROCESSOR, TokenizerIndex, compile_constraint  # noqa: E402
from functionary.grammar.vllm_processor import FunctionaryLogitsProcessor  # noqa: E402
from functionary.grammar.vllm_processor_v2 import (  # noqa: E402
    SPECULATIVE_DECODING_ERROR,
    FunctionaryLogitsProcessorAnyRunner,
    FunctionaryLogitsProcessorV2,
)
from tests.support.tokenizers import build_format_tokenizer  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SPEC = {"version": "v3.llama3", "tools": TOOLS, "tool_choice": "required"}
MAX_REQS, MAX_LEN = 4, 64


@pytest.fixture(scope="module")
def tok_index():
    tok = build_format_tokenizer("v3.llama3")
    return tok, TokenizerIndex.from_tokenizer(tok)


class Runner:
    """The runner's per-slot buffers as the V2 interface describes them (CPU tensors here)."""

    def __init__(self) -> None:
        self.all_token_ids = torch.zeros(MAX_REQS, MAX_LEN, dtype=torch.int32)
        self.prompt_len = np.zeros(MAX_REQS, dtype=np.int32)
        self.total_len = torch.zeros(MAX_REQS, dtype=torch.int32)
        self.states = LogitsProcRequestState(
            device=torch.device("cpu"), max_num_reqs=MAX_REQS, vocab_size=0,
            all_token_ids=SimpleNamespace(gpu=self.all_token_ids),
            prompt_len=SimpleNamespace(np=self.prompt_len),
            prefill_len=SimpleNamespace(np=self.prompt_len),
            total_len=SimpleNamespace(gpu=self.total_len),
        )

    def start(self, slot: int, prompt: list[int]) -> None:
        self.prompt_len[slot] = len(prompt)
        self.all_token_ids[slot, : len(prompt)] = torch.tensor(prompt)
        self.total_len[slot] = len(prompt)

    def commit(self, slot: int, token: int) -> None:
        self.all_token_ids[slot, int(self.total_len[slot])] = token
        self.total_len[slot] += 1


def context(slots: list[int]) -> LogitsContext:
    idx = torch.tensor(slots)
    return LogitsContext(expanded_idx_mapping=idx, idx_mapping=idx, idx_mapping_np=np.array(slots),
                         expanded_local_pos=torch.zeros(len(slots), dtype=torch.long),
                         input_ids=torch.zeros(len(slots), dtype=torch.long), pos=torch.zeros(len(slots)),
                         seq_lens_upper_bound_np=np.zeros(len(slots)))


def params(spec=SPEC):
    return SamplingParams(max_tokens=32, extra_args={CONSTRAINT_KEY: spec} if spec is not None else None)


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def make(tok_index, runner, config=None):
    proc = FunctionaryLogitsProcessorAnyRunner(config or SimpleNamespace(model_config=None), runner.states)
    proc._grammar._index = tok_index[1]
    return proc


def test_both_runners_loaders_accept_the_class_path_and_get_their_interface(tok_index):
    assert _load_v2_logitsprocs([VLLM_LOGITS_PROCESSOR]) == [FunctionaryLogitsProcessorAnyRunner]
    assert _load_logitsprocs_by_fqcns([VLLM_LOGITS_PROCESSOR]) == [FunctionaryLogitsProcessorAnyRunner]
    config = SimpleNamespace(model_config=None)
    assert type(FunctionaryLogitsProcessorAnyRunner(config, Runner().states)) is FunctionaryLogitsProcessorV2
    v1 = FunctionaryLogitsProcessorAnyRunner(config, torch.device("cpu"), False)
    assert type(v1) is FunctionaryLogitsProcessor
    FunctionaryLogitsProcessorAnyRunner.validate_params(params())
    with pytest.raises(ValueError):
        FunctionaryLogitsProcessorAnyRunner.validate_params(params({"version": "v9"}))


def test_speculative_decoding_is_refused_at_construction():
    config = SimpleNamespace(model_config=None, speculative_config=object())
    with pytest.raises(ValueError, match="xgrammar") as info:
        FunctionaryLogitsProcessorAnyRunner(config, Runner().states)
    assert str(info.value) == SPECULATIVE_DECODING_ERROR


def test_masks_follow_the_committed_tokens_per_slot(tok_index):
    tok, index = tok_index
    runner = Runner()
    proc = make(tok_index, runner)
    runner.start(2, [1, 2, 3])
    runner.start(0, [1, 2])
    assert proc.add_request(2, params()) is True
    assert proc.add_request(0, params(None)) is False  # not constrained: untouched
    cursor = index.cursor(compile_constraint(SPEC))
    # Batch order is not slot order: row 0 is slot 0, row 1 is slot 2.
    for t in ids(tok, 'get_weather\n{"city": "Pa'):
        logits = torch.zeros(2, index.vocab_size)
        proc.apply(logits, context([0, 2]))
        assert torch.isfinite(logits[0]).all()
        assert np.array_equal(torch.isfinite(logits[1]).numpy(), cursor.mask())
        assert torch.isfinite(logits[1, t])
        runner.commit(2, t)
        cursor.advance(t)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits, context([2]))
    assert not torch.isfinite(logits[0, eot]) and torch.isfinite(logits[0, ids(tok, "ris")[0]])


def test_a_reused_slot_starts_afresh_and_dropped_tokens_rewind(tok_index):
    tok, index = tok_index
    runner = Runner()
    proc = make(tok_index, runner)
    runner.start(1, [5])
    proc.add_request(1, params())
    for t in ids(tok, 'get_weather\n{"city": "x"}'):
        runner.commit(1, t)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits, context([1]))
    assert torch.isfinite(logits[0, eot])
    runner.total_len[1] -= 3  # the runner dropped tokens: the cursor follows
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits, context([1]))
    assert not torch.isfinite(logits[0, eot])

    # The slot goes to a new, unconstrained request: nothing of the old one remains.
    runner.start(1, [7, 7])
    assert proc.add_request(1, params(None)) is False
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits, context([1]))
    assert torch.isfinite(logits).all()
    # And to a constrained one again: its grammar starts at the beginning.
    proc.add_request(1, params())
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits, context([1]))
    assert np.array_equal(torch.isfinite(logits[0]).numpy(), index.cursor(compile_constraint(SPEC)).mask())


def test_errors_never_reach_the_engine(tok_index):
    tok, index = tok_index
    runner = Runner()
    proc = make(tok_index, runner)
    bad = {"version": "v3.llama3", "tools": [], "tool_choice": "required"}  # cannot compile
    runner.start(0, [1])
    runner.start(1, [1])
    assert proc.add_request(0, params(bad)) is False
    assert proc.add_request(1, params()) is True
    runner.commit(1, ids(tok, "Hello")[0])  # leaves the grammar: dropped, logged, unconstrained
    logits = torch.zeros(2, index.vocab_size)
    proc.apply(logits, context([0, 1]))
    assert torch.isfinite(logits).all()
    logits = torch.zeros(2, index.vocab_size)
    proc.apply(logits, context([0, 1]))
    assert torch.isfinite(logits).all()
