"""Starting a TGI container through the Docker SDK when no endpoint answers (`server_tgi.py`).

    container = ensure_endpoint(endpoint, model, ...)   # None: the endpoint already answers
    ...
    container.stop()                                     # stop and remove it

The container runs the pinned TGI image with every GPU, the model folder (read-only) or the
save folder (TGI's download cache, `/data`) mounted, and its port 80 published on the
endpoint's loopback port. Only loopback endpoints can be started here.
"""
from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional
from urllib.parse import urlparse

from functionary.backends.tgi import endpoint_is_healthy

logger = logging.getLogger(__name__)

# The TGI release whose OpenAPI document this back end is written against (3.3.x).
TGI_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.5"
CONTAINER_PORT = 80
MODEL_MOUNT = "/model"
DATA_MOUNT = "/data"  # the image's HF_HUB_CACHE: downloads land in the save folder
DEFAULT_MAX_TOTAL_TOKENS = 4096
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


class DockerUnavailable(RuntimeError):
    """The Docker SDK is missing or cannot reach a Docker daemon."""


@dataclass(frozen=True)
class LaunchPlan:
    """Everything `containers.run` is given."""

    image: str
    command: list[str]
    ports: dict[str, tuple[str, int]]
    volumes: dict[str, dict[str, str]]
    environment: dict[str, str] = field(default_factory=dict)
    name: str = ""
    save_folder: str = ""  # created when the container is started


def default_save_folder() -> Path:
    from functionary.backends.default_model import cache_dir

    return cache_dir() / "tgi-data"


def launch_plan(
    model: str,
    endpoint: str,
    *,
    save_folder: Optional[str] = None,
    max_total_tokens: Optional[int] = None,
    image: str = TGI_IMAGE,
) -> LaunchPlan:
    """The container for serving `model` at `endpoint` (a loopback URL); ValueError otherwise."""
    url = urlparse(endpoint)
    if url.scheme not in ("http", "https") or url.hostname not in _LOOPBACK:
        raise ValueError(
            f"no TGI answers at {endpoint}, and a container can only be started for a local endpoint "
            "(http://127.0.0.1:PORT): start TGI there or fix --endpoint"
        )
    port = url.port or (443 if url.scheme == "https" else 80)
    data = Path(save_folder).expanduser().resolve() if save_folder else default_save_folder()
    volumes = {str(data): {"bind": DATA_MOUNT, "mode": "rw"}}
    local = Path(model).expanduser()
    if local.is_dir():
        volumes[str(local.resolve())] = {"bind": MODEL_MOUNT, "mode": "ro"}
        model_id = MODEL_MOUNT
    else:
        model_id = model  # downloaded by TGI into the save folder
    total = max_total_tokens or DEFAULT_MAX_TOTAL_TOKENS
    command = [
        "--model-id", model_id,
        "--port", str(CONTAINER_PORT),
        "--max-total-tokens", str(total),
        "--max-input-tokens", str(total - 1),
    ]
    environment = {k: os.environ[k] for k in ("HF_TOKEN",) if os.environ.get(k)}  # gated models
    return LaunchPlan(
        image=image,
        command=command,
        ports={f"{CONTAINER_PORT}/tcp": ("127.0.0.1", port)},
        volumes=volumes,
        environment=environment,
        name=f"functionary-tgi-{port}-{uuid.uuid4().hex[:6]}",
        save_folder=str(data),
    )


def docker_client(factory: Optional[Callable[[], Any]] = None) -> Any:
    """A Docker client that reached its daemon; `DockerUnavailable` otherwise."""
    if factory is None:
        try:
            import docker
        except ImportError as exc:
            raise DockerUnavailable(f"the `docker` package is missing (pip install 'functionary[tgi]'): {exc}") from exc
        factory = docker.from_env
    try:
        client = factory()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - docker.errors.DockerException and OS errors alike
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DockerUnavailable(reason) from exc
    return client


