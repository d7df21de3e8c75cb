"""The SLURM profile (profiles/slurm): its resources against the rules, and the tiny DAG run through
snakemake-executor-plugin-slurm on a fake cluster (tests/fake_slurm/: sbatch, srun, sacct, ... that
run every job on this machine and record each call)."""

import json
import os
import re
import subprocess

import pandas as pd
import pytest
import yaml

from conftest import REPO, run_snakemake

PROFILE = REPO / "profiles" / "slurm"
FAKE_SLURM = REPO / "tests" / "fake_slurm"
TINY = ["--configfile", str(REPO / "config" / "tiny.yaml")]


def profile() -> dict:
    return yaml.safe_load((PROFILE / "config.yaml").read_text())


def declared_resources() -> dict[str, dict[str, int]]:
    """{rule: {resource: int}} for every rule in rules/*.smk, from the literal ints of its
    ``threads:`` and ``resources:`` (gpu, mem_mb, runtime) as the files write them; localrule: 1."""
    rules = {}
    for smk in sorted((REPO / "rules").glob("*.smk")):
        current, section_indent = None, None
        for line in smk.read_text().splitlines():
            indent = len(line) - len(line.lstrip())
            if m := re.match(r"\s*rule (\w+):", line):
                current, section_indent = rules.setdefault(m.group(1), {}), None
            elif current is None or not line.strip():
                continue
            elif m := re.match(r"\s*threads: (\d+)$", line):
                current["threads"] = int(m.group(1))
            elif line.strip() == "localrule: True":
                current["localrule"] = 1
            elif line.strip() == "resources:":
                section_indent = indent
            elif section_indent is not None and indent > section_indent:
                if m := re.fullmatch(r"\s*(\w+)=(\d+),?", line):
                    current[m.group(1)] = int(m.group(2))
            else:
                section_indent = None
    return rules


def gpu_rules() -> set[str]:
    return {rule for rule, res in declared_resources().items() if res.get("gpu")}


def test_profile_sends_every_gpu_rule_to_the_gpu_partition(tmp_path):
    declared = declared_resources()
    listed = set(re.findall(r"^(\w+)", run_snakemake(tmp_path, "--list-rules", *TINY).stdout, re.MULTILINE))
    assert listed and listed <= set(declared) | {"all"}, "the .smk parser misses rules"
    gpus = gpu_rules()
    assert {"train_classifier", "train_segmentation"} <= gpus, gpus  # the parser finds gpu=1
    conf = profile()
    assert conf["executor"] == "slurm" and conf["rerun-incomplete"] is True
    defaults, per_rule = conf["default-resources"], conf["set-resources"]
    assert {"slurm_partition", "mem_mb", "runtime"} <= set(defaults)
    # The plugin takes cpus_per_task before cpus_per_gpu: a default one would undo the GPU rules' setting.
    assert "cpus_per_task" not in defaults
    assert set(per_rule) <= set(declared), f"set-resources names unknown rules: {set(per_rule) - set(declared)}"
    assert gpus <= set(per_rule), f"GPU rules without a GPU partition: {gpus - set(per_rule)}"
    for rule in gpus:
        res = per_rule[rule]
        assert res["slurm_partition"] != defaults["slurm_partition"], rule
        assert res["gpu"] >= declared[rule]["gpu"], rule  # (more GPUs: a training rule runs DDP)
        assert isinstance(res["cpus_per_gpu"], int) and res["cpus_per_gpu"] >= declared[rule]["threads"], rule
        # set-resources overrides the rule: never below the rule's own estimate
        assert res["mem_mb"] >= declared[rule]["mem_mb"] and res["runtime"] >= declared[rule]["runtime"], rule
    # Snakemake itself reads the profile so.
    from snakemake.cli import parse_args

    _, args = parse_args(["--snakefile", str(REPO / "Snakefile"), "--workflow-profile", str(PROFILE)])
    assert args.executor == "slurm" and set(args.set_resources) == set(per_rule)
    assert args.default_resources["slurm_partition"].raw == defaults["slurm_partition"]


