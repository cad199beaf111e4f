"""Fuzz campaign: many generated requests against the real server on the default model.

    # start server_vllm.py on the default model (loopback), send 10,000 requests, stop it
    python benchmarks/fuzz.py --requests 10000 --seed 0

    # against a server that is already running
    python benchmarks/fuzz.py --base-url http://127.0.0.1:8000 --requests 2000

Requests come from hypothesis strategies (seeded, so a run can be repeated): chat bodies whose
messages, tools, tool_choice, legacy functions and sampling parameters are valid, out of range,
of the wrong type or junk, with unicode of every kind (emoji, right-to-left, NUL, unpaired
surrogate escapes); and raw HTTP: wrong content types, malformed or non-UTF-8 JSON, deeply nested
bodies, bodies over the size limit, oversized or very many headers, wrong methods and paths.
Generation is kept short (every body carries a `max_tokens` of at most 4, or an invalid one).

The oracle, for every request: no 5xx and no dropped connection (an upload cut short after a
413 for an over-size body excepted); every 4xx an OpenAI error `{"error": {message, type, param,
code}}`; every 200 a well-formed completion (streams: SSE frames of chunks ending with
`data: [DONE]`, no error event). Afterwards `/health` is 200, the engine holds no running or
waiting request (vLLM's gauges in `/metrics`) and a valid tool-call request is answered.
Prints the figures (requests, time, outcome counts) and writes them with any failures as JSON.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings, strategies as st

ROOT = Path(__file__).resolve().parents[1]

MAX_TOKENS_CAP = 4  # every valid body generates at most this many tokens per choice
BODY_LIMIT = 8 * 1024 * 1024  # the server's default --max-request-body-bytes
HEADER_LIMIT = 64 * 1024  # the server's default --max-header-bytes
FINISH_REASONS = {"stop", "length", "tool_calls", "function_call"}


@dataclass
class Case:
    kind: str
    method: str = "POST"
    path: str = "/v1/chat/completions"
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    body: Optional[bytes] = None
    stream: bool = False
    # An upload the server may refuse before reading it all (413 by Content-Length).
    may_cut_upload: bool = False
    # Bytes of filler for an over-size body, made when sent (10,000 cases of 8 MiB would not fit).
    oversize: int = 0

    def payload(self) -> Optional[bytes]:
        if self.oversize:
            return b'{"messages": [{"role": "user", "content": "' + b"a" * self.oversize + b'"}]}'
        return self.body


# ------------------------------------------------------------------------------- strategies

MODEL_NAME = "SmolLM2-135M-Instruct"

UNICODE = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40
) | st.sampled_from([
    "😀👍🏽🇫🇷", "مرحبا بالعالم", "שלום", "\u202eevil\u202c", "a\u0000b", "\ufeffbom", "<|eot_id|>", ">>>all\n",
    "<|reserved_special_token_249|>", "\n\n\n", "\ud800", "a\udfffb", "\ud83d\ude00", "{\"a\": 1}", "ｆｕｌｌｗｉｄｔｈ", "\t\r\n", "Ω≈ç√∫", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
])
SHORT_TEXT = st.sampled_from(["What is the weather in Paris?", "hi", "Call a tool.", ""]) | UNICODE

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2 ** 70), 2 ** 70) | st.floats(allow_nan=False) | UNICODE,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(UNICODE, children, max_size=3),
    max_leaves=6,
)

SCHEMA_TYPES = st.sampled_from(["string", "integer", "number", "boolean", "array", "object", "null"])
KEYWORD_JUNK = st.sampled_from([5, "a", [1], {"x": 1}, None, True, -1, "foo", [], {}])


@st.composite
def schemas(draw: Any, depth: int = 0) -> Any:
    kind = draw(SCHEMA_TYPES)
    schema: dict[str, Any] = {"type": kind}
    if draw(st.booleans()):
        schema["description"] = draw(UNICODE)
    if kind == "string" and draw(st.booleans()):
        schema[draw(st.sampled_from(["enum", "maxLength", "pattern", "format"]))] = draw(st.sampled_from(
            [["a", "b"], 5, "^[a-z]+$", "date-time", "((", 0]))
    if kind in ("integer", "number") and draw(st.booleans()):
        schema["minimum"], schema["maximum"] = sorted(draw(st.lists(st.integers(-100, 100), min_size=2, max_size=2)))
    if kind == "array" and depth < 3:
        schema["items"] = draw(schemas(depth + 1))
    if kind == "object" and depth < 3:
        props = draw(st.dictionaries(st.text("abcxyz_", min_size=1, max_size=6), schemas(depth + 1), max_size=3))
        schema["properties"] = props
        if props and draw(st.booleans()):
            schema["required"] = draw(st.lists(st.sampled_from(sorted(props)), unique=True, min_size=1))
    if draw(st.integers(0, 9)) == 0:  # break one keyword
        schema[draw(st.sampled_from(["type", "properties", "required", "items", "enum", "minimum", "$ref",
                                     "additionalProperties", "anyOf"]))] = draw(KEYWORD_JUNK)
    return schema


NAMES = st.sampled_from(["get_weather", "get_time", "search", "a", "x" * 64]) | st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=70)


@st.composite
def functions(draw: Any) -> Any:
    fn: dict[str, Any] = {"name": draw(NAMES)}
    if draw(st.booleans()):
        fn["description"] = draw(UNICODE)
    choice = draw(st.integers(0, 9))
    if choice < 6:
        params = {"type": "object", "properties": draw(st.dictionaries(st.text("abcdef", min_size=1, max_size=5),
                                                                     schemas(1), max_size=4))}
        if params["properties"] and draw(st.booleans()):
            params["required"] = sorted(params["properties"])[:1]
        fn["parameters"] = params
    elif choice < 8:
        fn["parameters"] = draw(schemas())
    elif choice == 8:
        fn["parameters"] = draw(JUNK)
    if draw(st.integers(0, 4)) == 0:
        fn["strict"] = draw(st.booleans() | JUNK)
    return fn


TOOLS_FIELD = st.lists(
    st.one_of(
        functions().map(lambda f: {"type": "function", "function": f}),
        st.just({"type": "code_interpreter"}),
        JUNK,
    ),
    max_size=5,
) | JUNK

TOOL_CHOICE = st.sampled_from(["none", "auto", "required", "bogus", None]) | NAMES.map(
    lambda n: {"type": "function", "function": {"name": n}}) | JUNK


@st.composite
def messages(draw: Any) -> Any:
    out: list[Any] = []
    for _ in range(draw(st.integers(0, 5))):
        role = draw(st.sampled_from(["system", "developer", "user", "assistant", "tool", "function", "bogus"]))
        message: dict[str, Any] = {"role": role}
        content_kind = draw(st.integers(0, 6))
        if content_kind <= 3:
            message["content"] = draw(SHORT_TEXT)
        elif content_kind == 4:
            message["content"] = [{"type": "text", "text": draw(SHORT_TEXT)},
                                  *draw(st.lists(st.sampled_from([{"type": "image_url", "image_url": {"url": "x"}},
                                                                  {"type": "text"}]), max_size=1))]
        elif content_kind == 5:
            message["content"] = draw(st.text(min_size=200, max_size=3000))
        else:
            message["content"] = draw(JUNK)
        if role == "assistant" and draw(st.booleans()):
            message["tool_calls"] = [{"id": draw(UNICODE), "type": "function",
                                      "function": {"name": draw(NAMES),
                                                   "arguments": draw(st.sampled_from(['{"city": "Paris"}', "{", ""])
                                                                     | UNICODE)}}]
        if role == "tool":
            message["tool_call_id"] = draw(UNICODE)
        if role == "function" or draw(st.integers(0, 5)) == 0:
            message["name"] = draw(NAMES)
        out.append(message)
    if out and draw(st.integers(0, 3)) == 0:
        out[-1] = {"role": "user", "content": draw(SHORT_TEXT)}
    return out


def maybe(strategy: Any) -> Any:
    return st.one_of(st.none(), strategy)


SAMPLING = {
    "temperature": st.floats(0, 2) | st.sampled_from([-1, 3, 1e-9, "hot", 1e308]),
    "top_p": st.floats(0.01, 1) | st.sampled_from([0, -0.5, 2, "x"]),
    "top_k": st.integers(-1, 100) | st.sampled_from([0, -5, 10 ** 6, 2 ** 40, 1.5]),
    "min_p": st.floats(0, 1) | st.sampled_from([-1, 2]),
    "presence_penalty": st.floats(-2, 2) | st.sampled_from([-3, 5]),
    "frequency_penalty": st.floats(-2, 2) | st.sampled_from([-3, 5]),
    "repetition_penalty": st.floats(0.01, 5) | st.sampled_from([0, -1, 1e10]),
    "seed": st.integers(-(2 ** 63), 2 ** 63) | st.sampled_from([2 ** 64 + 1, -1, "s", 10 ** 30]),
    "n": st.integers(1, 2) | st.sampled_from([0, -1, 17, 3, 10 ** 30, "2", 1.5]),
    "min_tokens": st.integers(0, 3) | st.sampled_from([-1, 10, "1"]),
    "stop": maybe(UNICODE | st.lists(UNICODE, max_size=4) | JUNK),
    "stop_token_ids": st.lists(st.integers(-5, 2 ** 40), max_size=3) | JUNK,
    "ignore_eos": st.booleans() | JUNK,
    "logprobs": st.booleans(),
    "top_logprobs": st.integers(-1, 25),
    "logit_bias": st.dictionaries(st.text("0123456789", min_size=1, max_size=6), st.floats(-200, 200), max_size=3) | JUNK,
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"}, {"type": "json_schema"}, {"type": "x"}])
    | JUNK,
    "parallel_tool_calls": st.booleans() | JUNK,
    "stream_options": st.sampled_from([{"include_usage": True}, {"include_usage": False}, {"continuous_usage_stats": True}])
    | JUNK,
    "user": UNICODE | JUNK,
    "skip_special_tokens": st.booleans(),
    "an_unknown_field": JUNK,
}


@st.composite
def chat_bodies(draw: Any) -> tuple[dict[str, Any], bool]:
    body: dict[str, Any] = {}
    shape = draw(st.integers(0, 19))
    if shape == 0:
        body["messages"] = draw(JUNK)
    else:
        body["messages"] = draw(messages()) if shape < 6 else [{"role": "user", "content": draw(SHORT_TEXT)}]
    model = draw(st.integers(0, 9))
    if model < 6:
        body["model"] = MODEL_NAME
    elif model == 6:
        body["model"] = draw(UNICODE | JUNK)
    # Short generation: a small valid max_tokens, or an invalid one (a 400, nothing generated).
    budget = draw(st.integers(0, 19))
    if budget < 16:
        body["max_tokens"] = draw(st.integers(1, MAX_TOKENS_CAP))
    elif budget < 18:
        body["max_completion_tokens"] = draw(st.integers(1, MAX_TOKENS_CAP))
        if draw(st.booleans()):
            body["max_tokens"] = draw(st.integers(1, 10 ** 6))
    else:
        body["max_tokens"] = draw(st.sampled_from([0, -1, 10 ** 9, "many", 1.5, None, [2]]))
        if body["max_tokens"] is None:  # null would mean "up to the context": keep it short
            body["max_completion_tokens"] = 1
    tools_kind = draw(st.integers(0, 9))
    if tools_kind < 5:
        body["tools"] = draw(TOOLS_FIELD)
        if draw(st.booleans()):
            body["tool_choice"] = draw(TOOL_CHOICE)
    elif tools_kind == 5:
        body["functions"] = draw(st.lists(functions(), max_size=3) | JUNK)
        if draw(st.booleans()):
            body["function_call"] = draw(st.sampled_from(["none", "auto", "x"]) | NAMES.map(lambda n: {"name": n}))
    elif tools_kind == 6:
        body["tool_choice"] = draw(TOOL_CHOICE)
    for name in draw(st.lists(st.sampled_from(sorted(SAMPLING)), max_size=5, unique=True)):
        body[name] = draw(SAMPLING[name])
    stream = draw(st.sampled_from([False, True, True, "yes", None]))
    if stream is not None:
        body["stream"] = stream
    # Too many choices make a slow request even at 4 tokens; cap `n` where it is a valid int.
    if isinstance(body.get("n"), int) and not isinstance(body.get("n"), bool) and 3 <= body["n"] <= 16:
        body["n"] = 3
    return body, stream is True


def _nested(depth: int) -> bytes:
    return b'{"messages": [{"role": "user", "content": ' + b"[" * depth + b"]" * depth + b'}], "max_tokens": 1}'


VALID = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
VALID_BYTES = json.dumps(VALID).encode()


@st.composite
def raw_cases(draw: Any) -> Case:
    kind = draw(st.sampled_from([
        "content-type", "malformed-json", "not-utf8", "deep-nesting", "too-large-body", "big-header", "many-headers",
        "method", "path", "json-not-object", "number-literals",
    ]))
    if kind == "content-type":
        ctype = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                      "application/json; charset=latin-1", "", "application/xml", "*/*"]))
        return Case(kind, headers={"content-type": ctype} if ctype else {}, body=VALID_BYTES)
    if kind == "malformed-json":
        cut = draw(st.integers(0, len(VALID_BYTES) - 1))
        junk = draw(st.binary(max_size=20))
        return Case(kind, body=VALID_BYTES[:cut] + junk)
    if kind == "not-utf8":
        return Case(kind, body=draw(st.sampled_from([b"\xff\xfe{", b'{"messages": "\xc3\x28"}', b"\xef\xbb\xbf" + VALID_BYTES,
                                                     VALID_BYTES.decode().encode("utf-16")])))
    if kind == "deep-nesting":
        return Case(kind, body=_nested(draw(st.sampled_from([100, 1000, 10_000, 200_000]))))
    if kind == "too-large-body":
        return Case(kind, oversize=BODY_LIMIT + draw(st.integers(1, 4096)), may_cut_upload=True)
    if kind == "big-header":
        # Over the app's limit, under the HTTP parser's (the limit + 16 KiB): the middleware's 431.
        size = HEADER_LIMIT + draw(st.integers(1, 12 * 1024))
        return Case(kind, headers={"content-type": "application/json", "x-big": "a" * size}, body=VALID_BYTES)
    if kind == "many-headers":
        count = draw(st.integers(50, 90))
        headers = {f"x-h{i}": "v" * draw(st.integers(0, 100)) for i in range(count)}
        return Case(kind, headers={"content-type": "application/json", **headers}, body=VALID_BYTES)
    if kind == "method":
        return Case(kind, method=draw(st.sampled_from(["GET", "PUT", "DELETE", "PATCH"])), body=None)
    if kind == "path":
        path = draw(st.sampled_from(["/v1/chat/completion", "/v1/models/%ED%A0%80", "/v1/models/x%00y", "/../etc/passwd",
                                     "/v1/chat/completions?stream=true", "/v1/completions", "/%FF"]))
        return Case(kind, path=path, body=VALID_BYTES)
    if kind == "json-not-object":
        return Case(kind, body=draw(st.sampled_from([b"[]", b'"x"', b"5", b"null", b"true", b"{}", b'{"messages": []}'])))
    body = draw(st.sampled_from([
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "temperature": NaN}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "top_p": Infinity}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "seed": ' + b"9" * 5000 + b"}",
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1e400}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "max_tokens": 3}',
    ]))
    return Case("number-literals", body=body)


def _encode(body: dict[str, Any], raw_utf8: bool) -> bytes:
    if raw_utf8:  # unicode as UTF-8 bytes (an unpaired surrogate becomes invalid UTF-8)
        return json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(body).encode()  # unicode as \\u escapes


CHAT_CASES = st.tuples(chat_bodies(), st.integers(0, 3)).map(
    lambda t: Case("chat-utf8" if t[1] == 0 else "chat", body=_encode(t[0][0], t[1] == 0), stream=t[0][1]))


def generate_cases(count: int, seed: int) -> list[Case]:
    """`count` cases, the same ones for the same seed (and hypothesis version): about one in ten
    is raw HTTP, the rest chat bodies; over-size bodies (8 MiB each) are kept to a few."""
    out: list[Case] = []
    big = 0

    @hypothesis_seed(seed)
    @settings(max_examples=count, database=None, phases=[Phase.generate], deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(CHAT_CASES, raw_cases())
    def collect(case: Case, raw: Case) -> None:
        nonlocal big
        if len(out) % 10 != 5:
            out.append(case)
            return
        if raw.kind == "too-large-body":
            big += 1
            if big > max(1, count // 2000):
                raw = Case("deep-nesting", body=_nested(1000))
        out.append(raw)

    collect()
    while len(out) < count:  # hypothesis may stop early on a small search space
        out.append(Case("chat", body=VALID_BYTES))
    return out[:count]


# ------------------------------------------------------------------------------------ oracle


def _openai_error(text: str) -> Optional[str]:
    """None if `text` is an OpenAI error body, else what is wrong with it."""
    try:
        body = json.loads(text)
    except ValueError:
        return "error body is not JSON"
    if not isinstance(body, dict) or set(body) != {"error"} or not isinstance(body["error"], dict):
        return "error body is not {'error': {...}}"
    error = body["error"]
    if set(error) != {"message", "type", "param", "code"}:
        return f"error keys {sorted(error)}"
    if not isinstance(error["message"], str) or not error["message"] or not isinstance(error["type"], str):
        return "error message/type not strings"
    return None


def _check_completion(body: Any) -> Optional[str]:
    if not isinstance(body, dict) or body.get("object") != "chat.completion":
        return "not a chat.completion"
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        return "no choices"
    for choice in choices:
        if choice.get("finish_reason") not in FINISH_REASONS:
            return f"finish_reason {choice.get('finish_reason')!r}"
        message = choice.get("message") or {}
        if message.get("role") != "assistant":
            return "message role"
        for call in message.get("tool_calls") or ():
            if not isinstance(call.get("function", {}).get("arguments"), str) or not call.get("id"):
                return "tool call shape"
    return None


def _check_stream(text: str) -> Optional[str]:
    if not text.endswith("data: [DONE]\n\n"):
        return "stream does not end with data: [DONE]"
    finished: set[int] = set()
    seen: set[int] = set()
    for block in text.split("\n\n")[:-2]:
        if not block.startswith("data: ") or "\n" in block:
            return f"bad SSE frame {block[:80]!r}"
        try:
            chunk = json.loads(block[6:])
        except ValueError:
            return "SSE frame is not JSON"
        if "error" in chunk:
            return f"error event in stream: {block[:200]}"
        if chunk.get("object") != "chat.completion.chunk":
            return "not a chat.completion.chunk"
        for choice in chunk.get("choices", []):
            seen.add(choice["index"])
            if choice.get("finish_reason") is not None:
                if choice["finish_reason"] not in FINISH_REASONS:
                    return f"finish_reason {choice['finish_reason']!r}"
                finished.add(choice["index"])
    if not seen or finished != seen:
        return "a choice never finished"
    return None


@dataclass
class Outcome:
    case: Case
    status: Optional[int]
    problem: Optional[str]
    elapsed: float


async def send(client: httpx.AsyncClient, base: str, case: Case) -> Outcome:
    start = time.perf_counter()
    try:
        response = await client.request(case.method, base + case.path, headers=case.headers, content=case.payload())
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
        if case.may_cut_upload:
            return Outcome(case, None, None, time.perf_counter() - start)  # refused mid-upload
        return Outcome(case, None, f"connection failed: {exc!r}", time.perf_counter() - start)
    except httpx.HTTPError as exc:
        return Outcome(case, None, f"connection failed: {exc!r}", time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    status, text = response.status_code, response.text
    problem: Optional[str] = None
    if status >= 500:
        problem = f"{status}: {text[:300]}"
    elif status >= 400:
        problem = _openai_error(text)
    elif case.path.startswith("/v1/chat/completions") and case.method == "POST":
        if response.headers.get("content-type", "").startswith("text/event-stream"):
            problem = _check_stream(text)
        else:
            try:
                problem = _check_completion(response.json())
            except ValueError:
                problem = "200 body is not JSON"
    return Outcome(case, status, problem, elapsed)


def engine_gauges(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    totals: dict[str, float] = {}
    for line in text.splitlines():
        for name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            if line.startswith(name):
                totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def after_checks(base: str) -> dict[str, Any]:
    """Health, idle engine, and a valid tool call answered after the campaign."""
    deadline = time.time() + 60
    gauges = engine_gauges(base)
    while any(gauges.values()) and time.time() < deadline:
        time.sleep(0.5)
        gauges = engine_gauges(base)
    health = httpx.get(f"{base}/health", timeout=30).status_code
    body = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {
                "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
            "tool_choice": "required", "max_tokens": 40, "temperature": 0}
    answer = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=120)
    ok = answer.status_code == 200 and _check_completion(answer.json()) is None
    return {"health": health, "engine_gauges": gauges, "valid_request_answered": ok,
            "valid_request_status": answer.status_code}


async def run_campaign(base: str, count: int, seed: int, concurrency: int = 8,
                       progress: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    cases = generate_cases(count, seed)
    generated = time.perf_counter() - t0
    outcomes: list[Outcome] = []
    queue: asyncio.Queue[Case] = asyncio.Queue()
    for case in cases:
        queue.put_nowait(case)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(180.0), limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                case = queue.get_nowait()
                outcomes.append(await send(client, base, case))
                if progress and len(outcomes) % 500 == 0:
                    bad = sum(1 for o in outcomes if o.problem)
                    print(f"  {len(outcomes)}/{count} sent, {bad} failures, "
                          f"{time.perf_counter() - start:.0f} s", flush=True)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        sending = time.perf_counter() - start
    after = await asyncio.to_thread(after_checks, base)
    statuses = collections.Counter(str(o.status) if o.status is not None else "closed" for o in outcomes)
    kinds = collections.Counter(o.case.kind for o in outcomes)
    failures = [o for o in outcomes if o.problem]
    by_kind_status = collections.Counter(f"{o.case.kind} {o.status}" for o in outcomes)
    streamed_ok = sum(1 for o in outcomes if o.status == 200 and o.case.stream)
    return {
        "requests": len(outcomes),
        "seed": seed,
        "concurrency": concurrency,
        "generate_seconds": round(generated, 1),
        "send_seconds": round(sending, 1),
        "requests_per_second": round(len(outcomes) / sending, 1) if sending else None,
        "statuses": dict(sorted(statuses.items())),
        "kinds": dict(sorted(kinds.items())),
        "kind_status": dict(sorted(by_kind_status.items())),
        "answered_200_streamed": streamed_ok,
        "server_errors_5xx": sum(1 for o in outcomes if o.status is not None and o.status >= 500),
        "failures": len(failures),
        "failure_examples": [
            {"kind": o.case.kind, "status": o.status, "problem": o.problem, "method": o.case.method,
             "path": o.case.path, "body": (o.case.body or b"")[:600].decode("utf-8", "replace")}
            for o in failures[:25]
        ],
        "after": after,
        "passed": not failures and after["health"] == 200 and after["valid_request_answered"]
        and not any(after["engine_gauges"].values()),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--base-url", default=None, help="a running server (default: start server_vllm.py)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server_vllm.py flag (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args(argv)

    def run(base: str) -> dict[str, Any]:
        return asyncio.run(run_campaign(base, args.requests, args.seed, args.concurrency, progress=True))

    if args.base_url:
        report = run(args.base_url.rstrip("/"))
    else:
        sys.path.insert(0, str(ROOT))
        from tests.support.server import running_server

        tmp = Path(tempfile.mkdtemp(prefix="fuzz-"))  # kept: the server log is evidence
        print(f"server log: {tmp / 'server.log'}", flush=True)
        with running_server(tmp, args.server_arg) as base:
            report = run(base)
        report["server_log_tracebacks"] = (tmp / "server.log").read_text(errors="replace").count("Traceback")
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
