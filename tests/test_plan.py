"""The workflow's plan (wsss_core/plan.py): which classifiers, CAM stores, recipes and networks a config asks for,
what they are called, which config keys each job gets; and the schema pass that checks a config and fills defaults."""

import re

import pytest
import yaml

from conftest import REPO
from wsss_core.config_checks import apply_schema, merged
from wsss_core.plan import REFERENCE, Plan, canonical, one_of, parse_variant, section, without

SCHEMA = REPO / "config" / "schema.yaml"
DEFAULTS = yaml.safe_load((REPO / "config.yaml").read_text())
TINY = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def validated(*overrides) -> dict:
    cfg = DEFAULTS
    for override in overrides:
        cfg = merged(cfg, override)
    assert apply_schema(cfg, SCHEMA) == []
    return cfg


def test_the_tiny_config_plans_every_store_recipe_and_network():
    plan = Plan(validated(TINY))
    # baseline first, then by add-ons; the main classifier is co-attention with multi-round CAMs
    assert plan.classifiers == ["cam", "coattention", "cam+puzzle+binomial+erasing"]
    assert plan.main_classifier == "coattention" and plan.rounds == 2
    assert plan.trained == ["cam", "coattention", "cam+puzzle+binomial"]
    assert plan.erasing_variants == ["cam+puzzle+binomial+erasing"]
    assert plan.round_classifiers("cam+puzzle+binomial+erasing") == [
        "cam+puzzle+binomial",
        "cam+puzzle+binomial+erasing_round2",
    ]
    assert plan.coattentive == ["coattention"]
    assert plan.plain_cams == ["cam", "cam+puzzle+binomial", "cam+puzzle+binomial+erasing_round2"]
    assert plan.main_cams == "coattention_multiround"
    assert plan.cam_stores == [
        "cam",
        "coattention",
        "coattention_multiround",
        "cam+puzzle+binomial",
        "cam+puzzle+binomial+erasing_round2",
        "cam+puzzle+binomial+erasing",
        "coattention_multiround_random_walk",
    ]
    assert plan.recipes == ["confident", "saliency", "random_walk", "random_walk_saliency", "saliency_only"]
    assert plan.seg_runs == ["coattention_multiround+confident", "coattention_multiround+saliency_only", REFERENCE]
    assert plan.main_run == "coattention_multiround+confident"
    assert [plan.run_recipe(r) for r in plan.seg_runs] == ["confident", "saliency_only", None]
    assert plan.recipe_cams("saliency") == "coattention_multiround"
    assert plan.recipe_cams("random_walk_saliency") == "coattention_multiround"
    assert plan.recipe_walked("random_walk_saliency") == "coattention_multiround_random_walk"
    assert plan.recipe_walked("saliency") is None and plan.recipe_walked("random_walk") is None
    assert plan.recipe_cams("random_walk") == "coattention_multiround_random_walk"
    assert plan.recipe_cams("saliency_only") is None


def test_default_config_plans_no_multiround_or_walk_stores_it_does_not_need():
    cfg = validated(
        {
            "classifier": {"method": "cam", "compare": []},
            "pseudo_labels": {"recipe": "saliency", "compare": []},
            "segmentation": {"compare": []},
            "evaluation": {"fully_supervised": False},
        }
    )
    plan = Plan(cfg)
    assert plan.cam_stores == ["cam"] and plan.main_cams == "cam" and plan.seg_runs == ["cam+saliency"]
    # the walked store only where a recipe walks (config.yaml's demo recipe does)
    cfg["pseudo_labels"]["recipe"] = "random_walk_saliency"
    plan = Plan(cfg)
    assert plan.cam_stores == ["cam", "cam_random_walk"] and plan.seg_runs == ["cam+random_walk_saliency"]
    assert plan.recipe_walked(plan.recipe) == "cam_random_walk" and plan.recipe_cams(plan.recipe) == "cam"


def test_co_attention_labels_come_from_the_store_label_source_names_and_the_multi_round_store_is_still_made():
    base = {"classifier": {"method": "coattention", "compare": ["cam"]}, "pseudo_labels": {"compare": []}}
    plan = Plan(validated(base))
    assert plan.main_cams == "coattention" and plan.main_run == f"coattention+{plan.recipe}"
    assert plan.cam_stores[:3] == ["cam", "coattention", "coattention_multiround"]
    plan = Plan(validated(base, {"cams": {"label_source": "multiround"}}))
    assert plan.main_cams == "coattention_multiround"


def test_with_baseline_labels_come_from_a_combined_store_and_the_baseline_is_trained_for_it():
    settings = {"cams": {"label_source": "with_baseline"}, "pseudo_labels": {"recipe": "saliency", "compare": []}}
    for compare, warm_start in (([], False), (["cam"], True)):
        cls = {"method": "coattention", "compare": compare, "coattention": {"warm_start": warm_start}}
        plan = Plan(validated({"classifier": cls}, settings))
        assert plan.combined == {"coattention_x_cam": ["coattention", "cam"]}
        assert plan.main_cams == "coattention_x_cam" and plan.main_run == f"coattention_x_cam+{plan.recipe}"
        assert plan.trained == ["cam", "coattention"] and plan.plain_cams == ["cam"]
        assert plan.coattentive == ["coattention"]
        assert plan.cam_stores[:4] == ["cam", "coattention", "coattention_multiround", "coattention_x_cam"]
        assert plan.recipe_cams("saliency") == "coattention_x_cam" and plan.rw_cams == "coattention_x_cam_random_walk"
    # a co-attention erasing variant: its merged rounds are combined
    cls = {"method": "coattention+erasing", "compare": []}
    plan = Plan(validated({"classifier": cls}, settings))
    assert plan.combined == {"coattention+erasing_x_cam": ["coattention+erasing", "cam"]}
    # the plain method has no co-attention CAMs to combine: the option is the other label sources' no-op
    plan = Plan(validated({"classifier": {"method": "cam", "compare": []}}, settings))
    assert plan.combined == {} and plan.main_cams == "cam" and plan.cam_stores == ["cam"]


