"""Pieces of the training engine (``train/engine.py``): optimizers with a new-layer rate, LR schedules,
AMP steps, the checkpointed schedule state, history CSV. What is here has no idea what is being trained.
Mixed precision is CUDA-only: on the CPU, ``autocast`` and the gradient scaler are disabled and a step
is a plain fp32 step.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os

import torch
from torch import nn

from wsss_core.fileio import write_text


def poly_lambda(total_steps: int, power: float):
    """LambdaLR factor ``(1 - step / total_steps) ** power``, 0 from ``total_steps`` on (DeepLab's "poly")."""
    return lambda step: max(0.0, 1.0 - step / total_steps) ** power


def step_lambda(steps_per_epoch: int, decay_epochs, factor: float):
    """LambdaLR factor ``factor ** (number of decay_epochs reached)``: e.g. x0.1 at epochs 5 and 10."""
    return lambda step: factor ** sum(step >= e * steps_per_epoch for e in decay_epochs)


def cosine_lambda(total_steps: int):
    """LambdaLR factor ``(1 + cos(pi * step / total_steps)) / 2``: from 1 down to 0 at ``total_steps``."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


SCHEDULES = ("poly", "cosine")
OPTIMIZERS = ("sgd", "adamw")


def schedule_lambda(schedule: str, total_steps: int, *, warmup_steps: int = 0, poly_power: float = 0.9):
    """LambdaLR factor of ``schedule`` (poly | cosine) over ``total_steps``, after a linear warm-up.

    The warm-up takes the factor from ``1 / (warmup_steps + 1)`` to 1 over its steps; the schedule then decays
    over the remaining ``total_steps - warmup_steps`` steps, reaching 0 at ``total_steps``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}, use one of {', '.join(SCHEDULES)}")
    warmup_steps = max(0, min(int(warmup_steps), total_steps - 1))
    decay_steps = max(1, total_steps - warmup_steps)
    decay = poly_lambda(decay_steps, poly_power) if schedule == "poly" else cosine_lambda(decay_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return decay(step - warmup_steps)

    return factor


def make_optimizer(
    name: str,
    pretrained: list[nn.Parameter],
    new: list[nn.Parameter],
    *,
    lr: float,
    new_layer_lr_mult: float,
    momentum: float,
    weight_decay: float,
    bias_lr_mult: float = 1.0,
    biases: frozenset[int] = frozenset(),
    nesterov: bool = False,
) -> torch.optim.Optimizer:
    """``name`` (sgd | adamw) over two groups: pretrained layers at ``lr``, new ones at ``new_layer_lr_mult`` x.

    sgd: momentum ``momentum`` (Nesterov's when ``nesterov``) and L2 ``weight_decay`` (the papers' recipe);
    adamw: Adam with decoupled ``weight_decay`` (``momentum`` is unused: Adam's betas are torch's defaults).
    With ``bias_lr_mult`` != 1, the parameters whose ``id`` is in ``biases`` form two more groups at
    ``bias_lr_mult`` times their layer's rate (the Caffe-era recipe of the co-attention reference code).
    """
    groups = []
    for params, rate in ((pretrained, lr), (new, lr * new_layer_lr_mult)):
        if bias_lr_mult == 1:
            groups.append({"params": params, "lr": rate})
            continue
        groups.append({"params": [p for p in params if id(p) not in biases], "lr": rate})
        groups.append({"params": [p for p in params if id(p) in biases], "lr": rate * bias_lr_mult})
    groups = [g for g in groups if g["params"]] if bias_lr_mult != 1 else groups
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}, use one of {', '.join(OPTIMIZERS)}")


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The DataLoader generator of one epoch: order and worker seeds depend on (seed, epoch) only,
    so an epoch run after a resume draws exactly what it drew in an uninterrupted run."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def amp_enabled(device: torch.device, amp: bool) -> bool:
    """Mixed precision only where it pays and is supported here: CUDA."""
    return bool(amp) and device.type == "cuda"


AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def autocast(device: torch.device, amp: bool, dtype: str = "float16"):
    """Autocast to ``dtype`` (float16 | bfloat16) on CUDA when ``amp``; a no-op context elsewhere."""
    if amp_enabled(device, amp):
        return torch.autocast(device_type="cuda", dtype=AMP_DTYPES[dtype])
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, amp: bool, dtype: str = "float16") -> torch.amp.GradScaler:
    """Loss scaling for fp16 gradients; a disabled scaler (scale() and step() pass through) without AMP
    and for bfloat16, whose fp32-sized exponent does not underflow small gradients."""
    return torch.amp.GradScaler("cuda", enabled=amp_enabled(device, amp) and dtype == "float16")


def memory_format(device: torch.device, channels_last: bool) -> torch.memory_format:
    """channels_last (NHWC) on CUDA when asked: faster convolutions on tensor cores, esp. under AMP."""
    return torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format


def optimizer_step(
    loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, scheduler=None
) -> None:
    """Backward ``loss`` and take one (scaled) optimizer step, then one scheduler step."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)  # skipped by the scaler when fp16 gradients overflowed
    scaler.update()
    if scheduler is not None:
        scheduler.step()


class StateBundle:
    """Several ``state_dict`` owners checkpointed in one slot (e.g. a scheduler and a gradient scaler).

    ``train.checkpoint.save_checkpoint`` has one slot for schedule state; bundling keeps the
    scaler's loss scale across a resume without a second checkpoint format. Owners whose
    state is empty (a disabled scaler) are skipped on load, so a CPU checkpoint resumes on CUDA.
    """

    def __init__(self, **owners):
        self.owners = owners

    def state_dict(self) -> dict:
        return {name: owner.state_dict() for name, owner in self.owners.items()}

    def load_state_dict(self, state: dict) -> None:
        missing = sorted(set(self.owners) - set(state))
        if missing:
            raise KeyError(f"checkpoint state lacks {missing} (has {sorted(state)})")
        for name, owner in self.owners.items():
            if state[name]:
                owner.load_state_dict(state[name])


def write_history_csv(path: str | os.PathLike, history: list[dict]) -> None:
    """One row per epoch, columns in the order of the first record's keys (written atomically)."""
    if not history:
        raise ValueError(f"{path}: no epochs to write (empty training history)")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    write_text(path, buffer.getvalue())
