"""A fake Slurm cluster on one machine, for testing the workflow under snakemake-executor-plugin-slurm.

The executables beside this file (sbatch, srun, sacct, squeue, sinfo, scontrol, scancel, sacctmgr,
sshare) are thin wrappers around :func:`main`. State lives in the folder ``$FAKE_SLURM_DIR``:

- ``calls.jsonl``: one JSON object per call of any command: ``{"cmd", "argv", "cwd", "time", ...}``;
  sbatch adds the parsed ``options`` (long option names, e.g. ``{"partition": "gpu", "gpus": "1"}``)
  and the ``job_id`` it assigned; srun adds the ``SLURM_*``/``CUDA_VISIBLE_DEVICES`` it ran with.
- ``jobs/<id>.json``: a job's record (state, exit code, partition, account, ...), read by sacct/squeue.
- ``jobs/<id>.sh``: the batch script; ``jobs/<id>.runner.log``: the runner's own errors, if any.

``sbatch`` assigns the next job id, writes the record (PENDING) and starts a detached runner
process, then prints the id (``--parsable``) and returns, like a real submission. The runner runs
the script with ``/bin/sh`` in the ``-D`` folder, stdout/stderr to ``--output``/``--error``, with the
submitting environment (``--export=ALL``) plus the ``SLURM_*`` variables a real job sees
(``SLURM_JOB_ID``, ``SLURM_GPUS``, ``SLURM_CPUS_PER_GPU``, ``CUDA_VISIBLE_DEVICES``, ...). It marks the job
RUNNING, then COMPLETED (exit 0), FAILED, TIMEOUT (past ``-t``, killed) or ``CANCELLED by <uid>``
(scancel). Nothing is queued: every job starts at once; memory and CPUs are recorded, not enforced.

The cluster is described by environment variables:

- ``FAKE_SLURM_PARTITIONS``: comma-separated ``name[*][:gpus]`` (``*`` marks the default partition,
  ``gpus`` the GPUs per node); default ``cpu*,gpu:4``. sbatch rejects an unknown partition and a
  GPU request beyond the partition's GPUs, with Slurm's error messages.
- ``FAKE_SLURM_ACCOUNTS``: the user's accounts, comma-separated, the first the default;
  default ``fake_account``. sbatch rejects ``-A`` with any other account; sacctmgr/sshare list them.

Options are parsed with getopt as Slurm does (GNU getopt_long): an option the fake does not know
fails with Slurm's ``invalid option`` error, so a new plugin flag shows up as a failure, not silence.
Only what snakemake-executor-plugin-slurm uses is implemented (no job arrays, no ``#SBATCH`` lines,
no job steps in sacct).
"""

from __future__ import annotations

import contextlib
import fcntl
import getopt
import getpass
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

CLUSTER = "fakecluster"
DEFAULT_PARTITIONS = "cpu*,gpu:4"
DEFAULT_ACCOUNTS = "fake_account"


class SlurmError(Exception):
    """A user-facing error: printed as ``<cmd>: error: <message>``, exit code 1."""


# --------------------------------------------------------------------------- state


def state_dir() -> str:
    path = os.environ.get("FAKE_SLURM_DIR")
    if not path:
        raise SlurmError("FAKE_SLURM_DIR is not set (the fake Slurm keeps its state there)")
    os.makedirs(os.path.join(path, "jobs"), exist_ok=True)
    return path


