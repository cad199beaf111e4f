"""OpenAI chat-completions wire types (pydantic only; importable from every layer).

Requests accept the OpenAI fields, the legacy `functions`/`function_call` pair and vLLM's
extra sampling parameters. Unknown fields are accepted and ignored, with one log line per
request naming them. Responses serialise the way OpenAI's API does: optional fields that are
unset are left out of deltas, `finish_reason` is always present in a choice.
"""
from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)
from typing_extensions import Annotated

logger = logging.getLogger(__name__)


class OpenAIBaseModel(BaseModel):
    """Request-side base: unknown fields are dropped, with a log line naming them."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    @model_validator(mode="wrap")
    @classmethod
    def _log_unknown_fields(cls, data: Any, handler: Any) -> Any:
        result = handler(data)
        if isinstance(data, dict):
            known: set[str] = set()
            for name, info in cls.model_fields.items():
                known.add(name)
                if info.alias:
                    known.add(info.alias)
            unknown = set(data) - known
            if unknown:
                logger.info(
                    "%s: ignoring unknown field(s) %s", cls.__name__, ", ".join(sorted(unknown))
                )
        return result


class ResponseModel(BaseModel):
    """Response-side base (nothing to validate; keeps extra keys out)."""

    model_config = ConfigDict(extra="ignore")


# --------------------------------------------------------------------------------------------
# Request: messages


class ContentPart(OpenAIBaseModel):
    """One part of a multi-part message content. Only `text` parts can be rendered."""

    model_config = ConfigDict(extra="allow")  # image_url etc. are kept so the server can name them

    type: str
    text: Optional[str] = None


class FunctionCall(OpenAIBaseModel):
    """A call by name with its arguments string (assistant history, legacy `function_call`)."""

    name: str
    arguments: str = ""


class ToolCall(OpenAIBaseModel):
    """A tool call in an assistant message of the history."""

    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(OpenAIBaseModel):
    """A message of the conversation as the client sends it."""

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, list[ContentPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    tool_call_id: Optional[str] = None
    function_call: Optional[FunctionCall] = None  # legacy assistant call


# --------------------------------------------------------------------------------------------
# Request: tools and choices


class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None
    strict: Optional[bool] = None


class FunctionTool(OpenAIBaseModel):
    type: Literal["function"]
    function: FunctionDefinition


class CodeInterpreterTool(OpenAIBaseModel):
    type: Literal["code_interpreter"]


Tool = Annotated[Union[FunctionTool, CodeInterpreterTool], Field(discriminator="type")]


class NamedFunction(OpenAIBaseModel):
    """The function a named `tool_choice` forces. A description or parameters given here
    replace the tool list with this one tool (the original server's behaviour)."""

    name: str
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None


class NamedToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: NamedFunction


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice]


class NamedFunctionCall(OpenAIBaseModel):
    """Legacy `function_call: {"name": ...}`."""

    name: str


FunctionCallChoice = Union[Literal["none", "auto"], NamedFunctionCall]


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False


