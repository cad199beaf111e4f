"""Tool-call speculation: our server without speculation, with vLLM's n-gram speculation, with ours
(`--speculate-tool-calls`), and vLLM's stock server, on the same model and engine settings.

    python benchmarks/tool_speculation.py --concurrency 1,16 --temperatures 0,0.7 --requests 6

Requests are tool calls whose argument values come from the user's message (like BFCL), with
tool_choice cycling named / required / auto, not streamed, ending naturally (max_tokens caps
them). Per server and (concurrency, temperature): completion tok/s over the run and the mean
request latency; for ours also the draft acceptance rate and the share of output tokens that were
accepted forced drafts (from the server's /metrics, `functionary_speculation_tokens_total`), for
vLLM's n-gram the acceptance from vLLM's own spec-decode counters. Ratios are against "off" from
the same run. The load average is printed with the figures: this machine is shared.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.load import stock_chat_template, stop, wait_healthy  # noqa: E402

BOOK = {"type": "function", "function": {
    "name": "book_table", "description": "Book a table at a restaurant",
    "parameters": {"type": "object", "properties": {
        "restaurant": {"type": "string"}, "city": {"type": "string"}, "party_size": {"type": "integer"},
        "day": {"type": "string", "enum": ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                                           "sunday"]}},
        "required": ["restaurant", "city", "party_size", "day"]}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"]}}}
TOOLS = [BOOK, WEATHER]
MESSAGES = [
    "Book a table at Luigi's Trattoria in San Francisco for 4 people on friday.",
    "Please reserve The Blue Door in Lisbon for 2 on saturday.",
    "I need a table for 6 at Sakura House in Tokyo on sunday.",
    "Get me a table at Chez Marcel, Paris, party of 3, thursday.",
]
CHOICES = ("named", "required", "auto")
NGRAM = {"method": "ngram", "num_speculative_tokens": 5, "prompt_lookup_max": 4, "prompt_lookup_min": 2}


def body(i: int, temperature: float, max_tokens: int) -> dict:
    choice = CHOICES[i % len(CHOICES)]
    tool_choice = {"type": "function", "function": {"name": "book_table"}} if choice == "named" else choice
    return {"model": "m", "messages": [{"role": "user", "content": MESSAGES[i % len(MESSAGES)]}],
            "tools": TOOLS, "tool_choice": tool_choice, "temperature": temperature, "seed": i,
            "max_tokens": max_tokens}


async def run_load(base: str, concurrency: int, requests: int, temperature: float, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        model = (await client.get(f"{base}/v1/models")).json()["data"][0]["id"]
        for i in range(len(CHOICES)):  # warm-up: grammars compiled, both in vLLM and in our proposer
            await client.post(f"{base}/v1/chat/completions", json={**body(i, temperature, 8), "model": model})
        before = await metrics(client, base)
        queue = list(range(requests))
        latencies: list[float] = []
        tokens = 0
        errors: list[str] = []

        async def worker() -> None:
            nonlocal tokens
            while queue:
                i = queue.pop(0)
                start = time.perf_counter()
                r = await client.post(f"{base}/v1/chat/completions",
                                      json={**body(i, temperature, max_tokens), "model": model})
                if r.status_code != 200:
                    errors.append(f"{r.status_code} {r.text[:200]}")
                    continue
                latencies.append(time.perf_counter() - start)
                tokens += r.json()["usage"]["completion_tokens"]

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        after = await metrics(client, base)
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    row = {"concurrency": concurrency, "temperature": temperature, "requests": requests, "ok": len(latencies),
           "errors": errors[:2], "tok_s": tokens / elapsed, "latency_s": sum(latencies) / max(1, len(latencies)),
           "tokens": tokens, "load_avg": os.getloadavg()[0]}
    if delta.get("drafted"):
        row["acceptance"] = delta.get("accepted", 0) / delta["drafted"]
        row["forced_share"] = delta.get("accepted_forced", 0) / max(1.0, delta.get("output_tokens", 0))
    elif delta.get("vllm_drafted"):
        row["acceptance"] = delta.get("vllm_accepted", 0) / delta["vllm_drafted"]
    return row


_OURS = re.compile(r'^functionary_speculation_tokens_total\{kind="(\w+)"\} ([0-9.e+]+)$', re.M)
_VLLM = re.compile(r'^vllm:spec_decode_num_(draft|accepted)_tokens_total\{[^}]*\} ([0-9.e+]+)$', re.M)


async def metrics(client: httpx.AsyncClient, base: str) -> dict[str, float]:
    try:
        text = (await client.get(f"{base}/metrics")).text
    except httpx.HTTPError:
        return {}
    out = {k: float(v) for k, v in _OURS.findall(text)}
    for kind, v in _VLLM.findall(text):
        key = "vllm_drafted" if kind == "draft" else "vllm_accepted"
        out[key] = out.get(key, 0.0) + float(v)
    return out


def serve(name: str, command: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "w") as out:
            process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(args.port)], cwd=ROOT,
                                       env={**os.environ, "TMPDIR": tmp, "VLLM_CPU_KVCACHE_SPACE": "1"},
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                wait_healthy(args.port, process, log, path="/v1/models")
                for temperature in args.temperatures:
                    for concurrency in args.concurrency:
                        requests = args.requests if concurrency == 1 else max(args.requests, 2 * concurrency)
                        row = asyncio.run(run_load(f"http://127.0.0.1:{args.port}", concurrency, requests,
                                                   temperature, args.max_tokens))
                        row["server"] = name
                        print(json.dumps(row), flush=True)
                        rows.append(row)
            finally:
                stop(process)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", default="1,16", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--temperatures", default="0,0.7", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--requests", type=int, default=6, help="requests per run at one stream (2x streams above)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8077)
    parser.add_argument("--only", default="off,ngram,ours,stock", help="servers to run, comma-separated")
    args = parser.parse_args()

    from functionary.backends.default_model import ensure_default_model

    model = str(ensure_default_model())
    engine = ["--model", model, "--served-model-name", "m", "--dtype", "bfloat16", "--enforce-eager",
              "--max-model-len", "2048", "--block-size", "32"]
    ours = [sys.executable, str(ROOT / "server_vllm.py"), *engine, "--prompt-template-version", "v3.llama3"]
    templates = tempfile.TemporaryDirectory()
    servers = {
        "off": [*ours, "--no-speculate-tool-calls"],
        "ngram": [*ours, "--speculative-config", json.dumps(NGRAM)],
        "ours": [*ours, "--speculate-tool-calls"],
        "stock": [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *engine, "--enable-auto-tool-choice",
                  "--tool-call-parser", "hermes", "--chat-template", stock_chat_template(templates.name)],
    }
    wanted = args.only.split(",")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    table = {name: serve(name, cmd, args) for name, cmd in servers.items() if name in wanted}
    templates.cleanup()
    if "off" in table:
        print("\nratios against off (tok/s, latency):")
        for name, rows in table.items():
            for row, base in zip(rows, table["off"]):
                extra = "".join(f"  {k} {row[k]:.2f}" for k in ("acceptance", "forced_share") if k in row)
                print(f"  {name:>6} c={row['concurrency']:<3} T={row['temperature']:<4} "
                      f"tok/s {row['tok_s']:7.1f} ({row['tok_s'] / base['tok_s']:.2f}x)  "
                      f"latency {row['latency_s']:.2f}s ({row['latency_s'] / base['latency_s']:.2f}x)  "
                      f"load {row['load_avg']:.1f}{extra}")


if __name__ == "__main__":
    main()
