"""The package's imports point one way: base helpers <- data <- models <- stages <- segmentation <- report.

A module may import only from layers below its own (or its own package). Loaders of trained networks live
with the models, device and file helpers in the base, so no stage imports the training code of another:
an edit to ``train/`` reruns training and what follows, never CAM inference on a model already trained.
"""

import ast
import sys
from pathlib import Path

import wsss_core

PACKAGE = Path(wsss_core.__file__).parent

# the order of the pipeline; a unit is a subpackage or a top-level module of wsss_core
LAYERS = [
    {"__init__", "fileio", "devices", "parallel", "metrics", "gpu_slots", "config_checks"},
    {"results", "workflow"},
    {"data"},
    {"models", "label_maps"},
    {"cams"},
    {"pseudo"},
    {"refine"},
    {"train", "segmentation"},
    {"report", "plan"},  # plan: the workflow's names for what every stage makes
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports() -> list[tuple[str, str, str]]:
    """(importing file, its unit, imported unit) for every wsss_core import, function-level ones included."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        source = unit_of(".".join(rel.parts))
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module == "wsss_core":  # a submodule, or a name of wsss_core/__init__.py
                    names = [
                        (
                            f"wsss_core.{a.name}"
                            if (PACKAGE / a.name).is_dir() or (PACKAGE / f"{a.name}.py").is_file()
                            else "wsss_core.__init__"
                        )
                        for a in node.names
                    ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name.startswith("wsss_core.") and unit_of(name) != source:
                    found.append((str(rel), source, unit_of(name)))
    return found


def test_every_unit_has_a_layer():
    units = {unit_of(".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts)) for p in PACKAGE.rglob("*.py")}
    assert units - set(RANK) == set(), "add new subpackages / modules to LAYERS"


def test_imports_point_down_the_layers():
    upward = [
        f"{path} ({source}) imports {target}" for path, source, target in imports() if RANK[target] >= RANK[source]
    ]
    assert not upward


def test_no_stage_imports_training_code():
    assert not [(path, source) for path, source, target in imports() if target == "train"]


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    # the walker itself: a models file that imports a stage is reported
    fake = tmp_path / "wsss_core"
    (fake / "models").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "models" / "net.py").write_text("def f():\n    from wsss_core.train.loop import poly_lambda\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert imports() == [("wsss_core/models/net", "models", "train")]
