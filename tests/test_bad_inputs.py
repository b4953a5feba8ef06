"""Bad input: one clear error naming the file and the key, line or row, exit code 2, and
nothing computed or written (the previous output stays as it was). The rows of
docs/reliability.md; every case runs the real CLI in-process."""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from tests.conftest import REPO

from diffpref import config
from diffpref import datasources as ds
from diffpref.cli import main
from diffpref.config import deep_merge
from diffpref.io import InputError, load_weights
from diffpref.objectives.rethinking import ReferenceSchedule
from diffpref.rewards import aesthetic, hpsv2


@pytest.fixture(autouse=True)
def _no_mlflow(monkeypatch):
    """Stages run without their MLflow record: the store is not what these tests are about."""
    monkeypatch.setenv("DIFFPREF_MLFLOW", "0")


def params(tmp_path: Path, over: dict | None = None, mutate=None) -> Path:
    """The repo's params.yaml with results under ``tmp_path``, ``over`` merged in."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw = deep_merge(raw, {"results": str(tmp_path / "results"), **(over or {})})
    if mutate:
        mutate(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def run(stage: str, p: Path, *args: str) -> int:
    return main([stage, "--params", str(p), *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


# --- params: every section --------------------------------------------------------------------


def _set(section: str, **kv):
    return lambda r: r.setdefault(section, {}).update(kv)


def _objective(name: str, entry: dict | None = None):
    return lambda r: r["objectives"].update({name: entry or {"loss": "dpo", "beta": 2500}})


def _smoke_with(raw: dict, **train) -> None:
    """The smoke profile, active, overriding ``train`` keys."""
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["train"].update(train)


# The rule of objective and profile names, as the messages state it (written out here, not
# imported, so that a change of the rule shows in this file)
RULE = "use letters, digits, '_' and '-', starting with a letter, at most 64 characters"
OBJ = f"{RULE} (it names folders and DVC stages)"
PROF = f"{RULE} (it is passed on every stage's command line and recorded in MLflow)"
NOT_INT = "Input should be a valid integer, unable to parse string as an integer"
NOT_NUM = "Input should be a valid number, unable to parse string as a number"
EXTRA = "Extra inputs are not permitted"
BOOL_INT = (
    "Input should be a valid integer, not a boolean "
    "(YAML reads true/false, yes/no and on/off as booleans)"
)
BOOL_NUM = BOOL_INT.replace("valid integer", "valid number")
REWARDS = (
    "'fidelity', 'quality', 'judge', 'pickscore', 'clip_score', 'aesthetic', 'hpsv2' or "
    "'imagereward'"
)
INF, NAN = float("inf"), float("nan")


def _profile(name):
    """A copy of the smoke profile named ``name``, active."""
    return lambda r: r.update(
        profile=name, profiles={**r["profiles"], name: r["profiles"]["smoke"]}
    )


# case: (mutation of the repo's params.yaml, the whole message after "error: <params>: ")
PARAMS_CASES = {
    # objective names become folders, DVC stage names and params keys
    "objective_dotdot": (
        _objective(".."),
        f"objectives...: '..' is not a valid objective name: {OBJ}",
    ),
    "objective_slash": (
        _objective("a/b"),
        f"objectives.a/b: 'a/b' is not a valid objective name: {OBJ}",
    ),
    "objective_space": (
        _objective("a b"),
        f"objectives.a b: 'a b' is not a valid objective name: {OBJ}",
    ),
    "objective_empty": (_objective(""), f"objectives.: '' is not a valid objective name: {OBJ}"),
    "objective_leading_dot": (
        _objective(".dpo"),
        f"objectives..dpo: '.dpo' is not a valid objective name: {OBJ}",
    ),
    "objective_digit": (
        _objective("1e3"),
        f"objectives.1e3: '1e3' is not a valid objective name: {OBJ}",
    ),
    "objective_long": (
        _objective("o" * 65),
        f"objectives.{'o' * 65}: '{'o' * 65}' is not a valid objective name: {OBJ}",
    ),
    "objective_base": (
        _objective("base"),
        "objectives.base: 'base' is reserved for the untrained model",
    ),
    "objective_case_clash": (
        _objective("DPO"),
        "objectives.dpo: same folder as objectives.DPO on a case-insensitive file system; "
        "rename one",
    ),
    "objective_no_loss": (
        _objective("x", {"beta": 1}),
        "objectives.x: needs a 'loss' key naming a registered loss",
    ),
    "objective_unknown_loss": (
        _objective("x", {"loss": "nope"}),
        "objectives.x: loss: unknown loss 'nope'; known losses: agsm, dpo, kto, lair, mapo, "
        "sft, smpo, softrepa",
    ),
    "objective_wrong_type": (
        _set("objectives", dpo={"loss": "dpo", "beta": "big"}),
        f"objectives.dpo.beta: {NOT_NUM}",
    ),
    "objective_range": (
        _set("objectives", dpo={"loss": "dpo", "beta": 0}),
        "objectives.dpo.beta: Input should be greater than 0",
    ),
    "objective_unknown_key": (
        _set("objectives", dpo={"loss": "dpo", "beta": 1, "betta": 1}),
        f"objectives.dpo.betta: {EXTRA}",
    ),
    "objective_train_range": (
        _set("objectives", dpo={"loss": "dpo", "beta": 2500, "train": {"steps": 0}}),
        "objectives.dpo.train.steps: Input should be greater than or equal to 1",
    ),
    # the top level and every section: wrong type, out of range, unknown key
    "top_wrong_type": (lambda r: r.update(seed="zero"), f"seed: {NOT_INT}"),
    "top_range": (
        lambda r: r.update(train_seeds=[]),
        "train_seeds: List should have at least 1 item after validation, not 0",
    ),
    "top_unknown_key": (lambda r: r.update(sed=1), f"sed: {EXTRA}"),
    "world_wrong_type": (_set("world", item_size="big"), f"world.item_size: {NOT_INT}"),
    "world_unknown_key": (_set("world", itemsize=14), f"world.itemsize: {EXTRA}"),
    "backbone_wrong_type": (
        _set("backbone", kind="sd3"),
        "backbone.kind: Input should be 'embedded', 'sd15' or 'sdxl'",
    ),
    "backbone_range": (
        _set("backbone", resolution=4),
        "backbone.resolution: Input should be greater than or equal to 8",
    ),
    "backbone_unknown_key": (_set("backbone", weights="x"), f"backbone.weights: {EXTRA}"),
    "sampling_wrong_type": (_set("sampling", steps="many"), f"sampling.steps: {NOT_INT}"),
    "sampling_range": (
        _set("sampling", steps=0),
        "sampling.steps: Input should be greater than or equal to 1",
    ),
    "sampling_unknown_key": (_set("sampling", step=8), f"sampling.step: {EXTRA}"),
    "prompts_wrong_type": (_set("prompts", n_train="all"), f"prompts.n_train: {NOT_INT}"),
    "prompts_range": (
        _set("prompts", eval_fraction=1.0),
        "prompts.eval_fraction: Input should be less than 1",
    ),
    "prompts_unknown_key": (_set("prompts", path="p.txt"), f"prompts.path: {EXTRA}"),
    "prompts_no_training_left": (
        _set("prompts", eval_fraction=0.5, val_fraction=0.5),
        "prompts.val_fraction: eval_fraction 0.5 + val_fraction 0.5 leaves no training prompts; "
        "keep the sum below 1",
    ),
    "validation_without_prompts": (
        lambda r: (r["prompts"].update(n_val=0), r["evaluate"].update(split="validation")),
        "evaluate.split: validation evaluates on validation prompts, and prompts.n_val is 0: set "
        "it above 0",
    ),
    "evaluate_split_unknown": (
        _set("evaluate", split="val"),
        "evaluate.split: Input should be 'test' or 'validation'",
    ),
    "candidates_wrong_type": (_set("candidates", k="four"), f"candidates.k: {NOT_INT}"),
    "candidates_range": (
        _set("candidates", k=1),
        "candidates.k: Input should be greater than or equal to 2",
    ),
    "candidates_unknown_key": (_set("candidates", K=4), f"candidates.K: {EXTRA}"),
    "rewards_wrong_type": (_set("rewards", batch_size="big"), f"rewards.batch_size: {NOT_INT}"),
    "rewards_range": (
        _set("rewards", models=[]),
        "rewards.models: List should have at least 1 item after validation, not 0",
    ),
    "rewards_unknown_key": (_set("rewards", model=["x"]), f"rewards.model: {EXTRA}"),
    "rewards_source_wrong_type": (
        _set("rewards", sources={"hpsv2": {"trust_pickle": "maybe"}}),
        "rewards.sources.hpsv2.RewardSource.trust_pickle: Input should be a valid boolean, "
        "unable to interpret input",
    ),
    "labels_wrong_type": (
        _set("labels", tie_threshold="small"),
        f"labels.tie_threshold: {NOT_NUM}",
    ),
    "labels_range": (
        _set("labels", tie_threshold=-1),
        "labels.tie_threshold: Input should be greater than or equal to 0",
    ),
    "labels_unknown_key": (_set("labels", tie=0.1), f"labels.tie: {EXTRA}"),
    "train_wrong_type": (_set("train", lr="fast"), f"train.lr: {NOT_NUM}"),
    "train_range": (_set("train", lr=0), "train.lr: Input should be greater than 0"),
    "train_unknown_key": (_set("train", learning_rate=1e-3), f"train.learning_rate: {EXTRA}"),
    "evaluate_wrong_type": (
        _set("evaluate", seeds="0,1"),
        "evaluate.seeds: Input should be a valid list",
    ),
    "evaluate_range": (
        _set("evaluate", bootstrap=5),
        "evaluate.bootstrap: Input should be greater than or equal to 10",
    ),
    "evaluate_unknown_key": (_set("evaluate", seed=[0]), f"evaluate.seed: {EXTRA}"),
    "report_wrong_type": (_set("report", grid_prompts="all"), f"report.grid_prompts: {NOT_INT}"),
    "report_range": (
        _set("report", grid_prompts=0),
        "report.grid_prompts: Input should be greater than or equal to 1",
    ),
    "report_unknown_key": (_set("report", grid=4), f"report.grid: {EXTRA}"),
    # floats are finite (YAML reads .inf, .nan; 1e309 overflows to inf)
    "beta_inf": (
        _set("objectives", dpo={"loss": "dpo", "beta": INF}),
        "objectives.dpo.beta: Input should be a finite number (got inf)",
    ),
    "listwise_tau_inf": (
        _set("labels", listwise_tau=INF),
        "labels.listwise_tau: Input should be a finite number (got inf)",
    ),
    "pointwise_threshold_nan": (
        _set("labels", pointwise_threshold=NAN),
        "labels.pointwise_threshold: Input should be a finite number (got nan)",
    ),
    "train_override_inf": (
        _set("objectives", mapo={"loss": "mapo", "train": {"lr": -INF}}),
        "objectives.mapo.train.lr: Input should be a finite number (got -inf)",
    ),
    "rethinking_inf": (
        _set("objectives", dpo={"loss": "dpo", "beta": 1, "rethinking": {"delta": INF}}),
        "objectives.dpo.rethinking.delta: Input should be a finite number (got inf)",
    ),
    "world_nan": (
        _set("world", unet_lr=NAN),
        "world.unet_lr: Input should be a finite number (got nan)",
    ),
    "category_mix_inf": (
        _set("world", category_mix={"single": INF}),
        "world.category_mix.single: Input should be a finite number (got inf)",
    ),
    "tracking_inf": (
        _set("tracking", large_artifact_mb=INF),
        "tracking.large_artifact_mb: Input should be a finite number (got inf)",
    ),
    # booleans are no numbers (pydantic would read true as 1)
    "steps_true": (_set("train", steps=True), f"train.steps: {BOOL_INT}"),
    "k_true": (_set("candidates", k=True), f"candidates.k: {BOOL_INT}"),
    "threshold_false": (_set("labels", tie_threshold=False), f"labels.tie_threshold: {BOOL_NUM}"),
    "seed_list_true": (lambda r: r.update(train_seeds=[0, True]), f"train_seeds.1: {BOOL_INT}"),
    "objective_param_true": (
        _set("objectives", smpo={"loss": "smpo", "beta": 1, "inversion_steps": True}),
        f"objectives.smpo.inversion_steps: {BOOL_INT}",
    ),
    "override_true": (
        _set("objectives", sft={"loss": "sft", "train": {"steps": True}}),
        f"objectives.sft.train.steps: {BOOL_INT}",
    ),
    # sizes that allocate or loop have an upper bound
    "bootstrap_huge": (
        _set("evaluate", bootstrap=10**9),
        "evaluate.bootstrap: Input should be less than or equal to 100000",
    ),
    "n_train_huge": (
        _set("prompts", n_train=10**9),
        "prompts.n_train: Input should be less than or equal to 1000000",
    ),
    "k_huge": (
        _set("candidates", k=10**4),
        "candidates.k: Input should be less than or equal to 64",
    ),
    "batch_huge": (
        _set("train", batch_size=10**8),
        "train.batch_size: Input should be less than or equal to 65536",
    ),
    "sampling_steps_huge": (
        _set("sampling", steps=10**6),
        "sampling.steps: Input should be less than or equal to 1000",
    ),
    "grid_huge": (
        _set("report", grid_prompts=10**4),
        "report.grid_prompts: Input should be less than or equal to 64",
    ),
    "world_huge": (
        _set("world", n_canvases=10**10),
        "world.n_canvases: Input should be less than or equal to 1000000",
    ),
    "objective_size_huge": (
        _set("objectives", agsm={"loss": "agsm", "n_tokens": 10**6}),
        "objectives.agsm.n_tokens: Input should be less than or equal to 256",
    ),
    "train_seeds_many": (
        lambda r: r.update(train_seeds=list(range(100))),
        "train_seeds: List should have at most 32 items after validation, not 100",
    ),
    "eval_seeds_many": (
        _set("evaluate", seeds=list(range(1000))),
        "evaluate.seeds: List should have at most 64 items after validation, not 1000",
    ),
    "seed_negative": (
        lambda r: r.update(seed=-1),
        "seed: Input should be greater than or equal to 0",
    ),
    "seed_huge": (
        lambda r: r.update(seed=2**40),
        "seed: Input should be less than or equal to 4294967295",
    ),
    "resources_huge": (
        lambda r: r["resources"]["embedded"]["default"].update(mem_mb=10**12),
        "resources.embedded.default.mem_mb: Input should be less than or equal to 100000000",
    ),
    # free text that names things
    "reward_unknown": (
        _set("rewards", models=["fidelity", "qualty"]),
        f"rewards.models.1: Input should be {REWARDS}",
    ),
    "reward_repeated": (
        _set("rewards", models=["fidelity", "fidelity"]),
        "rewards.models: repeated reward models in ['fidelity', 'fidelity']: score each once",
    ),
    "reward_source_unknown": (
        _set("rewards", sources={"pickscor": "models/pickscore"}),
        f"rewards.sources.pickscor.[key]: Input should be {REWARDS}",
    ),
    "label_reward_unscored": (
        _set("labels", reward="pickscore"),
        "labels.reward: 'pickscore' is not scored: use one of rewards.models ['fidelity', "
        "'quality'] (or 'human' for imported preferences)",
    ),
    "path_nul": (
        _set("prompts", source="file", file="data/a\x00b.txt"),
        "prompts.file: Text should hold no control characters (found '\\x00')",
    ),
    "path_long": (
        _set("prompts", source="file", file="x" * 5000),
        "prompts.file: String should have at most 4096 characters",
    ),
    "column_empty": (
        _set("prompts", column=""),
        "prompts.column: String should have at least 1 character",
    ),
    # profiles: their names pass on command lines and into MLflow, like objective names
    "unknown_profile": (
        lambda r: r.update(profile="huge"),
        "profile: unknown profile 'huge' "
        "(known: default, manyseeds, rounds, sd15, sd15-bench, sdxl, smoke)",
    ),
    "profile_sets_unknown_key": (lambda r: _smoke_with(r, lr_x=1), f"train.lr_x: {EXTRA}"),
    "profile_shell": (
        _profile("$(touch pwned)smoke"),
        f"profiles.$(touch pwned)smoke: '$(touch pwned)smoke' is not a valid profile name: {PROF}",
    ),
    "profile_space": (
        _profile("smoke test!"),
        f"profiles.smoke test!: 'smoke test!' is not a valid profile name: {PROF}",
    ),
    "profile_long": (
        _profile("p" * 65),
        f"profiles.{'p' * 65}: '{'p' * 65}' is not a valid profile name: {PROF}",
    ),
    "profile_digit": (
        _profile("1smoke"),
        f"profiles.1smoke: '1smoke' is not a valid profile name: {PROF}",
    ),
    "profile_number": (
        lambda r: r.update(profile=1),
        f"profile: 1 is not a valid profile name: YAML reads it as a number; {PROF}",
    ),
    "profile_default": (
        lambda r: r["profiles"].update(default={"seed": 1}),
        "profiles.default: 'default' is reserved for the values outside profiles:; rename it",
    ),
    "profile_not_mapping": (
        lambda r: r["profiles"].update(smoke=3),
        "profiles.smoke: must be a mapping of overrides",
    ),
    # online rounds: a chain DVC can expand, of objectives that can continue a LoRA policy
    "online_round_gap": (
        _set(
            "online",
            objectives=["dpo"],
            rounds=[{"round": 2, "after": 1}, {"round": 4, "after": 3}],
        ),
        "online.rounds: entry 2 is {round: 4, after: 3}: rounds follow each other from round 2, "
        "each after the one before: [{round: 2, after: 1}, {round: 3, after: 2}]",
    ),
    "online_round_after": (
        _set("online", objectives=["dpo"], rounds=[{"round": 2, "after": 2}]),
        "online.rounds: entry 1 is {round: 2, after: 2}: rounds follow each other from "
        "round 2, each after the one before: [{round: 2, after: 1}]",
    ),
    "online_round_one": (
        _set("online", rounds=[{"round": 1, "after": 1}]),
        "online.rounds.0.round: Input should be greater than or equal to 2",
    ),
    "online_unknown_objective": (
        _set("online", objectives=["dpoo"]),
        "online.objectives: 'dpoo' is not an objective (agsm, dpo, dpo_hinge, dpo_ipo, "
        "dpo_rethink, kto, lair, mapo, sft, smpo, softrepa)",
    ),
    "online_soft_tokens": (
        _set("online", objectives=["softrepa"]),
        "online.objectives: 'softrepa' cannot take online rounds: loss 'softrepa' trains soft "
        "tokens on a frozen backbone: there is no LoRA policy for a round to continue",
    ),
    "online_rethinking": (
        _set("online", objectives=["dpo_rethink"]),
        "online.objectives: 'dpo_rethink' cannot take online rounds: its rethinking: moving "
        "reference already replaces the reference during training (measured against the base "
        "model); online rounds fix it to the previous round",
    ),
    "online_repeated": (
        _set("online", objectives=["dpo", "dpo"]),
        "online.objectives: repeated names in ['dpo', 'dpo']",
    ),
    "online_fresh_file_prompts": (
        lambda r: (
            r["online"].update(prompts="fresh"),
            r["prompts"].update(source="file", file="data/prompts/x.txt"),
        ),
        "online.prompts: fresh prompts come from the embedded world's prompt distribution: use "
        "prompts.source: world, or online.prompts: same",
    ),
    "online_pairs": (
        _set("online", pairs="margin"),
        "online.pairs: Input should be 'all' or 'best_worst'",
    ),
    "online_k": (_set("online", k=1), "online.k: Input should be greater than or equal to 2"),
    "online_missing": (
        lambda r: r["online"].pop("tie_threshold"),
        "online.tie_threshold: Field required",
    ),
    "judge_unknown": (
        _set("evaluate", judge="oracle"),
        f"evaluate.judge: Input should be {REWARDS}",
    ),
    "judge_renamed": (
        lambda r: r["evaluate"].update(win_reward=r["evaluate"].pop("judge")),
        "evaluate.win_reward: renamed `evaluate.judge` (the reward of the verdicts and win "
        "rates; another than labels.reward)",
    ),
}


@pytest.mark.parametrize("case", PARAMS_CASES)
def test_bad_params_exit_2_naming_file_and_key_before_any_work(tmp_path, capsys, case):
    mutate, message = PARAMS_CASES[case]
    p = params(tmp_path, mutate=mutate)
    assert run("check", p) == 2
    checked = capsys.readouterr().err
    assert checked == f"error: {p}: {message}\n"
    assert run("prompts", p) == 2
    assert capsys.readouterr().err == checked
    assert not (tmp_path / "results").exists()


def test_check_finds_an_unknown_key_in_a_profile_that_is_not_active(tmp_path, capsys):
    p = params(tmp_path, mutate=lambda r: r["profiles"]["smoke"]["train"].update(lr_x=1))
    assert run("check", p) == 2
    assert f"error: profile smoke: {p}: train.lr_x: Extra inputs" in capsys.readouterr().err


# --- the params file itself: what YAML would silently accept -----------------------------------

REPO_TEXT = (REPO / "params.yaml").read_text()


def _line(text: str, start: str) -> int:
    """The number (from 1) of the first line starting with ``start``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith(start))


