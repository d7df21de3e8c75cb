"""The per-dataset summary table ``summary.csv``: one row per stage, method and split.

Each stage writes its own small row file (so stages stay independent Snakemake jobs
and a rerun of one stage rewrites only its rows); rule ``summary`` concatenates them.

Columns: ``stage, method, split, mIoU`` always, then any extras a stage adds
(``threshold``, ``coverage``, ``images``, ...), empty where a stage has none.
``mIoU`` is a percentage (0-100) stored as a float rounded to 2 decimals, as papers
report it; each stage's own outputs keep full precision.

With a ``reference`` method (the network trained on the ground-truth masks), rows on the
reference's split gain ``pct_of_fully_supervised`` = 100 * mIoU / the reference's mIoU: how
much of the fully-supervised reference the weak labels reach with the same budget.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from wsss_core.fileio import atomic_file

REQUIRED = ("stage", "method", "split", "mIoU")


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    """Required columns first, extras after in order of first appearance."""
    return table[list(REQUIRED) + [c for c in table.columns if c not in REQUIRED]]


def write_summary_rows(path: str | os.PathLike, rows: list[dict]) -> pd.DataFrame:
    """Write one stage's rows (atomically); ``mIoU`` must be a percentage or NaN."""
    if not rows:
        raise ValueError(f"{path}: no summary rows to write")
    for i, row in enumerate(rows):
        missing = [c for c in REQUIRED if c not in row]
        if missing:
            raise ValueError(f"{path}: summary row {i} lacks column(s) {missing}")
        value = float(row["mIoU"])
        if not (math.isnan(value) or 0.0 <= value <= 100.0):
            raise ValueError(f"{path}: summary row {i} has mIoU {value}; expected a percentage in 0..100")
    table = _ordered(pd.DataFrame(rows))
    table["mIoU"] = table["mIoU"].astype(float).round(2)
    with atomic_file(path) as tmp:
        table.to_csv(tmp, index=False)
    return table


REFERENCE_COLUMN = "pct_of_fully_supervised"


def add_reference_ratio(table: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Add :data:`REFERENCE_COLUMN` relative to the one row whose method is ``reference``."""
    ref = table[table["method"] == reference]
    if len(ref) != 1:
        raise ValueError(f"summary: expected one row of the reference method '{reference}', found {len(ref)}")
    ref_miou, ref_split = float(ref["mIoU"].iloc[0]), ref["split"].iloc[0]
    same_split = table["split"] == ref_split
    table = table.copy()
    table[REFERENCE_COLUMN] = (100 * table["mIoU"] / ref_miou).where(same_split & (ref_miou > 0)).round(1)
    return table


def collect_summary(
    row_csvs: Sequence[str | os.PathLike], out_csv: str | os.PathLike, reference: str | None = None
) -> pd.DataFrame:
    """Concatenate row files, in the order given (the pipeline's stage order), into ``out_csv``.

    ``reference``: the method of the fully-supervised row, see the module docstring.
    """
    frames = []
    for path in map(Path, row_csvs):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: summary rows not found")
        frame = pd.read_csv(path)
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: summary rows lack column(s) {missing}")
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True, sort=False) if frames else pd.DataFrame(columns=list(REQUIRED))
    table = _ordered(table)
    if reference is not None:
        table = add_reference_ratio(table, reference)
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
