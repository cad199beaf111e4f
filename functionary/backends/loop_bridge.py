"""Handing results from an engine thread back to a request's asyncio event loop.

The vLLM and llama.cpp back ends step their engines on a thread of their own; every result,
error or token reaches the waiting coroutine through `call_in_loop`. A request may have been
cancelled, or its loop closed, by the time the engine answers: neither is an error here.
"""
from __future__ import annotations

import asyncio
from typing import Any


def call_in_loop(loop: asyncio.AbstractEventLoop, fn: Any, *args: Any) -> None:
    """Run `fn(*args)` in `loop` (from any thread); nothing when the loop is already closed."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:  # the loop is closed: nobody is listening any more
        pass


def set_result_if_pending(fut: asyncio.Future, value: Any) -> None:
    """In the future's loop: resolve it unless it was cancelled (or resolved) meanwhile."""
    if not fut.done():
        fut.set_result(value)


def set_exception_if_pending(fut: asyncio.Future, exc: BaseException) -> None:
    """In the future's loop: fail it unless it was cancelled (or resolved) meanwhile."""
    if not fut.done():
        fut.set_exception(exc)


__all__ = ["call_in_loop", "set_exception_if_pending", "set_result_if_pending"]
