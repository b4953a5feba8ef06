"""Hostile and careless input: no params string runs as shell code (under Snakemake and DVC),
and a stage writes only where its results go, replacing only folders it wrote itself. Rows of
docs/reliability.md; the stages run in-process on the real CLI, the tools for real."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml
from snakemake.iocontainers import Wildcards
from snakemake.utils import format as snakemake_format
from tests.conftest import REPO
from tests.project import edit_params, sh

from diffpref import config
from diffpref.cli import main
from diffpref.config import dag
from diffpref.io import MARKER

# Each a shell metacharacter at work: command substitution, backticks, a command separator, a
# new line, quotes (balanced: an unbalanced one only makes today's command a syntax error),
# and Snakemake's own braces, which its formatting would fill in.
HOSTILE = [
    "$(touch pwned)smoke",
    "`touch pwned`",
    "smoke;touch pwned",
    "smoke\ntouch pwned",
    'it\'s "quoted"',
    "{threads}{input}",
    "a b\\c & | > <",
]


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    monkeypatch.setenv("DIFFPREF_MLFLOW", "0")


def pwned(root: Path) -> list[Path]:
    return sorted(root.rglob("pwned*"))


# --- nothing reaches a shell unquoted ---------------------------------------------------------


@pytest.mark.parametrize("row", dag.STAGES)
def test_every_snakemake_command_keeps_each_hostile_string_one_word(row):
    """The rule's command as Snakemake's own formatter fills it in (threads, wildcards) and a
    POSIX shell splits it: the profile and the wildcards are each exactly one word, as given."""
    for value in HOSTILE:
        wildcards = Wildcards(fromdict={"objective": value, "seed": "0", "round": "2"})
        cmd = snakemake_format(dag.snakemake_shell(row, value), threads=2, wildcards=wildcards)
        words = ["diffpref", dag.stage_of(row), "--params", "params.yaml", "--profile", value]
        words += ["--threads", "2"]
        if row == "evaluate_base":
            words += ["--objective", "base"]
        elif dag.STAGES[row].per_model:
            words += ["--objective", value, "--seed", "0"]
        words += ["--round", "2"] if dag.STAGES[row].per_round else []
        words += ["--matched"] if row.endswith("_matched") else []
        assert shlex.split(cmd) == words, cmd


def test_dvc_commands_hold_no_params_value():
    """dvc.yaml's commands are constants: DVC pastes `${item.*}` into a shell command
    unquoted, so a job learns its objective and seed from "$DVC_STAGE" (`--job`)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        assert "${" not in stage["cmd"], name
        assert shlex.split(stage["cmd"])[:4] == ["diffpref", name.split("_")[0], "--params",
                                                 "params.yaml"]  # fmt: skip


