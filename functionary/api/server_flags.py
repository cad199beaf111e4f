"""The server flags every entry point shares (`server_vllm.py`, `server_llama_cpp.py`,
`server_tgi.py`), defined once, and the `ServerSettings` they describe.

Engine flags stay with each entry point; `--served-model-name` is an engine flag in vLLM's
parser, so entry points whose engine lacks it add it with `add_served_model_name`.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional, Sequence

from functionary.api.settings import ServerSettings
from functionary.backends.base import GRAMMAR_BACKENDS, XGRAMMAR


def json_list(value: str) -> list[str]:
    """A JSON list (vLLM's syntax: '["https://a.example"]') or a comma-separated list."""
    value = value.strip()
    if value.startswith("["):
        parsed = json.loads(value)
        if not isinstance(parsed, list) or not all(isinstance(v, str) for v in parsed):
            raise argparse.ArgumentTypeError("expected a JSON list of strings")
        return parsed
    return [v.strip() for v in value.split(",") if v.strip()]


def add_server_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from functionary.prompt_template import VERSIONS

    group = parser.add_argument_group("Functionary server")
    group.add_argument("--host", default="0.0.0.0", help="address to listen on (default: %(default)s)")
    group.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    group.add_argument(
        "--api-key",
        default=os.environ.get("FUNCTIONARY_API_KEY"),
        help="require `Authorization: Bearer <key>` on every route (default: $FUNCTIONARY_API_KEY)",
    )
    group.add_argument("--allowed-origins", type=json_list, default=["*"], help="CORS origins (JSON list)")
    group.add_argument("--allowed-methods", type=json_list, default=["*"], help="CORS methods (JSON list)")
    group.add_argument("--allowed-headers", type=json_list, default=["*"], help="CORS headers (JSON list)")
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
    return parser


def add_served_model_name(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """`--served-model-name NAME [NAME ...]`, as vLLM spells it (for engines whose parser lacks it)."""
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="names the API serves the model under (the first is the default)",
    )
    return parser


def server_settings(args: argparse.Namespace, served_model_names: Sequence[str]) -> ServerSettings:
    """The `ServerSettings` the shared flags in `args` describe."""
    return ServerSettings(
        served_model_names=list(served_model_names),
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


def log_level(args: argparse.Namespace, default: str = "INFO") -> str:
    level = str(getattr(args, "log_level", None) or default).upper()
    return default if level == "NOTSET" else level


__all__ = ["add_server_args", "add_served_model_name", "json_list", "log_level", "server_settings"]
