"""The smoke DAG through a real single-node SLURM cluster with the shipped workflow profile
(``snakemake --workflow-profile workflow/profiles/slurm --config profile=smoke``), no mocks:
every non-local job is a SLURM job that asked for what params.yaml ``resources:`` says (a fake
GPU on the test node takes the GPU request), the report and MLflow record are complete, and a
job that fails makes Snakemake exit non-zero promptly.

The test node has 2 CPUs, so the project's resources are edited to fit it, as a user fits them
to a cluster; the profile gets the partition and GPU model a user would set. The command line
adds only test knobs: short polling (the plugin's defaults suit real queues), no account (the
test cluster has none) and kept job logs (to read).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from tests.project import edit_params, make_project, runs, sh, stage_runs
from tests.slurm_cluster import Cluster, cluster, missing

from diffpref import config
from diffpref.config import dag

pytestmark = pytest.mark.slow

# the job each stage asks for on the test node: train differs, and takes the (fake) GPU
DEFAULT = {"cpus": 1, "mem_mb": 1800, "runtime": 10, "gpu": 0}
TRAIN = {"mem_mb": 1500, "runtime": 7, "gpu": 1}
LOCAL = {"prompts", "labels", "report"}  # localrules: never SLURM jobs
SLURM_RULES = ["world", "candidates", "rewards", "evaluate_base", "train", "evaluate"]
REPLICA = {f"{stage}@dpo/seed0" for stage in ("train", "evaluate")}  # one training seed
STAGE_RUNS = {*LOCAL, "world", "candidates", "rewards", "evaluate@base", *REPLICA}
# The plugin checks 40 s after a submission, then backs off by 10 s more per check that finds
# no job done: after 2 s its checks come at ~2, 14, 36, 68 s, and a test job takes ~30 s.
TEST_POLLING = [
    "--slurm-init-seconds-before-status-checks",
    "2",
    "--seconds-between-status-checks",
    "1",
    "--slurm-no-account",
    "--slurm-keep-successful-logs",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Cluster:
    gone = missing()
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        gone.append("snakemake-executor-plugin-slurm")
    if gone:
        pytest.skip(
            f"no SLURM here ({', '.join(gone)} missing): bash workflow/scripts/install.sh --tests"
        )
    with cluster(tmp_path_factory.mktemp("slurm") / "state") as c:
        yield c


@dataclass
class Run:
    returncode: int
    out: str
    seconds: float
    end: float  # time.time() when it exited


def snakemake(c: Cluster, root: Path, *extra: str, limit: int = 420) -> Run:
    """The user's command on the cluster, under ``timeout -s INT`` (a misconfigured run hangs;
    SIGINT is what stops it)."""
    cmd = ["timeout", "-s", "INT", str(limit), "snakemake", "--workflow-profile"]
    cmd += ["workflow/profiles/slurm", "--config", "profile=smoke", *TEST_POLLING, *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    start = time.monotonic()
    p = subprocess.run(cmd, cwd=root, env=env | c.env, capture_output=True, text=True)
    return Run(p.returncode, p.stdout + p.stderr, time.monotonic() - start, time.time())


def submitted(out: str) -> dict[str, str]:
    """SLURM job id -> the job's log folder (``rule_<name>[/<wildcards>]``), from Snakemake's
    own log."""
    found = re.findall(
        r"submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/(\S+)/\d+\.log\)", out
    )
    return dict(found)


def fit_test_node(raw: dict) -> None:
    raw["train_seeds"] = [0]
    raw["resources"]["embedded"] = {"default": DEFAULT, "train": TRAIN}


@pytest.fixture(scope="module")
def ran(slurm, tmp_path_factory) -> tuple[Path, Run]:
    root = make_project(tmp_path_factory.mktemp("slurm-dag") / "project")
    edit_params(root, fit_test_node)
    profile = root / "workflow/profiles/slurm/config.yaml"
    conf = yaml.safe_load(profile.read_text())
    conf["default-resources"].update(slurm_partition="debug", gpu_model="fake")
    profile.write_text(yaml.safe_dump(conf))
    run = snakemake(slurm, root)
    assert run.returncode == 0, run.out[-6000:]
    print(f"smoke DAG on SLURM: {run.seconds:.0f} s")
    return root, run


def test_every_job_went_through_slurm_with_the_params_resources(slurm, ran):
    root, run = ran
    jobs = submitted(run.out)
    rules = sorted(r.split("/")[0].removeprefix("rule_") for r in jobs.values())
    assert rules == sorted(SLURM_RULES), run.out[-4000:]
    assert sorted(re.findall(r"^localrule (\w+):", run.out, re.M)) == sorted([*LOCAL, "all"])
    known = slurm.jobs()  # what the controller recorded: finished jobs stay for an hour
    for jid, rule in jobs.items():
        job = known[jid]
        assert (job["JobState"], job["ExitCode"]) == ("COMPLETED", "0:0"), (rule, job)
        assert job["Comment"].startswith(rule.split("/")[0]), (rule, job["Comment"])
        want = DEFAULT | (TRAIN if rule.startswith("rule_train/") else {})
        assert job["NumCPUs"] == str(want["cpus"]), (rule, job["NumCPUs"])
        assert job["MinMemoryNode"] == f"{want['mem_mb']}M", (rule, job["MinMemoryNode"])
        assert job["TimeLimit"] == f"00:{want['runtime']:02d}:00", (rule, job["TimeLimit"])
        gpus = job.get("TresPerJob", "gres:gpu:fake:0")
        assert gpus == f"gres:gpu:fake:{want['gpu']}", (rule, gpus)
        # the stage itself ran inside the job: its log (kept) has the stage's own last words
        log = (root / ".snakemake/slurm_logs" / rule / f"{jid}.log").read_text()
        stage = rule.removeprefix("rule_").split("/")[0].replace("evaluate_base", "evaluate")
        assert re.search(rf"\b{stage}\b.* finished: start", log), log[-3000:]


def test_report_and_mlflow_record_are_complete(ran):
    root, _ = ran
    report = root / "results" / "report"
    for f in ("report.html", "report.md", "comparison.csv", "image_grid.png", "rewards.png"):
        assert (report / f).stat().st_size > 0, f
    assert {p.stem for p in (root / "results/metrics").glob("*.json")} == {"base", "dpo"}
    got = runs(root)
    assert set(got) == STAGE_RUNS and all(v == 1 for v in got.values()), got
    for r in stage_runs(root):
        assert r.info.status == "FINISHED", r.info.run_name
        assert r.data.params and "wall_time_s" in r.data.metrics, r.info.run_name
    # every job, on the cluster or local, nested under the one pipeline run of this invocation
    assert len({r.data.tags["mlflow.parentRunId"] for r in stage_runs(root)}) == 1


def test_a_failing_job_stops_snakemake_promptly(slurm, ran):
    root, _ = ran
    (root / "results/labels/pairwise.parquet").write_bytes(b"not a parquet file")
    run = snakemake(slurm, root, "--forcerun", "train", limit=240)
    assert run.returncode not in (0, 124), run.out[-4000:]  # failed, not timed out
    failed = [j for j in slurm.jobs().values() if j["JobState"] == "FAILED"]
    assert len(failed) == 1 and submitted(run.out)[failed[0]["JobId"]].startswith("rule_train/")
    # from the failed job's end (to the second) to Snakemake's exit: the plugin sees the failure
    # at its next status check and exits after the one after that, two back-off intervals
    # (< 80 s for a job failing in its first minute); not never, as where sacct polls a cluster
    # without accounting
    end = time.mktime(time.strptime(failed[0]["EndTime"], "%Y-%m-%dT%H:%M:%S"))
    assert run.end - end < 90, (run.end - end, run.out[-4000:])
    assert "Error in rule train" in run.out
    train = [r for r in stage_runs(root) if r.info.run_name == "train@dpo/seed0"]
    assert sorted(r.info.status for r in train) == ["FAILED", "FINISHED"]


def test_local_profile_hands_each_rule_its_params_resources(tmp_path):
    """No cluster needed: the one-machine profile under SDXL, threads capped at the cores."""
    root = make_project(tmp_path / "p")
    # the prompt file the profile names, which its user downloads (an input of `prompts`)
    tsv = root / "data" / "prompts" / "PartiPrompts.tsv"
    tsv.write_text("Prompt\tCategory\na cat\tAnimals\n")
    cmd = ["snakemake", "-n", "--workflow-profile", "workflow/profiles/local"]
    out = sh([*cmd, "--config", "profile=sdxl"], root)
    cfg, _ = config.load(root / "params.yaml", "sdxl")
    seen = set()
    for block in re.split(r"\n(?=\[.*\]\n)", out):
        m = re.search(r"^rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        stage = dag.stage_of(m.group(1))  # a round's jobs: its stage's resources
        want = dag.job_resources(cfg, stage)
        got = dict(re.findall(r"(\w+)=(\d+)", re.search(r"resources: (.*)", block).group(1)))
        assert (got["mem_mb"], got["runtime"], got["gpu"]) == tuple(
            str(v) for v in (want.mem_mb, want.runtime, want.gpu)
        ), block
        threads = re.search(r"threads: (\d+)", block)
        assert int(threads.group(1) if threads else 1) == min(want.cpus, os.cpu_count()), block
        seen.add(stage)
    assert seen == {dag.stage_of(r) for r in dag.STAGES}
