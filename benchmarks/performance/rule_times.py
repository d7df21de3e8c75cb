"""Print the wall time and peak memory of every rule of a finished run, from Snakemake's benchmark files.

    python benchmarks/performance/rule_times.py results/demo

Every rule writes ``<results>/<name>/benchmarks/<topic>/<rule>.tsv`` (its ``benchmark:``
directive); this gathers them into one table, slowest first, with the sum of the
jobs' wall times (an upper bound of the DAG's elapsed time when jobs ran one at a time).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def rule_times(results: Path) -> pd.DataFrame:
    rows = []
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        record = pd.read_csv(tsv, sep="\t").iloc[-1]
        rows.append(
            {
                "job": tsv.relative_to(results / "benchmarks").with_suffix("").as_posix(),
                "seconds": float(record["s"]),
                "max_rss_MB": float(record["max_rss"]),
            }
        )
    if not rows:
        raise SystemExit(f"{results}/benchmarks: no benchmark files (has the workflow run there?)")
    return pd.DataFrame(rows).sort_values("seconds", ascending=False, ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="results/<dataset name>")
    table = rule_times(parser.parse_args().results)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.1f}"))
    total = table["seconds"].sum()
    print(f"sum of job wall times: {total:.1f} s ({int(total // 60)} min {total % 60:.0f} s)")


if __name__ == "__main__":
    main()
