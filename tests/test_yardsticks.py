"""The base's yardsticks (best-of-K, VAE ceiling, real canvases) on the packaged world, and the
report's gap closed toward them, on hand-computed and synthetic cases."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from tests.conftest import REPO
from tests.test_comparison import synthetic

from diffpref import comparison, config, yardsticks
from diffpref.backbones.embedded import EmbeddedBackbone
from diffpref.config import dag
from diffpref.generation import generate
from diffpref.rewards import score_table
from diffpref.stages.report import _yardstick_section
from diffpref.world.build import PACKAGED_DIR, install_packaged_world, load_rewards
from diffpref.world.data import DEFAULT_FASHION_MNIST_DIR
from diffpref.world.prompts import generate_prompts

HAVE_WORLD = (PACKAGED_DIR / "base" / "unet" / "config.json").is_file() and (
    DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz"
).is_file()
SEEDS = [0, 1]


def test_best_of_k_seeds_start_with_the_eval_seed_and_never_collide():
    assert yardsticks.best_of_k_seeds(7, 4)[0] == 7
    every = [s for e in SEEDS for s in yardsticks.best_of_k_seeds(e, 4)]
    assert len(set(every)) == len(every) == 8


def test_pick_best_keeps_every_reward_of_the_label_rewards_best_candidate():
    rows = [
        # (prompt, seed, cand, reward, score): p0/0 best is cand 2; p0/1 ties, goes to cand 0
        ("p0", 0, 0, "fidelity", 0.2),
        ("p0", 0, 1, "fidelity", 0.5),
        ("p0", 0, 2, "fidelity", 0.9),
        ("p0", 0, 0, "quality", 0.7),
        ("p0", 0, 1, "quality", 0.6),
        ("p0", 0, 2, "quality", 0.1),
        ("p0", 1, 0, "fidelity", 0.4),
        ("p0", 1, 1, "fidelity", 0.4),
        ("p0", 1, 0, "quality", 0.3),
        ("p0", 1, 1, "quality", 0.8),
    ]
    df = pd.DataFrame(rows, columns=["prompt_id", "seed", "cand", "reward", "score"])
    best = yardsticks.pick_best(df, "fidelity").set_index(["seed", "reward"]).score
    assert best.to_dict() == {
        (0, "fidelity"): 0.9,
        (0, "quality"): 0.1,
        (1, "fidelity"): 0.4,
        (1, "quality"): 0.3,
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The packaged world's backbone and rewards, 4 eval prompts (one per multi-object and
    single category) with the base's scores, and a config with what the yardsticks read."""
    if not HAVE_WORLD:
        pytest.skip("no packaged world or Fashion-MNIST")
    torch.set_num_threads(1)
    out = install_packaged_world(tmp_path_factory.mktemp("world"))
    backbone = EmbeddedBackbone(out, torch.device("cpu"))
    fidelity, quality, judge = load_rewards(out)
    models = {"fidelity": fidelity, "quality": quality, "judge": judge}
    prompts = generate_prompts(0, 5, seed=0).head(4).reset_index(drop=True)
    cfg = SimpleNamespace(
        evaluate=SimpleNamespace(seeds=SEEDS, batch_size=64),
        sampling=SimpleNamespace(scheduler="dpmsolver", steps=4, guidance=4.0),
        labels=SimpleNamespace(reward="fidelity"),
        candidates=SimpleNamespace(k=3),
        world=SimpleNamespace(fashion_mnist_dir=DEFAULT_FASHION_MNIST_DIR, item_size=14, jitter=1),
    )
    images, _, _ = generate(backbone, list(prompts.prompt), [SEEDS] * 4, cfg.sampling, 64, "base")
    keys = pd.DataFrame(
        {"prompt_id": np.repeat(prompts.prompt_id, len(SEEDS)), "seed": SEEDS * len(prompts)}
    )
    text = list(np.repeat(prompts.prompt, len(SEEDS)))
    base = score_table(models, images.numpy(), text, keys, 64, torch.device("cpu"))
    return SimpleNamespace(cfg=cfg, backbone=backbone, models=models, prompts=prompts, base=base)


def _compute(w, cfg=None) -> tuple[pd.DataFrame, dict]:
    return yardsticks.compute(
        cfg or w.cfg, w.backbone, w.prompts, w.base, w.models, torch.device("cpu")
    )


