"""What the co-attention classifier learns from: pairs of images sharing a class, plus self-pairs.

:class:`CoAttentionObjective` is the classifier trainer's (``train/classifier.py``) objective for
the training engine (``train/engine.py``), which owns the loop, optimizer, schedule and checkpoints. Per step, for a batch of pairs (m, n):

* the pair loss of :func:`wsss_core.models.coattention.pair_loss` (single-image, co-attention
  and, from epoch ``contrastive_from_epoch`` on, contrastive co-attention terms);
* one self-pair per view of m (its mirror image and rescaled copies, as in the reference
  implementation): m and its view share all of m's classes, so both heads learn l_m there.

Every term has weight 1 (the paper's setting). Loss add-ons (Puzzle-CAM, binomial) add their terms
on m's single-image CAMs, as they would for the CAM baseline. Backbone features of m, n and m's mirror share
one forward pass (same crop size); each rescaled view needs one more.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from wsss_core.data.pairs import PairSampler
from wsss_core.data.transforms import Augment
from wsss_core.data.voc_layout import VOCDataset
from wsss_core.models.coattention import CoAttentionNet, domain_pair, pair_loss
from wsss_core.train.addons import add_terms
from wsss_core.train.engine import Objective


@dataclass
class ImageSource:
    """One domain of training images: a dataset in the VOC layout and the ids used from it."""

    domain: str
    dataset: VOCDataset
    ids: list[str]


class ImagePairs(Dataset):
    """(image m, image n, labels m, labels n, index of (m, n)'s domain pair, index of (m, m)'s) per pair."""

    def __init__(
        self, sources: list[ImageSource], labels: torch.Tensor, pairs, augment: Augment, pair_names: list[str]
    ):
        self.items = [(s.dataset, image_id, s.domain) for s in sources for image_id in s.ids]
        self.labels, self.pairs, self.augment, self.pair_names = labels, pairs, augment, pair_names

    def __len__(self) -> int:
        return len(self.pairs)

    def _image(self, index: int) -> torch.Tensor:
        dataset, image_id, _ = self.items[index]
        return self.augment(dataset.load_image(image_id))

    def __getitem__(self, index: int):
        pair = self.pairs[index]
        domain_m, domain_n = self.items[pair.m][2], self.items[pair.n][2]
        keys = [self.pair_names.index(domain_pair(domain_m, d)) for d in (domain_n, domain_m)]
        return self._image(pair.m), self._image(pair.n), self.labels[pair.m], self.labels[pair.n], *keys


def grouped_pair_logits(model: CoAttentionNet, f_m, f_n, keys: list[str]) -> dict:
    """:meth:`CoAttentionNet.pair_logits` for a batch whose pairs may belong to different domain
    pairs (each group uses its own W_P); rows come back in the batch's order."""
    if len(set(keys)) == 1:
        return model.pair_logits(f_m, f_n, keys[0])
    out = {}
    for key in sorted(set(keys)):
        rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=f_m.device)
        for name, value in model.pair_logits(f_m[rows], f_n[rows], key).items():
            out.setdefault(name, f_m.new_empty((len(keys), value.shape[1])))[rows] = value
    return out


class CoAttentionObjective(Objective):
    """Data and loss of co-attention training (see the module docstring)."""

    def __init__(self, sources: list[ImageSource], augment: Augment, cfg: dict, addons: list = ()):
        co = cfg["coattention"]
        self.addons = list(addons)
        self.sources, self.augment = sources, augment
        self.flip, self.scales = co["self_pair_flip"], list(co["self_pair_scales"])
        self.contrastive_from = co["contrastive_from_epoch"]
        domains = [s.domain for s in sources]
        self.pair_names = sorted({domain_pair(a, b) for a in domains for b in domains})
        # multi-hot labels of all images, sources concatenated in order (pair indices point into it)
        self.labels = torch.cat([torch.from_numpy(s.dataset.label_matrix(s.ids)) for s in sources])
        self.sampler = PairSampler(self.labels.numpy(), cfg["seed"])

    def __len__(self) -> int:
        return len(self.sampler)

    def epoch_data(self, epoch: int) -> tuple[Dataset, bool]:
        """The epoch's pairs (already in a seeded random order, so the loader must not shuffle)."""
        return ImagePairs(self.sources, self.labels, self.sampler.epoch(epoch), self.augment, self.pair_names), False

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """m's self-pair partners: its mirror image and rescaled copies."""
        out = [x.flip(-1)] if self.flip else []
        for scale in self.scales:
            size = [max(1, round(s * scale)) for s in x.shape[-2:]]
            out.append(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return out

    def forward(self, model: CoAttentionNet, batch, epoch: int, progress: float, device: torch.device) -> dict:
        x_m, x_n, l_m, l_n, pair_index, self_index = (t.to(device, non_blocking=True) for t in batch)
        keys = [self.pair_names[i] for i in pair_index.tolist()]
        self_keys = [self.pair_names[i] for i in self_index.tolist()]
        views = self.views(x_m)
        same_size = [v for v in views if v.shape == x_m.shape]
        feats = model.features(torch.cat([x_m, x_n, *same_size])).split(len(x_m))
        f_m, f_n = feats[0], feats[1]
        view_feats = list(feats[2:]) + [model.features(v) for v in views if v.shape != x_m.shape]

        terms = pair_loss(
            grouped_pair_logits(model, f_m, f_n, keys), l_m, l_n, contrastive=epoch >= self.contrastive_from
        )
        terms["self"] = f_m.new_zeros(())
        for f_v in view_feats:
            terms["self"] = (
                terms["self"]
                + pair_loss(grouped_pair_logits(model, f_m, f_v, self_keys), l_m, l_m, contrastive=False)["total"]
            )
        terms["total"] = terms["total"] + terms["self"]
        if self.addons:
            terms = add_terms(terms, self.addons, model, x_m, l_m, model.classifier(f_m), progress)
        return terms