def _after(text: str, start: str, new: str) -> tuple[str, int]:
    """``text`` with the lines ``new`` inserted after the line starting with ``start``, and
    the number of the first inserted line."""
    at = _line(text, start)
    lines = text.splitlines(keepends=True)
    return "".join([*lines[:at], new, *lines[at:]]), at + 1


def _bomb(text: str) -> tuple[str, str]:
    """A profile holding nine levels of ten aliases: 10^9 values once expanded."""
    rows = ["  bomb:\n", "    x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"]
    rows += [f"    x{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)]
    text, first = _after(text, "profiles:", "".join(rows))
    return text, (  # the running count passes the budget within x4's aliases of x3
        f"line {first + 5}: alias *a3 takes the file past 100,000 values (aliases expanded): "
        "an alias bomb, or far more than params need"
    )


def _second_objectives(text: str) -> tuple[str, str]:
    first = _line(text, "objectives:")
    text += "objectives:\n  dpo: {loss: dpo, beta: 1}\n"
    return (
        text,
        f"line {len(text.splitlines()) - 1}: duplicate key 'objectives' (first at line {first})",
    )


def _second_beta(text: str) -> tuple[str, str]:
    text, at = _after(text, "  dpo: ", "    beta: 1\n")
    first = at + next(i for i, line in enumerate(text.splitlines()[at:]) if "beta:" in line)
    return text, f"line {first + 1}: duplicate key 'beta' (first at line {at})"


def _key(key: str, kind: str, start: str = "objectives:", entry: str = "{loss: dpo, beta: 1}"):
    def case(text: str) -> tuple[str, str]:
        text, at = _after(text, start, f"  {key}: {entry}\n")
        return text, f"line {at}: key '{key}' is read by YAML as {kind}; quote it ('{key}')"

    return case


def _replace(old: str, new: str, message: str):
    def case(text: str) -> tuple[str, str]:
        assert old in text
        out = text.replace(old, new, 1)
        return out, message.format(line=_line(out, new.strip("\n").split("\n")[0]))

    return case


def _cycle(text: str) -> tuple[str, str]:
    text, at = _after(text, "profile:", "cycle: &c [*c]\n")
    return text, f"line {at}: alias *c inside its own anchor (a cycle)"


def _deep(text: str) -> tuple[str, str]:
    text, at = _after(text, "profile:", f"deep: {'[' * 40}{']' * 40}\n")
    return text, f"line {at}: nested more than 32 levels deep"


def _not_utf8(text: str) -> tuple[bytes, str]:
    data = text.encode().replace(b"# diffpref: the one", b"# diffpref: caf\xe9 the one", 1)
    return data, f"line {_line(text, '# diffpref')}: not UTF-8 (byte 0xe9); save the file as UTF-8"


def _control(text: str) -> tuple[str, str]:
    text = text.replace("# diffpref: the one", "# diffpref:\x07 the one", 1)
    message = "not valid YAML: control character #x0007 (special characters are not allowed)"
    return text, f"line {_line(text, '# diffpref')}: {message}"


def _big(text: str) -> tuple[str, str]:
    return text + "# " + "x" * (1 << 20) + "\n", (
        "over 1,048,576 bytes (1 MiB), the limit of a params file: is it the right file?"
    )


TEXT_CASES = {
    "alias_bomb_in_profile": _bomb,
    "duplicate_section": _second_objectives,
    "duplicate_key": _second_beta,
    "objective_named_1": _key("1", "a number"),
    "objective_named_yes": _key("yes", "a boolean"),
    "objective_named_date": _key("2024-01-01", "a date"),
    "profile_named_null": _key("~", "null", "profiles:", "{seed: 1}"),
    "alias_cycle": _cycle,
    "nested_too_deep": _deep,
    "not_utf8": _not_utf8,
    "control_character": _control,
    "too_big": _big,
    "not_yaml": _replace(
        "\nseed: 0 ",
        "\nseed: @0 ",
        "line {line}: not valid YAML: found character '@' that cannot start any token",
    ),
    "lr_1e309": _replace(
        "  lr: 1.0e-3",
        "  lr: 1e309",
        "train.lr: Input should be a finite number (got '1e309')",
    ),
    "beta_dot_inf": _replace(
        "    beta: 2500\n  dpo_hinge:",
        "    beta: .inf\n  dpo_hinge:",
        "objectives.dpo.beta: Input should be a finite number (got inf)",
    ),
    "steps_yes": _replace("  steps: 120", "  steps: yes", f"train.steps: {BOOL_INT}"),
}


@pytest.mark.parametrize("case", TEXT_CASES)
def test_params_file_traps_exit_2_naming_the_line(tmp_path, capsys, case):
    """The hardened reader (diffpref.config.loader): limits checked while composing, so an
    alias bomb is refused in well under a second, never expanded."""
    text = re.sub(r"^results: results", f"results: {tmp_path / 'results'}", REPO_TEXT, flags=re.M)
    content, message = TEXT_CASES[case](text)
    p = tmp_path / "params.yaml"
    p.write_bytes(content if isinstance(content, bytes) else content.encode())
    start = time.perf_counter()
    assert run("check", p) == 2
    assert time.perf_counter() - start < 5
    err = capsys.readouterr().err
    assert err == f"error: {p}: {message}\n"
    assert run("prompts", p) == 2
    assert capsys.readouterr().err == err
    assert not (tmp_path / "results").exists()


def test_aliases_within_the_budget_still_work(tmp_path):
    """The positive control of the alias budget: a profile that is an alias of another (a
    merge key and a plain alias) loads as that profile."""
    assert REPO_TEXT.rstrip().splitlines()[-1].startswith("    ")  # profiles: is the last key
    text = REPO_TEXT.replace("  smoke: ", "  smoke: &smoke ", 1)
    text += "  smoke_alias: *smoke\n  smoke_merged:\n    <<: *smoke\n    seed: 7\n"
    p = tmp_path / "params.yaml"
    p.write_text(text)
    smoke = config.load(p, "smoke")[0].model_dump(exclude={"profile"})
    assert config.load(p, "smoke_alias")[0].model_dump(exclude={"profile"}) == smoke
    merged = config.load(p, "smoke_merged")[0].model_dump(exclude={"profile"})
    assert merged == {**smoke, "seed": 7}
    assert main(["check", "--params", str(p)]) == 0


# --- environment variables ------------------------------------------------------------------

ENV_CASES = {
    "mlflow_switch": (
        "DIFFPREF_MLFLOW",
        "maybe",
        "DIFFPREF_MLFLOW='maybe': not a switch; use one of 1, true, yes, on (on) or 0, false, "
        "no, off (off)",
    ),
    "threads_text": (
        "DIFFPREF_THREADS",
        "two",
        "DIFFPREF_THREADS='two': not a whole number from 0 to 1,024",
    ),
    "threads_huge": (
        "DIFFPREF_THREADS",
        "99999",
        "DIFFPREF_THREADS='99999': not a whole number from 0 to 1,024",
    ),
    "rank_negative": ("RANK", "-1", "RANK='-1': not a whole number from 0 to 65,535"),
    "local_rank_text": (
        "LOCAL_RANK",
        "gpu0",
        "LOCAL_RANK='gpu0': not a whole number from 0 to 65,535",
    ),
    "world_size_zero": ("WORLD_SIZE", "0", "WORLD_SIZE='0': not a whole number from 1 to 65,536"),
    "pipeline_id_quote": (
        "DIFFPREF_PIPELINE_ID",
        "run' or '1'='1",
        "DIFFPREF_PIPELINE_ID=\"run' or '1'='1\": use letters, digits, '.', '_' and '-', "
        "starting with a letter or digit, at most 100 characters (it names the pipeline's "
        "MLflow run)",
    ),
    "pipeline_id_long": (
        "DIFFPREF_PIPELINE_ID",
        "r" * 101,
        f"DIFFPREF_PIPELINE_ID='{'r' * 101}': use letters, digits, '.', '_' and '-', "
        "starting with a letter or digit, at most 100 characters (it names the pipeline's "
        "MLflow run)",
    ),
}


@pytest.mark.parametrize("case", ENV_CASES)
def test_bad_environment_variables_exit_2_naming_the_variable(tmp_path, capsys, monkeypatch, case):
    name, value, message = ENV_CASES[case]
    monkeypatch.setenv(name, value)
    p = params(tmp_path)
    assert run("check", p) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert run("prompts", p, "--threads", "1") == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("word", ["false", "0", "no", "off", "OFF", " False "])
def test_diffpref_mlflow_false_means_off(tmp_path, monkeypatch, capsys, word):
    """Before, only DIFFPREF_MLFLOW=0 was off: `false` created the store and logged."""
    store = tmp_path / "mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store}")
    monkeypatch.setenv("DIFFPREF_MLFLOW", word)
    assert main(["tracking-init"]) == 0
    assert not store.exists() and capsys.readouterr().out == ""


