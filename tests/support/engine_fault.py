"""A vLLM logits processor that fails inside the engine when a request carries `FAULT_SEED`.

Loaded into the real server with `--logits-processors tests.support.engine_fault:FailOnSeed`:
an exception raised by a logits processor ends vLLM's engine (as any bug in the engine would),
which lets the end-to-end tests make the engine die on demand in either engine mode.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
from vllm.v1.sample.logits_processor import BatchUpdate, LogitsProcessor

FAULT_SEED = 424242


class EngineFault(RuntimeError):
    """Raised on purpose by the test processor."""


class FailOnSeed(LogitsProcessor):
    def __init__(self, vllm_config: Any, device: Any, is_pin_memory: bool) -> None:
        self._armed = False

    def is_argmax_invariant(self) -> bool:
        return False

    def update_state(self, batch_update: Optional[BatchUpdate]) -> None:
        if batch_update is None:
            return
        for added in batch_update.added:
            params = added[1]
            if getattr(params, "seed", None) == FAULT_SEED:
                self._armed = True

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self._armed:
            raise EngineFault(f"a request with seed {FAULT_SEED} asked the engine to fail")
        return logits
