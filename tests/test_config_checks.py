"""Config values that would write outside data_dir / results_dir, or keys that contradict each other, fail
when the workflow is parsed, naming the key, before anything is written or deleted."""

from pathlib import Path

import pytest
import yaml

from conftest import REPO, run_snakemake
from wsss_core.config_checks import is_plain_name, merged, path_problems, relation_problems

DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())


def config(**sections):
    return merged(DEFAULTS, sections)


@pytest.mark.parametrize("name", [".", "..", "a/../..", "/tmp/x", "../x", ".hidden", "a/b", "", "a\\b"])
def test_names_that_are_not_plain_folder_names_are_refused(tmp_path, name):
    assert not is_plain_name(name)
    problems = path_problems(config(dataset={"name": name}), tmp_path)
    assert any(p.startswith("config key dataset.name:") for p in problems), problems


@pytest.mark.parametrize("key", ["train_split", "eval_split"])
def test_split_names_build_output_paths_too(tmp_path, key):
    problems = path_problems(config(dataset={key: "../../elsewhere"}), tmp_path)
    assert any(p.startswith(f"config key dataset.{key}:") for p in problems), problems


def test_default_and_shipped_configs_pass(tmp_path):
    assert path_problems(config(), tmp_path) == [] and relation_problems(config()) == []
    for path in sorted((REPO / "config").glob("*.yaml")):
        if path.name == "schema.yaml":
            continue
        cfg = config(**yaml.safe_load(path.read_text()))
        assert path_problems(cfg, tmp_path) == [] and relation_problems(cfg) == [], path.name


@pytest.mark.parametrize(
    "data_dir, results_dir, key",
    [
        ("data", "data", "results_dir"),
        ("data", "data/results", "results_dir"),
        ("out/data", "out", "data_dir"),
        (".", "results", "data_dir"),
        ("data", "..", "results_dir"),
    ],
)
def test_output_roots_must_be_disjoint_and_below_the_working_directory(tmp_path, data_dir, results_dir, key):
    problems = path_problems(config(data_dir=data_dir, results_dir=results_dir), tmp_path)
    assert any(p.startswith(f"config key {key}:") for p in problems), problems


def test_same_folder_spelled_differently_is_caught(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    problems = path_problems(config(data_dir="real", results_dir=str(tmp_path / "link")), tmp_path)
    assert any(p.startswith("config key results_dir:") for p in problems), problems


def test_reserved_data_names_and_a_dataset_inside_the_outputs(tmp_path):
    problems = path_problems(config(dataset={"source": "voc12", "name": "downloads"}), tmp_path)
    assert any("'downloads' is reserved" in p for p in problems), problems
    inside = {"source": "folder", "name": "mine", "root": str(tmp_path / "results" / "mine" / "ds")}
    problems = path_problems(config(dataset=inside), tmp_path)
    assert any(p.startswith("config key dataset.root:") for p in problems), problems


@pytest.mark.parametrize(
    "sections, key",
    [
        ({"classifier": {"resize_long": [80, 48]}}, "classifier.resize_long"),
        ({"affinity": {"scale_range": [1.5, 0.9]}}, "affinity.scale_range"),
        ({"segmentation": {"scale_range": [1.25, 0.75]}}, "segmentation.scale_range"),
        ({"cams": {"eval_thresholds": {"min": 0.8, "max": 0.2, "step": 0.01}}}, "cams.eval_thresholds"),
        ({"affinity": {"low_alpha": 32, "high_alpha": 4}}, "affinity.high_alpha"),
        ({"affinity": {"crop_size": 100, "output_stride": 16}}, "affinity.crop_size"),
        ({"classifier": {"method": "cam+puzzle", "crop_size": 112}}, "classifier.crop_size"),
        ({"classifier": {"lr_policy": "step", "lr_decay_epochs": [10, 5]}}, "classifier.lr_decay_epochs"),
        ({"pseudo_labels": {"threshold": 0.98, "fg_margin": 0.05}}, "pseudo_labels.fg_margin"),
        ({"pseudo_labels": {"threshold": 0.02, "bg_margin": 0.05}}, "pseudo_labels.bg_margin"),
        ({"affinity": {"threshold": 0.97}}, "pseudo_labels.fg_margin"),
        ({"demo": {"n_images": 8, "val_fraction": 0.01}}, "demo.val_fraction"),
        ({"classifier": {"method": "coattention"}, "cams": {"scales": [0.5, 1.5]}}, "cams.scales"),
        ({"cams": {"label_source": "multiround", "multiround": False}}, "cams.label_source"),
    ],
)
def test_relations_between_keys(sections, key):
    problems = relation_problems(config(**sections))
    assert [p for p in problems if p.startswith(f"config key {key}:")], problems


def override(tmp_path, text):
    path = tmp_path / "override.yaml"
    path.write_text(text)
    return ["--configfile", str(REPO / "config" / "tiny.yaml"), str(path)]


def sentinels(tmp_path):
    """Files a destructive output path would take with it: the working folder's, data's and results'."""
    files = [tmp_path / "keep.txt", tmp_path / "data" / "keep.txt", tmp_path / "results" / "keep.txt"]
    for f in files:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("mine")
    return files


@pytest.mark.parametrize(
    "text, key",
    [
        ("dataset: {name: ..}", "dataset.name"),
        ("dataset: {name: .}", "dataset.name"),
        ("dataset: {name: a/../..}", "dataset.name"),
        ("dataset: {name: /tmp/wsss_abs}", "dataset.name"),
        ("results_dir: data", "results_dir"),
        ("results_dir: data/nested", "results_dir"),
        ("classifier: {resize_long: [80, 48]}", "classifier.resize_long"),
    ],
)
def test_the_workflow_refuses_them_at_parse_time_and_deletes_nothing(tmp_path, text, key):
    kept = sentinels(tmp_path)
    proc = run_snakemake(tmp_path, "--cores", "1", *override(tmp_path, text), "--until", "demo_dataset", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"config key {key}" in out, out
    assert all(f.read_text() == "mine" for f in kept)
    assert not (tmp_path / "data" / "demo_tiny").exists() and not Path("/tmp/wsss_abs").exists()
