"""The TGI back end: Functionary's prompts and parsing on a Text Generation Inference endpoint.

Our renderer writes the prompt; this adapter sends its text to TGI's `/generate_stream`
through `huggingface_hub`'s `AsyncInferenceClient` (details on), one upstream stream per
choice, and turns the token events back into `GenerationDelta`s. Everything TGI-specific
lives here: which sampling parameters TGI takes (and which it cannot honour: HTTP 400), stop
handling, the `grammar` parameter, and TGI's error statuses.

What TGI does differently from vLLM, and how it is handled:

* Stops: TGI takes at most `max_stop_sequences` stop strings (`GET /info`), has no stop token
  ids, and *includes* a matched stop string in its output. Every stop is therefore enforced
  here (text cut before the stop, held back while it may be the start of one; a stop token id
  ends the choice without its text) and the first `max_stop_sequences` are also sent to TGI
  so that it stops early; the upstream stream is closed as soon as a choice stops.
* Special tokens: each streamed token's `text` includes special tokens (the format's markers
  such as `<|from|>` or `>>>`-adjacent tokens), which is what our stream parser expects; the
  final end-of-sequence token is not output (as vLLM does not output it).
* Grammar: TGI's `grammar` is one JSON Schema or regex over the whole generated text. A named
  `tool_choice` ends the prompt with the call's opener and the function name (the generation
  prefix), so the model's whole output is the arguments: the function's JSON Schema keeps the
  guarantee. No other mode can be expressed that way (see `grammar_for`).
"""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Optional, Sequence

from functionary.backends.base import GenerationDelta, GenerationParams
from functionary.grammar.cache import LRUCache
# The status of a failed request is the endpoint's answer, which only this adapter can read:
# it raises the serving layer's errors directly (they depend on nothing).
from functionary.serving.errors import (
    EngineUnavailableError,
    InvalidRequestError,
    RateLimitError,
    ServiceError,
    UpstreamError,
)

logger = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
HEALTH_TIMEOUT_S = 10.0
_INSTALL_HINT = "The TGI back end needs `pip install 'functionary[tgi]'`"
_MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class EndpointInfo:
    """What `GET /info` says about the endpoint (the fields this back end uses)."""

    model_id: str
    max_total_tokens: int
    max_input_tokens: int
    max_stop_sequences: int
    version: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> "EndpointInfo":
        return cls(
            model_id=str(body.get("model_id", "")),
            max_total_tokens=int(body["max_total_tokens"]),
            # TGI < 2 called it max_input_length
            max_input_tokens=int(body.get("max_input_tokens", body.get("max_input_length", 0))),
            max_stop_sequences=int(body["max_stop_sequences"]),
            version=str(body.get("version", "?")),
        )


# ---------------------------------------------------------------------------------------------
# GenerationParams -> TGI parameters


@dataclass(frozen=True)
class GrammarPlan:
    """TGI's `grammar` for a request (or None) and what it guarantees, for the log."""

    grammar: Optional[dict[str, Any]]
    guarantee: str


def grammar_for(constraint: Optional[dict[str, Any]]) -> GrammarPlan:
    """The TGI grammar that keeps our guarantee for `constraint` (a grammar-sampling spec).

    Only a named tool_choice maps onto TGI's grammar: the prompt already ends with the call's
    opener and the name, so the whole output is the arguments, held to the function's schema.
    `none` needs none (the prompt has no tools). `auto` and `required` would need the format's
    markers around JSON Schema arguments, which one JSON Schema or regex cannot express: they
    run unconstrained.
    """
    if constraint is None:
        return GrammarPlan(None, "grammar sampling off: nothing enforced")
    from functionary.grammar.spec import parse_spec

    spec = parse_spec(constraint)
    if spec.named:
        schema = dict(spec.parameters(spec.tool_choice) or {"type": "object"})
        return GrammarPlan(
            _json_grammar(schema),
            f"named tool_choice {spec.tool_choice!r}: arguments guaranteed by TGI's JSON grammar",
        )
    if spec.tool_choice == "none":
        return GrammarPlan(None, "tool_choice 'none': no tools in the prompt; text not grammar-enforced")
    return GrammarPlan(
        None, f"tool_choice {spec.tool_choice!r}: NOT guaranteed on TGI (names and arguments unconstrained)"
    )


def _json_grammar(schema: dict[str, Any]) -> dict[str, Any]:
    schema = dict(schema)
    # TGI refuses a JSON grammar without `properties` ("Grammar must have a 'properties'
    # field"); an empty one means the same to JSON Schema.
    schema.setdefault("properties", {})
    # Sent as a JSON string: TGI parses it again, and huggingface_hub drops null values
    # from dicts it sends (a schema's `"default": null` would otherwise vanish).
    return {"type": "json", "value": json.dumps(schema, ensure_ascii=False)}


