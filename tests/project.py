"""A fresh copy of the project (git + DVC initialised) for tests that run the real DAG, and
what its MLflow store recorded."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import mlflow
import yaml
from tests.conftest import REPO

COPY = [
    "Snakefile",
    "dvc.yaml",
    "params.yaml",
    "workflow",
    "src",
    "data",
    ".dvcignore",
    ".gitignore",
]


def user_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a command run as a user would: no MLflow/DVC settings leak in from
    the test process but those in ``env``."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    return keep | (env or {})


def sh(cmd: list[str], cwd: Path, check: bool = True, env: dict[str, str] | None = None) -> str:
    """Run a command as a user would in ``cwd`` (:func:`user_env`); fail with its output."""
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=user_env(env))
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout + p.stderr


def make_project(root: Path) -> Path:
    root.mkdir()
    for name in COPY:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, root / name)
    # the DAG with one objective on two training seeds (every objective's training runs in
    # test_training_methods.py); the seeds are top-level so that both tools expand the same
    edit_params(root, one_objective_two_seeds)
    sh(["git", "init", "-q"], root)
    sh(["git", "config", "user.email", "t@example.com"], root)
    sh(["git", "config", "user.name", "test"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    return root


def copy_project(src: Path, dst: Path) -> Path:
    """A copy of a finished project to go on working in (mtimes kept: Snakemake compares
    them). Its MLflow store is re-pointed at the copy's own artifacts folder (the store keeps
    absolute artifact paths), so that new runs write there and not into ``src``."""
    shutil.copytree(src, dst, symlinks=True)
    db = dst / "mlflow.db"
    if db.is_file():
        old, new = (f"{(p / 'mlartifacts').resolve().as_uri()}" for p in (src, dst))
        with sqlite3.connect(db) as con:
            con.execute(
                "UPDATE experiments SET artifact_location = replace(artifact_location, ?, ?)",
                (old, new),
            )
            con.execute("UPDATE runs SET artifact_uri = replace(artifact_uri, ?, ?)", (old, new))
        con.close()
    return dst


SMOKE_ONLINE = {"objectives": ["dpo"], "rounds": [{"round": 2, "after": 1}]}  # profile smoke's


def smoke_top_level(raw: dict) -> None:
    """The smoke profile, with the lists DVC expands (training seeds, online objectives and
    rounds) set at the top level as the profile sets them."""
    raw.update(profile="smoke", train_seeds=[0])
    raw["online"].update(SMOKE_ONLINE)


def smoke_project(root: Path) -> Path:
    """:func:`make_project` on the smoke profile with one training seed, committed: the
    cheapest whole DAG."""
    make_project(root)
    edit_params(root, smoke_top_level)
    sh(["git", "commit", "-qam", "smoke profile, one training seed"], root)
    return root


def one_objective_two_seeds(raw: dict) -> None:
    raw["objectives"] = {"dpo": raw["objectives"]["dpo"]}
    raw["train_seeds"] = [0, 1]
    del raw["profiles"]["smoke"]["train_seeds"]
    del raw["profiles"]["smoke"]["online"]  # offline: smoke_project adds one online round


def replicas(*seeds: int) -> set[str]:
    """The MLflow run names of dpo's train and evaluate jobs on ``seeds``."""
    return {f"{st}@dpo/seed{s}" for st in ("train", "evaluate") for s in seeds}


def mlflow_name(row: str, objective: str | None = None, seed: int | None = None, rnd: int = 1):
    """The MLflow run name of a DAG row's job (``train_round`` of round 2:
    ``train@dpo/seed0/round2``)."""
    from diffpref.config import dag
    from diffpref.tracking import run_name

    variant = dag.variant(row, rnd) if dag.STAGES[row].per_round else None
    objective = "base" if row == "evaluate_base" else objective
    return run_name(dag.stage_of(row), objective, seed, variant)


