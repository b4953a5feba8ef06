"""The real smoke DAG on two training seeds, end to end, with Snakemake and with DVC (no
mocks), the seed-aware report, and make-like reruns (params, a new training seed, sources).

Each tool goes on in a copy of its shared clean smoke run (one training seed, tests/conftest.py)
and adds the second seed. MLflow's SQLite store is the witness of what ran: every executed
stage adds one run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from tests.browser import dump_dom, inspect, problems, screenshot
from tests.conftest import REPO
from tests.mlflow_server import api, serve
from tests.project import (
    copy_project,
    dvc_job_run,
    edit_params,
    expected_runs,
    replicas,
    round_runs,
    runs,
    sh,
    smk_job_run,
    stage_runs,
)

from diffpref import tracking
from diffpref.io import MARKER

pytestmark = pytest.mark.slow


def executions(root: Path) -> list[set[str]]:
    """The stage runs of each pipeline execution (the children of each parent run), oldest
    first."""
    groups = defaultdict(list)
    for r in stage_runs(root):
        groups[r.data.tags["mlflow.parentRunId"]].append(r)
    ordered = sorted(groups.values(), key=lambda g: min(r.info.start_time for r in g))
    return [{r.info.run_name for r in g} for g in ordered]


def new_runs(before: Counter, after: Counter) -> set[str]:
    return {k for k in after if after[k] > before.get(k, 0)}


def check_outputs(root: Path, links: bool = True) -> None:
    """The report, metrics and MLflow runs of a finished two-seed run; ``links``: the report
    links each model's runs (every job of the run was recorded)."""
    report = root / "results" / "report"
    for f in ("report.html", "report.md", "comparison.csv", "image_grid.png", "rewards.png"):
        assert (report / f).stat().st_size > 0, f
    html = (report / "report.html").read_text()
    assert "dpo" in html and "win_vs_base" in html
    # seed-aware: both training seeds, their spread, the P(A > B) matrix, the wording split
    table = pd.read_csv(report / "comparison.csv").set_index("model")
    metrics = {p.stem: json.loads(p.read_text()) for p in (root / "results/metrics").glob("*.json")}
    # round 1 of dpo, its online round 2 and that round's compute-matched control
    assert set(metrics) == {"base", "dpo", "dpo.round2", "dpo.matched2"}
    assert set(metrics["base"]) == {"fidelity", "quality", "judge"}
    assert {"win", "judge", "vs_matched"} <= set(metrics["dpo.round2"])  # on the judge
    assert metrics["dpo"]["win"] == pytest.approx(table.loc["dpo", "win_vs_base"], abs=1e-4)
    seeds = train_seeds(root)
    assert table.loc["dpo", "n_seeds"] == len(seeds)
    per_seed = [float(v) for v in table.loc["dpo", "win_per_seed"].split()]
    assert len(per_seed) == len(seeds)
    assert np.mean(per_seed) == pytest.approx(table.loc["dpo", "win_vs_base"], abs=1e-3)
    # the between-seed sd of the true per-seed win rates: the spread of the per-seed values
    # less their evaluation noise, so never above it
    assert 0 <= table.loc["dpo", "win_seed_sd"] <= np.std(per_seed, ddof=1) + 1e-3
    lo, hi = table.loc["dpo", ["win_vs_base_ci_low", "win_vs_base_ci_high"]]
    assert lo <= table.loc["dpo", "win_vs_base"] <= hi
    md = (report / "report.md").read_text()
    assert f"{len(seeds)} training seeds per objective ({seeds})" in md
    assert "## Seen vs unseen wording" in md and "## Probability of improvement" in md
    splits = pd.read_csv(report / "splits.csv")
    assert set(splits.split) == {"seen", "heldout_wording", "heldout_combo"}
    poi = pd.read_csv(report / "probability_of_improvement.csv")
    assert set(zip(poi.model, poi.versus)) == {("base", "dpo"), ("dpo", "base")}
    assert (report / "poi.png").stat().st_size > 0
    if links:
        check_report_links(root)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    for r in stage_runs(root):
        assert {"stage", "objective", "train_seed", "git_commit", "params_hash"} <= set(r.data.tags)
        assert "mlflow.parentRunId" in r.data.tags  # nested under its pipeline execution
        parent = client.get_run(r.data.tags["mlflow.parentRunId"]).data.tags
        assert {"git_commit", "params_hash", "diffpref.pipeline"} <= set(parent)
        model = r.data.tags.get("model")  # a later round's or a control's: round<r>, matched<r>
        if r.data.tags["stage"] in ("train", "evaluate") and r.data.tags["objective"] != "base":
            seed = f"/seed{r.data.tags['train_seed']}"
            assert r.info.run_name.endswith(f"{seed}/{model}" if model else seed)
        files = {a.path for a in client.list_artifacts(r.info.run_id)}
        want = {
            "train": {"adapter", "loss_curve.png"},
            "evaluate": {"scores.parquet", "metrics.json", "samples.png"},
            "report": {"report.html", "comparison.csv", "win_vs_base.png"},
        }
        assert want.get(r.data.tags["stage"], set()) <= files, r.info.run_name
        # the data it read, as MLflow datasets whose digests are those of the data on disk
        used = {d.dataset.name: d.dataset.digest for d in r.inputs.dataset_inputs}
        assert set(used) == set(INPUTS.get(r.data.tags["stage"], ())), r.info.run_name
        for name, digest in used.items():
            if name == "eval":  # the evaluations change with each rerun; the data does not
                continue
            # a later round's own data: results/online/<objective>/seed<N>/round<r>/<name>
            own = model and model.startswith("round") and name != "prompts"
            seed = r.data.tags["train_seed"]
            data = root / "results" / (f"online/dpo/seed{seed}/{model}/{name}" if own else name)
            assert digest == tracking.digest(data), (r.info.run_name, name)
        assert r.info.status == "FINISHED"
        assert r.data.params, r.data.tags["stage"]
        assert "wall_time_s" in r.data.metrics


