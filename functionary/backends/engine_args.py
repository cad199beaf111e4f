"""vLLM engine arguments for functionary: vLLM's own CLI flags plus CPU-friendly defaults.

Typical use in a server ``main``::

    from functionary.backends.engine_args import (
        make_arg_parser, engine_args_from_cli, create_backend)

    parser = make_arg_parser()                 # or add_engine_cli_args(your_parser)
    parser.add_argument("--port", type=int, default=8000)   # server flags of your own
    args = parser.parse_args()
    backend = create_backend(args)             # blocking; or, inside a running loop:
    # backend = await VLLMBackend.start(engine_args_from_cli(args),
    #                                   in_process=args.engine_in_process)

Every vLLM engine flag works (``--tensor-parallel-size``, ``--enable-lora``, ``--dtype``,
``--max-model-len`` ...). A few flags get a "not given" default so that we can tell whether
the user set them; `engine_args_from_cli` then fills them:

* ``--model`` absent: the default model (`ensure_default_model()`, converted once), served as
  ``SmolLM2-135M-Instruct`` unless ``--served-model-name`` says otherwise, with vLLM's
  ``max_model_len`` "auto" (-1): the model's own context (8192 tokens), or the longest that
  the KV cache holds if it cannot hold that (a 1 GiB cache holds ~45k tokens of this model).
* on the CPU platform: ``enforce_eager`` (torch.compile costs 60-110 s of start-up for at most
  1.3x), ``dtype bfloat16``, ``block_size 32`` (prompts with tools share long prefixes; see
  `CPU_DEFAULT_BLOCK_SIZE`) and a bounded KV cache (1 GiB unless ``--kv-cache-memory-bytes``,
  ``--gpu-memory-utilization`` or ``VLLM_CPU_KVCACHE_SPACE`` is given; vLLM would otherwise
  reserve ~90 % of the RAM).
* elsewhere vLLM's own defaults apply.

Nothing here imports vllm until a function is called.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:  # pragma: no cover
    from vllm.engine.arg_utils import AsyncEngineArgs

    from functionary.backends.vllm_backend import VLLMBackend

GiB = 1 << 30
CPU_DEFAULT_KV_CACHE_BYTES = 1 * GiB
# vLLM's "auto": the model's own length (SmolLM2-135M: max_position_embeddings 8192) when the KV
# cache can hold it, else the longest it can (vLLM logs which). Agents send many tools: 60 tools
# of three described parameters are ~5.3k prompt tokens, far beyond the 2048 this once was.
DEFAULT_MODEL_MAX_MODEL_LEN = -1
CPU_DEFAULT_DTYPE = "bfloat16"
# vLLM's CPU default is 128-token KV blocks, and prefix caching reuses whole blocks only: with
# one tool the 220-token prompts of two requests share 128 cached tokens at 128, 192 at 32
# (measured at 16 streams: prefix-cache hits 57 % -> 84 %, first chunk p50 520 -> 220 ms,
# +3 % tok/s). 32 is the smallest size the CPU attention backend takes.
CPU_DEFAULT_BLOCK_SIZE = 32

# Flags whose parser default becomes None ("not given"), resolved by engine_args_from_cli.
_UNSET_DESTS = (
    "model",
    "dtype",
    "enforce_eager",
    "max_model_len",
    "kv_cache_memory_bytes",
    "gpu_memory_utilization",
)


def _vllm_arg_classes():
    from functionary.backends.vllm_backend import import_vllm

    import_vllm()
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs


def add_engine_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add vLLM's engine flags (``AsyncEngineArgs.add_cli_args``) and ``--engine-in-process``.

    Works best with vLLM's ``FlexibleArgumentParser`` (`make_arg_parser`), which also accepts
    ``--flag.key=value`` and ``--config file.yaml``; a plain argparse parser works too.
    """
    AsyncEngineArgs = _vllm_arg_classes()
    AsyncEngineArgs.add_cli_args(parser)
    parser.set_defaults(**{dest: None for dest in _UNSET_DESTS})
    parser.add_argument(
        "--engine-in-process",
        action=argparse.BooleanOptionalAction,
        default=None,
        help=(
            "Run vLLM's engine core in this process, stepped by a thread (default on CPU: "
            "faster start and decoding on few cores) or in vLLM's separate engine process "
            "(--no-engine-in-process; the default on GPUs and with data parallelism). "
            "Env: FUNCTIONARY_VLLM_IN_PROCESS=1/0."
        ),
    )
    _add_lora_modules_arg(parser)
    parser.add_argument(
        "--adaptive-cpu-threads",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=(
            "With the engine in process on CPU: compute on fewer threads while other processes "
            "keep cores busy, and on all of them again when they stop (default: on). Two threads "
            "on two cores collapse when a third busy process takes one of the cores."
        ),
    )
    return parser


