"""VLLMBackend on the real vLLM engine (CPU) with the default model, in both engine modes.

One engine per mode for the whole module (started once, shut down by the last test); the
engine's own state (vLLM's output processor and the engine core's scheduler) is checked
after aborts and cancellations, and the process tree after shutdown.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from typing import Any, Awaitable, Callable, Optional, TypeVar

import pytest

pytest.importorskip("vllm")
psutil = pytest.importorskip("psutil")

from functionary.backends.base import Backend, GenerationDelta, GenerationParams  # noqa: E402
from functionary.backends.engine_args import default_engine_args  # noqa: E402
from functionary.backends.vllm_backend import EngineDeadError, VLLMBackend  # noqa: E402

pytestmark = pytest.mark.slow

T = TypeVar("T")
KV_CACHE_BYTES = 256 * 2**20
PROMPT_MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]
# The engine holds nothing: no unfinished request, no n > 1 parent, nothing in the scheduler.
IDLE = {"frontend_unfinished": 0, "frontend_parents": 0, "core_has_work": False}


class LoopThread:
    """One event loop in a thread for the whole module (the engine is bound to one loop)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[T], timeout: float = 120) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def _children() -> list[Any]:
    """Our live descendants, minus multiprocessing's resource tracker (stdlib; it lives as long
    as this interpreter by design and is no engine process)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if "resource_tracker" in " ".join(p.cmdline()):
                continue
        except psutil.NoSuchProcess:
            continue
        out.append(p)
    return out


class Engine:
    def __init__(self, backend: VLLMBackend, loop: LoopThread, children_before: set[int]):
        self.backend = backend
        self.loop = loop
        self.children_before = children_before
        self.prompt_ids = backend.tokenize(
            backend.get_tokenizer().apply_chat_template(
                PROMPT_MESSAGES, tokenize=False, add_generation_prompt=True
            )
        )

    def run(self, coro: Awaitable[T], timeout: float = 120) -> T:
        return self.loop.run(coro, timeout)

    async def collect(
        self, request_id: str, params: GenerationParams, prompt_ids: Optional[list[int]] = None
    ) -> list[GenerationDelta]:
        return [
            d
            async for d in self.backend.generate(
                request_id, list(prompt_ids or self.prompt_ids), params
            )
        ]

    async def wait_idle(self, timeout: float = 10.0) -> dict[str, Any]:
        """Poll the engine's own state until nothing is left (the engine core releases
        finished/aborted requests within a step or two)."""
        deadline = time.monotonic() + timeout
        while True:
            state = await self.backend.engine_state()
            if state == IDLE:
                return state
            if time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.05)


_ids = (f"req-{i}" for i in range(10**6))


def rid() -> str:
    return next(_ids)


def text_of(deltas: list[GenerationDelta], index: int = 0) -> str:
    return "".join(d.text for d in deltas if d.index == index)


def finish_of(deltas: list[GenerationDelta], index: int = 0) -> Optional[str]:
    reasons = [d.finish_reason for d in deltas if d.index == index and d.finish_reason]
    assert len(reasons) == 1, reasons
    return reasons[0]


@pytest.fixture(scope="module", params=[True, False], ids=["in_process", "multiprocess"])
def engine(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vllm-tmp")
    saved = {k: os.environ.get(k) for k in ("TMPDIR", "VLLM_RPC_BASE_PATH")}
    os.environ["TMPDIR"] = str(tmp)
    os.environ["VLLM_RPC_BASE_PATH"] = str(tmp)
    tempfile.tempdir = None  # re-read TMPDIR
    loop = LoopThread()
    children_before = {p.pid for p in _children()}
    args = default_engine_args(kv_cache_memory_bytes=KV_CACHE_BYTES, max_model_len=2048)
    backend = loop.run(VLLMBackend.start(args, in_process=request.param), timeout=300)
    eng = Engine(backend, loop, children_before)
    try:
        yield eng
    finally:
        with contextlib.suppress(Exception):
            loop.run(backend.shutdown(), timeout=60)
        loop.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        tempfile.tempdir = None


def test_backend_protocol_and_tokenize(engine: Engine) -> None:
    backend = engine.backend
    assert isinstance(backend, Backend)
    assert backend.model_name == "SmolLM2-135M-Instruct"
    assert backend.max_model_len == 2048
    assert backend.in_process is (engine.backend._inproc is not None)
    text = "<|im_start|>user\nHi<|im_end|>"
    ids = backend.tokenize(text)
    assert ids == backend.get_tokenizer().encode(text, add_special_tokens=True)
    assert ids[0] == 1 and ids[-1] == 2  # special tokens are single tokens
    engine.run(backend.check_health())


def test_streaming_arrives_in_deltas(engine: Engine) -> None:
    deltas = engine.run(engine.collect(rid(), GenerationParams(max_tokens=24, temperature=0.0)))
    assert len([d for d in deltas if d.text]) > 3
    assert all(d.index == 0 for d in deltas)
    assert finish_of(deltas) in ("stop", "length")
    assert deltas[-1].finish_reason is not None
    assert 0 < sum(len(d.token_ids) for d in deltas) <= 24
    assert text_of(deltas).strip()


def test_greedy_is_deterministic(engine: Engine) -> None:
    params = GenerationParams(max_tokens=32, temperature=0.0)

    async def twice():
        return await engine.collect(rid(), params), await engine.collect(rid(), params)

    first, second = engine.run(twice())
    assert text_of(first) == text_of(second)
    assert [t for d in first for t in d.token_ids] == [t for d in second for t in d.token_ids]


def test_n2_gives_two_choices(engine: Engine) -> None:
    deltas = engine.run(
        engine.collect(rid(), GenerationParams(n=2, max_tokens=12, temperature=1.0, seed=7))
    )
    assert {d.index for d in deltas} == {0, 1}
    for index in (0, 1):
        assert finish_of(deltas, index) in ("stop", "length")
        assert text_of(deltas, index)


def test_stop_string_stops_and_does_not_leak(engine: Engine) -> None:
    greedy = GenerationParams(max_tokens=48, temperature=0.0)
    full = text_of(engine.run(engine.collect(rid(), greedy)))
    words = full.split()
    assert len(words) > 6, full
    stop = " " + words[4]  # a word well inside the text
    cut = full.index(stop)
    deltas = engine.run(
        engine.collect(rid(), GenerationParams(max_tokens=48, temperature=0.0, stop=[stop]))
    )
    text = text_of(deltas)
    assert text == full[:cut]
    assert stop not in text
    assert finish_of(deltas) == "stop"
    assert engine.run(engine.wait_idle())["frontend_unfinished"] == 0


def test_stop_token_ids(engine: Engine) -> None:
    greedy = GenerationParams(max_tokens=24, temperature=0.0)
    deltas = engine.run(engine.collect(rid(), greedy))
    tokens = [t for d in deltas for t in d.token_ids]
    assert len(tokens) > 8
    stop_id = tokens[5]
    first = tokens.index(stop_id)
    deltas = engine.run(
        engine.collect(rid(), GenerationParams(max_tokens=24, temperature=0.0, stop_token_ids=[stop_id]))
    )
    got = [t for d in deltas for t in d.token_ids]
    assert finish_of(deltas) == "stop"
    assert got[:first] == tokens[:first] and len(got) <= first + 1


def test_special_tokens_stay_in_text(engine: Engine) -> None:
    # "<|im_end|>" is the EOS: with ignore_eos the model goes on past it, and the special
    # token must appear in the text (skip_special_tokens=False).
    tok = engine.backend.get_tokenizer()
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    deltas = engine.run(
        engine.collect(
            rid(),
            GenerationParams(max_tokens=24, temperature=0.0, ignore_eos=True,
                             extra={"allowed_token_ids": [eos, tok.convert_tokens_to_ids("<|im_start|>")]}),
        )
    )
    text = text_of(deltas)
    assert "<|im_end|>" in text or "<|im_start|>" in text, text
    assert finish_of(deltas) == "length"


def test_abort_ends_stream_and_frees_engine(engine: Engine) -> None:
    backend = engine.backend
    request_id = rid()
    params = GenerationParams(max_tokens=1000, temperature=0.0, ignore_eos=True)

    async def scenario():
        got: list[GenerationDelta] = []
        async for d in backend.generate(request_id, engine.prompt_ids, params):
            got.append(d)
            if len(got) == 3:
                await backend.abort(request_id)
        return got

    deltas = engine.run(scenario())
    assert deltas[-1].finish_reason == "abort"
    assert sum(len(d.token_ids) for d in deltas) < 200
    assert engine.run(engine.wait_idle()) == IDLE
    engine.run(backend.abort(request_id))  # already finished: a no-op


async def cancel_after_first_delta(backend: Any, params: GenerationParams, prompt_ids: list[int]) -> dict:
    """Cancel a consuming task once its first delta arrived; the engine's state just before."""
    started = asyncio.Event()

    async def consume():
        async for _ in backend.generate(rid(), prompt_ids, params):
            started.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(started.wait(), 60)
    held = await backend.engine_state()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return held


