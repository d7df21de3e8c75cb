"""Shared fixtures: paths, the team's real photographs, and a tiny demo dataset."""

from __future__ import annotations

import re
import shutil
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


WORKFLOW_FILES = ("Snakefile", "config.yaml", "config", "rules", "workflow_scripts", "wsss_core", "envs", "report")


def copy_workflow(dest: Path) -> Path:
    """A copy of the workflow and its code, for tests that edit code and watch what reruns."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def run_snakemake(workdir: Path, *args: str, check: bool = True, repo: Path = REPO) -> subprocess.CompletedProcess:
    """Run the workflow of ``repo`` (default: this one) in ``workdir`` (results, data, .snakemake stay there)."""
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(repo / "Snakefile"),
        "--directory",
        str(workdir),
        *args,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def plan(out):
    """Snakemake's plan from a dry-run's output (not --quiet): ({(rule, wildcards): {reason: detail}}, summary).

    Each job block has a line ``reason: A: x, y; B`` (the reasons joined by "; ", a detail after ": ");
    the summary under ``Reasons:`` maps each reason, lower case, to the set of rules planned for it.
    """
    jobs, summary, lines = {}, {}, out.splitlines()
    for i, line in enumerate(lines):
        if job := re.fullmatch(r"(?:local)?rule (\w+):", line):
            fields = {}
            for field in lines[i + 1 :]:
                if not field.startswith("    "):
                    break
                key, _, value = field.strip().partition(": ")
                fields[key] = value
            reasons = (part.partition(": ") for part in fields["reason"].split("; "))
            jobs[job[1], fields.get("wildcards", "")] = {kind: detail for kind, _, detail in reasons}
    if "Reasons:" in lines:
        rest = lines[lines.index("Reasons:") + 2 :]  # after "(check individual jobs above for details)"
        for heading, rules in zip(rest[::2], rest[1::2]):
            if not (heading.startswith("    ") and heading.endswith(":") and rules.startswith("        ")):
                break
            summary[heading.strip()[:-1]] = set(rules.strip().split(", "))
    return jobs, summary


def first_id(root: Path, split: str) -> str:
    """The first image id of a split of a VOC-layout dataset."""
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()[0]


def void_mask_corner(mask: Path, size: int = 8) -> None:
    """Overwrite a palette mask in place with its top-left corner set to void (255)."""
    import numpy as np
    from PIL import Image

    with Image.open(mask) as img:
        pixels, palette = np.array(img), img.getpalette()
    pixels[:size, :size] = 255
    edited = Image.fromarray(pixels, mode="P")
    edited.putpalette(palette)
    edited.save(mask)