INPUTS = {
    "candidates": ["prompts"],
    "rewards": ["candidates"],
    "labels": ["rewards"],
    "train": ["candidates", "labels"],
    "evaluate": ["prompts"],
    "report": ["eval"],
}


def check_report_links(root: Path) -> None:
    """The report links every model's newest train and evaluate runs (their ids and artifacts
    folders) in the project's MLflow store."""
    md = (root / "results" / "report" / "report.md").read_text()
    latest = {}
    for r in sorted(stage_runs(root), key=lambda r: r.info.start_time):
        if r.data.tags["stage"] in ("train", "evaluate") and r.info.status == "FINISHED":
            latest[r.info.run_name] = r.info
    for name in ["evaluate@base", *replicas(*train_seeds(root))]:
        info = latest[name]
        assert f"[{info.run_id[:8]}](http://127.0.0.1:5000/#/experiments/" in md, name
        assert f"[files]({info.artifact_uri})" in md, name


def train_seeds(root: Path) -> list[int]:
    return yaml.safe_load((root / "params.yaml").read_text())["train_seeds"]


EXPECTED = expected_runs(0, 1, online=True)  # after the Snakemake test's new seed
# what dpo's beta reruns: its training, and so each later round and its control
AFTER_BETA = {*replicas(0), *round_runs(0), "report"}
NEW_SEED = {*replicas(1), *round_runs(1), "report"}


def smk_planned(root: Path) -> set[str]:
    out = sh(["snakemake", "-n", "--cores", "2", "--config", "profile=smoke"], root)
    if "Nothing to be done" in out:
        return set()
    planned = set()
    for block in re.split(r"\n(?=\[.*\]\nrule )", out):
        m = re.search(r"^rule (\w+):", block, re.M)
        if m and m.group(1) != "all":
            w = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            planned.add(smk_job_run(m.group(1), w and w.group(1)))
    return planned


def check_in_browser(report: Path, tmp: Path) -> None:
    """The HTML report as a person sees it: loads cleanly, every figure decodes, no Markdown
    shows, the summary table fits a 1280 px window; a screenshot is left for people."""
    page = inspect(report / "report.html", tmp)
    assert problems(page) == []  # its positive control: tests/test_report.py
    assert page["title"] == "diffpref report"
    assert page["images"] >= 5 and page["first_table_overflow_px"] == 0  # measured, not absent
    screenshot(report / "report.html", report / "screenshot.png")
    assert (report / "screenshot.png").stat().st_size > 10_000
    if os.environ.get("DIFFPREF_UPDATE_DOCS"):  # the README's picture, from this real run
        shutil.copyfile(report / "screenshot.png", REPO / "docs" / "report-top.png")