async def close_after_first_delta(backend: Any, params: GenerationParams, prompt_ids: list[int]) -> None:
    """Close the stream (`aclose`) after its first delta, as a client that stops reading."""
    stream = backend.generate(rid(), prompt_ids, params)
    async with contextlib.aclosing(stream):
        async for _ in stream:
            break


def test_cancel_and_close_abort_the_request(engine: Engine) -> None:
    backend = engine.backend
    params = GenerationParams(max_tokens=1000, temperature=0.0, ignore_eos=True)
    busy = engine.run(cancel_after_first_delta(backend, params, engine.prompt_ids))
    assert busy["frontend_unfinished"] == 1 and busy["core_has_work"]
    assert engine.run(engine.wait_idle()) == IDLE
    engine.run(close_after_first_delta(backend, params, engine.prompt_ids))
    assert engine.run(engine.wait_idle()) == IDLE


def test_concurrent_requests_with_one_aborted(engine: Engine) -> None:
    backend = engine.backend
    greedy = GenerationParams(max_tokens=16, temperature=0.0)

    async def scenario():
        reference = await engine.collect(rid(), greedy)
        victim = rid()
        long_params = GenerationParams(max_tokens=1000, temperature=0.0, ignore_eos=True)

        async def killer():
            got = []
            async for d in backend.generate(victim, engine.prompt_ids, long_params):
                got.append(d)
                if len(got) == 2:
                    await backend.abort(victim)
            return got

        results = await asyncio.gather(killer(), *(engine.collect(rid(), greedy) for _ in range(5)))
        return reference, results

    reference, (aborted, *others) = engine.run(scenario())
    assert aborted[-1].finish_reason == "abort"
    for deltas in others:  # batching does not change greedy output, abort touches no one else
        assert text_of(deltas) == text_of(reference)
    assert engine.run(engine.wait_idle()) == IDLE


