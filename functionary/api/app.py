"""The HTTP layer: FastAPI app factory, routes, SSE, API key, CORS, cancellation.

    app = create_app(settings, backend_factory)

`backend_factory()` returns a `Backend` (or an awaitable of one); it is called when the app
starts (lifespan) and the backend is shut down when it stops. All state lives on `app.state`.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import inspect
import json
import logging
from contextlib import asynccontextmanager
from functools import partial
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, TypeVar, Union

import anyio
from fastapi import APIRouter, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse

from functionary.api.errors import error_body, error_response, install_error_handlers
from functionary.api.limits import RequestLimits, RequestLimitsMiddleware
from functionary.api.metrics import MetricsMiddleware, ServerMetrics
from functionary.api.settings import DEFAULT_TEMPLATE_VERSION, ServerSettings
from functionary.backends.base import Backend
from functionary.protocol.openai import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
)
from functionary.serving.chat import ChatService, PreparedChat
from functionary.serving.errors import EngineUnavailableError, ModelNotFoundError, ServiceError

logger = logging.getLogger(__name__)

BackendFactory = Callable[[], Union[Backend, Awaitable[Backend]]]
T = TypeVar("T")

# Status recorded for a request whose client went away (nginx's convention; never sent).
CLIENT_CLOSED_REQUEST = 499
BACKEND_SHUTDOWN_TIMEOUT_S = 60.0


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await `awaitable`, cancelling it (and so aborting the engine request) if the client
    disconnects first; then raise `ClientDisconnected`."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_wait_for_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        work.cancel()
        watcher.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(work, watcher, return_exceptions=True)
        raise
    if work.done():
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        return work.result()
    work.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.gather(work, return_exceptions=True)
    raise ClientDisconnected()


class DisconnectAwareStreamingResponse(StreamingResponse):
    """A streaming response that stops (and closes its iterator) as soon as the client leaves,
    whatever ASGI spec version the server speaks."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            async with anyio.create_task_group() as task_group:

                async def run_then_cancel(func: Callable[[], Awaitable[None]]) -> None:
                    await func()
                    task_group.cancel_scope.cancel()

                task_group.start_soon(run_then_cancel, partial(self.stream_response, send))
                await run_then_cancel(partial(self.listen_for_disconnect, receive))
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True):
                    await aclose()


def _sse(data: str) -> str:
    return f"data: {data}\n\n"


def _chunk_frame(chunk: ChatCompletionChunk) -> str:
    return _sse(chunk.model_dump_json())


async def _event_stream(
    first: Optional[ChatCompletionChunk],
    chunks: AsyncIterator[ChatCompletionChunk],
    prep: PreparedChat,
    metrics: ServerMetrics,
) -> AsyncIterator[str]:
    outcome = "disconnected"
    try:
        if first is not None:
            yield _chunk_frame(first)
        try:
            async for chunk in chunks:
                yield _chunk_frame(chunk)
        except ServiceError as exc:
            outcome = "error"
            yield _sse(json.dumps(error_body(exc.message, exc.error_type, exc.param, exc.code)))
        except Exception:
            logger.exception("request %s failed while streaming", prep.request_id)
            outcome = "error"
            yield _sse(json.dumps(error_body("Internal server error.", "internal_server_error")))
        else:
            outcome = "ok"
        yield _sse("[DONE]")
    finally:
        with anyio.CancelScope(shield=True):
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        metrics.chat_finished(prep.stats, stream=True, outcome=outcome)


def _state(request: Request) -> Any:
    return request.app.state


def _service(request: Request) -> ChatService:
    state = _state(request)
    failure = getattr(state, "engine_failure", None)
    if failure is not None:
        raise EngineUnavailableError(f"The engine has failed and the server is shutting down: {failure}")
    service = getattr(state, "service", None)
    if service is None:
        raise EngineUnavailableError("The engine is not ready.")
    return service


