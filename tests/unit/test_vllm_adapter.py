"""The vLLM internals `functionary.backends.vllm_adapter` relies on are where it expects them in
the installed vLLM: after an upgrade this file fails first, naming what moved (the e2e tests
in tests/e2e/test_vllm_backend.py then show whether behaviour held)."""
from __future__ import annotations

import inspect
import pytest

pytest.importorskip("vllm")

import vllm  # noqa: E402
from packaging.specifiers import SpecifierSet  # noqa: E402
from packaging.version import Version  # noqa: E402

from functionary.backends import vllm_adapter  # noqa: E402


def test_the_installed_vllm_is_in_the_tested_range():
    assert Version(vllm.__version__) in SpecifierSet(vllm_adapter.TESTED_VLLM_VERSIONS)


def test_the_in_process_engine_internals_exist():
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.engine.core import EngineCoreProc
    from vllm.v1.engine.input_processor import InputProcessor
    from vllm.v1.engine.llm_engine import LLMEngine

    assert {"multiprocess_mode", "executor_class", "usage_context"} <= set(inspect.signature(LLMEngine).parameters)
    for name in ("add_request", "abort_request", "step", "has_unfinished_requests", "add_lora", "get_supported_tasks"):
        assert callable(getattr(LLMEngine, name)), name
    assert {"supported_tasks", "lora_request"} <= set(inspect.signature(InputProcessor.process_inputs).parameters)
    assert callable(Scheduler.has_requests)
    assert callable(EngineCoreProc.has_work)  # what `async_llm_engine_state` asks the core process


def test_the_output_processor_keeps_parallel_sampling_parents_where_the_abort_looks():
    # `abort_inproc_requests` / `abort_async_llm_requests` release aborted n > 1 parents from
    # these (each degrades to vLLM's own abort if they move: this says when they did).
    from vllm.v1.engine.output_processor import OutputProcessor, RequestState
    from vllm.v1.engine.parallel_sampling import ParentRequest

    processor = OutputProcessor(tokenizer=None, log_stats=False)
    assert processor.parent_requests == {} and processor.request_states == {}
    assert len(processor.external_req_ids) == 0
    assert "parent_req" in inspect.signature(RequestState).parameters
    assert {"request_id", "child_requests"} <= set(ParentRequest.__annotations__)


def test_the_patched_and_reused_functions_exist():
    assert vllm_adapter.remember_valid_structural_tags() is True
    action = vllm_adapter.lora_modules_action()
    assert action is not None and action.__name__ == "LoRAParserAction"


def test_lora_modules_action_is_found_where_vllm_0_33_keeps_it(monkeypatch):
    # 0.33.0 has no vllm/entrypoints/launchers/cli_args.py; its LoRAParserAction lives in
    # vllm/entrypoints/common/cli_args.py (read in the 0.33.0 wheel, deploy/VLLM_VERSIONS.md).
    import sys
    import types

    real = vllm_adapter.lora_modules_action()
    moved = types.ModuleType("vllm.entrypoints.common.cli_args")
    moved.LoRAParserAction = real
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.launchers.cli_args", None)  # import fails
    monkeypatch.setitem(sys.modules, "vllm.entrypoints.common.cli_args", moved)
    assert vllm_adapter.lora_modules_action() is real
