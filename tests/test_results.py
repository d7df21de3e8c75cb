"""summary.csv: rows in stage order, and the WSSS mIoU as a share of the fully-supervised reference."""

import math

import pandas as pd
import pytest

from wsss_core.results import REFERENCE_COLUMN, collect_summary, write_summary_rows


def _rows(tmp_path):
    paths = []
    for name, row in [
        ("cams", {"stage": "cams", "method": "cam", "split": "train", "mIoU": 40.0, "threshold": 0.3}),
        ("pseudo", {"stage": "pseudo_labels", "method": "cam", "split": "train", "mIoU": 60.0, "coverage": 70.0}),
        ("seg", {"stage": "segmentation", "method": "cam", "split": "val", "mIoU": 45.0}),
        ("ref", {"stage": "segmentation", "method": "fully_supervised", "split": "val", "mIoU": 60.0}),
    ]:
        write_summary_rows(tmp_path / f"{name}.csv", [row])
        paths.append(tmp_path / f"{name}.csv")
    return paths


def test_reference_ratio_only_on_the_reference_split(tmp_path):
    table = collect_summary(_rows(tmp_path), tmp_path / "summary.csv", reference="fully_supervised")
    assert list(table["stage"]) == ["cams", "pseudo_labels", "segmentation", "segmentation"]
    ratio = dict(zip(table["method"] + "/" + table["split"], table[REFERENCE_COLUMN]))
    assert ratio["cam/val"] == 75.0
    assert ratio["fully_supervised/val"] == 100.0
    assert math.isnan(ratio["cam/train"])  # other split: not comparable
    on_disk = pd.read_csv(tmp_path / "summary.csv")
    assert on_disk[REFERENCE_COLUMN].tolist()[2:] == [75.0, 100.0]
    assert on_disk["coverage"].tolist()[1] == 70.0


def test_without_reference_no_ratio_column(tmp_path):
    table = collect_summary(_rows(tmp_path)[:3], tmp_path / "summary.csv")
    assert REFERENCE_COLUMN not in table.columns


def test_missing_reference_row_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="reference method 'fully_supervised'"):
        collect_summary(_rows(tmp_path)[:3], tmp_path / "summary.csv", reference="fully_supervised")
