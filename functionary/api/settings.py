"""Server settings: plain data, filled from the command line by `server_vllm.py` or by tests."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from functionary.backends.base import XGRAMMAR
from functionary.protocol.tool_validation import (
    DEFAULT_MAX_SCHEMA_DEPTH,
    DEFAULT_MAX_TOOLS,
    DEFAULT_MAX_TOOLS_BYTES,
    ToolLimits,
)
from functionary.serving.chat import DEFAULT_MAX_N


DEFAULT_TEMPLATE_VERSION = "v3.llama3"


@dataclass
class ServerSettings:
    """Everything the HTTP app needs besides the engine."""

    # Names `/v1/models` lists and a request's `model` must match (the first is the default).
    served_model_names: list[str] = field(default_factory=lambda: ["functionary"])
    # Prompt template version (e.g. "v3.llama3"). None: detect it from the engine's tokenizer
    # when the app starts, falling back to DEFAULT_TEMPLATE_VERSION for non-Functionary models.
    prompt_template_version: Optional[str] = None
    # When set, every route requires `Authorization: Bearer <api_key>`.
    api_key: Optional[str] = None
    # CORS
    allowed_origins: list[str] = field(default_factory=lambda: ["*"])
    allowed_methods: list[str] = field(default_factory=lambda: ["*"])
    allowed_headers: list[str] = field(default_factory=lambda: ["*"])
    allow_credentials: bool = False
    # Largest `n` a request may ask for.
    max_n: int = DEFAULT_MAX_N
    # Grammar sampling (valid names, schema-valid arguments). None: on for models that are not
    # Functionary models (their tokenizer names no format), off for Functionary models.
    grammar_sampling: Optional[bool] = None
    # How grammar sampling is enforced: "xgrammar" (a structural tag through vLLM's structured
    # outputs; the engine's structured-outputs back end must be xgrammar or auto) or
    # "lm-format-enforcer" (the engine must have been started with
    # `functionary.grammar.VLLM_LOGITS_PROCESSOR`).
    grammar_backend: str = XGRAMMAR
    # Seconds `/health` waits for the engine's health check.
    health_check_timeout: float = 10.0
    # Limits of a public endpoint (functionary/api/limits.py); 0 switches one off.
    max_request_body_bytes: int = 8 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    # Seconds a request may take from its first byte to its last (OpenAI's client gives up after 600).
    request_timeout: float = 600.0
    # Requests served at once; beyond it a 429 (`/health` and `/metrics` are never refused).
    max_concurrent_requests: int = 512
    # Tool definitions (functionary/protocol/tool_validation.py).
    max_tools: int = DEFAULT_MAX_TOOLS
    max_tool_schema_depth: int = DEFAULT_MAX_SCHEMA_DEPTH
    max_tools_bytes: int = DEFAULT_MAX_TOOLS_BYTES

    @property
    def tool_limits(self) -> ToolLimits:
        return ToolLimits(
            max_tools=self.max_tools, max_schema_depth=self.max_tool_schema_depth, max_tools_bytes=self.max_tools_bytes
        )
