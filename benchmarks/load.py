"""Load generator for any OpenAI-compatible server, and a side-by-side comparison with stock vLLM.

    # against a running server
    python benchmarks/load.py run --base-url http://127.0.0.1:8000/v1 --concurrency 16 --requests 32

    # start our server, then vLLM's stock OpenAI server, on the same model folder, engine
    # settings and load, one after the other; print both and the ratios
    python benchmarks/load.py compare --concurrency 1,16 --max-tokens 128

Each request is a streaming chat completion with tools (ignore_eos + max_tokens fix the output
length, so both servers generate the same number of tokens). Reports output tok/s over the whole
run, time to first token (TTFT) p50/p95 and inter-token latency (ITL) p50/p95 between chunks.
Only loopback addresses are used.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: the repository root is not on sys.path

# Re-exported: other benchmarks import them from here.
from benchmarks.server_process import stop, wait_healthy  # noqa: E402,F401

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        }, "required": ["city"]},
    },
}]


def tool_set(n: int) -> list[dict]:
    """`get_weather` and n - 1 more tools with varied schemas (what a 20-tool agent sends)."""
    tools = list(TOOLS)
    for i in range(1, n):
        tools.append({"type": "function", "function": {
            "name": f"tool_{i}_{['search', 'book', 'convert', 'lookup'][i % 4]}",
            "description": f"Tool number {i}",
            "parameters": {"type": "object", "properties": {
                "query": {"type": "string", "maxLength": 20 + i},
                "limit": {"type": "integer", "minimum": 1, "maximum": 10 * i},
                "mode": {"type": "string", "enum": ["fast", "exact", f"m{i}"]},
                "filters": {"type": "array", "maxItems": 3, "items": {"type": "object", "properties": {
                    "field": {"type": "string"}, "value": {"type": ["string", "number"]}}, "required": ["field"]}},
            }, "required": ["query"] if i % 2 else ["query", "mode"]},
        }})
    return tools


def tool_choice_value(choice: str) -> object:
    return choice if choice in ("auto", "none", "required") else {"type": "function", "function": {"name": choice}}


QUESTIONS = ["What is the weather in Paris?", "Is it raining in Lisbon?", "Tell me about the weather in Rome.",
             "Weather in Tokyo, in fahrenheit?"]


@dataclass
class Result:
    ttft: float = 0.0  # first chunk with content or a tool call
    first_chunk: float = 0.0  # first chunk of any kind (our server sends the role at the first token)
    itls: list[float] = field(default_factory=list)
    completion_tokens: int = 0
    prompt_tokens: int = 0
    question: int = 0
    error: Optional[str] = None


@dataclass
class Load:
    """What every request of a run sends."""

    max_tokens: int = 128
    tools: int = 1
    tool_choice: str = "auto"


async def one_request(client: httpx.AsyncClient, base_url: str, model: str, i: int, load: Load,
                      api_key: str) -> Result:
    body = {
        "model": model, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
        "tools": tool_set(load.tools), "tool_choice": tool_choice_value(load.tool_choice),
        "max_tokens": load.max_tokens, "temperature": 0.7, "seed": i,
        "ignore_eos": True,
    }
    result, start, last = Result(question=i % len(QUESTIONS)), time.perf_counter(), None
    try:
        async with client.stream("POST", f"{base_url}/chat/completions", json=body,
                                 headers={"Authorization": f"Bearer {api_key}"}) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return result
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    result.completion_tokens = chunk["usage"]["completion_tokens"]
                    result.prompt_tokens = chunk["usage"]["prompt_tokens"]
                if not chunk.get("choices"):
                    continue
                if not result.first_chunk:
                    result.first_chunk = time.perf_counter() - start
                delta = chunk["choices"][0].get("delta") or {}
                if not (delta.get("content") or delta.get("tool_calls")):
                    continue
                now = time.perf_counter()
                if last is None:
                    result.ttft = now - start
                else:
                    result.itls.append(now - last)
                last = now
    except httpx.HTTPError as exc:
        result.error = repr(exc)
    return result


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


async def run_load(base_url: str, concurrency: int, requests: int, load: Load, api_key: str) -> dict:
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0)) as client:
        models = (await client.get(f"{base_url}/models", headers={"Authorization": f"Bearer {api_key}"})).json()
        model = models["data"][0]["id"]
        # Warm-up with the same tools: the first request of a tool set compiles its grammar.
        cold = await one_request(client, base_url, model, 0, Load(8, load.tools, load.tool_choice), api_key)
        queue = list(range(requests))
        results: list[Result] = []

        async def worker() -> None:
            while queue:
                i = queue.pop()
                results.append(await one_request(client, base_url, model, i, load, api_key))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    tokens = sum(r.completion_tokens for r in ok)
    itls = [x for r in ok for x in r.itls]
    return {
        "concurrency": concurrency, "requests": requests, "ok": len(ok), "errors": errors[:3],
        "tools": load.tools, "cold_first_chunk_ms": 1000 * cold.first_chunk,
        "output_tok_s": tokens / elapsed if elapsed else 0.0,
        "first_chunk_p50_ms": 1000 * pct([r.first_chunk for r in ok], 0.5),
        "ttft_p50_ms": 1000 * pct([r.ttft for r in ok], 0.5), "ttft_p95_ms": 1000 * pct([r.ttft for r in ok], 0.95),
        "itl_p50_ms": 1000 * pct(itls, 0.5), "itl_p95_ms": 1000 * pct(itls, 0.95),
        "mean_tokens": tokens / len(ok) if ok else 0,
        # Per question: prompt lengths must agree between servers for a fair comparison.
        "prompt_tokens": sorted({(r.question, r.prompt_tokens) for r in ok}),
    }


def print_row(name: str, row: dict) -> None:
    print(f"{name:>10} tools={row['tools']:<3} c={row['concurrency']:<3} ok={row['ok']}/{row['requests']} "
          f"tok/s={row['output_tok_s']:8.1f}  first chunk p50={row['first_chunk_p50_ms']:7.1f}ms  TTFT p50={row['ttft_p50_ms']:7.1f}ms p95={row['ttft_p95_ms']:7.1f}ms  "
          f"ITL p50={row['itl_p50_ms']:6.1f}ms p95={row['itl_p95_ms']:6.1f}ms  tokens/req={row['mean_tokens']:.0f}  "
          f"cold first chunk={row['cold_first_chunk_ms']:.0f}ms"
          + (f"  errors={row['errors']}" if row["errors"] else ""), flush=True)


def stock_chat_template(directory: str) -> str:
    """Our v3.llama3 Jinja template for the stock server, minus its leading `bos_token`.

    The Jinja template starts with `bos_token` (for HF `apply_chat_template`), while our server
    renders in Python and lets the tokenizer add BOS, as the reference server does. SmolLM2's
    tokenizer adds none, so with the template as it is the stock server's prompts would be one
    token longer, which moves every prompt across a KV-block boundary differently.
    """
    path = Path(directory) / "v3.llama3.no-bos.jinja"
    path.write_text("{%- set bos_token = '' -%}\n" + (ROOT / "prompts" / "v3.llama3.jinja").read_text())
    return str(path)


def serve_and_load(name: str, command: list[str], env: dict, args: argparse.Namespace) -> list[dict]:
    """Start one server, run every (tools, concurrency) load against it, stop it."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        started = time.perf_counter()
        process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(args.port)], cwd=ROOT,
                                   env={**env, "TMPDIR": tmp}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_healthy(args.port, process)
            print(f"{name}: healthy after {time.perf_counter() - started:.1f}s", flush=True)
            for tools in args.tools:
                for concurrency in args.concurrency:
                    row = asyncio.run(run_load(f"http://127.0.0.1:{args.port}/v1", concurrency,
                                               max(args.requests, 2 * concurrency),
                                               Load(args.max_tokens, tools, args.tool_choice), "EMPTY"))
                    print_row(name, row)
                    rows.append(row)
        except Exception:
            log.flush()
            print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(process)
    return rows


