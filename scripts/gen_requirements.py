#!/usr/bin/env python3
"""Write requirements.txt from pyproject.toml: what a GPU server needs next to this checkout.

    python scripts/gen_requirements.py           # rewrite requirements.txt
    python scripts/gen_requirements.py --check   # exit 1 if requirements.txt is out of date

requirements.txt is for `pip install -r requirements.txt` users (the original project's set-up):
the package's own dependencies, its `server` extra and its `vllm` extra (the regular CUDA build
of vLLM, pinned to the tested range), without the self-references such as `functionary[server]`.
pyproject.toml stays the one place that declares them.
"""
from __future__ import annotations

import argparse
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
REQUIREMENTS = ROOT / "requirements.txt"
EXTRAS = ("server", "vllm")

HEADER = """\
# Generated from pyproject.toml by scripts/gen_requirements.py: do not edit by hand.
# A GPU server from this checkout:
#   pip install -r requirements.txt && python server_vllm.py --model meetkai/functionary-small-v3.2
# Machines without a GPU: ./scripts/serve.sh (vLLM's CPU build; see README.md).
"""


def _name(requirement: str) -> str:
    return re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """The requirement lines, in pyproject's order, each package once."""
    project = tomllib.loads(pyproject.read_text())["project"]
    own = project["name"].lower()
    lines = list(project.get("dependencies", []))
    extras = project.get("optional-dependencies", {})
    for extra in EXTRAS:
        lines += extras[extra]
    out: list[str] = []
    seen: set[str] = set()
    for line in lines:
        name = _name(line)
        if name == own or name in seen:
            continue
        seen.add(name)
        out.append(line)
    return out


def render(pyproject: Path = PYPROJECT) -> str:
    return HEADER + "".join(f"{line}\n" for line in requirements(pyproject))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if requirements.txt is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = REQUIREMENTS.read_text() if REQUIREMENTS.exists() else ""
        if current != text:
            print("requirements.txt is out of date: run python scripts/gen_requirements.py", file=sys.stderr)
            return 1
        return 0
    REQUIREMENTS.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
