"""Snakefile and dvc.yaml describe the same stages, dependencies, outputs and params keys,
including the (objective x training seed) dimension of train and evaluate."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from dvc.repo import Repo
from tests.conftest import REPO
from tests.project import edit_params, make_project, sh

from diffpref import config


def snakemake_jobs() -> dict[str, tuple[set[str], set[str]]]:
    out = subprocess.run(
        ["snakemake", "-n", "--forceall", "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    jobs = {}
    for block in re.split(r"\n(?=\[.*\]\nrule )", out):
        m = re.search(r"^rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue

        def field(k: str, block: str = block) -> re.Match | None:
            return re.search(rf"^\s+{k}: (.*)$", block, re.M)

        ins = set(field("input").group(1).split(", ")) if field("input") else set()
        outs = set(field("output").group(1).split(", "))
        name = m.group(1)
        if w := field("wildcards"):  # "objective=dpo, seed=0" -> DVC's matrix name "dpo-0"
            name += "@" + "-".join(kv.split("=")[1] for kv in w.group(1).split(", "))
        jobs[name] = (ins, outs)
    return jobs


def dvc_stages() -> dict[str, tuple[set[str], set[str], list[str]]]:
    repo = Repo(str(REPO), uninitialized=True)
    stages = {}
    for s in repo.index.stages:
        deps = {str(Path(d.def_path)) for d in s.deps if d not in s.params}
        outs = {str(Path(o.def_path)) for o in s.outs}
        params = [k for d in s.params for k in d.params]
        stages[s.addressing] = (deps, outs, params)
    return stages


def expand_dvc_deps(deps: set[str], all_outs: set[str]) -> set[str]:
    """DVC folder deps as Snakemake sees them: source folders as .py files, result folders as
    the stage outputs inside them."""
    out = set()
    for d in deps:
        p = REPO / d
        if d in config.DATA_DIRS.values():
            continue  # the user's data folder: Snakemake lists the configured file, if any
        if d.startswith("src/") and p.is_dir():
            out |= {str(f.relative_to(REPO)) for f in p.rglob("*.py")}
        elif d in all_outs:
            out.add(d)
        else:
            inner = {o for o in all_outs if o.startswith(d + "/")}
            out |= inner or {d}
    return out


def test_both_tools_have_the_same_stages_deps_and_outs():
    smk = snakemake_jobs()
    dvc = dvc_stages()
    assert set(smk) == set(dvc), set(smk) ^ set(dvc)
    all_outs = {o for _, outs, _ in dvc.values() for o in outs}
    for name, (deps, outs, _) in dvc.items():
        s_in, s_out = smk[name]
        assert s_out == outs, name
        assert s_in == expand_dvc_deps(deps, all_outs), name


def test_dvc_params_are_exactly_the_keys_each_stage_reads():
    for name, (_, _, params) in dvc_stages().items():
        stage, _, objective = name.partition("@")
        objective = objective.rpartition("-")[0]  # drop the matrix's training seed
        stage = "evaluate" if stage == "evaluate_base" else stage
        assert sorted(params) == sorted(config.stage_keys(stage, objective or None)), name


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
