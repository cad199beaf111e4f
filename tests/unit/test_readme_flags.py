"""Every flag the README names is one its program accepts, so README and code cannot drift.

Each README section is read for the `--flags` it mentions; each must be accepted by the parser
of a program that section documents (`server_vllm.py`, `server_tgi.py`, `server_llama_cpp.py`,
`python -m functionary ...`), or be a flag of another program the section shows (pip, docker,
vLLM's own server), listed in FOREIGN with where it belongs. What each accepted flag then does
is tested in tests/unit/test_entry_point_flags.py (the flag reaches the settings, engine
arguments or options) and by the behaviour tests those name.
"""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
FLAG = re.compile(r"(?<![\w-])(--[a-zA-Z][\w-]*)")

# Flags of other programs the README shows, and which program.
FOREIGN = {
    "--extra-index-url": "pip",
    "--no-deps": "pip",
    "--build-arg": "docker build",
    "--gpus": "docker run",
    "--rm": "docker run",
    "--chat-template": "vllm serve (vLLM's own server with our Jinja templates)",
    "--enable-auto-tool-choice": "vllm serve (the stock server eval_compare.py measures)",
    "--tool-call-parser": "vllm serve (the stock server eval_compare.py measures)",
    "--tool-strict-level": "vllm serve (the stock server eval_compare.py measures)",
    "--help": "argparse, every program",
}
# The programs each section documents (a section not listed must name no flag).
SECTIONS = {
    "Quick start": ("vllm",),
    "Raw HTTP": ("vllm",),
    "Flags": ("vllm",),
    "TGI": ("tgi",),
    "Deployment": ("vllm",),
    "Grammar sampling": ("vllm", "llama_cpp", "tgi"),
    "Evaluation": ("cli", "vllm"),
    "llama.cpp": ("llama_cpp",),
    "Prompt templates": ("cli", "vllm"),
    "Which format each model gets": ("cli", "vllm"),
}


def sections() -> dict[str, str]:
    parts = re.split(r"^## (.*)$", README, flags=re.M)
    return {parts[i].strip(): parts[i + 1] for i in range(1, len(parts), 2)}


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """Every option string of `parser` and of its sub-commands, recursively."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(action.option_strings)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found |= option_strings(sub)
    return found


@pytest.fixture(scope="module")
def accepted() -> dict[str, set[str]]:
    pytest.importorskip("vllm")
    import server_llama_cpp
    import server_tgi
    import server_vllm
    from functionary.__main__ import _parser as cli_parser

    return {
        "vllm": option_strings(server_vllm.build_parser()),
        "tgi": option_strings(server_tgi.build_parser()),
        "llama_cpp": option_strings(server_llama_cpp.build_parser()),
        "cli": option_strings(cli_parser()),
    }


def test_every_flag_in_the_readme_is_accepted_by_a_program_its_section_documents(accepted):
    unknown = []
    for title, text in sections().items():
        for flag in sorted(set(FLAG.findall(text)) - set(FOREIGN)):
            programs = SECTIONS.get(title, ())
            if not any(flag in accepted[p] for p in programs):
                unknown.append(f"## {title}: {flag} (documented for {', '.join(programs) or 'nothing'})")
    assert unknown == []


def test_the_flags_table_is_server_vllms_and_its_shared_flags_work_on_every_entry_point(accepted):
    from functionary.api.server_flags import add_server_args

    table = [line for line in sections()["Flags"].splitlines() if line.startswith("| `--")]
    flags = {flag for line in table for flag in FLAG.findall(line.split(" | ")[0])}
    assert len(flags) >= 20  # the table was read (24 flags today)
    assert sorted(flags - accepted["vllm"]) == []
    shared = option_strings(add_server_args(argparse.ArgumentParser())) - {"-h", "--help"}
    # The README: on llama.cpp "every server flag above ... works the same"; on TGI the shared server
    # flags "work as for server_vllm.py" (--grammar-backend is accepted there, and refused).
    for program in ("llama_cpp", "tgi"):
        assert sorted((flags & shared) - accepted[program]) == [], program


def test_the_foreign_flags_are_still_in_the_readme_and_none_is_ours():
    # An entry that no longer applies must go, and a flag of ours must never be excused here.
    import server_vllm

    ours = option_strings(server_vllm.build_parser()) - {"--help"}
    assert sorted(flag for flag in FOREIGN if flag not in README) == []
    assert sorted(set(FOREIGN) & ours) == []