def test_each_classifier_gets_only_its_own_sections():
    plan = Plan(validated(TINY))
    base = plan.classifier_config("cam")
    assert base["method"] == "cam" and base["addons"] == []
    assert not {"compare", "coattention", "puzzle", "binomial", "erasing"} & set(base)
    co = plan.classifier_config("coattention")
    assert co["coattention"] == plan.classifier["coattention"] and "puzzle" not in co
    both = plan.classifier_config("cam+puzzle+binomial")
    assert both["addons"] == ["puzzle", "binomial"] and {"puzzle", "binomial"} <= set(both) and "erasing" not in both
    # an add-on's module is an input of the variants that run it only
    assert plan.unused_addon_modules("cam") == ["train/puzzle.py", "train/binomial.py", "train/erasing.py"]
    assert plan.unused_addon_modules("cam+puzzle+binomial+erasing") == []
    assert plan.extra_image_roots("cam") == [] and plan.extra_image_roots("coattention") == []


def test_variant_names_are_canonical_and_errors_name_the_key():
    assert canonical("cam+erasing+puzzle") == "cam+puzzle+erasing"
    assert parse_variant("coattention+binomial") == ("coattention", ("binomial",))
    assert without("cam+puzzle+erasing", "erasing") == "cam+puzzle"
    # the schema's pattern lets a repeated add-on through: the plan names the key
    with pytest.raises(ValueError, match=r"config key classifier.compare\[1\]: 'cam\+puzzle\+puzzle' names an add-on"):
        Plan(validated({"classifier": {"compare": ["cam", "cam+puzzle+puzzle"]}}))
    cfg = validated()
    cfg["classifier"]["method"] = "vit"
    with pytest.raises(ValueError, match="config key classifier.method: 'vit' must start with a method"):
        Plan(cfg)
    with pytest.raises(ValueError, match=r"config key x: 'cam\+bogus' has unknown add-on"):
        canonical("cam+bogus", "x")


def test_one_of_matches_exactly_the_names():
    pattern = one_of(["cam+puzzle", "cam"])
    assert re.fullmatch(pattern, "cam+puzzle") and re.fullmatch(pattern, "cam")
    assert not re.fullmatch(pattern, "cammpuzzle") and not re.fullmatch(pattern, "cam+puzzl")
    assert not re.fullmatch(one_of([]), "") and not re.fullmatch(one_of([]), "cam")
    assert re.fullmatch(one_of([2, 3]), "3")


def test_section_keeps_and_drops_keys_in_the_config_order():
    cfg = {"a": 1, "b": 2, "c": 3}
    assert section(cfg) == cfg and section(cfg) is not cfg
    assert list(section(cfg, keep=("c", "a"))) == ["a", "c"]
    assert section(cfg, drop=("b",)) == {"a": 1, "c": 3}
    assert section(cfg, keep=("a", "b"), drop=("b",)) == {"a": 1}


def test_schema_pass_fills_defaults_and_names_every_bad_key():
    cfg = {"classifier": {"epochs": 0, "lr": "fast"}, "segmentation": {"crop_size": 321}}
    problems = apply_schema(cfg, SCHEMA)
    assert any(p.startswith("config key classifier.epochs:") for p in problems), problems
    assert any(p.startswith("config key classifier.lr:") for p in problems), problems
    assert not any("segmentation" in p for p in problems), problems
    # defaults filled in, nested sections too, without touching what was given
    assert cfg["segmentation"]["crop_size"] == 321 and "batch_size" in cfg["segmentation"]
    assert cfg["affinity"]["radius"] >= 1 and "extra_sources" in cfg["classifier"]["coattention"]
    # the defaults are copies: editing one config leaves the next one's defaults alone
    cfg["classifier"]["resize_long"].append(999)
    again = {}
    apply_schema(again, SCHEMA)
    assert 999 not in again["classifier"]["resize_long"]
    assert apply_schema({"no_such_section": {}}, SCHEMA)[0].startswith("config key (top level):")


def test_a_warm_started_coattention_classifier_gets_the_baseline_trained_first():
    cold = Plan(
        validated({"classifier": {"method": "coattention", "compare": [], "coattention": {"warm_start": False}}})
    )
    assert cold.trained == ["coattention"] and cold.warm_start("coattention") == []
    plan = Plan(
        validated(
            {
                "classifier": {
                    "method": "coattention+erasing",
                    "compare": [],
                    "coattention": {"warm_start": True},
                }
            }
        )
    )
    # the baseline is trained (its weights are an input) though no config names it for its CAMs
    assert plan.trained == ["cam", "coattention"] and plan.classifiers == ["coattention+erasing"]
    assert plan.warm_start("coattention") == ["cam"]
    assert plan.warm_start("coattention+erasing_round2") == ["cam"]  # every erasing round starts from it too
    assert plan.warm_start("cam") == [] and plan.warm_start("cam+puzzle") == []
