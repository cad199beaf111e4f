"""Starting TGI through the Docker SDK, tested at the SDK boundary.

There is no Docker daemon (and no GPU) on the machines this project is developed on, so the
container is never really run: a stand-in for the Docker client records what it was asked to
run (image, command, GPUs, mounts, port) and "starts" the container by starting the TGI
stand-in on the published port, so the wait for `/health` is real. Where the SDK itself is
used (no daemon reachable), it is the real `docker` package.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import httpx
import pytest

import server_tgi
from functionary.backends.tgi_docker import (
    DockerUnavailable,
    TGI_IMAGE,
    ensure_endpoint,
    launch_plan,
)
from tests.support.server import ROOT, free_port
from tests.support.tgi_standin import TGIStandIn
from tests.support.tokenizers import build_format_tokenizer

pytestmark = pytest.mark.anyio


@dataclass
class FakeContainer:
    name: str
    on_stop: Any = None
    status: str = "created"
    calls: list[str] = field(default_factory=list)
    log: bytes = b"INFO text_generation_launcher: Starting shard\nERROR shard-manager: CUDA out of memory\n"

    def reload(self) -> None:
        self.calls.append("reload")

    def logs(self, tail: int = 5) -> bytes:
        return self.log

    def stop(self, timeout: int = 10) -> None:
        self.calls.append("stop")
        self.status = "exited"
        if self.on_stop is not None:
            self.on_stop()

    def remove(self, force: bool = False) -> None:
        self.calls.append("remove")


class FakeDocker:
    """What `docker.from_env()` returns, as far as the launcher uses it."""

    def __init__(self, on_run: Any = None, container_status: str = "running") -> None:
        self.runs: list[tuple[tuple, dict]] = []
        self.pings = 0
        self.on_run = on_run
        self.container_status = container_status
        self.containers = self  # client.containers.run(...)
        self.started: list[FakeContainer] = []

    def ping(self) -> bool:
        self.pings += 1
        return True

    def run(self, image: str, command: list[str], **kwargs: Any) -> FakeContainer:
        self.runs.append(((image, command), kwargs))
        container = FakeContainer(kwargs["name"], status=self.container_status)
        if self.on_run is not None:
            container.on_stop = self.on_run(kwargs)
        self.started.append(container)
        return container


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("tgi-model") / "functionary-v3"
    build_format_tokenizer("v3.llama3").save_pretrained(str(folder))
    return str(folder)


def test_a_container_is_started_with_the_pinned_image_gpus_mounts_and_port(model_folder, tmp_path):
    port = free_port()
    standins: list[TGIStandIn] = []

    def container_comes_up(kwargs: dict) -> Any:
        # the published port of the container is where TGI then answers
        (host, published), = kwargs["ports"].values()
        standin = TGIStandIn(build_format_tokenizer("v3.llama3"), lambda body: "Hi.<|eot_id|>")
        standin.start(published)
        standins.append(standin)
        return standin.stop

    docker = FakeDocker(on_run=container_comes_up)
    endpoint = f"http://127.0.0.1:{port}"
    container = ensure_endpoint(endpoint, model_folder, save_folder=str(tmp_path / "data"), max_total_tokens=8192,
                                startup_timeout=20, docker_factory=lambda: docker, poll=0.05)
    try:
        assert container is not None and docker.pings == 1
        ((image, command), kwargs), = docker.runs
        assert image == TGI_IMAGE == "ghcr.io/huggingface/text-generation-inference:3.3.5"
        assert command == ["--model-id", "/model", "--port", "80", "--max-total-tokens", "8192",
                           "--max-input-tokens", "8191"]
        assert kwargs["ports"] == {"80/tcp": ("127.0.0.1", port)}
        assert kwargs["volumes"] == {
            str(Path(model_folder).resolve()): {"bind": "/model", "mode": "ro"},
            str((tmp_path / "data").resolve()): {"bind": "/data", "mode": "rw"},
        }
        (gpus,) = kwargs["device_requests"]
        assert gpus["Count"] == -1 and gpus["Capabilities"] == [["gpu"]]  # every GPU
        assert kwargs["detach"] is True and kwargs["shm_size"] == "1g"
        assert httpx.get(f"{endpoint}/health").status_code == 200
    finally:
        container.stop()
        container.stop()  # once only
    assert docker.started[0].calls.count("stop") == 1 and docker.started[0].calls.count("remove") == 1
    with pytest.raises(httpx.HTTPError):  # stopping the container took TGI down
        httpx.get(f"{endpoint}/health", timeout=2)


def test_a_model_id_is_downloaded_into_the_save_folder(tmp_path):
    plan = launch_plan("meetkai/functionary-small-v3.2", "http://127.0.0.1:8080", save_folder=str(tmp_path))
    assert plan.command[:2] == ["--model-id", "meetkai/functionary-small-v3.2"]
    assert plan.volumes == {str(tmp_path.resolve()): {"bind": "/data", "mode": "rw"}}
    assert plan.ports == {"80/tcp": ("127.0.0.1", 8080)}
    assert plan.command[plan.command.index("--max-total-tokens") + 1] == "4096"


def test_a_remote_endpoint_is_never_started_here():
    with pytest.raises(ValueError, match="only be started for a local endpoint"):
        launch_plan("m", "http://tgi.example.internal:8080")


def test_a_running_endpoint_needs_no_docker(model_folder):
    standin = TGIStandIn(build_format_tokenizer("v3.llama3"), lambda body: "Hi.<|eot_id|>")
    url = standin.start()
    try:
        def no_docker() -> Any:
            raise AssertionError("Docker must not be used when the endpoint answers")

        assert ensure_endpoint(url, model_folder, docker_factory=no_docker) is None
    finally:
        standin.stop()


@pytest.mark.parametrize("status", ["running", "exited"])
def test_a_container_that_never_gets_healthy_is_stopped_and_removed(model_folder, status):
    docker = FakeDocker(container_status=status)
    endpoint = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(RuntimeError) as raised:
        ensure_endpoint(endpoint, model_folder, startup_timeout=0.3, docker_factory=lambda: docker, poll=0.05)
    message = str(raised.value)
    assert ("exited" in message) if status == "exited" else ("not healthy after" in message)
    assert "CUDA out of memory" in message  # the container's last log lines say why
    assert docker.started[0].calls[-2:] == ["stop", "remove"]


def test_without_a_docker_daemon_the_launcher_says_so():
    def unreachable() -> Any:
        import docker

        return docker.DockerClient(base_url="unix:///nonexistent/docker.sock")

    with pytest.raises(DockerUnavailable):
        ensure_endpoint(f"http://127.0.0.1:{free_port()}", "m", docker_factory=unreachable)


def test_server_tgi_exits_with_one_line_saying_what_to_start(model_folder, tmp_path):
    """The real script and the real Docker SDK, with no TGI and no Docker daemon."""
    port = free_port()
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "server_tgi.py"), "--model", model_folder,
         "--endpoint", f"http://127.0.0.1:{port}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    last = lines[-1]
    assert last.startswith(f"error: no TGI answers at http://127.0.0.1:{port}/health and Docker is not available")
    assert f"docker run --gpus all --shm-size 1g -p {port}:80" in last and TGI_IMAGE in last
    assert "Traceback" not in done.stderr


async def test_the_app_stops_the_container_it_started_when_it_stops(model_folder):
    standin = TGIStandIn(build_format_tokenizer("v3.llama3"), lambda body: "Hi.<|eot_id|>")
    url = standin.start()
    container = FakeContainer("functionary-tgi-test", status="running")
    from functionary.backends.tgi_docker import TGIContainer

    started = TGIContainer(container, url)
    try:
        args = server_tgi.build_parser().parse_args(["--model", model_folder, "--endpoint", url])
        app = server_tgi.build_app(args, started)
        async with app.router.lifespan_context(app):
            assert container.calls == []
        assert container.calls == ["stop", "remove"]
    finally:
        standin.stop()


def test_grammar_backend_is_refused_on_tgi(model_folder):
    with pytest.raises(SystemExit) as raised:
        server_tgi.main(["--model", model_folder, "--grammar-backend", "xgrammar"])
    assert raised.value.code == 2
