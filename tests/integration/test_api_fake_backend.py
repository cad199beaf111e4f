"""The FakeBackend the API tests stand on behaves like an engine where it matters."""
from __future__ import annotations

import pytest

from functionary.backends.base import Backend, GenerationParams
from functionary.backends.fake import BOS_ID, FakeBackend

pytestmark = pytest.mark.anyio


async def collect(fake: FakeBackend, params: GenerationParams, request_id: str = "r1"):
    deltas = [d async for d in fake.generate(request_id, fake.tokenize("prompt"), params)]
    texts: dict[int, str] = {}
    reasons: dict[int, str] = {}
    for d in deltas:
        texts[d.index] = texts.get(d.index, "") + d.text
        if d.finish_reason:
            assert d.index not in reasons, "one finish per choice"
            reasons[d.index] = d.finish_reason
    return deltas, texts, reasons


def test_protocol_and_tokenizer():
    fake = FakeBackend()
    assert isinstance(fake, Backend)
    ids = fake.tokenize("Hi <|eot_id|>there\n\n")
    assert ids[0] == BOS_ID
    assert ids == fake.tokenize("Hi <|eot_id|>there\n\n")  # deterministic
    assert len(fake.tokenize("<|eot_id|>")) == 2  # BOS + one special token
    assert fake.decode(ids) == "Hi <|eot_id|>there\n\n"
    assert "".join(fake.split("a, b<|x|>")) == "a, b<|x|>"


async def test_scripted_text_deltas_and_token_ids():
    fake = FakeBackend(["one two three"], tokens_per_delta=2)
    deltas, texts, reasons = await collect(fake, GenerationParams())
    assert texts == {0: "one two three"} and reasons == {0: "stop"}
    assert [d.text for d in deltas] == ["one ", "two ", "three"]
    assert sum(len(d.token_ids) for d in deltas) == 5


async def test_explicit_deltas():
    fake = FakeBackend([["a<", "|eot", "_id|>b"]])
    deltas, texts, _ = await collect(fake, GenerationParams())
    assert [d.text for d in deltas] == ["a<", "|eot", "_id|>b"]


async def test_max_tokens_gives_length():
    fake = FakeBackend(["one two three"])
    _, texts, reasons = await collect(fake, GenerationParams(max_tokens=3))
    assert texts == {0: "one two"} and reasons == {0: "length"}


async def test_stop_strings_are_held_back_and_cut():
    fake = FakeBackend([["Hello E", "N", "D world"]])
    deltas, texts, reasons = await collect(fake, GenerationParams(stop=["END"]))
    assert texts == {0: "Hello "} and reasons == {0: "stop"}
    assert all("E" not in d.text for d in deltas)
    # A partial match that turns out not to be the stop string is released.
    fake.outputs = [["Hello E", "N", "X"]]
    _, texts, _ = await collect(fake, GenerationParams(stop=["END"]), "r2")
    assert texts == {0: "Hello ENX"}


async def test_stop_token_ids_are_not_emitted():
    fake = FakeBackend(["done<|eot_id|>more"])
    eot = fake.tokenize("<|eot_id|>")[-1]
    deltas, texts, reasons = await collect(fake, GenerationParams(stop_token_ids=[eot]))
    assert texts == {0: "done"} and reasons == {0: "stop"}
    assert deltas[-1].token_ids == [eot]  # counted as generated, text not delivered


async def test_n_choices_and_callable_outputs():
    fake = FakeBackend(lambda prompt: [f"first {prompt}", "second"])
    _, texts, reasons = await collect(fake, GenerationParams(n=3))
    assert texts == {0: "first prompt", 1: "second", 2: "first prompt"}
    assert reasons == {0: "stop", 1: "stop", 2: "stop"}
    assert fake.requests[-1].prompt == "prompt"


async def test_abort_and_close_are_recorded():
    fake = FakeBackend(["a b c d e f g"])
    stream = fake.generate("r1", fake.tokenize("p"), GenerationParams())
    first = await stream.__anext__()
    assert first.text == "a" and "r1" in fake.running
    await fake.abort("r1")
    rest = [d async for d in stream]
    assert rest[-1].finish_reason == "abort"
    assert fake.aborted == ["r1"] and not fake.running

    stream = fake.generate("r2", fake.tokenize("p"), GenerationParams())
    await stream.__anext__()
    await stream.aclose()  # a consumer leaving early aborts too
    assert fake.aborted == ["r1", "r2"]
    await fake.abort("r3")  # unknown / finished: no-op
    assert fake.aborted == ["r1", "r2"]


async def test_health_and_errors():
    fake = FakeBackend()
    await fake.check_health()
    fake.healthy = False
    with pytest.raises(RuntimeError):
        await fake.check_health()
    fake.generate_error = RuntimeError("boom")
    with pytest.raises(RuntimeError):
        await collect(fake, GenerationParams())
    assert fake.aborted == []  # a failure is not an abort
