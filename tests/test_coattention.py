"""The co-attention classifier: heads, label algebra, pair sampling, domains, gradients, cached inference."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.cams import coattention as coattention_cams
from wsss_core.cams.coattention import choose_references, coattentive_cams
from wsss_core.cams.infer import infer_cams
from wsss_core.cams.store import CAMReader
from test_classifier import tiny_cfg
from wsss_core.data.demo import TINY, generate
from wsss_core.data.pairs import PairSampler
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models import classifier as classifier_module
from wsss_core.models.backbones import Backbone
from wsss_core.models.cam_head import CAMNet
from wsss_core.models.classifier import build_classifier, load_classifier
from wsss_core.models.coattention import CoAttentionNet, common_labels, domain_pair, exclusive_labels, pair_loss
from wsss_core.train.checkpoint import seed_everything
from wsss_core.train.classifier import train_classifier, warm_start
from wsss_core.train.loop import make_optimizer
from wsss_core.train.coattention import grouped_pair_logits


class ConvBackbone(Backbone):
    """A small random conv net with stride 4, standing in for a real backbone in unit tests."""

    def __init__(self, channels: int = 16):
        super().__init__(channels, 4, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
        self.body = nn.Sequential(
            nn.Conv2d(3, channels, 3, 2, 1), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2, 1), nn.ReLU()
        )

    def forward(self, x):
        return self.body(x)


def net(num_classes=5, domains=("target",), seed=0):
    torch.manual_seed(seed)
    return CoAttentionNet(ConvBackbone(), num_classes, domains).eval()


def test_pair_logits_shapes_and_pair_sizes_may_differ():
    model = net()
    f_m, f_n = torch.rand(3, 16, 6, 5), torch.rand(3, 16, 4, 7)
    co_m, co_n = model.coattend(f_m, f_n)
    assert co_m.shape == f_m.shape and co_n.shape == f_n.shape
    logits = model.pair_logits(f_m, f_n)
    assert sorted(logits) == ["common_m", "common_n", "exclusive_m", "exclusive_n", "single_m", "single_n"]
    assert all(v.shape == (3, 5) for v in logits.values())


def test_coattended_features_are_convex_combinations_of_the_other_image():
    model = net()
    f_m = torch.rand(1, 16, 3, 3)
    f_n = torch.zeros(1, 16, 2, 2)
    f_n[..., 0, 0] = 1.0
    co_m, _ = model.coattend(f_m, f_n)
    # every position of m receives a mix of n's 4 feature vectors: within their bounds, summing like weights
    assert torch.all(co_m >= 0) and torch.all(co_m <= 1)
    assert torch.allclose(co_m[0, 0], co_m[0, 1])  # n's positions carry identical values over channels


@pytest.mark.parametrize("affinity", ["bilinear", "cosine"])
def test_co_cams_equal_the_co_classifier_on_coattended_features(affinity):
    torch.manual_seed(0)
    model = CoAttentionNet(ConvBackbone(), 5, affinity=affinity).eval()
    f_n, f_r = torch.rand(4, 16, 5, 6), torch.rand(4, 16, 7, 3)
    naive = model.co_classifier(model.coattend(f_n, f_r)[0])
    assert torch.allclose(model.co_cams(f_n, f_r), naive, atol=1e-5)


def test_cosine_affinities_start_as_scaled_cosine_similarities_and_ignore_feature_norms():
    model = CoAttentionNet(ConvBackbone(), 5, affinity="cosine", temperature=0.2)
    f_m, f_n = torch.rand(1, 16, 2, 3), torch.rand(1, 16, 3, 2)
    p = model.affinities(model.query(f_m, "target-target"), f_n)[0]
    cos = F.normalize(f_m.flatten(2)[0], dim=0).T @ F.normalize(f_n.flatten(2)[0], dim=0)
    assert torch.allclose(p, cos / 0.2, atol=1e-5)
    # a position of n ten times stronger draws no more attention (the bilinear form's failure mode)
    strong = f_n.clone()
    strong[..., 0, 0] *= 10
    assert torch.allclose(model.affinities(model.query(f_m, "target-target"), strong)[0], p, atol=1e-5)
    with pytest.raises(ValueError, match="classifier.coattention.affinity: 'dot'"):
        CoAttentionNet(ConvBackbone(), 5, affinity="dot")


def test_label_algebra_with_empty_sets():
    l_m = torch.tensor([[1.0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]])
    l_n = torch.tensor([[0.0, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0]])
    assert common_labels(l_m, l_n).tolist() == [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    assert exclusive_labels(l_m, l_n).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    assert exclusive_labels(l_n, l_m).tolist() == [[0, 0, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]]


def test_pair_loss_skips_empty_contrastive_targets():
    torch.manual_seed(0)
    logits = {
        k: torch.randn(2, 3) for k in ("single_m", "single_n", "common_m", "common_n", "exclusive_m", "exclusive_n")
    }
    same = torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    assert pair_loss(logits, same, same, contrastive=True)["exclusive"] == 0  # nothing to contrast
    assert pair_loss(logits, same, same, contrastive=False)["exclusive"] == 0
    l_n = torch.tensor([[1.0, 0, 0], [0, 1, 0]])  # pair 0: m has class 3 alone; pair 1: identical
    terms = pair_loss(logits, same, l_n, contrastive=True)
    expected = F.multilabel_soft_margin_loss(logits["exclusive_m"][:1], torch.tensor([[0.0, 0, 1]]))
    assert terms["exclusive"] == pytest.approx(expected.item())
    assert terms["total"] == pytest.approx((terms["single"] + terms["common"] + terms["exclusive"]).item())


def test_pair_sampler_guarantees_a_shared_class_and_covers_every_labelled_image():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=(60, 6)) < 0.25).astype(np.float32)
    labels[5] = 0  # an unlabelled image is never m
    labels[7] = 0
    labels[7, 5] = 1  # class 6 only in image 7 ...
    labels[:, 5] = 0
    labels[7, 5] = 1
    sampler = PairSampler(labels, seed=3)
    pairs = sampler.epoch(0)
    assert sorted(p.m for p in pairs) == [i for i in range(60) if labels[i].any()]
    for p in pairs:
        assert labels[p.m, p.shared_class - 1] and labels[p.n, p.shared_class - 1]
        assert p.n != p.m or labels[:, p.shared_class - 1].sum() == 1
    assert [p for p in pairs if p.m == 7][0].n == 7  # ... pairs with itself
    assert sampler.epoch(0) == pairs and sampler.epoch(1) != pairs
    assert PairSampler(labels, seed=3).epoch(1) == sampler.epoch(1)


def test_each_domain_pair_has_its_own_affinity_weights():
    model = net(domains=("target", "web"))
    assert sorted(model.affinity) == ["target-target", "target-web", "web-web"]
    assert domain_pair("web", "target") == domain_pair("target", "web") == "target-web"
    f_m, f_n = torch.rand(4, 16, 4, 4), torch.rand(4, 16, 4, 4)
    keys = ["target-target", "target-web", "target-target", "web-web"]
    before = grouped_pair_logits(model, f_m, f_n, keys)
    with torch.no_grad():
        model.affinity["target-web"].weight.mul_(3.0)
    after = grouped_pair_logits(model, f_m, f_n, keys)
    changed = (before["common_m"] - after["common_m"]).abs().sum(1) > 1e-6
    assert changed.tolist() == [False, True, False, False]
    for i, key in enumerate(keys):  # a grouped batch equals each pair on its own
        alone = model.pair_logits(f_m[i : i + 1], f_n[i : i + 1], key)
        assert torch.allclose(alone["common_n"][0], after["common_n"][i], atol=1e-6)
    with pytest.raises(KeyError, match="extra-target"):
        model.pair_logits(f_m, f_n, "extra-target")


def test_gradients_reach_the_affinity_and_the_gate():
    model = net().train()
    x_m, x_n = torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    l_m, l_n = torch.tensor([[1.0, 1, 0, 0, 0], [0, 1, 0, 0, 1]]), torch.tensor([[1.0, 0, 0, 0, 0], [0, 1, 0, 0, 0]])
    logits = model.pair_logits(model.features(x_m), model.features(x_n))
    pair_loss(logits, l_m, l_n, contrastive=True)["total"].backward()
    for param in (
        model.affinity["target-target"].weight,
        model.gate.weight,
        model.co_classifier.weight,
        model.classifier.weight,
        model.backbone.body[0].weight,
    ):
        assert param.grad is not None and param.grad.abs().sum() > 0
    pretrained, new = model.param_groups()
    new_ids = {id(p) for p in new}
    assert id(model.affinity["target-target"].weight) in new_ids and id(model.gate.weight) in new_ids


def test_references_are_seeded_distinct_and_share_the_class():
    labels = np.zeros((10, 3))
    labels[[0, 2, 3, 7, 9], 1] = 1
    chosen = choose_references(labels, 3, 2, 3, seed=0)
    assert len(chosen) == 3 and 3 not in chosen and set(chosen) <= {0, 2, 7, 9}
    assert chosen == choose_references(labels, 3, 2, 3, seed=0)
    assert choose_references(labels, 3, 2, 10, seed=0) == [0, 2, 7, 9]
    assert choose_references(labels, 3, 1, 3, seed=0) == []  # nobody has class 1


def _save_model(model, dataset: VOCDataset, path):
    meta = {
        "arch": {"method": "coattention", "backbone": "test", "output_stride": 4, "domains": ["target"]},
        "classes": list(dataset.classes),
        "stride": 4,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    torch.save({"state_dict": model.state_dict(), "meta": meta}, path)


def _naive_multiround(model, dataset, ids, index, scales, references, seed, floor=0.1):
    """The multi-round CAMs of one image computed pair by pair, every feature map from its own forward pass."""
    labels = dataset.label_matrix(ids)

    def features(image_id, scale=1.0, mirror=False):
        x = torch.from_numpy(dataset.load_image(image_id)).permute(2, 0, 1)[None].float() / 255
        x = (x - 0.5) / 0.25
        if scale != 1:
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False, recompute_scale_factor=False)
        return model.features(x.flip(-1) if mirror else x)

    def up(m):
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False)[0]

    def unit(m):
        m = m.clamp_min(0)
        return m / (m.flatten(-2).amax(-1)[..., None, None] + 1e-5)

    image_id = ids[index]
    size = dataset.load_image(image_id).shape[:2]
    f_1 = features(image_id)
    co = model.co_classifier
    self_maps = []
    for scale in scales:
        for mirror in (False, True):
            if scale == 1 and not mirror:
                continue
            m = co(model.coattend(features(image_id, scale, mirror), f_1)[0])
            self_maps.append(up(m.flip(-1) if mirror else m))
    own = up(co(model.coattend(f_1, features(image_id, 1, True))[0]))  # n given its mirror: always kept

    def kept(m):  # the reference code's filter: sigmoid(mean score) > 0.1
        return float(torch.sigmoid(m.mean()) > floor)

    class_ids = dataset.labels(image_id)
    out = []
    for class_id in class_ids:
        maps = [unit(own[class_id - 1])] + [unit(m[class_id - 1]) * kept(m[class_id - 1]) for m in self_maps]
        chosen = choose_references(labels, index, class_id, references, seed)
        ref = sum(co(model.coattend(f_1, features(ids[r]))[0])[:, class_id - 1 : class_id] for r in chosen)
        ref = up(ref / len(chosen))[0]
        maps.append(unit(ref) * kept(ref))
        out.append(unit(sum(maps) / len(maps)))
    return torch.stack(out)


@pytest.mark.parametrize("floor", [0.1, 0.7])
def test_cached_multiround_cams_equal_a_naive_pair_by_pair_computation(tiny_demo, tmp_path, monkeypatch, floor):
    monkeypatch.setattr(classifier_module, "build_backbone", lambda name, **kw: ConvBackbone())
    # floor 0.7 (mean score 0.85) drops some of this random network's maps: the filter is exercised
    monkeypatch.setattr(coattention_cams, "MIN_MEAN_LOGIT", math.log(floor / (1 - floor)))
    ds = VOCDataset(tiny_demo)
    model = net(num_classes=ds.num_classes - 1, seed=1)
    _save_model(model, ds, tmp_path / "model.pt")
    scales = [1.0, 0.5]
    summary = coattentive_cams(
        tiny_demo,
        "train",
        tmp_path / "model.pt",
        tmp_path / "single.h5",
        tmp_path / "multi.h5",
        scales=scales,
        references=2,
        seed=4,
        batch_size=4,
    )
    ids = ds.ids("train")
    assert summary["images"] == len(ids) and summary["reference_pairs"] > len(ids)
    assert not list(tmp_path.glob(".*features*"))  # the feature cache is gone
    with torch.no_grad(), CAMReader(tmp_path / "multi.h5") as multi:
        for index in (0, 5, len(ids) - 1):
            cams, class_ids = multi.read(ids[index])
            assert class_ids == ds.labels(ids[index])
            naive = _naive_multiround(model, ds, ids, index, scales, references=2, seed=4, floor=floor)
            assert np.abs(cams - naive.numpy()).max() < 2e-3  # fp16 store and fp16 feature cache
    # single-round maps = plain CAM inference of the same network
    infer_cams(tiny_demo, "train", tmp_path / "model.pt", tmp_path / "plain.h5", scales=scales, batch_size=4)
    with CAMReader(tmp_path / "single.h5") as a, CAMReader(tmp_path / "plain.h5") as b:
        for image_id in ids[:5]:
            assert np.abs(a.read(image_id)[0] - b.read(image_id)[0]).max() < 2e-3


def coattention_cfg(**changes):
    cfg = tiny_cfg(method="coattention", epochs=2, batch_size=4)
    cfg["coattention"] = {
        **cfg["coattention"],
        "self_pair_flip": True,
        "self_pair_scales": [0.75],
        "contrastive_from_epoch": 1,
        "extra_sources": [],
    }
    cfg.update(changes)
    return cfg


def test_coattention_training_logs_every_loss_term_and_loads_back(tiny_demo, tmp_path):
    cfg = coattention_cfg()
    out = dict(out_model=tmp_path / "m.pt", out_history_csv=tmp_path / "h.csv", checkpoint_dir=tmp_path / "ck")
    summary = train_classifier(tiny_demo, "train", cfg, **out)
    assert summary["images"] == len(VOCDataset(tiny_demo).ids("train"))  # every image is m once per epoch
    history = pd.read_csv(tmp_path / "h.csv")
    assert list(history.columns) == [
        "epoch",
        "loss",
        "loss_single",
        "loss_common",
        "loss_exclusive",
        "loss_self",
        "lr",
        "seconds",
    ]
    assert history["loss_exclusive"][0] == 0 and history["loss_exclusive"][1] > 0  # contrastive from epoch 1
    terms = history[["loss_single", "loss_common", "loss_exclusive", "loss_self"]].sum(axis=1)
    assert np.allclose(terms, history["loss"], atol=1e-4)
    model, meta = load_classifier(tmp_path / "m.pt")
    assert isinstance(model, CoAttentionNet) and meta["arch"]["domains"] == ["target"]


def test_an_extra_image_source_is_its_own_domain(tiny_demo, tmp_path):
    extra = tmp_path / "web"
    generate(extra, **{**TINY, "seed": 5, "n_images": 16})
    cfg = coattention_cfg(epochs=1)
    cfg["coattention"]["extra_sources"] = [{"domain": "web", "root": str(extra), "split": "train"}]
    out = dict(out_model=tmp_path / "m.pt", out_history_csv=tmp_path / "h.csv", checkpoint_dir=tmp_path / "ck")
    summary = train_classifier(tiny_demo, "train", cfg, **out)
    n_target, n_extra = len(VOCDataset(tiny_demo).ids("train")), len(VOCDataset(extra).ids("train"))
    assert summary["images"] == n_target + n_extra
    model, meta = load_classifier(tmp_path / "m.pt")
    assert meta["arch"]["domains"] == ["target", "web"]
    assert sorted(model.affinity) == ["target-target", "target-web", "web-web"]
    # every domain pair's W_P was trained: it moved away from its initialisation (rebuilt as the trainer does)
    seed_everything(cfg["seed"])
    init = build_classifier(meta["arch"], len(meta["classes"]) - 1, weights="random", frozen_bn=cfg["frozen_bn"])
    for key in model.affinity:
        assert not torch.equal(model.affinity[key].weight, init.affinity[key].weight), key
    bad = tmp_path / "bad"
    generate(bad, **{**TINY, "n_classes": 3})
    cfg["coattention"]["extra_sources"] = [{"domain": "web", "root": str(bad), "split": "train"}]
    with pytest.raises(ValueError, match=r"classifier.coattention.extra_sources\[0\]"):
        train_classifier(tiny_demo, "train", cfg, **out)


def test_head_convs_sit_between_backbone_and_every_head_and_learn_as_new_layers():
    torch.manual_seed(0)
    model = CoAttentionNet(ConvBackbone(), 5, head_convs=2, head_channels=12)
    x = torch.randn(2, 3, 32, 32)
    feats = model.features(x)
    assert feats.shape == (2, 12, 8, 8) and (feats >= 0).all()  # ReLU'd head output
    assert model.classifier.in_channels == model.co_classifier.in_channels == model.gate.in_channels == 12
    pretrained, new = model.param_groups()
    head = {id(p) for p in model.head.parameters()}
    assert len(head) == 4 and head <= {id(p) for p in new} and not head & {id(p) for p in pretrained}
    # the plain CAMs read the head's features: cams() and forward() agree on it
    assert torch.allclose(model.cams(x).mean(dim=(2, 3)), model(x), atol=1e-5)
    plain = CoAttentionNet(ConvBackbone(), 5, head_convs=0)
    assert isinstance(plain.head, nn.Identity) and plain.classifier.in_channels == 16


def test_saved_head_settings_rebuild_the_same_network(tmp_path, monkeypatch):
    monkeypatch.setattr(classifier_module, "build_backbone", lambda *a, **k: ConvBackbone())
    arch = {"method": "coattention", "backbone": "x", "output_stride": 4, "head_convs": 1, "head_channels": 8}
    model = classifier_module.build_classifier(arch, 5)
    meta = {"arch": arch, "classes": ["background", *"abcde"]}
    torch.save({"state_dict": model.state_dict(), "meta": meta}, tmp_path / "m.pt")
    loaded, _ = load_classifier(tmp_path / "m.pt")
    assert loaded.head[0].out_channels == 8
    # classifiers saved before the head existed have no head keys: they load as head-less networks
    old = classifier_module.build_classifier({k: v for k, v in arch.items() if not k.startswith("head")}, 5)
    assert isinstance(old.head, nn.Identity)


def test_bias_groups_get_their_multiple_of_their_layers_rate():
    model = CoAttentionNet(ConvBackbone(), 5, head_convs=1, head_channels=8)
    pretrained, new = model.param_groups()
    biases = frozenset(id(p) for n, p in model.named_parameters() if n.endswith(".bias"))
    opt = make_optimizer(
        "sgd", pretrained, new, lr=0.01, new_layer_lr_mult=10, momentum=0.9, weight_decay=5e-4,
        bias_lr_mult=2, biases=biases, nesterov=True,
    )  # fmt: skip
    rates = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    new_ids = {id(q) for q in new}
    for name, p in model.named_parameters():
        layer = 0.1 if id(p) in new_ids else 0.01
        assert rates[id(p)] == pytest.approx(layer * (2 if name.endswith(".bias") else 1)), name
    assert all(g["nesterov"] for g in opt.param_groups) and len(opt.param_groups) == 4
    assert len(rates) == len(pretrained) + len(new)


def test_warm_start_copies_the_baselines_backbone_and_rejects_other_networks(tmp_path):
    torch.manual_seed(0)
    base = CAMNet(ConvBackbone(), 5)
    path = tmp_path / "cam.pt"
    meta = {"arch": {"method": "cam", "backbone": "conv", "output_stride": 4}, "classes": ["background", *"abcde"]}
    torch.save({"state_dict": base.state_dict(), "meta": meta}, path)
    for convs in (0, 2):
        torch.manual_seed(1)
        co = CoAttentionNet(ConvBackbone(), 5, head_convs=convs, head_channels=8)
        warm_start(co, path)
        for key, value in base.backbone.state_dict().items():
            assert torch.equal(co.backbone.state_dict()[key], value), key
        # the class conv comes along only where it reads the same features
        assert torch.equal(co.classifier.weight, base.classifier.weight) == (convs == 0)
        # ... into the co-attention class conv too, which makes the co-attention and multi-round maps
        assert torch.equal(co.co_classifier.weight, base.classifier.weight) == (convs == 0)
    with pytest.raises(ValueError, match=r"warm_start: .*cam.pt \(conv, output stride 4\) does not fit"):
        warm_start(CoAttentionNet(ConvBackbone(channels=8), 5), path)
    torch.save({"state_dict": base.state_dict(), "meta": {**meta, "arch": {**meta["arch"], "method": "x"}}}, path)
    with pytest.raises(ValueError, match="warm_start: .* is a 'x' classifier"):
        warm_start(CoAttentionNet(ConvBackbone(), 5), path)


def test_fusion_keeps_maps_whose_mean_score_passes_the_reference_filter():
    maps = torch.stack([torch.full((3, 4), -3.0), torch.full((3, 4), -2.0), torch.zeros(3, 4)])
    maps[0, 0, 0] = 5.0  # a peak does not save a map whose mean is low
    assert coattention_cams.kept(maps).flatten().tolist() == [0.0, 1.0, 1.0]
