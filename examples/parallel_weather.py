"""Parallel calls: the model asks for several cities at once; the calls run concurrently.

    python examples/parallel_weather.py [--base-url URL] [--stream]
"""
from __future__ import annotations

import asyncio
import time
from typing import Literal

from _common import connect, converse, parser

from functionary.client import ChatRunner, Toolbox

toolbox = Toolbox()
FAKE_WEATHER = {"paris": (18, "cloudy"), "tokyo": (24, "sunny"), "new york": (12, "rain")}


@toolbox.register
async def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> dict:
    """Get the current weather in a city.

    Args:
        city: The city, e.g. "Paris".
        unit: The temperature unit.
    """
    await asyncio.sleep(1.0)  # a slow weather service
    celsius, sky = FAKE_WEATHER.get(city.strip().lower(), (20, "clear"))
    temperature = celsius if unit == "celsius" else round(celsius * 9 / 5 + 32)
    return {"city": city, "temperature": temperature, "unit": unit, "sky": sky}


QUESTION = "What is the weather like in Paris, Tokyo and New York right now?"


async def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    client, model = await connect(args)
    runner = ChatRunner(client, model=model, tools=toolbox, max_rounds=4, temperature=0.0)
    started = time.perf_counter()
    await converse(runner, QUESTION, args.stream,
                   lambda c: f"[{c.tool_call_id}] {c.name}({c.arguments})",
                   lambda r: f"[{r.tool_call_id}] {r.content} ({r.seconds:.1f} s)")
    print(f"total {time.perf_counter() - started:.1f} s (each call sleeps 1 s; parallel calls overlap)")
    await client.close()


if __name__ == "__main__":
    asyncio.run(main())