def check_mlflow_server(root: Path) -> None:
    """What a person browsing `mlflow server` over the project's store finds, via its REST API:
    the experiment in the runs view, every stage run with its metrics, real durations and the
    artifacts (the trained adapter, the report)."""
    with serve(root / "mlflow.db") as url:
        exp = api(url, "experiments/get-by-name?experiment_name=diffpref")["experiment"]
        assert {"key": "mlflow.experimentKind", "value": "custom_model_development"} in exp["tags"]
        found = api(
            url, "runs/search", {"experiment_ids": [exp["experiment_id"]], "max_results": 1000}
        )["runs"]
        by_name = {r["info"]["run_name"]: r for r in found}
        assert set(by_name) >= EXPECTED
        for name in EXPECTED:
            r = by_name[name]
            assert r["info"]["status"] == "FINISHED" and r["data"]["metrics"], name
        train = by_name["train@dpo/seed0"]["info"]
        assert int(train["end_time"]) - int(train["start_time"]) >= 1000  # the stage's own time
        listed = api(url, f"artifacts/list?run_id={train['run_id']}")
        assert "adapter" in {f["path"] for f in listed["files"]}
        report = by_name["report"]["info"]["run_id"]
        assert "report.html" in {
            f["path"] for f in api(url, f"artifacts/list?run_id={report}")["files"]
        }


def check_mlflow_ui(root: Path) -> None:
    """The real MLflow UI in Chromium: the experiment's runs page lists the pipeline runs; a
    stage run's page shows its real duration, its parent and the datasets it read."""
    train = max(
        (r for r in stage_runs(root) if r.info.run_name == "train@dpo/seed0"),
        key=lambda r: r.info.start_time,
    )
    with serve(root / "mlflow.db") as url:
        exp = api(url, "experiments/get-by-name?experiment_name=diffpref")["experiment"]
        dom = dump_dom(f"{url}/#/experiments/{exp['experiment_id']}/runs")
        run_page = dump_dom(f"{url}/#/experiments/{exp['experiment_id']}/runs/{train.info.run_id}")
    assert "Training runs" in dom
    assert dom.count(">pipeline<") == len(executions(root)) == 2  # a parent per invocation
    shown = re.search(r">Duration<.*?>([0-9.]+)(ms|s|min)<", run_page, re.S)
    assert shown, "no duration on the run page"
    seconds = float(shown.group(1)) * {"ms": 1e-3, "s": 1, "min": 60}[shown.group(2)]
    real = (train.info.end_time - train.info.start_time) / 1000
    assert seconds >= 1 and seconds == pytest.approx(real, abs=0.1), (shown.group(0), real)
    assert re.search(r">Parent run<.*?>pipeline<", run_page, re.S)
    shown = {f"{d.dataset.name} ({d.dataset.digest})" for d in train.inputs.dataset_inputs}
    assert any(f">{d}<" in run_page for d in shown), shown  # the data it read, by digest


def test_snakemake_smoke_dag_and_reruns(smoke_reference, tmp_path):
    """Goes on from the shared clean Snakemake run (one training seed; tests/conftest.py):
    nothing to redo, a params edit plans its readers, a new training seed runs only its own
    jobs and the report, a source edit plans its stage and what follows."""
    root = copy_project(smoke_reference, tmp_path / "smk")
    first = runs(root)
    assert set(first) == expected_runs(0, online=True) and all(v == 1 for v in first.values())

    assert smk_planned(root) == set()  # nothing changed: nothing reruns

    # a params edit plans exactly its readers (every edit and module: tests/test_reruns.py)
    edit_params(root, lambda r: r["objectives"]["dpo"].update(beta=1234))
    assert smk_planned(root) == AFTER_BETA
    edit_params(root, lambda r: r["objectives"]["dpo"].update(beta=2500))

    # a new training seed adds only its own jobs and the report; dropping it reruns the report
    edit_params(root, lambda r: r.update(train_seeds=[0, 1]))
    assert smk_planned(root) == NEW_SEED
    sh(["snakemake", "--cores", "2", "--config", "profile=smoke"], root)
    assert new_runs(first, runs(root)) == NEW_SEED
    # one parent run per snakemake invocation; the rerun's has only the stages it ran
    assert executions(root) == [expected_runs(0, online=True), NEW_SEED]
    check_outputs(root)
    edit_params(root, lambda r: r.update(train_seeds=[0]))
    assert smk_planned(root) == {"report"}
    edit_params(root, lambda r: r.update(train_seeds=[0, 1]))

    with open(root / "src/diffpref/stages/labels.py", "a") as f:
        f.write("\n# a change to the labels stage's source\n")
    assert smk_planned(root) == {"labels", *replicas(0, 1), *round_runs(0, 1), "report"}
    check_mlflow_server(root)
    # last, so that a machine without Chromium skips only this part
    check_in_browser(root / "results" / "report", tmp_path)
    check_mlflow_ui(root)


