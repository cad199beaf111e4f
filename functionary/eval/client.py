"""One OpenAI-compatible endpoint over HTTP (httpx): list models, one chat completion.

A failed request becomes an `EndpointError` with one line of text (status and OpenAI error message
when the server sent one), never a traceback: the harness counts that item as an error and goes on.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import httpx


class EndpointError(Exception):
    """A request to an endpoint failed (connection, timeout, 4xx/5xx, or a body that is not a
    chat completion); the message is one line."""


@dataclass(frozen=True)
class Completion:
    """What the harness needs from one chat completion."""

    message: dict  # the assistant message (content, tool_calls)
    finish_reason: Optional[str]
    completion_tokens: int
    latency_s: float


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
        message = body["error"]["message"] if isinstance(body.get("error"), dict) else body.get("detail", body)
    except (ValueError, KeyError, AttributeError, TypeError):
        message = response.text
    return _one_line(f"HTTP {response.status_code}: {message}")


class Endpoint:
    """An OpenAI-compatible base URL (`http://host:port/v1`) and the model to ask there."""

    def __init__(self, base_url: str, model: Optional[str], api_key: str, http: httpx.AsyncClient) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._headers = {"Authorization": f"Bearer {api_key}"}
        self._http = http

    async def first_model(self) -> str:
        """The first model the endpoint serves (GET /models); EndpointError if unreachable."""
        try:
            response = await self._http.get(f"{self.base_url}/models", headers=self._headers)
        except httpx.HTTPError as exc:
            raise EndpointError(_one_line(f"cannot reach {self.base_url}: {exc!r}")) from None
        if response.status_code != 200:
            raise EndpointError(f"{self.base_url}/models answered {_error_text(response)}")
        try:
            return response.json()["data"][0]["id"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"{self.base_url}/models did not list a model") from None

    async def chat(self, body: dict[str, Any]) -> Completion:
        started = time.perf_counter()
        try:
            response = await self._http.post(f"{self.base_url}/chat/completions",
                                             json={"model": self.model, **body}, headers=self._headers)
        except httpx.HTTPError as exc:
            raise EndpointError(_one_line(f"request failed: {exc!r}")) from None
        latency = time.perf_counter() - started
        if response.status_code != 200:
            raise EndpointError(_error_text(response))
        try:
            data = response.json()
            choice = data["choices"][0]
            usage = data.get("usage") or {}
            return Completion(message=choice["message"], finish_reason=choice.get("finish_reason"),
                              completion_tokens=int(usage.get("completion_tokens") or 0), latency_s=latency)
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(_one_line(f"not a chat completion: {response.text}")) from None
