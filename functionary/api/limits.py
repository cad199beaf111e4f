"""Limits a public endpoint needs, as one ASGI middleware (outside routing, so every route and
every entry point gets them from `ServerSettings`):

* headers larger than `max_header_bytes` in all: 431;
* a body larger than `max_body_bytes` (by Content-Length, or counted while it arrives): 413;
* more than `max_concurrent` requests at once: 429 with `Retry-After` (`/health` and `/metrics`
  are neither counted nor refused, so probes keep working under load);
* a request still running `timeout` seconds after it arrived: cancelled (which aborts its engine
  request) and answered with 408, or, when a stream has already begun, ended with an error event
  and `data: [DONE]`.

Every refusal is an OpenAI-format error. 0 switches a limit off. The HTTP parser also bounds
what it buffers before the app sees a request: `uvicorn_options` gives uvicorn's h11 limit.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, MutableMapping, Optional

import anyio

from functionary.api.errors import error_body, error_response
from functionary.api.settings import ServerSettings

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

UNCOUNTED_PATHS = frozenset({"/health", "/metrics"})
REQUEST_HEADER_FIELDS_TOO_LARGE = 431


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 0
    max_header_bytes: int = 0
    timeout: float = 0.0
    max_concurrent: int = 0

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> "RequestLimits":
        return cls(
            max_body_bytes=settings.max_request_body_bytes,
            max_header_bytes=settings.max_header_bytes,
            timeout=settings.request_timeout,
            max_concurrent=settings.max_concurrent_requests,
        )


def uvicorn_options(settings: ServerSettings) -> dict[str, Any]:
    """Keyword arguments for `uvicorn.run`/`uvicorn.Config` that bound what the HTTP parser
    buffers of a request's head. uvicorn's httptools parser has no such bound (it buffers a
    never-ending header, the denial of service of CVE-2025-48956); its h11 parser has one, so
    with a header limit the server speaks HTTP/1.1 through h11 and refuses a head that
    outgrows the limit with a 400 and a closed connection, before the app ever sees it."""
    if not settings.max_header_bytes:
        return {}
    # The request line and the header framing come on top of the header bytes the middleware
    # counts: a head between the two limits reaches the middleware and gets its 431.
    return {"http": "h11", "h11_max_incomplete_event_size": settings.max_header_bytes + 16 * 1024}


class _BodyTooLarge(Exception):
    pass


class _ResponseState:
    """What the app has sent so far (to know how a timeout can still be reported)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False
        self.finished = False
        self.event_stream = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            for name, value in message.get("headers", ()):
                if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                    self.event_stream = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self._send(message)


class RequestLimitsMiddleware:
    def __init__(self, app: Any, limits: RequestLimits) -> None:
        self.app = app
        self.limits = limits
        self.in_flight = 0  # counted requests being served (one event loop: no lock needed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limits = self.limits
        if limits.max_header_bytes:
            size = sum(len(name) + len(value) for name, value in scope.get("headers", ()))
            if size > limits.max_header_bytes:
                await _refuse(scope, receive, send, REQUEST_HEADER_FIELDS_TOO_LARGE,
                              f"The request headers are {size} bytes; this server accepts at most "
                              f"{limits.max_header_bytes}.", "headers_too_large")
                return
        counted = scope.get("path") not in UNCOUNTED_PATHS
        if counted and limits.max_concurrent and self.in_flight >= limits.max_concurrent:
            await _refuse(scope, receive, send, 429,
                          f"The server is serving its maximum of {limits.max_concurrent} concurrent "
                          "requests. Please retry shortly.", "rate_limit_exceeded", headers={"Retry-After": "1"})
            return
        if counted:
            self.in_flight += 1
        try:
            await self._serve(scope, receive, send)
        finally:
            if counted:
                self.in_flight -= 1

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.limits
        response = _ResponseState(send)
        with anyio.move_on_after(limits.timeout or float("inf")) as timer:
            if limits.max_body_bytes:
                declared = _content_length(scope)
                if declared is not None and declared > limits.max_body_bytes:
                    await _refuse(scope, receive, send, 413, _too_large(declared, limits.max_body_bytes),
                                  "request_too_large")
                    return
                try:
                    receive = await _buffered_body(receive, limits.max_body_bytes)
                except _BodyTooLarge as exc:
                    await _refuse(scope, receive, send, 413, str(exc), "request_too_large")
                    return
            await self.app(scope, receive, response.send)
        if timer.cancelled_caught:
            await self._timed_out(scope, receive, response)

    async def _timed_out(self, scope: Scope, receive: Receive, response: _ResponseState) -> None:
        message = f"The request took longer than this server's limit of {self.limits.timeout:g} seconds."
        logger.warning("%s %s timed out after %gs", scope.get("method"), scope.get("path"), self.limits.timeout)
        try:
            if not response.started:
                await error_response(408, message, "timeout_error", code="request_timeout")(scope, receive, response.send)
            elif response.event_stream and not response.finished:
                event = json.dumps(error_body(message, "timeout_error", None, "request_timeout"))
                await response.send({"type": "http.response.body", "body": f"data: {event}\n\n".encode(),
                                     "more_body": True})
                await response.send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})
            elif not response.finished:
                await response.send({"type": "http.response.body", "body": b"", "more_body": False})
        except OSError:  # the client left meanwhile
            pass


def _content_length(scope: Scope) -> Optional[int]:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _too_large(size: int, limit: int) -> str:
    return f"The request body is {size} bytes; this server accepts at most {limit}."


async def _buffered_body(receive: Receive, limit: int) -> Receive:
    """Read the whole body (refusing it once past `limit`), then hand it to the app as one
    message; later `receive` calls (disconnect detection) go to the server."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client left: let the app see it
            first: Optional[Message] = message
            break
        body = message.get("body", b"")
        size += len(body)
        if size > limit:
            raise _BodyTooLarge(_too_large(size, limit) if not message.get("more_body") else
                                f"The request body is larger than this server's limit of {limit} bytes.")
        chunks.append(body)
        if not message.get("more_body", False):
            first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            break
    pending: list[Message] = [first]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay


async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str, code: str,
                  headers: Optional[dict[str, str]] = None) -> None:
    error_type = "rate_limit_error" if status == 429 else "invalid_request_error"
    # The client may still be sending a body we will not read: close the connection after.
    all_headers = {"Connection": "close", **(headers or {})} if status in (413, 431) else headers
    response = error_response(status, message, error_type, code=code, headers=all_headers)
    await response(scope, receive, send)


__all__ = ["RequestLimits", "RequestLimitsMiddleware", "UNCOUNTED_PATHS", "uvicorn_options"]