class JsonSchemaFormat(OpenAIBaseModel):
    """`response_format.json_schema` as OpenAI documents it."""

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: Optional[str] = None
    # OpenAI's name for the schema; `json_schema` is accepted too (vLLM's alias).
    schema_: Optional[dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("`json_schema` is required when `type` is \"json_schema\"")
        return self


# --------------------------------------------------------------------------------------------
# Request


class ChatCompletionRequest(OpenAIBaseModel):
    """`POST /v1/chat/completions` body."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    model: Optional[str] = None

    # OpenAI sampling parameters
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None
    logprobs: Optional[bool] = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=20)
    max_tokens: Optional[int] = Field(default=None, ge=1)
    max_completion_tokens: Optional[int] = Field(default=None, ge=1)
    n: Optional[int] = Field(default=1, ge=1)
    response_format: Optional[ResponseFormat] = None
    # vLLM's own bound (a 64-bit signed integer): a seed outside it killed the engine (found by
    # benchmarks/fuzz.py: torch's manual_seed raises inside the engine step).
    seed: Optional[int] = Field(default=None, ge=-(2**63), le=2**63 - 1)
    stop: Optional[Union[str, list[str]]] = None
    stream: Optional[bool] = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, gt=0.0, le=1.0)
    user: Optional[str] = None

    # Tools
    tools: Optional[list[Tool]] = None
    tool_choice: Optional[ToolChoice] = None
    parallel_tool_calls: Optional[bool] = None

    # Legacy functions
    functions: Optional[list[FunctionDefinition]] = None
    function_call: Optional[FunctionCallChoice] = None

    # vLLM's extra sampling parameters
    top_k: Optional[int] = None
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: Optional[float] = Field(default=None, gt=0.0)
    ignore_eos: Optional[bool] = False
    min_tokens: Optional[int] = Field(default=0, ge=0)
    stop_token_ids: Optional[list[int]] = None
    # Accepted for compatibility; the server needs special tokens to parse calls and never
    # lets stop text through, so these two cannot change anything.
    skip_special_tokens: Optional[bool] = None
    include_stop_str_in_output: Optional[bool] = None

    @field_validator("stop")
    @classmethod
    def _stop_not_empty(cls, value: Optional[Union[str, list[str]]]) -> Optional[Union[str, list[str]]]:
        if isinstance(value, str) and value == "":
            raise ValueError("stop strings must not be empty")
        if isinstance(value, list) and any(s == "" for s in value):
            raise ValueError("stop strings must not be empty")
        return value

    @field_validator("top_k")
    @classmethod
    def _top_k_range(cls, value: Optional[int]) -> Optional[int]:
        if value is not None and value != -1 and value < 1:
            raise ValueError("top_k must be -1 (disabled) or at least 1")
        return value

    @property
    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def effective_max_tokens(self) -> Optional[int]:
        """`max_completion_tokens` wins over the deprecated `max_tokens`."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


# --------------------------------------------------------------------------------------------
# Responses


def _drop_none(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


class UsageInfo(ResponseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class FunctionCallOut(ResponseModel):
    name: str
    arguments: str


class ToolCallOut(ResponseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCallOut


class AssistantMessage(ResponseModel):
    """The message of a non-streamed choice: `content` always present (maybe null),
    `tool_calls` / `function_call` only when there are some."""

    role: Literal["assistant"] = "assistant"
    content: Optional[str] = None
    tool_calls: Optional[list[ToolCallOut]] = None
    function_call: Optional[FunctionCallOut] = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("tool_calls") is None:
            data.pop("tool_calls", None)
        if data.get("function_call") is None:
            data.pop("function_call", None)
        return data


class TopLogprob(ResponseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]] = None


class TokenLogprobOut(ResponseModel):
    """One generated token with its log probability and the most likely alternatives."""

    token: str
    logprob: float
    bytes: Optional[list[int]] = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(ResponseModel):
    content: Optional[list[TokenLogprobOut]] = None
    refusal: Optional[list[TokenLogprobOut]] = None


class ChatCompletionChoice(ResponseModel):
    index: int
    message: AssistantMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


class ChatCompletionResponse(ResponseModel):
    id: str = Field(default_factory=new_completion_id)
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaFunctionCall(ResponseModel):
    name: Optional[str] = None
    arguments: Optional[str] = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        return _drop_none(handler(self))


class DeltaToolCall(ResponseModel):
    index: int
    id: Optional[str] = None
    type: Optional[Literal["function"]] = None
    function: Optional[DeltaFunctionCall] = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        return _drop_none(handler(self))


class DeltaMessage(ResponseModel):
    """A streamed delta: only the fields that carry something are written."""

    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None
    tool_calls: Optional[list[DeltaToolCall]] = None
    function_call: Optional[DeltaFunctionCall] = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        return _drop_none(handler(self))


class ChatCompletionChunkChoice(ResponseModel):
    index: int
    delta: DeltaMessage
    logprobs: Optional[ChoiceLogprobs] = None
    finish_reason: Optional[str] = None


class ChatCompletionChunk(ResponseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Optional[UsageInfo] = None

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("usage") is None:
            data.pop("usage", None)
        return data


class ModelCard(ResponseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "functionary"
    root: Optional[str] = None
    parent: Optional[str] = None  # a LoRA adapter's base model (as vLLM lists adapters)
    max_model_len: Optional[int] = None


class ModelList(ResponseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard] = Field(default_factory=list)


class ErrorInfo(ResponseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[Union[str, int]] = None


class ErrorResponse(ResponseModel):
    error: ErrorInfo
