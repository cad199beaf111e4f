"""`functionary.client`: schemas from signatures and docstrings, and the conversation runner
against the real app in process on a scripted `FakeBackend` (raw v3.llama3 model text, parsed by
the real parser into tool calls)."""
from __future__ import annotations

import asyncio
import enum
import json
import socket
import threading
import time
from contextlib import AsyncExitStack
from typing import Annotated, Any, Callable, Literal, Optional

import httpx
import pytest
import uvicorn
from openai import AsyncOpenAI
from pydantic import BaseModel, Field

from functionary.api import ServerSettings, create_app
from functionary.backends.fake import FakeBackend
from functionary.client import (
    ChatRunner,
    FunctionTool,
    RunFinished,
    TextDelta,
    ToolCallDone,
    ToolCallStarted,
    Toolbox,
    tool,
)

MODEL = "functionary-test"
USER = [{"role": "user", "content": "What is the price of the car named Tang?"}]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# ---------------------------------------------------------------------------------------------
# Schemas


class Unit(str, enum.Enum):
    celsius = "celsius"
    fahrenheit = "fahrenheit"


class Address(BaseModel):
    """A postal address."""

    city: str
    zip_code: Optional[str] = None


def params(fn: Callable[..., Any]) -> dict[str, Any]:
    return FunctionTool.from_function(fn).parameters


def test_schema_from_signature_and_google_docstring() -> None:
    def get_weather(city: str, unit: Unit = Unit.celsius, days: int = 1, detail: Literal["short", "long"] = "short",
                    tags: Optional[list[str]] = None) -> str:
        """Get the weather forecast.

        Uses a made-up service.

        Args:
            city: The city, e.g. Paris.
            unit: Temperature unit.
            days: How many days.
        """
        return ""

    t = FunctionTool.from_function(get_weather)
    assert t.to_openai() == {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather forecast.\n\nUses a made-up service.",
            "parameters": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "city": {"type": "string", "description": "The city, e.g. Paris."},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius",
                             "description": "Temperature unit."},
                    "days": {"type": "integer", "default": 1, "description": "How many days."},
                    "detail": {"type": "string", "enum": ["short", "long"], "default": "short"},
                    "tags": {"type": "array", "items": {"type": "string"}},  # Optional[...] = None: just optional
                },
                "required": ["city"],
            },
        },
    }


def test_schema_numpy_and_rest_docstrings() -> None:
    def numpy_style(a: int, b: float = 0.5) -> float:
        """Add.

        Parameters
        ----------
        a : int
            The first.
        b : float
            The second.
        """
        return a + b

    def rest_style(a: int) -> int:
        """Double.

        :param a: The number.
        """
        return 2 * a

    assert params(numpy_style)["properties"]["a"]["description"] == "The first."
    assert params(numpy_style)["properties"]["b"] == {"type": "number", "default": 0.5, "description": "The second."}
    assert params(rest_style)["properties"]["a"]["description"] == "The number."


class Tree(BaseModel):
    name: str
    children: list[Tree] = []


def test_schema_nested_models_inlined_and_recursive_kept() -> None:
    def ship(to: Address, items: list[Address], tree: Tree, count: Annotated[int, Field(ge=1, description="How many.")] = 1) -> None:
        """Ship."""

    p = params(ship)
    assert p["properties"]["to"] == {
        "type": "object",
        "description": "A postal address.",
        "properties": {"city": {"type": "string"}, "zip_code": {"type": "string"}},
        "required": ["city"],
    }
    assert p["properties"]["items"] == {"type": "array", "items": p["properties"]["to"]}
    assert p["properties"]["count"] == {"type": "integer", "minimum": 1, "default": 1, "description": "How many."}
    # A recursive model cannot be inlined: one definition stays, referenced.
    assert p["properties"]["tree"]["properties"]["children"]["items"] == {"$ref": "#/$defs/Tree"}
    assert set(p["$defs"]) == {"Tree"}
    assert "title" not in json.dumps(p).replace('"title": {', "")  # no pydantic titles anywhere


