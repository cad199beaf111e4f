"""Run BFCL entries against one or more endpoints side by side and score every answer.

Items alternate between the endpoints (entry 1 on A, entry 1 on B, entry 2 on A, ...), with the
same prompts and settings, so both see the same machine conditions over the run. At most
`concurrency` requests are in flight at once, over all endpoints together.
"""
from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Callable, Optional

from .checker import score_answer
from .client import Completion, Endpoint, EndpointError
from .data import MULTI_TURN_CATEGORIES, Entry
from .multi_turn import run_conversation, score_conversation
from .tools import to_openai_tools

_run_ids = itertools.count()


@dataclass(frozen=True)
class Settings:
    """The request settings every endpoint gets."""

    tool_choice: str = "auto"
    temperature: float = 0.0
    max_tokens: Optional[int] = 256
    concurrency: int = 4


@dataclass(frozen=True)
class ItemResult:
    """One entry's answer on one endpoint. `error` is set when the request failed (the item then
    counts as an error and as wrong); `reason` says why a scored answer is wrong."""

    base_url: str
    model: str
    category: str
    id: str
    correct: bool
    calls: list
    error: Optional[str]
    latency_s: float
    completion_tokens: int
    finish_reason: Optional[str]
    reason: Optional[str] = None
    endpoint: int = 0  # position of its --base-url (the same URL may be given twice: an A/A run)


def _body(settings: Settings, messages: list, tools: list) -> dict:
    body: dict = {"messages": messages, "tools": tools, "tool_choice": settings.tool_choice,
                  "temperature": settings.temperature}
    if settings.max_tokens is not None:
        body["max_tokens"] = settings.max_tokens
    return body


async def run_item(endpoint: Endpoint, entry: Entry, settings: Settings, run_tag: str, position: int = 0) -> ItemResult:
    tools = to_openai_tools(entry.functions)

    def result(**fields) -> ItemResult:
        return ItemResult(base_url=endpoint.base_url, model=endpoint.model or "", category=entry.category,
                          id=entry.id, endpoint=position, **fields)

    async def ask(messages: list) -> Completion:
        return await endpoint.chat(_body(settings, messages, tools.tools))

    if entry.category in MULTI_TURN_CATEGORIES:
        tag = f"{run_tag}_{id(endpoint)}"  # one set of simulated API instances per endpoint
        try:
            conversation = await run_conversation(entry, tools, ask, tag)
        except EndpointError as exc:
            return result(correct=False, calls=[], error=str(exc), latency_s=0.0, completion_tokens=0,
                          finish_reason=None)
        correct, reason = score_conversation(entry, conversation, tag)
        return result(correct=correct, calls=conversation.decoded, error=None, latency_s=conversation.latency_s,
                      completion_tokens=conversation.completion_tokens, finish_reason=conversation.finish_reason,
                      reason=reason)
    try:
        completion = await ask(entry.turns[0])
    except EndpointError as exc:
        return result(correct=False, calls=[], error=str(exc), latency_s=0.0, completion_tokens=0, finish_reason=None)
    verdict, calls = score_answer(entry.category, entry.functions, completion.message, entry.possible_answer,
                                  tools.original_name)
    return result(correct=verdict.correct, calls=calls, error=None, latency_s=completion.latency_s,
                  completion_tokens=completion.completion_tokens, finish_reason=completion.finish_reason,
                  reason=verdict.error)


async def run(endpoints: list[Endpoint], entries: list[Entry], settings: Settings,
              on_item: Callable[[ItemResult], None] = lambda _: None) -> list[ItemResult]:
    """Every entry on every endpoint, alternating; results in the same (entry, endpoint) order."""
    jobs = [(entry, position) for entry in entries for position in range(len(endpoints))]
    results: list[Optional[ItemResult]] = [None] * len(jobs)
    next_job = iter(range(len(jobs)))
    run_tag = f"functionary_eval_{next(_run_ids)}"

    async def worker() -> None:
        for index in next_job:  # a shared iterator: each job is taken once, in order
            entry, position = jobs[index]
            results[index] = await run_item(endpoints[position], entry, settings, run_tag, position)
            on_item(results[index])

    await asyncio.gather(*(worker() for _ in range(max(1, settings.concurrency))))
    return [r for r in results if r is not None]
