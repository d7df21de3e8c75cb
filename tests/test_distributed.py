"""Data-parallel training: two gloo processes on the CPU take the steps one process takes on the same batches."""

import os
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader, Dataset

from conftest import REPO
from test_classifier import tiny_cfg
from test_train_segmentation import seg_cfg
from wsss_core.models.backbones import EfficientNetLite0Backbone
from wsss_core.train.classifier import train_classifier
from wsss_core.train.distributed import Context, GlobalBatches, launch, processes_for
from wsss_core.train.loop import epoch_generator
from wsss_core.train.segmentation import train_segmentation


class Indices(Dataset):
    def __len__(self):
        return 37

    def __getitem__(self, i):
        return i


def test_one_process_draws_the_batches_of_a_shuffling_dataloader():
    plain = DataLoader(Indices(), batch_size=8, shuffle=True, drop_last=True, generator=epoch_generator(3, 1))
    g = epoch_generator(3, 1)
    ours = DataLoader(Indices(), batch_sampler=GlobalBatches(37, 8, 0, 1, shuffle=True, generator=g), generator=g)
    assert [b.tolist() for b in plain] == [b.tolist() for b in ours] and len(ours) == 4


def test_ranks_split_every_global_batch_without_overlap():
    single = list(GlobalBatches(37, 8, 0, 1, shuffle=True, generator=epoch_generator(0, 2)))
    ranks = [list(GlobalBatches(37, 8, r, 2, shuffle=True, generator=epoch_generator(0, 2))) for r in (0, 1)]
    for step, batch in enumerate(single):
        assert ranks[0][step] + ranks[1][step] == batch and len(ranks[0][step]) == 4
    assert list(GlobalBatches(5, 2, 1, 2, shuffle=False, generator=None)) == [[1], [3]]


def test_uneven_global_batch_is_refused_naming_the_key():
    with pytest.raises(ValueError, match="config key classifier.batch_size: the global batch 6 does not split .* 4"):
        Context(rank=0, world=4).per_process_batch(6, "classifier.batch_size")
    assert Context(rank=1, world=2).per_process_batch(8, "x") == 4


def test_processes_one_per_gpu_and_one_without_cuda():
    assert processes_for([]) == 1 and processes_for(["0"]) == 1
    assert processes_for(["0", "1"]) == (2 if torch.cuda.is_available() else 1)


# No random augmentation (64-px crops of 64-px images, no flip, no jitter) and no stochastic layer (EfficientNet's
# drop-connect off: each process draws those masks for its own images), two SGD steps on one global batch of 8:
# both runs compute the same function on the same pixels, and differ only by fp32 summation order (each rank
# averages 4 images' gradients, the all-reduce averages the two means). After the first step that is rounding
# (measured ~3e-8); the second step's gradient on these flat synthetic images is sensitive to weight changes of
# that size (3e-8 of weight noise moved the gradient by 1.6e-4 relative in a probe), so two steps are compared,
# not many, with a tolerance of 1e-4 (measured: CAM 6e-8, co-attention 7e-6, segmentation 1e-7). A missing
# gradient average, a wrong batch split or a per-process loss mean show up at 6e-4 or more (the last of these,
# measured on segmentation before its loss was normalised by the global pixel count).
DETERMINISTIC = dict(
    resize_long=[64, 64],
    crop_size=64,
    flip=False,
    color_jitter=0.0,
    epochs=2,
    batch_size=8,
    lr=0.005,
    weights="imagenet",
)


TRAINERS = {"classifier": train_classifier, "segmentation": train_segmentation}


def train_without_drop_connect(trainer: str, *args, **kwargs):
    """``TRAINERS[trainer](...)`` with EfficientNet's drop-connect off; the ranks import this module to run it."""
    init = EfficientNetLite0Backbone.__init__

    def deterministic_init(self, *a, **k):
        init(self, *a, **k)
        self._drop_connect_rate = 0.0

    EfficientNetLite0Backbone.__init__ = deterministic_init
    try:
        return TRAINERS[trainer](*args, **kwargs)
    finally:
        EfficientNetLite0Backbone.__init__ = init