def test_schema_odd_names_async_and_decorators() -> None:
    async def lookup(json: str, model_config: int = 0, *args: Any, **kwargs: Any) -> str:  # noqa: A002
        return json

    assert params(lookup)["properties"] == {"json": {"type": "string"}, "model_config": {"type": "integer", "default": 0}}

    @tool(name="renamed", description="Custom.")
    def original(x: int) -> int:
        return x

    assert original.name == "renamed" and original.to_openai()["function"]["description"] == "Custom."
    assert original(3) == 3  # still callable

    box = Toolbox()

    @box.register
    def one() -> int:
        """One."""
        return 1

    assert "one" in box and box.openai_tools()[0]["function"] == {
        "name": "one", "description": "One.", "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    }
    with pytest.raises(ValueError, match="already registered"):
        box.add(one)


def test_validation_converts_and_rejects() -> None:
    def f(to: Address, unit: Unit = Unit.celsius, n: int = 2) -> None: ...

    t = FunctionTool.from_function(f)
    args, kwargs = t.validate('{"to": {"city": "Paris"}, "unit": "fahrenheit"}')
    assert args == [] and kwargs == {"to": Address(city="Paris"), "unit": Unit.fahrenheit, "n": 2}
    for bad, message in [('{"unit": "kelvin", "to": {"city": "x"}}', "unit"), ("{}", "to: Field required"),
                         ("not json", "not valid JSON"), ("[1]", "JSON object"), ('{"to": {"city": "x"}, "extra": 1}', "extra")]:
        with pytest.raises(ValueError, match=message):
            t.validate(bad)


# ---------------------------------------------------------------------------------------------
# The app in process with a scripted fake backend


class Script:
    """Scripted model outputs, one per request, in order (the last one repeats)."""

    def __init__(self, *outputs: str) -> None:
        self.outputs = list(outputs)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        return self.outputs[min(len(self.prompts), len(self.outputs)) - 1]


@pytest.fixture
async def app_client():
    """`await app_client(script, **fake_options)` -> AsyncOpenAI talking to the app in process."""
    stack = AsyncExitStack()

    async def make(script: Script, **fake_options: Any) -> AsyncOpenAI:
        fake = FakeBackend(script, **fake_options)
        settings = ServerSettings(served_model_names=[MODEL], prompt_template_version="v3.llama3")
        app = create_app(settings, lambda: fake)
        await stack.enter_async_context(app.router.lifespan_context(app))
        http = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")
        )
        return AsyncOpenAI(api_key="unused", base_url="http://testserver/v1", http_client=http, max_retries=0)

    yield make
    await stack.aclose()


@pytest.fixture
async def live_client():
    """`live_client(script, **fake_options)` -> AsyncOpenAI on the app served by uvicorn on
    127.0.0.1 in a thread (httpx's ASGI transport buffers whole responses: no real streaming)."""
    servers: list[tuple[uvicorn.Server, threading.Thread]] = []
    clients: list[AsyncOpenAI] = []

    def make(script: Script, **fake_options: Any) -> AsyncOpenAI:
        fake = FakeBackend(script, **fake_options)
        settings = ServerSettings(served_model_names=[MODEL], prompt_template_version="v3.llama3")
        app = create_app(settings, lambda: fake)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 20
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)
        port = sock.getsockname()[1]
        client = AsyncOpenAI(api_key="unused", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=10)


def call(name: str, args: dict[str, Any]) -> str:
    return f"{name}\n{json.dumps(args)}"


def turn(*calls: str, text: Optional[str] = None) -> str:
    """One scripted assistant turn in v3.llama3 (the prompt already ends with '>>>')."""
    segments = ([f"all\n{text}"] if text is not None else []) + list(calls)
    return ">>>".join(segments) + "<|eot_id|>"


def answer(text: str) -> str:
    return f"all\n{text}<|eot_id|>"


def tool_results(prompt: str) -> list[str]:
    """The tool messages of the last assistant turn in a rendered v3.llama3 prompt."""
    marker = "<|start_header_id|>tool<|end_header_id|>\n\n"
    return [part.split("<|eot_id|>")[0] for part in prompt.split(marker)[1:]]


def get_car_price(car_name: str) -> dict[str, Any]:
    """Get the price of a car.

    Args:
        car_name: The name of the car.
    """
    prices = {"tang": 20000, "song": 25000}
    return {"car_name": car_name, "price": f"${prices[car_name.lower()]}"}


@pytest.mark.anyio
async def test_runner_calls_the_function_and_answers(app_client) -> None:
    script = Script(turn(call("get_car_price", {"car_name": "Tang"}), text="Let me check."),
                    answer("The Tang costs $20000."))
    runner = ChatRunner(await app_client(script), model=MODEL, tools=[get_car_price])
    result = await runner.run(USER)
    assert result.content == "The Tang costs $20000." and result.stop_reason == "answer" and result.rounds == 2
    assistant, tool_msg, final = result.new_messages
    assert assistant["content"] == "Let me check."
    assert assistant["tool_calls"][0]["function"] == {"name": "get_car_price", "arguments": '{"car_name": "Tang"}'}
    assert tool_msg == {"role": "tool", "tool_call_id": assistant["tool_calls"][0]["id"], "name": "get_car_price",
                        "content": '{"car_name":"Tang","price":"$20000"}'}
    assert final == {"role": "assistant", "content": "The Tang costs $20000."}
    # The tools were offered, and the second request carried the result back.
    assert "type get_car_price = (_: {\n// The name of the car.\ncar_name: string,\n}) => any;" in script.prompts[0]
    assert tool_results(script.prompts[1]) == ['{"car_name":"Tang","price":"$20000"}']


