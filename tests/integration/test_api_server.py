"""Models, health, metrics, lifespan, and aborting the engine request when the client leaves."""
from __future__ import annotations

import json
import time

import httpx
import pytest

from functionary.api import ServerSettings, create_app
from functionary.backends.fake import FakeBackend

from .conftest import MODEL, TEXT_OUT, USER, asgi_call, wait_for

pytestmark = pytest.mark.anyio

LONG_OUT = " ".join(f"word{i}" for i in range(400)) + "<|eot_id|>"


async def test_models(harness):
    h = await harness([TEXT_OUT], served_model_names=[MODEL, "alias"])
    response = await h.http.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == [MODEL, "alias"]
    for card in body["data"]:
        assert card["object"] == "model"
        assert card["root"] == "fake-model"
        assert card["max_model_len"] == 4096
        assert isinstance(card["created"], int)
    models = await h.client.models.list()
    assert [m.id for m in models.data] == [MODEL, "alias"]
    assert (await h.client.models.retrieve("alias")).id == "alias"


async def test_health(harness):
    h = await harness([TEXT_OUT])
    ok = await h.http.get("/health")
    assert ok.status_code == 200 and ok.json() == {"status": "ok"}
    h.fake.healthy = False
    down = await h.http.get("/health")
    assert down.status_code == 503
    assert down.json()["error"]["type"] == "service_unavailable_error"


async def test_lifespan_starts_and_shuts_down_the_backend():
    fake = FakeBackend([TEXT_OUT])
    calls = []

    async def factory():
        calls.append("start")
        return fake

    app = create_app(ServerSettings(served_model_names=[MODEL], prompt_template_version="v3.llama3"), factory)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        before = await http.get("/health")
        assert before.status_code == 503  # no engine before startup
        assert (await http.post("/v1/chat/completions", json={"messages": USER})).status_code == 503
        async with app.router.lifespan_context(app):
            assert calls == ["start"]
            assert (await http.get("/health")).status_code == 200
        assert fake.shut_down
        assert (await http.get("/health")).status_code == 503


async def test_template_detection_falls_back_to_v3_llama3(harness, caplog):
    class NoTokenizer(FakeBackend):
        def get_tokenizer(self):
            class Plain:
                chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}"

                def encode(self, text, add_special_tokens=False):
                    return list(text.encode())

                def decode(self, ids):
                    return bytes(ids).decode(errors="replace")

            return Plain()

    fake = NoTokenizer([TEXT_OUT])
    with caplog.at_level("WARNING"):
        h = await harness(fake=fake, prompt_template_version=None)
    assert h.app.state.template.version == "v3.llama3"
    assert "Not a Functionary model" in caplog.text
    result = await h.client.chat.completions.create(model=MODEL, messages=USER)
    assert result.choices[0].message.content == "It is sunny in Paris today."


async def test_template_detected_from_the_chat_template_marker(harness):
    class Marked(FakeBackend):
        def get_tokenizer(self):
            class Tok:
                chat_template = "{# version=v3-llama3.1 #}..."

                def encode(self, text, add_special_tokens=False):
                    return [1, 2]

                def decode(self, ids):
                    return "x"

            return Tok()

    h = await harness(fake=Marked(["Hi!<|eot_id|>"]), prompt_template_version=None)
    assert h.app.state.template.version == "v3-llama3.1"


