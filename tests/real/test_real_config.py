"""The real-model params: profiles validate, new fields default to the embedded world, and
incomplete real-model settings fail at `diffpref check` with the key named."""

from __future__ import annotations

import pytest
import yaml
from tests.conftest import REPO

from diffpref import config
from diffpref.cli import main


@pytest.mark.parametrize("profile", ["sd15", "sdxl", "sd15-bench"])
def test_real_model_profiles_pass_check(profile, capsys, tmp_path, monkeypatch):
    # check reads the prompt file the profiles name (PartiPrompts, downloaded by the user)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data" / "prompts").mkdir(parents=True)
    (tmp_path / "data" / "prompts" / "PartiPrompts.tsv").write_text(
        "Prompt\tCategory\n" + "".join(f"a red cube number {i}\tArtifacts\n" for i in range(20))
    )
    assert main(["check", "--params", str(REPO / "params.yaml"), "--profile", profile]) == 0
    cfg, _ = config.load(REPO / "params.yaml", profile)
    assert cfg.backbone.kind in ("sd15", "sdxl") and cfg.backbone.pretrained


def test_new_fields_default_to_the_embedded_world():
    cfg, _ = config.load(REPO / "params.yaml")
    assert cfg.backbone.kind == "embedded" and cfg.backbone.vae is None
    assert cfg.prompts.source == "world" and cfg.candidates.source == "generate"
    assert cfg.rewards.sources == {} and cfg.rewards.dtype == "float32"
    assert not cfg.train.gradient_checkpointing and cfg.train.optimizer == "adamw"
    assert not cfg.evaluate.export_geneval


@pytest.mark.parametrize(
    ("over", "needle"),
    [
        ({"backbone": {"kind": "sd15"}}, "backbone.pretrained"),
        ({"prompts": {"source": "file"}}, "prompts.file"),
        ({"candidates": {"source": "pickapic"}}, "candidates.preference_file"),
        ({"train": {"optimizer": "lion"}}, "train.optimizer"),
        ({"rewards": {"sources": {"pickscore": {"modle": "x"}}}}, "modle"),
    ],
)
def test_incomplete_real_model_params_name_the_key(tmp_path, over, needle):
    p = tmp_path / "params.yaml"
    raw = config.deep_merge(yaml.safe_load((REPO / "params.yaml").read_text()), over)
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    assert str(p) in str(e.value) and needle in str(e.value)
