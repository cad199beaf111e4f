"""Per-step cost of the grammar logits processor on the real vLLM engine (CPU, default model).

One engine with the processor loaded; for each batch size the same prompts are generated
without the constraint key (the processor is loaded but idle) and with it, interleaved
(the load of a shared machine drifts), and the script prints decode time per step, their
ratio, and the time spent inside the processor (`update_state` + `apply`) per step and per
active row (a row whose turn has not ended; after its end a row is no longer constrained).
`--baseline` also times an engine without the processor (cost of merely loading it).
Generation lengths are fixed (`ignore_eos`, no stop strings) so that every run decodes the
same number of steps; prompts mix the formats and tool_choice auto / required / named.

    python benchmarks/grammar_processor.py [--batch 1 8 16] [--max-tokens 128] [--baseline]
"""
from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {
        "type": "object", "required": ["city"],
        "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                       "days": {"type": "integer"}}}}},
    {"type": "function", "function": {"name": "book_table", "description": "Book a table", "parameters": {
        "type": "object", "required": ["people", "time"],
        "properties": {"people": {"type": "integer"}, "time": {"type": "string"},
                       "notes": {"type": "array", "items": {"type": "string"}, "maxItems": 3}}}}},
]
QUESTIONS = ["What is the weather in Paris?", "Book a table for two at 7pm.", "Hi! Who are you?"]


class Timer:
    """Wraps the processor's methods to add up the time spent in them."""

    def __init__(self) -> None:
        from functionary.grammar.vllm_processor import FunctionaryLogitsProcessor as P

        self.total = 0.0
        self.calls = 0
        self.rows = 0
        self._orig = (P.apply, P.update_state)
        timer = self

        def apply(proc, logits):
            t = time.perf_counter()
            out = timer._orig[0](proc, logits)
            timer.total += time.perf_counter() - t
            timer.calls += 1
            timer.rows += sum(1 for r in proc._reqs.values() if not r.cursor.done)
            return out

        def update_state(proc, batch_update):
            t = time.perf_counter()
            timer._orig[1](proc, batch_update)
            timer.total += time.perf_counter() - t

        P.apply, P.update_state = apply, update_state

    def reset(self) -> None:
        self.total, self.calls, self.rows = 0.0, 0, 0

    def close(self) -> None:
        from functionary.grammar.vllm_processor import FunctionaryLogitsProcessor as P

        P.apply, P.update_state = self._orig


def requests(batch: int, versions: list[str], constrained: bool, max_tokens: int):
    from vllm import SamplingParams

    from functionary.grammar import CONSTRAINT_KEY, constraint_for_prompt
    from functionary.prompt_template import build_inference_prompt, get_prompt_template_by_version

    prompts, params = [], []
    for i in range(batch):
        version = versions[i % len(versions)]
        choice = ["auto", "required", {"type": "function", "function": {"name": "book_table"}}][i % 3]
        template = get_prompt_template_by_version(version)
        messages = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
        if version == "v1":
            built = build_inference_prompt(template, messages, functions=[t["function"] for t in TOOLS],
                                           function_call="auto" if choice == "required" else choice)
        else:
            built = build_inference_prompt(template, messages, tools=TOOLS, tool_choice=choice)
        extra = {CONSTRAINT_KEY: constraint_for_prompt(version, built)} if constrained else None
        prompts.append(built.prompt)
        params.append(SamplingParams(temperature=0.8, max_tokens=max_tokens, min_tokens=max_tokens, ignore_eos=True,
                                     skip_special_tokens=False, extra_args=extra))
    return prompts, params


def timed(llm, prompts, params) -> tuple[float, int]:
    t = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return time.perf_counter() - t, max(len(o.outputs[0].token_ids) for o in outs)


def make_llm(with_processor: bool):
    from vllm import LLM

    from functionary.backends.default_model import ensure_default_model
    from functionary.grammar import VLLM_LOGITS_PROCESSOR

    return LLM(model=str(ensure_default_model()), enforce_eager=True, dtype="bfloat16", max_model_len=2048,
               kv_cache_memory_bytes=512 * 2**20, seed=0,
               logits_processors=[VLLM_LOGITS_PROCESSOR] if with_processor else None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--versions", nargs="+", default=["v3.llama3", "v3-llama3.1", "v2", "v2.llama3", "v1"])
    ap.add_argument("--baseline", action="store_true", help="also time an engine without the processor")
    args = ap.parse_args()

    base: dict = {}
    if args.baseline:
        llm = make_llm(False)
        for b in args.batch:
            prompts, params = requests(b, args.versions, False, args.max_tokens)
            timed(llm, prompts[:1], params[:1])
            runs = [timed(llm, prompts, params) for _ in range(args.repeats)]
            base[b] = statistics.median(t / n for t, n in runs)
        del llm
        gc.collect()

    llm = make_llm(True)
    timer = Timer()
    rows = []
    for b in args.batch:
        free = requests(b, args.versions, False, args.max_tokens)
        constrained = requests(b, args.versions, True, args.max_tokens)
        timed(llm, *free)
        timed(llm, *constrained)  # warm: tokenizer index, grammars, masks of these tools
        t_free, t_con, proc, active = [], [], [], []
        for _ in range(args.repeats):  # interleaved: the machine's load drifts
            t, n = timed(llm, *free)
            t_free.append(t / n)
            timer.reset()
            t, n = timed(llm, *constrained)
            t_con.append(t / n)
            proc.append(timer.total / max(timer.calls, 1))
            active.append(timer.rows / max(timer.calls, 1))
        rows.append((b, statistics.median(t_free), statistics.median(t_con), statistics.median(proc),
                     statistics.median(active)))
    timer.close()

    print(f"\nmax_tokens={args.max_tokens}, versions={args.versions}, median of {args.repeats} interleaved runs")
    print(f"{'batch':>5} {'no constraint ms/step':>22} {'constrained ms/step':>20} {'ratio':>6} "
          f"{'processor ms/step':>18} {'active rows':>12} {'ms/active row':>14}"
          + (f" {'no processor ms/step':>21}" if base else ""))
    for b, free_s, con_s, proc_s, act in rows:
        line = (f"{b:>5} {1e3 * free_s:>22.2f} {1e3 * con_s:>20.2f} {con_s / free_s:>6.3f} {1e3 * proc_s:>18.2f} "
                f"{act:>12.1f} {1e3 * proc_s / max(act, 1e-9):>14.2f}")
        if base:
            line += f" {1e3 * base[b]:>21.2f}"
        print(line)


if __name__ == "__main__":
    main()
