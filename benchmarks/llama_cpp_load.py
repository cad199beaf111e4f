"""The same tool-call load against our llama.cpp back end, llama-cpp-python's own OpenAI server
and our vLLM back end, on the default model, in one run; ratios against llama-cpp-python's server.

    python benchmarks/llama_cpp_load.py [--concurrency 1,16] [--max-tokens 64] [--requests 32]

Servers (started one after the other on 127.0.0.1, each stopped before the next):
  llama.cpp (ours)     server_llama_cpp.py, the default GGUF, grammar sampling on / off
  llama-cpp-python     python -m llama_cpp.server on the same GGUF (needs the `server` extra
                       of llama-cpp-python; skipped when it is not installed). It serves one
                       request at a time and knows no `ignore_eos`: EOS is kept away with
                       `logit_bias` so it generates as many tokens as the others.
  vLLM (ours)          server_vllm.py on the converted default model, grammar on / off

Every request streams a chat completion with one tool (`tool_choice` auto, temperature 0.7) and
a fixed number of output tokens. Output tok/s counts the tokens the usage reports (or, for a
server that sends no usage while streaming, the content chunks, one token each).
"""
from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.load import QUESTIONS, pct, tool_set  # noqa: E402
from benchmarks.server_process import stop, wait_healthy  # noqa: E402

STOCK = "llama-cpp-python"
# llama-cpp-python's server, with llama.cpp's weight repacking off as in our back end (the
# AMX-repacked weights crash llama_decode on prompts of more than one token on these CPUs;
# see functionary/backends/llama_cpp_adapter.py). Its flags follow on the command line.
STOCK_LAUNCHER = """
import sys
from llama_cpp import llama_cpp as lib
default = lib.llama_model_default_params
def no_repack():
    params = default()
    params.use_extra_bufts = False
    return params
lib.llama_model_default_params = no_repack
from llama_cpp.server.__main__ import main
sys.argv[0] = "llama_cpp.server"
main()
"""


