"""Shared command line for the examples: where the server is and which model to ask."""
from __future__ import annotations

import argparse
import os
from typing import Optional

from openai import AsyncOpenAI


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
