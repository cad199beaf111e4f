"""The conversation loop: ask, run every tool call of the turn, send the results, repeat.

    runner = ChatRunner(AsyncOpenAI(base_url=..., api_key=...), model="...", tools=[get_car_price])
    result = await runner.run([{"role": "user", "content": "What is the price of the car named Tang?"}])
    result.content          # the model's final answer
    result.messages         # the whole conversation, tool calls and results included

* Each round sends the conversation with the tools; when the reply has tool calls, all of them run
  concurrently (async functions awaited, plain ones in worker threads), each result goes back as a
  `tool` message tied to its `tool_call_id` (in the order of the calls), and the loop goes on until
  the model answers without calls or `max_rounds` requests were made.
* Arguments are validated (pydantic) before the call. Invalid JSON, a wrong or missing argument, an
  unknown function, an exception, a timeout: each becomes the tool result ("Error: ..."), so the
  model can react; the runner does not raise for them.
* `stream()` yields text as it arrives and starts each call as soon as its arguments are complete
  (while the rest of the reply still streams).
* `code_interpreter=True` (or a `Sandbox`) adds `{"type": "code_interpreter"}` to the tools and runs
  `python` calls in a sandboxed, stateful kernel (one per runner, i.e. per conversation).
* A named `tool_choice` applies to the first round only; later rounds use "auto" (otherwise the
  model would be forced to call the same function forever).

Works with `AsyncOpenAI` and, through worker threads, with the sync `OpenAI` client.
"""
from __future__ import annotations

import asyncio
import inspect
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterable, Literal, Optional, Union

from functionary.client.functions import (
    FunctionTool,
    ToolArgumentsError,
    Toolbox,
    serialize_result,
)

__all__ = [
    "ChatRunner",
    "RunFinished",
    "RunResult",
    "TextDelta",
    "ToolCallDone",
    "ToolCallResult",
    "ToolCallStarted",
]

CODE_INTERPRETER_NAME = "python"
ErrorKind = Literal["unknown_function", "invalid_arguments", "exception", "timeout"]


@dataclass
class ToolCallResult:
    """One executed call and the text sent back to the model."""

    tool_call_id: str
    name: str
    arguments: str
    content: str
    error: Optional[ErrorKind] = None
    seconds: float = 0.0
    value: Any = None  # what the function returned (None on error)
    execution: Any = None  # `functionary.sandbox.ExecutionResult` for python calls

    def message(self, *, include_name: bool = True) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "tool", "tool_call_id": self.tool_call_id, "content": self.content}
        if include_name:
            msg["name"] = self.name  # v2 prompts name the tool that answered; others ignore it
        return msg


@dataclass
class RunResult:
    messages: list[dict[str, Any]]  # the conversation including everything this run added
    new_messages: list[dict[str, Any]]
    content: Optional[str]  # the final assistant text
    rounds: int
    stop_reason: Literal["answer", "max_rounds"]
    tool_results: list[ToolCallResult] = field(default_factory=list)
    responses: list[Any] = field(default_factory=list)  # raw ChatCompletion objects (not streaming)


@dataclass
class TextDelta:
    text: str
    round: int


@dataclass
class ToolCallStarted:
    tool_call_id: str
    name: str
    arguments: str
    round: int


@dataclass
class ToolCallDone:
    result: ToolCallResult
    round: int


@dataclass
class RunFinished:
    result: RunResult


RunEvent = Union[TextDelta, ToolCallStarted, ToolCallDone, RunFinished]


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _new_call_id() -> str:
    return "call_" + secrets.token_hex(12)


def _code_from_arguments(arguments: str) -> str:
    """`python` arguments: raw code (functionary) or `{"code": "..."}` (other servers)."""
    text = arguments or ""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError:
            return text
        if isinstance(data, dict) and isinstance(data.get("code"), str):
            return data["code"]
    return text


