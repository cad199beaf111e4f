"""The chat-completions use case: one `ChatCompletionRequest` in, a response or a chunk stream out.

    prepare(request)  semantic checks -> prompt -> token ids -> context-length check -> params
    stream(prepared)  backend deltas -> StreamParser per choice -> ChatCompletionChunk
    complete(prepared) the very same deltas folded into one ChatCompletionResponse

Both paths run `_run`, which turns engine output into per-choice `DeltaMessage`s, so a
streamed answer folds into exactly the non-streamed one. Nothing here knows about HTTP.
"""
from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Optional, Sequence

import anyio

from functionary.backends.base import GRAMMAR_BACKENDS, XGRAMMAR, Backend, GenerationParams
from functionary.parsing.chunks import coalesce
from functionary.parsing.events import TextDelta, ToolCallArgsDelta, ToolCallStart
from functionary.parsing.stream import new_tool_call_id
from functionary.prompt_template.inference import build_inference_prompt
from functionary.protocol.openai import (
    AssistantMessage,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    ChoiceLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCallOut,
    TokenLogprobOut,
    ToolCallOut,
    TopLogprob,
    UsageInfo,
)
from functionary.protocol.text_validation import first_unencodable
from functionary.protocol.tool_validation import ToolDefinitionError, ToolLimits, check_tool_definitions
from functionary.serving.errors import (
    EngineUnavailableError,
    InternalError,
    InvalidRequestError,
    ModelNotFoundError,
    ServiceError,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_N = 16
random_tool_call_id = new_tool_call_id


@dataclass
class RequestStats:
    """Filled in while a request runs; the API layer turns it into metrics."""

    created_at: float = field(default_factory=time.monotonic)
    first_token_at: Optional[float] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)

    @property
    def time_to_first_token(self) -> Optional[float]:
        if self.first_token_at is None:
            return None
        return self.first_token_at - self.created_at


@dataclass
class PreparedChat:
    """A validated request, ready to run."""

    request_id: str
    created: int
    model: str
    prompt: str
    prompt_token_ids: list[int]
    params: GenerationParams
    tool_choice: Any
    legacy_functions: bool
    single_call: bool
    include_usage: bool
    stats: RequestStats = field(default_factory=RequestStats)


class _ToolCallIds:
    """Tool-call ids, unique within one response (across all its choices)."""

    def __init__(self) -> None:
        self._used: set[str] = set()

    def claim(self, proposed: Optional[str]) -> str:
        call_id = proposed if proposed and proposed not in self._used else random_tool_call_id()
        while call_id in self._used:
            call_id = random_tool_call_id()
        self._used.add(call_id)
        return call_id


class _ParserFailure(InternalError):
    """The stream parser raised (a bug, not the engine's fault): HTTP 500."""


