"""Data-parallel training of one job on several GPUs (DistributedDataParallel).

A training rule given K > 1 GPUs (``resources: gpu=K``, see ``wsss_core/gpu_slots.py``) runs
K processes started by ``torchrun``, one per GPU (:func:`run_training`). The trainers are
written once for both cases: with one process every helper here is a pass-through.

- Effective batch and learning rate: the config's ``batch_size`` is the *global* batch. Every
  step, each of the K processes takes ``batch_size / K`` images of one shared, seeded
  permutation (:class:`GlobalBatches`), and DDP averages the gradients, so a step is the SGD step
  one process takes on the same ``batch_size`` images; the learning rate is not scaled.
- BatchNorm: the backbones keep theirs frozen (``frozen_bn``: ImageNet statistics, eval mode),
  so it does not depend on how the batch is split; BatchNorm layers that do train (DeepLab
  v3+'s head, ``frozen_bn: false``, Puzzle-CAM's backbone) become SyncBatchNorm on CUDA: statistics
  of the global batch.
- Seeding: every process seeds as one process would; DDP copies rank 0's initial weights to all.
  Rank 0's augmentation draws are those of a single-process run; other ranks draw from their own
  seed (:meth:`Context.decorrelate`), so K processes do not repeat each other's crops and flips.
- Metrics: per-process sums are all-reduced before an epoch's record; only rank 0 writes the
  checkpoint, the model and the history (the others wait at a barrier).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from wsss_core.train.loop import epoch_generator

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Context:
    """Where this process stands: rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def per_process_batch(self, batch_size: int, key: str) -> int:
        """This process's share of the global ``batch_size`` (config key ``key``)."""
        if batch_size % self.world:
            raise ValueError(
                f"config key {key}: the global batch {batch_size} does not split evenly over "
                f"{self.world} processes (GPUs); use a multiple of {self.world}"
            )
        return batch_size // self.world

    def loader(self, data, batch_size: int, *, shuffle: bool, seed: int, epoch: int, num_workers: int) -> DataLoader:
        """One epoch of this process's slices of the global batches. The per-epoch generator makes the data
        order and the workers' augmentation seeds independent of resumes."""
        generator = epoch_generator(seed, epoch)
        batches = GlobalBatches(len(data), batch_size, self.rank, self.world, shuffle=shuffle, generator=generator)
        return DataLoader(
            data,
            batch_sampler=batches,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            worker_init_fn=self.worker_init if self.world > 1 else None,
        )

    def wrap(self, module: nn.Module, *, find_unused_parameters: bool = False) -> nn.Module:
        """``module`` itself in one process; else DDP around it (SyncBatchNorm on CUDA)."""
        if self.world == 1:
            return module
        if self.device.type == "cuda":
            module = nn.SyncBatchNorm.convert_sync_batchnorm(module)  # frozen BN stays frozen: eval() kept
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, find_unused_parameters=find_unused_parameters)

    def decorrelate(self, seed: int, epoch: int) -> None:
        """Give ranks > 0 their own augmentation stream from ``epoch`` on (rank 0 keeps its own)."""
        if self.rank:
            torch.manual_seed(seed * 1_000_003 + epoch * 9_973 + self.rank)

    def worker_init(self, worker_id: int) -> None:
        """DataLoader workers: the same per-worker seeds in every rank otherwise."""
        if self.rank:
            torch.manual_seed((torch.initial_seed() + self.rank * 1_000_003) % 2**63)

    def sum(self, values: dict[str, float]) -> dict[str, float]:
        """``values`` summed over the processes (each process passes its own sums)."""
        if self.world == 1:
            return values
        names = list(values)  # same insertion order in every rank: the trainers build these dicts alike
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        t = torch.tensor([float(values[k]) for k in names], dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return dict(zip(names, t.tolist()))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


class LossModule(nn.Module):
    """``loss_fn(model, *inputs)`` as the forward of a module that owns ``model``.

    DistributedDataParallel averages the gradients of what ran in its forward; objectives that
    call several sub-networks of a model (co-attention) are wrapped whole through this.
    """

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, *inputs):
        return self.loss_fn(self.model, *inputs)


