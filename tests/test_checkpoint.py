"""Training checkpoints that cannot be read are moved aside and training starts fresh."""

import logging

import pytest
import torch

from test_classifier import tiny_cfg
from wsss_core.train.checkpoint import load_checkpoint, resume, save_checkpoint
from wsss_core.train.classifier import train_classifier


def parts():
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return dict(model=model, optimizer=optimizer, scheduler=scheduler)


def truncated_checkpoint(path):
    save_checkpoint(path, **parts(), epoch=1, settings_hash="h", history=[{"epoch": 1}])
    data = path.read_bytes()
    return data[: len(data) // 2]


@pytest.mark.parametrize("kind", ["garbage", "empty", "truncated", "not_a_dict"])
def test_unreadable_checkpoint_is_moved_aside_and_training_starts_fresh(tmp_path, caplog, kind):
    path = tmp_path / "checkpoints" / "last.pt"
    path.parent.mkdir()
    if kind == "not_a_dict":
        torch.save([1, 2, 3], path)
        bad = path.read_bytes()
    else:
        bad = {"garbage": b"\x00not a checkpoint\xff" * 50, "empty": b"", "truncated": truncated_checkpoint(path)}[kind]
        path.write_bytes(bad)
    aside = tmp_path / "checkpoints" / "last.pt.corrupt"
    aside.write_bytes(b"an older corrupt checkpoint")  # replaced by the newer one

    with caplog.at_level(logging.WARNING, logger="wsss_core.train.checkpoint"):
        assert resume(path, "h", **parts()) == ([], 0)
    assert not path.exists() and aside.read_bytes() == bad
    [record] = [r for r in caplog.records if r.name == "wsss_core.train.checkpoint"]
    message = record.getMessage()
    assert message.startswith(f"checkpoint {path} is unreadable (") and "\n" not in message
    assert message.endswith(f": moved aside to {aside}, training starts fresh")
    assert load_checkpoint(path, "h") is None  # and the next run simply finds no checkpoint


def test_readable_checkpoints_are_left_in_place(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, **parts(), epoch=3, settings_hash="h", history=[{"epoch": e} for e in (1, 2, 3)])
    history, epoch = resume(path, "h", **parts())
    assert epoch == 3 and len(history) == 3
    assert load_checkpoint(path, "other settings") is None and path.exists()  # other settings: ignored, kept
    assert not (tmp_path / "last.pt.corrupt").exists()


def test_classifier_training_survives_a_corrupt_checkpoint(tmp_path, tiny_demo, caplog):
    cfg = tiny_cfg(epochs=1)
    checkpoint = tmp_path / "ck" / "last.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"PK\x03\x04 cut short")
    out = dict(out_model=tmp_path / "m.pt", out_history_csv=tmp_path / "h.csv", checkpoint_dir=checkpoint.parent)
    with caplog.at_level(logging.INFO):
        summary = train_classifier(tiny_demo, "train", cfg, **out)
    assert summary["epochs"] == 1 and len((tmp_path / "h.csv").read_text().splitlines()) == 2
    assert (checkpoint.parent / "last.pt.corrupt").read_bytes() == b"PK\x03\x04 cut short"
    assert not checkpoint.exists()  # the finished model superseded the fresh run's checkpoint
    assert f"checkpoint {checkpoint} is unreadable" in caplog.text and "resumed from" not in caplog.text


def test_a_checkpoint_that_cannot_be_opened_is_not_moved(tmp_path, monkeypatch):
    """Permission and I/O errors say nothing about the bytes: raised, the file left where it is."""
    from wsss_core.train import checkpoint as checkpoint_module

    path = tmp_path / "last.pt"
    save_checkpoint(path, **parts(), epoch=1, settings_hash="h", history=[])

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint_module.torch, "load", denied)
    monkeypatch.setattr(checkpoint_module, "open", denied, raising=False)
    with pytest.raises(PermissionError):
        load_checkpoint(path, "h")
    assert path.exists() and not (tmp_path / "last.pt.corrupt").exists()
