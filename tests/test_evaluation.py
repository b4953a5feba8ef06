"""Held-out statistics: win rates on matched samples, cluster bootstrap CIs, diversity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffpref import evaluation


def frame(scores, prompts=None, seeds=None):
    n = len(scores)
    return pd.DataFrame(
        {
            "prompt_id": prompts or [f"p{i // 2}" for i in range(n)],
            "seed": seeds or [i % 2 for i in range(n)],
            "score": scores,
        }
    )


def test_win_rate_matches_on_prompt_and_seed_and_counts_ties_half():
    ours = frame([1.0, 0.0, 0.5, 0.7])
    theirs = frame([0.0, 1.0, 0.5, 0.1])
    w = evaluation.win_rate(ours, theirs, n_boot=200)
    assert w["win_rate"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert w["n"] == 4
    assert w["ci_low"] <= w["win_rate"] <= w["ci_high"]


def test_win_rate_tie_threshold_turns_noise_level_differences_into_ties():
    ours = frame([0.505, 0.495, 0.9, 0.1])
    theirs = frame([0.5, 0.5, 0.5, 0.5])
    assert evaluation.win_rate(ours, theirs, n_boot=50)["win_rate"] == 0.5
    # |0.005| <= 0.01: ties (one half each); +0.4 wins, -0.4 loses
    w = evaluation.win_rate(ours, theirs, n_boot=50, tie=0.01)
    assert w["win_rate"] == pytest.approx((0.5 + 0.5 + 1 + 0) / 4)
    w = evaluation.win_rate(frame([0.52, 0.52]), frame([0.5, 0.5]), n_boot=50, tie=0.01)
    assert w["win_rate"] == 1.0


def test_clear_winner_has_ci_excluding_half():
    rng = np.random.default_rng(0)
    base = rng.random(400)
    w = evaluation.win_rate(frame(list(base + 0.3)), frame(list(base)), n_boot=300)
    assert w["win_rate"] == 1.0 and w["ci_low"] > 0.5


def test_bootstrap_ci_resamples_clusters():
    # two prompts with 50 identical samples each: the CI must reflect 2 clusters, not 100 draws
    vals = np.r_[np.zeros(50), np.ones(50)]
    clusters = np.r_[np.zeros(50), np.ones(50)]
    mean, lo, hi = evaluation.bootstrap_ci(vals, clusters, n_boot=2000)
    assert mean == 0.5
    assert lo == 0.0 and hi == 1.0


def test_per_category_accuracy():
    df = pd.DataFrame({"category": ["a", "a", "b"], "correct": [1.0, 0.0, 1.0]})
    assert evaluation.per_category(df) == {"a": 0.5, "b": 1.0, "overall": pytest.approx(2 / 3)}


def test_diversity_is_zero_for_identical_samples_and_grows_with_spread():
    f = np.ones((4, 3))
    ids = np.array(["a", "a", "b", "b"])
    assert evaluation.diversity(f, ids) == 0.0
    f2 = np.array([[0.0, 0], [3, 4], [0, 0], [0, 0]])
    assert evaluation.diversity(f2, ids) == pytest.approx(2.5)
