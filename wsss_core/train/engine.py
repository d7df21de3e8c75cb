"""The one training loop of every stage: classifier, AffinityNet and segmentation network.

A trainer builds the model and an :class:`Objective` (its data and its loss); :class:`Engine` does
the rest, the same way for all three:

1. ``Engine(section, cfg, ...)``: one process or one rank of a data-parallel job
   (``train/distributed.py``), its thread count, and every RNG seeded from ``cfg["seed"]``, before
   the trainer builds its model, so that new layers start from the same draw every run;
2. :meth:`Engine.fit`: the model on the device (channels_last on CUDA when asked), SGD or AdamW over two
   parameter groups (new layers at ``new_layer_lr_mult`` times ``lr``), the LR schedule of
   :func:`lr_factor`, a gradient scaler for fp16 AMP, the fingerprint of the run, resuming from
   ``<checkpoint_dir>/last.pt`` when it belongs to this run, the epoch loop, the epoch's means summed
   over the processes, one history record per epoch, a checkpoint after every epoch and the final
   model with its history CSV.

What an objective's step computes runs in two parts. :meth:`Objective.forward` runs under autocast
and inside the module that DistributedDataParallel wraps, so every sub-network it calls has its
gradients averaged; :meth:`Objective.loss` then turns its output into the loss terms in fp32.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from wsss_core.train.checkpoint import fingerprint, resume, save_epoch, save_final, seed_everything
from wsss_core.train.distributed import LossModule, setup
from wsss_core.train.loop import (
    StateBundle,
    autocast,
    grad_scaler,
    make_optimizer,
    memory_format,
    optimizer_step,
    schedule_lambda,
    step_lambda,
)

log = logging.getLogger(__name__)


class Objective:
    """What a trainer gives the engine: the samples of an epoch and the loss of a batch of them.

    ``len()`` is the number of samples per epoch (images or pairs); a batch's sample count is
    ``len(batch[0])``. Subclasses set ``self.data`` or override :meth:`epoch_data`, and implement
    :meth:`forward`; :meth:`loss` and :meth:`metrics` default to "the forward's output is the terms"
    and "no metrics".
    """

    data: Dataset

    def __len__(self) -> int:
        return len(self.data)

    def epoch_data(self, epoch: int) -> tuple[Dataset, bool]:
        """(dataset of the epoch, whether the loader shuffles it)."""
        return self.data, True

    def forward(self, model: nn.Module, batch, epoch: int, progress: float, device: torch.device):
        """The part of a step that runs the network (under autocast; ``progress`` in [0, 1) of all steps)."""
        raise NotImplementedError

    def loss(self, out, batch, device: torch.device) -> tuple[dict, dict]:
        """(loss terms: scalar tensors, ``"total"`` the one to minimise; counts summed over the epoch)."""
        return out, {}

    def metrics(self, counts: dict) -> dict:
        """History columns computed from the epoch's summed counts."""
        return {}


def lr_factor(cfg: dict, steps_per_epoch: int, total_steps: int):
    """LambdaLR factor of a config section.

    ``lr_policy: step`` (classifier): x ``lr_decay_factor`` at each epoch of ``lr_decay_epochs``; otherwise
    ``lr_schedule`` (poly | cosine; poly where the section has no such key) after ``warmup_steps`` (0 where it
    has none), ``poly_power`` for poly.
    """
    if cfg.get("lr_policy") == "step":
        return step_lambda(steps_per_epoch, cfg["lr_decay_epochs"], cfg["lr_decay_factor"])
    return schedule_lambda(
        cfg.get("lr_schedule", "poly"),
        total_steps,
        warmup_steps=cfg.get("warmup_steps", 0),
        poly_power=cfg["poly_power"],
    )