@pytest.mark.parametrize(
    ("word", "on"), [("1", True), ("true", True), ("Yes", True), ("on", True), ("", True)]
)
def test_diffpref_mlflow_on_words(monkeypatch, word, on):
    from diffpref import env

    monkeypatch.setenv("DIFFPREF_MLFLOW", word)
    assert env.mlflow_enabled() is on


@pytest.mark.parametrize("threads", ["0", "-2", "99999", "two"])
def test_threads_outside_1_to_1024_is_a_usage_error(tmp_path, capsys, threads):
    p = params(tmp_path)
    with pytest.raises(SystemExit) as e:
        run("prompts", p, "--threads", threads)
    assert e.value.code == 2
    assert capsys.readouterr().err.endswith(
        f"diffpref prompts: error: argument --threads: {threads!r}: use a whole number from 1 "
        "to 1,024\n"
    )
    assert not (tmp_path / "results").exists()


def test_snakemake_reads_params_yaml_through_diffpref_reader(tmp_path):
    """The Snakefile has no `configfile:` (Snakemake's loader keeps the last of two keys and
    checks no size, depth or alias count): common.smk reads params.yaml with diffpref's reader
    before any rule exists, and validates the profile --config names. (That `--config
    profile=smoke` still plans the smoke DAG: tests/test_dag.py.)"""
    bomb, _ = _bomb(REPO_TEXT)
    cases = {  # name: (params text, extra arguments, environment, message)
        "bomb": (bomb, [], {}, "params.yaml: line "),
        "shell_profile": (
            REPO_TEXT,
            ["--config", "profile=$(touch pwned)smoke"],
            {},
            "params.yaml: profile: '$(touch pwned)smoke' is not a valid profile name: ",
        ),
    }
    keep = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_", "DIFFPREF_"))
    }
    runs = {}
    for name, (text, args, extra, _) in cases.items():
        root = tmp_path / name
        root.mkdir()
        (root / "params.yaml").write_text(text)
        (root / "src").symlink_to(REPO / "src")
        runs[name] = subprocess.Popen(
            ["snakemake", "-s", str(REPO / "Snakefile"), "-n", "-c1", *args],
            cwd=root,
            env={**keep, **extra},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    out = {name: p.communicate()[0] for name, p in runs.items()}
    for name, (*_, message) in cases.items():
        assert runs[name].returncode == 1 and message in out[name], out[name]
        assert "alias *a3 takes the file past" in out["bomb"]
        assert not (tmp_path / name / "pwned").exists()


# --- prompt files ---------------------------------------------------------------------------

GOOD = pd.DataFrame(
    {"prompt": [f"a photo of item {i}" for i in range(30)], "category": ["objects"] * 30}
)


def _csv(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


PROMPT_CASES = {
    # name: (file name, content or None for no file, params.prompts overrides, message)
    "missing": ("nope.txt", None, {}, "prompts.file: {path}: no such file"),
    "unsupported_format": ("p.xlsx", b"x", {}, "prompts.file: {path}: unsupported format"),
    "empty": ("p.txt", b"\n  \n\n", {}, "{path}: no prompts in the file"),
    "wrong_column": (
        "p.csv",
        _csv(GOOD.rename(columns={"prompt": "text"})),
        {},
        "{path}: no column 'prompt' (prompts.column); has ['text', 'category']",
    ),
    "empty_prompt": (
        "p.jsonl",
        b'{"prompt": "a cat"}\n\n{"prompt": ""}\n',
        {},
        "{path}: line 3: empty prompt (column 'prompt')",
    ),
    "whitespace_prompt": (
        "p.csv",
        b'prompt\na cat\n"   "\na dog\n',
        {},
        "{path}: row 1: empty prompt (column 'prompt')",
    ),
    "in_both_splits": (
        "p.csv",
        b"prompt,split\na cat,train\na dog,eval\na cat,test\n",
        {},
        "{path}: rows [0, 2]: prompt 'a cat' is in two splits (eval and train)",
    ),
    "in_validation_and_test": (
        "p.csv",
        b"prompt,split\na cat,train\na dog,eval\na bird,val\na dog,validation\n",
        {},
        "{path}: rows [1, 3]: prompt 'a dog' is in two splits (eval and val); an eval prompt "
        "must be neither trained on nor tuned on",
    ),
    "not_utf8": (
        "p.txt",
        b"a cat\na dog\ncaf\xe9 au lait\n",
        {},
        "{path}: line 3: not UTF-8 (byte 0xe9); save the file as UTF-8",
    ),
    "long_prompt": (
        "p.txt",
        b"a cat\n" + b"x" * 100_000 + b"\n",
        {},
        "{path}: line 2: prompt of 100,000 characters; the limit is 2,000",
    ),
    "category_nan": (
        "p.csv",
        b"prompt,category\na cat,animals\na car,\n",
        {},
        "{path}: row 1: no category (column 'category')",
    ),
    "broken_csv": ("p.csv", b'prompt\n"a cat\na dog\n', {}, "{path}: not a readable csv file"),
    "not_json": ("p.jsonl", b'{"prompt": "a cat"}\n{prompt: x}\n', {}, "{path}: line 2: not"),
}


@pytest.fixture
def prompts_done(tmp_path) -> Path:
    """A finished prompts stage on a good file: bad files must leave its output as it is."""
    good = tmp_path / "good.csv"
    good.write_bytes(_csv(GOOD))
    p = params(tmp_path, {"prompts": {"source": "file", "file": str(good), "eval_fraction": 0.3}})
    assert run("prompts", p, "--threads", "1") == 0
    return tmp_path / "results"


@pytest.mark.parametrize("case", PROMPT_CASES)
def test_bad_prompt_files_exit_2_naming_file_and_line(tmp_path, capsys, prompts_done, case):
    name, content, over, message = PROMPT_CASES[case]
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    before = snapshot(prompts_done)
    p = params(tmp_path, {"prompts": {"source": "file", "file": str(path), **over}})
    capsys.readouterr()
    assert run("check", p) == 2
    assert run("prompts", p, "--threads", "1") == 2
    err = capsys.readouterr().err
    assert err.count("error: " + message.format(path=path)) == 2, err
    assert snapshot(prompts_done) == before
    assert sorted(f.name for f in prompts_done.iterdir()) == ["prompts"]  # no temp folders


def test_repeated_prompts_are_dropped_with_a_warning(tmp_path, caplog):
    path = tmp_path / "p.txt"
    path.write_text("\n".join(["a cat", "a dog", "a cat", *GOOD.prompt]) + "\n")
    p = params(tmp_path, {"prompts": {"source": "file", "file": str(path), "eval_fraction": 0.3}})
    with caplog.at_level(logging.WARNING):
        assert run("prompts", p, "--threads", "1") == 0
    assert f"{path}: line 3: repeated prompts dropped" in caplog.text
    out = pd.concat(map(pd.read_parquet, (tmp_path / "results" / "prompts").glob("*.parquet")))
    assert out.prompt.is_unique and len(out) == 32


def test_a_prompt_file_outside_data_prompts_is_read_with_a_warning(tmp_path, caplog, monkeypatch):
    """dvc.yaml reruns `prompts` when data/prompts/ changes: a file elsewhere works, but the
    user is told that DVC will not see its edits."""
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "prompts"
    folder.mkdir(parents=True)
    for path, warned in ((folder / "p.txt", False), (tmp_path / "p.txt", True)):
        path.write_text("\n".join(GOOD.prompt) + "\n")
        over = {"source": "file", "file": str(path), "eval_fraction": 0.3}
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            assert run("check", params(tmp_path, {"prompts": over})) == 0
        said = f"{path} is outside data/prompts/: `dvc repro` will not rerun prompts when it"
        assert (said in caplog.text) == warned, caplog.text


# --- Pick-a-Pic shards ----------------------------------------------------------------------


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (12, 10), (seed * 40 % 256, 80, 120)).save(buf, format="PNG")
    return buf.getvalue()


def shard(path: Path, rows: list[tuple], columns=ds.PICKAPIC_COLUMNS) -> Path:
    pd.DataFrame(rows, columns=columns).to_parquet(path)
    return path


SHARD_CASES = {
    "missing": (None, "candidates.preference_file: {path}: no such file"),
    "not_parquet": (b"caption,jpg_0\n", "{path}: not a readable parquet file"),
    "missing_columns": (
        [("a cat", png(0), png(1))],
        "{path}: missing columns ['label_0'] (has ['caption', 'jpg_0', 'jpg_1']",
    ),
    "image_not_bytes": (
        [("a cat", "0.jpg", png(1), 1.0)],
        "{path}: column 'jpg_0' holds ",
    ),
    "label_out_of_set": (
        [("a cat", png(0), png(1), 1.0), ("a dog", png(0), png(1), 2.0)],
        "{path}: row 1: label_0 must be 0, 0.5 or 1, got [2.0]",
    ),
    "label_nan": (
        [("a cat", png(0), png(1), None), ("a dog", png(0), png(1), 0.0)],
        "{path}: row 0: label_0 must be 0, 0.5 or 1, got [nan]",
    ),
    "empty_caption": ([(" ", png(0), png(1), 1.0)], "{path}: row 0: column 'caption' is empty"),
}


@pytest.mark.parametrize("case", SHARD_CASES)
def test_bad_pickapic_shards_exit_2_before_a_model_is_loaded(tmp_path, capsys, case):
    rows, message = SHARD_CASES[case]
    path = tmp_path / "shard.parquet"
    if isinstance(rows, bytes):
        path.write_bytes(rows)
    elif rows is not None:
        cols = ds.PICKAPIC_COLUMNS[: len(rows[0])]
        shard(path, rows, cols)
    p = params(
        tmp_path,
        {"candidates": {"source": "pickapic", "preference_file": str(path)}},
    )
    # no world and no prompts exist: the candidates stage stops at the shard, before both
    assert run("check", p) == 2
    assert run("candidates", p, "--threads", "1") == 2
    err = capsys.readouterr().err
    assert err.count("error: " + message.format(path=path)) == 2, err
    assert not (tmp_path / "results" / "candidates").exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            [("a cat", png(0), b"\xff\xd8 not a jpeg", 1.0)],
            "row 0 column 'jpg_1' is not a readable",
        ),
        (
            [("a cat", png(0), png(1), 1.0), ("a dog", png(0), None, 0.0)],
            "row 1 column 'jpg_1' holds no image",
        ),
        ([("a cat", png(0), png(1), 0.5)], "no usable pairs (1 ties, 0 eval prompts)"),
    ],
)
def test_shard_images_and_all_ties_fail_the_import_naming_row_and_column(tmp_path, rows, message):
    """Images are decoded by the candidates stage's import, before any is encoded."""
    path = shard(tmp_path / "shard.parquet", rows)
    with pytest.raises(InputError) as e:
        ds.read_pickapic(path, size=8)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