class GlobalBatches(torch.utils.data.Sampler):
    """Batches of one seeded permutation, each global batch split into ``world`` equal slices.

    With one process this yields exactly what ``DataLoader(shuffle=True, drop_last=True,
    generator=g)`` yields (the same ``randperm`` draw); the last incomplete batch is dropped.
    """

    def __init__(self, n: int, batch_size: int, rank: int, world: int, *, shuffle: bool, generator):
        self.n, self.batch_size, self.rank, self.world = n, batch_size, rank, world
        self.shuffle, self.generator = shuffle, generator
        self.share = batch_size // world

    def __len__(self) -> int:
        return self.n // self.batch_size

    def __iter__(self):
        order = torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)
        order = order.tolist()
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            first = start + self.rank * self.share
            yield order[first : first + self.share]


def setup(device: str = "auto") -> Context:
    """This process's context: one process, or a rank of a ``torchrun`` group (joined here)."""
    from wsss_core.devices import select_device

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Context(device=select_device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    chosen = select_device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return Context(rank=rank, world=world, device=chosen)


def processes_for(gpus: list[str]) -> int:
    """One process per GPU the job holds; one process on a machine without CUDA."""
    return len(gpus) if len(gpus) > 1 and torch.cuda.is_available() else 1


def run_training(target, gpus: list[str], *args, **kwargs):
    """``target(*args, **kwargs)``, in one process per GPU of ``gpus`` (see :func:`launch`) when there are several."""
    n = processes_for(gpus)
    if n == 1:
        return target(*args, **kwargs)
    return launch(target, n, *args, **kwargs)


def launch(target, nprocs: int, *args, **kwargs):
    """Run ``target(*args, **kwargs)`` in ``nprocs`` processes started by ``torchrun`` on this machine.

    Arguments travel as JSON (paths become strings); rank 0's return value comes back. A fresh
    interpreter per rank (not fork): CUDA cannot be used in a forked child of a CUDA process, and a
    Snakemake script has no ``__main__`` guard for spawn to honour. Output goes to this process's
    stdout/stderr (the rule's log).
    """
    with tempfile.TemporaryDirectory(prefix="wsss-ddp-") as tmp:
        call, result = Path(tmp) / "call.json", Path(tmp) / "result.json"
        spec = {
            "target": f"{target.__module__}:{target.__qualname__}",
            "args": args,
            "kwargs": kwargs,
            "result": str(result),
        }
        call.write_text(json.dumps(spec, default=str))
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nnodes=1",
            f"--nproc-per-node={nprocs}",
            "-m",
            __name__,
            str(call),
        ]
        log.info("data-parallel training in %d processes: %s", nprocs, " ".join(cmd))
        sys.stdout.flush()
        sys.stderr.flush()
        proc = subprocess.run(cmd, stdout=_fd(sys.stdout), stderr=_fd(sys.stderr), env=_child_env())
        if proc.returncode != 0:
            raise RuntimeError(
                f"data-parallel training ({target.__qualname__}, {nprocs} processes) failed with "
                f"exit code {proc.returncode}; the ranks' tracebacks are in the log above"
            )
        return json.loads(result.read_text())


def _fd(stream):
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


def _child_env() -> dict:
    env = dict(os.environ)
    # the ranks import wsss_core from wherever this process did (a checkout outside the venv, too)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # trainers set their own thread count
    return env


def _main(call_path: str) -> None:
    spec = json.loads(Path(call_path).read_text())
    module, name = spec["target"].split(":")
    logging.basicConfig(level=logging.INFO, format=f"[rank {os.environ['RANK']}] %(name)s: %(message)s")
    target = getattr(importlib.import_module(module), name)
    result = target(*spec["args"], **spec["kwargs"])
    if int(os.environ["RANK"]) == 0:
        Path(spec["result"]).write_text(json.dumps(result, default=str))
    dist.destroy_process_group()


if __name__ == "__main__":
    _main(sys.argv[1])