@contextlib.contextmanager
def locked():
    """An exclusive lock over the fake cluster's state (job ids, calls log)."""
    with open(os.path.join(state_dir(), ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_call(cmd: str, argv: list[str], **extra) -> None:
    entry = {"cmd": cmd, "argv": argv, "cwd": os.getcwd(), "time": time.time(), **extra}
    line = json.dumps(entry) + "\n"
    with locked(), open(os.path.join(state_dir(), "calls.jsonl"), "a") as f:
        f.write(line)


def job_path(job_id: str, suffix: str = ".json") -> str:
    return os.path.join(state_dir(), "jobs", f"{job_id}{suffix}")


def read_job(job_id: str) -> dict | None:
    try:
        with open(job_path(job_id)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def write_job(job: dict) -> None:
    path = job_path(job["id"])
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(job, f)
    os.replace(tmp, path)  # atomic: sacct never reads half a record


def update_job(job_id: str, **changes) -> dict:
    with locked():
        job = read_job(job_id)
        if job.get("state", "").startswith("CANCELLED"):
            changes.pop("state", None)  # a cancelled job stays cancelled
        job.update(changes)
        write_job(job)
    return job


def all_jobs() -> list[dict]:
    folder = os.path.join(state_dir(), "jobs")
    jobs = []
    for name in os.listdir(folder):
        if re.fullmatch(r"\d+\.json", name):
            job = read_job(name[: -len(".json")])
            if job is not None:
                jobs.append(job)
    return sorted(jobs, key=lambda j: int(j["id"]))


def next_job_id() -> str:
    with locked():
        path = os.path.join(state_dir(), "next_job_id")
        try:
            with open(path) as f:
                job_id = int(f.read().strip())
        except FileNotFoundError:
            job_id = 1001
        with open(path, "w") as f:
            f.write(str(job_id + 1))
    return str(job_id)


# --------------------------------------------------------------------------- cluster description


def partitions() -> dict[str, dict]:
    """{name: {"default": bool, "gpus": int}} from FAKE_SLURM_PARTITIONS."""
    spec = os.environ.get("FAKE_SLURM_PARTITIONS", DEFAULT_PARTITIONS)
    result = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, _, gpus = item.partition(":")
        result[name.rstrip("*")] = {"default": name.endswith("*"), "gpus": int(gpus or 0)}
    return result


def accounts() -> list[str]:
    spec = os.environ.get("FAKE_SLURM_ACCOUNTS", DEFAULT_ACCOUNTS)
    return [a.strip() for a in spec.split(",") if a.strip()]


# --------------------------------------------------------------------------- option parsing


def parse(argv: list[str], short: str, long: list[str], aliases: dict[str, str], gnu: bool):
    """getopt as Slurm's getopt_long does it: ({long name: value or True}, positional args).

    Unknown options raise SlurmError with Slurm's wording. Repeated options keep the last value.
    """
    try:
        opts, args = (getopt.gnu_getopt if gnu else getopt.getopt)(argv, short, long)
    except getopt.GetoptError as err:
        if err.opt and len(err.opt) == 1:
            raise SlurmError(f"invalid option -- '{err.opt}'") from None
        raise SlurmError(f"unrecognized option '--{err.opt}'" if err.opt else str(err)) from None

    def takes_value(opt):
        if opt.startswith("--"):
            return opt[2:] + "=" in long
        return short[short.index(opt[1]) + 1 : short.index(opt[1]) + 2] == ":"

    parsed = {}
    for opt, value in opts:
        name = aliases.get(opt.lstrip("-"), opt.lstrip("-"))
        parsed[name] = value if takes_value(opt) else True
    return parsed, args


def parse_minutes(value: str) -> float | None:
    """A Slurm time limit in minutes: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S; None for infinite."""
    value = value.strip()
    if value.lower() in ("infinite", "unlimited", "-1"):
        return None
    days = 0
    if "-" in value:
        d, value = value.split("-", 1)
        days = int(d)
        parts = [int(p) for p in value.split(":")]
        hours, minutes, seconds = (parts + [0, 0])[:3]
    else:
        parts = [int(p) for p in value.split(":")]
        if len(parts) == 1:
            hours, minutes, seconds = 0, parts[0], 0
        elif len(parts) == 2:
            hours, minutes, seconds = 0, parts[0], parts[1]
        else:
            hours, minutes, seconds = parts
    return days * 1440 + hours * 60 + minutes + seconds / 60


def parse_mem_mb(value: str) -> int:
    m = re.fullmatch(r"(\d+)([KMGT]?)B?", value.strip().upper())
    if not m:
        raise SlurmError(f"invalid memory constraint: {value}")
    factor = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2)]
    return max(1, int(int(m.group(1)) * factor))


def gpu_count(options: dict) -> int:
    """GPUs asked for with --gpus=[type:]N or --gres=gpu[:type]:N."""
    count = 0
    if "gpus" in options:
        count = int(str(options["gpus"]).rsplit(":", 1)[-1])
    for gres in str(options.get("gres", "")).split(","):
        parts = gres.split(":")
        if parts and parts[0] == "gpu":
            count = max(count, int(parts[-1]) if len(parts) > 1 and parts[-1].isdigit() else 1)
    return count


# --------------------------------------------------------------------------- sbatch

SBATCH_SHORT = "A:a:b:C:c:D:d:e:G:HhJ:L:M:m:N:n:o:p:Qq:t:VvW:w:x:"
SBATCH_LONG = [
    "account=",
    "array=",
    "begin=",
    "chdir=",
    "workdir=",
    "clusters=",
    "cluster=",
    "comment=",
    "constraint=",
    "cpus-per-gpu=",
    "cpus-per-task=",
    "dependency=",
    "error=",
    "exclude=",
    "exclusive",
    "export=",
    "gpus=",
    "gpus-per-node=",
    "gpus-per-task=",
    "gres=",
    "hold",
    "job-name=",
    "mail-type=",
    "mail-user=",
    "mem=",
    "mem-per-cpu=",
    "mem-per-gpu=",
    "nodelist=",
    "nodes=",
    "ntasks=",
    "ntasks-per-gpu=",
    "ntasks-per-node=",
    "no-requeue",
    "output=",
    "parsable",
    "partition=",
    "qos=",
    "quiet",
    "requeue",
    "reservation=",
    "signal=",
    "test-only",
    "time=",
    "tmp=",
    "verbose",
    "wait",
    "wrap=",
]
SBATCH_ALIASES = {
    "A": "account",
    "a": "array",
    "C": "constraint",
    "c": "cpus-per-task",
    "D": "chdir",
    "workdir": "chdir",
    "d": "dependency",
    "e": "error",
    "G": "gpus",
    "H": "hold",
    "J": "job-name",
    "M": "clusters",
    "cluster": "clusters",
    "N": "nodes",
    "n": "ntasks",
    "o": "output",
    "p": "partition",
    "Q": "quiet",
    "q": "qos",
    "t": "time",
    "v": "verbose",
    "W": "wait",
    "w": "nodelist",
    "x": "exclude",
}


def expand_filename(pattern: str, job: dict) -> str:
    """Slurm's filename patterns: %j %A %a %x %u %N %%."""
    values = {
        "j": job["id"],
        "A": job["id"],
        "a": "4294967294",
        "x": job["name"],
        "u": job["user"],
        "N": socket.gethostname(),
        "%": "%",
    }
    return re.sub(r"%([jAaxuN%])", lambda m: values[m.group(1)], pattern)


def job_environment(job: dict, submit_env: dict[str, str], export: str) -> dict[str, str]:
    """The batch script's environment: the submitter's (--export) plus what slurmd sets."""
    exports = [e for e in export.split(",") if e]
    if exports[:1] == ["NONE"]:
        env = {k: submit_env[k] for k in ("PATH", "HOME", "USER", "LANG") if k in submit_env}
        exports = exports[1:]
    else:
        env = {k: v for k, v in submit_env.items() if not k.startswith("SLURM_")}
        if exports[:1] == ["ALL"]:
            exports = exports[1:]
    for item in exports:
        key, sep, value = item.partition("=")
        if sep:
            env[key] = value
        elif key in submit_env:
            env[key] = submit_env[key]
    node = socket.gethostname()
    env.update(
        {
            "FAKE_SLURM_DIR": state_dir(),
            "SLURM_JOB_ID": job["id"],
            "SLURM_JOBID": job["id"],
            "SLURM_JOB_NAME": job["name"],
            "SLURM_JOB_PARTITION": job["partition"],
            "SLURM_JOB_ACCOUNT": job["account"],
            "SLURM_SUBMIT_DIR": job["submit_dir"],
            "SLURM_SUBMIT_HOST": node,
            "SLURM_CLUSTER_NAME": CLUSTER,
            "SLURM_JOB_NUM_NODES": "1",
            "SLURM_NNODES": "1",
            "SLURM_JOB_NODELIST": node,
            "SLURM_NODELIST": node,
            "SLURMD_NODENAME": node,
            "SLURM_CPUS_ON_NODE": str(job["cpus"]),
            "SLURM_JOB_CPUS_PER_NODE": str(job["cpus"]),
            "SLURM_MEM_PER_NODE": str(job["mem_mb"]),
            "SLURM_NTASKS": str(job["ntasks"]),
            "SLURM_NPROCS": str(job["ntasks"]),
            "SLURM_TASKS_PER_NODE": str(job["ntasks"]),
        }
    )
    if job["options"].get("cpus-per-task"):
        env["SLURM_CPUS_PER_TASK"] = str(job["options"]["cpus-per-task"])
    if job["gpus"]:
        ids = ",".join(str(i) for i in range(job["gpus"]))
        env.update(
            {
                "SLURM_GPUS": str(job["options"].get("gpus", job["gpus"])),
                "SLURM_GPUS_ON_NODE": str(job["gpus"]),
                "SLURM_JOB_GPUS": ids,
                "CUDA_VISIBLE_DEVICES": ids,
            }
        )
        if job["options"].get("cpus-per-gpu"):
            env["SLURM_CPUS_PER_GPU"] = str(job["options"]["cpus-per-gpu"])
    else:
        env.pop("CUDA_VISIBLE_DEVICES", None)  # slurmd hides the node's GPUs from a job without any
    return env


def sbatch(argv: list[str]) -> int:
    """Submit: validate like slurmctld, record the job, start its runner, print the job id."""
    options = {}
    try:
        options, args = parse(argv, SBATCH_SHORT, SBATCH_LONG, SBATCH_ALIASES, gnu=False)
        job_id = submit(options, args)
    except ValueError as err:  # a number or time that does not parse
        record_call("sbatch", argv, options=options, error=str(err))
        raise SlurmError(f"invalid option value: {err}") from None
    except SlurmError as err:
        record_call("sbatch", argv, options=options, error=str(err))
        raise
    record_call("sbatch", argv, options=options, job_id=job_id)
    # The runner outlives this process and must not hold its stdout (the caller reads it to EOF).
    with open(job_path(job_id, ".runner.log"), "w") as log:
        subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--run-job", job_id],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
    print(job_id if options.get("parsable") else f"Submitted batch job {job_id}")
    return 0


def submit(options: dict, args: list[str]) -> str:
    """The job record, script and environment of a submission; its id."""
    if "array" in options:
        raise SlurmError("the fake sbatch does not support job arrays (--array)")
    if "wrap" in options:
        if args:
            raise SlurmError("script arguments not permitted with --wrap option")
        script = "#!/bin/sh\n" + options["wrap"] + "\n"
    elif args:
        path = args[0]
        with sys.stdin if path in ("-", "/dev/stdin") else open(path) as f:
            script = f.read()
    else:
        raise SlurmError("the fake sbatch needs a script or --wrap (it does not read a script from a terminal)")

    parts = partitions()
    partition = options.get("partition")
    if partition is None:
        partition = next((name for name, p in parts.items() if p["default"]), None)
        if partition is None:
            raise SlurmError("Batch job submission failed: No partition specified or system default partition")
    if partition not in parts:
        raise SlurmError("invalid partition specified: " + partition)
    gpus = gpu_count(options)
    if gpus > parts[partition]["gpus"]:
        raise SlurmError("Batch job submission failed: Requested node configuration is not available")
    user_accounts = accounts()
    account = options.get("account", user_accounts[0] if user_accounts else "")
    if "account" in options and account.lower() not in [a.lower() for a in user_accounts]:
        raise SlurmError("Batch job submission failed: Invalid account or account/partition combination specified")
    time_limit = parse_minutes(options["time"]) if "time" in options else None
    mem_mb = parse_mem_mb(options["mem"]) if "mem" in options else 0
    ntasks = int(options.get("ntasks", 1))
    if gpus and options.get("cpus-per-gpu"):
        cpus = gpus * int(options["cpus-per-gpu"])
    else:
        cpus = ntasks * int(options.get("cpus-per-task", 1))

    job_id = next_job_id()
    workdir = os.path.abspath(options.get("chdir", os.getcwd()))
    job = {
        "id": job_id,
        "name": options.get("job-name", "wrap" if "wrap" in options else os.path.basename(args[0])),
        "user": getpass.getuser(),
        "account": account,
        "partition": partition,
        "state": "PENDING",
        "exit_code": "0:0",
        "submit_time": time.time(),
        "start_time": None,
        "end_time": None,
        "time_limit_min": time_limit,
        "mem_mb": mem_mb,
        "cpus": cpus,
        "gpus": gpus,
        "ntasks": ntasks,
        "workdir": workdir,
        "submit_dir": os.getcwd(),
        "comment": options.get("comment", ""),
        "options": options,
        "script_args": args[1:],
        "pid": None,
    }
    job["stdout"] = os.path.join(workdir, expand_filename(options.get("output", "slurm-%j.out"), job))
    job["stderr"] = os.path.join(workdir, expand_filename(options["error"], job)) if "error" in options else None
    with open(job_path(job_id, ".sh"), "w") as f:
        f.write(script)
    with open(job_path(job_id, ".env.json"), "w") as f:
        json.dump(job_environment(job, dict(os.environ), str(options.get("export", "ALL"))), f)
    write_job(job)
    return job_id


def run_job(job_id: str) -> int:
    """The runner: the job's whole life, from PENDING to a final state."""
    job = read_job(job_id)
    if job["state"] != "PENDING":
        return 0  # cancelled before it started
    with open(job_path(job_id, ".env.json")) as f:
        env = json.load(f)
    stdout = stderr = None
    try:
        os.makedirs(os.path.dirname(job["stdout"]), exist_ok=True)  # (real Slurm fails silently instead)
        stdout = open(job["stdout"], "ab")
        stderr = open(job["stderr"], "ab") if job["stderr"] else subprocess.STDOUT
        proc = subprocess.Popen(
            ["/bin/sh", job_path(job_id, ".sh"), *job["script_args"]],
            cwd=job["workdir"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    except OSError as err:
        update_job(job_id, state="FAILED", exit_code="1:0", end_time=time.time(), reason=str(err))
        return 1
    if update_job(job_id, state="RUNNING", start_time=time.time(), pid=proc.pid)["state"] != "RUNNING":
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # scancel came between the start and this line
    limit = job["time_limit_min"]
    try:
        rc = proc.wait(timeout=None if limit is None else limit * 60)
        timed_out = False
    except subprocess.TimeoutExpired:
        stdout.write(f"slurmstepd: error: *** JOB {job_id} CANCELLED DUE TO TIME LIMIT ***\n".encode())
        stdout.flush()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            rc = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            rc = proc.wait()
        timed_out = True
    if timed_out:
        state, exit_code = "TIMEOUT", "0:15"
    elif rc == 0:
        state, exit_code = "COMPLETED", "0:0"
    elif rc > 0:
        state, exit_code = "FAILED", f"{rc}:0"
    else:
        state, exit_code = ("OUT_OF_MEMORY" if rc == -signal.SIGKILL else "FAILED"), f"0:{-rc}"
    update_job(job_id, state=state, exit_code=exit_code, end_time=time.time())
    return 0


# --------------------------------------------------------------------------- srun

SRUN_SHORT = "A:c:C:D:d:e:G:i:J:KlN:n:o:p:Qq:t:uvW:w:x:X"
SRUN_LONG = [
    "account=",
    "chdir=",
    "constraint=",
    "cpu-bind=",
    "cpus-per-gpu=",
    "cpus-per-task=",
    "error=",
    "exact",
    "exclusive",
    "export=",
    "gpus=",
    "gpus-per-node=",
    "gpus-per-task=",
    "gres=",
    "input=",
    "job-name=",
    "jobid=",
    "label",
    "mem=",
    "mem-per-cpu=",
    "mem-per-gpu=",
    "mpi=",
    "nodelist=",
    "nodes=",
    "ntasks=",
    "ntasks-per-gpu=",
    "ntasks-per-node=",
    "output=",
    "overlap",
    "partition=",
    "pty",
    "quiet",
    "time=",
    "unbuffered",
    "verbose",
]
SRUN_ALIASES = {
    "A": "account",
    "c": "cpus-per-task",
    "C": "constraint",
    "D": "chdir",
    "e": "error",
    "G": "gpus",
    "i": "input",
    "J": "job-name",
    "l": "label",
    "N": "nodes",
    "n": "ntasks",
    "o": "output",
    "p": "partition",
    "Q": "quiet",
    "t": "time",
    "u": "unbuffered",
    "v": "verbose",
    "w": "nodelist",
}
STEP_ENV = (
    "SLURM_JOB_ID",
    "SLURM_JOBID",
    "SLURM_GPUS",
    "SLURM_CPUS_PER_GPU",
    "SLURM_CPUS_PER_TASK",
    "SLURM_JOB_PARTITION",
    "CUDA_VISIBLE_DEVICES",
)


def srun(argv: list[str]) -> int:
    """A job step: runs its command inside the current job (SLURM_JOB_ID), nothing else."""
    options, command = parse(argv, SRUN_SHORT, SRUN_LONG, SRUN_ALIASES, gnu=False)
    env = {k: os.environ[k] for k in STEP_ENV if k in os.environ}
    record_call("srun", argv, options=options, env=env)
    job_id = os.environ.get("SLURM_JOB_ID")
    job = read_job(job_id) if job_id else None
    if job is None:
        raise SlurmError("the fake srun only runs job steps inside a job submitted with the fake sbatch")
    if not command:
        raise SlurmError("no command given")
    if gpu_count(options) > job["gpus"]:
        raise SlurmError("Unable to create step for job %s: More processors requested than permitted" % job_id)
    os.environ["SLURM_STEP_ID"] = os.environ["SLURM_STEPID"] = "0"
    step_env = {
        "ntasks": "SLURM_NTASKS",
        "cpus-per-task": "SLURM_CPUS_PER_TASK",
        "gpus": "SLURM_GPUS",
        "cpus-per-gpu": "SLURM_CPUS_PER_GPU",
    }
    for option, name in step_env.items():  # what srun exports for the step's own options
        if option in options:
            os.environ[name] = str(options[option])
    if gpu_count(options):
        os.environ["SLURM_STEP_GPUS"] = os.environ.get("SLURM_JOB_GPUS", "")
    if "chdir" in options:
        os.chdir(options["chdir"])
    os.execvp(command[0], command)  # stdin (a script for `sh -s`), stdout and the exit code pass through


# --------------------------------------------------------------------------- sacct / squeue


def sacct_field(job: dict, field: str) -> str:
    f = field.lower()
    end = job["end_time"] or time.time()
    elapsed = int(end - job["start_time"]) if job["start_time"] else 0
    values = {
        "jobid": job["id"],
        "jobidraw": job["id"],
        "jobname": job["name"],
        "state": job["state"],
        "exitcode": job["exit_code"],
        "account": job["account"],
        "partition": job["partition"],
        "nodelist": socket.gethostname() if job["start_time"] else "None assigned",
        "reason": job.get("reason", "None"),
        "user": job["user"],
        "comment": job["comment"],
        "workdir": job["workdir"],
        "alloccpus": str(job["cpus"]),
        "reqmem": f"{job['mem_mb']}M",
        "elapsed": time.strftime("%H:%M:%S", time.gmtime(elapsed)),
        "cluster": CLUSTER,
        "timelimit": "UNLIMITED" if job["time_limit_min"] is None else str(int(job["time_limit_min"])),
        "alloctres": f"cpu={job['cpus']},mem={job['mem_mb']}M" + (f",gres/gpu={job['gpus']}" if job["gpus"] else ""),
    }
    return values.get(f, "")


def print_table(rows: list[list[str]], fields: list[tuple[str, int]], header: bool, parsable: str | None) -> None:
    lines = []
    if parsable is not None:
        if header:
            rows = [[name for name, _ in fields], *rows]
        for row in rows:
            lines.append("|".join(row) + ("|" if parsable == "p" else ""))
    else:

        def cell(value, width):
            return value[: width - 1] + "+" if len(value) > width else value.rjust(width)

        if header:
            lines.append(" ".join(cell(name, w) for name, w in fields))
            lines.append(" ".join("-" * w for _, w in fields))
        lines += [" ".join(cell(v, w) for v, (_, w) in zip(row, fields)) for row in rows]
    if lines:
        print("\n".join(lines))


def field_list(spec: str, default_width: int = 10) -> list[tuple[str, int]]:
    fields = []
    for item in filter(None, spec.split(",")):
        name, _, width = item.partition("%")
        fields.append((name, abs(int(width)) if width else default_width))
    return fields


SACCT_SHORT = "aA:bcC:DeE:f:F:g:hi:I:j:k:K:lLM:nN:o:pPq:r:s:S:Ttu:UvVW:x:X"
SACCT_LONG = [
    "allusers",
    "accounts=",
    "allocations",
    "brief",
    "clusters=",
    "cluster=",
    "delimiter=",
    "endtime=",
    "format=",
    "fields=",
    "jobs=",
    "local",
    "long",
    "allclusters",
    "name=",
    "noconvert",
    "noheader",
    "parsable",
    "parsable2",
    "partition=",
    "state=",
    "starttime=",
    "user=",
    "uid=",
    "units=",
    "verbose",
]
SACCT_ALIASES = {
    "a": "allusers",
    "A": "accounts",
    "b": "brief",
    "E": "endtime",
    "o": "format",
    "fields": "format",
    "j": "jobs",
    "l": "long",
    "L": "allclusters",
    "M": "clusters",
    "cluster": "clusters",
    "n": "noheader",
    "p": "parsable",
    "P": "parsable2",
    "r": "partition",
    "s": "state",
    "S": "starttime",
    "u": "user",
    "uid": "user",
    "v": "verbose",
    "X": "allocations",
}


def sacct(argv: list[str]) -> int:
    record_call("sacct", argv)
    options, _ = parse(argv, SACCT_SHORT, SACCT_LONG, SACCT_ALIASES, gnu=True)
    jobs = all_jobs()
    steps = None
    if "jobs" in options:
        wanted = str(options["jobs"]).split(",")
        steps = {w.split(".", 1)[1] for w in wanted if "." in w}
        ids = {w.split(".", 1)[0] for w in wanted}
        jobs = [j for j in jobs if j["id"] in ids]
        if steps and all("." in w for w in wanted):
            jobs = []  # the fake keeps no step accounting: a query for steps only finds none
    if "name" in options:
        names = set(str(options["name"]).split(","))
        jobs = [j for j in jobs if j["name"] in names]
    if "user" in options and options["user"] not in ("-1",):
        users = set(str(options["user"]).split(","))
        jobs = [j for j in jobs if j["user"] in users]
    if "state" in options:
        states = {s.upper() for s in str(options["state"]).split(",")}
        jobs = [j for j in jobs if j["state"].split()[0] in states]
    if "partition" in options:
        jobs = [j for j in jobs if j["partition"] in str(options["partition"]).split(",")]
    spec = (
        "JobID,State,ExitCode"
        if options.get("brief")
        else options.get("format", "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode")
    )
    fields = field_list(str(spec))
    parsable = "P" if "parsable2" in options else "p" if "parsable" in options else None
    rows = [[sacct_field(j, name) for name, _ in fields] for j in jobs]
    print_table(rows, fields, header="noheader" not in options, parsable=parsable)
    return 0


SQUEUE_CODES = {
    "i": "jobid",
    "A": "jobid",
    "T": "state",
    "j": "jobname",
    "P": "partition",
    "u": "user",
    "a": "account",
    "t": "state",
}


def squeue(argv: list[str]) -> int:
    record_call("squeue", argv)
    options, _ = parse(
        argv,
        "hj:n:o:p:t:u:A:M:",
        ["noheader", "jobs=", "name=", "format=", "partition=", "states=", "user=", "account=", "clusters=", "me"],
        {
            "h": "noheader",
            "j": "jobs",
            "n": "name",
            "o": "format",
            "p": "partition",
            "t": "states",
            "u": "user",
            "A": "account",
            "M": "clusters",
        },
        gnu=True,
    )
    jobs = all_jobs()
    if "jobs" in options:
        jobs = [j for j in jobs if j["id"] in str(options["jobs"]).split(",")]
    if "name" in options:
        jobs = [j for j in jobs if j["name"] in str(options["name"]).split(",")]
    states = str(options.get("states", "PENDING,RUNNING")).upper().split(",")
    if "ALL" not in states:
        jobs = [j for j in jobs if j["state"].split()[0] in states]
    fmt = str(options.get("format", "%i %P %j %u %T"))

    def render(job):
        def code(m):
            value = sacct_field(job, SQUEUE_CODES.get(m.group(2), ""))
            if m.group(2) == "t":
                value = {
                    "PENDING": "PD",
                    "RUNNING": "R",
                    "COMPLETED": "CD",
                    "FAILED": "F",
                    "TIMEOUT": "TO",
                    "CANCELLED": "CA",
                }.get(value.split()[0], value)
            width = m.group(1)
            return value.ljust(int(width)) if width else value

        return re.sub(r"%\.?(\d*)([A-Za-z])", code, fmt)

    if "noheader" not in options:
        print(re.sub(r"%\.?\d*([A-Za-z])", lambda m: SQUEUE_CODES.get(m.group(1), m.group(1)).upper(), fmt))
    for job in jobs:
        print(render(job))
    return 0


# --------------------------------------------------------------------------- scancel / sinfo / scontrol / accounts


def scancel(argv: list[str]) -> int:
    record_call("scancel", argv)
    options, ids = parse(
        argv, "M:n:u:", ["clusters=", "name=", "user=", "me"], {"M": "clusters", "n": "name", "u": "user"}, gnu=True
    )
    if "name" in options:
        ids += [j["id"] for j in all_jobs() if j["name"] == options["name"]]
    for job_id in ids:
        job = read_job(job_id.split("_")[0])
        if job is None:
            print(f"scancel: error: Kill job error on job id {job_id}: Invalid job id specified", file=sys.stderr)
            continue
        if job["state"] in ("PENDING", "RUNNING"):
            job = update_job(job["id"], state=f"CANCELLED by {os.getuid()}", exit_code="0:15", end_time=time.time())
            if job.get("pid"):  # (a runner that has not started it yet sees the state and does not)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(job["pid"], signal.SIGTERM)
    return 0


def sinfo(argv: list[str]) -> int:
    record_call("sinfo", argv)
    options, _ = parse(
        argv,
        "ho:p:sM:",
        ["noheader", "format=", "partition=", "summarize", "clusters="],
        {"h": "noheader", "o": "format", "p": "partition", "s": "summarize", "M": "clusters"},
        gnu=True,
    )
    fmt = str(options.get("format", "%P %a %l %D %G"))
    parts = partitions()
    columns = {"P": "PARTITION", "a": "AVAIL", "l": "TIMELIMIT", "D": "NODES", "G": "GRES", "N": "NODELIST"}

    def row(name, p):
        values = {
            "P": name + ("*" if p["default"] else ""),
            "a": "up",
            "l": "infinite",
            "D": "1",
            "G": f"gpu:{p['gpus']}" if p["gpus"] else "(null)",
            "N": socket.gethostname(),
        }
        return re.sub(r"%\.?\d*([A-Za-z])", lambda m: values.get(m.group(1), ""), fmt)

    if "noheader" not in options:
        print(re.sub(r"%\.?\d*([A-Za-z])", lambda m: columns.get(m.group(1), m.group(1)), fmt))
    for name, p in parts.items():
        if "partition" not in options or name == options["partition"]:
            print(row(name, p))
    return 0


def scontrol(argv: list[str]) -> int:
    record_call("scontrol", argv)
    options, args = parse(argv, "M:o", ["clusters=", "oneliner"], {"M": "clusters", "o": "oneliner"}, gnu=True)
    if args[:2] == ["show", "config"]:
        print(f"Configuration data as of {time.strftime('%Y-%m-%dT%H:%M:%S')}")
        print(f"ClusterName             = {CLUSTER}")
        print("MaxArraySize            = 1001")
        print("MinJobAge               = 300 sec")
        print("SelectType              = select/cons_tres")
        return 0
    if args[:2] == ["show", "partition"]:
        for name, p in partitions().items():
            if len(args) > 2 and args[2] != name:
                continue
            gres = f"gpu:{p['gpus']}" if p["gpus"] else "(null)"
            print(
                f"PartitionName={name}\n   Default={'YES' if p['default'] else 'NO'} MaxTime=UNLIMITED "
                f"MaxNodes=UNLIMITED State=UP TotalCPUs={os.cpu_count()} TotalNodes=1\n"
                f"   TRES=cpu={os.cpu_count()},gres/gpu={p['gpus']} Gres={gres}\n"
            )
        return 0
    if args[:2] == ["show", "job"] and len(args) == 3:
        job = read_job(args[2])
        if job is None:
            raise SlurmError("Invalid job id specified")
        print(
            f"JobId={job['id']} JobName={job['name']}\n   JobState={job['state'].split()[0]} "
            f"ExitCode={job['exit_code']}\n   Partition={job['partition']} Account={job['account']}\n"
        )
        return 0
    raise SlurmError(f"the fake scontrol knows only 'show config|partition|job <id>', not {' '.join(args)!r}")


def sacctmgr(argv: list[str]) -> int:
    """``sacctmgr -n -s list user <name> format=account%N``: the user's accounts, one a line."""
    record_call("sacctmgr", argv)
    options, args = parse(
        argv,
        "inPps",
        ["immediate", "noheader", "parsable", "parsable2", "associations"],
        {"i": "immediate", "n": "noheader", "P": "parsable2", "p": "parsable", "s": "associations"},
        gnu=True,
    )
    words = [a.lower() for a in args]
    if words[:2] not in (["list", "user"], ["show", "user"]) or len(args) < 3:
        raise SlurmError(f"the fake sacctmgr knows only 'list user <name> format=...', not {' '.join(args)!r}")
    fmt = next((a.split("=", 1)[1] for a in args if a.lower().startswith("format=")), "User,Account")
    fields = field_list(fmt)
    rows = [
        [{"user": args[2], "account": account}.get(name.lower(), "") for name, _ in fields] for account in accounts()
    ]
    parsable = "P" if "parsable2" in options else "p" if "parsable" in options else None
    print_table(rows, fields, header="noheader" not in options, parsable=parsable)
    return 0


def sshare(argv: list[str]) -> int:
    """``sshare -U --format Account%N --noheader``: the user's accounts."""
    record_call("sshare", argv)
    options, _ = parse(
        argv,
        "ahlno:PpUu:",
        ["all", "noheader", "long", "format=", "parsable", "parsable2", "Users", "users="],
        {
            "a": "all",
            "h": "noheader",
            "l": "long",
            "n": "noheader",
            "o": "format",
            "P": "parsable2",
            "p": "parsable",
            "U": "Users",
            "u": "users",
        },
        gnu=True,
    )
    fields = field_list(str(options.get("format", "Account,User,RawShares")))
    rows = [
        [{"account": a, "user": getpass.getuser(), "rawshares": "1"}.get(n.lower(), "") for n, _ in fields]
        for a in accounts()
    ]
    parsable = "P" if "parsable2" in options else "p" if "parsable" in options else None
    print_table(rows, fields, header="noheader" not in options, parsable=parsable)
    return 0


COMMANDS = {
    "sbatch": sbatch,
    "srun": srun,
    "sacct": sacct,
    "squeue": squeue,
    "scancel": scancel,
    "sinfo": sinfo,
    "scontrol": scontrol,
    "sacctmgr": sacctmgr,
    "sshare": sshare,
}


def main(cmd: str, argv: list[str]) -> int:
    try:
        return COMMANDS[cmd](argv)
    except SlurmError as err:
        print(f"{cmd}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # the runner that sbatch starts: python _fake_slurm.py --run-job <id>
    sys.exit(run_job(sys.argv[2]))
