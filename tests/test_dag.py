"""The real smoke DAG, end to end, with Snakemake and with DVC (no mocks), and make-like reruns.

Each tool runs in its own fresh copy of the project (git + DVC initialised) with the smoke
profile. MLflow's SQLite store is the witness of what ran: every executed stage adds one run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import mlflow
import pytest
import yaml
from tests.conftest import REPO

pytestmark = pytest.mark.slow
COPY = ["Snakefile", "dvc.yaml", "params.yaml", "workflow", "src", ".dvcignore", ".gitignore"]


def sh(cmd: list[str], cwd: Path, check: bool = True) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)
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
    # the DAG with one objective (every objective's training runs in test_training_methods.py)
    edit_params(root, lambda r: r.update(objectives={"dpo": r["objectives"]["dpo"]}))
    sh(["git", "init", "-q"], root)
    sh(["git", "config", "user.email", "t@example.com"], root)
    sh(["git", "config", "user.name", "test"], root)
    sh(["dvc", "init", "-q"], root)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "init"], root)
    return root


def edit_params(root: Path, fn) -> None:
    raw = yaml.safe_load((root / "params.yaml").read_text())
    fn(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def runs(root: Path) -> Counter:
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diffpref")
    found = client.search_runs([exp.experiment_id], max_results=10_000)
    return Counter(
        r.data.tags["stage"] + (f"@{r.data.tags['objective']}" if r.data.tags["objective"] else "")
        for r in found
    )


def new_runs(before: Counter, after: Counter) -> set[str]:
    return {k for k in after if after[k] > before.get(k, 0)}


def check_outputs(root: Path) -> None:
    report = root / "results" / "report"
    for f in ("report.html", "report.md", "comparison.csv", "image_grid.png", "rewards.png"):
        assert (report / f).stat().st_size > 0, f
    html = (report / "report.html").read_text()
    assert "dpo" in html and "win_vs_base" in html
    assert (root / "results" / "metrics.json").is_file()
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    exp = client.get_experiment_by_name("diffpref")
    for r in client.search_runs([exp.experiment_id]):
        assert {"stage", "objective", "git_commit", "params_hash"} <= set(r.data.tags)
        assert r.info.status == "FINISHED"
        assert r.data.params, r.data.tags["stage"]
        assert "wall_time_s" in r.data.metrics


EXPECTED = {"world", "prompts", "candidates", "rewards", "labels", "train@dpo",
            "evaluate@base", "evaluate@dpo", "report"}
AFTER_BETA = {"train@dpo", "evaluate@dpo", "report"}


def smk_planned(root: Path) -> set[str]:
    out = sh(["snakemake", "-n", "--cores", "2", "--config", "profile=smoke"], root)
    if "Nothing to be done" in out:
        return set()
    planned = set()
    for block in re.split(r"\n(?=\[.*\]\nrule )", out):
        m = re.search(r"^rule (\w+):", block, re.M)
        if m and m.group(1) != "all":
            w = re.search(r"^\s+wildcards: objective=(\S+)", block, re.M)
            planned.add(m.group(1) + (f"@{w.group(1)}" if w else ""))
    return planned


def test_snakemake_smoke_dag_and_reruns(tmp_path):
    root = make_project(tmp_path / "smk")
    sh(["snakemake", "--cores", "2", "--config", "profile=smoke"], root)
    check_outputs(root)
    first = runs(root)
    assert set(first) == EXPECTED and all(v == 1 for v in first.values())

    assert smk_planned(root) == set()  # nothing changed: nothing reruns

    edit_params(root, lambda r: r["objectives"]["dpo"].update(beta=1234))
    assert smk_planned(root) == {"train@dpo", "evaluate@dpo", "report"}
    sh(["snakemake", "--cores", "2", "--config", "profile=smoke"], root)
    assert new_runs(first, runs(root)) == AFTER_BETA

    with open(root / "src/diffpref/stages/labels.py", "a") as f:
        f.write("\n# a change to the labels stage's source\n")
    assert smk_planned(root) == {"labels", "train@dpo", "evaluate@dpo", "report"}


def dvc_ran(out: str) -> set[str]:
    return {m.replace("evaluate_base", "evaluate@base")
            for m in re.findall(r"Running stage '([^']+)'", out)}


def test_dvc_smoke_experiment_and_reruns(tmp_path):
    root = make_project(tmp_path / "dvc")
    out = sh(["dvc", "exp", "run", "-S", "profile=smoke"], root)
    assert dvc_ran(out) == EXPECTED
    check_outputs(root)
    first = runs(root)
    assert set(first) == EXPECTED

    assert dvc_ran(sh(["dvc", "repro"], root)) == set()  # nothing changed: nothing reruns

    edit_params(root, lambda r: r["objectives"]["dpo"].update(beta=1234))
    out = sh(["dvc", "repro"], root)
    assert dvc_ran(out) == AFTER_BETA
    assert new_runs(first, runs(root)) == AFTER_BETA
    assert "dpo" in sh(["dvc", "metrics", "show"], root)

    with open(root / "src/diffpref/stages/labels.py", "a") as f:
        f.write("\n# a change to the labels stage's source\n")
    status = sh(["dvc", "status"], root)
    changed = set(re.findall(r"^(\S+):\s*$", status, re.M))
    assert changed == {"labels"}
    # DVC is content-addressed: labels reruns, writes byte-identical labels, so nothing
    # downstream needs to run ...
    assert dvc_ran(sh(["dvc", "repro"], root)) == {"labels"}
    # ... and when the labels do change, everything downstream of them reruns
    edit_params(root, lambda r: r["labels"].update(pairs="best_worst"))
    assert dvc_ran(sh(["dvc", "repro"], root)) == {"labels", "train@dpo", "evaluate@dpo", "report"}
