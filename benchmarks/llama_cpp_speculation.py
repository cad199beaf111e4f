"""Tool-call speculation on the llama.cpp back end: `server_llama_cpp.py` without and with
`--speculate-tool-calls`, same model (the default GGUF unless --model), same flags otherwise.

    python benchmarks/llama_cpp_speculation.py --concurrency 1,8 --temperatures 0,0.7 --requests 6

The requests are those of `benchmarks/tool_speculation.py` (tool calls whose argument values come
from the user's message, tool_choice cycling named / required / auto, not streamed, ending
naturally; max_tokens caps them). Per server and (concurrency, temperature): completion tok/s over
the run and the mean request latency; for the speculating server the draft acceptance rate
(drafted tokens that were kept, from /metrics); then each figure as a ratio against "off" from
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

from benchmarks.load import stop, wait_healthy  # noqa: E402
from benchmarks.tool_speculation import CHOICES, body  # noqa: E402

_DRAFT = re.compile(r"^functionary_llama_cpp_draft_tokens(_accepted)?_total ([0-9.e+]+)$", re.M)


async def draft_counts(client: httpx.AsyncClient, base: str) -> dict[str, float]:
    text = (await client.get(f"{base}/metrics")).text
    return {("accepted" if accepted else "drafted"): float(v) for accepted, v in _DRAFT.findall(text)}


async def run_load(base: str, concurrency: int, requests: int, temperature: float, max_tokens: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        model = (await client.get(f"{base}/v1/models")).json()["data"][0]["id"]
        for i in range(len(CHOICES)):  # warm-up: each tool_choice's grammar compiled once
            await client.post(f"{base}/v1/chat/completions", json={**body(i, temperature, 8), "model": model})
        before = await draft_counts(client, base)
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
        after = await draft_counts(client, base)
    drafted = after.get("drafted", 0.0) - before.get("drafted", 0.0)
    accepted = after.get("accepted", 0.0) - before.get("accepted", 0.0)
    return {"concurrency": concurrency, "temperature": temperature, "requests": requests, "ok": len(latencies),
            "errors": errors[:2], "tok_s": tokens / elapsed, "latency_s": sum(latencies) / max(1, len(latencies)),
            "tokens": tokens, "drafted": drafted, "acceptance": accepted / drafted if drafted else None,
            "load_avg": os.getloadavg()[0]}


def serve(name: str, flags: list[str], args: argparse.Namespace) -> list[dict]:
    rows = []
    command = [sys.executable, str(ROOT / "server_llama_cpp.py"), "--parallel", str(max(args.concurrency)),
               *(["--model", args.model] if args.model else []), *flags]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "server.log"
        with open(log, "w") as out:
            process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(args.port)], cwd=ROOT,
                                       env={**os.environ, "TMPDIR": tmp}, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
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
    parser.add_argument("--concurrency", default="1,8", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--temperatures", default="0,0.7", type=lambda s: [float(x) for x in s.split(",")])
    parser.add_argument("--requests", type=int, default=6, help="requests per run at one stream (2x streams above)")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--draft-tokens", type=int, default=None, help="--draft-tokens of the speculating server")
    parser.add_argument("--model", default=None, help="GGUF (default: the default model's)")
    parser.add_argument("--port", type=int, default=8078)
    args = parser.parse_args()
    spec_flags = ["--speculate-tool-calls"]
    if args.draft_tokens is not None:
        spec_flags += ["--draft-tokens", str(args.draft_tokens)]
    off = serve("off", ["--no-speculate-tool-calls"], args)
    on = serve("speculate", spec_flags, args)
    print("\nconcurrency temperature  tok/s off -> on (ratio)   latency off -> on (ratio)   acceptance")
    for a, b in zip(off, on):
        print(f"{a['concurrency']:>11} {a['temperature']:>11}  {a['tok_s']:6.1f} -> {b['tok_s']:6.1f} "
              f"({b['tok_s'] / a['tok_s']:.2f}x)   {a['latency_s']:6.2f}s -> {b['latency_s']:6.2f}s "
              f"({b['latency_s'] / a['latency_s']:.2f}x)   {b['acceptance'] or 0:.2f}")


if __name__ == "__main__":
    main()
