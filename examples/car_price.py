"""Call a real Python function: the model asks for a car's price, `get_car_price` answers.

    python server_vllm.py &                      # the default model on http://127.0.0.1:8000/v1
    python examples/car_price.py [--base-url URL] [--stream] [--force]
"""
from __future__ import annotations

import asyncio

from _common import connect, converse, parser

from functionary.client import ChatRunner, tool

PRICES = {"tang": 20000, "song": 25000}


@tool
def get_car_price(car_name: str) -> dict:
    """Get the price of a car given its name.

    Args:
        car_name: The name of the car (for example "Tang" or "Song").
    """
    price = PRICES.get(car_name.strip().lower())
    if price is None:
        raise ValueError(f"no car named {car_name!r}; known cars: {', '.join(sorted(PRICES))}")
    return {"car_name": car_name, "price": f"${price}"}


QUESTION = "What is the price of the car named Tang?"


async def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--force", action="store_true",
                   help='force the call with tool_choice={"type": "function", "function": {"name": "get_car_price"}}')
    args = p.parse_args()
    client, model = await connect(args)
    choice = {"type": "function", "function": {"name": "get_car_price"}} if args.force else None
    runner = ChatRunner(client, model=model, tools=[get_car_price], tool_choice=choice, max_rounds=4,
                        temperature=0.0)
    done = await converse(runner, QUESTION, args.stream, lambda c: f"{c.name}({c.arguments})", lambda r: r.content)
    if done is not None:
        print(f"({done.rounds} requests, stop: {done.stop_reason})")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
