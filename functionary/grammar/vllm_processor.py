"""Grammar sampling inside vLLM V1: a batch-level logits processor.

Load it at engine start::

    LLM(model, logits_processors=[functionary.grammar.VLLM_LOGITS_PROCESSOR])
    # server: --logits-processors functionary.grammar.vllm_processor_v2:FunctionaryLogitsProcessorAnyRunner

and constrain a request by putting the JSON spec into its sampling parameters::

    SamplingParams(extra_args={"functionary_constraint": {
        "version": "v3.llama3", "tools": [...], "tool_choice": "auto", "parallel_tool_calls": True}})

(`functionary.grammar.constraint_for_prompt` builds the spec from a rendered request.)
Requests without the key are untouched. The processor runs where the model runs (the engine
core process); only that JSON crosses. It never raises into the engine: a request whose spec
cannot be compiled, or whose output leaves the grammar, is logged and no longer constrained.

This is the processor of vLLM's V1 model runner. Its V2 model runner (vLLM's default wherever
Triton is installed, i.e. on GPUs) loads processors of another interface:
`functionary.grammar.vllm_processor_v2.FunctionaryLogitsProcessorV2`, which shares the grammar
masks below (`GrammarMasks`). `functionary.grammar.VLLM_LOGITS_PROCESSOR` names a class that
either runner's loader accepts and that constructs the processor of that runner.
"""
from __future__ import annotations

import logging
from collections import Counter, OrderedDict
from typing import TYPE_CHECKING, Any, Optional

import numpy as np
import torch

from vllm import SamplingParams
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor
from vllm.v1.sample.logits_processor.builtin import process_dict_updates

from .constraint import compile_constraint
from .errors import GrammarError
from .spec import CONSTRAINT_KEY, parse_spec
from .tokens import TokenCursor, TokenizerIndex, index_for_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)

_DEVICE_MASKS = 128  # cached masks kept as ready-made bias tensors (~200 KB each)

#: Counters of this process (for tests and metrics): constrained `requests`, and `failed` ones
#: (spec not compiled, or no longer constrained after an error; each is logged).
STATS: Counter = Counter()


# torch splits element-wise ops on more elements than this across its OpenMP threads; a row is
# added in slices below it, so that masking never waits on a thread (which on a busy CPU
# machine costs milliseconds per row).
_SLICE = 32768


def _add(row: torch.Tensor, bias: torch.Tensor) -> None:
    if row.device.type != "cpu" or row.shape[0] <= _SLICE:
        row.add_(bias)
        return
    for start in range(0, row.shape[0], _SLICE):
        row[start:start + _SLICE].add_(bias[start:start + _SLICE])


class _Request:
    """One constrained request: its cursor and a reference to vLLM's running output ids."""

    __slots__ = ("cursor", "output_ids", "history", "spec_digest")

    def __init__(self, cursor: TokenCursor, output_ids: list[int], digest: str) -> None:
        self.cursor = cursor
        self.output_ids = output_ids
        # (state, pending) before each consumed token, to follow vLLM when it drops tokens.
        self.history: list[tuple] = []
        self.spec_digest = digest

    def sync(self) -> bool:
        """Advance over the tokens sampled since the last step. False: not known yet (an
        async-scheduling placeholder); raises GrammarViolation when a token breaks the grammar."""
        ids = self.output_ids
        cursor = self.cursor
        if len(ids) < len(self.history):
            cursor.state, cursor.pending = self.history[len(ids)]
            del self.history[len(ids):]
        for token in ids[len(self.history):]:
            if token < 0:
                return False
            self.history.append((cursor.state, cursor.pending))
            if not cursor.done:
                cursor.advance(token)
        return True


