"""A training job killed mid-run (SIGKILL to Snakemake and its job, as a crash or node failure would)
resumes from its last checkpoint when the workflow is run again."""

import csv
import os
import re
import signal
import subprocess
import sys
import time

import torch

from conftest import REPO, run_snakemake
from test_workflow import configs, plan

# ~1 s an epoch on the tiny demo on a CPU (the first ~5 s): room to kill after the first checkpoint, quick to finish
EPOCHS = 6
CLS = "results/demo_tiny/classifier/cam"


def wait_for(path, proc, output, timeout=300.0):
    """Poll until ``path`` exists; fail if the run ends first or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {path} appeared:\n{output.read_text()}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def test_killed_classifier_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    # On the CPU everywhere: a GPU would finish the tiny epochs between two polls.
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # (the target goes before --configfile, which takes every name after it)
    args = configs(
        tmp_path,
        "tiny.yaml",
        classifier={"method": "cam", "compare": [], "epochs": EPOCHS},
        pseudo_labels={"compare": []},
    )
    target = f"{CLS}/model.pt"
    cmd = [
        sys.executable,
        "-m",
        "snakemake",
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(tmp_path),
        "--cores",
        "2",
        target,
        *args,
    ]
    # Its own process group (session), so that one killpg takes Snakemake and the job it runs.
    output = tmp_path / "killed_run.out"
    with open(output, "w") as out:
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    checkpoint = tmp_path / CLS / "checkpoints" / "last.pt"
    wait_for(checkpoint, proc, output)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)  # written atomically: never half a file
    done = state["epoch"]
    assert 1 <= done < EPOCHS, f"killed after epoch {done} of {EPOCHS}: nothing left to resume"
    assert [r["epoch"] for r in state["history"]] == list(range(1, done + 1))
    assert not (tmp_path / target).exists()  # the model is written only when training ends

    # Snakemake's lock outlives the kill: a plain rerun refuses and names the way out.
    proc = run_snakemake(tmp_path, "--cores", "2", target, *args, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Directory cannot be locked" in out and "It can be removed with the --unlock argument" in out, out
    unlock = run_snakemake(tmp_path, "--unlock", target, *args)
    assert "Unlocked working directory" in unlock.stdout + unlock.stderr
    # The job left no output (the model is written at the end), so it is simply missing, not incomplete.
    jobs, _ = plan(run_snakemake(tmp_path, "-n", target, *args).stdout)
    assert jobs == {("train_classifier", "method=cam"): {"Missing output files": target}}
    run_snakemake(tmp_path, "--cores", "2", "--rerun-incomplete", target, *args)

    log = (tmp_path / "results" / "demo_tiny" / "logs" / "classifier" / "train_cam.log").read_text()
    resumed = re.search(r"resumed from (\S+) after epoch (\d+)", log)
    assert resumed, log
    assert resumed[1] == f"{CLS}/checkpoints/last.pt" and int(resumed[2]) == done
    assert f"epoch {done}:" not in log and f"epoch {done + 1}:" in log  # the finished epochs were not redone
    with open(tmp_path / CLS / "train_history.csv") as f:
        history = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in history] == list(range(1, EPOCHS + 1))
    # The epochs before the kill are the checkpoint's records, wall-clock seconds included: carried over, not re-run.
    for row, record in zip(history, state["history"]):
        assert {k: float(row[k]) for k in record} == {k: float(v) for k, v in record.items()}
    assert (tmp_path / target).is_file()
    assert not checkpoint.exists()  # the finished model supersedes the checkpoint
    assert "Nothing to be done" in run_snakemake(tmp_path, "-n", target, *args).stdout