class _Choice:
    """One choice: parser events -> OpenAI deltas (legacy `function_call`, single-call cut-off).

    The role is not part of these deltas: `_run` opens every choice with a role-only delta."""

    def __init__(self, index: int, parser: Any, *, legacy: bool, single_call: bool, ids: _ToolCallIds):
        self.index = index
        self.parser = parser
        self.legacy = legacy
        self.single_call = single_call or legacy
        self.ids = ids
        self.emitted = False  # any content or call delta so far
        self.calls: dict[int, int] = {}  # parser's call index -> our index (0, 1, ...)
        self.n_calls = 0
        self.cut = False  # a further call started where only one is allowed
        self.done = False
        self.engine_finished = False
        self.completion_tokens = 0

    def feed(self, text: str) -> list[DeltaMessage]:
        if not text or self.cut:
            return []
        try:
            events = self.parser.feed(text)
        except Exception as exc:
            logger.exception("stream parser failed on %r", text)
            raise _ParserFailure(f"Could not parse the model output: {exc!r}") from exc
        return self._deltas(events)

    def close(self, engine_reason: Optional[str]) -> tuple[list[DeltaMessage], str]:
        """Flush the parser; return the last deltas and the choice's finish_reason."""
        try:
            events = [] if self.cut else self.parser.finish()
        except Exception as exc:
            logger.exception("stream parser failed at the end of the output")
            raise _ParserFailure(f"Could not parse the model output: {exc!r}") from exc
        deltas = self._deltas(events)
        if not self.emitted and not deltas:
            deltas.append(DeltaMessage(content=""))  # an empty answer is "", not null
        self.emitted = True
        self.done = True
        return deltas, self.finish_reason(engine_reason)

    def finish_reason(self, engine_reason: Optional[str]) -> str:
        if engine_reason == "abort":
            raise EngineUnavailableError("the engine aborted the request")
        if not self.cut and engine_reason == "length":
            return "length"  # a truncated call must not look complete
        if self.n_calls:
            return "function_call" if self.legacy else "tool_calls"
        return engine_reason or "stop"

    def _deltas(self, events: Sequence[Any]) -> list[DeltaMessage]:
        out: list[DeltaMessage] = []
        for event in coalesce(events):
            if isinstance(event, TextDelta):
                if event.text:
                    out.append(DeltaMessage(content=event.text))
            elif isinstance(event, ToolCallStart):
                if self.single_call and self.n_calls >= 1:
                    self.cut = True
                    break
                ours = self.n_calls
                self.calls[event.index] = ours
                self.n_calls += 1
                start = DeltaFunctionCall(name=event.name, arguments="")
                if self.legacy:
                    out.append(DeltaMessage(function_call=start))
                else:
                    call = DeltaToolCall(index=ours, id=self.ids.claim(event.id), type="function", function=start)
                    out.append(DeltaMessage(tool_calls=[call]))
            elif isinstance(event, ToolCallArgsDelta):
                ours = self.calls.get(event.index)
                if ours is None:
                    logger.warning("arguments for unknown tool call %s dropped", event.index)
                elif event.arguments:
                    piece = DeltaFunctionCall(arguments=event.arguments)
                    if self.legacy:
                        out.append(DeltaMessage(function_call=piece))
                    else:
                        out.append(DeltaMessage(tool_calls=[DeltaToolCall(index=ours, function=piece)]))
            else:  # pragma: no cover - a parser bug
                logger.warning("unknown parser event %r dropped", event)
        if out:
            self.emitted = True
        return out


class MessageFolder:
    """Folds a choice's deltas into one assistant message (the non-streaming answer)."""

    def __init__(self) -> None:
        self.content: Optional[str] = None
        self.tool_calls: list[dict[str, str]] = []
        self.function_call: Optional[dict[str, str]] = None

    def add(self, delta: DeltaMessage) -> None:
        if delta.content is not None:
            self.content = (self.content or "") + delta.content
        for call in delta.tool_calls or ():
            while len(self.tool_calls) <= call.index:
                self.tool_calls.append({"id": "", "name": "", "arguments": ""})
            slot = self.tool_calls[call.index]
            if call.id:
                slot["id"] = call.id
            if call.function is not None:
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
        if delta.function_call is not None:
            if self.function_call is None:
                self.function_call = {"name": "", "arguments": ""}
            self.function_call["name"] += delta.function_call.name or ""
            self.function_call["arguments"] += delta.function_call.arguments or ""

    def message(self) -> AssistantMessage:
        return AssistantMessage(
            content=self.content,
            tool_calls=[
                ToolCallOut(id=c["id"], function=FunctionCallOut(name=c["name"], arguments=c["arguments"]))
                for c in self.tool_calls
            ]
            or None,
            function_call=FunctionCallOut(**self.function_call) if self.function_call else None,
        )


PromptBuilder = Callable[..., Any]


