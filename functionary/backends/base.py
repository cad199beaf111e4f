"""The one small interface every inference engine implements (vLLM, fake, ...).

Only JSON-able data crosses it, so the same request can be served by an engine in this
process, in a subprocess, or behind HTTP.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Optional, Protocol, Sequence, runtime_checkable

# Grammar back ends: how an engine enforces `GenerationParams.constraint` (`--grammar-backend`).
XGRAMMAR = "xgrammar"
LM_FORMAT_ENFORCER = "lm-format-enforcer"
GRAMMAR_BACKENDS = (XGRAMMAR, LM_FORMAT_ENFORCER)


@dataclass
class GenerationParams:
    """Sampling parameters for one completion (OpenAI names; vLLM extras included)."""

    max_tokens: Optional[int] = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    seed: Optional[int] = None
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    min_tokens: int = 0
    # Log probabilities: None for none, k >= 0 for the sampled token's and the k most likely ones'.
    logprobs: Optional[int] = None
    # Added to the logits of these token ids (OpenAI's `logit_bias`, -100..100).
    logit_bias: Optional[dict[int, float]] = None
    # The whole output must be JSON: {"type": "json_object"} or {"type": "json_schema", "schema": {...}}
    # (OpenAI's `response_format`). Never together with `constraint`.
    response_format: Optional[dict[str, Any]] = None
    # Serialisable constraint for grammar sampling (format version, tools, tool_choice), or None.
    constraint: Optional[dict[str, Any]] = None
    # How the engine enforces `constraint`: "xgrammar" (a structural tag through the engine's
    # structured outputs) or "lm-format-enforcer" (functionary's logits processor).
    constraint_backend: str = XGRAMMAR
    # Name of a LoRA adapter the backend serves (`Backend.lora_adapters`); None: the base model.
    lora: Optional[str] = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TokenLogprob:
    """A token's text and log probability; `top` holds the most likely tokens at its position."""

    token: str
    logprob: float
    top: list["TokenLogprob"] = field(default_factory=list)


@dataclass
class GenerationDelta:
    """New text for one choice of a running request."""

    index: int  # choice index (0 .. n-1)
    text: str
    token_ids: Sequence[int] = ()
    finish_reason: Optional[str] = None  # "stop" | "length" | "abort" | None while running
    # One entry per token in `token_ids` when the request asked for log probabilities.
    logprobs: Optional[list[TokenLogprob]] = None


@runtime_checkable
class Backend(Protocol):
    """An engine that turns prompt token ids into streamed text.

    A back end that enforces grammars its own way rather than through `--grammar-backend` says
    how in a `grammar_enforcer` string attribute (the start-up log line shows it)."""

    model_name: str
    max_model_len: int

    def tokenize(self, text: str) -> list[int]:
        """Token ids of `text` exactly as the engine will see them (BOS included if the model uses one)."""

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: GenerationParams
    ) -> AsyncIterator[GenerationDelta]:
        """Stream deltas until every choice finished. Cancelling the iterator aborts the request."""

    async def abort(self, request_id: str) -> None:
        """Stop a running request; a no-op if it already finished."""

    async def check_health(self) -> None:
        """Raise if the engine cannot serve requests."""

    async def shutdown(self) -> None:
        """Release the engine and everything it started."""


@dataclass(frozen=True)
class LoRAAdapter:
    """A LoRA adapter an engine serves under its own model name."""

    name: str  # the `model` a request names to use it
    path: str  # where its weights are (a local folder or a Hugging Face repo id)
    parent: Optional[str] = None  # the served base model it belongs to (None: the first one)


@runtime_checkable
class AdapterBackend(Protocol):
    """A backend that serves LoRA adapters besides the base model (optional)."""

    lora_adapters: Sequence[LoRAAdapter]


@runtime_checkable
class WatchableBackend(Protocol):
    """A backend that can tell when its engine died for good (optional; the server exits then)."""

    async def wait_dead(self) -> BaseException:
        """Return the cause once the engine has died; never return while it serves."""
