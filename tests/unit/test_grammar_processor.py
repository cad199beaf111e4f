"""The vLLM logits processor without an engine: batch bookkeeping, masking, and never raising.

vLLM's interface is driven by hand (BatchUpdate with added / moved / removed rows, the
running output-id lists vLLM shares with processors); the tokenizer index is the default
model's tokenizer with the v3.llama3 markers as special tokens.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("vllm")
torch = pytest.importorskip("torch")

from vllm import SamplingParams  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402

from functionary.grammar import CONSTRAINT_KEY, GrammarError, TokenizerIndex, compile_constraint  # noqa: E402
from functionary.grammar import vllm_processor  # noqa: E402
from functionary.grammar.vllm_processor import FunctionaryLogitsProcessor  # noqa: E402
from tests.support.tokenizers import build_format_tokenizer  # noqa: E402

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
SPEC = {"version": "v3.llama3", "tools": TOOLS, "tool_choice": "required"}


@pytest.fixture(scope="module")
def tok_index():
    tok = build_format_tokenizer("v3.llama3")
    return tok, TokenizerIndex.from_tokenizer(tok)


@pytest.fixture()
def proc(tok_index):
    p = FunctionaryLogitsProcessor(SimpleNamespace(model_config=None), torch.device("cpu"), False)
    p._index = tok_index[1]
    return p


def params(spec=SPEC):
    return SamplingParams(max_tokens=32, extra_args={CONSTRAINT_KEY: spec} if spec is not None else None)


def update(size, added=(), removed=(), moved=()):
    return BatchUpdate(batch_size=size, removed=list(removed), added=list(added), moved=list(moved))


def ids(tok, text):
    return tok.encode(text, add_special_tokens=False)


def test_processor_contract(proc):
    assert proc.is_argmax_invariant() is False
    FunctionaryLogitsProcessor.validate_params(params())
    FunctionaryLogitsProcessor.validate_params(params(None))
    with pytest.raises(ValueError):
        FunctionaryLogitsProcessor.validate_params(params({"version": "v9"}))
    assert issubclass(GrammarError, ValueError)


def test_masks_follow_the_output(proc, tok_index):
    tok, index = tok_index
    width = index.vocab_size
    out0: list[int] = []
    out1: list[int] = []
    proc.update_state(update(2, added=[(0, params(), [1, 2], out0), (1, params(None), [1, 2], out1)]))
    assert set(proc._reqs) == {0}  # row 1 has no constraint: untouched
    logits = torch.zeros(2, width)
    proc.apply(logits)
    allowed = torch.isfinite(logits[0]).numpy()
    assert allowed[ids(tok, "get")[0]] and not allowed[ids(tok, "Hello")[0]]
    assert torch.isfinite(logits[1]).all()

    for t in ids(tok, 'get_weather\n{"city": "Pa'):
        logits = torch.zeros(2, width)
        proc.apply(logits)
        assert torch.isfinite(logits[0, t])  # every token of a valid call is allowed
        out0.append(t)  # vLLM appends the sampled token to the shared list
        proc.update_state(None)
    logits = torch.zeros(2, width)
    proc.apply(logits)
    allowed = torch.isfinite(logits[0]).numpy()
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert not allowed[eot] and allowed[ids(tok, "ris")[0]]

    # Rows move (vLLM condenses its batch): the state follows the request.
    proc.update_state(update(2, moved=[(0, 1, MoveDirectionality.UNIDIRECTIONAL)]))
    assert set(proc._reqs) == {1}
    logits = torch.zeros(2, width)
    proc.apply(logits)
    assert torch.isfinite(logits[0]).all() and not torch.isfinite(logits[1, eot])
    proc.update_state(update(1, removed=[1]))
    assert not proc._reqs


def test_output_shrinks_and_placeholders(proc, tok_index):
    tok, index = tok_index
    out: list[int] = []
    proc.update_state(update(1, added=[(0, params(), None, out)]))
    out += ids(tok, 'get_weather\n{"city": "x"}')
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits)
    assert torch.isfinite(logits[0, tok.convert_tokens_to_ids("<|eot_id|>")])
    del out[-3:]  # vLLM dropped tokens (e.g. a failed KV load): the cursor follows
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits)
    assert not torch.isfinite(logits[0, tok.convert_tokens_to_ids("<|eot_id|>")])
    out.append(-1)  # async scheduling placeholder: this step is left alone
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits)
    assert torch.isfinite(logits[0]).all()


def test_resumed_request_replays_its_output(proc, tok_index):
    tok, index = tok_index
    out = ids(tok, "get_weather\n{")
    proc.update_state(update(1, added=[(0, params(), None, out)]))  # preempted and resumed
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits)
    allowed = torch.isfinite(logits[0]).numpy()
    assert allowed[ids(tok, '"')[0]] and not allowed[ids(tok, "get")[0]]


def test_errors_never_reach_the_engine(proc, tok_index):
    tok, index = tok_index
    before = dict(vllm_processor.STATS)
    bad = {"version": "v3.llama3", "tools": [], "tool_choice": "required"}  # cannot compile
    out: list[int] = []
    proc.update_state(update(2, added=[(0, params(bad), None, []), (1, params(), None, out)]))
    assert set(proc._reqs) == {1}
    out.append(ids(tok, "Hello")[0])  # leaves the grammar: dropped, logged, unconstrained
    logits = torch.zeros(2, index.vocab_size)
    proc.apply(logits)
    assert torch.isfinite(logits).all() and not proc._reqs
    assert vllm_processor.STATS["failed"] - before.get("failed", 0) == 2


def test_after_the_end_nothing_is_constrained(proc, tok_index):
    tok, index = tok_index
    out = ids(tok, 'get_weather\n{"city": "x"}<|eot_id|>')
    proc.update_state(update(1, added=[(0, params(), None, out)]))
    logits = torch.zeros(1, index.vocab_size)
    proc.apply(logits)
    assert torch.isfinite(logits).all()
    out += ids(tok, " more text")  # e.g. ignore_eos: still fine
    proc.apply(logits)
    assert proc._reqs and torch.isfinite(logits).all()


def test_cached_masks_reuse_their_bias(proc, tok_index):
    tok, index = tok_index
    g = compile_constraint(SPEC)
    a, b = [], []
    proc.update_state(update(2, added=[(0, params(), None, a), (1, params(), None, b)]))
    logits = torch.zeros(2, index.vocab_size)
    proc.apply(logits)
    assert torch.equal(torch.isfinite(logits[0]), torch.isfinite(logits[1]))
    mask = index.cursor(g).mask()
    assert index.is_cached(mask) and any(v[0] is mask for v in proc._masks.values())
    assert np.array_equal(torch.isfinite(logits[0]).numpy(), mask)
