"""How long the default demo dataset (1,000 images of 128 px) takes to generate.

Prints figures only; it asserts nothing about time, which depends on the machine.

    python benchmarks/performance/demo_generation.py [--workers N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from wsss_core.data.demo import DEFAULT, generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    print(f"demo DEFAULT: {DEFAULT}  (cpu_count={os.cpu_count()})")
    for workers in dict.fromkeys(args.workers):
        for _ in range(args.repeat):
            with tempfile.TemporaryDirectory() as tmp:
                summary = generate(Path(tmp) / "demo", **DEFAULT, workers=workers)
            seconds = summary["seconds"]
            print(
                f"workers={workers}: {seconds:.2f} s, {DEFAULT['n_images'] / seconds:.0f} images/s, "
                f"splits {summary['splits']}, mean labels/image {summary['mean_labels_per_image']:.2f}, "
                f"images per class {summary['class_images']}"
            )


if __name__ == "__main__":
    main()
