"""Shared by the examples: the command line (where the server is, which model) and printing a
conversation run by `ChatRunner`, streamed or not."""
from __future__ import annotations

import argparse
import os
from typing import Any, Callable, Optional

from openai import AsyncOpenAI

from functionary.client import TextDelta, ToolCallDone, ToolCallStarted


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", "http://127.0.0.1:8000/v1"),
                   help="OpenAI-compatible endpoint (default: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", "functionary"),
                   help="API key, if the server wants one (default: $OPENAI_API_KEY)")
    p.add_argument("--model", default=None, help="model name (default: the server's first model)")
    p.add_argument("--stream", action="store_true", help="stream the answer")
    return p


async def connect(args: argparse.Namespace) -> tuple[AsyncOpenAI, str]:
    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key)
    model: Optional[str] = args.model
    if model is None:
        models = await client.models.list()
        model = models.data[0].id
    return client, model


async def converse(runner: Any, question: str, stream: bool, call: Callable[[Any], str],
                   result: Callable[[Any], str]) -> Any:
    """Ask `question`, print the calls (`call(started event)`), their results (`result(tool
    result)`) and the answer; returns the run's result (None when streamed)."""
    messages = [{"role": "user", "content": question}]
    print(f"user: {question}")
    if stream:
        async for event in runner.stream(messages):
            if isinstance(event, TextDelta):
                print(event.text, end="", flush=True)
            elif isinstance(event, ToolCallStarted):
                print(f"\n-> {call(event)}")
            elif isinstance(event, ToolCallDone):
                print(f"<- {result(event.result)}")
        print()
        return None
    done = await runner.run(messages)
    for r in done.tool_results:
        print(f"-> {call(r)}\n<- {result(r)}")
    print(f"assistant: {done.content}")
    return done