# --- labels ---------------------------------------------------------------------------------


def rewards(folder: Path, scores: dict[str, list[float]]) -> None:
    rows = [(p, i, "fidelity", s) for p, ss in scores.items() for i, s in enumerate(ss)]
    folder.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows, columns=["prompt_id", "cand_idx", "reward", "score"])
    df.to_parquet(folder / "rewards.parquet")


def test_every_candidate_tied_stops_at_the_labels_stage(tmp_path, capsys):
    p = params(tmp_path)
    results = tmp_path / "results"
    rewards(results / "rewards", {"p1": [0.9, 0.1, 0.5], "p2": [0.2, 0.8, 0.5]})
    assert run("labels", p, "--threads", "1") == 0
    before = snapshot(results / "labels")
    rewards(results / "rewards", {"p1": [0.5, 0.52, 0.5], "p2": [0.3, 0.3, 0.3]})
    assert run("labels", p, "--threads", "1") == 2
    err = capsys.readouterr().err
    assert "error: labels: every candidate is tied: no pair differs by more than " in err
    assert "labels.tie_threshold=0.05 on reward 'fidelity'" in err
    assert snapshot(results / "labels") == before


def test_a_prompt_with_a_single_candidate_is_left_out_of_every_label_file(tmp_path, caplog):
    p = params(tmp_path)
    results = tmp_path / "results"
    rewards(results / "rewards", {"p1": [0.9, 0.1, 0.5], "solo": [0.7]})
    with caplog.at_level(logging.WARNING):
        assert run("labels", p, "--threads", "1") == 0
    assert "1 prompts with a single 'fidelity' score left out" in caplog.text
    for f in (results / "labels").glob("*.parquet"):
        assert set(pd.read_parquet(f).prompt_id) == {"p1"}, f.name


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_reward_stops_the_labels_stage_naming_prompt_and_candidate(
    tmp_path, capsys, bad
):
    """One -inf made every smoothed (SmPO) label NaN (its min-max bounds), a NaN one an
    "undesirable" pointwise image: refused, the previous labels kept."""
    p = params(tmp_path)
    results = tmp_path / "results"
    rewards(results / "rewards", {"p1": [0.9, 0.1, 0.5], "p2": [0.2, 0.8, 0.5]})
    assert run("labels", p, "--threads", "1") == 0
    before = snapshot(results / "labels")
    rewards(results / "rewards", {"p1": [0.9, 0.1, 0.5], "p2": [0.2, bad, 0.5]})
    assert run("labels", p, "--threads", "1") == 2
    assert capsys.readouterr().err == (
        f"error: {results / 'rewards' / 'rewards.parquet'}: prompt 'p2' candidate 1: reward "
        f"'fidelity' scored {bad}, not a finite number (1 such scores); fix the reward model "
        "(float16 overflows to inf: rewards.dtype: float32) and rerun the rewards stage\n"
    )
    assert snapshot(results / "labels") == before


