"""Glue between Snakemake's ``script:`` directive and wsss_core functions.

A workflow script is an adapter: it reads ``snakemake.input/params/threads`` and
calls one function. :func:`logged` sends that function's output to the rule's
``log:`` file while still showing a failure's message on the terminal.
"""

from __future__ import annotations

import ast
import contextlib
import logging
import sys
import traceback
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def logged(log_path: str | Path) -> Iterator[None]:
    """Redirect stdout, stderr and ``logging`` to ``log_path`` for the duration."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    terminal = sys.stderr
    with open(log_path, "w", buffering=1) as log:
        handler = logging.StreamHandler(log)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        old_out, old_err = sys.stdout, sys.stderr
        sys.stdout = sys.stderr = log
        try:
            yield
        except BaseException as err:
            traceback.print_exc(file=log)
            # The log holds the traceback; the terminal gets the message, which names the file or key.
            print(f"error (full log: {log_path}): {err}", file=terminal)
            raise
        finally:
            sys.stdout, sys.stderr = old_out, old_err
            root.removeHandler(handler)


def module_sources(package_root: str | Path, entry_modules: list[str], skip: list[str] = ()) -> list[Path]:
    """The .py files of ``entry_modules`` and of every package module they import, transitively.

    ``entry_modules`` are paths relative to the package folder (``"cams/infer.py"``); modules in ``skip``
    (same form) are left out together with what only they import: code a step imports but never runs,
    such as the classifier add-ons a variant does not use.
    Snakemake reruns a rule when an input changes but does not see imported code, so
    rules list these files as inputs: editing any module a stage runs reruns that stage.
    Imports are parsed, not executed, so this costs milliseconds when the workflow is parsed.
    """
    package_root = Path(package_root)

    def resolve(dotted: str) -> Path | None:
        parts = dotted.split(".")
        if parts[0] != package_root.name:
            return None
        base = package_root.joinpath(*parts[1:])
        candidates = ([base.with_suffix(".py")] if len(parts) > 1 else []) + [base / "__init__.py"]
        return next((c for c in candidates if c.is_file()), None)

    seen: dict[Path, None] = {}
    skipped = {package_root / m for m in skip}
    todo = [package_root / m for m in entry_modules]
    while todo:
        path = todo.pop()
        if path in seen or path in skipped:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such module in {package_root}")
        seen[path] = None
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if node.level:  # relative import: ".x" is a sibling, "..x" one package up
                    package = path.relative_to(package_root.parent).parent.parts
                    package = package[: len(package) - node.level + 1]
                    module = ".".join(package + ((module,) if module else ()))
                # "from a.b import c": c may be a submodule (a/b/c.py) or a name in a/b.py
                targets = [module] + [f"{module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            todo += [p for p in map(resolve, targets) if p is not None]
    return sorted(seen)


@contextlib.contextmanager
def gpu_job(snakemake) -> Iterator[list[str]]:
    """The GPUs of a rule's job: as many as its ``resources: gpu`` from the workstation's slots
    (:mod:`wsss_core.gpu_slots`, config section ``gpus``), or those Slurm assigned. Yields their ids."""
    from wsss_core.gpu_slots import gpu_slots

    settings = snakemake.config.get("gpus") or {}
    count = int(snakemake.resources.get("gpu", 0) or 0)
    with gpu_slots(count, devices=settings.get("devices"), lock_dir=settings.get("lock_dir")) as ids:
        yield ids
