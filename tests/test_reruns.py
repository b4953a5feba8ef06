"""Exact reruns: after a finished smoke run, each tool reruns a job when, and only when, a
file it imports or a params value it read changed, and says which.

The truth is what the stages recorded while they ran (``_reads.json``: each key read and its
resolved value; the modules they imported) and the import closure computed from the source.
The tools are asked as a user would (``snakemake -n``; ``dvc repro resolve`` then ``dvc status``)
on copies of the shared clean runs. Every module under ``src/diffpref`` gets a one-line change,
all at once: both tools name, per job, each changed file that job depends on (Snakemake's
"Updated input files", DVC's changed deps and the module digests in the job's resolved file),
so one dry run attributes every module to the jobs it reruns. Params edits work the same way,
by the keys each job's rerun reason names.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from tests.conftest import ONE_THREAD
from tests.project import check_reads, covered, sh, snakemake_plan, stage_runs, user_env

from diffpref import config, settings
from diffpref.config import dag, imports
from diffpref.config import dvc as dvc_mod
from diffpref.config.why import dvc_name, explain

# (DAG row, objective, training seed, round) of the smoke project: dpo on seed 0, with one
# online round (round 2) and its compute-matched control
SMOKE_JOBS = [
    ("world", None, None, 1),
    ("prompts", None, None, 1),
    ("candidates", None, None, 1),
    ("rewards", None, None, 1),
    ("labels", None, None, 1),
    ("train", "dpo", 0, 1),
    ("evaluate_base", None, None, 1),
    ("evaluate", "dpo", 0, 1),
    *((row, "dpo", 0, 2) for row in dag.STAGES if dag.STAGES[row].per_round),
    ("report", None, None, 1),
]


def job_name(row: str, objective: str | None, seed: int | None, rnd: int = 1) -> str:
    return dvc_name(row, objective, seed, rnd)


def recorded_reads(root: Path, cfg: config.Config) -> dict[str, dict]:
    out = {}
    for row, objective, seed, rnd in SMOKE_JOBS:
        obj = "base" if row == "evaluate_base" else objective
        folder = root / dag.output_dir(row, cfg, obj, seed, rnd)
        out[job_name(row, objective, seed, rnd)] = json.loads(
            (folder / settings.READS_FILE).read_text()
        )
    return out


@pytest.fixture(scope="module")
def copies(clean_runs, tmp_path_factory) -> dict[str, Path]:
    """Copies of both clean runs (mtimes kept: Snakemake compares them), for editing."""
    out = {}
    for tool, root in clean_runs.items():
        dst = tmp_path_factory.mktemp(f"reruns-{tool}") / "p"
        shutil.copytree(root, dst, symlinks=True)
        _MTIMES[dst] = {f: f.stat().st_mtime_ns for f in _tracked(dst)}
        out[tool] = dst
    return out


def test_each_stage_reads_exactly_the_keys_the_table_declares(smoke_reference):
    """What drives reruns (dag.PARAMS) is what the stages really read, both ways, on the
    embedded world (tests/real checks the real-model profiles' keys the same way)."""
    jobs = [(row, "base" if row == "evaluate_base" else o, s, r) for row, o, s, r in SMOKE_JOBS]
    check_reads(smoke_reference / "params.yaml", jobs, smoke_reference)


def test_each_stage_imports_only_modules_of_its_computed_code(smoke_reference):
    """The modules a stage imported while it ran (its MLflow record) are in the code its job
    depends on: no import escapes the closure. (Modules already loaded to validate the
    params, such as every loss, are not seen here; the DAG table adds the job's own.)"""
    import mlflow

    cfg, _ = config.load(smoke_reference / "params.yaml")
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{smoke_reference / 'mlflow.db'}")
    checked = set()
    for run in stage_runs(smoke_reference):
        tags = run.data.tags
        model = tags.get("model", "")  # a later round's or a control's
        objective = tags.get("objective") or None
        rnd = int(model.removeprefix("matched").removeprefix("round") or 1)
        row = dag.row_of(tags["stage"], objective, rnd, model.startswith("matched"))
        objective = None if row == "evaluate_base" else objective
        record = json.loads(
            Path(client.download_artifacts(run.info.run_id, settings.READS_FILE)).read_text()
        )
        imported = imports.files(set(record["imports"]), smoke_reference / "src" / "diffpref")
        code = dag.code(row, cfg, objective, smoke_reference / "src" / "diffpref")
        assert set(imported) <= set(code), (row, set(imported) - set(code))
        assert record["imports"], row  # the stage module itself at least
        checked.add(row)
    assert checked == set(dag.STAGES)


# -- asking the tools ---------------------------------------------------------------------------


def levels() -> list[list[str]]:
    """The DAG's rows by depth: no row depends on another of its level."""

    def fill(path: str) -> str:  # a round's paths as round 2's (after: round 1)
        return path.format(objective="{objective}", seed="{seed}", round=2, after=1)

    def upstream(row: str) -> set[str]:
        deps = [fill(d) for d in dag.STAGES[row].deps]
        return {
            r
            for r, s in dag.STAGES.items()
            if any(fill(o) == d or fill(o).startswith(d + "/") for o in s.outs for d in deps)
        }

    depth: dict[str, int] = {}
    for row in dag.STAGES:  # the table lists rows upstream first
        depth[row] = 1 + max((depth[u] for u in upstream(row)), default=-1)
    return [[r for r in depth if depth[r] == k] for k in range(max(depth.values()) + 1)]


def snakemake_reasons(root: Path) -> dict[str, str]:
    """Each job's own rerun reason. Snakemake stops looking at a job's own inputs and params
    once an upstream job reruns ("Input files updated by another job"), so the DAG is asked
    one level at a time (``--allowed-rules``: the other rules' outputs count as present)."""

    def plan(rows: list[str]) -> dict[str, str]:
        targets = [
            out.format(objective=o, seed=s, round=r, after=r - 1)
            for row, o, s, r in SMOKE_JOBS
            if row in rows
            for out in dag.STAGES[row].outs
        ]
        out = sh(
            ["snakemake", "-n", "--cores", "1", "--allowed-rules", *rows, "--", *targets], root
        )
        jobs = snakemake_plan(out)
        return {
            job: f.get("reason", "") for job, f in jobs.items() if job.partition("@")[0] in rows
        }

    with ThreadPoolExecutor(2) as pool:
        return {job: r for got in pool.map(plan, levels()) for job, r in got.items()}


def updated_files(reason: str) -> set[str]:
    m = re.search(r"Updated input files: ([^;]*)", reason)
    return set(m.group(1).split(", ")) if m else set()


def changed_keys(reason: str, keys: set[str]) -> set[str]:
    """The keys whose "key=value" param Snakemake names as changed (in the "now" set)."""
    m = re.search(r"Params have changed since last execution: .* now: (.*)$", reason)
    return {k for k in keys if m and f"'{k}=" in m.group(1)}


def dvc_changes(root: Path) -> dict[str, tuple[set[str], set[str]]]:
    """After `dvc repro resolve`: per DVC stage, the source files and the params keys whose
    change `dvc status` reports (a changed resolved file: its keys and module digests that
    differ from the committed one)."""
    sh(["dvc", "repro", "resolve"], root, env={"DIFFPREF_MLFLOW": "0"})
    got = subprocess.run(
        ["dvc", "status", "--json"], cwd=root, capture_output=True, text=True, env=user_env()
    )
    status = json.loads(got.stdout)
    out: dict[str, tuple[set[str], set[str]]] = {}
    for stage, entries in status.items():
        files, keys = set(), set()
        for entry in entries:
            for path in (entry.get("changed deps") or {}) if isinstance(entry, dict) else {}:
                if path.startswith(dvc_mod.RESOLVED + "/"):
                    old = yaml.safe_load(sh(["git", "show", f"HEAD:{path}"], root))
                    new = yaml.safe_load((root / path).read_text())
                    keys |= {k for k in new["params"] if new["params"][k] != old["params"].get(k)}
                    code_old, code_new = old.get("code", {}), new.get("code", {})
                    files |= {f for f in code_new if code_new[f] != code_old.get(f)}
                else:
                    files.add(path)
        out[stage] = (files, keys)
    return out


def edit_params(root: Path, edits: dict[str, object]) -> None:
    """Set each dotted key of params.yaml (a profile's too) to a new value, comments kept."""
    text = (root / "params.yaml").read_text()
    raw = yaml.safe_load(text)
    for key, value in edits.items():
        node = raw
        *path, last = key.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def restore(root: Path) -> None:
    """Every tracked file back as committed, with its old mtime (Snakemake reads mtimes)."""
    sh(["git", "checkout", "-q", "--", "."], root)
    for f, t in _MTIMES[root].items():
        os.utime(f, ns=(t, t))


def _tracked(root: Path) -> list[Path]:
    return [root / f for f in sh(["git", "ls-files"], root).splitlines()]


_MTIMES: dict[Path, dict[Path, int]] = {}


def test_editing_any_module_reruns_exactly_the_jobs_whose_code_holds_it(copies):
    """A one-line change to every module under src/diffpref: each job reruns for exactly the
    changed modules in its computed code (stage module's import closure plus its config-picked
    modules), under Snakemake and under DVC alike; a module no job runs reruns nothing."""
    cfg, _ = config.load(copies["snakemake"] / "params.yaml")
    modules = imports.all_modules(copies["snakemake"] / "src" / "diffpref")
    assert {"diffpref.adapters", "diffpref.cli", "diffpref.config.dag"} <= set(modules)
    src = copies["snakemake"] / "src" / "diffpref"
    # every module, and the report's template (package data: the world's weights count too)
    edited = [*src.rglob("*.py"), *src.glob("templates/*.j2")]
    names = {f"src/diffpref/{f.relative_to(src)}" for f in edited}
    want = {
        job_name(row, o, s, r): set(dag.code(row, cfg, o, src)) & names
        for row, o, s, r in SMOKE_JOBS
    }
    for root in copies.values():
        for name in names:
            with (root / name).open("a") as fh:
                fh.write("# an edit\n")
    try:
        # asked first: DVC's resolve rewrites the digests of the config-picked modules
        why = {tool: explain("train@dpo-0", cfg, root) for tool, root in copies.items()}
        smk = {job: updated_files(r) for job, r in snakemake_reasons(copies["snakemake"]).items()}
        dvc = {job: files for job, (files, _) in dvc_changes(copies["dvc"]).items()}
    finally:
        for root in copies.values():
            restore(root)
    assert "resolve" not in dvc  # rerun by `dvc repro resolve`: up to date
    assert smk == want
    assert dvc == want
    # what the issue names: every train and evaluate job reruns for adapters.py, and the
    # candidates (a later round samples the round before's adapter)
    users = {j for j, files in want.items() if "src/diffpref/adapters.py" in files}
    rounds = {job_name(row, "dpo", 0, 2) for row in dag.STAGES if dag.STAGES[row].per_round}
    rounds -= {"rewards_round@dpo-0-round0", "labels_round@dpo-0-round0"}
    assert users == {"train@dpo-0", "evaluate@dpo-0", "evaluate_base", "candidates"} | rounds
    assert not any("src/diffpref/cli.py" in files for files in want.values())
    assert "src/diffpref/templates/report.html.j2" in want["report"]
    # `diffpref why` names the same files, by mtime (Snakemake) or content (dvc.lock)
    for tool, lines in why.items():
        named = {line.split()[1] for line in lines if line.startswith("code: ")}
        assert named == want["train@dpo-0"], tool
    edited = {f for files in want.values() for f in files}
    assert "src/diffpref/objectives/mapo.py" not in edited  # no configured objective's loss


# Each section of params.yaml, a key of the active profile, an objective's hyper-parameter...
READ_EDITS = {
    "profiles.smoke.world.eval_test_items": 999,
    "profiles.smoke.prompts.n_eval": 9,
    "profiles.smoke.report.grid_prompts": 3,
    "backbone.dtype": "bfloat16",
    "sampling.guidance": 4.5,
    "candidates.k": 5,
    "rewards.batch_size": 256,
    "labels.listwise_tau": 0.4,
    "train.lr": 0.002,
    "objectives.dpo.beta": 2000,
    "evaluate.tie_threshold": 0.02,
    "online.k": 3,  # a later round's setting: its jobs rerun, round 1's never
    "online.tie_threshold": 0.04,
    "seed": 1,
    "device": "cpu",
}
# ... and edits no job reads: a value the active profile overrides, the MLflow record's
# settings, job resources, a profile not in use
QUIET_EDITS = {
    "train.steps": 99,  # the smoke profile sets 10
    "tracking.large_artifact_mb": 50,
    "resources.embedded.default.mem_mb": 5000,
    "profiles.sd15.backbone.dtype": "float16",
}


def test_editing_params_reruns_exactly_the_jobs_that_read_a_changed_value(copies):
    """Each job reruns for exactly the keys it recorded reading whose resolved value changed,
    and both tools name those keys (Snakemake's rerun reason, DVC's resolved file)."""
    cfg, _ = config.load(copies["snakemake"] / "params.yaml")
    reads = recorded_reads(copies["snakemake"], cfg)
    for root in copies.values():
        edit_params(root, READ_EDITS | QUIET_EDITS)
    try:
        edited, _ = config.load(copies["snakemake"] / "params.yaml")
        tree = dag.resolved(edited)
        declared = {}
        want = {}
        for row, objective, seed, rnd in SMOKE_JOBS:
            job = job_name(row, objective, seed, rnd)
            obj = "base" if row == "evaluate_base" else objective
            declared[job] = dag.keys(row, edited, obj)
            changed = {k for k, v in reads[job].items() if dag.value_at(tree, k) != v}
            # named by the declared key that covers it (a section or an objective's entry)
            if changed:
                want[job] = {next(d for d in declared[job] if covered(k, [d])) for k in changed}
        reasons = snakemake_reasons(copies["snakemake"])
        dvc = {job: keys for job, (_, keys) in dvc_changes(copies["dvc"]).items() if keys}
        why = {tool: explain("train@dpo-0", edited, root) for tool, root in copies.items()}
    finally:
        for root in copies.values():
            restore(root)
    assert want["train@dpo-0"] == {"backbone.dtype", "device", "objectives.dpo", "train.lr"}
    assert "online.k" in want["candidates_round@dpo-0-round0"]
    assert "online.tie_threshold" in want["labels_round@dpo-0-round0"]
    round_one = [job_name(row, o, s) for row, o, s, r in SMOKE_JOBS if r == 1]
    assert not any(k.startswith("online.") for job in round_one for k in want.get(job, ()))
    for lines in why.values():  # `diffpref why` names each changed value, old and new
        assert "params: objectives.dpo.beta: 2500.0 -> 2000.0" in lines, lines
        assert "params: train.lr: 0.001 -> 0.002" in lines, lines
    assert {"world", "prompts", "candidates", "rewards", "labels", "report"} <= set(want)
    smk = {job: changed_keys(r, set(declared[job])) for job, r in reasons.items()}
    assert {job: keys for job, keys in smk.items() if keys} == want
    assert dvc == want
    for job, reason in reasons.items():  # the rest rerun only because an input will change
        assert job in want or reason.startswith("Input files updated by another job: "), job
        assert job in want or ";" not in reason, (job, reason)


def test_edits_no_job_reads_rerun_nothing_under_either_tool(copies):
    """A comment, an inactive profile, the MLflow record's settings, job resources and a value
    the active profile overrides: Snakemake has nothing to do, and DVC's `resolve` writes the
    same files, so no stage changes."""
    for root in copies.values():
        edit_params(root, QUIET_EDITS)
        with (root / "params.yaml").open("a") as f:
            f.write("# a comment\n")
    try:
        smk = sh(["snakemake", "-n", "--cores", "1"], copies["snakemake"])
        dvc = dvc_changes(copies["dvc"])
    finally:
        for root in copies.values():
            restore(root)
    assert "Nothing to be done" in smk, smk
    assert dvc == {}, dvc


def executed(out: str, tool: str) -> set[str]:
    """The jobs a `snakemake` or `dvc repro` run executed, by DVC's names."""
    if tool == "snakemake":
        return set(snakemake_plan(out))
    return set(re.findall(r"^Running stage '([^']+)':", out, re.M)) - {"resolve"}


def test_raising_rounds_runs_only_the_new_rounds_jobs_and_the_report(copies):
    """`online.rounds` from [2] to [2, 3]: both tools run round 3's seven jobs (its samples,
    rewards, labels, training from round 2, evaluation, and its compute-matched control) and
    the report, nothing of round 1 or round 2."""
    three = [{"round": 2, "after": 1}, {"round": 3, "after": 2}]
    for root in copies.values():
        edit_params(root, {"online.rounds": three})
    try:
        smk = sh(["snakemake", "--cores", "1"], copies["snakemake"])
        dvc = sh(["dvc", "repro"], copies["dvc"], env={"DIFFPREF_MLFLOW": "0", **ONE_THREAD})
        adapter = copies["snakemake"] / "results/adapters/dpo/seed0/round3/train_metrics.json"
        record = json.loads(adapter.read_text())
    finally:  # the copies keep round 3's outputs and a new report: this module's last test
        for root in copies.values():
            restore(root)
    rows = [row for row in dag.STAGES if dag.STAGES[row].per_round]
    want = {job_name(row, "dpo", 0, 3) for row in rows} | {"report"}
    assert executed(smk, "snakemake") == want
    assert executed(dvc, "dvc") == want
    # round 3 started from round 2's adapter, which was its reference
    assert record["reference"].endswith("results/adapters/dpo/seed0/round2")
    assert record["round"] == 3 and record["sampling"]["images"] > 0