def test_unknown_label_reward_exits_2(tmp_path, capsys):
    """A reward the params list (so `check` passes) that the rewards file lacks."""
    p = params(tmp_path, {"labels": {"reward": "pickscore"}, "rewards": {"models": ["pickscore"]}})
    rewards(tmp_path / "results" / "rewards", {"p1": [0.9, 0.1]})
    assert run("labels", p, "--threads", "1") == 2
    assert "labels.reward: no scores for reward 'pickscore' (have ['fidelity'])" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "results" / "labels").exists()


# --- model files: only tensors are unpickled -------------------------------------------------


class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def payload_file(tmp_path: Path, name: str) -> tuple[Path, Path]:
    marker = tmp_path / "payload-ran"
    path = tmp_path / name
    torch.save({"layers.0.weight": Payload(marker)}, path)
    return path, marker


def test_a_reward_head_carrying_code_is_refused_and_the_code_never_runs(tmp_path):
    path, marker = payload_file(tmp_path, "head.pth")
    with pytest.raises(InputError) as e:
        aesthetic.load_head(path)
    assert str(e.value).startswith(f"rewards.sources.aesthetic.head: {path}: refused: ")
    assert "exec); convert it to .safetensors" in str(e.value)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: a plain load runs it
    assert marker.read_text() == "ran"