def test_yardsticks_are_scored_on_every_prompt_and_seed_and_deterministic(world):
    table, info = _compute(world)
    assert info == {"k": 3, "label_reward": "fidelity", "skipped": {}}
    assert list(table.columns) == yardsticks.COLUMNS
    for name in yardsticks.YARDSTICKS:
        got = table[table.yardstick == name]
        assert len(got) == 4 * len(SEEDS) * len(world.models), name  # prompts x seeds x rewards
        assert set(got.prompt_id) == set(world.prompts.prompt_id)
    again, _ = _compute(world)
    pd.testing.assert_frame_equal(table, again)
    real, vae = (table[table.yardstick == n].score.to_numpy() for n in ("real", "vae_ceiling"))
    assert not np.allclose(real, vae)  # the VAE changes the canvases


def test_best_of_k_is_at_least_the_base_on_the_label_reward(world):
    table, _ = _compute(world)
    key = ["prompt_id", "seed"]
    best = table[(table.yardstick == "best_of_k") & (table.reward == "fidelity")]
    m = best.merge(world.base[world.base.reward == "fidelity"], on=key, suffixes=("", "_base"))
    assert len(m) == 4 * len(SEEDS)
    assert (m.score >= m.score_base).all()
    # K = 1: the set is the base's own sample alone, so the yardstick is the base
    one = SimpleNamespace(**{**vars(world.cfg), "candidates": SimpleNamespace(k=1)})
    table1, _ = _compute(world, one)
    got = table1[table1.yardstick == "best_of_k"].sort_values([*key, "reward"])
    want = world.base.sort_values([*key, "reward"])
    np.testing.assert_array_equal(got.score.to_numpy(), want.score.to_numpy())


def test_without_specs_only_best_of_k_is_computed_and_the_rest_say_why(world):
    w = SimpleNamespace(**{**vars(world), "prompts": world.prompts.drop(columns="spec")})
    table, info = _compute(w)
    assert set(table.yardstick) == {"best_of_k"}
    assert info["skipped"] == {"vae_ceiling": yardsticks.NO_SPECS, "real": yardsticks.NO_SPECS}


def test_gap_closed_hand_computed():
    base = np.full((1, 20), 0.5)
    g = comparison.gap_closed(np.full((3, 20), 0.7), base, np.full((1, 20), 0.9), 2000)
    assert g["gap_closed"] == pytest.approx(0.5)
    assert (g["ci_low"], g["ci_high"]) == pytest.approx((0.5, 0.5))  # no spread anywhere
    # reach (0.4 + 0.2) / 2 = 0.3 over prompts, gain 0.1: a third; worse than the base: negative
    yard = np.tile([0.9, 0.7], 10)[None]
    g = comparison.gap_closed(np.full((1, 20), 0.6), base, yard, 2000)
    assert g["gap_closed"] == pytest.approx(1 / 3) and g["defined"]
    assert g["ci_low"] < 1 / 3 < g["ci_high"] and g["ci_high"] - g["ci_low"] < 0.2
    g = comparison.gap_closed(np.full((1, 20), 0.4), base, yard, 2000)
    assert g["gap_closed"] == pytest.approx(-1 / 3) and g["ci_high"] < 0
    # two prompts that disagree: the yardstick is not shown above the base, no interval
    g = comparison.gap_closed(np.array([[0.6, 0.6]]), base[:, :2], np.array([[0.9, 0.7]]), 2000)
    assert not g["defined"] and g["reach_ci_low"] < 0 < g["reach_ci_high"]
    assert np.isnan(g["ci_low"]) and np.isnan(g["ci_high"])


def _with_yardsticks() -> comparison.Results:
    """The synthetic run (dpo: +0.2 fidelity on the training-wording half only) with best-of-K
    at base + 0.4 everywhere and a VAE ceiling at base + 0.2."""
    res = synthetic()
    base = res.scores["base"]
    frames = [
        base.assign(yardstick=name, score=base.score + lift)
        for name, lift in (("best_of_k", 0.4), ("vae_ceiling", 0.2), ("real", 0.3))
    ]
    res.yardsticks = pd.concat(frames, ignore_index=True)[yardsticks.COLUMNS]
    res.prompts["heldout_template"] = res.prompts.heldout_template.astype(bool)
    res.eval_metrics["base"] = [
        {**res.eval_metrics["base"][0], "yardsticks": {"k": 4, "label_reward": "fidelity"}}
    ]
    res.eval_metrics["base"][0]["yardsticks"]["skipped"] = {}
    return res


