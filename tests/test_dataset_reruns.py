"""Edits inside a user's dataset folder rerun exactly the steps that read what changed; touches rerun nothing."""

import json
import os
import shutil

import yaml

from conftest import REPO, first_id, plan, run_snakemake, void_mask_corner

# The chain of one classifier and one pseudo-label recipe: every kind of step, in under a minute.
LEAN = {
    "classifier": {"method": "cam", "compare": []},
    "pseudo_labels": {"recipe": "confident", "compare": []},
    "segmentation": {"compare": []},
}


def planned(tmp_path, args):
    """{rule: set of wildcards} and the jobs' reasons of a dry run."""
    jobs, _ = plan(run_snakemake(tmp_path, "-n", *args).stdout)
    rules = {}
    for rule, wildcards in jobs:
        rules.setdefault(rule, set()).add(wildcards)
    return rules, jobs


def test_dataset_edits_rerun_what_reads_them(tmp_path, tiny_demo):
    root = tmp_path / "mine"
    shutil.copytree(tiny_demo, root)
    override = tmp_path / "override.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "dataset": {
                    "source": "folder",
                    "name": "mine",
                    "root": str(root),
                    "train_split": "train",
                    "eval_split": "val",
                },
                **LEAN,
            }
        )
    )
    args = ["--configfile", str(REPO / "config" / "tiny.yaml"), str(override)]
    run_snakemake(tmp_path, "--cores", "2", *args)
    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", *args).stdout

    # no-op touches: every file rewritten with its own bytes, later mtimes, the root folder touched,
    # cls_labels.json re-serialised with other whitespace
    for path in root.rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes())
    os.utime(root)
    labels_file = root / "cls_labels.json"
    labels = json.loads(labels_file.read_text())
    labels_file.write_text(json.dumps(labels, indent=4))
    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", *args).stdout

    # a val mask overwritten in place: the val masks are re-checked and the evaluations rerun, nothing else
    mask = root / "SegmentationClass" / f"{first_id(root, 'val')}.png"
    void_mask_corner(mask)
    rules, jobs = planned(tmp_path, args)
    assert rules == {
        "validate_dataset": {"part=eval_masks"},
        "evaluate_segmentation": {"labels=cam+confident", "labels=fully_supervised"},
        "summarize_dataset": {""},
        "summary": {""},
        "all": {""},
    }, rules
    assert jobs["validate_dataset", "part=eval_masks"] == {
        "Updated input files": "results/mine/data/fingerprint/eval_masks.json"
    }
    run_snakemake(tmp_path, "--cores", "2", *args)

    # a val image's labels: checked, nothing reads them
    val_id, train_id = first_id(root, "val"), first_id(root, "train")
    labels[val_id] = sorted(set(labels[val_id]) ^ {1})
    labels_file.write_text(json.dumps(labels))
    rules, _ = planned(tmp_path, args)
    assert rules == {"validate_dataset": {"part=eval_labels"}, "summarize_dataset": {""}, "all": {""}}, rules
    run_snakemake(tmp_path, "--cores", "2", *args)

    # a training image's labels: the classifier and everything after it
    labels[train_id] = sorted(set(labels[train_id]) ^ {1})
    labels_file.write_text(json.dumps(labels))
    rules, jobs = planned(tmp_path, args)
    assert rules["validate_dataset"] == {"part=train_labels"}
    assert {"train_classifier", "infer_cams", "train_segmentation", "predict_segmentation"} <= set(rules)
    assert rules["train_segmentation"] == {"labels=cam+confident", "labels=fully_supervised"}
    assert jobs["train_classifier", "method=cam"] == {
        "Input files updated by another job": "results/mine/data/validated/train_labels.json"
    }

    # an id appended to the train split: its labels, images and masks are all re-checked
    split = root / "ImageSets" / "Segmentation" / "train.txt"
    split.write_text(split.read_text() + f"{val_id}\n")
    rules, jobs = planned(tmp_path, args)
    assert rules["validate_dataset"] == {"part=train_labels", "part=train_images", "part=train_masks"}
    assert jobs["validate_dataset", "part=train_images"] == {
        "Updated input files": "results/mine/data/fingerprint/train_images.json"
    }
    reasons = jobs["train_classifier", "method=cam"]["Input files updated by another job"]
    assert set(reasons.split(", ")) == {f"results/mine/data/validated/train_{p}.json" for p in ("labels", "images")}