def compare(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    from functionary.backends.default_model import DEFAULT_MODEL_NAME, ensure_default_model

    model_dir = args.model or str(ensure_default_model())
    # Our server's CPU defaults, given to both servers explicitly (same engine settings).
    engine = ["--model", model_dir, "--served-model-name", DEFAULT_MODEL_NAME, "--dtype", "bfloat16",
              "--no-enforce-eager" if args.compile else "--enforce-eager", "--max-model-len", "2048",
              "--block-size", "32"]
    templates = tempfile.TemporaryDirectory()
    servers = {}
    if not args.skip_stock:
        stock = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *engine,
                 "--enable-auto-tool-choice", "--tool-call-parser", "hermes"]
        if not args.stock_own_template:
            # The default model's own template drops the tools (a 37-token prompt against 220 for
            # one tool): give the stock server our v3.llama3 template, so both prefill the same.
            stock += ["--chat-template", stock_chat_template(templates.name)]
        servers["vllm-stock"] = stock
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        servers[name] = [sys.executable, str(ROOT / "server_vllm.py"), *engine,
                         "--prompt-template-version", "v3.llama3", *flags.split()]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    # Rounds alternate the servers (A B C A B C ...): this machine's speed drifts by 5-10 %
    # within minutes, so one run of each says less than the ratios of several rounds.
    rounds: list[dict[str, list[dict]]] = []
    with templates:
        for r in range(args.rounds):
            if args.rounds > 1:
                print(f"--- round {r + 1}/{args.rounds}", flush=True)
            rounds.append({name: serve_and_load(name, command, env, args) for name, command in servers.items()})
    table = rounds[0]
    ours = [n for n in table if n != "vllm-stock"]
    if "vllm-stock" in table and not args.stock_own_template:
        for name in ours:
            for mine, theirs in zip(table[name], table["vllm-stock"]):
                if mine["prompt_tokens"] != theirs["prompt_tokens"]:
                    print(f"WARNING: prompt lengths differ (tools={mine['tools']}): {name} "
                          f"{mine['prompt_tokens']} against stock {theirs['prompt_tokens']}", flush=True)
    baselines = (["vllm-stock"] if "vllm-stock" in table else []) + ours[:1]
    for base in baselines:
        for name in ours:
            if name == base:
                continue
            print(f"\nratios ({name} / {base})" + (": each round, = their mean" if args.rounds > 1 else ":"))
            for k, first in enumerate(table[name]):
                through = [rd[name][k]["output_tok_s"] / rd[base][k]["output_tok_s"] for rd in rounds]
                chunk = [rd[name][k]["first_chunk_p50_ms"] - rd[base][k]["first_chunk_p50_ms"] for rd in rounds]
                ttft = [rd[name][k]["ttft_p50_ms"] - rd[base][k]["ttft_p50_ms"] for rd in rounds]
                itl = [rd[name][k]["itl_p50_ms"] / rd[base][k]["itl_p50_ms"] for rd in rounds]
                each = lambda xs, f: (" ".join(f.format(x) for x in xs) + " = " if len(xs) > 1 else "")  # noqa: E731
                print(f"  tools={first['tools']:<3} c={first['concurrency']:<3} "
                      f"throughput {each(through, '{:.2f}x')}{statistics.mean(through):.2f}x   "
                      f"first chunk p50 {each(chunk, '{:+.1f}')}{statistics.mean(chunk):+.1f}ms   "
                      f"TTFT p50 {statistics.mean(ttft):+.1f}ms   ITL p50 {statistics.mean(itl):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    run.add_argument("--api-key", default="EMPTY")
    cmp_ = sub.add_parser("compare")
    cmp_.add_argument("--model", default=None, help="model folder (default: the converted default model)")
    cmp_.add_argument("--port", type=int, default=8765)
    cmp_.add_argument("--skip-stock", action="store_true", help="run only our server's variants")
    cmp_.add_argument("--compile", action="store_true",
                      help="run every server with torch.compile (--no-enforce-eager) instead of eager mode")
    cmp_.add_argument("--rounds", type=int, default=1,
                      help="run every server this many times, alternating; ratios per round and their mean")
    cmp_.add_argument("--stock-own-template", action="store_true",
                      help="let the stock server use the model's own chat template (SmolLM2's ignores tools, "
                           "so its prompts are far shorter than ours)")
    cmp_.add_argument("--variant", action="append", default=None,
                      help='NAME=FLAGS for one run of our server (repeatable); ratios are printed against '
                           'stock vLLM and against the first variant. Default: grammar off, '
                           'lm-format-enforcer, xgrammar')
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    for p in (run, cmp_):
        p.add_argument("--concurrency", type=ints, default=[1, 16])
        p.add_argument("--requests", type=int, default=8)
        p.add_argument("--max-tokens", type=int, default=128)
        p.add_argument("--tools", type=ints, default=[1], help="tools per request, e.g. 1,20 (default: 1)")
        p.add_argument("--tool-choice", default="auto", help="auto | required | none | a function name")
    args = parser.parse_args()
    if args.command == "run":
        for tools in args.tools:
            for concurrency in args.concurrency:
                print_row("server", asyncio.run(run_load(
                    args.base_url, concurrency, max(args.requests, 2 * concurrency),
                    Load(args.max_tokens, tools, args.tool_choice), args.api_key)))
    else:
        args.variant = args.variant or [
            "grammar-off=--no-enable-grammar-sampling",
            "lm-format-enforcer=--enable-grammar-sampling --grammar-backend lm-format-enforcer",
            "xgrammar=--enable-grammar-sampling --grammar-backend xgrammar",
        ]
        compare(args)


if __name__ == "__main__":
    main()
