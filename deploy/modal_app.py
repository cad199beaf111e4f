"""The server on Modal: one GPU, vLLM's CUDA image, model weights cached in a Modal volume.

    modal serve deploy/modal_app.py     # a temporary URL while this command runs
    modal deploy deploy/modal_app.py    # a lasting deployment

Then point the `openai` client at ``https://<your-workspace>--functionary-serve.modal.run/v1``.
Set ``FUNCTIONARY_MODEL`` / ``FUNCTIONARY_GPU`` / ``FUNCTIONARY_API_KEY`` in your shell before
deploying to change the model, the GPU or to require a key (read at deploy time).
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import modal

ROOT = Path(__file__).resolve().parents[1]
MODEL = os.environ.get("FUNCTIONARY_MODEL", "meetkai/functionary-small-v3.2")
GPU = os.environ.get("FUNCTIONARY_GPU", "L40S")
API_KEY = os.environ.get("FUNCTIONARY_API_KEY", "")
PORT = 8000
# The release the test suite runs, inside pyproject.toml's `vllm` range (tests/unit/test_versions.py).
VLLM_IMAGE = "vllm/vllm-openai:v0.32.0"

image = (
    modal.Image.from_registry(VLLM_IMAGE)
    .entrypoint([])  # the image starts `vllm serve`; Modal runs our function instead
    .add_local_dir(ROOT, "/app", copy=True,
                   ignore=[".venv", ".git", "**/__pycache__", "*.egg-info", ".pytest_cache", ".hypothesis"])
    # vLLM and torch come with the image: add only functionary's server dependencies.
    .run_commands("python3 -m pip install --no-cache-dir -e '/app[server]'")
    .env({"HF_HUB_ENABLE_HF_TRANSFER": "1"})
)
weights = modal.Volume.from_name("functionary-hf-cache", create_if_missing=True)
app = modal.App("functionary")


@app.function(image=image, gpu=GPU, timeout=24 * 3600, scaledown_window=300,
              volumes={"/root/.cache/huggingface": weights})
@modal.concurrent(max_inputs=64)
@modal.web_server(port=PORT, startup_timeout=900)
def serve() -> None:
    """Start server_vllm.py in the container; Modal routes HTTPS traffic to its port."""
    command = ["python3", "/app/server_vllm.py", "--host", "0.0.0.0", "--port", str(PORT), "--model", MODEL]
    if API_KEY:
        command += ["--api-key", API_KEY]
    subprocess.Popen(command, cwd="/app")
