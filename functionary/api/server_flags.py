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
    add_limit_args(parser)
    return parser


def non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError("expected 0 or a positive integer")
    return number


def non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError("expected 0 or a positive number")
    return number


def add_limit_args(parser: argparse.ArgumentParser) -> None:
    """Limits a public endpoint needs (functionary/api/limits.py, protocol/tool_validation.py)."""
    defaults = ServerSettings()
    group = parser.add_argument_group("Functionary server limits (0 switches a limit off)")
    group.add_argument("--max-request-body-bytes", type=non_negative_int, default=defaults.max_request_body_bytes,
                       help="largest request body; larger ones get 413 (default: %(default)s)")
    group.add_argument("--max-header-bytes", type=non_negative_int, default=defaults.max_header_bytes,
                       help="largest total size of a request's headers; larger ones get 431 (default: %(default)s)")
    group.add_argument("--request-timeout", type=non_negative_float, default=defaults.request_timeout,
                       help="seconds a request may take, body upload to last byte; then 408, or an error event "
                       "ending a stream, and the generation is aborted (default: %(default)s)")
    group.add_argument("--max-concurrent-requests", type=non_negative_int, default=defaults.max_concurrent_requests,
                       help="requests served at once; beyond it 429 (default: %(default)s)")
    group.add_argument("--max-tools", type=non_negative_int, default=defaults.max_tools,
                       help="most tools (or functions) one request may define (default: %(default)s)")
    group.add_argument("--max-tool-schema-depth", type=non_negative_int, default=defaults.max_tool_schema_depth,
                       help="deepest JSON nesting of a function's parameters schema (default: %(default)s)")
    group.add_argument("--max-tools-bytes", type=non_negative_int, default=defaults.max_tools_bytes,
                       help="most bytes of JSON all tool definitions of a request may take (default: %(default)s)")


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
        max_request_body_bytes=args.max_request_body_bytes,
        max_header_bytes=args.max_header_bytes,
        request_timeout=args.request_timeout,
        max_concurrent_requests=args.max_concurrent_requests,
        max_tools=args.max_tools,
        max_tool_schema_depth=args.max_tool_schema_depth,
        max_tools_bytes=args.max_tools_bytes,
    )


def log_level(args: argparse.Namespace, default: str = "INFO") -> str:
    level = str(getattr(args, "log_level", None) or default).upper()
    return default if level == "NOTSET" else level


__all__ = ["add_server_args", "add_served_model_name", "json_list", "log_level", "server_settings"]