def test_aborted_n2_requests_leave_no_parent_behind(engine: Engine) -> None:
    # vLLM 0.32 kept the parent of every aborted n > 1 request for the engine's life (one per
    # dropped client: the memory a disconnect storm never gave back).
    backend = engine.backend
    params = GenerationParams(n=2, max_tokens=1000, temperature=1.0, seed=3, ignore_eos=True)

    async def by_abort():
        request_id = rid()
        got = []
        async for d in backend.generate(request_id, engine.prompt_ids, params):
            got.append(d)
            if len(got) == 4:
                await backend.abort(request_id)
        return got

    deltas = engine.run(by_abort())
    assert sorted(d.index for d in deltas if d.finish_reason == "abort") == [0, 1]
    assert engine.run(engine.wait_idle()) == IDLE
    held = engine.run(cancel_after_first_delta(backend, params, engine.prompt_ids))
    assert held["frontend_unfinished"] == 2 and held["frontend_parents"] == 1
    assert engine.run(engine.wait_idle()) == IDLE
    engine.run(close_after_first_delta(backend, params, engine.prompt_ids))
    assert engine.run(engine.wait_idle()) == IDLE


def test_duplicate_request_id_is_refused(engine: Engine) -> None:
    backend = engine.backend
    request_id = rid()
    params = GenerationParams(max_tokens=200, temperature=0.0, ignore_eos=True)

    async def scenario():
        stream = backend.generate(request_id, engine.prompt_ids, params)
        async with contextlib.aclosing(stream):
            await stream.__anext__()
            with pytest.raises(ValueError):
                await engine.collect(request_id, params)

    engine.run(scenario())
    assert engine.run(engine.wait_idle()) == IDLE


def test_bad_request_is_an_error_not_a_dead_engine(engine: Engine) -> None:
    too_long = [engine.prompt_ids[0]] * 2100  # longer than max_model_len

    with pytest.raises(ValueError):
        engine.run(engine.collect(rid(), GenerationParams(max_tokens=4), prompt_ids=too_long))
    with pytest.raises(ValueError):
        engine.run(engine.collect(rid(), GenerationParams(extra={"no_such_field": 1})))
    engine.run(engine.backend.check_health())
    deltas = engine.run(engine.collect(rid(), GenerationParams(max_tokens=4, temperature=0.0)))
    assert finish_of(deltas) in ("stop", "length")


def test_shutdown_leaves_no_processes(engine: Engine) -> None:
    # Runs last for each engine (tests run in file order per fixture parameter).
    backend = engine.backend
    params = GenerationParams(max_tokens=1000, temperature=0.0, ignore_eos=True)

    async def scenario():
        got: list[GenerationDelta] = []

        async def consume():
            async for d in backend.generate(rid(), engine.prompt_ids, params):
                got.append(d)

        task = asyncio.ensure_future(consume())
        while not got:
            await asyncio.sleep(0.02)
        started = time.monotonic()
        await backend.shutdown()
        await asyncio.wait_for(task, 30)  # the running stream ends, it does not hang
        return got, time.monotonic() - started

    got, took = engine.run(scenario(), timeout=120)
    assert got[-1].finish_reason == "abort"
    deadline = time.monotonic() + 15
    while [p for p in _children() if p.pid not in engine.children_before] and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [(p.pid, p.name()) for p in _children() if p.pid not in engine.children_before]
    assert left == []
    with pytest.raises(EngineDeadError):
        engine.run(backend.check_health())
    with pytest.raises(EngineDeadError):
        engine.run(engine.collect(rid(), GenerationParams(max_tokens=2)))
    assert took < 30