async def one(client: httpx.AsyncClient, base: str, model: str, i: int, max_tokens: int, extra: dict) -> dict:
    body = {"model": model, "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            "tools": tool_set(1), "tool_choice": "auto", "max_tokens": max_tokens, "temperature": 0.7,
            "seed": i, **extra}
    start, first, chunks, usage = time.perf_counter(), None, 0, None
    async with client.stream("POST", f"{base}/chat/completions", json=body) as response:
        if response.status_code != 200:
            return {"error": f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"}
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("tool_calls"):
                    chunks += 1
                    if first is None:
                        first = time.perf_counter() - start
    tokens = usage["completion_tokens"] if usage else chunks
    return {"ttft": first if first is not None else float("nan"), "tokens": tokens,
            "prompt_tokens": usage["prompt_tokens"] if usage else None}


async def load(base: str, concurrency: int, requests: int, max_tokens: int, extra: dict) -> dict:
    async with httpx.AsyncClient(timeout=httpx.Timeout(900.0)) as client:
        model = (await client.get(f"{base}/models")).json()["data"][0]["id"]
        await one(client, base, model, 0, 4, extra)  # warm-up: the tool set's grammar compiles once
        queue, results = list(range(requests)), []

        async def worker() -> None:
            while queue:
                results.append(await one(client, base, model, queue.pop(), max_tokens, extra))

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    return {"concurrency": concurrency, "ok": len(ok), "requests": requests,
            "errors": [r["error"] for r in results if "error" in r][:2],
            "tok_s": sum(r["tokens"] for r in ok) / elapsed,
            "ttft_p50_ms": 1000 * pct([r["ttft"] for r in ok], 0.5),
            "tokens_per_request": sum(r["tokens"] for r in ok) / max(len(ok), 1),
            "prompt_tokens": sorted({r["prompt_tokens"] for r in ok if r["prompt_tokens"] is not None})}


def serve(name: str, command: list[str], args: argparse.Namespace, extra: dict) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(args.port)], cwd=ROOT,
                                   env={**os.environ, "TMPDIR": tmp}, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            wait_healthy(args.port, process, path="/v1/models")  # llama-cpp-python's server has no /health
            for concurrency in args.concurrency:
                requests = args.requests if concurrency > 1 else args.single_requests
                row = asyncio.run(load(f"http://127.0.0.1:{args.port}/v1", concurrency, requests,
                                       args.max_tokens, extra))
                row["server"] = name
                print(f"{name:>28} c={concurrency:<3} ok={row['ok']}/{row['requests']} tok/s={row['tok_s']:7.1f} "
                      f"TTFT p50={row['ttft_p50_ms']:7.1f}ms tokens/req={row['tokens_per_request']:.0f} "
                      f"prompt={row['prompt_tokens']}" + (f" errors={row['errors']}" if row["errors"] else ""),
                      flush=True)
                rows.append(row)
        except Exception:
            log.flush()
            print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            stop(process)
    return rows


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests", type=int, default=32, help="requests per concurrent load")
    parser.add_argument("--single-requests", type=int, default=4, help="requests of the one-stream load")
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--skip-vllm", action="store_true")
    parser.add_argument("--only", type=lambda s: s.split(","), default=None,
                        help="run only the servers whose names start with one of these (comma-separated)")
    parser.add_argument("--stock-threads", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                        help="llama-cpp-python's --n_threads (default: its own default, half the cores)")
    args = parser.parse_args(argv)

    from functionary.backends.default_model import DEFAULT_MODEL_NAME, ensure_default_model, find_gguf

    gguf = str(find_gguf())
    parallel = str(max(args.concurrency))
    n_ctx = "2048"
    ours = [sys.executable, str(ROOT / "server_llama_cpp.py"), "--parallel", parallel, "--n-ctx", n_ctx]
    servers: dict[str, tuple[list[str], dict]] = {
        "llama.cpp (ours) grammar on": ([*ours, "--enable-grammar-sampling"], {"ignore_eos": True}),
        "llama.cpp (ours) grammar off": ([*ours, "--no-enable-grammar-sampling"], {"ignore_eos": True}),
    }
    if importlib.util.find_spec("sse_starlette") and importlib.util.find_spec("starlette_context"):
        # EOS ids of SmolLM2's vocabulary (<|endoftext|>, <|im_end|>) pushed away: fixed output length.
        servers[STOCK] = ([sys.executable, "-c", STOCK_LAUNCHER, "--model", gguf, "--n_ctx", n_ctx,
                           "--model_alias", DEFAULT_MODEL_NAME, "--n_threads", str(args.stock_threads),
                           # by default a new request interrupts the one streaming: queue them instead
                           "--interrupt_requests", "False"],
                          {"logit_bias": {"0": -100, "2": -100}})
    else:
        print(f"{STOCK}'s server is not installed (pip install 'llama-cpp-python[server]'): skipped", flush=True)
    if not args.skip_vllm:
        folder = str(ensure_default_model())
        vllm = [sys.executable, str(ROOT / "server_vllm.py"), "--model", folder, "--served-model-name",
                DEFAULT_MODEL_NAME, "--max-model-len", n_ctx]
        servers["vLLM (ours) grammar on"] = ([*vllm, "--enable-grammar-sampling"], {"ignore_eos": True})
        servers["vLLM (ours) grammar off"] = ([*vllm, "--no-enable-grammar-sampling"], {"ignore_eos": True})
    if args.only:
        servers = {name: spec for name, spec in servers.items() if any(name.startswith(p) for p in args.only)}
    table = {name: serve(name, command, args, extra) for name, (command, extra) in servers.items()}
    if STOCK in table:
        print(f"\nratios against {STOCK} (throughput x, TTFT p50 x):")
        for name, rows in table.items():
            if name == STOCK:
                continue
            for row, base in zip(rows, table[STOCK]):
                print(f"  {name:>28} c={row['concurrency']:<3} throughput {row['tok_s'] / base['tok_s']:.2f}x  "
                      f"TTFT {row['ttft_p50_ms'] / base['ttft_p50_ms']:.2f}x")


if __name__ == "__main__":
    main()
