"""Pairs of images that share a class: the training unit of the co-attention classifier.

For every image m (each once per epoch, in a seeded random order) one of its classes k is
drawn, then a partner n among the images that also contain k, so l_m ∩ l_n is never empty.
Images may come from several sources ("domains": the target dataset, extra single-label
images, web images); a partner is drawn from all of them and the pair's domains pick the
co-attention weights. An image without labels cannot share a class and is never m; a class
found in m alone pairs m with itself (under independent augmentations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Pair:
    m: int  # index into the concatenated sources
    n: int
    shared_class: int  # 1-based class id that both contain


class PairSampler:
    """Seeded pair lists over images with multi-hot labels ``label_matrix`` (N, K) (class ids 1..K)."""

    def __init__(self, label_matrix: np.ndarray, seed: int):
        labels = np.asarray(label_matrix) > 0
        if labels.ndim != 2:
            raise ValueError(f"label matrix must be (images, classes), got shape {labels.shape}")
        self.labels, self.seed = labels, seed
        self.members = [np.flatnonzero(labels[:, k]) for k in range(labels.shape[1])]  # images per class
        self.anchors = np.flatnonzero(labels.any(1))

    def __len__(self) -> int:
        return len(self.anchors)

    def epoch(self, epoch: int) -> list[Pair]:
        """The pairs of one epoch: depends on (seed, epoch) only, so a resumed run draws the same."""
        rng = np.random.default_rng([self.seed, epoch])
        pairs = []
        for m in rng.permutation(self.anchors):
            k = int(rng.choice(np.flatnonzero(self.labels[m])))
            others = self.members[k][self.members[k] != m]
            n = int(rng.choice(others)) if len(others) else int(m)
            pairs.append(Pair(int(m), n, k + 1))
        return pairs