def test_hpsv2_checkpoint_is_tensors_only_unless_trusted(tmp_path):
    path, marker = payload_file(tmp_path, "hps.pt")
    with pytest.raises(InputError, match=r"set rewards\.sources\.hpsv2\.trust_pickle: true"):
        hpsv2.load_checkpoint(path)
    assert not marker.exists()
    # a training state with a non-tensor object: refused by default, loaded when trusted
    state = {"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1)}
    torch.save(state, tmp_path / "state.pt")
    with pytest.raises(InputError, match=r"GLOBAL argparse\.Namespace"):
        hpsv2.load_checkpoint(tmp_path / "state.pt")
    assert hpsv2.load_checkpoint(tmp_path / "state.pt", trust_pickle=True)["args"].lr == 1
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "plain.pt")
    assert torch.equal(
        hpsv2.load_checkpoint(tmp_path / "plain.pt")["state_dict"]["w"], state["state_dict"]["w"]
    )


def test_training_checkpoint_state_loads_weights_only(tmp_path):
    """The custom state an accelerate checkpoint holds (LoRA, moving reference, Rethinking
    schedule, generator, history) loads with ``weights_only``; the same file with code in it
    is refused. accelerate itself unpickles this file in full (see docs/reliability.md)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    schedule = ReferenceSchedule(2, 0.5)
    schedule.history.append((2, 0.1))
    state = {
        "method": {"lora": {"a": torch.ones(2)}, "ref": [torch.zeros(2)], "schedule": schedule},
        "gen": torch.Generator().manual_seed(0).get_state(),
        "step": 3,
        "history": [{"loss": 1.0, "step": 2}],
    }

    class Loop:
        def state_dict(self) -> dict:
            return state

        def load_state_dict(self, s: dict) -> None: ...

    AcceleratorState._reset_state(reset_partial_state=True)  # as training does
    acc = Accelerator(cpu=True)
    acc.register_for_checkpointing(Loop())
    acc.save_state(str(tmp_path / "state"))
    custom = tmp_path / "state" / "custom_checkpoint_0.pkl"
    got = load_weights(custom, "checkpoint", allow=[ReferenceSchedule])
    assert got["method"]["schedule"].history == [(2, 0.1)] and got["step"] == 3
    marker = tmp_path / "payload-ran"
    torch.save({"method": Payload(marker)}, custom)
    with pytest.raises(InputError, match="refused"):
        load_weights(custom, "checkpoint", allow=[ReferenceSchedule])
    assert not marker.exists()


# --- the workflow's objective wildcard --------------------------------------------------------


def test_snakemake_objective_wildcard_refuses_unsafe_and_reserved_names(tmp_path):
    """For a target asked of Snakemake directly: no rule makes
    ``results/adapters/<name>/seed0/round1`` unless ``<name>`` is a configured objective (whose
    name the schema validated)."""
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    (tmp_path / "src").symlink_to(REPO / "src")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    dry_run = ["snakemake", "-s", str(REPO / "Snakefile"), "-n", "-c1"]
    runs = {
        name: subprocess.Popen(
            [*dry_run, f"results/adapters/{name}/seed0/round1"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name in ("dpo", "baseline", "base", "a.b")
    }
    out = {name: p.communicate()[0] for name, p in runs.items()}
    assert runs["dpo"].returncode == 0 and "rule train:" in out["dpo"], out["dpo"]
    for name in ("baseline", "base", "a.b"):
        assert f"No rule to produce results/adapters/{name}/seed0/round1" in out[name], out[name]


def test_resume_refuses_a_checkpoint_carrying_code(tmp_path):
    """``training.resume`` checks accelerate's custom state before accelerate unpickles it: a
    checkpoint with a payload stops training with the refusal, and the payload never runs."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from diffpref.training.checkpoint import HASH_FILE, STATE_DIR, resume

    AcceleratorState._reset_state(reset_partial_state=True)
    acc = Accelerator(cpu=True)
    state = tmp_path / "ckpt" / STATE_DIR
    state.mkdir(parents=True)
    marker = tmp_path / "payload-ran"
    torch.save({"method": Payload(marker)}, state / "custom_checkpoint_0.pkl")
    (state / HASH_FILE).write_text("h")
    with pytest.raises(InputError, match="refused"):
        resume(acc, tmp_path / "ckpt", "h")
    assert not marker.exists()