class _LoRAModulesAction(argparse.Action):
    """``--lora-modules`` as vLLM's server parses it, for a vLLM without its action: each value
    ``name=path`` or JSON ``{"name": ..., "path": ..., "base_model_name": ...}``."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[override]
        import json

        modules = []
        for item in values or []:
            if not item:
                continue
            if "=" in item and "," not in item:
                name, path = item.split("=", 1)
                modules.append({"name": name, "path": path})
                continue
            try:
                module = json.loads(item)
            except json.JSONDecodeError:
                parser.error(f"Invalid JSON format for --lora-modules: {item}")
            if not isinstance(module, dict) or not {"name", "path"} <= set(module):
                parser.error(f"Invalid fields for --lora-modules: {item}")
            modules.append(module)
        setattr(namespace, self.dest, modules)


def _add_lora_modules_arg(parser: argparse.ArgumentParser) -> None:
    # A flag of vLLM's OpenAI front end, not of AsyncEngineArgs: vLLM's own parsing when it has it.
    from functionary.backends.vllm_adapter import lora_modules_action

    parser.add_argument(
        "--lora-modules",
        nargs="+",
        action=lora_modules_action() or _LoRAModulesAction,
        default=None,
        help=(
            "LoRA adapters to serve (needs --enable-lora; size them with --max-lora-rank): "
            "'name=path' or JSON '{\"name\": ..., \"path\": ..., \"base_model_name\": ...}', "
            "several separated by spaces. A request whose `model` is an adapter's name runs with "
            "it; /v1/models lists them with `parent` = their base model."
        ),
    )


def make_arg_parser(description: Optional[str] = None) -> argparse.ArgumentParser:
    """A vLLM ``FlexibleArgumentParser`` with the engine flags already added."""
    _vllm_arg_classes()
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser(description=description)
    return add_engine_cli_args(parser)


def is_cpu_platform() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def apply_cpu_defaults(
    engine_args: "AsyncEngineArgs",
    explicit: Iterable[str] = (),
    *,
    default_model: bool = False,
    on_cpu: Optional[bool] = None,
) -> "AsyncEngineArgs":
    """Fill our defaults into `engine_args` for every field not named in `explicit`."""
    explicit = set(explicit)
    if on_cpu is None:
        on_cpu = is_cpu_platform()
    if default_model and "max_model_len" not in explicit:
        engine_args.max_model_len = DEFAULT_MODEL_MAX_MODEL_LEN
    if on_cpu:
        if "enforce_eager" not in explicit:
            engine_args.enforce_eager = True
        if "dtype" not in explicit:
            engine_args.dtype = CPU_DEFAULT_DTYPE
        if "block_size" not in explicit and engine_args.block_size is None:
            engine_args.block_size = CPU_DEFAULT_BLOCK_SIZE
        kv_given = (
            {"kv_cache_memory_bytes", "gpu_memory_utilization"} & explicit
            or os.environ.get("VLLM_CPU_KVCACHE_SPACE", "") != ""
        )
        if not kv_given:
            engine_args.kv_cache_memory_bytes = CPU_DEFAULT_KV_CACHE_BYTES
    return engine_args


def engine_args_from_cli(args: argparse.Namespace) -> "AsyncEngineArgs":
    """``AsyncEngineArgs`` from a namespace parsed with `add_engine_cli_args`, defaults applied."""
    AsyncEngineArgs = _vllm_arg_classes()
    values = dict(vars(args))
    explicit = {dest for dest in _UNSET_DESTS if values.get(dest) is not None}
    default_model = values.get("model") is None
    if default_model:
        from functionary.backends.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        values["model"] = str(ensure_default_model())
        if not values.get("served_model_name"):
            values["served_model_name"] = [DEFAULT_MODEL_NAME]
    field_defaults = _field_defaults(AsyncEngineArgs)
    for dest in _UNSET_DESTS:
        if values.get(dest) is None:
            values[dest] = field_defaults[dest]
    engine_args = AsyncEngineArgs.from_cli_args(argparse.Namespace(**values))
    return apply_cpu_defaults(engine_args, explicit, default_model=default_model)


def default_engine_args(**overrides: Any) -> "AsyncEngineArgs":
    """``AsyncEngineArgs`` for code (tests, benchmarks): our defaults, then `overrides`.

    Without ``model`` the default model is used.
    """
    AsyncEngineArgs = _vllm_arg_classes()
    default_model = overrides.get("model") is None
    values = dict(overrides)
    if default_model:
        from functionary.backends.default_model import DEFAULT_MODEL_NAME, ensure_default_model

        values["model"] = str(ensure_default_model())
        values.setdefault("served_model_name", [DEFAULT_MODEL_NAME])
    engine_args = AsyncEngineArgs(**values)
    return apply_cpu_defaults(engine_args, overrides.keys(), default_model=default_model)


def create_backend(args: argparse.Namespace, **kwargs: Any) -> "VLLMBackend":
    """Start a `VLLMBackend` from parsed CLI args (blocks until the engine is ready)."""
    from functionary.backends.vllm_backend import VLLMBackend

    kwargs.setdefault("in_process", getattr(args, "engine_in_process", None))
    kwargs.setdefault("adaptive_threads", getattr(args, "adaptive_cpu_threads", True))
    kwargs.setdefault("lora_modules", getattr(args, "lora_modules", None) or ())
    return VLLMBackend(engine_args_from_cli(args), **kwargs)


def _field_defaults(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
    return out


__all__ = [
    "CPU_DEFAULT_KV_CACHE_BYTES",
    "DEFAULT_MODEL_MAX_MODEL_LEN",
    "add_engine_cli_args",
    "apply_cpu_defaults",
    "create_backend",
    "default_engine_args",
    "engine_args_from_cli",
    "is_cpu_platform",
    "make_arg_parser",
]
