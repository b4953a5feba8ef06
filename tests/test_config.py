"""params.yaml validation: one clear error naming file and key, exit code 2, nothing computed."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from tests.conftest import REPO

from diffpref import config
from diffpref.cli import main


def write(tmp_path, mutate):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    mutate(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def test_repo_params_validate_in_every_profile():
    for profile in ["default", *yaml.safe_load((REPO / "params.yaml").read_text())["profiles"]]:
        cfg, _ = config.load(REPO / "params.yaml", profile)
        assert cfg.profile == profile
        assert "dpo" in cfg.objectives


def test_profile_is_deep_merged_over_base():
    cfg, _ = config.load(REPO / "params.yaml", "smoke")
    base, _ = config.load(REPO / "params.yaml", "default")
    assert cfg.prompts.n_train < base.prompts.n_train
    assert cfg.prompts.source == base.prompts.source  # untouched keys survive the merge


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda r: r["train"].update(lr="fast"), "train.lr"),
        (lambda r: r["train"].update(learning_rate=1e-3), "train.learning_rate"),
        (lambda r: r["objectives"]["dpo"].update(beta="big"), "objectives.dpo.beta"),
        (lambda r: r["objectives"]["dpo"].update(betta=1.0), "objectives.dpo.betta"),
        (lambda r: r["objectives"].update(x={"loss": "nope"}), "objectives.x"),
        (lambda r: r.update(profile="huge"), "profile"),
        (lambda r: r["candidates"].update(k=1), "candidates.k"),
    ],
)
def test_bad_params_name_file_and_key(tmp_path, mutate, needle):
    p = write(tmp_path, mutate)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value)
    assert needle in str(e.value)


def test_cli_exits_2_before_any_work(tmp_path, capsys):
    p = write(tmp_path, lambda r: r["train"].update(steps=-3))
    results = tmp_path / "results"
    assert main(["train", "--params", str(p), "--objective", "dpo"]) == 2
    assert "train.steps" in capsys.readouterr().err
    assert not results.exists()


def test_cli_unknown_objective_is_a_params_error(tmp_path, capsys):
    p = write(tmp_path, lambda r: None)
    assert main(["train", "--params", str(p), "--objective", "nope"]) == 2
    assert "objectives.nope" in capsys.readouterr().err


def test_console_script_check_reports_ok():
    out = subprocess.run(
        [sys.executable, "-m", "diffpref.cli", "check", "--params", str(REPO / "params.yaml")],
        capture_output=True, text=True, check=True,
    )
    assert "ok" in out.stdout


def test_params_hash_changes_only_for_stages_that_read_the_key():
    raw = config.read_raw(REPO / "params.yaml")
    before = {s: config.params_hash(raw, s, "dpo") for s in config.STAGE_KEYS}
    raw["objectives"]["dpo"]["beta"] = 1234
    after = {s: config.params_hash(raw, s, "dpo") for s in config.STAGE_KEYS}
    assert [s for s in before if before[s] != after[s]] == ["train"]
