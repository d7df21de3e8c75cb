"""Spread per-image work over forked worker processes, in chunks.

Fork, not spawn: spawn re-runs the calling script, and Snakemake scripts have no
``__main__`` guard. Several chunks per worker, so one slow chunk (big images, many
classes) does not leave the other workers idle. Tasks that read HDF5 must open their
own handle: none may be open in the parent at the fork.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor

import numpy as np


def fork_map_chunks(task: Callable[[list], object], items: Sequence, workers: int) -> list:
    """``task`` applied to consecutive chunks of ``items`` in ``workers`` forked processes; results in order."""
    chunks = [list(c) for c in np.array_split(np.asarray(items, dtype=object), 4 * workers) if len(c)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as pool:
        return list(pool.map(task, chunks))