def test_gap_table_per_split_training_wording_first():
    assert list(comparison.YARDSTICK_NAMES) == list(yardsticks.YARDSTICKS)  # the file's names
    cmp = comparison.Comparison(_with_yardsticks(), "fidelity", 2000, tie=0.0)
    gaps = comparison.gap_table(cmp)
    assert list(dict.fromkeys(gaps.split)) == ["seen", "heldout_wording", "all"]
    assert list(dict.fromkeys(gaps.scope)) == ["headline", "transfer", "all prompts"]
    g = gaps.set_index(["model", "split", "yardstick"]).gap_closed
    assert g["dpo", "seen", "base best-of-K"] == pytest.approx(0.5)  # 0.2 of 0.4
    assert g["dpo", "seen", "VAE ceiling"] == pytest.approx(1.0)
    assert g["dpo", "heldout_wording", "VAE ceiling"] == pytest.approx(0.0)
    assert g["dpo", "all", "base best-of-K"] == pytest.approx(0.25)
    table = comparison.yardstick_table(cmp, ["fidelity", "quality"]).set_index("model")
    assert table.fidelity_mean["base best-of-K"] == pytest.approx(0.9)
    assert table.win_vs_base["VAE ceiling"] == pytest.approx(1.0)


def test_report_section_names_yardsticks_headline_and_interval():
    cmp = comparison.Comparison(_with_yardsticks(), "fidelity", 2000, tie=0.0)
    cfg = SimpleNamespace(evaluate=SimpleNamespace(seeds=SEEDS), report=SimpleNamespace(draws=2000))
    cfg.seed = 0
    section = _yardstick_section(
        cfg, cmp, comparison.yardstick_table(cmp, ["fidelity"]), comparison.gap_table(cmp)
    )
    assert section.title == "How far toward what was reachable (yardsticks)"
    for words in ("best of 4 base samples", "**headline** is `seen`", "Fieller interval"):
        assert words in section.markdown, words
    assert "seen 20, heldout_wording 20, all 40" in section.markdown
    # prompts without wording subsets (a prompt file): all prompts are the headline
    res = _with_yardsticks()
    res.prompts = res.prompts.drop(columns=["heldout_template", "heldout_combo"])
    cmp = comparison.Comparison(res, "fidelity", 2000, tie=0.0)
    gaps = comparison.gap_table(cmp)
    assert set(gaps.split) == {"all"}
    section = _yardstick_section(cfg, cmp, comparison.yardstick_table(cmp, ["fidelity"]), gaps)
    assert "Headline: training wording" not in section.markdown and "all 40" in section.markdown


def test_eval_prompt_quotas_are_exact_per_category():
    df = generate_prompts(64, 100, seed=1, heldout_combo_frac=0.3, heldout_template_frac=0.25)
    ev = df[df.split == "eval"]
    for cat, g in ev.groupby("category"):
        assert g.heldout_template.sum() == round(len(g) * 0.25), cat
        want = 0 if cat == "single" else round(len(g) * 0.3)
        assert g.heldout_combo.sum() == want, cat


def test_only_the_base_evaluation_declares_what_the_yardsticks_read():
    """Best-of-K's keys for every backbone; the real canvases' world keys only with world
    prompts (a real-model profile reads its prompts from a file: no specs)."""
    yard = {"labels.reward", "candidates.k"}
    world = {"world.fashion_mnist_dir", "world.item_size", "world.jitter"}
    cfg, _ = config.load(REPO / "params.yaml")
    assert yard | world <= set(dag.keys("evaluate_base", cfg, "base"))
    assert not (yard | world) & set(dag.keys("evaluate", cfg, "dpo"))
    real, _ = config.load(REPO / "params.yaml", profile="sd15")
    base = set(dag.keys("evaluate_base", real, "base"))
    assert yard <= base and not world & base