def run_both(trainer: str, cfg: dict, tmp_path, tiny_demo, monkeypatch) -> dict:
    """One process, then two gloo processes (torchrun), on the same config; their return values."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    runs = {}
    for name, procs in (("single", 1), ("ddp", 2)):
        out = dict(
            out_model=str(tmp_path / f"{name}.pt"),
            out_history_csv=str(tmp_path / f"{name}.csv"),
            checkpoint_dir=str(tmp_path / f"ckpt_{name}"),
        )
        args = (trainer, str(tiny_demo), "val", cfg)  # 10 images: one step of 8 per epoch
        runs[name] = (
            train_without_drop_connect(*args, **out)
            if procs == 1
            else launch(train_without_drop_connect, procs, *args, **out)
        )
    return runs


def _compare(single, parallel):
    a = torch.load(single, weights_only=True)["state_dict"]
    b = torch.load(parallel, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < 1e-4, worst
    return worst


@pytest.mark.parametrize("method", ["cam", "coattention"])
def test_two_gloo_processes_match_one_process_on_the_same_global_batch(tmp_path, tiny_demo, method, monkeypatch):
    cfg = tiny_cfg(method=method, **DETERMINISTIC)
    if method == "coattention":
        defaults = yaml.safe_load((REPO / "config.yaml").read_text())["classifier"]["coattention"]
        # the contrastive term is left out: it averages over the pairs with something to contrast, which
        # each process counts in its own share (as the reference code counts per batch), so it is
        # equal to one process's in expectation, not step by step
        cfg["coattention"] = {
            **defaults,
            **cfg["coattention"],
            "self_pair_flip": False,
            "contrastive_from_epoch": 9,
            # a new ReLU head at 10x / 20x rates turns summation-order noise into 3e-4 weight differences in two
            # epochs; its gradients are all-reduced like every other new layer's
            "head_convs": 0,
            "epochs": None,
            "batch_size": None,
            "lr": None,
        }
    runs = run_both("classifier", cfg, tmp_path, tiny_demo, monkeypatch)
    worst = _compare(tmp_path / "single.pt", tmp_path / "ddp.pt")
    print(f"{method}: max |w_1proc - w_2proc| = {worst:.2e}")
    # the epoch losses are all-reduced over the ranks: the same mean as one process's
    single, ddp = (open(tmp_path / f"{n}.csv").read().splitlines() for n in ("single", "ddp"))
    for row_a, row_b in zip(single[1:], ddp[1:]):
        loss_a, loss_b = float(row_a.split(",")[1]), float(row_b.split(",")[1])
        assert loss_a == pytest.approx(loss_b, abs=1e-4)
    losses = [float(row.split(",")[1]) for row in single[1:]]
    assert abs(losses[1] - losses[0]) > 1e-2  # it did learn: the weights moved far more than the tolerance
    assert runs["ddp"]["final_loss"] == pytest.approx(runs["single"]["final_loss"], abs=1e-4)
    assert not (tmp_path / "ckpt_ddp" / "last.pt").exists()  # rank 0 removed it after writing the model


def test_segmentation_in_two_processes_matches_one(tmp_path, tiny_demo, monkeypatch):
    # DeepLab-LargeFOV: no BatchNorm trained in the head (v3+'s head BN needs SyncBatchNorm, CUDA only)
    # (and a loss normalised by the global batch's non-void pixels, see segmentation_loss's mean_over)
    cfg = seg_cfg(
        model="deeplab_largefov",
        weights="imagenet",
        crop_size=64,
        scale_range=[1.0, 1.0],
        flip=False,
        color_jitter=0.0,
        epochs=2,
        batch_size=8,
    )
    runs = run_both("segmentation", cfg, tmp_path, tiny_demo, monkeypatch)
    worst = _compare(tmp_path / "single.pt", tmp_path / "ddp.pt")
    print(f"segmentation: max |w_1proc - w_2proc| = {worst:.2e}")
    assert runs["ddp"]["final_loss"] == pytest.approx(runs["single"]["final_loss"], abs=1e-4)
    assert runs["ddp"]["final_pixel_acc"] == runs["single"]["final_pixel_acc"]


def test_a_failing_rank_fails_the_launch_with_its_traceback_in_the_output(tmp_path, tiny_demo, capfd):
    cfg = tiny_cfg(batch_size=3)  # 3 images do not split over 2 processes
    with pytest.raises(RuntimeError, match="data-parallel training .*2 processes.* failed"):
        launch(
            train_classifier,
            2,
            str(tiny_demo),
            "train",
            cfg,
            out_model=str(tmp_path / "m.pt"),
            out_history_csv=str(tmp_path / "h.csv"),
            checkpoint_dir=str(tmp_path / "c"),
        )
    assert "config key classifier.batch_size" in capfd.readouterr().err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data parallelism needs two CUDA devices")
def test_two_gpus_match_one_gpu(tmp_path, tiny_demo, monkeypatch):
    cfg = tiny_cfg(**DETERMINISTIC)
    runs = run_both("classifier", cfg, tmp_path, tiny_demo, monkeypatch)  # cuda:0, then cuda:0 + cuda:1
    worst = _compare(tmp_path / "single.pt", tmp_path / "ddp.pt")
    print(f"CUDA: max |w_1gpu - w_2gpu| = {worst:.2e}")
    assert runs["ddp"]["final_loss"] == pytest.approx(runs["single"]["final_loss"], abs=1e-3)