class TGIContainer:
    """A TGI container this process started (and stops)."""

    def __init__(self, container: Any, endpoint: str) -> None:
        self.container = container
        self.endpoint = endpoint
        self._stopped = False

    @classmethod
    def start(cls, client: Any, plan: LaunchPlan, endpoint: str) -> "TGIContainer":
        from docker.types import DeviceRequest

        logger.info("starting TGI container %s (%s %s)", plan.name, plan.image, " ".join(plan.command))
        container = client.containers.run(
            plan.image,
            plan.command,
            name=plan.name,
            detach=True,
            ports=plan.ports,
            volumes=plan.volumes,
            environment=plan.environment,
            device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])],  # every GPU
            shm_size="1g",  # NCCL between shards needs more than Docker's 64 MB default
            labels={"functionary.tgi": "1"},
        )
        return cls(container, endpoint)

    def wait_healthy(
        self,
        timeout: float,
        *,
        poll: float = 1.0,
        healthy: Callable[[str], bool] = endpoint_is_healthy,
    ) -> None:
        """Return once the endpoint answers `/health`; RuntimeError if the container exits or
        `timeout` seconds pass (downloading a model can take minutes)."""
        deadline = time.monotonic() + timeout
        while True:
            if healthy(self.endpoint):
                logger.info("TGI container %s is healthy at %s", self.name, self.endpoint)
                return
            self.container.reload()
            if self.container.status in ("exited", "dead"):
                raise RuntimeError(f"the TGI container {self.name} exited: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the TGI container {self.name} was not healthy after {timeout:.0f} s "
                    f"(--startup_timeout): {self._log_tail()}"
                )
            time.sleep(poll)

    @property
    def name(self) -> str:
        return str(getattr(self.container, "name", "") or getattr(self.container, "id", "?"))

    def _log_tail(self) -> str:
        try:
            raw = self.container.logs(tail=5)
        except Exception:  # noqa: BLE001 - only for the message
            return "(no logs)"
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return " | ".join(line.strip() for line in text.splitlines() if line.strip()) or "(no logs)"

    def stop(self) -> None:
        """Stop and remove the container (once; later calls do nothing)."""
        if self._stopped:
            return
        self._stopped = True
        logger.info("stopping TGI container %s", self.name)
        try:
            self.container.stop(timeout=30)
        except Exception:  # noqa: BLE001 - remove it anyway
            logger.exception("stopping TGI container %s failed", self.name)
        try:
            self.container.remove(force=True)
        except Exception:  # noqa: BLE001
            logger.exception("removing TGI container %s failed", self.name)


def ensure_endpoint(
    endpoint: str,
    model: str,
    *,
    save_folder: Optional[str] = None,
    max_total_tokens: Optional[int] = None,
    startup_timeout: float = 600.0,
    docker_factory: Optional[Callable[[], Any]] = None,
    image: str = TGI_IMAGE,
    poll: float = 1.0,
) -> Optional[TGIContainer]:
    """None if `endpoint` answers `/health`; else a started, healthy TGI container.
    Raises `DockerUnavailable`, ValueError (not a local endpoint) or RuntimeError (the
    container did not become healthy; it was stopped and removed)."""
    if endpoint_is_healthy(endpoint):
        logger.info("using the TGI endpoint at %s", endpoint)
        return None
    plan = launch_plan(model, endpoint, save_folder=save_folder, max_total_tokens=max_total_tokens, image=image)
    client = docker_client(docker_factory)
    Path(plan.save_folder).mkdir(parents=True, exist_ok=True)
    container = TGIContainer.start(client, plan, endpoint)
    try:
        container.wait_healthy(startup_timeout, poll=poll)
    except BaseException:
        container.stop()
        raise
    return container


def start_command_hint(model: str, endpoint: str, image: str = TGI_IMAGE) -> str:
    """The `docker run` line a user can start TGI with (for error messages)."""
    port = urlparse(endpoint).port or 8080
    local = Path(model).expanduser()
    if local.is_dir():
        mount, model_id = f"-v {local.resolve()}:{MODEL_MOUNT}:ro", MODEL_MOUNT
    else:
        mount, model_id = f"-v $PWD/tgi-data:{DATA_MOUNT}", model
    return (f"docker run --gpus all --shm-size 1g -p {port}:{CONTAINER_PORT} {mount} {image} "
            f"--model-id {model_id}")


__all__ = [
    "CONTAINER_PORT",
    "DATA_MOUNT",
    "DockerUnavailable",
    "LaunchPlan",
    "MODEL_MOUNT",
    "TGIContainer",
    "TGI_IMAGE",
    "docker_client",
    "ensure_endpoint",
    "launch_plan",
    "start_command_hint",
]
