"""Effects of the server flags the other integration tests leave at their defaults: CORS methods,
headers and credentials (the Fetch standard's preflight, as Starlette's CORSMiddleware answers
it), and a `--max-n` other than 16. tests/unit/test_entry_point_flags.py shows each flag reaches
these settings from every entry point."""
from __future__ import annotations

import pytest

from .conftest import MODEL, TEXT_OUT, USER

pytestmark = pytest.mark.anyio

ORIGIN = "https://app.example"


def preflight(h, method: str, headers: str = "content-type"):
    return h.http.options("/v1/chat/completions", headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


async def test_cors_methods_headers_and_credentials(harness):
    h = await harness([TEXT_OUT], allowed_origins=[ORIGIN], allowed_methods=["POST"],
                      allowed_headers=["content-type", "x-trace"], allow_credentials=True)
    ok = await preflight(h, "POST", "content-type,x-trace")
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == ORIGIN
    assert ok.headers["access-control-allow-credentials"] == "true"
    assert "POST" in ok.headers["access-control-allow-methods"]
    assert "DELETE" not in ok.headers["access-control-allow-methods"]
    assert (await preflight(h, "DELETE")).status_code == 400  # a method not allowed
    assert (await preflight(h, "POST", "x-other")).status_code == 400  # a header not allowed
    response = await h.http.get("/v1/models", headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_cors_without_credentials_says_nothing_of_them(harness):
    h = await harness([TEXT_OUT], allowed_origins=[ORIGIN])
    ok = await preflight(h, "POST")
    assert ok.status_code == 200 and "access-control-allow-credentials" not in ok.headers


async def test_max_n_caps_n_at_the_value_given(harness):
    h = await harness([TEXT_OUT, TEXT_OUT], max_n=2)
    too_many = await h.post({"model": MODEL, "messages": USER, "n": 3})
    assert too_many.status_code == 400
    assert too_many.json()["error"]["param"] == "n" and too_many.json()["error"]["type"] == "invalid_request_error"
    ok = await h.post({"model": MODEL, "messages": USER, "n": 2})
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2