ONLINE = {"online": {"objectives": ["dpo"], "rounds": [{"round": 2, "after": 1}]}}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "--objective", "dpo", "--seed", "0", "--round", "3"],
            "online.rounds: round 3 is not one of its rounds [2]",
        ),
        (
            ["train", "--objective", "mapo", "--seed", "0", "--round", "2"],
            "online.objectives: 'mapo' takes no online rounds (online objectives: dpo)",
        ),
        (
            ["evaluate", "--objective", "dpo", "--seed", "0", "--matched"],
            "--matched needs --round N (the control of round N, N one of online.rounds)",
        ),
        (
            ["candidates", "--objective", "dpo", "--seed", "0"],
            "candidates: --objective applies to a later online round only (--round N)",
        ),
        (["labels", "--round", "2"], "--objective (or --job) is required"),
        (
            ["train", "--job", "train_round@dpo-0-round1"],
            "--job: no job 'train_round@dpo-0-round1' in this DAG (jobs: ",
        ),
    ],
)
def test_a_round_job_outside_the_configured_rounds_exits_2(tmp_path, capsys, args, message):
    p = params(tmp_path, ONLINE)
    assert run(args[0], p, *args[1:]) == 2
    assert capsys.readouterr().err.startswith(f"error: {p}: {message}")
    assert not (tmp_path / "results").exists()


