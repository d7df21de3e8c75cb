"""Glue between Snakemake's ``script:`` directive and wsss_core functions.

A workflow script is an adapter: it reads ``snakemake.input/params/threads`` and
calls one function. :func:`logged` sends that function's output to the rule's
``log:`` file while still showing a failure's message on the terminal.
"""

from __future__ import annotations

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
