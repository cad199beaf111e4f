"""BFCL accuracy of the default model through our server and through vLLM's own OpenAI server,
side by side in one run (`functionary eval bfcl` with two --base-url), then both servers stop.

    .venv/bin/python benchmarks/eval_compare.py                      # full categories, auto + required
    .venv/bin/python benchmarks/eval_compare.py --limit 20 --tool-choice required

Both servers serve the converted default model with the same engine settings (ours as it ships,
with no flags; the stock server with ours' CPU defaults given explicitly). The stock
server runs with its best tool-calling setup for this model: `--enable-auto-tool-choice
--tool-call-parser hermes`, a ChatML tools chat template (Qwen 2.5's layout: tools as JSON in
`<tools>`, calls as `<tool_call>{"name": ..., "arguments": ...}</tool_call>`, results in
`<tool_response>`; SmolLM2's own template drops the tools) and `--tool-strict-level parameter`
(argument schemas enforced as if every tool were `strict`; without it the 135M model's arguments
do not follow the schema). Ours runs as it ships (`server_vllm.py`, its default template for this
model). Results: `--out-dir` (eval_<tool_choice>.json / .md), and the tables on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]

# A ChatML tools template (the layout of Qwen 2.5's chat template, which vLLM's hermes parser
# reads), with SmolLM2's own default system prompt. No BOS: SmolLM2's tokenizer adds none.
CHATML_TOOLS_TEMPLATE = r"""
{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] %}{%- set rest = messages[1:] %}
{%- else %}{%- set system = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face' %}{%- set rest = messages %}{%- endif %}
{{- '<|im_start|>system\n' + system }}
{%- if tools %}
{{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
{%- for tool in tools %}{{- "\n" + (tool | tojson) }}{%- endfor %}
{{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>" }}
{%- endif %}
{{- '<|im_end|>\n' }}
{%- for message in rest %}
{%- if message.role == 'user' or message.role == 'system' or (message.role == 'assistant' and not message.tool_calls) %}
{{- '<|im_start|>' + message.role + '\n' + (message.content or '') + '<|im_end|>\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant' }}
{%- if message.content %}{{- '\n' + message.content }}{%- endif %}
{%- for tool_call in message.tool_calls %}
{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}
{{- '\n<tool_call>\n{"name": "' + tool_call.name + '", "arguments": ' }}
{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or rest[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}
{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}
{%- if loop.last or rest[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
""".strip() + "\n"


sys.path.insert(0, str(ROOT))  # run as a script: the repository root is not on sys.path
from benchmarks.server_process import stop, wait_healthy  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--categories", default="simple_python,multiple,parallel,irrelevance")
    parser.add_argument("--limit", type=int, default=None, help="first N items per category (default: all)")
    parser.add_argument("--tool-choice", action="append", choices=("auto", "required", "none"),
                        help="repeatable (default: auto and required)")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=200)
    parser.add_argument("--ours-port", type=int, default=8011)
    parser.add_argument("--stock-port", type=int, default=8010)
    parser.add_argument("--model", default=None, help="model folder (default: the converted default model)")
    parser.add_argument("--ours", action="append", metavar="LABEL=FLAGS",
                        help="one of our servers, with extra server_vllm.py flags, e.g. "
                             "'hermes=--prompt-template-version hermes'; repeatable (default: 'ours=', as it ships)")
    parser.add_argument("--ours-tree", action="append", default=[], metavar="LABEL=DIR",
                        help="run that --ours server from another checkout (e.g. a `git archive` of another commit)")
    parser.add_argument("--sequential", action="store_true",
                        help="one server at a time, reports merged (much faster on few cores; accuracy at "
                             "temperature 0 does not depend on what runs beside)")
    parser.add_argument("--out-dir", default="eval-results")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on `kill` too (finally below)

    sys.path.insert(0, str(ROOT))
    from functionary.backends.default_model import DEFAULT_MODEL_NAME, ensure_default_model

    model_dir = args.model or str(ensure_default_model())
    # Our server's CPU defaults for the default model, given to the stock server explicitly.
    engine = ["--model", model_dir, "--served-model-name", DEFAULT_MODEL_NAME, "--dtype", "bfloat16",
              "--enforce-eager", "--max-model-len", "8192", "--block-size", "32"]
    trees = dict(item.split("=", 1) for item in args.ours_tree)
    ours: dict[str, tuple[list[str], Path]] = {}
    for item in args.ours or ["ours="]:
        label, _, flags = item.partition("=")
        tree = Path(trees.get(label, ROOT)).resolve()
        ours[label] = ([sys.executable, str(tree / "server_vllm.py"), *(["--model", args.model] if args.model else []),
                        *shlex.split(flags)], tree)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        template = Path(tmp) / "chatml_tools.jinja"
        template.write_text(CHATML_TOOLS_TEMPLATE)
        # label -> (command, port, working directory); ours as given (by default as it ships).
        servers = {label: (command, args.ours_port + i, tree) for i, (label, (command, tree)) in enumerate(ours.items())}
        if args.stock_port in [port for _, port, _ in servers.values()]:
            parser.error(f"--stock-port {args.stock_port} is taken by one of ours (ports from --ours-port {args.ours_port})")
        servers["vllm-stock"] = ([sys.executable, "-m", "vllm.entrypoints.openai.api_server", *engine,
                                  "--enable-auto-tool-choice", "--tool-call-parser", "hermes",
                                  "--chat-template", str(template), "--tool-strict-level", "parameter"],
                                 args.stock_port, ROOT)
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
               "TMPDIR": tmp, "VLLM_RPC_BASE_PATH": tmp}
        # Side by side, or one server at a time (each engine then runs the whole load in one
        # batch: on 2 cores several engines of small batches each cost several times the CPU).
        groups = [[name] for name in servers] if args.sequential else [list(servers)]
        started = time.perf_counter()
        for g, group in enumerate(groups):
            part = "" if len(groups) == 1 else f".{g}"
            if run_group({name: servers[name] for name in group}, args, env, Path(tmp), out_dir, part):
                return 1
        labels = "; ".join(f"{name} = port {port} ({' '.join(command[2:]) or 'as it ships'}, {cwd})"
                           for name, (command, port, cwd) in servers.items())
        for choice in args.tool_choice or ["auto", "required"]:
            if len(groups) > 1:
                merge([out_dir / f"eval_{choice}.{g}.json" for g in range(len(groups))], out_dir / f"eval_{choice}")
            with open(out_dir / f"eval_{choice}.md", "a", encoding="utf-8") as f:
                f.write(f"\nServers (commit {commit}, {'one at a time' if args.sequential else 'side by side'}): {labels}.\n")
            print(f"\n=== tool_choice {choice} (commit {commit}; {time.perf_counter() - started:.0f} s) ===\n{labels}", flush=True)
            print((out_dir / f"eval_{choice}.md").read_text(), flush=True)
    return 0


def run_group(servers: dict, args: argparse.Namespace, env: dict, tmp: Path, out_dir: Path, part: str) -> int:
    """Start `servers`, run the harness once per tool_choice over them (the modes at the same
    time: larger batches), stop them. Returns non-zero if a harness run failed."""
    processes: list[subprocess.Popen] = []
    runs: dict = {}
    try:
        for name, (command, port, cwd) in servers.items():
            log = tmp / f"{name}.log"
            process = subprocess.Popen([*command, "--host", "127.0.0.1", "--port", str(port)], cwd=cwd, env=env,
                                       stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
            processes.append(process)
            wait_healthy(port, process, log)
            print(f"{name}: healthy on port {port}", flush=True)
        for choice in args.tool_choice or ["auto", "required"]:
            command = [sys.executable, "-m", "functionary", "eval", "bfcl",
                       *[arg for _, port, _ in servers.values() for arg in ("--base-url", f"http://127.0.0.1:{port}/v1")],
                       "--categories", args.categories, "--tool-choice", choice, "--temperature", "0",
                       "--max-tokens", str(args.max_tokens), "--concurrency", str(args.concurrency),
                       "--json", str(out_dir / f"eval_{choice}{part}.json"),
                       "--markdown", str(out_dir / f"eval_{choice}{part}.md")]
            if args.limit:
                command += ["--limit", str(args.limit)]
            output = open(out_dir / f"eval_{choice}{part}.log", "w")
            runs[choice] = (subprocess.Popen(command, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT), output)
            print(f"tool_choice {choice}: running, progress in {out_dir / f'eval_{choice}{part}.log'}", flush=True)
        failed = 0
        for process, output in runs.values():
            failed |= process.wait()
            output.close()
        return failed
    finally:
        for process, _ in runs.values():
            if process.poll() is None:
                process.terminate()
                process.wait()
        for process in processes:
            stop(process)


def merge(parts: list[Path], out: Path) -> None:
    """One report (`out`.json / .md) from runs of one server each, endpoints numbered in order."""
    from functionary.eval.harness import ItemResult
    from functionary.eval.report import markdown, summarize, write_json

    items = []
    for endpoint, path in enumerate(parts):
        for item in json.loads(path.read_text())["items"]:
            items.append(ItemResult(**{**item, "endpoint": endpoint}))
    rows = summarize(items)
    write_json(str(out.with_suffix(".json")), rows, items)
    out.with_suffix(".md").write_text(markdown(rows))


if __name__ == "__main__":
    sys.exit(main())