async def test_metrics(harness):
    h = await harness([TEXT_OUT])
    await h.client.chat.completions.create(model=MODEL, messages=USER)
    stream = await h.client.chat.completions.create(model=MODEL, messages=USER, stream=True)
    async for _ in stream:
        pass
    await h.post({"model": "nope", "messages": USER})
    response = await h.http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'functionary_http_requests_total{method="POST",route="/v1/chat/completions",status="200"} 2.0' in text
    assert 'functionary_http_requests_total{method="POST",route="/v1/chat/completions",status="404"} 1.0' in text
    assert 'functionary_chat_requests_total{outcome="ok",stream="false"} 1.0' in text
    assert 'functionary_chat_requests_total{outcome="ok",stream="true"} 1.0' in text
    assert "functionary_chat_time_to_first_token_seconds_count 2.0" in text
    assert 'functionary_chat_finish_reasons_total{finish_reason="stop"} 2.0' in text
    assert "functionary_chat_requests_running 0.0" in text
    prompt = float(next(l for l in text.splitlines() if l.startswith("functionary_prompt_tokens_total")).split()[1])
    generated = float(next(l for l in text.splitlines() if l.startswith("functionary_generation_tokens_total")).split()[1])
    assert prompt > 0 and generated > 0
    assert "process_" in text or "python_gc" in text or "python_info" in text  # the default registry


async def test_two_apps_in_one_process_have_separate_metrics(harness):
    a = await harness([TEXT_OUT])
    b = await harness([TEXT_OUT])
    await a.client.chat.completions.create(model=MODEL, messages=USER)
    text_b = (await b.http.get("/metrics")).text
    assert 'route="/v1/chat/completions"' not in text_b


# ---------------------------------------------------------------------------------------------
# Client disconnects abort the engine request


async def test_disconnect_non_streamed_aborts(harness):
    fake = FakeBackend([LONG_OUT], delay=0.01)
    h = await harness(fake=fake)
    result = await asgi_call(
        h.app, {"model": MODEL, "messages": USER}, disconnect_when=lambda r: bool(fake.running)
    )
    assert len(fake.requests) == 1
    request_id = fake.requests[0].request_id
    assert fake.aborted == [request_id]
    assert not fake.running
    assert result.status in (None, 499)
    text = (await h.http.get("/metrics")).text
    assert 'functionary_chat_requests_total{outcome="disconnected",stream="false"} 1.0' in text


async def test_disconnect_streamed_aborts(harness):
    fake = FakeBackend([LONG_OUT], delay=0.01)
    h = await harness(fake=fake)
    result = await asgi_call(
        h.app,
        {"model": MODEL, "messages": USER, "stream": True},
        disconnect_when=lambda r: r.body.count(b"data: ") >= 3,
    )
    assert result.status == 200
    assert b"[DONE]" not in result.body
    request_id = fake.requests[0].request_id
    await wait_for(lambda: fake.aborted == [request_id])
    assert not fake.running
    text = (await h.http.get("/metrics")).text
    assert 'functionary_chat_requests_total{outcome="disconnected",stream="true"} 1.0' in text
    assert "functionary_chat_requests_running 0.0" in text


async def test_disconnect_before_the_first_token_aborts(harness):
    fake = FakeBackend([LONG_OUT], delay=0.05)
    h = await harness(fake=fake)
    await asgi_call(
        h.app,
        {"model": MODEL, "messages": USER, "stream": True},
        disconnect_when=lambda r: bool(fake.requests),
    )
    await wait_for(lambda: len(fake.aborted) == 1)
    assert not fake.running


def _wait(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_real_socket_disconnects_abort(live):
    fake = FakeBackend([LONG_OUT], delay=0.01)
    server = live(fake=fake)
    body = {"model": MODEL, "messages": USER, "stream": True}
    with httpx.Client(base_url=server.url) as http:
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert json.loads(first[len("data: "):])["choices"][0]["delta"]["role"] == "assistant"
        # Leaving the block closes the connection mid-stream.
        _wait(lambda: len(fake.aborted) == 1)
        assert fake.aborted == [fake.requests[0].request_id]

        with pytest.raises(httpx.ReadTimeout):
            http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER}, timeout=0.3)
        _wait(lambda: len(fake.aborted) == 2)
        assert fake.aborted[1] == fake.requests[1].request_id
        _wait(lambda: not fake.running)

        # The server is still fine afterwards.
        fake.delay = 0
        fake.outputs = [TEXT_OUT]
        ok = http.post("/v1/chat/completions", json={"model": MODEL, "messages": USER})
        assert ok.json()["choices"][0]["message"]["content"] == "It is sunny in Paris today."