@pytest.mark.anyio
async def test_parallel_calls_run_concurrently_and_keep_their_ids(app_client) -> None:
    threads: dict[str, int] = {}

    def slow_price(car_name: str) -> str:
        """Slow lookup."""
        threads[car_name] = threading.get_ident()
        time.sleep(0.5)
        return f"{car_name}: ok"

    async def slow_async(car_name: str) -> str:
        await asyncio.sleep(0.5)
        return f"{car_name}: async ok"

    script = Script(turn(call("slow_price", {"car_name": "tang"}), call("slow_price", {"car_name": "song"}),
                         call("slow_async", {"car_name": "han"})),
                    answer("Done."))
    runner = ChatRunner(await app_client(script), model=MODEL, tools=[slow_price, slow_async])
    started = time.perf_counter()
    result = await runner.run(USER)
    elapsed = time.perf_counter() - started
    assert elapsed < 0.9, f"three 0.5 s calls took {elapsed:.2f} s: not concurrent"
    assert threads["tang"] != threads["song"]
    calls = result.new_messages[0]["tool_calls"]
    assert len({c["id"] for c in calls}) == 3
    by_id = {m["tool_call_id"]: m["content"] for m in result.new_messages if m["role"] == "tool"}
    for c in calls:
        car = json.loads(c["function"]["arguments"])["car_name"]
        assert by_id[c["id"]].startswith(f"{car}:")
    # Results go back in the order of the calls (v3 prompts match them by position).
    assert tool_results(script.prompts[1]) == ["tang: ok", "song: ok", "han: async ok"]


@pytest.mark.anyio
async def test_errors_go_back_to_the_model(app_client) -> None:
    def divide(a: int, b: int) -> float:
        """Divide a by b."""
        return a / b

    script = Script(
        turn(call("divide", {"a": "one", "b": 2}), call("divide", {"a": 1}), call("divide", {"a": 1, "b": 0}),
             call("nope", {}), "divide\n{not json"),
        answer("Sorry."),
    )
    runner = ChatRunner(await app_client(script), model=MODEL, tools=[divide])
    result = await runner.run(USER)
    assert result.content == "Sorry."
    errors = [(r.error, r.content) for r in result.tool_results]
    assert errors == [
        ("invalid_arguments", "Error: invalid arguments for divide: a: Input should be a valid integer, unable to parse string as an integer"),
        ("invalid_arguments", "Error: invalid arguments for divide: b: Field required"),
        ("exception", "Error: divide raised ZeroDivisionError: division by zero"),
        ("unknown_function", "Error: there is no function named 'nope' (available: divide)."),
        ("invalid_arguments", "Error: invalid arguments for divide: the arguments are not valid JSON (Expecting property name enclosed in double quotes at position 1)"),
    ]
    assert tool_results(script.prompts[1]) == [c for _, c in errors]


@pytest.mark.anyio
async def test_round_limit(app_client) -> None:
    count = {"n": 0}

    def again() -> int:
        count["n"] += 1
        return count["n"]

    script = Script(turn(call("again", {})))  # the model never stops calling
    runner = ChatRunner(await app_client(script), model=MODEL, tools=[again], max_rounds=3)
    result = await runner.run(USER)
    assert result.stop_reason == "max_rounds" and result.rounds == 3 and len(script.prompts) == 3
    assert count["n"] == 3  # the last round's calls ran too: the history stays consistent
    assert result.messages[-1]["role"] == "tool"


@pytest.mark.anyio
async def test_named_tool_choice_only_forces_the_first_round(app_client) -> None:
    # With a named choice the prompt ends with the function's name: the model writes the arguments.
    script = Script('{"car_name": "tang"}<|eot_id|>', answer("It costs $20000."))
    runner = ChatRunner(await app_client(script), model=MODEL, tools=[get_car_price],
                        tool_choice={"type": "function", "function": {"name": "get_car_price"}})
    result = await runner.run(USER)
    assert script.prompts[0].endswith(">>>get_car_price\n") and script.prompts[1].endswith(">>>")
    assert result.content == "It costs $20000." and result.tool_results[0].value["price"] == "$20000"


