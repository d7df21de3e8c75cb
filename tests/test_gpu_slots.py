"""GPU slots: concurrent GPU jobs never share a device, and a killed job frees its slot."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from wsss_core.gpu_slots import _lock_free_slots, gpu_slots, machine_devices


def _hold(devices, lock_dir, count, queue, hold_seconds, kill_self=False):
    with gpu_slots(count, devices=devices, lock_dir=lock_dir, poll_seconds=0.05) as ids:
        queue.put((os.getpid(), ids, os.environ["CUDA_VISIBLE_DEVICES"], time.monotonic()))
        if kill_self:
            queue.close()
            queue.join_thread()  # flush the message before dying
            os.kill(os.getpid(), signal.SIGKILL)  # no finally, no atexit: only the kernel can release
        time.sleep(hold_seconds)
    queue.put((os.getpid(), "released", None, time.monotonic()))


def _start(*args, **kwargs):
    proc = multiprocessing.get_context("fork").Process(target=_hold, args=args, kwargs=kwargs)
    proc.start()
    return proc


def test_two_holders_get_different_devices_and_a_third_waits(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    first = _start([0, 1], tmp_path, 1, queue, 1.5)
    second = _start([0, 1], tmp_path, 1, queue, 1.5)
    got = [queue.get(timeout=30) for _ in range(2)]
    assert sorted(g[1][0] for g in got) == ["0", "1"]
    assert all(g[2] == g[1][0] for g in got)  # the process sees only its own GPU
    third = _start([0, 1], tmp_path, 1, queue, 0.0)
    events = [queue.get(timeout=30) for _ in range(4)]  # two releases, the third's acquisition and release
    for proc in (first, second, third):
        proc.join(30)
    acquired = next(e for e in events if e[0] == third.pid and e[1] != "released")
    first_release = min(e[3] for e in events if e[1] == "released" and e[0] != third.pid)
    assert acquired[3] >= first_release  # it waited for a slot to come free


def test_a_job_takes_all_its_gpus_at_once_or_none(tmp_path):
    held = _lock_free_slots(["0", "1", "2"], 1, tmp_path)
    assert held[0] == ["0"]
    assert _lock_free_slots(["0", "1", "2"], 3, tmp_path) is None  # only two free: takes none
    both = _lock_free_slots(["0", "1", "2"], 2, tmp_path)
    assert both[0] == ["1", "2"]
    for f in held[1] + both[1]:
        f.close()


def test_a_killed_holder_releases_its_slot(tmp_path):
    queue = multiprocessing.get_context("fork").Queue()
    proc = _start([0, 1], tmp_path, 2, queue, 60, kill_self=True)
    pid, ids, _, _ = queue.get(timeout=30)
    assert ids == ["0", "1"]
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    free = _lock_free_slots(["0", "1"], 2, tmp_path)
    assert free is not None and free[0] == ["0", "1"]


def test_no_gpus_means_cpu_and_too_many_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert machine_devices() == []
    with gpu_slots(1, lock_dir=tmp_path) as ids:
        assert ids == []
    with pytest.raises(RuntimeError, match="asks for 3 GPUs but only 2.*gpus.devices"):
        with gpu_slots(3, devices=[0, 1], lock_dir=tmp_path):
            pass
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert machine_devices() == ["2", "5"] and machine_devices([3]) == ["3"]


def test_under_slurm_nothing_is_locked(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    with gpu_slots(1, devices=[0], lock_dir=tmp_path / "locks") as ids:
        assert ids == ["3"]
    assert not (tmp_path / "locks").exists()


SNAKEFILE = """
configfile: "config.yaml"

JOBS = [f"job{i}" for i in range(6)] + ["crash"]


rule all:
    input:
        expand("done/{job}.json", job=JOBS),


rule gpu_job:
    output:
        "done/{job}.json",
    log:
        "logs/{job}.log",
    resources:
        gpu=1,
    script:
        "job.py"
"""

JOB_SCRIPT = """
import json, os, signal, time
from wsss_core.workflow import gpu_job, logged

with logged(snakemake.log[0]), gpu_job(snakemake) as ids:
    record = {"job": snakemake.wildcards.job, "devices": ids, "visible": os.environ["CUDA_VISIBLE_DEVICES"],
              "start": time.time()}
    with open(f"records/{snakemake.wildcards.job}.start", "w") as f:
        json.dump(record, f)
    if snakemake.wildcards.job == "crash":
        os.kill(os.getpid(), signal.SIGKILL)  # killed while holding its slot
    time.sleep(1.5)
    record["end"] = time.time()
    with open(snakemake.output[0], "w") as f:
        json.dump(record, f)
"""


def test_concurrent_gpu_rules_under_resources_gpu_2_never_share_a_slot(tmp_path):
    """Seven jobs declaring gpu=1 under ``--resources gpu=2`` with four cores: at most two run at once,
    two running jobs never hold the same device, and the job killed while holding a slot leaves none held."""
    (tmp_path / "Snakefile").write_text(textwrap.dedent(SNAKEFILE))
    (tmp_path / "job.py").write_text(textwrap.dedent(JOB_SCRIPT))
    (tmp_path / "records").mkdir()
    locks = tmp_path / "locks"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"gpus": {"devices": [0, 1], "lock_dir": str(locks)}}))
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "4", "--resources", "gpu=2", "--keep-going"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0 and "crash" in proc.stderr + proc.stdout  # the killed job failed the run
    done = [json.loads(p.read_text()) for p in sorted((tmp_path / "done").glob("*.json"))]
    assert sorted(r["job"] for r in done) == [f"job{i}" for i in range(6)]
    assert all(len(r["devices"]) == 1 and r["visible"] == r["devices"][0] for r in done)
    assert {r["devices"][0] for r in done} == {"0", "1"}
    overlapping = 0
    for i, a in enumerate(done):
        for b in done[i + 1 :]:
            if a["start"] < b["end"] and b["start"] < a["end"]:
                overlapping += 1
                assert a["devices"] != b["devices"], (a, b)
    assert overlapping > 0  # two jobs did run at the same time
    crash = json.loads((tmp_path / "records" / "crash.start").read_text())
    assert crash["devices"] in (["0"], ["1"])
    assert "GPU slot(s)" in (tmp_path / "logs" / "job0.log").read_text()
    free = _lock_free_slots(["0", "1"], 2, locks)  # nothing left held after the run, the killed job included
    assert free is not None
