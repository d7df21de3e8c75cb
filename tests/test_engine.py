"""The training engine on a toy objective: history rows, counts turned into metrics, resume after a kill to the
same weights, a changed run starting fresh, and the LR schedule each config section asks for."""

import csv

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from wsss_core.models.saved import load_saved
from wsss_core.train import checkpoint as checkpoint_module
from wsss_core.train import classifier, engine
from wsss_core.train import segmentation as segmentation_trainer
from wsss_core.train.affinity import train_affinity
from wsss_core.train.engine import Engine, Objective, lr_factor

CFG = dict(
    seed=3,
    epochs=3,
    batch_size=4,
    lr=0.05,
    new_layer_lr_mult=10,
    momentum=0.9,
    weight_decay=1e-4,
    poly_power=0.9,
    num_workers=0,
    amp=False,
    amp_dtype="float16",
    channels_last=False,
)


class Toy(nn.Module):
    """A pretrained layer and a new head (the two parameter groups of every network here)."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(3, 5), nn.Linear(5, 2)

    def param_groups(self):
        return list(self.body.parameters()), list(self.head.parameters())

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))


class ToyObjective(Objective):
    """Cross-entropy split into two logged terms, plus a counted accuracy."""

    def __init__(self, n: int = 18):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(n, 3, generator=g)
        self.data = TensorDataset(x, (x[:, 0] > 0).long())

    def forward(self, model, batch, epoch, progress, device):
        return model(batch[0].to(device))

    def loss(self, logits, batch, device):
        labels = batch[1].to(device)
        ce = nn.functional.cross_entropy(logits, labels)
        reg = 1e-3 * logits.pow(2).mean()
        counts = {"correct": int((logits.argmax(1) == labels).sum()), "total": len(labels)}
        return {"ce": ce, "reg": reg, "total": ce + reg}, counts

    def metrics(self, counts):
        return {"acc": round(counts["correct"] / counts["total"], 6)}


def fit(tmp_path, name: str, cfg: dict = CFG, run: dict | None = None):
    eng = Engine("toy", cfg, device="cpu")
    model = Toy()
    history = eng.fit(
        model,
        ToyObjective(),
        run=run or {"cfg": cfg},
        meta={"note": name},
        out_model=tmp_path / f"{name}.pt",
        out_history_csv=tmp_path / f"{name}.csv",
        checkpoint_dir=tmp_path / f"ck_{name}",
        what="a toy",
    )
    return history, model


def test_history_rows_hold_terms_metrics_lr_and_seconds(tmp_path):
    history, model = fit(tmp_path, "a")
    with open(tmp_path / "a.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "loss_ce", "loss_reg", "acc", "lr", "seconds"]
    assert [r["epoch"] for r in rows] == ["1", "2", "3"] and len(history) == 3
    for record in history:
        assert record["loss"] == pytest.approx(record["loss_ce"] + record["loss_reg"], abs=2e-6)
        assert 0 <= record["acc"] <= 1
    # 18 samples, batches of 4: 4 steps per epoch, the last 2 samples dropped; poly decay towards 0
    assert history[0]["lr"] == pytest.approx(CFG["lr"] * (1 - 4 / 12) ** 0.9) and history[-1]["lr"] == 0
    assert history[-1]["acc"] > history[0]["acc"] or history[-1]["loss"] < history[0]["loss"]
    saved, meta = load_saved(tmp_path / "a.pt", lambda meta: Toy())
    assert meta == {"note": "a"} and not (tmp_path / "ck_a" / "last.pt").exists()
    for a, b in zip(model.state_dict().values(), saved.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_killed_run_resumes_to_the_same_weights_and_a_changed_run_starts_fresh(tmp_path, monkeypatch):
    _, whole = fit(tmp_path, "whole")
    real_save = checkpoint_module.save_checkpoint
    saved_epochs, die_after = [], [2]

    def save_then_die(path, **state):
        real_save(path, **state)
        saved_epochs.append(state["epoch"])
        if state["epoch"] in die_after:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(checkpoint_module, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "cut")
    history, resumed = fit(tmp_path, "cut")
    assert saved_epochs == [1, 2, 3] and [r["epoch"] for r in history] == [1, 2, 3]
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

    # a checkpoint of another run (other labels, say) is not resumed: all three epochs run again
    saved_epochs.clear()
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, "other")
    die_after.clear()
    fit(tmp_path, "other", run={"cfg": CFG, "labels": "changed"})
    assert saved_epochs == [1, 2, 1, 2, 3]


def test_per_process_batch_and_schedules_follow_the_config_section(tmp_path):
    with pytest.raises(ValueError, match="config key toy.lr_schedule|unknown learning-rate schedule 'linear'"):
        fit(tmp_path, "bad", dict(CFG, lr_schedule="linear"))
    step = lr_factor(dict(CFG, lr_policy="step", lr_decay_epochs=[1, 2], lr_decay_factor=0.1), 4, 12)
    assert [step(s) for s in (0, 3, 4, 8)] == pytest.approx([1, 1, 0.1, 0.01])
    warm = lr_factor(dict(CFG, lr_schedule="cosine", warmup_steps=2), 4, 12)
    assert warm(0) == pytest.approx(1 / 3) and warm(2) == pytest.approx(1.0) and warm(12) == pytest.approx(0.0)


def test_the_three_trainers_run_the_engine_and_no_loop_of_their_own(monkeypatch):
    import inspect

    for module in (classifier, segmentation_trainer, inspect.getmodule(train_affinity)):
        source = inspect.getsource(module)
        assert "Engine(" in source and ".fit(" in source, module.__name__
        assert "for epoch in" not in source and "optimizer_step" not in source, module.__name__
    assert "for epoch in" in inspect.getsource(engine)
