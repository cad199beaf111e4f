"""`functionary eval`: measure function-calling accuracy of any OpenAI-compatible endpoint.

Beside the serving stack, not in it: it talks HTTP only and imports no engine. The BFCL data
comes from the installed `bfcl-eval` package (the `eval` extra; installed with `--no-deps`).
"""
