"""Disconnect storm: many concurrent tool-call clients that drop their connections at random
moments, against the real server on the default model with grammar sampling on.

    python benchmarks/disconnect_storm.py --clients 256 --rounds 3      # starts server_vllm.py
    python benchmarks/disconnect_storm.py --base-url http://127.0.0.1:8000 --clients 64

Every client asks for a tool call (`tool_choice` auto, none, required or a named tool; `n` 1 or 2)
and, by a seeded draw, either reads its answer to the end or drops the connection: while queued
(before any byte of the answer), after the first chunk (prefill done), in the middle of text, or
in the middle of a call's arguments; the non-streaming path drops after a random delay.
After each round: the engine holds no running or waiting request (vLLM's gauges in `/metrics`,
and the server's own running gauge), every answer read to the end is complete and valid (streams
end with `data: [DONE]`, every choice finishes, a finished call's arguments are valid against its
schema), and a new request is answered.

Memory: the resident memory of each of the server's processes (the API server, which holds the
in-process CPU engine too, and with `--no-engine-in-process` vLLM's engine core and worker
processes) is read after a warm-up round of each kind and after every round, once the server has
been idle for a few seconds. Two properties: no process rises above its warm level by more than
`--rss-tolerance`, and memory does not grow storm over storm: the last round ends no higher than
the first one did, within `--plateau-tolerance` of the warm level. Without a server started here
(`--base-url`), give `--server-pid` to read the process tree, else only the API server's own
`process_resident_memory_bytes` in `/metrics` is read.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import httpx
from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[1]
MODEL = "SmolLM2-135M-Instruct"
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather of a city",
                                      "parameters": {"type": "object", "properties": {
                                          "city": {"type": "string"},
                                          "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                                          "required": ["city"]}}},
    {"type": "function", "function": {"name": "search_flights", "description": "Find flights",
                                      "parameters": {"type": "object", "properties": {
                                          "origin": {"type": "string"}, "destination": {"type": "string"},
                                          "passengers": {"type": "integer", "minimum": 1, "maximum": 9}},
                                          "required": ["origin", "destination"]}}},
]
VALIDATORS = {t["function"]["name"]: Draft202012Validator(t["function"]["parameters"]) for t in TOOLS}
QUESTIONS = ["What is the weather in Paris?", "Find me a flight from Lisbon to Rome for two.",
             "Is it cold in Oslo right now, in fahrenheit?", "Tell me a short joke, then check Tokyo's weather."]
CHOICES: list[Any] = ["auto", "none", "required", {"type": "function", "function": {"name": "get_weather"}},
                      {"type": "function", "function": {"name": "search_flights"}}]
# How a client behaves, and how often.
BEHAVIOURS = {"read_to_end": 0.3, "drop_queued": 0.15, "drop_after_first_chunk": 0.15, "drop_in_text": 0.15,
              "drop_in_arguments": 0.25}
DEFAULT_RSS_TOLERANCE = 0.10  # of the warm RSS
DEFAULT_PLATEAU_TOLERANCE = 0.02  # of the warm RSS: last round against the first
IDLE_SETTLE_S = 3.0  # the in-process engine gives freed memory back after 1 s idle


@dataclass
class ClientResult:
    behaviour: str
    stream: bool
    outcome: str  # completed, dropped, dropped_late (the answer ended before the drop moment), error
    problem: Optional[str] = None
    status: Optional[int] = None


def request_body(rng: random.Random, stream: bool, max_tokens: int) -> dict[str, Any]:
    n = rng.choice([1, 2])
    temperature = rng.choice([0.7, 1.0] if n > 1 else [0.0, 0.7, 1.0])  # vLLM: greedy means n = 1
    return {"model": MODEL, "messages": [{"role": "user", "content": rng.choice(QUESTIONS)}], "tools": TOOLS,
            "tool_choice": rng.choice(CHOICES), "n": n, "stream": stream,
            "max_tokens": max_tokens, "temperature": temperature, "seed": rng.randrange(1 << 30)}


def check_choice(calls: list[dict[str, str]], finish: Optional[str]) -> Optional[str]:
    if finish is None:
        return "a choice never finished"
    if finish not in ("stop", "length", "tool_calls"):
        return f"finish_reason {finish!r}"
    if finish == "tool_calls":
        if not calls:
            return "finish_reason tool_calls without a call"
        for call in calls:
            validator = VALIDATORS.get(call["name"])
            if validator is None:
                return f"call of unknown tool {call['name']!r}"
            try:
                arguments = json.loads(call["arguments"])
            except ValueError:
                return f"arguments are not JSON: {call['arguments']!r}"
            errors = list(validator.iter_errors(arguments))
            if errors:
                return f"arguments invalid for {call['name']}: {errors[0].message}"
    return None


def check_stream_text(lines: list[str]) -> Optional[str]:
    """Full SSE transcript (the `data:` lines) -> None if complete and valid."""
    if not lines or lines[-1] != "data: [DONE]":
        return "stream does not end with data: [DONE]"
    calls: dict[int, dict[int, dict[str, str]]] = collections.defaultdict(dict)
    finish: dict[int, Optional[str]] = {}
    for line in lines[:-1]:
        chunk = json.loads(line[len("data: "):])
        if "error" in chunk:
            return f"error event: {line[:200]}"
        for choice in chunk["choices"]:
            index = choice["index"]
            finish.setdefault(index, None)
            for call in choice["delta"].get("tool_calls") or ():
                slot = calls[index].setdefault(call["index"], {"name": "", "arguments": ""})
                slot["name"] += (call.get("function") or {}).get("name") or ""
                slot["arguments"] += (call.get("function") or {}).get("arguments") or ""
            if choice.get("finish_reason") is not None:
                finish[index] = choice["finish_reason"]
    if not finish:
        return "no choices"
    for index, reason in finish.items():
        problem = check_choice(list(calls[index].values()), reason)
        if problem:
            return problem
    return None


def check_completion(body: dict[str, Any]) -> Optional[str]:
    for choice in body.get("choices") or []:
        calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                 for c in choice["message"].get("tool_calls") or ()]
        problem = check_choice(calls, choice.get("finish_reason"))
        if problem:
            return problem
    return None if body.get("choices") else "no choices"


async def streaming_client(client: httpx.AsyncClient, base: str, rng: random.Random, behaviour: str,
                           max_tokens: int) -> ClientResult:
    body = request_body(rng, True, max_tokens)
    if behaviour == "drop_queued":
        task = asyncio.ensure_future(client.post(f"{base}/v1/chat/completions", json=body))
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        if task.done():
            return ClientResult(behaviour, True, "dropped_late", status=task.result().status_code)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return ClientResult(behaviour, True, "dropped")
    lines: list[str] = []
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            return ClientResult(behaviour, True, "error", f"status {response.status_code}: {await response.aread()!r}",
                                response.status_code)
        async for line in response.aiter_lines():
            if not line:
                continue
            lines.append(line)
            if behaviour == "read_to_end" or line == "data: [DONE]":
                continue
            delta_text = line
            if behaviour == "drop_after_first_chunk":
                return ClientResult(behaviour, True, "dropped", status=200)
            if behaviour == "drop_in_text" and '"content":"' in delta_text and '"content":""' not in delta_text:
                return ClientResult(behaviour, True, "dropped", status=200)
            if behaviour == "drop_in_arguments" and '"arguments":"' in delta_text and '"arguments":""' not in delta_text:
                return ClientResult(behaviour, True, "dropped", status=200)
    problem = check_stream_text(lines)
    outcome = "completed" if behaviour == "read_to_end" else "dropped_late"
    return ClientResult(behaviour, True, "error" if problem else outcome, problem, 200)


async def plain_client(client: httpx.AsyncClient, base: str, rng: random.Random, behaviour: str,
                       max_tokens: int) -> ClientResult:
    body = request_body(rng, False, max_tokens)
    task = asyncio.ensure_future(client.post(f"{base}/v1/chat/completions", json=body))
    if behaviour != "read_to_end":
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return ClientResult(behaviour, False, "dropped")
    response = await task
    if response.status_code != 200:
        return ClientResult(behaviour, False, "error", f"status {response.status_code}: {response.text[:200]}",
                            response.status_code)
    problem = check_completion(response.json())
    outcome = "completed" if behaviour == "read_to_end" else "dropped_late"
    return ClientResult(behaviour, False, "error" if problem else outcome, problem, 200)


def metric_values(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=30).text
    wanted = ("vllm:num_requests_running", "vllm:num_requests_waiting", "functionary_chat_requests_running",
              "process_resident_memory_bytes")
    values: dict[str, float] = {}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            values[name] = values.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return values


async def wait_idle(base: str, timeout: float = 120.0) -> tuple[float, dict[str, float]]:
    """Seconds until the engine and the server hold no request, and the gauges then."""
    start = time.perf_counter()
    while True:
        values = await asyncio.to_thread(metric_values, base)
        busy = (values.get("vllm:num_requests_running", 0) + values.get("vllm:num_requests_waiting", 0)
                + values.get("functionary_chat_requests_running", 0))
        if not busy or time.perf_counter() - start > timeout:
            return time.perf_counter() - start, values
        await asyncio.sleep(0.25)


async def new_request_answered(client: httpx.AsyncClient, base: str) -> bool:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
            "tools": TOOLS, "tool_choice": "required", "max_tokens": 48, "temperature": 0}
    response = await client.post(f"{base}/v1/chat/completions", json=body)
    return response.status_code == 200 and check_completion(response.json()) is None


async def storm(base: str, clients: int, seed: int, stream: bool, max_tokens: int) -> dict[str, Any]:
    rng = random.Random(seed)
    names = list(BEHAVIOURS)
    weights = [BEHAVIOURS[n] for n in names]
    plan = [(random.Random(rng.randrange(1 << 30)), rng.choices(names, weights)[0]) for _ in range(clients)]
    limits = httpx.Limits(max_connections=clients + 8, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        start = time.perf_counter()
        run = streaming_client if stream else plain_client
        results = await asyncio.gather(*(run(client, base, r, b, max_tokens) for r, b in plan), return_exceptions=True)
        storm_seconds = time.perf_counter() - start
        drain_seconds, gauges = await wait_idle(base)
        answered = await new_request_answered(client, base)
    outcomes: collections.Counter[str] = collections.Counter()
    problems: list[str] = []
    for (_, behaviour), result in zip(plan, results):
        if isinstance(result, BaseException):
            outcomes[f"{behaviour}:exception"] += 1
            problems.append(f"{behaviour}: {result!r}")
            continue
        outcomes[f"{behaviour}:{result.outcome}"] += 1
        if result.outcome == "error":
            problems.append(f"{behaviour}: {result.problem}")
    return {
        "stream": stream,
        "clients": clients,
        "storm_seconds": round(storm_seconds, 1),
        "drain_seconds": round(drain_seconds, 2),
        "engine_running": gauges.get("vllm:num_requests_running"),
        "engine_waiting": gauges.get("vllm:num_requests_waiting"),
        "server_running": gauges.get("functionary_chat_requests_running"),
        "outcomes": dict(sorted(outcomes.items())),
        "completed_valid": sum(v for k, v in outcomes.items() if k.endswith(":completed")),
        "problems": problems[:20],
        "new_request_answered": answered,
        "ok": not problems and answered and not gauges.get("vllm:num_requests_running")
        and not gauges.get("vllm:num_requests_waiting") and not gauges.get("functionary_chat_requests_running"),
    }


RssProbe = Callable[[], dict[str, float]]  # process label -> resident bytes


def metrics_rss_probe(base: str) -> RssProbe:
    """The API server's own resident memory, from `/metrics` (no engine processes)."""
    return lambda: {"api_server": metric_values(base).get("process_resident_memory_bytes", 0.0)}


