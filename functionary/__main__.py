"""Command line: `python -m functionary render|parse --template-version V`, `... eval bfcl ...`.

`render` reads an OpenAI chat-completions request (JSON) on stdin and writes exactly the prompt
the server sends to the engine (no BOS, no trailing newline). `parse` reads raw model output and
writes the assistant message it parses to. `eval bfcl` measures the function-calling accuracy
of OpenAI-compatible endpoints (functionary.eval). Bad input: one line on stderr, exit code 2.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence, TextIO

from .eval.cli import add_arguments as add_eval_arguments
from .prompt_template import VERSIONS, PromptError, build_inference_prompt, get_prompt_template_by_version


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, as for bad input
        raise _UsageError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m functionary", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    render = commands.add_parser("render", help="chat request (JSON, stdin) -> inference prompt (stdout)")
    render.add_argument("--template-version", required=True, choices=VERSIONS)
    parse = commands.add_parser("parse", help="raw model output (stdin) -> assistant message (JSON)")
    parse.add_argument("--template-version", required=True, choices=VERSIONS)
    parse.add_argument("--tool-choice", default=None,
                       help='"auto", "none", "required", or a function name')
    add_eval_arguments(commands.add_parser("eval", help="measure the accuracy of OpenAI-compatible endpoints"))
    return parser


def render_request(request: object, version: str) -> str:
    """The inference prompt for a chat request (a decoded JSON object)."""
    if not isinstance(request, dict):
        raise PromptError("The request must be a JSON object.")
    if "messages" not in request:
        raise PromptError("`messages` is required.", "messages")
    if not isinstance(request["messages"], list):
        raise PromptError("`messages` must be a list.", "messages")
    template = get_prompt_template_by_version(version)
    return build_inference_prompt(
        template,
        request["messages"],
        tools=request.get("tools"),
        functions=request.get("functions"),
        tool_choice=request.get("tool_choice"),
        function_call=request.get("function_call"),
    ).prompt


def main(argv: Optional[Sequence[str]] = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout,
         stderr: TextIO = sys.stderr) -> int:
    try:
        args = _parser().parse_args(argv)
        if args.command == "eval":
            from .eval.cli import main as eval_main

            return eval_main(args, stdout, stderr)
        text = stdin.read()
        if args.command == "render":
            try:
                request = json.loads(text)
            except json.JSONDecodeError as exc:
                raise PromptError(f"stdin is not valid JSON: {exc}") from None
            stdout.write(render_request(request, args.template_version))
        else:
            choice = args.tool_choice
            if choice not in (None, "auto", "none", "required"):
                choice = {"type": "function", "function": {"name": choice}}
            message = get_prompt_template_by_version(args.template_version).parse_assistant_response(text, choice)
            stdout.write(json.dumps(message, ensure_ascii=False) + "\n")
        stdout.flush()
        return 0
    except (PromptError, _UsageError) as exc:
        stderr.write(f"error: {' '.join(str(exc).split())}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
