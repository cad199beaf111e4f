"""Every error leaves in OpenAI's shape with the right status, through raw HTTP and the client."""
from __future__ import annotations

import json
from typing import Any, Optional

import openai
import pytest

from functionary.backends.fake import FakeBackend

from .conftest import FUNCTIONS, MODEL, TEXT_OUT, TOOLS, USER, sse_events

pytestmark = pytest.mark.anyio


def assert_error(response: Any, status: int, error_type: str, param: Optional[str] = None, code: Any = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == error_type
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


BAD_REQUESTS = [
    ("missing messages", {"model": MODEL}, "messages"),
    ("empty messages", {"model": MODEL, "messages": []}, "messages"),
    ("messages not a list", {"model": MODEL, "messages": "hi"}, "messages"),
    ("unknown role", {"model": MODEL, "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("temperature too high", {"model": MODEL, "messages": USER, "temperature": 3}, "temperature"),
    ("top_p zero", {"model": MODEL, "messages": USER, "top_p": 0}, "top_p"),
    ("max_tokens zero", {"model": MODEL, "messages": USER, "max_tokens": 0}, "max_tokens"),
    ("n zero", {"model": MODEL, "messages": USER, "n": 0}, "n"),
    ("n above the cap", {"model": MODEL, "messages": USER, "n": 17}, "n"),
    ("bad tool_choice value", {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ("bad tool type", {"model": MODEL, "messages": USER, "tools": [{"type": "web_search"}]}, "tools[0]"),
    ("stop not a string", {"model": MODEL, "messages": USER, "stop": 5}, "stop"),
    ("empty stop string", {"model": MODEL, "messages": USER, "stop": [""]}, "stop"),
    ("tools and functions", {"model": MODEL, "messages": USER, "tools": TOOLS, "functions": FUNCTIONS}, "functions"),
    (
        "named choice of an unknown tool",
        {"model": MODEL, "messages": USER, "tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        "tool_choice",
    ),
    ("tool_choice without tools", {"model": MODEL, "messages": USER, "tool_choice": "auto"}, "tool_choice"),
    ("function_call without functions", {"model": MODEL, "messages": USER, "function_call": "auto"}, "function_call"),
    (
        "image content",
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}],
        },
        "messages",
    ),
    ("min_tokens above max_tokens", {"model": MODEL, "messages": USER, "max_tokens": 5, "min_tokens": 6}, "min_tokens"),
]


@pytest.mark.parametrize("title,body,param", BAD_REQUESTS, ids=[t for t, _, _ in BAD_REQUESTS])
async def test_invalid_requests_are_400(harness, title, body, param):
    h = await harness([TEXT_OUT])
    assert_error(await h.post(body), 400, "invalid_request_error", param)
    assert_error(await h.post({**body, "stream": True}), 400, "invalid_request_error", param)
    assert h.fake.requests == []


async def test_body_that_is_not_json(harness):
    h = await harness([TEXT_OUT])
    response = await h.http.post(
        "/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_request_error", code="invalid_json")


async def test_context_length(harness):
    h = await harness(fake=FakeBackend([TEXT_OUT], max_model_len=300))
    ok = await h.post({"model": MODEL, "messages": USER, "max_tokens": 10})
    assert ok.status_code == 200
    prompt_tokens = ok.json()["usage"]["prompt_tokens"]
    fits = await h.post({"model": MODEL, "messages": USER, "max_tokens": 300 - prompt_tokens})
    assert fits.status_code == 200
    error = assert_error(
        await h.post({"model": MODEL, "messages": USER, "max_tokens": 301 - prompt_tokens}),
        400, "invalid_request_error", "max_tokens", "context_length_exceeded",
    )
    assert "300" in error["message"]
    assert_error(
        await h.post({"model": MODEL, "messages": USER, "max_completion_tokens": 300}),
        400, "invalid_request_error", "max_completion_tokens", "context_length_exceeded",
    )
    long_messages = [{"role": "user", "content": "word " * 400}]
    assert_error(
        await h.post({"model": MODEL, "messages": long_messages}),
        400, "invalid_request_error", "messages", "context_length_exceeded",
    )


async def test_openai_client_raises_typed_errors(harness):
    h = await harness([TEXT_OUT])
    with pytest.raises(openai.BadRequestError) as bad:
        await h.client.chat.completions.create(model=MODEL, messages=USER, n=100)
    assert bad.value.status_code == 400
    assert bad.value.body["param"] == "n"
    with pytest.raises(openai.NotFoundError) as missing:
        await h.client.chat.completions.create(model="gpt-4", messages=USER)
    assert missing.value.body["code"] == "model_not_found"


async def test_unknown_model_is_404(harness):
    h = await harness([TEXT_OUT])
    assert_error(
        await h.post({"model": "gpt-4", "messages": USER}), 404, "not_found_error", "model", "model_not_found"
    )
    assert_error(await h.http.get("/v1/models/gpt-4"), 404, "not_found_error", "model", "model_not_found")
    assert (await h.http.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL


async def test_unknown_route_and_method(harness):
    h = await harness([TEXT_OUT])
    assert_error(await h.http.get("/v1/nothing-here"), 404, "not_found_error")
    assert_error(await h.http.get("/v1/chat/completions"), 405, "invalid_request_error")


# ---------------------------------------------------------------------------------------------
# API key


@pytest.mark.parametrize(
    "method,path",
    [("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/metrics"), ("GET", "/nope")],
)
async def test_api_key_on_every_route(harness, method, path):
    h = await harness([TEXT_OUT], api_key="sk-secret", auth=False)
    body = {"model": MODEL, "messages": USER}
    kwargs = {"json": body} if method == "POST" else {}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-secret"}, {"Authorization": "Bearer sk-secret2"}):
        response = await h.http.request(method, path, headers=headers, **kwargs)
        assert_error(response, 401, "authentication_error", code="invalid_api_key")
        assert response.headers["www-authenticate"] == "Bearer"
    assert h.fake.requests == []  # nothing reached the engine
    response = await h.http.request(method, path, headers={"Authorization": "Bearer sk-secret"}, **kwargs)
    assert response.status_code == (404 if path == "/nope" else 200)
    assert len(h.fake.requests) == (1 if method == "POST" else 0)


async def test_openai_client_with_and_without_the_key(harness):
    good = await harness([TEXT_OUT], api_key="sk-secret")
    assert (await good.client.chat.completions.create(model=MODEL, messages=USER)).choices
    bad = await harness([TEXT_OUT], api_key="sk-secret", auth=False)
    with pytest.raises(openai.AuthenticationError):
        await bad.client.chat.completions.create(model=MODEL, messages=USER)
    with pytest.raises(openai.AuthenticationError):
        await bad.client.models.list()


async def test_cors(harness):
    h = await harness([TEXT_OUT], api_key="sk-secret", auth=False, allowed_origins=["https://app.example"])
    preflight = await h.http.options(
        "/v1/chat/completions",
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert preflight.status_code == 200  # answered before the API key check
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    response = await h.http.get(
        "/v1/models", headers={"Origin": "https://app.example", "Authorization": "Bearer sk-secret"}
    )
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    other = await h.http.get("/v1/models", headers={"Origin": "https://evil.example", "Authorization": "Bearer sk-secret"})
    assert "access-control-allow-origin" not in other.headers


# ---------------------------------------------------------------------------------------------
# Engine failures


async def test_dead_engine_is_503(harness):
    fake = FakeBackend([TEXT_OUT])
    h = await harness(fake=fake)
    fake.healthy = False
    fake.generate_error = RuntimeError("engine core died")
    assert_error(await h.post({"model": MODEL, "messages": USER}), 503, "service_unavailable_error")
    assert_error(await h.post({"model": MODEL, "messages": USER, "stream": True}), 503, "service_unavailable_error")
    assert_error(await h.http.get("/health"), 503, "service_unavailable_error")
    with pytest.raises(openai.InternalServerError) as raised:
        await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert raised.value.status_code == 503


async def test_request_failure_on_a_healthy_engine_is_500(harness):
    fake = FakeBackend([TEXT_OUT])
    h = await harness(fake=fake)
    fake.generate_error = RuntimeError("something broke for this request")
    assert_error(await h.post({"model": MODEL, "messages": USER}), 500, "internal_server_error")
    assert (await h.http.get("/health")).status_code == 200


async def test_engine_refusing_the_parameters_is_400(harness):
    """Backends raise a ValueError for requests the engine refuses (e.g. vLLM: n > 1 with
    greedy sampling)."""
    fake = FakeBackend([TEXT_OUT])
    h = await harness(fake=fake)
    fake.generate_error = ValueError("n must be 1 when using greedy sampling, got 2.")
    error = assert_error(await h.post({"model": MODEL, "messages": USER}), 400, "invalid_request_error")
    assert "greedy" in error["message"]
    assert_error(await h.post({"model": MODEL, "messages": USER, "stream": True}), 400, "invalid_request_error")


async def test_failure_mid_stream_is_an_error_event(harness):
    fake = FakeBackend([TEXT_OUT])
    h = await harness(fake=fake)
    fake.healthy = False
    fake.generate_error = RuntimeError("engine core died")
    fake.error_after = 3
    response = await h.post({"model": MODEL, "messages": USER, "stream": True})
    assert response.status_code == 200  # the head was already sent
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])
    assert error["error"]["type"] == "service_unavailable_error"
    assert all("choices" in json.loads(e) for e in events[:-2])


async def test_engine_abort_is_reported(harness):
    class AbortingBackend(FakeBackend):
        async def generate(self, request_id, prompt_token_ids, params):
            async for delta in super().generate(request_id, prompt_token_ids, params):
                if delta.finish_reason is not None:
                    delta.finish_reason = "abort"
                yield delta

    fake = AbortingBackend([TEXT_OUT])
    h = await harness(fake=fake)
    assert_error(await h.post({"model": MODEL, "messages": USER}), 503, "service_unavailable_error")
    response = await h.post({"model": MODEL, "messages": USER, "stream": True})
    events = sse_events(response.text)
    assert '"service_unavailable_error"' in events[-2]
    assert "finish_reason\":\"abort" not in response.text
