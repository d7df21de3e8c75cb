"""Checks of the workflow configuration, run when the workflow is parsed.

:func:`apply_schema` checks each value on its own against the schema (config/schema.yaml) and fills in
its defaults. Two kinds of mistakes need the values together:

* output paths: a value that builds a path (``dataset.name``, the split names, ``data_dir``, ``results_dir``)
  must leave every output strictly inside ``data_dir`` or ``results_dir``. Snakemake deletes the outputs of a
  failed job, so an output path that resolves to ``data_dir`` itself, its parent or the checkout would be
  removed wholesale; two output trees nested in each other make Snakemake refuse the DAG without naming a key.
* relations between keys: ``[min, max]`` pairs, threshold ranges, crop sizes that the networks' strides must
  divide. Caught here, before any job starts, instead of as a torch error deep inside a training rule.

Each function returns a list of problems, one line each, starting with the config key at fault.
It runs inside Snakemake's own interpreter: the standard library and Snakemake's own dependencies only.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path

# A plain file name: no separators, not "." or "..", not hidden, printable.
_PLAIN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
# Folders the workflow itself creates directly under data_dir (rules/data.smk).
RESERVED_DATA_NAMES = ("downloads", "extracted")


def apply_schema(cfg: dict, schema_path: str | os.PathLike) -> list[str]:
    """Check ``cfg`` against the JSON schema at ``schema_path`` and fill in the defaults of the keys it lacks,
    in one pass: every problem as a line ``config key <key>: <message>``.

    A section whose default is ``{}`` is added and then filled with its own keys' defaults. Defaults are copies,
    so that editing the config never edits the schema's values.
    """
    import jsonschema  # Snakemake's dependencies: this runs where Snakemake parses the workflow
    import yaml

    with open(schema_path) as f:
        schema = yaml.safe_load(f)
    check_properties = jsonschema.Draft202012Validator.VALIDATORS["properties"]

    def fill_then_check(validator, properties, instance, subschema):
        if isinstance(instance, dict):
            for name, prop in properties.items():
                if "default" in prop and name not in instance:
                    instance[name] = copy.deepcopy(prop["default"])
        yield from check_properties(validator, properties, instance, subschema)

    validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"properties": fill_then_check})(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: [str(p) for p in e.absolute_path])
    return [f"config key {'.'.join(str(p) for p in e.absolute_path) or '(top level)'}: {e.message}" for e in errors]


def merged(base: dict, override: dict) -> dict:
    """``override`` deep-merged over a copy of ``base``, as Snakemake merges ``--configfile`` files."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(defaults: str | os.PathLike, files=(), schema: str | os.PathLike | None = None) -> dict:
    """The workflow's config outside Snakemake (benchmarks, notebooks): ``defaults`` (config.yaml) with each
    of ``files`` merged over it in order; with ``schema``, checked and completed by :func:`apply_schema`
    (ValueError listing the problems)."""
    import yaml

    config = yaml.safe_load(Path(defaults).read_text())
    for f in files:
        config = merged(config, yaml.safe_load(Path(f).read_text()) or {})
    if schema is not None:
        problems = apply_schema(config, schema)
        if problems:
            raise ValueError("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems))
    return config


def is_plain_name(name: object) -> bool:
    """Whether ``name`` can be one path component of an output: letters, digits, ``_ . -``, not starting with a dot."""
    return isinstance(name, str) and _PLAIN.fullmatch(name) is not None and name not in (".", "..")


def _resolved(path: str | os.PathLike, workdir: Path) -> Path:
    path = Path(os.path.expanduser(str(path)))
    return Path(os.path.realpath(path if path.is_absolute() else workdir / path))


def _inside(child: Path, parent: Path) -> bool:
    """Whether ``child`` is ``parent`` or below it (both resolved)."""
    return child == parent or parent in child.parents


def path_problems(cfg: dict, workdir: str | os.PathLike = ".") -> list[str]:
    """Problems with the output paths ``cfg`` builds, relative to Snakemake's working directory ``workdir``."""
    workdir = Path(os.path.realpath(workdir))
    problems = []
    dataset = cfg.get("dataset", {})
    name = dataset.get("name")
    for key in ("name", "train_split", "eval_split"):
        value = dataset.get(key)
        if value is not None and not is_plain_name(value):
            problems.append(
                f"config key dataset.{key}: {value!r} must be a plain name (letters, digits, '_', '.', "
                "'-'; not starting with '.'): it names output folders and files"
            )
    data_dir, results_dir = cfg.get("data_dir"), cfg.get("results_dir")
    if not data_dir or not results_dir:
        return problems + [
            f"config key {k}: must be a non-empty path" for k in ("data_dir", "results_dir") if not cfg.get(k)
        ]
    data, results = _resolved(data_dir, workdir), _resolved(results_dir, workdir)
    if data == results:
        problems.append(f"config key results_dir: {results_dir!r} is the same folder as data_dir ({data})")
    elif _inside(results, data):
        problems.append(f"config key results_dir: {results} lies inside data_dir ({data}); use separate folders")
    elif _inside(data, results):
        problems.append(f"config key data_dir: {data} lies inside results_dir ({results}); use separate folders")
    for parent, key in ((data, "data_dir"), (results, "results_dir")):
        if _inside(workdir, parent):
            problems.append(
                f"config key {key}: {parent} contains the working directory {workdir}; "
                "outputs must live in a folder of their own"
            )
    if not is_plain_name(name):
        return problems
    source = dataset.get("source")
    if source in ("demo", "voc12") and name in RESERVED_DATA_NAMES:
        problems.append(
            f"config key dataset.name: {name!r} is reserved: data_dir/{name} holds the downloaded "
            "or extracted archives"
        )
    if source == "folder" and dataset.get("root"):
        root, run = _resolved(dataset["root"], workdir), results / name
        if _inside(root, run):
            problems.append(f"config key dataset.root: {root} lies inside this run's outputs ({run})")
    return problems


def _pair(cfg: dict, section: str, key: str) -> list[str]:
    value = cfg.get(section, {}).get(key)
    if isinstance(value, list) and len(value) == 2 and value[0] > value[1]:
        return [f"config key {section}.{key}: [min, max] expected, got {value} (min > max)"]
    return []


def _stride(section: dict) -> int:
    return 8 if section.get("backbone") == "vgg16_largefov" else section.get("output_stride", 16)


def relation_problems(cfg: dict) -> list[str]:
    """Problems between keys of a config whose values each passed the schema (defaults filled in)."""
    problems = []
    problems += _pair(cfg, "classifier", "resize_long")
    problems += _pair(cfg, "affinity", "scale_range")
    problems += _pair(cfg, "segmentation", "scale_range")

    cls = cfg.get("classifier", {})
    variants = [cls.get("method", ""), *cls.get("compare", [])]
    if any("puzzle" in v.split("+") for v in variants) and "puzzle" in cls:
        tiles, stride, crop = cls["puzzle"]["tiles"], _stride(cls), cls["crop_size"]
        if crop % (tiles * stride):
            problems.append(
                f"config key classifier.crop_size: {crop} must be a multiple of classifier.puzzle.tiles "
                f"x the backbone stride ({tiles} x {stride}) for the +puzzle variants"
            )
    if cls.get("lr_policy") == "step":
        steps = cls.get("lr_decay_epochs", [])
        if steps != sorted(set(steps)):
            problems.append(f"config key classifier.lr_decay_epochs: {steps} must be strictly increasing")

    cams = cfg.get("cams", {})
    coattentive = any(v.split("+")[0] == "coattention" for v in variants) and cams.get("multiround")
    if coattentive and 1.0 not in cams.get("scales", [1.0]):
        problems.append(
            f"config key cams.scales: {cams['scales']} lacks 1.0, the scale multi-round co-attentive "
            "CAMs are computed at (cams.multiround with a coattention classifier)"
        )
    if cams.get("label_source") == "multiround" and not cams.get("multiround"):
        problems.append("config key cams.label_source: 'multiround' needs cams.multiround: true")
    thresholds = cams.get("eval_thresholds")
    if thresholds and thresholds["min"] > thresholds["max"]:
        problems.append(f"config key cams.eval_thresholds: min {thresholds['min']} > max {thresholds['max']}")

    aff = cfg.get("affinity", {})
    if aff and aff["high_alpha"] <= aff["low_alpha"]:
        problems.append(
            f"config key affinity.high_alpha: {aff['high_alpha']} must exceed affinity.low_alpha "
            f"({aff['low_alpha']})"
        )
    if aff and aff["crop_size"] % aff["output_stride"]:
        problems.append(
            f"config key affinity.crop_size: {aff['crop_size']} must be a multiple of "
            f"affinity.output_stride ({aff['output_stride']})"
        )

    pseudo = cfg.get("pseudo_labels", {})
    # the confident recipe's threshold and the random_walk labels' (same margins)
    for key, threshold in (
        ("pseudo_labels.threshold", pseudo.get("threshold")),
        ("affinity.threshold", cfg.get("affinity", {}).get("threshold")),
    ):
        if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
            continue
        if threshold + pseudo["fg_margin"] >= 1:
            problems.append(
                f"config key pseudo_labels.fg_margin: {key} {threshold} + fg_margin "
                f"{pseudo['fg_margin']} >= 1 leaves no CAM value confident foreground"
            )
        if threshold - pseudo["bg_margin"] < 0:
            problems.append(
                f"config key pseudo_labels.bg_margin: {key} {threshold} - bg_margin "
                f"{pseudo['bg_margin']} < 0 leaves no CAM value confident background"
            )

    demo = cfg.get("demo", {})
    if cfg.get("dataset", {}).get("source") == "demo" and demo:
        n_val = round(demo["n_images"] * demo["val_fraction"])
        if n_val < 1 or n_val > demo["n_images"] - 1:
            problems.append(
                f"config key demo.val_fraction: {demo['val_fraction']} of demo.n_images "
                f"{demo['n_images']} leaves the val or the train split empty"
            )
    return problems
