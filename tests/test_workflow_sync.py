"""Snakefile and dvc.yaml describe the same stages, dependencies and outputs, from one DAG
table (dvc.yaml is generated and must be current), including the (objective x training seed)
dimension of train and evaluate; the code a job depends on is its import closure."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from dvc.repo import Repo
from tests.conftest import REPO
from tests.project import edit_params, make_project, sh, snakemake_plan

from diffpref import config, registry
from diffpref.config import dag
from diffpref.config import dvc as dvc_mod


def snakemake_jobs() -> dict[str, tuple[set[str], set[str]]]:
    out = subprocess.run(
        ["snakemake", "-n", "--forceall", "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {
        name: (set(f["input"].split(", ")) if "input" in f else set(), set(f["output"].split(", ")))
        for name, f in snakemake_plan(out).items()
    }


def dvc_stages() -> dict[str, tuple[set[str], set[str], list[str]]]:
    repo = Repo(str(REPO), uninitialized=True)
    stages = {}
    for s in repo.index.stages:
        deps = {str(Path(d.def_path)) for d in s.deps if d not in s.params}
        outs = {str(Path(o.def_path)) for o in s.outs}
        params = [k for d in s.params for k in d.params]
        stages[s.addressing] = (deps, outs, params)
    return stages


def test_both_tools_have_the_same_stages_deps_and_outs():
    """Snakemake's inputs are DVC's deps, with what DVC cannot name in dvc.yaml in its place:
    the config-picked modules (DVC: their digests in the job's resolved file) and the user's
    data file (DVC: its folder)."""
    smk = snakemake_jobs()
    dvc = dvc_stages()
    assert set(dvc) - set(smk) == {"resolve"}  # DVC's first stage: Snakemake resolves itself
    cfg, _ = config.load(REPO / "params.yaml")
    all_outs = {o for _, outs, _ in dvc.values() for o in outs}

    def as_outputs(dep: str) -> set[str]:  # a folder of outputs (report: results/eval/)
        return {dep} if dep in all_outs else {o for o in all_outs if o.startswith(dep + "/")}

    for name, (deps, outs, _) in dvc.items():
        if name == "resolve":
            continue
        row, _, job = name.partition("@")
        objective = job.rpartition("-")[0] or None
        s_in, s_out = smk[name]
        assert s_out == outs, name
        resolved = {d for d in deps if d.startswith(dvc_mod.RESOLVED + "/")}
        assert resolved == {dvc_mod.job_file(row, objective if row == "train" else None)}, name
        data = {d for d in deps if d in registry.DATA_DIRS.values()}
        results = {d for d in deps if d.startswith("results/")} - resolved
        want = deps - resolved - data - results | set(dag.dynamic_code(row, cfg, objective))
        want |= {o for d in results for o in as_outputs(d)}
        assert s_in == want | set(dag.user_data(cfg, row)), name


def test_dvc_yaml_is_what_the_dag_table_generates(tmp_path):
    """dvc.yaml is written by `diffpref dvc-yaml` from the same table the Snakefile reads; the
    committed file must be current (and --check says when it is not)."""
    assert (REPO / "dvc.yaml").read_text() == dvc_mod.dvc_yaml()
    ok = subprocess.run(["diffpref", "dvc-yaml", "--check"], cwd=REPO, capture_output=True)
    assert ok.returncode == 0, ok.stderr
    root = make_project(tmp_path / "p")
    with (root / "dvc.yaml").open("a") as f:
        f.write("# a hand edit\n")
    stale = subprocess.run(["diffpref", "dvc-yaml", "--check"], cwd=root, capture_output=True)
    assert stale.returncode == 1
    assert b"dvc.yaml differs from the DAG table: run `diffpref dvc-yaml`" in stale.stderr


def test_the_code_each_job_depends_on_is_its_import_closure():
    """Static: every stage module's imports, lazy ones included, with their packages; a job
    adds the modules the config picks by name (its loss, backbone, reward models) and no
    other alternative."""
    cfg, _ = config.load(REPO / "params.yaml")
    train_dpo, train_kto = (set(dag.code("train", cfg, o)) for o in ("dpo", "kto"))
    assert {"src/diffpref/adapters.py", "src/diffpref/config/schema.py"} <= train_dpo
    assert "src/diffpref/objectives/kto.py" in train_kto - train_dpo
    assert "src/diffpref/objectives/mapo.py" not in train_dpo | train_kto
    assert "src/diffpref/backbones/embedded.py" in train_dpo
    assert "src/diffpref/backbones/sd.py" not in train_dpo  # the embedded profile
    sd15, _ = config.load(REPO / "params.yaml", "sd15")
    assert "src/diffpref/backbones/sd.py" in dag.code("train", sd15, "dpo")
    assert "src/diffpref/rewards/pickscore.py" in dag.code("rewards", sd15)
    assert "src/diffpref/rewards/pickscore.py" not in dag.code("rewards", cfg)
    # package data a module names (PACKAGE_DATA) is code: the shipped world, the page template
    assert "src/diffpref/world/pretrained/base/unet/config.json" in dag.static_code("world")
    assert "src/diffpref/templates/report.html.j2" in dag.static_code("report")
    stage_files = {f"src/diffpref/stages/{dag.stage_of(r)}.py" for r in dag.STAGES}
    for row in dag.STAGES:  # the invocation and the MLflow record are no stage's code
        code = set(dag.static_code(row))
        assert "src/diffpref/cli.py" not in code, row
        assert "src/diffpref/tracking/writer.py" not in code or row == "report", row
        own = f"src/diffpref/stages/{dag.stage_of(row)}.py"
        assert code & stage_files == {own}, f"{row} imports another stage"


def test_no_module_is_imported_by_a_name_the_closure_cannot_see():
    """The import closure reads import statements; a computed import (importlib) is allowed
    only in the registries whose modules the DAG table adds per job, where the stage module
    itself is imported, and in the MLflow record's figure drawing (no output depends on it)."""
    allowed = {
        "src/diffpref/objectives/__init__.py",
        "src/diffpref/rewards/__init__.py",
        "src/diffpref/backbones/__init__.py",
        "src/diffpref/rewards/base.py",  # optional third-party extras, not diffpref modules
        "src/diffpref/stages/__init__.py",
        "src/diffpref/cli.py",
        "src/diffpref/tracking/stage.py",
    }
    found = {
        str(f.relative_to(REPO))
        for f in (REPO / "src" / "diffpref").rglob("*.py")
        if re.search(r"import_module\(|__import__\(", f.read_text())
    }
    assert found <= allowed, found - allowed


def test_every_objective_and_training_seed_gets_train_and_evaluate_jobs():
    cfg, _ = config.load(REPO / "params.yaml")
    assert len(cfg.train_seeds) >= 3  # the default profile replicates every training
    want = {
        f"{st}@{o}-{s}"
        for st in ("train", "evaluate")
        for o in cfg.objectives
        for s in cfg.train_seeds
    }
    assert {n for n in dvc_stages() if n.startswith(("train@", "evaluate@"))} == want
    assert {n for n in snakemake_jobs() if n.startswith(("train@", "evaluate@"))} == want


@pytest.mark.slow
def test_editing_the_prompt_file_reruns_prompts_under_both_tools(tmp_path):
    """The user's prompt file is a dependency: Snakemake lists the configured file, dvc.yaml
    its folder data/prompts/ (DVC cannot depend on a path named in params.yaml)."""
    root = make_project(tmp_path / "p")
    prompt_file = root / "data" / "prompts" / "mine.txt"
    prompt_file.write_text("".join(f"a red cube number {i}\n" for i in range(14)))

    def file_prompts(raw: dict) -> None:
        raw["profile"] = "smoke"
        raw["prompts"] |= {"source": "file", "file": "data/prompts/mine.txt"}

    edit_params(root, file_prompts)
    sh(["git", "add", "-A"], root)
    sh(["git", "commit", "-qm", "a prompt file"], root)
    target = ["results/prompts"]

    def prompts() -> set[str]:
        files = (root / "results" / "prompts").glob("*.parquet")
        return set(pd.concat(pd.read_parquet(f) for f in files).prompt)

    smk = ["snakemake", "--cores", "1"]
    sh([*smk, *target], root)
    assert "Nothing to be done" in sh([*smk, "-n", *target], root)
    with prompt_file.open("a") as f:
        f.write("a blue sphere\n")
    plan = sh([*smk, "-n", *target], root)
    assert "rule prompts:" in plan and "data/prompts/mine.txt" in plan, plan
    sh([*smk, *target], root)
    assert "a blue sphere" in prompts()

    sh(["dvc", "repro", "prompts"], root)
    assert "Data and pipelines are up to date." in sh(["dvc", "status", "prompts"], root)
    with prompt_file.open("a") as f:
        f.write("a green cone\n")
    status = sh(["dvc", "status", "prompts"], root)
    assert "changed deps" in status and "data/prompts" in status, status
    assert "Running stage 'prompts'" in sh(["dvc", "repro", "prompts"], root)
    assert "a green cone" in prompts()