def response_format_grammar(response_format: dict[str, Any]) -> GrammarPlan:
    """OpenAI's `response_format` (the whole answer is JSON) as TGI's JSON grammar."""
    schema = response_format.get("schema") if response_format.get("type") == "json_schema" else None
    return GrammarPlan(
        _json_grammar(schema or {"type": "object"}),
        f"response_format {response_format.get('type')!r}: the answer is held to it by TGI's JSON grammar",
    )


def _refuse(name: str, what: str) -> InvalidRequestError:
    return InvalidRequestError(f"`{name}` is not supported on the TGI back end: {what}.", param=name)


def tgi_seed(seed: int, choice: int) -> int:
    """A TGI seed (1 .. 2**64-1) for an OpenAI seed (any integer) and choice index: the same
    seed gives the same seeds, and the choices of one request differ."""
    return (seed + choice) % _MAX_SEED + 1


def sampling_parameters(params: GenerationParams) -> dict[str, Any]:
    """TGI's sampling parameters for `params` (seed excluded); raises `InvalidRequestError`
    naming a parameter TGI cannot honour.

    TGI samples as soon as any of `temperature`, `top_p`, `top_k` is sent, so temperature 0
    (greedy, as in OpenAI and vLLM) sends none of them.
    """
    if params.presence_penalty:
        raise _refuse("presence_penalty", "TGI has no presence penalty (it has `frequency_penalty`)")
    if params.min_p:
        raise _refuse("min_p", "TGI has no min-p sampling")
    if params.min_tokens:
        raise _refuse("min_tokens", "TGI cannot forbid end-of-sequence before a minimum length")
    if params.ignore_eos:
        raise _refuse("ignore_eos", "TGI always stops at end-of-sequence")
    if params.extra:
        name = sorted(params.extra)[0]
        raise _refuse(name, "not a TGI parameter")
    if params.logprobs is not None:
        raise _refuse("logprobs", "log probabilities are not returned")
    if params.logit_bias:
        raise _refuse("logit_bias", "TGI's generate API has no logit bias")
    out: dict[str, Any] = {}
    if params.temperature < 0:
        raise InvalidRequestError("`temperature` must be at least 0.", param="temperature")
    if params.temperature > 0:
        out["do_sample"] = True
        out["temperature"] = params.temperature
        if not 0 < params.top_p <= 1:
            raise InvalidRequestError("`top_p` must be in (0, 1] on the TGI back end.", param="top_p")
        if params.top_p < 1:
            out["top_p"] = params.top_p  # TGI refuses top_p == 1.0: leaving it out means 1
        if params.top_k > 0:
            out["top_k"] = params.top_k
    else:
        out["do_sample"] = False
    if params.repetition_penalty <= 0:
        raise InvalidRequestError("`repetition_penalty` must be greater than 0.", param="repetition_penalty")
    if params.repetition_penalty != 1.0:
        out["repetition_penalty"] = params.repetition_penalty
    if params.frequency_penalty:
        if not -2 <= params.frequency_penalty <= 2:
            raise InvalidRequestError("`frequency_penalty` must be between -2 and 2.", param="frequency_penalty")
        out["frequency_penalty"] = params.frequency_penalty
    return out


class StopCutter:
    """Cuts one choice's text before the first stop string (TGI leaves it in its output),
    holding back a tail that may be the start of one until the next text decides."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in dict.fromkeys(stops) if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._text = ""  # text not yet released

    def feed(self, text: str) -> tuple[str, bool]:
        """(text to release, whether a stop was found: then nothing more follows)."""
        self._text += text
        cut = min((i for i in (self._text.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self._text = self._text[:cut], ""
            return out, True
        keep = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self._text)), 0, -1):
                if self._text.endswith(stop[:k]):
                    keep = max(keep, k)
                    break
        upto = len(self._text) - keep
        out, self._text = self._text[:upto], self._text[upto:]
        return out, False

    def flush(self) -> str:
        out, self._text = self._text, ""
        return out


# ---------------------------------------------------------------------------------------------
# errors


def _error_type_of(exc: BaseException) -> Optional[str]:
    """TGI's `error_type` for a huggingface_hub text-generation error (None: not one)."""
    from huggingface_hub.errors import (
        GenerationError,
        IncompleteGenerationError,
        OverloadedError,
        ValidationError,
    )

    for cls, kind in (
        (ValidationError, "validation"),
        (OverloadedError, "overloaded"),
        (GenerationError, "generation"),
        (IncompleteGenerationError, "incomplete_generation"),
    ):
        if isinstance(exc, cls):
            return kind
    return None


