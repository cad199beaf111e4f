"""How close the server comes to its own engine: the same load through HTTP and straight into vLLM.

    python benchmarks/engine_ceiling.py [--tools 1,20] [--concurrency 1,16] [--max-tokens 128]

First our server (`server_vllm.py`, grammar sampling off, the engine flags that
`load.py compare` gives every server) takes the load of `benchmarks/load.py` (streaming chat
completions with tools, temperature 0.7, a seed per request, `ignore_eos`). Then, in a fresh
process, vLLM's offline `LLM` with the engine core in that process (what our server drives
from a thread) generates the same requests: the prompts our server renders and tokenizes, the
same sampling parameters and stop strings, `concurrency` requests at a time, no HTTP, no
parsing, no streaming. The ratio server / engine is the share of the engine's throughput that
reaches clients; what is missing is the server's own cost (HTTP, SSE, parsing, the event loop
and the load generator sharing the cores with the engine).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from load import QUESTIONS, Load, serve_and_load, tool_set  # noqa: E402

ENGINE = {"dtype": "bfloat16", "enforce_eager": True, "max_model_len": 2048, "block_size": 32}


def engine_load(model_dir: str, tools: list[int], concurrency: list[int], requests: int, max_tokens: int) -> list[dict]:
    """The load straight into vLLM's offline engine in this process (call in a fresh process)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from functionary.prompt_template import get_prompt_template_by_version
    from functionary.prompt_template.inference import build_inference_prompt

    llm = LLM(model=model_dir, **ENGINE)
    tokenizer = llm.get_tokenizer()
    template = get_prompt_template_by_version("v3.llama3")
    rows = []
    for n_tools in tools:
        def request(i: int, max_tokens: int) -> tuple:
            built = build_inference_prompt(template, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                                           tools=tool_set(n_tools), tool_choice="auto")
            ids = tokenizer.encode(built.prompt, add_special_tokens=True)  # as our server tokenizes
            params = SamplingParams(max_tokens=max_tokens, temperature=0.7, seed=i, ignore_eos=True,
                                    stop=list(built.stop))
            return TokensPrompt(prompt_token_ids=ids), params

        warm = request(0, 8)
        llm.generate([warm[0]], [warm[1]], use_tqdm=False)  # as load.py's cold request
        for c in concurrency:
            total = max(requests, 2 * c)
            batch = [request(i, max_tokens) for i in range(total)]
            tokens, start = 0, time.perf_counter()
            for at in range(0, total, c):  # c at a time: requests of one length finish together
                wave = batch[at:at + c]
                outputs = llm.generate([p for p, _ in wave], [s for _, s in wave], use_tqdm=False)
                tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
            elapsed = time.perf_counter() - start
            rows.append({"tools": n_tools, "concurrency": c, "output_tok_s": tokens / elapsed,
                         "mean_tokens": tokens / total})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    parser.add_argument("--model", default=None, help="model folder (default: the converted default model)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--tools", type=ints, default=[1])
    parser.add_argument("--concurrency", type=ints, default=[1, 16])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--engine-only", action="store_true", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.model is None:
        from functionary.backends.default_model import ensure_default_model
        args.model = str(ensure_default_model())
    if args.engine_only:
        print(json.dumps(engine_load(args.model, args.tools, args.concurrency, args.requests, args.max_tokens)))
        return

    from functionary.backends.default_model import DEFAULT_MODEL_NAME
    args.tool_choice = "auto"
    command = [sys.executable, str(ROOT / "server_vllm.py"), "--model", args.model, "--served-model-name",
               DEFAULT_MODEL_NAME, "--dtype", "bfloat16", "--enforce-eager", "--max-model-len", "2048",
               "--block-size", "32", "--prompt-template-version", "v3.llama3", "--no-enable-grammar-sampling"]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    served = serve_and_load("server", command, env, args)
    child = subprocess.run([sys.executable, __file__, "--engine-only", "--model", args.model,
                            "--tools", ",".join(map(str, args.tools)),
                            "--concurrency", ",".join(map(str, args.concurrency)),
                            "--requests", str(args.requests), "--max-tokens", str(args.max_tokens)],
                           env=env, capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"the engine run failed:\n{child.stderr[-3000:]}")
    engine = json.loads(child.stdout.strip().splitlines()[-1])
    print("\nserver through HTTP / engine alone (same prompts, sampling and concurrency):")
    for mine, raw in zip(served, engine):
        print(f"  tools={mine['tools']:<3} c={mine['concurrency']:<3} server {mine['output_tok_s']:7.1f} tok/s   "
              f"engine {raw['output_tok_s']:7.1f} tok/s   ratio {mine['output_tok_s'] / raw['output_tok_s']:.2f}   "
              f"tokens/req {mine['mean_tokens']:.0f} / {raw['mean_tokens']:.0f}")


if __name__ == "__main__":
    main()
