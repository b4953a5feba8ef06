"""Faults, with the real tools: `kill -9` of every stage under Snakemake and under DVC, an
MLflow store that is unreachable, two pipelines on one project at once, a disk that fills while
a stage writes; and determinism: two clean runs give the same bytes.

A faulted run must end as if nothing happened: the same command again finishes, with outputs
equal to those of the clean reference run (`smoke_reference`, tests/conftest.py) byte for byte,
and an MLflow record of every attempt (a killed stage: KILLED, then FINISHED). What each
fault does is listed, row by row, in docs/reliability.md.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import ONE_THREAD
from tests.daemon import free_port
from tests.project import (
    edit_params,
    expected_runs,
    runs,
    sh,
    smoke_project,
    stage_runs,
    user_env,
)

from diffpref import settings, tracking
from diffpref.io import MARKER, MARKER_TEXT

pytestmark = pytest.mark.slow

# What records when or where rather than what: the report's pages (they link the MLflow runs),
# training's measured cost and where a resumed training picked up (`resumed_from` beside them).
NOT_COMPARED = {"report.md", "report.html"}
MEASURED = ["train_time_s", "groups_per_s", "images_per_s", "peak_memory_mb"]
SAMPLING = ["sampling_time_s", "extra_sampling_time_s"]  # an online round's sampling wall time
RESUME_RECORD = ["resumed_from_step", "steps_run"]


def result_files(root: Path) -> dict[Path, Path]:
    """The outputs under results/, by relative path; without the checkpoints (a training job's
    scratch), DVC's resolved params (Snakemake resolves them itself) and hidden entries
    (Snakemake's `.snakemake_timestamp`; what a killed writer
    left, checked on their own)."""
    out = {}
    for f in (root / "results").rglob("*"):
        rel = f.relative_to(root / "results")
        hidden = any(p.startswith(".") for p in rel.parts)
        if (
            f.is_file()
            and not hidden
            and rel.parts[0] not in ("checkpoints", "resolved")  # DVC's resolved params
            and f.name not in NOT_COMPARED
        ):
            out[rel] = f
    return out


def content(f: Path) -> bytes:
    """The bytes to compare: the whole file, less the measured training cost."""
    if f.name == "train_metrics.json":
        d = json.loads(f.read_text())
        d["summary"] = {k: v for k, v in d["summary"].items() if k not in MEASURED + RESUME_RECORD}
        d.pop("resumed_from")
        if d.get("sampling"):
            d["sampling"].pop("sampling_time_s")
        return json.dumps(d, sort_keys=True).encode()
    if f.name == "sampling.json":
        return json.dumps({**json.loads(f.read_text()), "sampling_time_s": None}).encode()
    if f.name in ("comparison.csv", "rounds_cost.csv"):
        table = pd.read_csv(f).drop(columns=MEASURED + SAMPLING, errors="ignore")
        return table.to_csv(index=False).encode()
    return f.read_bytes()


def assert_same_results(got: Path, want: Path, partial: bool = False) -> None:
    """Every output of ``got`` is byte for byte the reference's; all of them unless
    ``partial`` (a run stopped part way: what exists must be whole)."""
    g, w = result_files(got), result_files(want)
    assert set(g) <= set(w) if partial else set(g) == set(w), set(g) ^ set(w)
    differ = [str(rel) for rel in sorted(g) if content(g[rel]) != content(w[rel])]
    assert not differ, f"differ from the reference: {differ}"


def leftovers(root: Path) -> list[Path]:
    """Temp folders of killed writers (``diffpref.io.atomic_dir``, training checkpoints)."""
    return [p for p in (root / "results").rglob(".*") if ".tmp" in p.name or ".old" in p.name]


def temp_folder(root: Path, stage: str, pid: int) -> Path | None:
    """The folder ``atomic_dir`` in stage process ``pid`` writes ``results/<stage>`` into."""
    return next((root / "results").glob(f".{stage}.tmp-{pid}-*"), None)


def assert_half_written(root: Path, stage: str, pid: int, reference: Path) -> Path:
    """The killed stage's temp folder is there, holding less than its whole output (a file
    missing, or one not yet its final bytes): the kill landed mid-write. Its path."""
    tmp = temp_folder(root, stage, pid)
    assert tmp, f"{stage}: no temp folder of pid {pid} after its kill: {leftovers(root)}"
    whole = reference / "results" / stage
    got, want = ({f.relative_to(d): f for f in d.rglob("*") if f.is_file()} for d in (tmp, whole))
    del want[Path(settings.READS_FILE)]  # written after the rename, by the stage's record
    assert set(got) <= set(want), set(got) - set(want)
    missing = set(want) - set(got)
    differ = [k for k in got if k.name not in NOT_COMPARED and content(got[k]) != content(want[k])]
    assert missing or differ, f"{stage}: {tmp} holds the whole output: not killed mid-write"
    return tmp


def test_two_clean_runs_give_the_same_bytes_and_the_report_states_its_seeds(
    smoke_reference, smoke_dvc
):
    """Snakemake with MLflow records and DVC without, each in a fresh copy: the same prompts,
    candidates, rewards, labels, adapters, evaluations and report numbers, byte for byte."""
    assert_same_results(smoke_dvc, smoke_reference)
    for name in (
        "prompts",
        "candidates",
        "rewards",
        "labels",
        "adapters/dpo/seed0/round1",
        "report",
    ):
        assert (smoke_reference / "results" / name).is_dir(), name
    # each folder a stage wrote is marked as its own (the same bytes everywhere), so that a
    # later run may replace it; DVC caches the marker with the folder
    for run in (smoke_reference, smoke_dvc):
        for name in ("world", "prompts", "eval/base", "eval/dpo/seed0/round1", "metrics", "plots"):
            assert (run / "results" / name / MARKER).read_text() == MARKER_TEXT, (run, name)
    md = (smoke_reference / "results/report/report.md").read_text()
    assert "training seeds per objective ([0])" in md
    assert "sampling seeds [0, 1]; data seed 0" in md
    assert "resamples, seeded with 0" in md


# --- kill -9 ---------------------------------------------------------------------------------

# Each stage in DAG order, and how long into its work (from the start of its MLflow writer,
# once its imports are done; a HALF_WRITTEN stage's from its temp folder) it is killed at most:
# a seeded uniform draw within about a third of its work time on a quiet 2-core machine.
# `train` is killed just after its first checkpoint (step 5 of 10), so its rerun resumes.
KILL_WITHIN = {
    "world": 1.0,  # from its temp folder (~2.5 s of work in it), after its imports
    "prompts": 0.03,
    "candidates": 2.0,
    "rewards": 0.2,
    "labels": 0.05,
    "train": 0.02,  # from its first checkpoint: killed mid-training, so it must resume
    "evaluate": 2.0,
    "report": 1.0,  # from its temp folder (~2.4 s of plots and pages in it)
}
KILL_TARGET = {  # how each tool names a stage's job (default: the stage's own name)
    "snakemake": {
        s: f"results/{s}" for s in ("world", "prompts", "candidates", "rewards", "labels", "report")
    }
    | {"train": "results/adapters/dpo/seed0/round1", "evaluate": "results/eval/dpo/seed0/round1"},
    "dvc": {"train": "train@dpo-0", "evaluate": "evaluate@dpo-0"},
}
CHECKPOINT = Path("results/checkpoints/dpo/seed0/round1/state")
TRAIN_METRICS = Path("results/adapters/dpo/seed0/round1/train_metrics.json")
# Stages whose whole work runs inside `atomic_dir`: each is killed at a random point after its
# temp folder (`results/.<stage>.tmp-<pid>-<random>`) appears, not its writer, so the kill
# lands on a half-written output, which must be there after the kill and gone after the rerun.
HALF_WRITTEN = ("world", "report")
TOOLS = {  # the command, and its environment (one torch thread, as the reference)
    "snakemake": (["snakemake", "--cores", "1"], {}),
    "dvc": (["dvc", "repro"], ONE_THREAD),
}


def processes(root: Path) -> Iterator[tuple[int, list[str]]]:
    """(pid, argv) of the processes working in ``root`` (other tests on this machine work
    elsewhere)."""
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and os.readlink(d / "cwd") == str(root):
                yield int(d.name), (d / "cmdline").read_bytes().decode().split("\0")[:-1]
        except OSError:  # gone meanwhile, or not ours to read
            continue


def stage_process(root: Path, stage: str) -> tuple[int, list[str]] | None:
    """The `diffpref <stage>` Python process in ``root``; not a shell on the way to it (the
    tool's `sh -c`, a pyenv shim), which would die without the stage ever starting."""
    for pid, argv in processes(root):
        python = len(argv) > 2 and Path(argv[0]).name.startswith("python")
        if python and Path(argv[1]).name == "diffpref" and argv[2] == stage:
            return pid, argv
    return None


def writers(root: Path) -> list[int]:
    """The MLflow writers (``python -m diffpref.tracking``) in ``root``."""
    return [pid for pid, argv in processes(root) if argv[-2:] == ["-m", "diffpref.tracking"]]


def has_writer(pid: int) -> bool:
    """Whether process ``pid`` has started its MLflow writer: its stage has begun (it may
    have run other short-lived children while importing)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return any(Path(f"/proc/{k}/cmdline").read_bytes().endswith(b"-m\0diffpref.tracking\0")
                   for k in kids)  # fmt: skip
    except OSError:
        return False


def wait_for(what: Callable, proc: subprocess.Popen, log, poll: float = 0.05):
    """Poll ``what()`` until it is true; fail if the tool ``proc`` ends first."""
    deadline = time.monotonic() + 600
    while not (found := what()):
        if proc.poll() is not None or time.monotonic() > deadline:
            log.seek(0)
            raise AssertionError(f"{proc.args} ended or timed out first:\n{log.read()}")
        time.sleep(poll)
    return found


def run_name(argv: list[str]) -> str:
    """The MLflow run name of a `python diffpref <stage> [--objective X --seed N]` process
    (DVC's: `--job train@X-N`)."""
    opts = dict(itertools.pairwise(argv[3:]))  # each option to the word after it
    if job := opts.get("--job"):
        objective, seed = job.split("@", 1)[1].rsplit("-", 1)
        return tracking.run_name(argv[2], objective, int(seed))
    seed = opts.get("--seed")
    return tracking.run_name(argv[2], opts.get("--objective"), seed and int(seed))


def kill_during(
    cmd: list[str], root: Path, stage: str, delay: float, env: dict, group: bool = False
) -> tuple[str, int, str]:
    """Run ``cmd`` until ``stage`` works, then SIGKILL its process ``delay`` s later (``group``:
    the tool's whole process group, the tool itself included). The killed run's name, its
    pid and the tool's output; the tool must fail."""
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=root, env=user_env(env), stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        try:
            pid, argv = wait_for(lambda: stage_process(root, stage), proc, log)
            # its work starts with its MLflow writer (training: from its first checkpoint; a
            # HALF_WRITTEN stage: from its temp folder), watched closely, as the work of some
            # stages takes a few hundredths of a second
            working = {
                "train": (root / CHECKPOINT).is_dir,
                **dict.fromkeys(HALF_WRITTEN, lambda: temp_folder(root, stage, pid)),
            }.get(stage, lambda: has_writer(pid))
            wait_for(working, proc, log, poll=0.002)
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.seek(0)
        out = log.read()
    assert code != 0, f"{stage} was not killed in time ({delay:.2f} s):\n{out}"
    return run_name(argv), pid, out


@pytest.fixture(scope="module")
def kill_sequences(smoke_reference, tmp_path_factory) -> dict[str, BaseException | None]:
    """Each tool's kill sequence (:func:`kill_each_stage`), both at once (each pipeline keeps
    one core busy): what each raised, if anything."""
    with ThreadPoolExecutor(len(TOOLS)) as pool:
        jobs = {tool: pool.submit(kill_each_stage, tool, tmp_path_factory.mktemp(tool),
                                  smoke_reference) for tool in TOOLS}  # fmt: skip
    return {tool: job.exception() for tool, job in jobs.items()}


@pytest.mark.parametrize("tool", TOOLS)
def test_kill_9_of_each_stage_then_the_same_command_ends_as_an_uninterrupted_run(
    tool, kill_sequences
):
    """The tool's kill sequence (:func:`kill_each_stage`) passed."""
    if error := kill_sequences[tool]:
        raise error


def kill_each_stage(tool: str, folder: Path, smoke_reference: Path) -> None:
    """For each stage in turn: start the pipeline, `kill -9` the stage at a random point of its
    work; the tool fails, and what exists is whole (a HALF_WRITTEN stage's half-written
    output is there, out of sight). Under DVC the labels kill takes `dvc` itself with it. Then
    the same command finishes: the reference's bytes, training resumed from its checkpoint
    (it runs steps 6 to 10, not 1 to 10), nothing left behind, and in MLflow each killed
    stage has one KILLED run and then one FINISHED run, no run RUNNING."""
    cmd, env = TOOLS[tool]
    root = smoke_project(folder / "project")
    rng = random.Random(tool)
    killed, outputs, half_written = [], {}, []
    for stage, within in KILL_WITHIN.items():
        group = tool == "dvc" and stage == "labels"
        # the stage as the target (with what it needs): which of two ready jobs a tool starts
        # first is its own choice, and the stage to kill must not have run already
        target = [KILL_TARGET[tool].get(stage, stage)]
        delay = rng.uniform(0, within)
        name, pid, outputs[stage] = kill_during([*cmd, *target], root, stage, delay, env, group)
        killed.append(name)
        if stage in HALF_WRITTEN:
            half_written.append(assert_half_written(root, stage, pid, smoke_reference))
        assert_same_results(root, smoke_reference, partial=True)
    final = sh(cmd, root, env=env)
    # training resumed after its kill, in the next run that trained: the evaluate run's, unless
    # the base's evaluation (which needs no training) ran first there and was the one killed
    record = json.loads((root / TRAIN_METRICS).read_text())
    assert record["resumed_from"], f"training started over: {record['summary']}"
    assert (root / record["resumed_from"]).resolve() == (root / CHECKPOINT).resolve()
    assert [record["summary"][k] for k in ("resumed_from_step", "steps_run")] == [5, 5]
    resumed = f"resumed from {record['resumed_from']} at step 5 of 10"
    assert resumed in outputs["evaluate"] + outputs["report"] + final
    assert len(half_written) == len(HALF_WRITTEN) and not any(p.exists() for p in half_written)
    if tool == "dvc":  # `dvc` killed with the stage: its stale read/write lock is dropped
        assert "had been killed. Auto removed it from the lock file." in outputs["train"]
        assert "Data and pipelines are up to date." in sh(["dvc", "status"], root)
    else:
        assert "Nothing to be done" in sh([*cmd, "-n"], root)
    assert "diffpref report" in final
    assert_same_results(root, smoke_reference)
    assert not leftovers(root) and not (root / CHECKPOINT).parent.exists()
    assert not (root / ".mlflow-pending").exists()
    deadline = time.monotonic() + 60  # a killed stage's writer records it on its own
    while writers(root) and time.monotonic() < deadline:
        time.sleep(0.2)
    statuses = defaultdict(list)
    for r in sorted(stage_runs(root), key=lambda r: r.info.start_time):
        statuses[r.info.run_name].append(r.info.status)
    assert len(set(killed)) == len(KILL_WITHIN), killed
    assert statuses == {n: ["KILLED", "FINISHED"] if n in killed else ["FINISHED"]
                        for n in expected_runs(0, online=True)}  # fmt: skip


# --- MLflow unreachable ----------------------------------------------------------------------


def test_an_unreachable_mlflow_store_warns_keeps_the_record_and_replays_it(
    smoke_reference, tmp_path
):
    """The stage writes its outputs and succeeds with a warning naming the store; the record
    waits in .mlflow-pending/ until `diffpref tracking-replay` writes it (an error while the
    store is still down, the record kept)."""
    root = smoke_project(tmp_path / "project")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    down = {"MLFLOW_TRACKING_URI": uri, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    out = sh(["diffpref", "prompts"], root, env=down)
    assert f"WARNING: MLflow store {uri} could not be written (MlflowException: " in out
    (record,) = (root / ".mlflow-pending").glob("*.json")
    assert f"the record of prompts is kept in {record}: `diffpref tracking-replay`" in out
    assert_same_results(root, smoke_reference, partial=True)
    assert (root / "results/prompts/train.parquet").is_file()

    p = subprocess.run(["diffpref", "tracking-replay"], cwd=root, env=user_env(down),
                       capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 1 and f"error: MLflow store {uri}: " in p.stderr
    assert f"; 1 records still kept in {root / '.mlflow-pending'}" in p.stderr
    assert record.is_file()

    start_ms = json.loads(record.read_text())["head"]["start_ms"]
    up = f"sqlite:///{tmp_path / 'store.db'}"  # the store configured when replaying
    out = sh(["diffpref", "tracking-replay"], root, env={"MLFLOW_TRACKING_URI": up})
    assert f"MLflow store {up}: 1 kept records written: prompts" in out
    assert not record.exists()
    (r,) = stage_runs(root, up)
    assert r.info.run_name == "prompts" and r.info.status == "FINISHED"
    assert r.data.metrics["n_train"] == 16 and r.data.params["prompts.n_train"] == "16"
    assert r.info.start_time == start_ms  # the stage's time, not the replay's
    assert r.data.tags["git_commit"] == sh(["git", "rev-parse", "HEAD"], root).strip()


# --- two pipelines at once -------------------------------------------------------------------

LOCKED = {
    "snakemake": "Error: Directory cannot be locked.",
    "dvc": "/results/resolved' is busy, it is being blocked by:",  # its first stage's output
}


@pytest.mark.parametrize("tool", LOCKED)
def test_a_second_pipeline_on_one_project_stops_at_the_lock_and_the_first_finishes(tool, tmp_path):
    """The second `snakemake` (or `dvc repro`) while the first runs a stage (held with
    SIGSTOP, so the timing is certain) fails at once naming the lock, having run nothing;
    the first finishes; the same command afterwards has nothing to do."""
    root = smoke_project(tmp_path / "project")
    cmd = {"snakemake": ["snakemake", "--cores", "1", "results/prompts"],
           "dvc": ["dvc", "repro", "prompts"]}[tool]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        first = subprocess.Popen(cmd, cwd=root, env=user_env(), stdout=log,
                                 stderr=subprocess.STDOUT)  # fmt: skip
        pid, _ = wait_for(lambda: stage_process(root, "prompts"), first, log)
        os.kill(pid, signal.SIGSTOP)
        try:
            second = subprocess.run(cmd, cwd=root, env=user_env(), capture_output=True,
                                    text=True, timeout=120)  # fmt: skip
        finally:
            os.kill(pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 0
    assert second.returncode != 0 and LOCKED[tool] in second.stdout + second.stderr
    again = sh(cmd, root)
    assert ("Nothing to be done" if tool == "snakemake" else "didn't change, skipping") in again
    assert runs(root) == {"prompts": 1}


def test_two_dvc_experiments_run_at_once_from_the_queue_and_both_are_recorded(tmp_path):
    """`dvc exp run --queue` twice (the prompts stage, two data seeds) and `dvc queue start
    -j 2`: both succeed, each with its own FINISHED MLflow run in the project's store."""
    root = smoke_project(tmp_path / "project")
    for seed in (1, 2):
        sh(["dvc", "exp", "run", "--queue", "-S", f"seed={seed}", "prompts"], root)
    # the workers are daemons: their output to a file, not to a pipe this test would wait on
    with tempfile.TemporaryFile("w+") as log:
        subprocess.run(["dvc", "queue", "start", "-j", "2"], cwd=root, env=user_env(),
                       stdout=log, stderr=subprocess.STDOUT, check=True)  # fmt: skip
    deadline = time.monotonic() + 600
    while ("Queued" in (status := sh(["dvc", "queue", "status"], root)) or "Running" in status
           or "0 active, 0 idle" not in status):  # fmt: skip
        assert time.monotonic() < deadline, status
        time.sleep(2)
    assert status.count("Success") == 2, status
    found = [r for r in stage_runs(root) if r.info.status == "FINISHED"]
    assert sorted((r.info.run_name, r.data.params["seed"]) for r in found) == [
        ("prompts", "1"),
        ("prompts", "2"),
    ]
    assert len({r.data.tags["DVC_EXP_NAME"] for r in found}) == 2


# --- disk full -------------------------------------------------------------------------------


def test_a_full_disk_leaves_the_previous_output_and_says_so(tmp_path):
    """`ulimit -f` (the kernel refuses a write past the size limit, EFBIG, as a full disk
    refuses with ENOSPC) on a rerun of the prompts stage that writes more: exit 1 with the
    message, the previous output byte for byte, no temp folder; without the limit the same
    command writes the new output."""
    root = smoke_project(tmp_path / "project")
    env = {"DIFFPREF_MLFLOW": "0"}
    sh(["diffpref", "prompts"], root, env=env)
    before = {f.name: f.read_bytes() for f in (root / "results/prompts").iterdir()}
    edit_params(root, lambda raw: raw["profiles"]["smoke"]["prompts"].update(n_train=400))
    p = subprocess.run(["bash", "-c", "ulimit -f 16 && exec diffpref prompts"], cwd=root,
                       env=user_env(env), capture_output=True, text=True)  # fmt: skip
    assert p.returncode == 1, p.stderr
    assert (
        p.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: results/prompts: not written: a file is over the file size limit (ulimit -f) "
            "([Errno 27] "
        )
    )
    assert p.stderr.rstrip().endswith(
        "the partial output was removed and the previous results/prompts is unchanged"
    )
    assert "Traceback" not in p.stderr
    assert {f.name: f.read_bytes() for f in (root / "results/prompts").iterdir()} == before
    assert not leftovers(root)
    sh(["diffpref", "prompts"], root, env=env)
    assert pd.read_parquet(root / "results/prompts/train.parquet").shape[0] == 400
