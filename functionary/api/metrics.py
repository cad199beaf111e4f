"""Prometheus metrics of one app (its own registry: several apps may share a process).

`/metrics` shows this registry followed by the process-wide default registry, which is where
vLLM's in-process stat loggers register theirs (or, with PROMETHEUS_MULTIPROC_DIR set, the
multiprocess collector over that directory).
"""
from __future__ import annotations

import os
import time
from typing import Any, Awaitable, Callable, MutableMapping, Optional

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from functionary.serving.chat import RequestStats

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0)


class ServerMetrics:
    def __init__(self, registry: Optional[CollectorRegistry] = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "functionary_http_requests", "HTTP requests by route and status.",
            ["method", "route", "status"], registry=r,
        )
        self.http_latency = Histogram(
            "functionary_http_request_duration_seconds", "HTTP request latency (streams: until the last byte).",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.chat_requests = Counter(
            "functionary_chat_requests", "Chat completions by outcome (ok, error, disconnected).",
            ["stream", "outcome"], registry=r,
        )
        self.chat_finish = Counter(
            "functionary_chat_finish_reasons", "Finished choices by finish_reason.", ["finish_reason"], registry=r,
        )
        self.chat_running = Gauge(
            "functionary_chat_requests_running", "Chat completions being generated.", registry=r,
        )
        self.ttft = Histogram(
            "functionary_chat_time_to_first_token_seconds", "Time from request to the engine's first token.",
            buckets=_TTFT_BUCKETS, registry=r,
        )
        self.e2e = Histogram(
            "functionary_chat_request_duration_seconds", "Chat completion latency, end to end.",
            ["stream"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "functionary_prompt_tokens", "Prompt tokens processed.", registry=r,
        )
        self.completion_tokens = Counter(
            "functionary_generation_tokens", "Tokens generated.", registry=r,
        )
        self._compute_threads: Optional[Gauge] = None

    def watch_backend(self, backend: Any) -> None:
        """Export what the back end reports about itself (the CPU engine's compute threads)."""
        if getattr(backend, "compute_threads", None) is None:
            return
        if self._compute_threads is None:  # once per registry, even if the app starts again
            self._compute_threads = Gauge(
                "functionary_engine_compute_threads",
                "Threads the in-process CPU engine computes on (fewer while other processes keep cores busy).",
                registry=self.registry,
            )
        self._compute_threads.set_function(lambda: getattr(backend, "compute_threads", None) or 0)

    def chat_started(self) -> None:
        self.chat_running.inc()

    def chat_finished(self, stats: RequestStats, *, stream: bool, outcome: str) -> None:
        self.chat_running.dec()
        label = "true" if stream else "false"
        self.chat_requests.labels(stream=label, outcome=outcome).inc()
        self.e2e.labels(stream=label).observe(time.monotonic() - stats.created_at)
        ttft = stats.time_to_first_token
        if ttft is not None:
            self.ttft.observe(ttft)
        self.prompt_tokens.inc(stats.prompt_tokens)
        self.completion_tokens.inc(stats.completion_tokens)
        for reason in stats.finish_reasons:
            self.chat_finish.labels(finish_reason=reason).inc()

    def render(self) -> bytes:
        parts = [generate_latest(self.registry)]
        multiproc_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if multiproc_dir:
            from prometheus_client import multiprocess

            shared = CollectorRegistry()
            multiprocess.MultiProcessCollector(shared, path=multiproc_dir)
            parts.append(generate_latest(shared))
        else:
            parts.append(generate_latest(REGISTRY))
        return b"".join(parts)


class MetricsMiddleware:
    """Counts every HTTP request and its latency, labelled by route template (not raw path)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.monotonic()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.http_requests.labels(method=method, route=path, status=str(status[0])).inc()
            self.metrics.http_latency.labels(method=method, route=path).observe(time.monotonic() - start)