class Engine:
    """Trains one model with the config section ``cfg`` (named ``section`` in error messages)."""

    def __init__(self, section: str, cfg: dict, *, threads: int = 1, device: str = "auto"):
        self.section, self.cfg = section, cfg
        self.ctx = setup(device)  # one process, or one rank of a data-parallel job
        self.device = self.ctx.device
        torch.set_num_threads(max(1, threads // self.ctx.world))
        seed_everything(cfg["seed"])

    def fit(
        self,
        model: nn.Module,
        objective: Objective,
        *,
        run: dict,
        meta: dict,
        out_model,
        out_history_csv,
        checkpoint_dir,
        what: str,
        find_unused_parameters: bool = False,
    ) -> list[dict]:
        """Train ``model`` on ``objective`` for ``cfg["epochs"]`` epochs; returns the history (one dict per epoch).

        ``run``: what defines the run besides the model (config, split, ids, label digests): a checkpoint
        whose fingerprint differs is not resumed. ``meta`` is saved with the final weights; ``what`` names
        the run in the log. ``find_unused_parameters``: for objectives that leave parts of the model idle in
        some steps (DistributedDataParallel must be told).
        """
        cfg, ctx, device = self.cfg, self.ctx, self.device
        model = model.to(device, memory_format=memory_format(device, cfg["channels_last"]))
        batch_size = min(cfg["batch_size"], len(objective))
        ctx.per_process_batch(batch_size, f"{self.section}.batch_size")
        steps_per_epoch = len(objective) // batch_size
        total_steps = steps_per_epoch * cfg["epochs"]

        pretrained, new = model.param_groups()
        optimizer = make_optimizer(
            cfg.get("optimizer", "sgd"),
            pretrained,
            new,
            lr=cfg["lr"],
            new_layer_lr_mult=cfg["new_layer_lr_mult"],
            momentum=cfg["momentum"],
            weight_decay=cfg["weight_decay"],
            bias_lr_mult=cfg.get("bias_lr_mult", 1.0),
            biases=frozenset(id(p) for name, p in model.named_parameters() if name.endswith(".bias")),
            nesterov=cfg.get("nesterov", False),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
        scaler = grad_scaler(device, cfg["amp"], cfg["amp_dtype"])
        schedule = StateBundle(scheduler=scheduler, scaler=scaler)
        forward = ctx.wrap(LossModule(model, objective.forward), find_unused_parameters=find_unused_parameters)

        settings_hash = fingerprint(run)
        checkpoint = Path(checkpoint_dir) / "last.pt"
        history, start_epoch = resume(checkpoint, settings_hash, model=model, optimizer=optimizer, scheduler=schedule)
        if start_epoch:
            log.info("resumed from %s after epoch %d", checkpoint, start_epoch)
        ctx.decorrelate(cfg["seed"], start_epoch)
        log.info(
            "training %s, %d epochs x %d steps, device %s, %d process(es)",
            what,
            cfg["epochs"],
            steps_per_epoch,
            device,
            ctx.world,
        )

        for epoch in range(start_epoch, cfg["epochs"]):
            data, shuffle = objective.epoch_data(epoch)
            loader = ctx.loader(
                data, batch_size, shuffle=shuffle, seed=cfg["seed"], epoch=epoch, num_workers=cfg["num_workers"]
            )
            model.train()
            start, sums, counts, seen = time.perf_counter(), {}, {}, 0
            for i, batch in enumerate(
                tqdm(
                    loader,
                    desc=f"epoch {epoch + 1}/{cfg['epochs']}",
                    mininterval=10,
                    ascii=True,
                    disable=not ctx.is_main,
                )
            ):
                progress = (epoch * steps_per_epoch + i) / total_steps
                with autocast(device, cfg["amp"], cfg["amp_dtype"]):
                    out = forward(batch, epoch, progress, device)
                terms, batch_counts = objective.loss(out, batch, device)
                optimizer_step(terms["total"].float(), optimizer, scaler, scheduler)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * len(batch[0])
                for name, value in batch_counts.items():
                    counts[name] = counts.get(name, 0) + value
                seen += len(batch[0])
            history.append(self._record(epoch, sums, counts, seen, objective, optimizer, start))
            save_epoch(
                ctx,
                checkpoint,
                model=model,
                optimizer=optimizer,
                scheduler=schedule,
                epoch=epoch + 1,
                settings_hash=settings_hash,
                history=history,
            )

        save_final(ctx, out_model, model, meta, out_history_csv, history, checkpoint)
        return history

    def _record(
        self, epoch: int, sums: dict, counts: dict, seen: int, objective: Objective, optimizer, start: float
    ) -> dict:
        """The epoch's history row: mean loss terms per sample over all processes, metrics, lr, seconds."""
        totals = self.ctx.sum({**sums, **{f"count_{k}": v for k, v in counts.items()}, "": seen})
        seen = totals.pop("")
        counts = {k: totals.pop(f"count_{k}") for k in counts}
        means = {name: round(value / max(seen, 1), 6) for name, value in totals.items()}
        record = {
            "epoch": epoch + 1,
            "loss": means.pop("total", float("nan")),
            **{f"loss_{k}": v for k, v in means.items()},
            **objective.metrics(counts),
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - start, 2),
        }
        log.info("epoch %d: loss %.4f, %.1f s", record["epoch"], record["loss"], record["seconds"])
        return record
