"""Validation prompts apart from test prompts: every tuning choice is made on the validation
split, drawn like the test split and disjoint from it and from training; an evaluation for
tuning (``evaluate.split: validation``) never reads a test prompt."""

from __future__ import annotations

import pandas as pd
import pytest
from tests.test_bad_inputs import params, run

from diffpref import datasources as ds
from diffpref.world.prompts import generate_prompts


def test_world_validation_prompts_are_disjoint_and_drawn_like_the_test_prompts():
    df = generate_prompts(256, 128, seed=0, n_val=128)
    assert df.split.value_counts().to_dict() == {"train": 256, "eval": 128, "val": 128}
    assert df.prompt.is_unique and df.prompt_id.is_unique
    val, test = df[df.split == "val"], df[df.split == "eval"]
    # the same generator as the test split: held-out wording and combinations, about half each
    for flag in ("heldout_template", "heldout_combo"):
        assert 0.3 < val[flag].mean() < 0.7 and 0.3 < test[flag].mean() < 0.7
    assert not df[df.split == "train"][["heldout_template", "heldout_combo"]].any().any()
    # validation comes last: adding it leaves a seed's train and test prompts as they were
    without = generate_prompts(256, 128, seed=0)
    pd.testing.assert_frame_equal(without, df[df.split != "val"].reset_index(drop=True))


def test_a_file_hash_split_takes_validation_from_training_only():
    prompts = pd.Series([f"prompt {i}" for i in range(2000)])
    two = ds.hash_split(prompts, 0.2)
    three = ds.hash_split(prompts, 0.2, 0.1)
    assert (three[two == "eval"] == "eval").all() and (two[three == "eval"] == "eval").all()
    assert set(two[three == "val"]) == {"train"}
    assert three.value_counts(normalize=True)["val"] == pytest.approx(0.1, abs=0.02)


def test_a_file_split_column_names_validation(tmp_path):
    path = tmp_path / "p.csv"
    rows = [("a", "train"), ("b", "test"), ("c", "validation"), ("d", "dev"), ("e", "train")]
    pd.DataFrame(rows, columns=["prompt", "split"]).to_csv(path, index=False)
    out = ds.read_prompt_file(path, n_val=1)
    assert list(zip(out.prompt, out.split, strict=True)) == [
        ("a", "train"),
        ("b", "eval"),
        ("c", "val"),
        ("e", "train"),
    ]


def test_tuning_evaluates_only_validation_prompts(tmp_path):
    """The base model's evaluation under ``evaluate.split: validation``, through the CLI: every
    scored prompt is a validation prompt, none a test or training one."""
    p = params(tmp_path, {"profile": "smoke", "evaluate": {"split": "validation"}})
    for stage in ("world", "prompts"):
        assert run(stage, p, "--threads", "1") == 0
    assert run("evaluate", p, "--objective", "base", "--threads", "1") == 0
    res = tmp_path / "results"
    split = {
        s: set(pd.read_parquet(res / "prompts" / f"{s}.parquet").prompt_id)
        for s in ("train", "eval", "val")
    }
    scored = set(pd.read_parquet(res / "eval" / "base" / "scores.parquet").prompt_id)
    assert len(split["val"]) == 8 and scored == split["val"]
    assert not scored & (split["eval"] | split["train"])
