"""Peak memory and time of the sparse vs the dense (feature-stride) random walk on one 500 x 375 image.

    python benchmarks/performance/random_walk_memory.py [--threads 1] [--image PATH] [--random-embedding]

The embedding is AffinityNet's (EfficientNet-Lite0, ImageNet backbone, untrained head, stride 8)
of a real 500 x 375 photo from ../shared/data/voc_samples when present, else random: the walk's
cost depends on the grid size, not on what the embedding learnt. The CAMs are random smooth
maps for two classes. Both walks run in this one process, one after the other, on the same
inputs, with PSA's settings (radius 5, beta 8, logt 8, alpha 16); the script checks that
their outputs agree and prints what a dense pixel-level (full-resolution) matrix would need.

Memory is the growth of the process's peak resident set over its size just before each step
(Linux: ``VmHWM`` after resetting it through ``/proc/self/clear_refs``). tracemalloc would
see none of it: torch allocates outside Python's allocator.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from wsss_core.models.affinitynet import build_affinitynet
from wsss_core.refine.propagate import embed_image
from wsss_core.refine.random_walk import dense_full_resolution_bytes, pair_indices, propagate_cams

REPO = Path(__file__).resolve().parents[2]
PHOTO = REPO.parent / "shared" / "data" / "voc_samples" / "JPEGImages" / "2011_000025.jpg"
HEIGHT, WIDTH, STRIDE = 375, 500, 8
WALK = dict(stride=STRIDE, radius=5, beta=8, logt=8, alpha=16)


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {key}")


def measured(fn):
    """(result, seconds, peak growth in MiB) of ``fn()``."""
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    return result, seconds, (_status_kib("VmHWM") - before) / 1024


def random_cams(rng: np.random.Generator) -> np.ndarray:
    maps = [ndimage.gaussian_filter(rng.random((HEIGHT, WIDTH)), 25) for _ in range(2)]
    return np.stack([(m - m.min()) / (m.max() - m.min()) for m in maps]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--image", type=Path, default=PHOTO)
    parser.add_argument("--random-embedding", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cams = torch.from_numpy(random_cams(np.random.default_rng(0)))
    grid = (-(-HEIGHT // STRIDE), -(-WIDTH // STRIDE))
    if args.random_embedding or not args.image.is_file():
        source, embedding = "random", torch.randn(448, *grid)
    else:
        image = np.array(Image.open(args.image).convert("RGB"))
        if image.shape[:2] != (HEIGHT, WIDTH):
            raise SystemExit(f"{args.image}: {image.shape[1]}x{image.shape[0]} px, need {WIDTH}x{HEIGHT}")
        arch = {"backbone": "efficientnet_lite0", "output_stride": STRIDE}
        model = build_affinitynet(arch, weights="imagenet").eval()
        embedding, secs, mib = measured(lambda: embed_image(model, image, torch.device("cpu")))
        source = f"{args.image.name}, AffinityNet forward {secs:.2f} s, peak +{mib:.0f} MiB"
    n = grid[0] * grid[1]
    pairs = len(pair_indices(*grid, WALK["radius"])[0])
    print(
        f"torch {torch.__version__}, {args.threads} thread(s); image {WIDTH}x{HEIGHT}, grid {grid[0]}x{grid[1]} "
        f"= {n} cells at stride {STRIDE}, {pairs} pairs (radius {WALK['radius']}); embedding: {source}"
    )

    (labels_s, maps_s), t_s, m_s = measured(lambda: propagate_cams(embedding, cams, [1, 2], **WALK))
    (labels_d, maps_d), t_d, m_d = measured(lambda: propagate_cams(embedding, cams, [1, 2], dense=True, **WALK))
    print(
        f"sparse walk ({2**WALK['logt']} products, CSR, {2 * pairs + n} non-zeros): {t_s:7.3f} s, "
        f"peak +{m_s:7.1f} MiB"
    )
    print(f"dense walk  ({WALK['logt']} squarings of {n}x{n}):               {t_d:7.3f} s, peak +{m_d:7.1f} MiB")
    print(f"dense / sparse: time x{t_d / t_s:.1f}, memory x{m_d / max(m_s, 0.1):.1f}")
    agree = float((labels_s == labels_d).mean())
    diff = float(np.abs(maps_s - maps_d).max())
    print(f"agreement: labels {100 * agree:.4f} % of pixels equal, walked maps max |diff| {diff:.2e}")
    full = dense_full_resolution_bytes(HEIGHT, WIDTH) / 2**30
    print(
        f"one dense {n}x{n} fp32 matrix: {n * n * 4 / 2**20:.1f} MiB; a dense full-resolution "
        f"{HEIGHT * WIDTH}x{HEIGHT * WIDTH} fp32 matrix would need {full:,.1f} GiB (computed, not allocated)"
    )
    if agree < 0.999 or diff > 1e-3:
        raise SystemExit("sparse and dense walks disagree")


if __name__ == "__main__":
    main()
