"""Packaging: pyproject.toml and envs/wsss.yaml pin the same versions, and the base install can write the report."""

import tomllib
from pathlib import Path

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
    # snakemake drives the rules and writes the report (with pygments); the rule environment needs neither
    assert conda_pins == {k: v for k, v in pip_pins.items() if k not in ("snakemake", "pygments")}
    assert all("==" in r for r in project["dependencies"]), "every runtime dependency is pinned"


def base_closure() -> set[str]:
    """Every installed distribution the base install (``pip install -e .``, no extra) pulls in, transitively."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(req.name).requires or []
        except PackageNotFoundError:  # not installed here (e.g. a platform-specific wheel): nothing to follow
            continue
        for text in requires:
            sub = Requirement(text)
            # markers evaluated for this machine with no extra, or with the extras ``req`` asked for
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(sub)
    return seen


def report_needs() -> dict[str, set[str]]:
    """Distribution -> import names, of every third-party module snakemake's report code imports.

    Read from snakemake's own source: each ``import`` in snakemake/report/ (including the imports inside
    functions, which is how the report's optional packages are imported).
    """
    import ast
    import importlib.util
    import sys
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    report_dir = importlib.util.find_spec("snakemake.report").submodule_search_locations[0]
    modules = set()
    for path in Path(report_dir).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    third_party = modules - set(sys.stdlib_module_names) - {"__future__"}
    providers = packages_distributions()
    unknown = sorted(m for m in third_party if m not in providers)
    assert not unknown, f"snakemake's report imports {unknown}, which no installed distribution provides"
    needs: dict[str, set[str]] = {}
    for module in third_party:
        for dist in providers[module]:
            needs.setdefault(canonicalize_name(dist), set()).add(module)
    return needs


def test_base_install_can_write_the_snakemake_report():
    """``snakemake --report`` after ``pip install -e .``: every package the report imports comes with the base
    install, not only with the [test] extra (pytest brings pygments, which the report needs)."""
    import re
    import importlib.util

    needs = report_needs()
    # the packages snakemake's report names in its "must be installed" errors are among those found
    report_dir = Path(importlib.util.find_spec("snakemake.report").submodule_search_locations[0])
    named = {
        m
        for p in report_dir.rglob("*.py")
        for m in re.findall(r"Python package (\w+) must be installed", p.read_text())
    }
    found = {m for modules in needs.values() for m in modules}
    assert named and named <= found, (named, found)
    closure = base_closure()
    missing = {dist: sorted(modules) for dist, modules in needs.items() if dist not in closure}
    assert not missing, f"snakemake's report imports these, which pyproject's base dependencies do not bring: {missing}"