def dvc_ran(out: str) -> set[str]:
    """Stages DVC ran, named as their MLflow runs (``train@dpo-1`` -> ``train@dpo/seed1``)."""
    # resolve: DVC's first stage, each job's resolved params, no MLflow run
    return {dvc_job_run(m) for m in re.findall(r"Running stage '([^']+)'", out) if m != "resolve"}


def test_dvc_smoke_experiment_and_reruns(smoke_dvc, tmp_path):
    """Goes on from the shared clean DVC run (committed with its dvc.lock; tests/conftest.py):
    `dvc exp run -S` of one objective's hyper-parameter and a new training seed runs exactly
    their jobs, each recorded in MLflow; the experiment's numbers are in `dvc exp show`; a
    source edit reruns its stage."""
    root = copy_project(smoke_dvc, tmp_path / "dvc")
    assert dvc_ran(sh(["dvc", "repro"], root)) == set()  # nothing changed: nothing reruns
    # a hyper-parameter and a new training seed (DVC's matrix expands it)
    out = sh(
        ["dvc", "exp", "run", "-S", "objectives.dpo.beta=1234", "-S", "train_seeds=[0,1]"], root
    )
    assert dvc_ran(out) == AFTER_BETA | NEW_SEED
    assert set(runs(root)) == AFTER_BETA | NEW_SEED  # the clean run kept no MLflow record
    assert dvc_ran(sh(["dvc", "repro"], root)) == set()
    check_outputs(root, links=False)  # the base's evaluation ran unrecorded (links: Snakemake's)

    sh(["dvc", "plots", "show", "-o", "dvc_plots"], root)  # offline: images, no Vega from a CDN
    page = (root / "dvc_plots" / "index.html").read_text()
    assert "win_vs_base.png" in page and "training_loss.png" in page
    assert not re.search(r"https?://", page)
    shown = sh(["dvc", "metrics", "show"], root).splitlines()  # a row per model, terminal-wide
    assert any(line.startswith("results/metrics/dpo.json") for line in shown)
    assert not any(MARKER in line for line in shown)  # no metric: .dvcignore hides it
    assert max(map(len, shown)) <= 120, shown  # a 120-column terminal, with the rounds' column
    # `dvc exp show` has each model's headline numbers as columns (win and its CI are dpo's)
    exp = pd.read_csv(io.StringIO(sh(["dvc", "exp", "show", "--csv", "--no-pager"], root)))
    workspace = exp[exp.rev == "workspace"].iloc[0]
    dpo = json.loads((root / "results/metrics/dpo.json").read_text())
    for key in ("win", "win_low", "win_high"):  # a name two files share: prefixed with its file
        column = key if key in workspace else f"results/metrics/dpo.json:{key}"
        assert workspace[column] == pytest.approx(dpo[key]), key

    with open(root / "src/diffpref/stages/labels.py", "a") as f:
        f.write("\n# a change to the labels stage's source\n")
    status = sh(["dvc", "status"], root)
    changed = set(re.findall(r"^(\S+):\s*$", status, re.M))
    # resolve reads the whole package (~3 s, same files); each online round's labels job too
    rounds = {f"labels_round@dpo-{seed}-round0" for seed in (0, 1)}
    assert changed == {"labels", "resolve", *rounds}
    # DVC is content-addressed: the labels jobs rerun, write byte-identical labels, so nothing
    # downstream needs to run (which params edits rerun which jobs: tests/test_reruns.py; a
    # params edit's reruns executed: the Snakemake test)
    relabelled = {"labels", *map(dvc_job_run, rounds)}
    assert dvc_ran(sh(["dvc", "repro"], root)) == relabelled
    # one parent run per dvc execution, holding the stages it ran (a new training seed's own
    # jobs: the Snakemake test, and DVC's matrix expansion of it: tests/test_workflow_sync.py)
    assert executions(root) == [AFTER_BETA | NEW_SEED, relabelled]