class ChatService:
    """Serves chat completions for one model on one backend with one prompt template."""

    def __init__(
        self,
        backend: Backend,
        template: Any,
        served_model_names: Sequence[str],
        *,
        max_n: int = DEFAULT_MAX_N,
        prompt_builder: Optional[PromptBuilder] = None,
        grammar_sampling: bool = False,
        grammar_backend: str = XGRAMMAR,
        tool_limits: ToolLimits = ToolLimits(),
    ) -> None:
        if not served_model_names:
            raise ValueError("at least one served model name is needed")
        self.backend = backend
        self.template = template
        self.served_model_names = list(served_model_names)
        # LoRA adapters are served under their own names; a request naming one runs with it.
        self.lora_names = frozenset(a.name for a in getattr(backend, "lora_adapters", ()))
        self.max_n = max_n
        self.grammar_sampling = grammar_sampling
        if grammar_backend not in GRAMMAR_BACKENDS:
            raise ValueError(f"unknown grammar backend {grammar_backend!r}; known: {', '.join(GRAMMAR_BACKENDS)}")
        self.grammar_backend = grammar_backend
        self.tool_limits = tool_limits
        self._build_prompt = prompt_builder or build_inference_prompt
        self._stop_cache: dict[tuple[str, ...], tuple[list[int], list[str]]] = {}

    # ------------------------------------------------------------------ preparing

    def resolve_model(self, name: Optional[str]) -> str:
        if name is None or name == "":
            return self.served_model_names[0]
        if name not in self.served_model_names and name not in self.lora_names:
            raise ModelNotFoundError(
                f"The model `{name}` does not exist.", param="model", code="model_not_found"
            )
        return name

    def split_stops(self, stops: Sequence[str]) -> tuple[list[int], list[str]]:
        """Stop strings that are single tokens become stop token ids (the token's text never
        reaches the output); the others stay stop strings, which the engine also never emits."""
        key = tuple(stops)
        cached = self._stop_cache.get(key)
        if cached is not None:
            return cached
        base = list(self.backend.tokenize(""))
        ids: list[int] = []
        texts: list[str] = []
        for stop in stops:
            tokens = list(self.backend.tokenize(stop))
            if tokens[: len(base)] == base and len(tokens) == len(base) + 1:
                ids.append(tokens[-1])
            else:
                texts.append(stop)
        self._stop_cache[key] = (ids, texts)
        return ids, texts

    def prepare(self, request: ChatCompletionRequest, request_id: Optional[str] = None) -> PreparedChat:
        """Validate and render `request`; raises `ServiceError` subclasses (HTTP 4xx)."""
        unencodable = first_unencodable(request)
        if unencodable is not None:
            raise InvalidRequestError(
                f"`{unencodable}` contains an unpaired UTF-16 surrogate escape (\\ud800-\\udfff), which is "
                "not valid Unicode.",
                param=unencodable,
                code="invalid_unicode",
            )
        model = self.resolve_model(request.model)
        n = request.n if request.n is not None else 1
        if n > self.max_n:
            raise InvalidRequestError(f"n must be at most {self.max_n}, got {n}.", param="n")
        logprobs = _logprobs_param(request)
        logit_bias = _logit_bias_param(request)

        messages = [_message_dict(m) for m in request.messages]
        tools = [t.model_dump(exclude_none=True) for t in request.tools] if request.tools is not None else None
        functions = (
            [f.model_dump(exclude_none=True) for f in request.functions] if request.functions is not None else None
        )
        tool_choice = _choice_value(request.tool_choice)
        function_call = _choice_value(request.function_call)
        try:  # the one place tool definitions are checked, before anything renders them
            check_tool_definitions(tools=tools, functions=functions, tool_choice=tool_choice, limits=self.tool_limits)
        except ToolDefinitionError as exc:
            raise InvalidRequestError(exc.message, param=exc.param, code=exc.code) from exc
        try:
            built = self._build_prompt(
                self.template,
                messages,
                tools=tools,
                functions=functions,
                tool_choice=tool_choice,
                function_call=function_call,
            )
        except ValueError as exc:  # PromptError is a ValueError
            raise InvalidRequestError(
                getattr(exc, "message", None) or str(exc), param=getattr(exc, "param", None)
            ) from exc

        prompt_ids = list(self.backend.tokenize(built.prompt))
        max_len = self.backend.max_model_len
        max_tokens = request.effective_max_tokens
        if max_tokens is None:
            if len(prompt_ids) >= max_len:
                raise InvalidRequestError(
                    f"This model's maximum context length is {max_len} tokens. However, your "
                    f"messages resulted in {len(prompt_ids)} tokens. Please reduce the length of "
                    "the messages.",
                    param="messages",
                    code="context_length_exceeded",
                )
            max_tokens = max_len - len(prompt_ids)
        elif len(prompt_ids) + max_tokens > max_len:
            raise InvalidRequestError(
                f"This model's maximum context length is {max_len} tokens. However, you requested "
                f"{len(prompt_ids) + max_tokens} tokens ({len(prompt_ids)} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages or "
                "completion.",
                param="max_tokens" if request.max_completion_tokens is None else "max_completion_tokens",
                code="context_length_exceeded",
            )
        min_tokens = request.min_tokens or 0
        if min_tokens > max_tokens:
            raise InvalidRequestError(
                f"min_tokens ({min_tokens}) must not exceed max_tokens ({max_tokens}).", param="min_tokens"
            )

        response_format = _response_format_param(request, built.tool_choice)
        # A JSON response replaces the format's text constraint (only text can be written then).
        constraint = None if response_format else self._constraint(built, request.parallel_tool_calls)
        stop_ids, stop_texts = self.split_stops(tuple(built.stop))
        if constraint is not None and self.grammar_backend == XGRAMMAR:
            # The structural tag ends the turn itself (after a stop marker only end-of-sequence
            # may follow), while a textual stop string would also cut an argument string that
            # happens to contain it: the engine gets only the user's stop strings.
            stop_texts = []
        stops = list(dict.fromkeys([*request.stop_list, *stop_texts]))
        stop_token_ids = list(dict.fromkeys([*stop_ids, *(request.stop_token_ids or [])]))
        extra: dict[str, Any] = {}
        params = GenerationParams(
            max_tokens=max_tokens,
            temperature=1.0 if request.temperature is None else request.temperature,
            top_p=1.0 if request.top_p is None else request.top_p,
            top_k=-1 if request.top_k is None else request.top_k,
            min_p=0.0 if request.min_p is None else request.min_p,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
            seed=request.seed,
            n=n,
            stop=stops,
            stop_token_ids=stop_token_ids,
            ignore_eos=bool(request.ignore_eos),
            min_tokens=min_tokens,
            logprobs=logprobs,
            logit_bias=logit_bias,
            response_format=response_format,
            constraint=constraint,
            constraint_backend=self.grammar_backend,
            lora=model if model in self.lora_names else None,
            extra=extra,
        )
        return PreparedChat(
            request_id=request_id or f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=model,
            prompt=built.prompt,
            prompt_token_ids=prompt_ids,
            params=params,
            tool_choice=built.tool_choice,
            legacy_functions=bool(built.legacy_functions),
            single_call=request.parallel_tool_calls is False,
            include_usage=request.include_usage,
            stats=RequestStats(prompt_tokens=len(prompt_ids)),
        )

    def _constraint(self, built: Any, parallel_tool_calls: Optional[bool]) -> Optional[dict[str, Any]]:
        """The grammar-sampling spec the engine enforces (JSON only), or None: grammar sampling
        is off, or the spec cannot be compiled (logged; the request runs unconstrained, as the
        logits processor also does)."""
        if not self.grammar_sampling:
            return None
        from functionary.grammar import GrammarError
        from functionary.grammar.spec import constraint_for_prompt

        spec = constraint_for_prompt(self.template.version, built, parallel_tool_calls)
        if self.grammar_backend == XGRAMMAR:
            from functionary.grammar.structural_tag import structural_tag_json

            try:
                structural_tag_json(spec)  # compiled once per tool set (cached), checked here
            except GrammarError as exc:
                logger.warning("grammar sampling off for this request: %s", exc)
                return None
        return spec

    # ------------------------------------------------------------------ running

    async def _run(self, prep: PreparedChat) -> AsyncIterator["_ChoiceUpdate"]:
        """Engine output -> per-choice updates (deltas, finish_reason, log probabilities), in
        order. Log probabilities ride on the next update of their choice, so the updates of a
        stream add up to exactly the whole answer's."""
        ids = _ToolCallIds()
        choices = [
            _Choice(
                i,
                self.template.stream_parser(prep.tool_choice, json_arguments=prep.params.constraint is not None),
                legacy=prep.legacy_functions,
                single_call=prep.single_call,
                ids=ids,
            )
            for i in range(prep.params.n)
        ]
        stats = prep.stats
        opened = False
        pending: list[list[Any]] = [[] for _ in choices]  # log probabilities not yet sent

        def update(index: int, deltas: list[DeltaMessage], reason: Optional[str]) -> _ChoiceUpdate:
            logprobs = pending[index] if prep.params.logprobs is not None else None
            pending[index] = []
            return _ChoiceUpdate(index, deltas, reason, logprobs)

        try:
            generator = self.backend.generate(prep.request_id, prep.prompt_token_ids, prep.params)
        except Exception as exc:
            raise await self._engine_error(exc) from exc
        try:
            try:
                async for out in generator:
                    if not 0 <= out.index < len(choices):
                        logger.warning("engine returned choice %s of %s; dropped", out.index, len(choices))
                        continue
                    if not opened:
                        # Every choice opens with its role, in index order, once the engine
                        # answered (clients such as openai-python's stream accumulator need
                        # choice i to appear before choice i+1).
                        opened = True
                        for c in choices:
                            yield _ChoiceUpdate(c.index, [DeltaMessage(role="assistant")], None, None)
                    choice = choices[out.index]
                    choice.completion_tokens += len(out.token_ids)
                    stats.completion_tokens += len(out.token_ids)
                    if out.finish_reason is not None:
                        choice.engine_finished = True
                    if choice.done:
                        continue
                    if stats.first_token_at is None and (out.text or out.token_ids):
                        stats.first_token_at = time.monotonic()
                    if out.logprobs:
                        pending[out.index].extend(out.logprobs)
                    deltas = choice.feed(out.text)
                    if choice.cut:
                        last, reason = choice.close(out.finish_reason)
                        yield update(choice.index, deltas + last, reason)
                    elif out.finish_reason is not None:
                        last, reason = choice.close(out.finish_reason)
                        yield update(choice.index, deltas + last, reason)
                    elif deltas:
                        yield update(choice.index, deltas, None)
                    if all(c.done for c in choices):
                        break
            except ServiceError:
                raise
            except Exception as exc:
                raise await self._engine_error(exc) from exc
            if not opened:
                for c in choices:
                    yield _ChoiceUpdate(c.index, [DeltaMessage(role="assistant")], None, None)
            for choice in choices:  # the engine ended without a finish_reason for these
                if not choice.done:
                    last, reason = choice.close("stop")
                    yield update(choice.index, last, reason)
        finally:
            unfinished = not all(c.engine_finished for c in choices)
            with anyio.CancelScope(shield=True):
                if unfinished:
                    try:
                        await self.backend.abort(prep.request_id)
                    except Exception:  # pragma: no cover - best effort
                        logger.exception("aborting request %s failed", prep.request_id)
                aclose = getattr(generator, "aclose", None)
                if aclose is not None:
                    try:
                        await aclose()
                    except Exception:  # pragma: no cover - best effort
                        logger.exception("closing the engine stream of %s failed", prep.request_id)

    async def _engine_error(self, exc: BaseException) -> ServiceError:
        """An exception from the engine: a ValueError is the request's fault (400; backends
        raise one for parameters the engine refuses), else 503 if the engine is unhealthy,
        else 500."""
        if isinstance(exc, ValueError):
            logger.info("engine refused the request: %s", exc)
            return InvalidRequestError(str(exc))
        logger.error("engine error: %r", exc)
        try:
            with anyio.fail_after(5):
                await self.backend.check_health()
        except Exception:
            return EngineUnavailableError(f"The engine is not available: {exc}")
        return InternalError(f"The engine failed to serve the request: {exc}")

    def usage(self, prep: PreparedChat) -> UsageInfo:
        stats = prep.stats
        return UsageInfo(
            prompt_tokens=stats.prompt_tokens,
            completion_tokens=stats.completion_tokens,
            total_tokens=stats.prompt_tokens + stats.completion_tokens,
        )

    async def complete(self, prep: PreparedChat) -> ChatCompletionResponse:
        """The non-streamed answer: every delta of every choice, folded."""
        folders = [MessageFolder() for _ in range(prep.params.n)]
        reasons: list[Optional[str]] = [None] * prep.params.n
        wants_logprobs = prep.params.logprobs is not None
        logprobs: list[list[Any]] = [[] for _ in range(prep.params.n)]
        async for up in self._run(prep):
            for delta in up.deltas:
                folders[up.index].add(delta)
            if up.logprobs:
                logprobs[up.index].extend(up.logprobs)
            if up.finish_reason is not None:
                reasons[up.index] = up.finish_reason
                prep.stats.finish_reasons.append(up.finish_reason)
        return ChatCompletionResponse(
            id=prep.request_id,
            created=prep.created,
            model=prep.model,
            choices=[
                ChatCompletionChoice(
                    index=i,
                    message=f.message(),
                    logprobs=choice_logprobs(logprobs[i]) if wants_logprobs else None,
                    finish_reason=reasons[i],
                )
                for i, f in enumerate(folders)
            ],
            usage=self.usage(prep),
        )

    async def stream(self, prep: PreparedChat) -> AsyncIterator[ChatCompletionChunk]:
        """The streamed answer: one chunk per delta, a finish chunk per choice, then usage."""

        def chunk(
            index: int, delta: DeltaMessage, reason: Optional[str] = None, logprobs: Optional[list] = None
        ) -> ChatCompletionChunk:
            return ChatCompletionChunk(
                id=prep.request_id,
                created=prep.created,
                model=prep.model,
                choices=[ChatCompletionChunkChoice(
                    index=index,
                    delta=delta,
                    logprobs=choice_logprobs(logprobs) if logprobs is not None else None,
                    finish_reason=reason,
                )],
            )

        async for up in self._run(prep):
            logprobs = up.logprobs  # sent once, with the update's first chunk
            for delta in up.deltas:
                yield chunk(up.index, delta, logprobs=logprobs)
                logprobs = None
            if up.finish_reason is not None:
                prep.stats.finish_reasons.append(up.finish_reason)
                yield chunk(up.index, DeltaMessage(), up.finish_reason, logprobs=logprobs)
            elif logprobs:
                yield chunk(up.index, DeltaMessage(), logprobs=logprobs)
        if prep.include_usage:
            yield ChatCompletionChunk(
                id=prep.request_id,
                created=prep.created,
                model=prep.model,
                choices=[],
                usage=self.usage(prep),
            )