def test_under_dvc_a_profile_may_not_change_the_online_lists_dvc_expands(
    tmp_path, capsys, monkeypatch
):
    p = params(tmp_path, {"profiles": {"smoke": {"train_seeds": [0, 1, 2]}}})
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert run("check", p, "--profile", "smoke") == 2
    assert capsys.readouterr().err == (
        f'error: {p}: profile smoke sets online.objectives ["dpo"], online.rounds '
        '[{"round": 2, "after": 1}] but DVC expands the top-level [], []; run `dvc exp run '
        "-S profile=smoke -S 'online.objectives=[\"dpo\"]' "
        '-S \'online.rounds=[{"round": 2, "after": 1}]\'`, or `diffpref dvc-params smoke` to '
        "write the profile's values at the top level\n"
    )


def test_a_profile_leaves_objectives_out_but_not_under_dvc(tmp_path, capsys, monkeypatch):
    """A null over a mapping removes it: the rounds profile trains three objectives. DVC
    expands the file's own objectives (`-S` cannot remove one), so under DVC it is refused."""
    p = params(tmp_path, {"profiles": {"few": {"objectives": {"kto": None, "sft": None}}}})
    cfg, _ = config.load(p, "few")
    assert "kto" not in cfg.objectives and "sft" not in cfg.objectives and "dpo" in cfg.objectives
    assert config.load(p)[0].objectives.keys() >= {"kto", "sft"}
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert run("check", p, "--profile", "few") == 2
    assert capsys.readouterr().err == (
        f"error: {p}: profile few leaves out objectives kto, sft, but DVC expands every "
        "objective of the file's top-level objectives: (it cannot see profiles, and `dvc exp "
        "run -S` cannot remove an entry): run `diffpref dvc-params few` to write the profile's "
        "values there, or run it with Snakemake\n"
    )


def test_dvc_params_writes_a_profile_at_the_top_level_and_dvc_then_runs_it(
    tmp_path, capsys, monkeypatch
):
    """What the refusals above point to: the file then expands, under DVC, what the profile
    runs; its comments and profiles stay."""
    p = params(tmp_path, {"profiles": {"few": {"objectives": {"kto": None}, "train_seeds": [5]}}})
    p.write_text("# a comment kept\n" + p.read_text())
    want = config.load(p, "few")[0]
    assert run("dvc-params", p, "few") == 0
    cfg, _ = config.load(p)
    assert cfg.profile == "default" and "kto" not in cfg.objectives and cfg.train_seeds == [5]
    assert cfg.model_dump(exclude={"profile"}) == want.model_dump(exclude={"profile"})
    assert p.read_text().startswith("# a comment kept\n")
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    capsys.readouterr()
    assert run("check", p) == 0, capsys.readouterr().err
    assert run("dvc-params", p, "nosuch") == 2
    assert "profile" in capsys.readouterr().err and not list(tmp_path.glob(".*.tmp"))
