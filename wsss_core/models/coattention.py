"""The co-attention classifier of Sun et al., *Mining Cross-Image Semantics for WSSS* (ECCV 2020).

Two images m and n that share a class go through one backbone and a stack of ``head_convs`` new
3x3 conv + ReLU layers (features F_m, F_n, C x N each, N = h * w positions; the reference code puts
three 512-channel ones on VGG-16, trained at 10x the backbone's rate, so that every head below reads
features that co-attention training shapes, not the ImageNet ones). Three heads read them:

* single-image: the plain CAM classifier phi (inherited from :class:`CAMNet`) on F_m and F_n;
* co-attention: affinities P = F_m^T W_P F_n (N_m x N_n); each position of n gathers the
  features of m it attends to, F_n^{m∩n} = F_m softmax_over_m(P), and vice versa. A second
  class conv (``co_classifier``, no bias) + GAP must then predict the classes the images SHARE:
  what one image can find of itself in the other;
* contrastive co-attention: a gate B = sigmoid(W_B F^{m∩n}) marks the common regions;
  F_m * (1 - B_m) is what m does NOT share, and ``co_classifier`` must predict l_m minus l_n there.

One W_P per pair of image domains (target-target, target-extra, extra-extra, ...): features of
web photos and of the target dataset need not match in the same way.

Because ``co_classifier`` is a bias-free 1x1 conv, the co-attention CAM of n given a reference r
equals ``(W_co F_r) @ softmax_over_r(P^T)``: K x N_r class maps of r, re-sampled at n's positions.
:meth:`CoAttentionNet.co_cams` computes it that way from cached features (no C x N_n tensor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from wsss_core.models.backbones import Backbone
from wsss_core.models.cam_head import CAMNet

TARGET = "target"
# bilinear: P = F_m^T W_P F_n (the paper's); cosine: the cosine similarity of W_P^T F_m and F_n over a temperature
AFFINITIES = ("bilinear", "cosine")


def domain_pair(a: str, b: str) -> str:
    """Name of the W_P shared by images of domains ``a`` and ``b`` (order-free): e.g. ``extra-target``."""
    return "-".join(sorted((a, b)))


def common_labels(l_m: torch.Tensor, l_n: torch.Tensor) -> torch.Tensor:
    """Multi-hot l_m ∩ l_n: the co-attention target of both images."""
    return l_m * l_n


def exclusive_labels(l_m: torch.Tensor, l_n: torch.Tensor) -> torch.Tensor:
    """Multi-hot l_m minus l_n: the contrastive target of m (all zeros when n has all of m's classes)."""
    return l_m * (1 - l_n)


def conv_head(in_channels: int, convs: int, channels: int) -> nn.Module:
    """``convs`` x (3x3 conv + ReLU) of ``channels`` outputs (identity when 0), He-normal weights, zero biases
    (the reference code's initialisation)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        conv = nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
        nn.init.normal_(conv.weight, 0.0, (2.0 / (9 * channels)) ** 0.5)
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
    return nn.Sequential(*layers) if layers else nn.Identity()


class CoAttentionNet(CAMNet):
    """Backbone + ``head`` + CAM classifier + co-attention (``affinity[pair]`` = W_P, ``co_classifier``,
    ``gate`` = W_B)."""

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        domains: tuple[str, ...] = (TARGET,),
        head_convs: int = 0,
        head_channels: int = 512,
        affinity: str = "bilinear",
        temperature: float = 0.1,
    ):
        if affinity not in AFFINITIES:
            raise ValueError(f"config key classifier.coattention.affinity: '{affinity}' is not one of {AFFINITIES}")
        channels = head_channels if head_convs else backbone.out_channels
        super().__init__(backbone, num_classes, channels)
        self.head = conv_head(backbone.out_channels, head_convs, head_channels)
        self.domains = tuple(domains)
        self.affinity_kind, self.temperature = affinity, temperature
        pairs = sorted({domain_pair(a, b) for a in self.domains for b in self.domains})
        # bilinear: nn.Linear's default init (uniform +-1/sqrt(C)) as in the reference code's W_P;
        # cosine: W_P starts as the identity, so the first affinities are the features' cosine similarities
        self.affinity = nn.ModuleDict({p: nn.Linear(channels, channels, bias=False) for p in pairs})
        if affinity == "cosine":
            for layer in self.affinity.values():
                nn.init.eye_(layer.weight)
        self.co_classifier = nn.Conv2d(channels, num_classes, 1, bias=False)
        self.gate = nn.Conv2d(channels, 1, 1, bias=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features every head reads: the backbone's, through ``head``."""
        return self.head(self.backbone(x))

    def query(self, f_m: torch.Tensor, pair: str) -> torch.Tensor:
        """(B, N_m, C) F_m^T W_P: the half of the affinities that depends on m only (reusable for many n);
        cosine: each row scaled to unit length and divided by the temperature."""
        if pair not in self.affinity:
            raise KeyError(f"no co-attention weights for domain pair '{pair}' (have {sorted(self.affinity)})")
        q = self.affinity[pair](f_m.flatten(2).transpose(1, 2).contiguous())
        return F.normalize(q, dim=2) / self.temperature if self.affinity_kind == "cosine" else q

    def affinities(self, query: torch.Tensor, f_n: torch.Tensor) -> torch.Tensor:
        """(B, N_m, N_n) P from m's :meth:`query` and n's (B, C, h, w) features (cosine: unit-length columns)."""
        flat_n = f_n.flatten(2)
        return torch.bmm(query, F.normalize(flat_n, dim=1) if self.affinity_kind == "cosine" else flat_n)

    def coattend(self, f_m: torch.Tensor, f_n: torch.Tensor, pair: str = f"{TARGET}-{TARGET}"):
        """(F_m^{m∩n}, F_n^{m∩n}) for (B, C, h, w) feature maps: each image's positions filled
        with the attended features of the other image (shapes of f_m and f_n respectively)."""
        flat_m, flat_n = f_m.flatten(2), f_n.flatten(2)
        p = self.affinities(self.query(f_m, pair), f_n)  # (B, N_m, N_n) = F_m^T W_P F_n
        n_from_m = torch.bmm(flat_m, p.softmax(dim=1))  # (B, C, N_n): convex combinations of m's features
        m_from_n = torch.bmm(flat_n, p.transpose(1, 2).softmax(dim=1))  # (B, C, N_m)
        return m_from_n.view_as(f_m), n_from_m.view_as(f_n)

    @staticmethod
    def _gap(maps: torch.Tensor) -> torch.Tensor:
        return maps.mean(dim=(2, 3))

    def pair_logits(self, f_m: torch.Tensor, f_n: torch.Tensor, pair: str = f"{TARGET}-{TARGET}") -> dict:
        """All (B, K) logits of a batch of pairs from their backbone features.

        Keys: ``single_m``/``single_n`` (phi), ``common_m``/``common_n`` (co-attention),
        ``exclusive_m``/``exclusive_n`` (contrastive co-attention).
        """
        co_m, co_n = self.coattend(f_m, f_n, pair)
        out = {
            "single_m": self._gap(self.classifier(f_m)),
            "single_n": self._gap(self.classifier(f_n)),
            "common_m": self._gap(self.co_classifier(co_m)),
            "common_n": self._gap(self.co_classifier(co_n)),
        }
        for key, feats, co in (("exclusive_m", f_m, co_m), ("exclusive_n", f_n, co_n)):
            gate = torch.sigmoid(self.gate(co))  # ~1 where this image's content is found in the other
            out[key] = self._gap(self.co_classifier(feats * (1 - gate)))
        return out

    def co_cams(
        self, f_n: torch.Tensor, f_r: torch.Tensor, pair: str = f"{TARGET}-{TARGET}", query: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, K, h_n, w_n) co-attention CAMs of images n given references r (batched pairs).

        Equal to ``co_classifier(coattend(f_n, f_r)[0])`` but computed as (W_co F_r) A: a K x N_r
        product instead of a C x N_r one, which is what makes many references per image cheap;
        ``query`` (:meth:`query` of f_n) can be computed once for all of an image's references.
        """
        q = self.query(f_n, pair) if query is None else query
        p = self.affinities(q, f_r)  # (B, N_n, N_r)
        class_maps_r = self.co_classifier(f_r).flatten(2)  # (B, K, N_r)
        cams = torch.bmm(class_maps_r, p.transpose(1, 2).softmax(dim=1))  # (B, K, N_n)
        return cams.view(f_n.shape[0], -1, *f_n.shape[2:])

    def param_groups(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(pretrained backbone params, new params): the head and every co-attention layer are new."""
        return self.backbone.param_groups(self.head, self.classifier, self.affinity, self.co_classifier, self.gate)


def pair_loss(logits: dict, l_m: torch.Tensor, l_n: torch.Tensor, *, contrastive: bool) -> dict:
    """The loss terms of a batch of pairs (multilabel soft-margin, all weights 1).

    single: phi vs each image's labels; common: co-attention vs l_m ∩ l_n; exclusive (only when
    ``contrastive``): contrastive co-attention vs l_m minus l_n plus the same for n, each averaged over
    the pairs whose target is not empty (images with the same classes have nothing to contrast;
    the reference code skips a term only when a whole batch has none). Returns the terms and
    their sum under ``total``.
    """
    sm = F.multilabel_soft_margin_loss
    common = common_labels(l_m, l_n)
    terms = {
        "single": (sm(logits["single_m"], l_m) + sm(logits["single_n"], l_n)) / 2,
        "common": (sm(logits["common_m"], common) + sm(logits["common_n"], common)) / 2,
    }
    terms["exclusive"] = logits["single_m"].new_zeros(())
    if contrastive:
        for key, target in (("exclusive_m", exclusive_labels(l_m, l_n)), ("exclusive_n", exclusive_labels(l_n, l_m))):
            keep = target.sum(1) > 0
            if keep.any():
                terms["exclusive"] = terms["exclusive"] + sm(logits[key][keep], target[keep])
    terms["total"] = terms["single"] + terms["common"] + terms["exclusive"]
    return terms
