"""Functionary's OpenAI-compatible server on a Text Generation Inference (TGI) endpoint.

    python server_tgi.py --model meetkai/functionary-small-v3.2 [--endpoint http://127.0.0.1:8080]

If the endpoint answers `GET /health`, it is used as it is; otherwise a TGI container is
started through the Docker SDK (`pip install 'functionary[tgi]'`), and stopped and removed
when the server stops. `--model` (a local folder or a model id) gives the tokenizer and the
prompt template; it must be the model the endpoint serves.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, Optional, Sequence

logger = logging.getLogger("functionary.server")


def build_parser() -> argparse.ArgumentParser:
    from functionary.api.server_flags import add_served_model_name, add_server_args
    from functionary.backends.tgi import DEFAULT_ENDPOINT

    parser = argparse.ArgumentParser(description="Functionary OpenAI-compatible server on a TGI endpoint.")
    tgi = parser.add_argument_group("TGI")
    tgi.add_argument("--model", required=True,
                     help="the model the endpoint serves: a local folder or a model id (tokenizer and prompt "
                     "template come from it)")
    tgi.add_argument("--endpoint", default=DEFAULT_ENDPOINT,
                     help="TGI's URL; if nothing answers there, a TGI container is started (default: %(default)s)")
    tgi.add_argument("--remote_model_save_folder", default=None,
                     help="host folder a started container downloads a model id into (mounted as /data; "
                     "default: <functionary cache>/tgi-data)")
    tgi.add_argument("--max_total_tokens", type=int, default=None,
                     help="context length (prompt + completion): of a started container (default 4096), "
                     "or a lower limit than the endpoint's own")
    tgi.add_argument("--startup_timeout", type=float, default=600.0,
                     help="seconds to wait for a started container to become healthy (default: %(default)s)")
    tgi.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_served_model_name(parser)
    add_server_args(parser)
    # How vLLM enforces grammars does not apply: TGI enforces its own `grammar` parameter.
    parser.set_defaults(grammar_backend=None)
    return parser


def build_app(args: argparse.Namespace, container: Any = None) -> Any:
    """The app for parsed `args`: the TGI back end on `args.endpoint`, connected when the app
    starts; `container` (a `TGIContainer` we started, or None) is stopped when it stops."""
    from functionary.api import create_app
    from functionary.api.server_flags import server_settings
    from functionary.backends.base import LM_FORMAT_ENFORCER
    from functionary.backends.tgi import TGIBackend
    from functionary.backends.tgi_docker import default_save_folder

    # The service hands the grammar spec over as it is with this setting (the xgrammar one
    # would build vLLM's structural tag, which TGI cannot use); the TGI back end decides.
    args.grammar_backend = LM_FORMAT_ENFORCER
    endpoint = args.endpoint.rstrip("/")
    # A container we started downloaded a model id there (TGI's hub cache): the tokenizer too.
    save_folder = args.remote_model_save_folder or str(default_save_folder())
    names = list(args.served_model_name or [args.model])

    async def backend_factory() -> TGIBackend:
        return await TGIBackend.connect(
            endpoint, args.model, model_name=args.model, max_total_tokens=args.max_total_tokens,
            on_shutdown=container.stop if container is not None else None,
            tokenizer_cache_dir=save_folder if container is not None else None,
        )

    return create_app(server_settings(args, names), backend_factory)


def main(argv: Optional[Sequence[str]] = None, *, docker_factory: Optional[Callable[[], Any]] = None) -> int:
    from functionary.api.server_flags import log_level as resolve_log_level

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.grammar_backend is not None:
        parser.error("--grammar-backend applies to vLLM only: on TGI, grammar sampling uses TGI's `grammar` "
                     "parameter (named tool_choice only; see the README's TGI section)")
    log_level = resolve_log_level(args)
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpx2"):  # one INFO line per upstream request otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))

    from functionary.backends.tgi_docker import DockerUnavailable, ensure_endpoint, start_command_hint

    endpoint = args.endpoint.rstrip("/")
    try:
        container = ensure_endpoint(
            endpoint, args.model, save_folder=args.remote_model_save_folder,
            max_total_tokens=args.max_total_tokens, startup_timeout=args.startup_timeout,
            docker_factory=docker_factory,
        )
    except DockerUnavailable as exc:
        raise SystemExit(
            f"error: no TGI answers at {endpoint}/health and Docker is not available ({exc}); start TGI "
            f"first, e.g. `{start_command_hint(args.model, endpoint)}`, then pass --endpoint"
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise SystemExit(f"error: {exc}") from None

    from functionary.api.limits import uvicorn_options
    from functionary.api.serve import serve

    app = build_app(args, container)
    logger.info("serving TGI at %s", endpoint)
    try:
        return serve(app, args.host, args.port, log_level, **uvicorn_options(app.state.settings))
    finally:
        if container is not None:
            container.stop()  # also when start-up failed before the app could


if __name__ == "__main__":
    sys.exit(main())