def process_tree_rss_probe(pid: int) -> RssProbe:
    """Resident memory of the server process and of each process under it, labelled by role
    (vLLM names its processes `VLLM::EngineCore`, `VLLM::Worker...`)."""
    import psutil

    def probe() -> dict[str, float]:
        root = psutil.Process(pid)
        out = {"api_server": float(root.memory_info().rss)}
        for child in root.children(recursive=True):
            try:
                name = child.name()
                if "resource_tracker" in " ".join(child.cmdline()):
                    continue  # the stdlib's helper, not an engine process
                label = name if name.startswith("VLLM") else f"child:{name}"
                while label in out:
                    label += "+"
                out[label] = float(child.memory_info().rss)
            except psutil.NoSuchProcess:
                continue
        return out

    return probe


async def rss_settled(probe: RssProbe) -> dict[str, float]:
    await asyncio.sleep(IDLE_SETTLE_S)  # idle: the engine's last step done, freed memory returned
    return await asyncio.to_thread(probe)


def memory_verdict(warm: dict[str, float], after: list[dict[str, float]], tolerance: float,
                   plateau_tolerance: float) -> dict[str, Any]:
    """Per process: largest rise over the warm level, and the rise from the first round to the
    last (storm over storm), both as fractions of the warm level."""
    mib = lambda v: round(v / 2 ** 20, 1)  # noqa: E731
    processes: dict[str, Any] = {}
    passed = bool(after)
    for label, level in warm.items():
        series = [a.get(label, 0.0) for a in after]
        rise = max(series) / level - 1 if level and series else None
        creep = (series[-1] - series[0]) / level if level and len(series) > 1 else 0.0
        processes[label] = {"warm_mib": mib(level), "after_rounds_mib": [mib(v) for v in series],
                            "largest_rise": None if rise is None else round(rise, 4),
                            "last_over_first": round(creep, 4)}
        passed = passed and rise is not None and rise <= tolerance and creep <= plateau_tolerance
    return {"processes": processes, "rss_tolerance": tolerance, "plateau_tolerance": plateau_tolerance,
            "passed": passed}


