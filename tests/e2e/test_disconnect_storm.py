"""A small disconnect storm (benchmarks/disconnect_storm.py; the full one has 256 clients) against
the real server on the default model with grammar sampling on (marked slow; CI runs it):
32 concurrent tool-call clients, streaming and not, dropping their connections while queued,
after the first chunk, in text and in arguments, some reading to the end; a warm-up round of
each kind, then two rounds, after which the server's memory stays near its warm level and does
not grow from one round to the next."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.support.server import server_process

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = 32


def load_storm():
    spec = importlib.util.spec_from_file_location("functionary_disconnect_storm", ROOT / "benchmarks" / "disconnect_storm.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("storm")
    with server_process(tmp, ["--enable-grammar-sampling"]) as process:
        yield process
    log = (tmp / "server.log").read_text(errors="replace")
    serving = log.split("Shutting down", 1)[0]  # what happened while serving, not the engine's teardown
    assert "Traceback" not in serving, serving[-4000:]


def test_a_disconnect_storm_leaves_no_request_behind_and_memory_where_it_was(server):
    storm = load_storm()
    probe = storm.process_tree_rss_probe(server.process.pid)
    report = asyncio.run(storm.campaign(server.base, CLIENTS, rounds=2, seed=4242, max_tokens=32, rss_probe=probe))
    detail = json.dumps(report, indent=1)
    assert report["warm_up_ok"], detail
    for run in report["rounds_detail"]:
        assert run["problems"] == [], detail
        assert run["engine_running"] == 0 and run["engine_waiting"] == 0, detail
        assert run["server_running"] == 0, detail
        assert run["new_request_answered"], detail
        dropped = sum(v for k, v in run["outcomes"].items() if k.endswith(":dropped"))
        assert dropped >= CLIENTS // 4, detail  # the storm did drop connections
    assert any(run["completed_valid"] for run in report["rounds_detail"]), detail
    memory = report["memory"]
    assert "api_server" in memory["processes"], detail
    for label, figures in memory["processes"].items():
        assert len(figures["after_rounds_mib"]) == 2, detail
        assert figures["largest_rise"] <= memory["rss_tolerance"], (label, detail)
        assert figures["last_over_first"] <= memory["plateau_tolerance"], (label, detail)
    assert memory["passed"] and report["passed"], detail
