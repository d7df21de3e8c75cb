"""pyproject.toml and envs/wsss.yaml must pin the same versions."""

import tomllib

import yaml

from conftest import REPO


def pins(requirements):
    return dict(r.split("==") for r in requirements if "==" in r)


def test_conda_env_and_pip_pins_agree():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pip_pins = pins(project["dependencies"])
    env = yaml.safe_load((REPO / "envs" / "wsss.yaml").read_text())
    conda_pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    conda_pins = pins(conda_pip)
    # snakemake drives the rules; the rule environment itself does not need it
    assert conda_pins == {k: v for k, v in pip_pins.items() if k != "snakemake"}
    assert all("==" in r for r in project["dependencies"]), "every runtime dependency is pinned"
