"""Results handed from an engine thread to a request's event loop (functionary.backends.loop_bridge),
as both the vLLM and the llama.cpp back ends use it."""
from __future__ import annotations

import asyncio
import threading

import pytest

from functionary.backends.loop_bridge import call_in_loop, set_exception_if_pending, set_result_if_pending


def test_a_result_from_another_thread_reaches_the_waiting_coroutine():
    async def main() -> object:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        threading.Thread(target=call_in_loop, args=(loop, set_result_if_pending, fut, 42)).start()
        return await asyncio.wait_for(fut, 5)

    assert asyncio.run(main()) == 42


def test_an_error_from_another_thread_is_raised_in_the_coroutine():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        threading.Thread(target=call_in_loop, args=(loop, set_exception_if_pending, fut, KeyError("gone"))).start()
        await asyncio.wait_for(fut, 5)

    with pytest.raises(KeyError, match="gone"):
        asyncio.run(main())


def test_a_cancelled_request_is_left_alone():
    errors: list[dict] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        # A callback's exception (InvalidStateError on a cancelled future) goes to this handler.
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        for setter, value in ((set_result_if_pending, 1), (set_exception_if_pending, RuntimeError("late"))):
            fut = loop.create_future()
            fut.cancel()
            call_in_loop(loop, setter, fut, value)
            await asyncio.sleep(0.01)
            assert fut.cancelled()

    asyncio.run(main())
    assert errors == []


def test_a_closed_loop_is_not_an_error():
    loop = asyncio.new_event_loop()
    fut = loop.create_future()
    loop.close()
    call_in_loop(loop, set_result_if_pending, fut, 1)  # the engine thread carries on
    assert not fut.done()
