"""Shared fixtures: paths, the team's real photographs, and a tiny demo dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_dataset(name: str) -> Path:
    """A real-photo dataset from ../shared/data, or skip the test saying why."""
    root = SHARED_DATA / name
    if not root.is_dir():
        pytest.skip(f"{root} not present (the team's shared data lives beside the checkout)")
    return root


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The TINY demo dataset (a few dozen 64-px images), generated once per session."""
    from wsss_core.data.demo import TINY, generate

    root = tmp_path_factory.mktemp("demo") / "demo_tiny"
    generate(root, **TINY)
    return root


def run_snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run this repo's workflow in ``workdir`` (results, data and .snakemake stay there)."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
