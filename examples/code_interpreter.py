"""The code interpreter: `python` calls run in a sandboxed, stateful Jupyter kernel.

    python examples/code_interpreter.py [--base-url URL] [--stream] [--question "..."]

The sandbox's working folder is what the model knows as /mnt/data; `sales.csv` is put there first.
At start the sandbox logs what it enforces (network, filesystem, memory, CPU, processes).
"""
from __future__ import annotations

import asyncio
import logging

from _common import connect, parser

from functionary.client import ChatRunner, TextDelta, ToolCallDone, ToolCallStarted
from functionary.sandbox import Sandbox

SALES = "month,units\nJan,120\nFeb,135\nMar,160\nApr,150\n"
QUESTION = "Using Python, read /mnt/data/sales.csv and tell me the average number of units sold per month."


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per execution (default: %(default)s)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    client, model = await connect(args)
    async with Sandbox(timeout=args.timeout) as sandbox:
        (sandbox.working_dir / "sales.csv").write_text(SALES)
        runner = ChatRunner(client, model=model, code_interpreter=sandbox, max_rounds=5, temperature=0.0)
        messages = [{"role": "user", "content": args.question}]
        print(f"user: {args.question}")
        if args.stream:
            async for event in runner.stream(messages):
                if isinstance(event, TextDelta):
                    print(event.text, end="", flush=True)
                elif isinstance(event, ToolCallStarted):
                    print(f"\n-> {event.name}:\n{event.arguments}")
                elif isinstance(event, ToolCallDone):
                    print(f"<- {event.result.content}")
            print()
        else:
            result = await runner.run(messages)
            for r in result.tool_results:
                print(f"-> {r.name}:\n{r.arguments}\n<- {r.content}")
            print(f"assistant: {result.content}")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