def tool_project(root: Path) -> Path:
    """The least a project needs for both tools to plan and run a stage: the wiring and params
    copied, the package linked (cheaper than :func:`tests.project.make_project`), DVC without
    git."""
    root.mkdir()
    for name in ("Snakefile", "dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "workflow", root / "workflow")
    (root / "src").symlink_to(REPO / "src")
    sh(["dvc", "init", "-q", "--no-scm"], root)
    return root


def test_no_params_string_runs_as_shell_code_under_snakemake_or_dvc(tmp_path):
    """The issue's case: a profile named `$(touch pwned)…` (it exists in params.yaml) and
    `snakemake --cores 1 results/prompts`; and under DVC an objective and a training seed of
    that kind in a job `dvc repro --single-item` runs (its dependencies present). No `pwned`
    file appears: the stage runs with its profile as written, or the name is refused first.
    The stage's old output, unmarked (written before markers), is Snakemake's declared output:
    Snakemake clears it before the job, and the stage writes its own. A dry run of the whole
    DAG plans every job (the name in the report's params is no wildcard)."""
    root = tool_project(tmp_path / "p")
    name = "x$(touch pwned1)`touch pwned2`;touch pwned3;'q'\"q\"{threads}\ntouch pwned4"

    def hostile_profile(raw):
        raw["profiles"][name] = raw["profiles"]["smoke"]
        raw["profile"] = name

    edit_params(root, hostile_profile)
    old = root / "results/prompts/old.parquet"  # an output of a diffpref without markers
    old.parent.mkdir(parents=True)
    old.write_text("")
    cmd = ["snakemake", "--cores", "1", "--force", "results/prompts"]
    out = sh(cmd, root, check=False)
    assert pwned(tmp_path) == [], out
    new = root / "results/prompts/train.parquet"
    ran = "Finished jobid" in out and new.is_file() and not old.exists()  # Snakemake clears it
    assert ran or ("profile" in out and old.exists() and not new.exists()), out
    # every job's params hold the name (the report reads `profile`): none is read as a wildcard
    out = sh(["snakemake", "-n", "--forceall"], root, check=False)
    assert "WildcardError" not in out and pwned(tmp_path) == [], out

    obj, seed = "x$(touch pwned5)`touch pwned6`;touch pwned7;'q'", "0;touch pwned8"

    def hostile_job(raw):
        del raw["profiles"][name]
        raw.update(profile="default", objectives={obj: {"loss": "dpo"}}, train_seeds=[0, seed])

    edit_params(root, hostile_job)
    for dep in ("world", "candidates", "labels", f"resolved/train@{obj}.yaml"):
        (root / "results" / dep).parent.mkdir(parents=True, exist_ok=True)
        (root / "results" / dep).write_text("")  # what DVC checks exists before it runs
    job = f"train@{obj}-{seed}"
    out = sh(["dvc", "repro", "--single-item", job], root, check=False)
    assert pwned(tmp_path) == [], out
    assert f"Running stage '{job}'" in out, out
    # the stage itself refuses the names (the objective's or the seed's, whichever it meets
    # first), as params errors
    assert re.search(r"^error: params\.yaml: (objectives\.|train_seeds\.1: )", out, re.M), out
    assert "exited with 2" in out, out


def test_a_prompt_file_name_with_braces_is_refused_for_snakemake(tmp_path):
    """Snakemake reads "{...}" in an input path as a wildcard and has no escape: the Snakefile's
    input list for the prompts stage refuses the name, with the key (a WorkflowError)."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["prompts"] |= {"source": "file", "file": "data/prompts/{a}.txt"}
    cfg = config.validate(raw, tmp_path / "params.yaml")
    with pytest.raises(config.ConfigError) as e:
        dag.user_data(cfg, "prompts")
    assert str(e.value) == (
        "prompts.file: 'data/prompts/{a}.txt': Snakemake reads braces in a file name as a "
        "wildcard; rename the file"
    )


def test_a_dvc_job_named_by_dvc_runs_that_objective_and_seed(tmp_path, capsys):
    """`--job` takes DVC's stage name and nothing else: a job the DAG lacks, another stage's
    job, or --job with --objective are errors (exit 2) before any work."""
    p = tmp_path / "params.yaml"
    p.write_text((REPO / "params.yaml").read_text())
    cases = {
        ("train", "--job", "train@nope-0"): "--job: no job 'train@nope-0' in this DAG (jobs: ",
        ("train", "--job", "evaluate@dpo-0"): "--job: 'evaluate@dpo-0' is not a train job",
        ("evaluate", "--job", "train@dpo-0", "--seed", "0"): "--job names the objective, the",
        ("train",): "--objective (or --job) is required",
    }
    for args, message in cases.items():
        assert main([args[0], "--params", str(p), *args[1:]]) == 2, args
        assert capsys.readouterr().err.startswith(f"error: {p}: {message}"), args


# --- writes are confined ----------------------------------------------------------------------


def project(root: Path, monkeypatch, **over) -> Path:
    """The repo's params.yaml in ``root`` (the working directory), ``over`` set at its top."""
    root.mkdir(exist_ok=True)
    raw = yaml.safe_load((REPO / "params.yaml").read_text()) | over
    (root / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(root)
    return root / "params.yaml"


def users_files(folder: Path) -> dict[str, bytes]:
    """A folder of the user's: a file and a README (what `results: data` would have lost)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mine.txt").write_text("the user's prompts\n")
    (folder / "README.md").write_text("tracked by git\n")
    return snapshot(folder.parent)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


def in_the_way(path: str) -> str:
    return (
        f"error: {path}: not replaced: it is a folder diffpref did not write (it holds no "
        f"{MARKER}); a stage replaces only a folder it wrote itself. Nothing was deleted: move "
        "it away (or delete it, if it is an old diffpref output written before output folders "
        "were marked), or set `results:` to another folder\n"
    )


def test_results_in_a_users_folder_replace_nothing_there(tmp_path, monkeypatch, capsys):
    """The issue's case: `results: data` is inside the project, but data/prompts/ holds the
    prompt file and a README: `check` and the prompts stage name it, and nothing is deleted."""
    p = project(tmp_path, monkeypatch, results="data")
    before = users_files(tmp_path / "data" / "prompts")
    assert main(["check", "--params", str(p)]) == 2
    assert capsys.readouterr().err == in_the_way("data/prompts")
    assert main(["prompts", "--params", str(p)]) == 2
    assert capsys.readouterr().err == in_the_way("data/prompts")
    assert snapshot(tmp_path / "data") == before


def outside_message(p: Path, results: str, resolved: Path, note: str = "") -> str:
    return (
        f"error: {p}: results: {results!r} is {resolved}{note}, outside the project "
        f"({p.parent}): stages replace folders named like their outputs there; use a folder "
        "inside the project, or set results_outside_project: true to allow it\n"
    )


def test_results_outside_the_project_need_the_switch_and_check_says_so(
    tmp_path, monkeypatch, capsys
):
    """An absolute path elsewhere, `..` and a link out of the project are refused by `check`
    and by every stage (exit 2, before any work); `results_outside_project: true` allows the
    path, `check` reports it, and a user's folder there is still never replaced."""
    elsewhere = tmp_path / "elsewhere"
    before = users_files(elsewhere / "prompts")
    root = tmp_path / "project"
    cases = {
        str(elsewhere): "",
        "../elsewhere": " (resolved, links followed)",
        "linked": " (resolved, links followed)",
    }
    for results, note in cases.items():
        p = project(root, monkeypatch, results=results)
        if results == "linked":
            (root / "linked").symlink_to(elsewhere)
        for stage in ("check", "prompts"):
            assert main([stage, "--params", str(p)]) == 2
            assert capsys.readouterr().err == outside_message(p, results, elsewhere, note)
    p = project(root, monkeypatch, results=".")
    assert main(["check", "--params", str(p)]) == 2
    assert capsys.readouterr().err == (
        f"error: {p}: results: '.' is the project folder itself; stages write folders named "
        "like their outputs (prompts, report, ...) there: use a folder inside it, such as "
        "results\n"
    )
    p = project(root, monkeypatch, results=str(elsewhere), results_outside_project=True)
    assert main(["prompts", "--params", str(p)]) == 2
    assert capsys.readouterr().err == in_the_way(f"{elsewhere}/prompts")
    assert snapshot(elsewhere) == before
    (elsewhere / "prompts").rename(tmp_path / "moved")  # the user moves it away
    assert main(["check", "--params", str(p)]) == 0
    assert capsys.readouterr().out.startswith(
        f"{p}: results: {elsewhere} is outside the project (allowed by "
        "results_outside_project: true)\n"
    )
    assert main(["prompts", "--params", str(p)]) == 0
    assert (elsewhere / "prompts" / MARKER).is_file()
    assert main(["prompts", "--params", str(p)]) == 0  # its own folder: replaced


@pytest.mark.parametrize(
    ("stage", "folder"),
    [
        pytest.param(["prompts"], "results/prompts", id="prompts"),
        # declared files: the stage replaces their folder
        pytest.param(["report"], "results/plots", id="report_plots"),
        pytest.param(
            ["train", "--objective", "dpo", "--seed", "0"],
            "results/checkpoints/dpo/seed0/round1",
            id="train_checkpoint",
        ),
    ],
)
def test_a_users_folder_where_a_stage_writes_stops_it_before_any_work(
    tmp_path, monkeypatch, capsys, stage, folder
):
    """Where a stage's output (or training's checkpoint) goes, a folder holding user files:
    exit 2 naming it, before the stage reads its inputs (none exist here), nothing deleted."""
    p = project(tmp_path, monkeypatch, results="results")
    before = users_files(tmp_path / folder)
    assert main([stage[0], "--params", str(p), *stage[1:]]) == 2
    assert capsys.readouterr().err == in_the_way(folder)
    assert snapshot((tmp_path / folder).parent) == before