def _choice_value(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    return value.model_dump(exclude_none=True)


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    """A message as the template layer takes it: plain OpenAI JSON (it normalises content
    parts and the `developer` role itself)."""
    return message.model_dump(exclude_none=True)


@dataclass
class _ChoiceUpdate:
    """What `_run` hands on for one choice: deltas, its finish_reason once it finished, and the
    log probabilities of the tokens since its last update (None when not asked for)."""

    index: int
    deltas: list[DeltaMessage]
    finish_reason: Optional[str]
    logprobs: Optional[list[Any]]


def choice_logprobs(entries: Sequence[Any]) -> ChoiceLogprobs:
    """OpenAI's `logprobs` object of a choice from the backend's `TokenLogprob`s."""

    def utf8(token: str) -> list[int]:
        return list(token.encode("utf-8", errors="surrogatepass"))

    return ChoiceLogprobs(content=[
        TokenLogprobOut(
            token=e.token,
            logprob=e.logprob,
            bytes=utf8(e.token),
            top_logprobs=[TopLogprob(token=t.token, logprob=t.logprob, bytes=utf8(t.token)) for t in e.top],
        )
        for e in entries
    ])


def _logprobs_param(request: ChatCompletionRequest) -> Optional[int]:
    """The number of alternatives per token to return, or None for no log probabilities."""
    if request.top_logprobs is not None and not request.logprobs:
        raise InvalidRequestError("`top_logprobs` requires `logprobs` to be true.", param="top_logprobs")
    if not request.logprobs:
        return None
    return request.top_logprobs or 0


LOGIT_BIAS_LIMIT = 100.0


def _logit_bias_param(request: ChatCompletionRequest) -> Optional[dict[int, float]]:
    """OpenAI's `logit_bias` (token id strings -> -100..100) as token ids."""
    if not request.logit_bias:
        return None
    bias: dict[int, float] = {}
    for key, value in request.logit_bias.items():
        try:
            token_id = int(key)
        except ValueError:
            raise InvalidRequestError(
                f"`logit_bias` keys must be token ids, got {key!r}.", param="logit_bias"
            ) from None
        if token_id < 0 or not -LOGIT_BIAS_LIMIT <= value <= LOGIT_BIAS_LIMIT:
            raise InvalidRequestError(
                f"`logit_bias` maps token ids >= 0 to values between -100 and 100, got {key}: {value}.",
                param="logit_bias",
            )
        bias[token_id] = float(value)
    return bias


def _response_format_param(request: ChatCompletionRequest, tool_choice: Any) -> Optional[dict[str, Any]]:
    """The JSON the whole answer must be, or None (`text`, or an answer that can only call
    tools: OpenAI's `response_format` shapes the message content, which such an answer has not).

    With tools and `tool_choice` "auto" the model may write either; constraining both at once
    is not supported: refused, naming `response_format`."""
    rf = request.response_format
    if rf is None or rf.type == "text":
        return None
    if tool_choice not in (None, "none"):
        if tool_choice == "auto":
            raise InvalidRequestError(
                f"`response_format` {rf.type!r} together with tools is supported only when the answer "
                "cannot call them (`tool_choice` \"none\") or must call them (\"required\" or a named "
                "function); with \"auto\" this server cannot constrain both the calls and the text.",
                param="response_format",
            )
        return None
    if rf.type == "json_object":
        return {"type": "json_object"}
    schema = rf.json_schema.schema_ if rf.json_schema is not None else None
    if schema is not None:
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import SchemaError

        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise InvalidRequestError(
                f"`response_format.json_schema.schema` is not a valid JSON Schema: {exc.message}",
                param="response_format.json_schema.schema",
            ) from None
    return {"type": "json_schema", "schema": schema or {"type": "object"}}