def round_runs(*seeds: int, rnd: int = 2) -> set[str]:
    """The MLflow run names of dpo's online round ``rnd`` on ``seeds``: its samples, rewards,
    labels, training and evaluation, and its compute-matched control's two."""
    from diffpref.config import dag

    rows = [r for r in dag.STAGES if dag.STAGES[r].per_round]
    return {mlflow_name(row, "dpo", s, rnd) for row in rows for s in seeds}


def expected_runs(*seeds: int, online: bool = False) -> set[str]:
    """The stage runs of one whole execution of the project's DAG on training ``seeds``
    (``online``: a smoke project's, with one online round of dpo)."""
    shared = {"world", "prompts", "candidates", "rewards", "labels", "evaluate@base", "report"}
    return shared | replicas(*seeds) | (round_runs(*seeds) if online else set())


def dvc_job_run(name: str) -> str:
    """The MLflow run name of a DVC stage (``train_round@dpo-0-round0``: round 2)."""
    m = re.fullmatch(r"(\w+)@(.+)-(\d+)(?:-round(\d+))?", name)
    if not m:
        return mlflow_name(name)
    rnd = 1 if m[4] is None else int(m[4]) + 2
    return mlflow_name(m[1], m[2], int(m[3]), rnd)


def smk_job_run(rule: str, wildcards: str | None) -> str:
    """The MLflow run name of a Snakemake job (its rule and "objective=dpo, seed=0, ...")."""
    wild = dict(kv.split("=") for kv in wildcards.split(", ")) if wildcards else {}
    seed = wild.get("seed")
    return mlflow_name(rule, wild.get("objective"), seed and int(seed), int(wild.get("round", 1)))


def edit_params(root: Path, fn) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    fn(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def stage_runs(root: Path, uri: str | None = None) -> list:
    """Every stage run (not the pipeline parents) in the project's store, or in ``uri``."""
    client = mlflow.MlflowClient(tracking_uri=uri or f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diffpref")
    found = client.search_runs([exp.experiment_id], max_results=10_000)
    return [r for r in found if r.info.run_name != "pipeline"]


def runs(root: Path) -> Counter:
    return Counter(r.info.run_name for r in stage_runs(root))


def snakemake_plan(out: str) -> dict[str, dict[str, str]]:
    """A Snakemake dry run's jobs by DVC's stage names (``train@dpo-0``), each job's fields
    (``input``, ``output``, ``reason``, ...) as printed."""
    jobs = {}
    for block in re.split(r"\n(?=\[.*\]\n(?:local)?rule )", out):  # a run says "localrule"
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        fields = dict(re.findall(r"^\s+(\w+): (.*)$", block, re.M))
        name = m.group(1)
        if w := fields.get("wildcards"):  # "objective=dpo, seed=0" -> "dpo-0"
            wild = dict(kv.split("=") for kv in w.split(", "))
            name += f"@{wild['objective']}-{wild['seed']}"
            if "round" in wild:  # DVC names a round by its index in online.rounds
                name += f"-round{int(wild['round']) - 2}"
        jobs[name] = fields
    return jobs


def covered(key: str, declared: list[str]) -> bool:
    return any(key == d or key.startswith(d + ".") for d in declared)


def check_reads(
    params: Path, jobs: list[tuple[str, str | None, int | None, int]], root: Path
) -> None:
    """Each job read exactly the keys the DAG table declares for it, both ways (its
    ``_reads.json``): nothing read undeclared (a stale result), nothing declared unread (a
    needless rerun); and what it read is the resolved value. ``jobs``: (DAG row or stage,
    objective or "base", training seed, round)."""
    from diffpref import config, settings
    from diffpref.config import dag

    cfg, _ = config.load(params)
    for row, objective, seed, rnd in jobs:
        folder = root / dag.output_dir(row, cfg, objective, seed, rnd)
        reads = json.loads((folder / settings.READS_FILE).read_text())
        declared = dag.keys(row, cfg, objective)
        job = (row, objective, seed, rnd)
        assert [k for k in reads if not covered(k, declared)] == [], job
        assert [d for d in declared if not any(covered(k, [d]) for k in reads)] == [], job
        tree = dag.resolved(cfg)
        assert all(dag.value_at(tree, k) == v for k, v in reads.items()), job