@pytest.mark.anyio
async def test_stream_yields_text_and_runs_calls_as_they_complete(live_client) -> None:
    started: dict[str, float] = {}

    async def lookup(car_name: str, note: str = "") -> str:
        started[car_name] = time.perf_counter()
        await asyncio.sleep(0.2)
        return car_name.upper()

    # The second call's arguments carry 40 one-character tokens, streamed 10 ms apart.
    script = Script(
        turn(call("lookup", {"car_name": "tang"}), call("lookup", {"car_name": "song", "note": "-" * 40}),
             text="Checking both cars."),
        answer("Tang and song checked."),
    )
    client = live_client(script, delay=0.01)
    runner = ChatRunner(client, model=MODEL, tools=[lookup])
    events = [e async for e in runner.stream(USER)]
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Checking both cars.Tang and song checked."
    assert sum(isinstance(e, TextDelta) for e in events) > 4  # streamed, not in one piece
    kinds = [type(e).__name__ for e in events if not isinstance(e, TextDelta)]
    assert kinds == ["ToolCallStarted", "ToolCallStarted", "ToolCallDone", "ToolCallDone", "RunFinished"]
    # The first call ran while the second call's arguments were still streaming.
    assert started["song"] - started["tang"] > 0.15
    first_text = [i for i, e in enumerate(events) if isinstance(e, TextDelta) and e.round == 1]
    first_start = next(i for i, e in enumerate(events) if isinstance(e, ToolCallStarted))
    assert max(first_text) < first_start
    final = events[-1]
    assert isinstance(final, RunFinished)
    result = final.result
    assert result.content == "Tang and song checked." and result.rounds == 2
    done = {e.result.tool_call_id: e.result.content for e in events if isinstance(e, ToolCallDone)}
    calls = result.new_messages[0]["tool_calls"]
    assert [done[c["id"]] for c in calls] == ["TANG", "SONG"]
    assert tool_results(script.prompts[1]) == ["TANG", "SONG"]


@pytest.mark.anyio
async def test_stream_errors_and_round_limit(app_client) -> None:
    def boom() -> None:
        raise RuntimeError("kaput")

    script = Script(turn(call("boom", {})))
    runner = ChatRunner(await app_client(script), model=MODEL, tools=[boom], max_rounds=2)
    events = [e async for e in runner.stream(USER)]
    done = [e.result for e in events if isinstance(e, ToolCallDone)]
    assert [d.content for d in done] == ["Error: boom raised RuntimeError: kaput"] * 2
    assert isinstance(events[-1], RunFinished) and events[-1].result.stop_reason == "max_rounds"


@pytest.mark.anyio
async def test_python_calls_go_to_the_code_interpreter(app_client) -> None:
    class FakeSandbox:
        def __init__(self) -> None:
            self.codes: list[str] = []

        async def start(self) -> None:
            pass

        async def execute(self, code: str) -> Any:
            from functionary.sandbox import ExecutionResult

            self.codes.append(code)
            return ExecutionResult(text="6.0", status="ok", result="6.0")

    sandbox = FakeSandbox()
    script = Script(turn("python\nvals = [3, 5, 10]\nsum(vals) / len(vals)", text="I'll compute it."),
                    answer("The average is 6.0."))
    runner = ChatRunner(await app_client(script), model=MODEL, code_interpreter=sandbox)
    assert runner.tools() == [{"type": "code_interpreter"}]
    result = await runner.run([{"role": "user", "content": "Average of 3, 5 and 10?"}])
    assert sandbox.codes == ["vals = [3, 5, 10]\nsum(vals) / len(vals)"]
    assert "python will respond with the output of the execution" in script.prompts[0]
    assert tool_results(script.prompts[1]) == ["6.0"] and result.content == "The average is 6.0."
    # Servers that send {"code": ...} as JSON arguments work too.
    r = await runner.execute_call("call_1", "python", json.dumps({"code": "print(1)"}))
    assert sandbox.codes[-1] == "print(1)" and r.content == "6.0"


def test_sync_client_through_threads() -> None:
    class SyncCompletions:
        def __init__(self) -> None:
            self.calls: list[dict[str, Any]] = []

        def create(self, **kwargs: Any) -> dict[str, Any]:
            self.calls.append(kwargs)
            if len(self.calls) == 1:
                msg = {"content": None, "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_car_price", "arguments": '{"car_name": "song"}'}}]}
            else:
                msg = {"content": "It is $25000.", "tool_calls": None}
            return {"choices": [{"message": msg}]}

    class SyncClient:
        def __init__(self) -> None:
            self.chat = type("Chat", (), {})()
            self.chat.completions = SyncCompletions()

    client = SyncClient()
    result = ChatRunner(client, model="m", tools=[get_car_price]).run_sync(USER)
    assert result.content == "It is $25000."
    assert client.chat.completions.calls[1]["messages"][-1] == {
        "role": "tool", "tool_call_id": "c1", "name": "get_car_price", "content": '{"car_name":"song","price":"$25000"}'}
