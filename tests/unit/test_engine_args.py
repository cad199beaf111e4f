"""Our engine defaults: filled only where the user gave nothing (vLLM's own parser and fields)."""
from __future__ import annotations

import pytest

pytest.importorskip("vllm")

from functionary.backends.engine_args import (  # noqa: E402
    CPU_DEFAULT_BLOCK_SIZE, CPU_DEFAULT_DTYPE, CPU_DEFAULT_KV_CACHE_BYTES, apply_cpu_defaults, make_arg_parser,
)


def parsed(*argv):
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = make_arg_parser().parse_args(["--model", "/nonexistent", *argv])
    given = {k for k in ("dtype", "enforce_eager", "kv_cache_memory_bytes") if getattr(args, k) is not None}
    values = {k: v for k, v in vars(args).items() if k in AsyncEngineArgs.__dataclass_fields__ and v is not None}
    return AsyncEngineArgs(**values), given


def test_cpu_defaults_fill_what_was_not_given(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    engine, given = parsed()
    apply_cpu_defaults(engine, given, on_cpu=True)
    assert engine.enforce_eager is True and engine.dtype == CPU_DEFAULT_DTYPE
    assert engine.block_size == CPU_DEFAULT_BLOCK_SIZE == 32
    assert engine.kv_cache_memory_bytes == CPU_DEFAULT_KV_CACHE_BYTES


def test_the_users_flags_win(monkeypatch):
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    engine, given = parsed("--block-size", "128", "--dtype", "float32", "--kv-cache-memory-bytes", "12345")
    apply_cpu_defaults(engine, given, on_cpu=True)
    assert (engine.block_size, engine.dtype, engine.kv_cache_memory_bytes) == (128, "float32", 12345)


def test_no_cpu_defaults_elsewhere():
    engine, given = parsed()
    apply_cpu_defaults(engine, given, on_cpu=False)
    assert engine.block_size is None and engine.kv_cache_memory_bytes is None


def test_grammar_backend_configures_the_engine():
    import server_vllm
    from functionary.grammar import VLLM_LOGITS_PROCESSOR

    args = server_vllm.build_parser().parse_args(["--model", "/nonexistent"])
    assert args.grammar_backend == "xgrammar"
    engine, _ = parsed()
    server_vllm.configure_grammar_backend(engine, "xgrammar")
    assert engine.structured_outputs_config.backend == "xgrammar" and not engine.logits_processors
    engine, _ = parsed()
    server_vllm.configure_grammar_backend(engine, "lm-format-enforcer")
    assert engine.logits_processors == [VLLM_LOGITS_PROCESSOR]
    # xgrammar structural tags need vLLM's xgrammar back end: another one is refused at start.
    engine, _ = parsed("--structured-outputs-config.backend", "guidance")
    with pytest.raises(SystemExit, match="needs vLLM's structured outputs on xgrammar"):
        server_vllm.configure_grammar_backend(engine, "xgrammar")


def test_adaptive_cpu_threads_is_on_unless_turned_off():
    parser = make_arg_parser()
    assert parser.parse_args(["--model", "/nonexistent"]).adaptive_cpu_threads is True
    assert parser.parse_args(["--model", "/nonexistent", "--no-adaptive-cpu-threads"]).adaptive_cpu_threads is False


def test_default_model_gets_vllms_auto_context_unless_given(monkeypatch):
    # -1 is vLLM's "auto": the model's own length if the KV cache holds it, else the longest it holds
    # (tests/e2e/test_long_context.py checks both outcomes on the real engine).
    from functionary.backends.engine_args import DEFAULT_MODEL_MAX_MODEL_LEN

    assert DEFAULT_MODEL_MAX_MODEL_LEN == -1
    engine, given = parsed()
    apply_cpu_defaults(engine, given, default_model=True, on_cpu=True)
    assert engine.max_model_len == -1
    engine, _ = parsed("--max-model-len", "1024")
    apply_cpu_defaults(engine, {"max_model_len"}, default_model=True, on_cpu=True)
    assert engine.max_model_len == 1024
    engine, given = parsed()
    apply_cpu_defaults(engine, given, default_model=False, on_cpu=True)
    assert engine.max_model_len is None  # another model: vLLM's own default (the model's length)
