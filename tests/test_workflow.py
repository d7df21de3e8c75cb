"""The Snakemake DAG itself: planning, a real tiny run, config errors, reruns and lint."""

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import REPO, copy_workflow, plan, run_snakemake, shared_dataset
from voc_archives import EXPECTED_TRAIN_AUG, FaultyServer, build_archives
from wsss_core.data.fingerprint import PARTS
from wsss_core.workflow import module_sources

TINY = ["--configfile", str(REPO / "config" / "tiny.yaml")]


def configs(tmp_path, *files, **override):
    """--configfile arguments: the given repo config files, then ``override`` written to YAML.

    (Values given with --config are strings below the top level, so nested overrides go in a file.)
    """
    paths = [str(REPO / "config" / f) for f in files]
    if override:
        path = tmp_path / f"override{len(list(tmp_path.glob('override*.yaml')))}.yaml"
        path.write_text(yaml.safe_dump(override))
        paths.append(str(path))
    return ["--configfile", *paths]


def test_dry_run_of_default_config_lists_the_data_stage(tmp_path):
    out = run_snakemake(tmp_path, "-n", "--quiet", "rules").stdout
    for rule in ("demo_dataset", "validate_dataset", "all"):
        assert rule in out, out


def test_tiny_demo_runs_for_real_and_only_stale_stages_rerun(tmp_path):
    repo = copy_workflow(tmp_path / "repo")  # a copy whose code this test edits
    # Two (pretend) GPUs shared through the lock-file slots; without CUDA the jobs holding them run on the CPU.
    gpus = {"devices": [0, 1], "lock_dir": str(tmp_path / "gpu_locks")}
    run_snakemake(
        tmp_path, "--cores", "2", "--resources", "gpu=2", *configs(tmp_path, "tiny.yaml", gpus=gpus), repo=repo
    )
    results = tmp_path / "results" / "demo_tiny"
    summary = json.loads((results / "data" / "dataset_summary.json").read_text())
    assert summary["label_source"] == "cls_labels.json"
    assert sum(s["images"] for s in summary["splits"].values()) == 40
    assert (tmp_path / "data" / "demo_tiny" / "JPEGImages").is_dir()
    main = "coattention_multiround"  # the CAMs that make the pseudo labels (config/tiny.yaml: cams.label_source)
    addons = "cam+puzzle+binomial+erasing"  # all three add-ons; erasing in 2 rounds, the first cam+puzzle+binomial
    first, second = "cam+puzzle+binomial", f"{addons}_round2"
    recipes = ("confident", "saliency", "random_walk", "random_walk_saliency", "saliency_only")  # main recipe first
    # networks on the main recipe's labels and on segmentation.compare's, then the reference
    runs = (f"{main}+confident", f"{main}+saliency_only", "fully_supervised")
    rules = {
        "data": ["demo_dataset", "summarize_dataset", *(f"validate_{part}" for part in PARTS)],
        "classifier": ["train_cam", "train_coattention", f"train_{first}", f"train_{second}"],
        "cams": [
            "infer_cam",
            "infer_coattention",
            "evaluate_cam",
            "evaluate_coattention",
            f"evaluate_{main}",
            f"infer_{first}",
            f"infer_{second}",
            f"merge_{addons}",
            f"evaluate_{addons}",
        ],
        "saliency": ["make_saliency"],
        "affinity": [f"labels_{main}", f"train_{main}", f"random_walk_{main}"],
        "pseudo_labels": [
            f"make_{main}_{r}" for r in ("confident", "saliency", "random_walk_saliency", "saliency_only")
        ]
        + [f"evaluate_{main}_{r}" for r in recipes],
        "segmentation": [f"{step}_{run}" for step in ("train", "predict", "evaluate") for run in runs],
        "report": [f"overlays_{main}"],
    }
    for topic, names in rules.items():
        for name in names:
            assert (results / "logs" / topic / f"{name}.log").is_file(), name
            assert (results / "benchmarks" / topic / f"{name}.tsv").is_file(), name
    assert "images" in (results / "data" / "class_counts.csv").read_text().splitlines()[0]
    for log in (
        "classifier/train_cam",
        "cams/infer_cam",
        f"affinity/random_walk_{main}",
        f"segmentation/predict_{main}+confident",
    ):
        text = (results / "logs" / f"{log}.log").read_text()
        assert re.search(r"GPU slot\(s\) \['[01]'\] held \(CUDA_VISIBLE_DEVICES=[01],", text), log
    for log in ("cams/evaluate_cam", "saliency/make_saliency"):  # CPU rules
        assert "GPU slot" not in (results / "logs" / f"{log}.log").read_text()
    for method in ("cam", "coattention"):
        assert (results / "classifier" / method / "model.pt").is_file()
    history = pd.read_csv(results / "classifier" / "coattention" / "train_history.csv")
    assert {"loss_single", "loss_common", "loss_exclusive", "loss_self"} <= set(history.columns)
    assert history["loss_exclusive"].tolist()[0] == 0 < history["loss_exclusive"].tolist()[1]  # from epoch 1 on
    for name in (first, second):  # the add-ons' loss terms, in both rounds
        history = pd.read_csv(results / "classifier" / name / "train_history.csv")
        assert {"loss_cls", "loss_puzzle_cls", "loss_puzzle_reconstruction", "loss_sampling", "loss_similarity"} <= set(
            history.columns
        ), name
    # classifier.lr and .frozen_bn, or for +puzzle variants classifier.puzzle.lr (tiny.yaml) and .frozen_bn
    for name, lr, frozen_bn in (("cam", 0.005, True), (first, 0.001, False), (second, 0.001, False)):
        meta = torch.load(results / "classifier" / name / "model.pt", weights_only=True)["meta"]
        assert (meta["config"]["lr"], meta["config"]["frozen_bn"]) == (lr, frozen_bn), name
    stores = ("cam", "coattention", main, first, second, addons, f"{main}_random_walk")
    for store in stores:
        assert (results / "cams" / store / "train_aug.h5").is_file()
    train_ids = (tmp_path / "data" / "demo_tiny" / "ImageSets" / "Segmentation" / "train_aug.txt").read_text().split()
    val_ids = (tmp_path / "data" / "demo_tiny" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    for recipe in recipes:
        labels = results / "pseudo_labels" / main / recipe / "train_aug"
        assert sorted(p.stem for p in labels.glob("*.png")) == sorted(train_ids), recipe
    assert (results / "affinity" / main / "model.pt").is_file()
    assert pd.read_csv(results / "affinity" / main / "train_history.csv")["epoch"].tolist() == [1]
    for run in runs:
        assert (results / "segmentation" / run / "model.pt").is_file()
        predictions = results / "segmentation" / run / "predictions" / "val"
        assert sorted(p.stem for p in predictions.glob("*.png")) == sorted(val_ids)
    assert (results / "report" / f"overlays_{main}.png").stat().st_size > 10_000
    table = pd.read_csv(results / "summary.csv")
    assert table[["stage", "method", "split"]].values.tolist() == [
        *[["cams", store, "train_aug"] for store in stores],
        *[["pseudo_labels", f"{main}+{recipe}", "train_aug"] for recipe in recipes],
        *[["segmentation", run, "val"] for run in runs],
    ]
    for row, store in enumerate(stores):
        best = json.loads((results / "cams" / store / "eval" / "best_threshold.json").read_text())
        assert table["mIoU"][row] == pytest.approx(best["mIoU"], abs=0.01) and 0 < best["mIoU"] <= 100
    # (the tiny run's CAMs are barely trained: the best threshold may be 0 and leave no pixel unsure)
    pseudo, seg = table[table["stage"] == "pseudo_labels"], table[table["stage"] == "segmentation"]
    assert ((0 <= pseudo["coverage"]) & (pseudo["coverage"] <= 100)).all() and (seg["coverage"] == 100).all()
    # the random_walk labels: the confident rule on the walked store, at that store's own best threshold
    walked_best = json.loads((results / "cams" / f"{main}_random_walk" / "eval" / "best_threshold.json").read_text())
    made = (results / "logs" / "pseudo_labels" / f"make_{main}_random_walk.log").read_text()
    assert f"'threshold': {float(walked_best['threshold'])}," in made, made
    assert seg["pct_of_fully_supervised"].iloc[-1] == 100
    assert seg["pct_of_fully_supervised"].iloc[0] == pytest.approx(
        100 * seg["mIoU"].iloc[0] / seg["mIoU"].iloc[-1], abs=0.1
    )
    # Snakemake's own report: the summary, sweep, per-class tables and the overlay figure in one HTML file.
    run_snakemake(tmp_path, "--report", str(tmp_path / "report.html"), *TINY, repo=repo)
    html = (tmp_path / "report.html").read_text(errors="replace")
    for name in ("summary.csv", "threshold_sweep.png", "per_class_iou.csv", f"overlays_{main}.png"):
        assert name in html, name

    def planned(*args):
        return run_snakemake(tmp_path, "-n", "--quiet", "rules", *args, repo=repo).stdout

    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", *TINY, repo=repo).stdout
    # Editing a module reruns the stages that import it (directly or not) and their downstream only.
    with open(repo / "wsss_core" / "cams" / "evaluate.py", "a") as f:
        f.write("# edited\n")
    out = planned(*TINY)
    assert "evaluate_cams" in out and "summary" in out
    assert not any(r in out for r in ("demo_dataset", "validate_dataset", "train_classifier", "infer_"))
    with open(repo / "wsss_core" / "models" / "backbones.py", "a") as f:
        f.write("# edited\n")
    out = planned(*TINY)
    assert all(r in out for r in ("train_classifier", "infer_cams", "infer_coattentive_cams", "evaluate_cams"))
    assert "demo_dataset" not in out and "validate_dataset" not in out
    run_snakemake(tmp_path, "--cores", "2", "--touch", *TINY, repo=repo)  # accept the edits without rerunning
    # The segmentation trainer's code: both networks and what follows them, not the pseudo labels.
    with open(repo / "wsss_core" / "train" / "segmentation.py", "a") as f:
        f.write("# edited\n")
    out = run_snakemake(tmp_path, "-n", *TINY, repo=repo).stdout
    # (AffinityNet's trainer imports it too, so the walk and the labels made from the walked CAMs rerun)
    stale_recipes = set(re.findall(r"wildcards: recipe=(\w+)", out))
    assert stale_recipes <= {"random_walk", "random_walk_saliency"} and "infer_" not in out, stale_recipes
    assert "train_segmentation" in out and all(f"labels={run}" in out for run in runs)
    assert "predict_segmentation" in out and "overlays" in out and "summary" in out
    run_snakemake(tmp_path, "--cores", "2", "--touch", *TINY, repo=repo)  # accept the edits without rerunning
    # An add-on's module: the variants that use it, not the baseline or co-attention classifiers.
    with open(repo / "wsss_core" / "train" / "binomial.py", "a") as f:
        f.write("# edited\n")
    jobs, _ = plan(run_snakemake(tmp_path, "-n", *TINY, repo=repo).stdout)
    assert {job for job in jobs if job[0] in ("train_classifier", "train_erasing_round")} == {
        ("train_classifier", f"method={first}"),
        ("train_erasing_round", f"variant={addons}, round=2"),
    }, jobs
    # (inference and AffinityNet load trained classifiers but run no add-on code)
    assert not {
        ("infer_cams", "cams=cam"),
        ("infer_coattentive_cams", "method=coattention"),
        ("train_affinity", ""),
    } & set(jobs)
    run_snakemake(tmp_path, "--cores", "2", "--touch", *TINY, repo=repo)
    # A changed demo parameter reruns generation and everything after it.
    out = planned(*configs(tmp_path, "tiny.yaml", demo={"seed": 7}))
    assert all(r in out for r in ("demo_dataset", "validate_dataset", "train_classifier", "infer_cams", "summary"))
    # A changed CAM parameter reruns CAM inference and what follows, not training or data
    # (and Snakemake says why: the params of both inference rules, the new CAMs for what follows).
    out = run_snakemake(tmp_path, "-n", *configs(tmp_path, "tiny.yaml", cams={"scales": [1.0]}), repo=repo).stdout
    assert all(r in out for r in ("infer_cams", "infer_coattentive_cams", "evaluate_cams", "summary"))
    assert not any(r in out for r in ("demo_dataset", "validate_dataset", "train_classifier"))
    jobs, summary = plan(out)
    for job in (("infer_cams", "cams=cam"), ("infer_coattentive_cams", "method=coattention")):
        assert set(jobs[job]) == {"Params have changed since last execution"}, jobs[job]
        change = jobs[job]["Params have changed since last execution"]
        assert re.search(r"before: .*'scales': \[1\.0, 0\.5\].* now: .*'scales': \[1\.0\]", change), change
    assert summary["params have changed since last execution"] == {"infer_cams", "infer_coattentive_cams"}, summary
    assert jobs["evaluate_cams", "cams=cam"] == {
        "Input files updated by another job": "results/demo_tiny/cams/cam/train_aug.h5"
    }
    # (new CAMs of the first erasing round: new erased images, so the second round retrains)
    assert ("train_erasing_round", f"variant={addons}, round=2") in jobs
    # Add-on settings: the classifiers that use them, and each erasing round on its own.
    jobs, _ = plan(
        run_snakemake(
            tmp_path, "-n", *configs(tmp_path, "tiny.yaml", classifier={"erasing": {"threshold": 0.4}}), repo=repo
        ).stdout
    )
    second_round = jobs["train_erasing_round", f"variant={addons}, round=2"]
    assert set(second_round) == {"Params have changed since last execution"}, second_round
    assert ("merge_erasing_rounds", f"variant={addons}") in jobs
    assert not {rule for rule, _ in jobs} & {"train_classifier", "infer_coattentive_cams"}
    assert ("infer_cams", f"cams={first}") not in jobs
    jobs, _ = plan(
        run_snakemake(
            tmp_path, "-n", *configs(tmp_path, "tiny.yaml", classifier={"puzzle": {"alpha": 2.0}}), repo=repo
        ).stdout
    )
    assert {job for job in jobs if job[0] == "train_classifier"} == {("train_classifier", f"method={first}")}
    assert ("train_erasing_round", f"variant={addons}, round=2") in jobs  # its own settings and its first round's CAMs
    # Multi-round settings: the co-attentive CAMs only, not the baseline's.
    out = run_snakemake(tmp_path, "-n", *configs(tmp_path, "tiny.yaml", cams={"references": 2}), repo=repo).stdout
    assert "infer_coattentive_cams" in out and "rule infer_cams" not in out and "train_classifier" not in out
    # Co-attention training settings: that classifier only, not the baseline.
    out = run_snakemake(
        tmp_path,
        "-n",
        *configs(tmp_path, "tiny.yaml", classifier={"coattention": {"self_pair_scales": [0.5]}}),
        repo=repo,
    ).stdout
    assert "method=coattention" in out and "method=cam" not in out and "rule infer_cams" not in out
    # Pseudo-label margins: the pseudo labels and the network trained on them, not the reference.
    out = run_snakemake(
        tmp_path, "-n", *configs(tmp_path, "tiny.yaml", pseudo_labels={"fg_margin": 0.1}), repo=repo
    ).stdout
    assert "make_pseudo_labels" in out and f"labels={main}+confident" in out
    assert "labels=fully_supervised" not in out and f"labels={main}+saliency_only" not in out
    assert "train_classifier" not in out and "infer_" not in out
    # Random-walk settings: the walk and what reads its outputs, not AffinityNet's labels or training.
    jobs = set(planned(*configs(tmp_path, "tiny.yaml", affinity={"beta": 4})).split())
    assert {"random_walk", "make_saliency_pseudo_labels", "evaluate_cams", "summary"} <= jobs
    assert not jobs & {"train_affinity", "affinity_labels", "make_saliency", "train_classifier"}
    # The MCIS thresholds: the saliency recipes' labels, not the saliency maps or the random walk.
    cam_threshold = configs(tmp_path, "tiny.yaml", pseudo_labels={"saliency_recipe": {"cam_threshold": 0.4}})
    jobs = set(planned(*cam_threshold).split())
    assert {"make_saliency_pseudo_labels", "evaluate_pseudo_labels"} <= jobs
    assert not jobs & {"make_saliency", "random_walk", "train_affinity", "make_pseudo_labels"}
    made = {
        w
        for rule, w in plan(run_snakemake(tmp_path, "-n", *cam_threshold, repo=repo).stdout)[0]
        if rule == "make_saliency_pseudo_labels"
    }
    assert made == {"recipe=saliency", "recipe=random_walk_saliency"}  # saliency_only has no CAM threshold
    # Test-time scales: predictions and their evaluation only.
    out = planned(*configs(tmp_path, "tiny.yaml", evaluation={"scales": [1.0, 1.5]}))
    assert "predict_segmentation" in out and "evaluate_segmentation" in out
    assert "train_segmentation" not in out and "make_pseudo_labels" not in out
    # A changed evaluation split reruns validation only.
    out = planned(*configs(tmp_path, "tiny.yaml", dataset={"eval_split": "train"}))
    assert "validate_dataset" in out and "demo_dataset" not in out and "train_classifier" not in out

    # Snakemake's stated reasons for code edits (from here on the copy's edits pile up; nothing is --touch'ed).
    # An edited workflow script: "Code has changed" (its mtime), for that rule's jobs only; what follows them
    # reruns for their new outputs. No CAM inference, training or data preparation.
    with open(repo / "workflow_scripts" / "evaluate_cams.py", "a") as f:
        f.write("# edited\n")
    jobs, summary = plan(run_snakemake(tmp_path, "-n", *TINY, repo=repo).stdout)
    for store in stores:
        assert jobs["evaluate_cams", f"cams={store}"] == {"Code has changed since last execution": ""}, store
    assert summary["code has changed since last execution"] == {"evaluate_cams"}, summary
    assert {"summary", "make_pseudo_labels"} <= {rule for rule, _ in jobs}
    assert not {rule for rule, _ in jobs} & {
        "demo_dataset",
        "validate_dataset",
        "train_classifier",
        "infer_cams",
        "infer_coattentive_cams",
    }
    # A wsss_core module only the co-attentive CAM inference imports: that rule, for the "updated input" it names,
    # and its downstream; not the classifiers, the baseline's CAMs, the saliency maps or data preparation.
    coattentive_cams = "repo/wsss_core/cams/coattention.py"  # as the rule's input, relative to the working dir
    with open(tmp_path / coattentive_cams, "a") as f:
        f.write("# edited\n")
    jobs, summary = plan(run_snakemake(tmp_path, "-n", *TINY, repo=repo).stdout)
    assert jobs["infer_coattentive_cams", "method=coattention"] == {"Updated input files": coattentive_cams}
    assert summary["updated input files"] == {"infer_coattentive_cams"}, summary
    for store in ("coattention", main):
        assert jobs["evaluate_cams", f"cams={store}"] == {
            "Input files updated by another job": f"results/demo_tiny/cams/{store}/train_aug.h5"
        }
    assert ("train_affinity", "") in jobs and ("train_segmentation", f"labels={main}+confident") in jobs
    assert ("train_segmentation", "labels=fully_supervised") not in jobs
    assert not {rule for rule, _ in jobs} & {
        "demo_dataset",
        "validate_dataset",
        "train_classifier",
        "infer_cams",
        "make_saliency",
    }
    # The co-attention network's module: the baseline retrains for the updated input it names (train/classifier.py,
    # which both methods run, imports models/coattention.py, and code() tracks modules, not the branch a method
    # takes); the co-attention classifier, warm-started from the baseline (tiny.yaml keeps the default
    # warm_start), follows for the new baseline, and the co-attentive CAMs for the new model (Snakemake names only
    # the first reason in a job's chain: the upstream job, not this job's own edited inputs); still no data
    # preparation.
    coattention_net = "repo/wsss_core/models/coattention.py"
    with open(tmp_path / coattention_net, "a") as f:
        f.write("# edited\n")
    jobs, summary = plan(run_snakemake(tmp_path, "-n", *TINY, repo=repo).stdout)
    assert jobs["train_classifier", "method=cam"] == {"Updated input files": coattention_net}
    assert jobs["train_classifier", "method=coattention"] == {
        "Input files updated by another job": "results/demo_tiny/classifier/cam/model.pt"
    }
    assert jobs["infer_coattentive_cams", "method=coattention"] == {
        "Input files updated by another job": "results/demo_tiny/classifier/coattention/model.pt"
    }
    assert summary["updated input files"] == {"train_classifier"}, summary
    assert ("evaluate_cams", f"cams={main}") in jobs and ("train_segmentation", f"labels={main}+confident") in jobs
    assert not {rule for rule, _ in jobs} & {"demo_dataset", "validate_dataset"}


def test_extra_image_sources_are_inputs_of_every_coattention_variant(tmp_path, tiny_demo):
    extra = [{"domain": "web", "root": str(tiny_demo), "split": "train"}]
    classifier = {"method": "coattention+puzzle", "compare": ["cam+erasing"], "coattention": {"extra_sources": extra}}
    dry = run_snakemake(tmp_path, "-n", *configs(tmp_path, classifier=classifier)).stdout
    inputs = {}  # wildcards of each classifier training job -> its input line
    for block in re.split(r"\n(?=rule )", dry):
        if block.startswith(("rule train_classifier:", "rule train_erasing_round:")):
            fields = dict(line.strip().partition(": ")[::2] for line in block.splitlines()[1:] if ": " in line)
            inputs[fields["wildcards"]] = fields["input"]
    assert set(inputs) == {
        "method=coattention+puzzle",
        "method=cam",
        "variant=cam+erasing, round=2",
        "variant=cam+erasing, round=3",
    }, inputs
    coattention = inputs.pop("method=coattention+puzzle")
    assert str(tiny_demo) in coattention and not any(str(tiny_demo) in line for line in inputs.values())  # plain CAMs


def test_bad_config_value_fails_at_parse_time_naming_the_key(tmp_path):
    proc = run_snakemake(tmp_path, "-n", *configs(tmp_path, demo={"n_images": 3, "colour": "red"}), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key demo.n_images: 3 is less than the minimum of 8" in out
    assert "config key demo: Additional properties are not allowed ('colour' was unexpected)" in out
    proc = run_snakemake(tmp_path, "-n", *configs(tmp_path, dataset={"source": "folder", "name": "x"}), check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "config key dataset.root: None is not of type 'string'" in out
    missing = str(tmp_path / "no_such_maps")
    pseudo = {"recipe": "saliency"}
    proc = run_snakemake(
        tmp_path, "-n", *configs(tmp_path, saliency={"source": missing}, pseudo_labels=pseudo), check=False
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"config key saliency.source: {missing} is neither" in out


def test_broken_folder_dataset_fails_naming_the_file(tmp_path, tiny_demo):
    root = tmp_path / "broken"
    shutil.copytree(tiny_demo, root)
    victim = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (root / "SegmentationClass" / f"{victim}.png").unlink()
    folder = {"source": "folder", "name": "broken", "root": str(root)}
    proc = run_snakemake(tmp_path, "--cores", "1", *configs(tmp_path, dataset=folder), check=False)
    assert proc.returncode != 0
    assert f"SegmentationClass/{victim}.png: mask file missing" in proc.stderr
    assert not (tmp_path / "results" / "broken" / "data" / "dataset_summary.json").exists()


def test_with_baseline_labels_are_made_from_the_combined_store_the_baseline_and_coattention_stores_feed(tmp_path):
    settings = {"label_source": "with_baseline"}
    jobs, _ = plan(run_snakemake(tmp_path, "-n", *configs(tmp_path, "tiny.yaml", cams=settings)).stdout)
    assert ("combine_with_baseline", "combined=coattention_x_cam") in jobs
    assert {("infer_cams", "cams=cam"), ("infer_coattentive_cams", "method=coattention")} <= set(jobs)
    assert ("evaluate_cams", "cams=coattention_x_cam") in jobs  # scored in summary.csv beside the others
    assert ("train_segmentation", "labels=coattention_x_cam+confident") in jobs
    assert not [job for job in jobs if "multiround+" in job[1]]  # the multi-round store is scored, labels none


def test_voc_coseg_config_plans_validation_of_the_real_photos(tmp_path):
    root = shared_dataset("voc_coseg")
    out = run_snakemake(tmp_path, "-n", *configs(tmp_path, "voc_coseg.yaml", dataset={"root": str(root)})).stdout
    assert "validate_dataset" in out and "demo_dataset" not in out


def test_voc12_plans_downloads_unless_the_user_has_the_data(tmp_path):
    out = run_snakemake(tmp_path, "-n", "--quiet", "rules", *configs(tmp_path, "voc12.yaml")).stdout
    assert all(r in out for r in ("download_archive", "extract_archive", "voc12_aug", "validate_dataset"))
    (tmp_path / "VOCdevkit").mkdir()
    (tmp_path / "SBD").mkdir()
    have = {"voc_root": str(tmp_path / "VOCdevkit"), "sbd_root": str(tmp_path / "SBD")}
    out = run_snakemake(tmp_path, "-n", "--quiet", "rules", *configs(tmp_path, "voc12.yaml", voc12=have)).stdout
    assert "voc12_aug" in out and "download_archive" not in out and "extract_archive" not in out


def test_workflow_lints_clean_and_is_formatted(tmp_path):
    proc = run_snakemake(tmp_path, "--lint", check=False)
    assert proc.returncode == 0 and "Congratulations" in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    snakefmt = Path(sys.executable).with_name("snakefmt")
    if not snakefmt.exists():
        pytest.skip(f"{snakefmt} not installed (pip install -e '.[test]')")
    fmt = subprocess.run([snakefmt, "--check", "Snakefile", "rules"], cwd=REPO, capture_output=True, text=True)
    assert fmt.returncode == 0, fmt.stderr


def test_voc12_stage_runs_in_the_dag_against_a_local_server(tmp_path):
    """download_archive -> extract_archive -> voc12_aug -> validate_dataset, on miniature archives."""
    voc_tar, sbd_tgz = build_archives(tmp_path / "upstream")
    files = {"/voc.tar": voc_tar.read_bytes(), "/benchmark.tgz": sbd_tgz.read_bytes()}
    with FaultyServer(files) as server:
        server.drop_after, server.drop_requests = 1024, 1  # whichever download starts first has to resume
        voc12 = {
            "voc_url": server.url("/voc.tar"),
            "voc_md5": hashlib.md5(files["/voc.tar"]).hexdigest(),
            "sbd_url": server.url("/benchmark.tgz"),
            "sbd_md5": hashlib.md5(files["/benchmark.tgz"]).hexdigest(),
        }
        # up to the validated dataset: the later stages are the demo's tests' business
        target = "results/voc12/data/dataset_summary.json"
        run_snakemake(tmp_path, "--cores", "2", target, *configs(tmp_path, "voc12.yaml", voc12=voc12))
        assert sorted(r.range or "" for r in server.requests) == ["", "", "bytes=1024-"]
    summary = json.loads((tmp_path / "results" / "voc12" / "data" / "dataset_summary.json").read_text())
    assert summary["splits"]["train_aug"]["images"] == len(EXPECTED_TRAIN_AUG)
    assert (tmp_path / "data" / "extracted" / "voc" / "VOCdevkit" / "VOC2012" / "JPEGImages").is_dir()
    assert not list((tmp_path / "data" / "downloads").glob("*.part"))
    out = run_snakemake(tmp_path, "-n", target, *configs(tmp_path, "voc12.yaml", voc12=voc12)).stdout
    assert "Nothing to be done" in out


def test_module_sources_follow_absolute_relative_and_cyclic_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "VERSION = 1\n",
        "a.py": "from pkg.sub import b\nimport numpy\n",
        "sub/__init__.py": "",
        "sub/b.py": "from ..c import thing\nfrom . import d\n",
        "sub/d.py": "from pkg import VERSION\nimport pkg.sub.b\n",  # cycle back to b
        "c.py": "thing = 1\n",
        "unused.py": "",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    found = [p.relative_to(pkg).as_posix() for p in module_sources(pkg, ["a.py"])]
    assert found == ["__init__.py", "a.py", "c.py", "sub/__init__.py", "sub/b.py", "sub/d.py"]
    with pytest.raises(FileNotFoundError, match="missing.py"):
        module_sources(pkg, ["missing.py"])
    # a skipped module goes with what only it imports (c.py); d.py is also imported by a.py's other branch
    (pkg / "a.py").write_text("from pkg.sub import b\nfrom pkg.sub import d\n")
    found = [p.relative_to(pkg).as_posix() for p in module_sources(pkg, ["a.py"], skip=["sub/b.py"])]
    assert found == ["__init__.py", "a.py", "sub/__init__.py", "sub/d.py"]
    real = {p.relative_to(REPO / "wsss_core").as_posix() for p in module_sources(REPO / "wsss_core", ["cams/infer.py"])}
    assert {"models/backbones.py", "data/download.py", "fileio.py", "cams/store.py"} <= real