def translate_error(exc: BaseException, endpoint: str) -> ServiceError:
    """An OpenAI-format error for a failure talking to TGI: 422/validation -> 400,
    429/overloaded -> 429, 424/generation and 5xx -> 502, no answer at all -> 503."""
    from huggingface_hub.errors import HfHubHTTPError, InferenceTimeoutError, TextGenerationError

    kind = _error_type_of(exc)
    status = None
    response = getattr(exc, "response", None)
    if isinstance(exc, HfHubHTTPError) and response is not None:
        status = response.status_code
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if kind == "validation" or status in (400, 422):
        return InvalidRequestError(f"TGI refused the request: {message}")
    if kind == "overloaded" or status == 429:
        return RateLimitError(f"TGI is overloaded: {message}", code="overloaded")
    if isinstance(exc, InferenceTimeoutError):
        return UpstreamError(f"TGI did not answer in time: {message}", code="upstream_timeout")
    if kind is not None or isinstance(exc, TextGenerationError) or status is not None:
        return UpstreamError(f"TGI failed the request ({kind or status}): {message}", code="upstream_error")
    return EngineUnavailableError(f"The TGI endpoint {endpoint} is not reachable: {message}")


# ---------------------------------------------------------------------------------------------
# the back end


@dataclass
class _Request:
    prompt: str
    parameters: dict[str, Any]  # shared by every choice (seed added per choice)
    seed: Optional[int]
    stop_ids: frozenset[int]
    stops: list[str]  # enforced here
    input_length: int


