"""The code interpreter: `python` calls run in a sandboxed, stateful Jupyter kernel.

    python examples/code_interpreter.py [--base-url URL] [--stream] [--question "..."]

The sandbox's working folder is what the model knows as /mnt/data; `sales.csv` is put there first.
At start the sandbox logs what it enforces (network, filesystem, memory, CPU, processes).
"""
from __future__ import annotations

import asyncio
import logging

from _common import connect, converse, parser

from functionary.client import ChatRunner
from functionary.sandbox import Sandbox

SALES = "month,units\nJan,120\nFeb,135\nMar,160\nApr,150\n"
QUESTION = "Using Python, read /mnt/data/sales.csv and tell me the average number of units sold per month."


# Per answer: a small model may write code until the context is full, and every round sends it back.
MAX_TOKENS = 256


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per execution (default: %(default)s)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    client, model = await connect(args)
    async with Sandbox(timeout=args.timeout) as sandbox:
        (sandbox.working_dir / "sales.csv").write_text(SALES)
        runner = ChatRunner(client, model=model, code_interpreter=sandbox, max_rounds=5, temperature=0.0,
                            max_tokens=MAX_TOKENS)
        await converse(runner, args.question, args.stream, lambda c: f"{c.name}:\n{c.arguments}", lambda r: r.content)
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
