"""Give each running GPU job of a workstation its own GPUs.

``snakemake --resources gpu=2`` only counts: it never tells a job *which* GPUs are its own,
and every job would start on GPU 0. Here each device has a lock file (``<lock_dir>/gpu<id>.lock``);
a job takes an exclusive ``flock`` on as many free ones as it declared (``resources: gpu=K``),
all at once or none (so two jobs wanting two GPUs each cannot deadlock holding one each),
and exports them as ``CUDA_VISIBLE_DEVICES`` before CUDA is initialised. The kernel drops a
``flock`` when its process ends, however it ends (SIGKILL, OOM kill, a crash), so a killed
job never leaks a slot and there is no stale lock to clean up.

Under Slurm (``SLURM_JOB_ID`` set) the scheduler has already assigned the job's GPUs through
``CUDA_VISIBLE_DEVICES``; nothing is locked. On a machine without GPUs a GPU job runs on the CPU.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def default_lock_dir() -> Path:
    """One folder per user and machine, so that separate Snakemake runs share the slots too."""
    return Path(tempfile.gettempdir()) / f"wsss-gpu-slots-{os.getuid()}"


def machine_devices(configured: list | None = None) -> list[str]:
    """The GPU ids jobs may be given: ``configured`` (config key gpus.devices), else the ids in the
    environment's ``CUDA_VISIBLE_DEVICES`` (a user restricting the whole run), else every CUDA device."""
    if configured is not None:
        return [str(d) for d in configured]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch  # counting devices reads NVML; it does not initialise CUDA in this process

    return [str(i) for i in range(torch.cuda.device_count())]


def _try_lock(path: Path):
    """An open file holding an exclusive lock on ``path``, or None when another process holds it."""
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def _lock_free_slots(devices: list[str], count: int, lock_dir: Path):
    """(devices, open locked files) for ``count`` free slots, or None (holding nothing) if fewer are free."""
    held = []
    for device in devices:
        f = _try_lock(lock_dir / f"gpu{device}.lock")
        if f is not None:
            held.append((device, f))
            if len(held) == count:
                return [d for d, _ in held], [f for _, f in held]
    for _, f in held:
        f.close()
    return None


@contextlib.contextmanager
def gpu_slots(
    count: int, *, devices: list | None = None, lock_dir: str | Path | None = None, poll_seconds: float = 2.0
) -> Iterator[list[str]]:
    """Hold ``count`` GPUs for the duration; yields their ids (``[]`` when the job runs on the CPU).

    ``CUDA_VISIBLE_DEVICES`` is set to them inside the block (restored after), so CUDA device 0
    of this process is the first slot. Waits, polling, while fewer than ``count`` slots are free.
    """
    if count <= 0:
        yield []
        return
    if os.environ.get("SLURM_JOB_ID"):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        log.info("Slurm job %s: GPUs assigned by Slurm, CUDA_VISIBLE_DEVICES=%r", os.environ["SLURM_JOB_ID"], visible)
        yield [d for d in visible.split(",") if d]
        return
    pool = machine_devices(devices)
    if not pool:
        log.info("no GPU on this machine: the job asking for %d GPU(s) runs on the CPU", count)
        yield []
        return
    if count > len(pool):
        raise RuntimeError(
            f"the job asks for {count} GPUs but only {len(pool)} are available ({pool}; "
            f"config key gpus.devices or CUDA_VISIBLE_DEVICES)"
        )
    lock_dir = Path(lock_dir) if lock_dir else default_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = time.monotonic()
    while (got := _lock_free_slots(pool, count, lock_dir)) is None:
        if waited is not None:
            log.info("waiting for %d free GPU slot(s) of %s in %s", count, pool, lock_dir)
            waited = None
        time.sleep(poll_seconds)
    ids, files = got
    previous = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    log.info(
        "GPU slot(s) %s held (CUDA_VISIBLE_DEVICES=%s, pid %d, lock dir %s)", ids, ",".join(ids), os.getpid(), lock_dir
    )
    try:
        yield ids
    finally:
        for f in files:
            f.close()  # closing the descriptor releases the flock
        if previous is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = previous
        log.info("GPU slot(s) %s released", ids)
