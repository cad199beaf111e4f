"""`server_llama_cpp.py`'s flags: the engine flags the issue lists plus every shared server flag
(defined once in functionary.api.server_flags), without llama-cpp-python installed."""
from __future__ import annotations

import pytest

import server_llama_cpp
from functionary.api.server_flags import add_server_args


def test_engine_flags_and_the_shared_server_flags():
    args = server_llama_cpp.build_parser().parse_args([
        "--model", "m.gguf", "--tokenizer", "hf", "--n-ctx", "1024", "--n-threads", "3", "--n-gpu-layers", "-1",
        "--parallel", "4", "--served-model-name", "a", "b", "--api-key", "k", "--prompt-template-version", "v3.llama3",
        "--no-enable-grammar-sampling", "--max-n", "2", "--port", "9000",
    ])
    assert (args.model, args.tokenizer, args.n_ctx, args.n_threads, args.n_gpu_layers, args.parallel) == (
        "m.gguf", "hf", 1024, 3, -1, 4)
    assert args.served_model_name == ["a", "b"] and args.api_key == "k" and args.port == 9000
    assert args.enable_grammar_sampling is False and args.max_n == 2


def test_every_shared_server_flag_is_there():
    import argparse

    shared = {a.dest for a in add_server_args(argparse.ArgumentParser())._actions if a.dest != "help"}
    ours = {a.dest for a in server_llama_cpp.build_parser()._actions}
    assert shared <= ours


def test_lm_format_enforcer_is_refused_at_start(capsys):
    with pytest.raises(SystemExit) as exit_:
        server_llama_cpp.main(["--grammar-backend", "lm-format-enforcer"])
    assert exit_.value.code == 2
    assert "xgrammar only" in capsys.readouterr().err


def test_importing_the_backend_needs_no_llama_cpp():
    import functionary.backends.llama_cpp as backend

    assert backend.LlamaCppOptions().parallel >= 1


def test_speculation_flags_reach_the_options(monkeypatch):
    from functionary.backends.llama_cpp import DEFAULT_DRAFT_TOKENS, LlamaCppBackend

    parser = server_llama_cpp.build_parser()
    assert parser.parse_args([]).speculate_tool_calls is False  # off unless asked for
    args = parser.parse_args(["--speculate-tool-calls", "--draft-tokens", "5"])
    assert (args.speculate_tool_calls, args.draft_tokens) == (True, 5)
    assert parser.parse_args(["--no-speculate-tool-calls"]).speculate_tool_calls is False
    assert parser.parse_args([]).draft_tokens == DEFAULT_DRAFT_TOKENS
    with pytest.raises(SystemExit):
        server_llama_cpp.main(["--draft-tokens", "-1"])

    seen = {}

    async def start(options):
        seen["options"] = options
        return "backend"

    import functionary.api.serve as serve_module

    monkeypatch.setattr(LlamaCppBackend, "start", start)
    captured = {}
    monkeypatch.setattr(serve_module, "serve", lambda app, *a, **k: captured.setdefault("app", app) and 0)
    import functionary.api as api

    monkeypatch.setattr(api, "create_app", lambda settings, factory: captured.setdefault("factory", factory))
    server_llama_cpp.main(["--speculate-tool-calls", "--draft-tokens", "3"])
    import asyncio

    asyncio.run(captured["factory"]())
    assert (seen["options"].speculate_tool_calls, seen["options"].draft_tokens) == (True, 3)