def test_account_placeholder_uncommented_sets_the_account(tmp_path):
    text = (PROFILE / "config.yaml").read_text()
    placeholder = re.search(r"^(\s*)# (slurm_account: .*)$", text, re.MULTILINE)
    if placeholder is None:
        pytest.skip("the profile sets an account already")
    (tmp_path / "config.yaml").write_text(text.replace(placeholder.group(0), placeholder.expand(r"\1\2")))
    from snakemake.cli import parse_args

    _, args = parse_args(["--snakefile", str(REPO / "Snakefile"), "--workflow-profile", str(tmp_path)])
    assert "slurm_account" in args.default_resources
    assert "slurm_partition" in args.default_resources and "mem_mb" in args.default_resources


# Over config/tiny.yaml in the Slurm run: one add-on classifier (erasing, 2 rounds), one more recipe (the random
# walk's rules and the saliency labels), one network.
SLIM = {
    "classifier": {"compare": ["cam", "cam+erasing"]},
    "pseudo_labels": {"compare": ["random_walk_saliency"]},
    "segmentation": {"compare": []},
    "evaluation": {"fully_supervised": False},
}


def job_counts(dry_run_stdout: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: {rule: jobs}."""
    counts = {}
    rows = dry_run_stdout.split("Job stats:", 1)[1].splitlines()
    for row in rows[3:]:
        if not (m := re.fullmatch(r"(\w+)\s+(\d+)", row.strip())) or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def rule_of(sbatch_call: dict) -> str:
    """The rule of a submission: the plugin's --comment is rule_<name>[_wildcards_<values>]."""
    return re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", sbatch_call["options"]["comment"]).group(1)


def test_tiny_demo_runs_through_the_slurm_profile_on_a_fake_cluster(tmp_path, monkeypatch):
    conf = profile()
    defaults, per_rule = conf["default-resources"], conf["set-resources"]
    declared, gpus = declared_resources(), gpu_rules()
    cpu_partition, account = defaults["slurm_partition"], defaults.get("slurm_account")
    gpu_partitions = {per_rule[r]["slurm_partition"] for r in gpus}
    # The fake cluster has the profile's partitions (the CPU one the default) and accounts.
    state = tmp_path / "fake_slurm"
    for var in [v for v in os.environ if v.startswith("SLURM_")]:  # (pytest itself inside a Slurm job)
        monkeypatch.delenv(var)
    monkeypatch.setenv("PATH", f"{FAKE_SLURM}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    max_gpus = max(per_rule[r]["gpu"] for r in gpus)
    partitions = [f"{cpu_partition}*", *(f"{p}:{max_gpus}" for p in gpu_partitions)]
    monkeypatch.setenv("FAKE_SLURM_PARTITIONS", ",".join(partitions))
    monkeypatch.setenv("FAKE_SLURM_ACCOUNTS", ",".join(filter(None, ["wsss_default", account])))

    work = tmp_path / "run"
    work.mkdir()
    # The tiny DAG with fewer variants, still every rule once or more: each job is a Snakemake process of its
    # own on the fake cluster, so the tiny config's 50 jobs would cost ~11 min of a 2-core CI run.
    slim = tmp_path / "slim.yaml"
    slim.write_text(yaml.safe_dump(SLIM))
    use_profile = ["--workflow-profile", str(PROFILE), *TINY, str(slim)]
    planned = job_counts(run_snakemake(work, *use_profile, "-n", "--quiet", "rules").stdout)
    every_rule = job_counts(run_snakemake(work, *TINY, "-n", "--quiet", "rules").stdout)
    assert gpus <= set(planned), f"the tiny DAG no longer runs every GPU rule: {gpus - set(planned)}"
    assert set(planned) == set(every_rule), f"the slimmer DAG lacks rules: {set(every_rule) - set(planned)}"
    try:
        # The plugin polls sacct --slurm-init-seconds-before-status-checks (40) after a job ended, 10 s
        # later at each poll that finds none ended: 1 s here, or ~30 short jobs would spend most time waiting.
        run_snakemake(work, *use_profile, "--slurm-init-seconds-before-status-checks", "1")
    finally:
        if (state / "jobs").is_dir():  # a failed run leaves no job of the fake cluster running
            running = [
                p.stem
                for p in (state / "jobs").glob("*.json")
                if p.stem.isdigit() and json.loads(p.read_text())["state"] in ("PENDING", "RUNNING")
            ]
            if running:
                subprocess.run([str(FAKE_SLURM / "scancel"), *running], check=False)

    table = pd.read_csv(work / "results" / "demo_tiny" / "summary.csv")
    main = "coattention_multiround"
    stores = ("cam", "coattention", main, "cam+erasing_round2", "cam+erasing", f"{main}_random_walk")
    recipes = ("confident", "random_walk_saliency")
    runs = (f"{main}+confident",)
    assert table[["stage", "method", "split"]].values.tolist() == [
        *[["cams", store, "train_aug"] for store in stores],
        *[["pseudo_labels", f"{main}+{recipe}", "train_aug"] for recipe in recipes],
        *[["segmentation", run, "val"] for run in runs],
    ]
    assert table["mIoU"].between(0, 100).all()

    calls = [json.loads(line) for line in (state / "calls.jsonl").read_text().splitlines()]
    submissions = [c for c in calls if c["cmd"] == "sbatch"]
    assert submissions, "no sbatch call was recorded"
    assert all("job_id" in c for c in submissions), [c["error"] for c in submissions if "error" in c]
    # Every job of the DAG went through sbatch exactly once, except the local ones (the target rule).
    submitted = {}
    for c in submissions:
        submitted[rule_of(c)] = submitted.get(rule_of(c), 0) + 1
    assert submitted == {r: n for r, n in planned.items() if r != "all" and not declared[r].get("localrule")}
    for c in submissions:
        rule, opts, job = rule_of(c), c["options"], json.loads((state / "jobs" / f"{c['job_id']}.json").read_text())
        assert job["state"] == "COMPLETED", (rule, job)
        assert opts.get("account") == account, (rule, opts)  # no -A while the profile names none
        if rule in gpus:
            res = per_rule[rule]
            assert opts["partition"] == res["slurm_partition"] and opts["gpus"] == str(res["gpu"]), (rule, opts)
            assert opts["cpus-per-gpu"] == str(res["cpus_per_gpu"]) and "cpus-per-task" not in opts, (rule, opts)
            assert opts["mem"] == str(res["mem_mb"]) and opts["time"] == str(res["runtime"]), (rule, opts)
        else:
            assert opts["partition"] == cpu_partition and "gpus" not in opts and "gres" not in opts, (rule, opts)
            assert opts["cpus-per-task"] == str(declared[rule].get("threads", opts["cpus-per-task"])), (rule, opts)
            assert opts["mem"] == str(declared[rule]["mem_mb"]), (rule, opts)
            assert opts["time"] == str(declared[rule]["runtime"]), (rule, opts)
    # Each job ran its rule in one job step inside its allocation: SLURM_JOB_ID set (the GPU jobs leave
    # GPU choice to Slurm then), and the GPU jobs' step saw the GPU Slurm assigned.
    steps = {}
    for c in calls:
        if c["cmd"] == "srun":
            steps.setdefault(c["env"].get("SLURM_JOB_ID"), []).append(c)
    assert set(steps) == {c["job_id"] for c in submissions}
    for c in submissions:
        (step,) = steps[c["job_id"]]
        if rule_of(c) in gpus:
            assert step["options"]["gpus"] == c["options"]["gpus"] and step["env"]["CUDA_VISIBLE_DEVICES"], step
        else:
            assert "gpus" not in step["options"] and "CUDA_VISIBLE_DEVICES" not in step["env"], step
    # and the GPU jobs took Slurm's GPU as it was, without the workstation's lock-file slots
    logs = "\n".join(p.read_text() for p in (work / "results" / "demo_tiny" / "logs").rglob("*.log"))
    for c in submissions:
        if rule_of(c) in gpus:
            assert f"Slurm job {c['job_id']}: GPUs assigned by Slurm" in logs, rule_of(c)
    assert "GPU slot(s)" not in logs