class ChatRunner:
    """Runs a conversation with tools against an OpenAI-compatible server.

    Args:
        client: `openai.AsyncOpenAI` (preferred) or `openai.OpenAI`.
        model: model name sent with every request.
        tools: functions / `FunctionTool`s, or a `Toolbox`.
        code_interpreter: False; True (a `functionary.sandbox.Sandbox` is started on the first
            python call and closed by `aclose()`); or a `Sandbox` you own.
        max_rounds: most chat requests per run.
        tool_choice: sent with the first request only (later ones use "auto").
        tool_timeout: seconds a function may take (then its result is a timeout error).
        include_tool_name: add `name` to tool messages (the v2 prompt format uses it).
        **create_kwargs: passed to every `chat.completions.create` (temperature, max_tokens, ...).
    """

    def __init__(
        self,
        client: Any,
        *,
        model: str,
        tools: Union[Toolbox, Iterable[Union[Callable[..., Any], FunctionTool]]] = (),
        code_interpreter: Any = False,
        max_rounds: int = 10,
        tool_choice: Any = None,
        tool_timeout: Optional[float] = None,
        include_tool_name: bool = True,
        **create_kwargs: Any,
    ) -> None:
        if max_rounds < 1:
            raise ValueError("max_rounds must be at least 1")
        self.client = client
        self.model = model
        self.toolbox = tools if isinstance(tools, Toolbox) else Toolbox(tools)
        self.max_rounds = max_rounds
        self.tool_choice = tool_choice
        self.tool_timeout = tool_timeout
        self.include_tool_name = include_tool_name
        self.create_kwargs = create_kwargs
        self._owns_sandbox = code_interpreter is True
        self._sandbox: Any = None if code_interpreter is True or code_interpreter is False else code_interpreter
        self.code_interpreter = bool(code_interpreter)
        self._sandbox_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> "ChatRunner":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Closes the sandbox this runner started (not one that was given to it)."""
        if self._owns_sandbox and self._sandbox is not None:
            sandbox, self._sandbox = self._sandbox, None
            await sandbox.close()

    async def sandbox(self) -> Any:
        """The code interpreter's sandbox, started on first use."""
        async with self._sandbox_lock:
            if self._sandbox is None:
                from functionary.sandbox import Sandbox

                self._sandbox = Sandbox()
            await self._sandbox.start()
            return self._sandbox

    # ------------------------------------------------------------------ requests

    def tools(self) -> list[dict[str, Any]]:
        tools = self.toolbox.openai_tools()
        if self.code_interpreter:
            tools.append({"type": "code_interpreter"})
        return tools

    def _request(self, messages: list[dict[str, Any]], round_: int, overrides: dict[str, Any]) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"model": self.model, "messages": list(messages), **self.create_kwargs}
        tools = self.tools()
        if tools:
            kwargs["tools"] = tools
            tool_choice = overrides.pop("tool_choice", self.tool_choice)
            if tool_choice is not None:
                kwargs["tool_choice"] = tool_choice if round_ == 1 else "auto"
        kwargs.update(overrides)
        return kwargs

    async def _create(self, **kwargs: Any) -> Any:
        create = self.client.chat.completions.create
        if inspect.iscoroutinefunction(create):
            return await create(**kwargs)
        result = await asyncio.to_thread(create, **kwargs)
        return await result if inspect.isawaitable(result) else result

    # ------------------------------------------------------------------ running calls

    async def execute_call(self, call_id: str, name: str, arguments: str) -> ToolCallResult:
        """Run one call; every failure becomes the result text."""
        start = time.monotonic()
        result = ToolCallResult(call_id, name, arguments, content="")
        try:
            if name == CODE_INTERPRETER_NAME and self.code_interpreter:
                sandbox = await self.sandbox()
                execution = await sandbox.execute(_code_from_arguments(arguments))
                result.execution = execution
                result.content = execution.text
                if execution.timed_out:
                    result.error = "timeout"
                elif not execution.ok:
                    result.error = "exception"
                return result
            tool = self.toolbox.get(name)
            if tool is None:
                known = ", ".join(t.name for t in self.toolbox) or "none"
                result.error = "unknown_function"
                result.content = f"Error: there is no function named {name!r} (available: {known})."
                return result
            try:
                args, kwargs = tool.validate(arguments)
            except ToolArgumentsError as exc:
                result.error = "invalid_arguments"
                result.content = f"Error: invalid arguments for {name}: {exc}"
                return result
            try:
                if self.tool_timeout is not None:
                    value = await asyncio.wait_for(tool.call(args, kwargs), self.tool_timeout)
                else:
                    value = await tool.call(args, kwargs)
            except asyncio.TimeoutError:
                result.error = "timeout"
                result.content = f"Error: {name} did not finish within {self.tool_timeout:g} seconds."
                return result
            except Exception as exc:  # noqa: BLE001 - the model sees it, the conversation goes on
                result.error = "exception"
                result.content = f"Error: {name} raised {type(exc).__name__}: {exc}"
                return result
            result.value = value
            result.content = serialize_result(value)
            return result
        finally:
            result.seconds = time.monotonic() - start

    async def execute_calls(self, calls: list[tuple[str, str, str]]) -> list[ToolCallResult]:
        """All calls of a turn, concurrently; results in the order of the calls."""
        return list(await asyncio.gather(*(self.execute_call(*c) for c in calls)))

    # ------------------------------------------------------------------ the loop

    @staticmethod
    def _calls_of(message: Any) -> list[tuple[str, str, str]]:
        calls = []
        for call in _get(message, "tool_calls", None) or []:
            function = _get(call, "function")
            if function is None:
                continue
            calls.append((_get(call, "id") or _new_call_id(), _get(function, "name") or "",
                          _get(function, "arguments") or ""))
        return calls

    @staticmethod
    def _assistant_message(content: Optional[str], calls: list[tuple[str, str, str]]) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            msg["tool_calls"] = [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in calls
            ]
        return msg

    async def run(self, messages: Iterable[dict[str, Any]], **overrides: Any) -> RunResult:
        """Run the conversation to the model's answer (or `max_rounds`)."""
        history = list(messages)
        start = len(history)
        results: list[ToolCallResult] = []
        responses: list[Any] = []
        content: Optional[str] = None
        for round_ in range(1, self.max_rounds + 1):
            response = await self._create(**self._request(history, round_, dict(overrides)))
            responses.append(response)
            message = _get(_get(response, "choices")[0], "message")
            content = _get(message, "content")
            calls = self._calls_of(message)
            history.append(self._assistant_message(content, calls))
            if not calls:
                return RunResult(history, history[start:], content, round_, "answer", results, responses)
            turn = await self.execute_calls(calls)
            results.extend(turn)
            history.extend(r.message(include_name=self.include_tool_name) for r in turn)
        return RunResult(history, history[start:], content, self.max_rounds, "max_rounds", results, responses)

    def run_sync(self, messages: Iterable[dict[str, Any]], **overrides: Any) -> RunResult:
        """`run` from synchronous code (not inside a running event loop)."""

        async def main() -> RunResult:
            try:
                return await self.run(messages, **overrides)
            finally:
                await self.aclose()

        return asyncio.run(main())

    async def stream(self, messages: Iterable[dict[str, Any]], **overrides: Any) -> AsyncIterator[RunEvent]:
        """Like `run`, as events: `TextDelta` as text streams, `ToolCallStarted` when a call's
        arguments are complete (it starts running then), `ToolCallDone`, and `RunFinished`."""
        history = list(messages)
        start = len(history)
        results: list[ToolCallResult] = []
        content: Optional[str] = None
        for round_ in range(1, self.max_rounds + 1):
            request = self._request(history, round_, dict(overrides))
            request["stream"] = True
            stream = await self._create(**request)
            text_parts: list[str] = []
            pending: dict[int, dict[str, str]] = {}  # index -> id/name/arguments being streamed
            order: list[int] = []
            tasks: dict[int, asyncio.Task[ToolCallResult]] = {}
            started: list[ToolCallStarted] = []

            def launch(index: int) -> None:
                if index in tasks:
                    return
                call = pending[index]
                if not call["id"]:
                    call["id"] = _new_call_id()
                tasks[index] = asyncio.ensure_future(self.execute_call(call["id"], call["name"], call["arguments"]))
                started.append(ToolCallStarted(call["id"], call["name"], call["arguments"], round_))

            try:
                async for chunk in _aiter(stream):
                    for choice in _get(chunk, "choices") or []:
                        if _get(choice, "index", 0) != 0:
                            continue
                        delta = _get(choice, "delta")
                        piece = _get(delta, "content") if delta is not None else None
                        if piece:
                            text_parts.append(piece)
                            yield TextDelta(piece, round_)
                        for tc in (_get(delta, "tool_calls") or []) if delta is not None else []:
                            index = _get(tc, "index", 0)
                            if index not in pending:
                                for earlier in order:  # a new call starts: the earlier ones are complete
                                    launch(earlier)
                                pending[index] = {"id": "", "name": "", "arguments": ""}
                                order.append(index)
                            call = pending[index]
                            if _get(tc, "id"):
                                call["id"] = _get(tc, "id")
                            function = _get(tc, "function")
                            if function is not None:
                                call["name"] += _get(function, "name") or ""
                                call["arguments"] += _get(function, "arguments") or ""
                        if _get(choice, "finish_reason"):
                            for index in order:
                                launch(index)
                    while started:
                        yield started.pop(0)
            except BaseException:
                for task in tasks.values():
                    task.cancel()
                raise
            for index in order:
                launch(index)
            while started:
                yield started.pop(0)
            content = "".join(text_parts) or None
            calls = [(pending[i]["id"], pending[i]["name"], pending[i]["arguments"]) for i in order]
            history.append(self._assistant_message(content, calls))
            if not calls:
                result = RunResult(history, history[start:], content, round_, "answer", results)
                yield RunFinished(result)
                return
            for finished in asyncio.as_completed(list(tasks.values())):
                yield ToolCallDone(await finished, round_)
            turn = [tasks[i].result() for i in order]
            results.extend(turn)
            history.extend(r.message(include_name=self.include_tool_name) for r in turn)
        yield RunFinished(RunResult(history, history[start:], content, self.max_rounds, "max_rounds", results))


async def _aiter(stream: Any) -> AsyncIterator[Any]:
    """Async iteration over an async stream, or a sync one through a worker thread."""
    if hasattr(stream, "__aiter__"):
        async for item in stream:
            yield item
        return
    iterator = iter(stream)
    done = object()
    while True:
        item = await asyncio.to_thread(next, iterator, done)
        if item is done:
            return
        yield item