class GrammarMasks:
    """What both processors (V1 and V2 model runner) share: the tokenizer's index, compiling a
    request's constraint into a cursor, and masking a logits row by the cursor."""

    def __init__(self, model_config: Any) -> None:
        self._model_config = model_config
        self._index: Optional[TokenizerIndex] = None
        self._index_error: Optional[BaseException] = None
        self._masks: "OrderedDict[tuple, tuple[np.ndarray, torch.Tensor]]" = OrderedDict()

    @staticmethod
    def validate_params(sampling_params: SamplingParams) -> None:
        extra = sampling_params.extra_args
        if extra and extra.get(CONSTRAINT_KEY) is not None:
            parse_spec(extra[CONSTRAINT_KEY])  # GrammarError is a ValueError: HTTP 400

    def new_request(self, params: SamplingParams, output_ids: list[int]) -> Optional[_Request]:
        """The request's grammar state, or None when it is not constrained (or cannot be)."""
        extra = params.extra_args
        if not extra or extra.get(CONSTRAINT_KEY) is None:
            return None
        try:
            grammar = compile_constraint(extra[CONSTRAINT_KEY])
            cursor = self._tokenizer_index().cursor(grammar)
        except Exception:  # noqa: BLE001
            logger.exception("cannot compile the grammar of a request; it is not constrained")
            STATS["failed"] += 1
            return None
        STATS["requests"] += 1
        return _Request(cursor, output_ids, grammar.spec.digest)

    def mask_row(self, row: torch.Tensor, req: _Request) -> bool:
        """Mask `row` (one request's logits) to what its grammar allows next. False: the request
        failed (logged) and must no longer be constrained; never raises into the engine."""
        try:
            bias = self._bias(req, row)
            if bias is not None:
                _add(row, bias)
            return True
        except Exception:  # noqa: BLE001 - never take the engine down
            logger.exception("grammar sampling failed; request no longer constrained")
            STATS["failed"] += 1
            return False

    def _tokenizer_index(self) -> TokenizerIndex:
        if self._index is None:
            if self._index_error is not None:
                raise self._index_error
            try:
                from vllm.tokenizers.registry import cached_tokenizer_from_config

                tokenizer = cached_tokenizer_from_config(self._model_config)
                if tokenizer is None:
                    raise GrammarError("grammar sampling needs the tokenizer (skip_tokenizer_init is set)")
                eos = set()
                hf_eos = getattr(getattr(self._model_config, "hf_config", None), "eos_token_id", None)
                if isinstance(hf_eos, int):
                    eos.add(hf_eos)
                elif isinstance(hf_eos, (list, tuple)):
                    eos.update(i for i in hf_eos if isinstance(i, int))
                self._index = index_for_tokenizer(
                    tokenizer, vocab_size=self._model_config.get_vocab_size(), eos_token_ids=eos
                )
            except Exception as exc:
                self._index_error = exc  # logged once per request by the caller; not retried
                raise
        return self._index

    def _bias(self, req: _Request, row: torch.Tensor) -> Optional[torch.Tensor]:
        """0 where the grammar allows a token, -inf elsewhere (adding it is much cheaper than
        a masked fill); cached for cached masks."""
        if not req.sync() or req.cursor.done:
            # After the end of the turn nothing is constrained: the engine normally stopped
            # there (stop string / end token), and the parser ignores whatever follows.
            return None
        allowed = req.cursor.mask()
        width = row.shape[-1]
        key = (id(allowed), width, row.dtype, row.device)
        hit = self._masks.get(key)
        if hit is not None and hit[0] is allowed:
            self._masks.move_to_end(key)
            return hit[1]
        if not allowed.any():
            raise GrammarError(f"the grammar allows no token in state {req.cursor.state!r}")
        n = min(allowed.shape[0], width)
        bias_np = np.full(width, -np.inf, dtype=np.float32)
        bias_np[:n][allowed[:n]] = 0.0
        bias = torch.from_numpy(bias_np)
        if bias.dtype != row.dtype or bias.device != row.device:
            bias = bias.to(device=row.device, dtype=row.dtype)
        if req.cursor.index.is_cached(allowed):
            self._masks[key] = (allowed, bias)
            while len(self._masks) > _DEVICE_MASKS:
                self._masks.popitem(last=False)
        return bias


class FunctionaryLogitsProcessor(LogitsProcessor):
    """Masks every token the request's grammar does not allow next (see module docstring).
    The V1 model runner's interface: rows are batch positions, vLLM hands over each request's
    running output ids (a list it appends to)."""

    def __init__(self, vllm_config: "VllmConfig", device: torch.device, is_pin_memory: bool) -> None:
        self._grammar = GrammarMasks(vllm_config.model_config)
        self._reqs: dict[int, _Request] = {}

    # -- vLLM interface ---------------------------------------------------------------------------

    @classmethod
    def validate_params(cls, sampling_params: SamplingParams) -> None:
        GrammarMasks.validate_params(sampling_params)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes greedy picks too

    def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
        process_dict_updates(self._reqs, batch_update, self._new_request)

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if not self._reqs:
            return logits
        dropped = [row for row, req in self._reqs.items() if not self._grammar.mask_row(logits[row], req)]
        for row in dropped:
            self._reqs.pop(row, None)
        return logits

    def _new_request(self, params: SamplingParams, prompt_ids: Any, output_ids: list[int]) -> Optional[_Request]:
        return self._grammar.new_request(params, output_ids)

    # The shared state under the names it had before `GrammarMasks` (tests set the index).
    @property
    def _index(self) -> Optional[TokenizerIndex]:
        return self._grammar._index

    @_index.setter
    def _index(self, index: Optional[TokenizerIndex]) -> None:
        self._grammar._index = index

    @property
    def _masks(self) -> "OrderedDict[tuple, tuple[np.ndarray, torch.Tensor]]":
        return self._grammar._masks
