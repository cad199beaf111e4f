"""Grammar sampling (`--grammar-backend lm-format-enforcer`) on vLLM's V2 model runner.

vLLM's V2 model runner (its default wherever Triton is installed, so on GPUs) loads logits
processors through `vllm.v1.worker.gpu.sample.logits_processor` and refuses classes of the V1
interface (`functionary.grammar.vllm_processor.FunctionaryLogitsProcessor`). This is the same
processor on the V2 interface, and `FunctionaryLogitsProcessorAnyRunner` (the class path
`functionary.grammar.VLLM_LOGITS_PROCESSOR`) is what to load: either runner accepts it. The per-request data is the same JSON spec in `SamplingParams.extra_args`.

What differs from V1: requests live in slots (`add_request(slot, params)`, called again when a
slot gets a new request, nothing when one leaves), the output so far is read from the runner's
token buffer (`all_token_ids[slot, prompt_len:total_len]`, device memory: only the tokens since
the last step are copied), and each step's rows are mapped to slots by `LogitsContext`.
Speculative decoding (several rows per request, draft tokens not yet committed) is refused at
engine start.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Optional

import torch

from vllm.v1.sample.logits_processor import LogitsProcessor as V1LogitsProcessor
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcessor, LogitsProcRequestState

from .vllm_processor import STATS, FunctionaryLogitsProcessor, GrammarMasks, _Request

if TYPE_CHECKING:  # pragma: no cover
    from vllm import SamplingParams
    from vllm.config import VllmConfig

logger = logging.getLogger(__name__)

SPECULATIVE_DECODING_ERROR = (
    "--grammar-backend lm-format-enforcer does not support speculative decoding on vLLM's V2 model "
    "runner; use --grammar-backend xgrammar (or drop the speculative config)"
)


class _SlotRequest:
    """A constrained request in a slot: its grammar state and the output ids copied so far."""

    __slots__ = ("req", "output_ids")

    def __init__(self, req: _Request, output_ids: list[int]) -> None:
        self.req = req
        self.output_ids = output_ids


class FunctionaryLogitsProcessorV2(LogitsProcessor):
    """Masks every token the request's grammar does not allow next (see the module docstring)."""

    def __init__(self, vllm_config: "VllmConfig", req_states: LogitsProcRequestState) -> None:
        if getattr(vllm_config, "speculative_config", None) is not None:
            raise ValueError(SPECULATIVE_DECODING_ERROR)
        self._grammar = GrammarMasks(vllm_config.model_config)
        self._states = req_states
        self._slots: dict[int, _SlotRequest] = {}

    @classmethod
    def validate_params(cls, sampling_params: "SamplingParams") -> None:
        GrammarMasks.validate_params(sampling_params)

    def add_request(self, req_idx: int, sampling_params: "SamplingParams") -> bool:
        # The slot may hold a finished request's state: replace it in every case.
        self._slots.pop(req_idx, None)
        output_ids: list[int] = []
        req = self._grammar.new_request(sampling_params, output_ids)
        if req is None:
            return False
        self._slots[req_idx] = _SlotRequest(req, output_ids)
        return True

    def apply(self, logits: torch.Tensor, ctx: LogitsContext) -> torch.Tensor:
        if not self._slots:
            return logits
        slots = [int(s) for s in ctx.idx_mapping_np]
        ours = [(row, slot) for row, slot in enumerate(slots) if slot in self._slots]
        if not ours:
            return logits
        if logits.shape[0] != len(slots):  # one row per request is all this processor handles
            logger.error("grammar sampling: %d logits rows for %d requests; not constrained",
                         logits.shape[0], len(slots))
            return logits
        self._read_outputs([slot for _, slot in ours])
        for row, slot in ours:
            if not self._grammar.mask_row(logits[row], self._slots[slot].req):
                del self._slots[slot]
        return logits

    def _read_outputs(self, slots: list[int]) -> None:
        """Bring each slot's output ids up to date with the runner's token buffer."""
        states = self._states
        index = torch.tensor(slots, dtype=torch.long, device=states.total_len.gpu.device)
        totals = states.total_len.gpu[index].tolist()  # one device sync for all of them
        prompts = states.prompt_len.np
        for slot, total in zip(slots, totals):
            entry = self._slots[slot]
            known = len(entry.output_ids)
            produced = max(int(total) - int(prompts[slot]), 0)
            if produced < known:  # the runner dropped tokens (cf. `_Request.sync`)
                del entry.output_ids[produced:]
            elif produced > known:
                start = int(prompts[slot]) + known
                entry.output_ids.extend(states.all_token_ids.gpu[slot, start:start + produced - known].tolist())


class FunctionaryLogitsProcessorAnyRunner(V1LogitsProcessor, LogitsProcessor):
    """One class path for both model runners (`functionary.grammar.VLLM_LOGITS_PROCESSOR`).

    Which runner an engine uses is decided inside vLLM when the engine starts (V2 where Triton
    is installed and the config has no feature V2 lacks, `VLLM_USE_V2_MODEL_RUNNER` overriding).
    Each runner's loader accepts this class (it is a subclass of both interfaces) and constructs
    it with its own arguments; construction returns the processor of that runner's interface.
    """

    def __new__(cls, vllm_config: "VllmConfig", *args: Any, **kwargs: Any) -> Any:  # type: ignore[misc]
        req_states = args[0] if len(args) == 1 else kwargs.get("req_states")
        if isinstance(req_states, LogitsProcRequestState):
            return FunctionaryLogitsProcessorV2(vllm_config, req_states)
        return FunctionaryLogitsProcessor(vllm_config, *args, **kwargs)

    @classmethod
    def validate_params(cls, sampling_params: "SamplingParams") -> None:
        GrammarMasks.validate_params(sampling_params)

    # Never called (construction returns one of the two processors); they satisfy both ABCs.
    def is_argmax_invariant(self) -> bool:  # pragma: no cover
        return False

    def update_state(self, batch_update: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    def apply(self, logits: torch.Tensor, *args: Any) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError


def processor_stats() -> dict[str, Any]:
    """This process's counters (shared by both processors)."""
    return dict(STATS)


__all__ = [
    "FunctionaryLogitsProcessorAnyRunner",
    "FunctionaryLogitsProcessorV2",
    "SPECULATIVE_DECODING_ERROR",
]
