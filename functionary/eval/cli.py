"""`functionary eval bfcl`: the command line of the harness.

Bad arguments and unknown categories: one line on stderr, exit code 2. An endpoint that cannot be
reached before the run starts: one line, exit code 1. A request that fails during the run counts
as an error for its item; the run goes on. Ctrl-C or SIGTERM: the table and files for the items
done so far, exit code 130.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
from typing import TextIO

from .data import CATEGORIES, DataError, parse_categories

DEFAULT_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,irrelevance"


class _EndpointAction(argparse.Action):
    """`--base-url` starts an endpoint; `--model` names the model of the one before it."""

    def __call__(self, parser, namespace, values, option_string=None):
        endpoints = getattr(namespace, "endpoints", None) or []
        if self.dest == "base_url":
            endpoints.append([values, None])
        elif not endpoints:
            parser.error("--model must follow the --base-url it belongs to")
        elif endpoints[-1][1] is not None:
            parser.error(f"two --model values for {endpoints[-1][0]}")
        else:
            endpoints[-1][1] = values
        namespace.endpoints = endpoints


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _temperature(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 2:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2: {text}")
    return value


def add_arguments(eval_parser: argparse.ArgumentParser) -> None:
    benches = eval_parser.add_subparsers(dest="benchmark", required=True)
    bfcl = benches.add_parser(
        "bfcl", help="BFCL accuracy of one or more OpenAI-compatible endpoints, side by side",
        description="Score answers to the Berkeley Function Calling Leaderboard's questions (data from "
                    "the installed bfcl-eval package) with BFCL's checker rules, for each --base-url, "
                    "items alternating between them.")
    bfcl.add_argument("--base-url", dest="base_url", action=_EndpointAction, required=True, metavar="URL",
                      help="an OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1 (repeat to compare)")
    bfcl.add_argument("--model", dest="model", action=_EndpointAction, metavar="NAME",
                      help="the model at the --base-url before it (default: the first one it lists)")
    bfcl.add_argument("--categories", default=DEFAULT_CATEGORIES,
                      help=f"comma-separated (default {DEFAULT_CATEGORIES}); known: {', '.join(CATEGORIES)}")
    bfcl.add_argument("--limit", type=_positive_int, default=None,
                      help="the first N items of each category (default: all)")
    bfcl.add_argument("--tool-choice", choices=("auto", "required", "none"), default="auto")
    bfcl.add_argument("--temperature", type=_temperature, default=0.0)
    bfcl.add_argument("--max-tokens", type=int, default=256,
                      help="max_tokens of every request (default 256; 0 sends none)")
    bfcl.add_argument("--concurrency", type=_positive_int, default=4,
                      help="requests in flight at once, over all endpoints (default 4)")
    bfcl.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                      help="bearer token for every endpoint (default: $OPENAI_API_KEY)")
    bfcl.add_argument("--timeout", type=float, default=600.0, help="seconds per request (default 600)")
    bfcl.add_argument("--json", dest="json_path", metavar="OUT.json", help="write results and items here")
    bfcl.add_argument("--markdown", dest="markdown_path", metavar="OUT.md", help="write the table here")
    bfcl.add_argument("--no-progress", action="store_true", help="no progress bar")


async def _evaluate(args: argparse.Namespace, entries: list, finished_items: list, stderr: TextIO) -> list:
    import httpx
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from .client import Endpoint
    from .harness import Settings, run

    settings = Settings(tool_choice=args.tool_choice, temperature=args.temperature,
                        max_tokens=args.max_tokens or None, concurrency=args.concurrency)
    limits = httpx.Limits(max_connections=args.concurrency + 4, max_keepalive_connections=args.concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout, connect=10.0), limits=limits) as http:
        endpoints = [Endpoint(url, model, args.api_key, http) for url, model in args.endpoints]
        for endpoint in endpoints:  # fails early, in one line, for an endpoint that is not there
            model = await endpoint.first_model()
            endpoint.model = endpoint.model or model
        progress = Progress(TextColumn("bfcl"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            TextColumn("{task.fields[status]}"), console=Console(file=stderr),
                            disable=args.no_progress)
        total = len(entries) * len(endpoints)
        with progress:
            task = progress.add_task("bfcl", total=total, status="")
            done = {"items": 0, "correct": 0, "errors": 0}
            plain = not args.no_progress and not progress.console.is_terminal  # a log file: a line per 5 %

            def on_item(item) -> None:
                finished_items.append(item)
                done["items"] += 1
                done["correct"] += item.correct
                done["errors"] += item.error is not None
                finished = done["items"]
                status = f"correct {done['correct']}, errors {done['errors']}"
                progress.update(task, advance=1, status=status)
                if plain and (finished == total or finished % max(1, total // 20) == 0):
                    stderr.write(f"bfcl: {finished}/{total} done ({status})\n")
                    stderr.flush()

            return await run(endpoints, entries, settings, on_item)


def run_bfcl(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from .client import EndpointError
    from .data import load_category
    from .report import markdown, print_table, summarize, write_json

    try:
        categories = parse_categories(args.categories)
        entries = []
        for category in categories:
            entries.extend(load_category(category)[: args.limit])
    except DataError as exc:
        stderr.write(f"error: {exc}\n")
        return 2 if "unknown category" in str(exc) or "no category" in str(exc) else 1
    if args.max_tokens < 0:
        stderr.write("error: --max-tokens must be 0 (none) or more\n")
        return 2
    finished: list = []
    interrupted = False
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` reports what is done, too
    try:
        items = asyncio.run(_evaluate(args, entries, finished, stderr))
    except EndpointError as exc:
        stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        interrupted, items = True, finished
        stderr.write(f"interrupted: reporting the {len(items)} of {len(entries) * len(args.endpoints)} items done\n")
        if not items:
            return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    rows = summarize(items)
    from rich.console import Console

    print_table(rows, Console(file=stdout, width=max(160, Console(file=stdout).width)))
    if args.json_path:
        write_json(args.json_path, rows, items)
    if args.markdown_path:
        with open(args.markdown_path, "w", encoding="utf-8") as f:
            f.write(markdown(rows))
    return 130 if interrupted else 0


def main(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """`args` parsed by `functionary.__main__` (the `eval` subcommand)."""
    return run_bfcl(args, stdout, stderr)  # `bfcl` is the only benchmark argparse accepts