class TGIBackend:
    """Implements `functionary.backends.base.Backend` on a TGI endpoint."""

    # Not the service's grammar back end (server_tgi.py hands the spec over as it is): TGI's own
    # `grammar` parameter, which can hold a named tool_choice only (`grammar_plan`).
    grammar_enforcer = "TGI's JSON grammar (named tool_choice and response_format only)"

    def __init__(
        self,
        endpoint: str,
        tokenizer: Any,
        info: EndpointInfo,
        *,
        model_name: str,
        max_model_len: Optional[int] = None,
        request_timeout: Optional[float] = None,
        on_shutdown: Any = None,
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.tokenizer = tokenizer
        self.info = info
        self.model_name = model_name
        self.max_model_len = min(max_model_len or info.max_total_tokens, info.max_total_tokens)
        self.request_timeout = request_timeout
        self._on_shutdown = on_shutdown
        self._texts: LRUCache[str] = LRUCache(256)  # prompt token ids -> the text they came from
        self._running: dict[str, list[asyncio.Task]] = {}
        self._mismatch_logged = False
        self._closed = False

    # -- construction ---------------------------------------------------------------------

    @classmethod
    async def connect(
        cls,
        endpoint: str,
        model: str,
        *,
        model_name: Optional[str] = None,
        max_total_tokens: Optional[int] = None,
        request_timeout: Optional[float] = None,
        on_shutdown: Any = None,
        tokenizer_cache_dir: Optional[str] = None,
    ) -> "TGIBackend":
        """Read the endpoint's `/info` and load the tokenizer of `model` (a local folder or a
        model id: the same model the endpoint serves)."""
        info = await fetch_info(endpoint)
        tokenizer = await asyncio.to_thread(load_tokenizer, model, tokenizer_cache_dir)
        if max_total_tokens and max_total_tokens > info.max_total_tokens:
            logger.warning(
                "--max_total_tokens %s is more than the endpoint allows (%s): using %s",
                max_total_tokens, info.max_total_tokens, info.max_total_tokens,
            )
        # Whether the endpoint's model is `model` shows in the first answer: TGI's prompt token
        # count must equal ours (`_check_usage` warns otherwise).
        logger.info(
            "TGI %s at %s serves %s (max_total_tokens %s, max_input_tokens %s, max_stop_sequences %s); "
            "tokenizer from %s",
            info.version, endpoint, info.model_id, info.max_total_tokens, info.max_input_tokens,
            info.max_stop_sequences, model,
        )
        return cls(
            endpoint, tokenizer, info, model_name=model_name or model, max_model_len=max_total_tokens,
            request_timeout=request_timeout, on_shutdown=on_shutdown,
        )

    # -- tokenizer ------------------------------------------------------------------------

    def get_tokenizer(self) -> Any:
        return self.tokenizer

    def tokenize(self, text: str) -> list[int]:
        # TGI tokenizes `inputs` with the model's special tokens added (BOS), as we do here.
        ids = list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
        self._texts.get(tuple(ids), lambda: text)
        return ids

    def _prompt_text(self, prompt_token_ids: Sequence[int]) -> str:
        """The text to send for `prompt_token_ids`: the text they were tokenized from (TGI
        tokenizes text itself), else their decoding without the BOS TGI adds again."""
        key = tuple(prompt_token_ids)
        text = self._texts.get(key, lambda: "")
        if text or not key:
            return text
        ids = list(key)
        bos = getattr(self.tokenizer, "bos_token_id", None)
        if ids and bos is not None and ids[0] == bos and self.tokenize("")[:1] == [bos]:
            ids = ids[1:]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    # -- generation -----------------------------------------------------------------------

    def _prepare(self, request_id: str, prompt_token_ids: list[int], params: GenerationParams) -> _Request:
        if params.n < 1:
            raise InvalidRequestError("`n` must be at least 1.", param="n")
        if not params.max_tokens or params.max_tokens < 1:
            raise InvalidRequestError("`max_tokens` must be at least 1 on the TGI back end.", param="max_tokens")
        if self.info.max_input_tokens and len(prompt_token_ids) > self.info.max_input_tokens:
            raise InvalidRequestError(
                f"The TGI endpoint takes at most {self.info.max_input_tokens} prompt tokens; your "
                f"messages resulted in {len(prompt_token_ids)} tokens.",
                param="messages", code="context_length_exceeded",
            )
        parameters = sampling_parameters(params)
        if params.response_format is not None:
            plan = response_format_grammar(params.response_format)
        else:
            plan = grammar_for(params.constraint)
        stops = list(params.stop)
        if params.constraint is not None:
            # Under grammar sampling the service leaves the format's stop strings to the
            # grammar; TGI's grammar does not end turns, so they are enforced here.
            from functionary.prompt_template.formats import FORMATS

            version = params.constraint.get("version")
            if version in FORMATS:
                stops += list(FORMATS[version].syntax.stop_tokens)
        stop_ids = frozenset(params.stop_token_ids)
        upstream_stops = list(dict.fromkeys([*stops, *(self._token_text(i) for i in params.stop_token_ids)]))
        parameters.update(
            max_new_tokens=params.max_tokens,
            details=True,
            stop=upstream_stops[: self.info.max_stop_sequences],
        )
        if plan.grammar is not None:
            parameters["grammar"] = plan.grammar
        logger.info("%s on TGI: %s", request_id, plan.guarantee)
        return _Request(
            prompt=self._prompt_text(prompt_token_ids),
            parameters=parameters,
            seed=params.seed if parameters.get("do_sample") else None,
            stop_ids=stop_ids,
            stops=stops,
            input_length=len(prompt_token_ids),
        )

    async def generate(
        self, request_id: str, prompt_token_ids: list[int], params: GenerationParams
    ) -> AsyncIterator[GenerationDelta]:
        if self._closed:
            raise EngineUnavailableError("the TGI back end was shut down")
        if request_id in self._running:
            raise InvalidRequestError(f"request id {request_id!r} is already running")
        request = self._prepare(request_id, prompt_token_ids, params)
        queue: asyncio.Queue = asyncio.Queue()
        tasks = [
            asyncio.create_task(self._run_choice(i, request, queue), name=f"tgi-{request_id}-{i}")
            for i in range(params.n)
        ]
        self._running[request_id] = tasks
        try:
            open_choices = params.n
            while open_choices:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise item
                if item.finish_reason is not None:
                    open_choices -= 1
                yield item
        finally:
            # Cancelling a choice closes its upstream stream, which makes TGI stop generating.
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._running.pop(request_id, None)

    async def _run_choice(self, index: int, request: _Request, queue: asyncio.Queue) -> None:
        from huggingface_hub import AsyncInferenceClient

        parameters = dict(request.parameters)
        if request.seed is not None:
            parameters["seed"] = tgi_seed(request.seed, index)
        cutter = StopCutter(request.stops)
        client = AsyncInferenceClient(
            model=f"{self.endpoint}/generate_stream", provider="hf-inference", timeout=self.request_timeout
        )
        counted = 0
        try:
            try:
                stream = await client.text_generation(request.prompt, stream=True, **parameters)
                async for event in stream:
                    token, details = event.token, event.details
                    counted += 1
                    ids = [token.id]
                    finish: Optional[str] = None
                    text = token.text
                    if token.id in request.stop_ids:
                        text, finish = "", "stop"  # a stop token: its text is not output
                    elif details is not None and details.finish_reason == "eos_token" and token.special:
                        text = ""  # end-of-sequence is not output
                    released, stopped = cutter.feed(text)
                    if stopped:
                        finish = "stop"
                    elif details is not None:
                        finish = "length" if details.finish_reason == "length" else "stop"
                    if finish is not None:
                        if not stopped:
                            released += cutter.flush()
                        if details is not None:
                            self._check_usage(request, details, counted)
                            # usage is TGI's own count of generated tokens (earlier deltas
                            # carried one id per event)
                            ids = [token.id] * max(0, details.generated_tokens - (counted - 1))
                        await queue.put(GenerationDelta(index, released, ids, finish))
                        return
                    if released or ids:
                        await queue.put(GenerationDelta(index, released, ids, None))
            except ServiceError as exc:
                await queue.put(exc)
                return
            except Exception as exc:  # noqa: BLE001 - every failure becomes an OpenAI error
                logger.warning("TGI stream of choice %s failed: %r", index, exc)
                await queue.put(translate_error(exc, self.endpoint))
                return
            await queue.put(UpstreamError("TGI ended the stream without a finish reason"))
        finally:
            await asyncio.shield(client.close())

    def _check_usage(self, request: _Request, details: Any, counted: int) -> None:
        input_length = getattr(details, "input_length", None)
        if input_length is not None and input_length != request.input_length and not self._mismatch_logged:
            self._mismatch_logged = True
            logger.warning(
                "TGI counted %s prompt tokens where our tokenizer counted %s: is --model the model "
                "the endpoint serves?", input_length, request.input_length,
            )

    async def abort(self, request_id: str) -> None:
        for task in self._running.get(request_id, ()):
            task.cancel()

    # -- health and shutdown --------------------------------------------------------------

    async def check_health(self) -> None:
        if self._closed:
            raise EngineUnavailableError("the TGI back end was shut down")
        await probe_health(self.endpoint)

    async def shutdown(self) -> None:
        self._closed = True
        for tasks in list(self._running.values()):
            for task in tasks:
                task.cancel()
        if self._on_shutdown is not None:
            await asyncio.to_thread(self._on_shutdown)


# ---------------------------------------------------------------------------------------------
# the endpoint's other routes


async def probe_health(endpoint: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """Raise unless `GET {endpoint}/health` answers 200."""
    import httpx

    try:
        async with httpx.AsyncClient(timeout=timeout) as http:
            response = await http.get(f"{endpoint.rstrip('/')}/health")
    except httpx.HTTPError as exc:
        raise EngineUnavailableError(f"The TGI endpoint {endpoint} is not reachable: {exc!r}") from exc
    if response.status_code != 200:
        raise EngineUnavailableError(
            f"The TGI endpoint {endpoint} is not healthy (HTTP {response.status_code}): {response.text[:200]}"
        )


def endpoint_is_healthy(endpoint: str, timeout: float = 5.0) -> bool:
    """Whether `GET {endpoint}/health` answers 200 now (blocking; for start-up)."""
    import httpx

    try:
        return httpx.get(f"{endpoint.rstrip('/')}/health", timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


async def fetch_info(endpoint: str) -> EndpointInfo:
    from huggingface_hub import AsyncInferenceClient

    async with AsyncInferenceClient(provider="hf-inference") as client:
        try:
            body = await client.get_endpoint_info(model=endpoint.rstrip("/"))
        except Exception as exc:  # noqa: BLE001
            raise translate_error(exc, endpoint) from exc
    return EndpointInfo.from_json(body)


def load_tokenizer(model: str, cache_dir: Optional[str] = None) -> Any:
    """The tokenizer of `model`: a local folder, or a model id (from the Hugging Face hub
    cache in `cache_dir` -- where a TGI container started by us downloaded it -- or the hub)."""
    try:
        from transformers import AutoTokenizer
    except ImportError as exc:
        raise ImportError(f"{_INSTALL_HINT} ({exc})") from exc
    if cache_dir and not Path(model).is_dir():
        return AutoTokenizer.from_pretrained(model, cache_dir=cache_dir)
    return AutoTokenizer.from_pretrained(model)


__all__ = [
    "DEFAULT_ENDPOINT",
    "EndpointInfo",
    "GrammarPlan",
    "StopCutter",
    "TGIBackend",
    "endpoint_is_healthy",
    "fetch_info",
    "grammar_for",
    "load_tokenizer",
    "probe_health",
    "sampling_parameters",
    "tgi_seed",
    "translate_error",
]
