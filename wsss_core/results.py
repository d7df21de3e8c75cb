"""The per-dataset summary table ``summary.csv``: one row per stage, method and split.

Each stage writes its own small row file (so stages stay independent Snakemake jobs
and a rerun of one stage rewrites only its rows); rule ``summary`` concatenates them.

Columns: ``stage, method, split, mIoU`` always, then any extras a stage adds
(``threshold``, ``coverage``, ``images``, ...), empty where a stage has none.
``mIoU`` is a percentage (0-100) stored as a float rounded to 2 decimals, as papers
report it; each stage's own outputs keep full precision.
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


def collect_summary(row_csvs: Sequence[str | os.PathLike], out_csv: str | os.PathLike) -> pd.DataFrame:
    """Concatenate row files, in the order given (the pipeline's stage order), into ``out_csv``."""
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
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False)
    return table