router = APIRouter()


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request) -> Response:
    service = _service(request)
    metrics: ServerMetrics = _state(request).metrics
    prep = service.prepare(body)
    metrics.chat_started()
    stream = bool(body.stream)
    if stream:
        chunks = service.stream(prep)
        try:
            first: Optional[ChatCompletionChunk] = await run_until_disconnect(request, chunks.__anext__())
        except StopAsyncIteration:
            first = None
        except ClientDisconnected:
            metrics.chat_finished(prep.stats, stream=True, outcome="disconnected")
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        except BaseException:
            metrics.chat_finished(prep.stats, stream=True, outcome="error")
            raise
        return DisconnectAwareStreamingResponse(
            _event_stream(first, chunks, prep, metrics),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    outcome = "error"
    try:
        response = await run_until_disconnect(request, service.complete(prep))
        outcome = "ok"
    except ClientDisconnected:
        outcome = "disconnected"
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    finally:
        metrics.chat_finished(prep.stats, stream=False, outcome=outcome)
    return JSONResponse(response.model_dump())


def _model_cards(request: Request) -> list[ModelCard]:
    state = _state(request)
    backend = getattr(state, "backend", None)
    root = getattr(backend, "model_name", None)
    max_len = getattr(backend, "max_model_len", None)
    names = state.settings.served_model_names
    cards = [ModelCard(id=name, root=root, max_model_len=max_len) for name in names]
    # LoRA adapters as vLLM lists them: root = the adapter's weights, parent = its base model.
    cards += [
        ModelCard(id=a.name, root=a.path, parent=a.parent or names[0])
        for a in getattr(backend, "lora_adapters", ())
    ]
    return cards


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    return JSONResponse(ModelList(data=_model_cards(request)).model_dump())


@router.get("/v1/models/{model_id:path}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    for card in _model_cards(request):
        if card.id == model_id:
            return JSONResponse(card.model_dump())
    raise ModelNotFoundError(f"The model `{model_id}` does not exist.", param="model", code="model_not_found")


@router.get("/health")
async def health(request: Request) -> Response:
    state = _state(request)
    backend = getattr(state, "backend", None)
    failure = getattr(state, "engine_failure", None)
    if failure is not None:
        return error_response(503, f"The engine has failed: {failure}")
    if backend is None:
        return error_response(503, "The engine is not ready.")
    try:
        with anyio.fail_after(state.settings.health_check_timeout):
            await backend.check_health()
    except Exception as exc:  # noqa: BLE001 - any failure means "not healthy"
        logger.warning("health check failed: %r", exc)
        return error_response(503, f"The engine is not healthy: {exc or type(exc).__name__}")
    return JSONResponse({"status": "ok"})


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


class ApiKeyMiddleware:
    """Every request needs `Authorization: Bearer <key>` (compared in constant time)."""

    def __init__(self, app: Any, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode("utf-8")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self.expected):
            response = error_response(
                401,
                "Invalid or missing API key. Send it as `Authorization: Bearer <key>`.",
                "authentication_error",
                code="invalid_api_key",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def is_functionary_model(backend: Any) -> bool:
    """Whether the engine's tokenizer belongs to a Functionary format."""
    from functionary.prompt_template import detect_version

    get_tokenizer = getattr(backend, "get_tokenizer", None)
    if get_tokenizer is None:
        return False
    try:
        return detect_version(get_tokenizer()) is not None
    except Exception:  # noqa: BLE001 - a tokenizer we cannot inspect is not a Functionary one
        return False


def detect_template(backend: Any) -> Any:
    """The template of the engine's tokenizer; `DEFAULT_TEMPLATE_VERSION` for other models."""
    from functionary.prompt_template import (
        PromptError,
        get_prompt_template_by_version,
        get_prompt_template_from_tokenizer,
    )

    get_tokenizer = getattr(backend, "get_tokenizer", None)
    if get_tokenizer is not None:
        try:
            return get_prompt_template_from_tokenizer(get_tokenizer())
        except PromptError as exc:
            reason = exc.message
    else:
        reason = "the backend exposes no tokenizer"
    logger.warning(
        "Not a Functionary model (%s): using prompt template %s. Pass "
        "--prompt-template-version to choose another.",
        reason,
        DEFAULT_TEMPLATE_VERSION,
    )
    return get_prompt_template_by_version(DEFAULT_TEMPLATE_VERSION)


def with_model_system_prompt(template: Any, backend: Any) -> Any:
    """`template`, opening conversations with the model's own default system prompt where the
    format takes it (hermes) and the model's chat template has one."""
    from functionary.prompt_template.detect import default_system_prompt

    get_tokenizer = getattr(backend, "get_tokenizer", None)
    if not template.format.model_system_prompt or get_tokenizer is None:
        return template
    chat_template = getattr(get_tokenizer(), "chat_template", None)
    text = default_system_prompt(chat_template) if isinstance(chat_template, str) else None
    if text is None:
        return template
    logger.info("conversations without a system message open with the model's own: %r", text)
    return template.with_default_system(text)


async def watch_engine(app: FastAPI, backend: Any) -> None:
    """Wait for the engine to die; then refuse everything (503) and call
    `app.state.on_engine_dead` (the server's runner stops the process with a non-zero status,
    so that a supervisor restarts it). Requests in flight end with the engine's error."""
    wait_dead = getattr(backend, "wait_dead", None)
    if wait_dead is None:
        return
    cause = await wait_dead()
    app.state.engine_failure = cause
    logger.error("the engine died (%s): refusing requests and stopping the server", cause)
    on_dead = getattr(app.state, "on_engine_dead", None)
    if on_dead is not None:
        on_dead(cause)


def create_app(
    settings: ServerSettings,
    backend_factory: BackendFactory,
    *,
    template: Any = None,
) -> FastAPI:
    """Build the app. `template` overrides `settings.prompt_template_version` (tests)."""
    if template is None and settings.prompt_template_version:
        from functionary.prompt_template import get_prompt_template_by_version

        template = get_prompt_template_by_version(settings.prompt_template_version)  # fail early
    metrics = ServerMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        backend = backend_factory()
        if inspect.isawaitable(backend):
            backend = await backend
        chosen = with_model_system_prompt(template if template is not None else detect_template(backend), backend)
        grammar = settings.grammar_sampling
        if grammar is None:  # the model was not trained on a format: constrain it to the format
            grammar = not is_functionary_model(backend)
        app.state.backend = backend
        app.state.template = chosen
        metrics.watch_backend(backend)
        app.state.service = ChatService(
            backend, chosen, settings.served_model_names, max_n=settings.max_n, grammar_sampling=grammar,
            grammar_backend=settings.grammar_backend, tool_limits=settings.tool_limits,
        )
        logger.info(
            "serving %s (prompt template %s, grammar sampling %s) as %s",
            getattr(backend, "model_name", "?"),
            getattr(chosen, "version", "?"),
            f"on, {getattr(backend, 'grammar_enforcer', None) or settings.grammar_backend}" if grammar else "off",
            ", ".join(settings.served_model_names),
        )
        watchdog = asyncio.create_task(watch_engine(app, backend), name="functionary-engine-watch")
        try:
            yield
        finally:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
            app.state.service = None
            app.state.backend = None
            try:
                await asyncio.wait_for(backend.shutdown(), BACKEND_SHUTDOWN_TIMEOUT_S)
            except asyncio.TimeoutError:
                logger.error("the engine did not shut down within %.0f s", BACKEND_SHUTDOWN_TIMEOUT_S)

    app = FastAPI(title="functionary", version="0.1.0", lifespan=lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.template = template
    app.state.backend = None
    app.state.service = None
    app.state.engine_failure = None  # why the engine died, once it has
    app.state.on_engine_dead = None  # set by the runner (functionary.api.serve)
    install_error_handlers(app)
    app.include_router(router)
    # Added inside-out: the API key check is innermost, CORS answers preflights before it,
    # the limits come before both (functionary/api/limits.py), metrics see everything.
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.allowed_origins,
        allow_credentials=settings.allow_credentials,
        allow_methods=settings.allowed_methods,
        allow_headers=settings.allowed_headers,
    )
    app.add_middleware(RequestLimitsMiddleware, limits=RequestLimits.from_settings(settings))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