async def campaign(base: str, clients: int, rounds: int, seed: int, max_tokens: int,
                   rss_tolerance: float = DEFAULT_RSS_TOLERANCE,
                   plateau_tolerance: float = DEFAULT_PLATEAU_TOLERANCE,
                   rss_probe: Optional[RssProbe] = None) -> dict[str, Any]:
    probe = rss_probe or metrics_rss_probe(base)
    # Warm-up: one storm of each kind, so the grammars, caches and buffers a storm needs exist.
    warm_rounds = [await storm(base, clients, seed - 1, True, max_tokens),
                   await storm(base, clients, seed - 2, False, max_tokens)]
    rss_warm = await rss_settled(probe)
    rounds_out = []
    rss_after = []
    for r in range(rounds):
        for stream in (True, False):
            rounds_out.append(await storm(base, clients, seed + 2 * r + (0 if stream else 1), stream, max_tokens))
        rss_after.append(await rss_settled(probe))
    memory = memory_verdict(rss_warm, rss_after, rss_tolerance, plateau_tolerance)
    return {
        "clients": clients,
        "rounds": rounds,
        "max_tokens": max_tokens,
        "warm_up_ok": all(w["ok"] for w in warm_rounds),
        "memory": memory,
        "rounds_detail": rounds_out,
        "passed": all(r["ok"] for r in rounds_out) and memory["passed"],
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--rss-tolerance", type=float, default=DEFAULT_RSS_TOLERANCE,
                        help="largest rise of a process's memory over its warm level (fraction)")
    parser.add_argument("--plateau-tolerance", type=float, default=DEFAULT_PLATEAU_TOLERANCE,
                        help="largest rise from the first round to the last (fraction of the warm level)")
    parser.add_argument("--base-url", default=None, help="a running server (default: start server_vllm.py)")
    parser.add_argument("--server-pid", type=int, default=None,
                        help="with --base-url: the server's process id, to read its engine processes' memory too")
    parser.add_argument("--server-arg", action="append", default=[], help="extra server_vllm.py flag (repeatable)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    def run(base: str, probe: Optional[RssProbe]) -> dict[str, Any]:
        return asyncio.run(campaign(base, args.clients, args.rounds, args.seed, args.max_tokens, args.rss_tolerance,
                                    args.plateau_tolerance, probe))

    if args.base_url:
        probe = process_tree_rss_probe(args.server_pid) if args.server_pid else None
        report = run(args.base_url.rstrip("/"), probe)
    else:
        sys.path.insert(0, str(ROOT))
        from tests.support.server import server_process

        with tempfile.TemporaryDirectory() as tmp:
            with server_process(Path(tmp), ["--enable-grammar-sampling", *args.server_arg]) as server:
                report = run(server.base, process_tree_rss_probe(server.process.pid))
                report["server_log_tracebacks"] = server.log().count("Traceback")
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
