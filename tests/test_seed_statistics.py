"""Seed-aware statistics: the crossed bootstrap, IQM, P(X > Y) and power, on hand-computed
cases and against rliable's own metric functions."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from diffpref import evaluation
from diffpref import statistics as st


def test_seed_matrix_averages_sampling_seeds_and_orders_prompts():
    df = pd.DataFrame(
        {
            "train_seed": [1, 1, 1, 1, 0, 0, 0, 0],
            "prompt_id": ["a", "a", "b", "b", "a", "a", "b", "b"],
            "seed": [0, 1] * 4,
            "v": [1.0, 3.0, 0.0, 1.0, 5.0, 5.0, 2.0, 4.0],
        }
    )
    m = st.seed_matrix(df, "v", ["b", "a"])
    np.testing.assert_array_equal(m, [[3.0, 5.0], [0.5, 2.0]])  # seed 0 first
    with pytest.raises(ValueError, match="every training seed needs every prompt"):
        st.seed_matrix(df[~((df.train_seed == 1) & (df.prompt_id == "b"))], "v", ["a", "b"])


def test_win_values_count_ties_within_threshold_as_half():
    ours = pd.DataFrame(
        {"train_seed": 0, "prompt_id": ["a", "b", "c"], "seed": 0, "score": [0.5, 0.3, 0.1]}
    )
    base = pd.DataFrame({"prompt_id": ["a", "b", "c"], "seed": 0, "score": [0.4, 0.295, 0.2]})
    assert evaluation.win_values(ours, base, tie=0.01).win.tolist() == [1.0, 0.5, 0.0]


def test_crossed_bootstrap_seed_draws_follow_the_multinomial():
    # prompts held fixed, two seeds with means 0 and 1: a replicate draws both seeds (mean 0.5)
    # with probability 1/2, and seed 0 twice or seed 1 twice with 1/4 each
    m = np.array([[0.0, 0.0], [1.0, 1.0]])
    boot = st.crossed_bootstrap({"a": m}, 20_000, seed=3, prompts=False)["a"]
    vals, counts = np.unique(boot, return_counts=True)
    np.testing.assert_array_equal(vals, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(counts / counts.sum(), [0.25, 0.5, 0.25], atol=0.01)
    # seeds held fixed, identical seeds: only the prompt draw varies (means of 2 draws of 0/1)
    boot = st.crossed_bootstrap({"a": m.T}, 20_000, seed=3, seeds=False)["a"]
    np.testing.assert_allclose(np.unique(boot), [0.0, 0.5, 1.0])


def test_crossed_bootstrap_shares_the_prompt_draw_between_models():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 40))
    b = a - 0.25  # b is a uniformly 0.25 worse on every (seed, prompt)
    boot = st.crossed_bootstrap({"a": a, "b": b}, 500, seed=1, seeds=False)
    np.testing.assert_allclose(boot["a"] - boot["b"], 0.25)  # paired: no prompt noise left
    d = st.seed_difference({"a": a, "b": b}, "a", "b", 500)
    assert d["diff"] == pytest.approx(0.25) and d["ci_low"] < 0.25 < d["ci_high"]


def test_crossed_bootstrap_is_seeded():
    m = {"a": np.arange(12.0).reshape(3, 4), "b": np.ones((2, 4))}
    one, two = st.crossed_bootstrap(m, 100, seed=7), st.crossed_bootstrap(m, 100, seed=7)
    for k in m:
        np.testing.assert_array_equal(one[k], two[k])
    assert not np.array_equal(one["a"], st.crossed_bootstrap(m, 100, seed=8)["a"])


def test_a_shared_prompt_effect_widens_the_crossed_interval_beyond_nested_resampling():
    # 3 seeds that agree, 50 prompts with a strong shared difficulty: the spread of the mean is
    # the prompt effect's, sd(prompt)/sqrt(P), which the crossed bootstrap keeps
    rng = np.random.default_rng(0)
    prompt_effect = rng.normal(scale=1.0, size=50)
    m = prompt_effect[None, :] + rng.normal(scale=0.01, size=(3, 50))
    boot = st.crossed_bootstrap({"a": m}, 4000, seed=0)["a"]
    assert boot.std() == pytest.approx(prompt_effect.std() / np.sqrt(50), rel=0.1)


def test_seed_estimate_reports_per_seed_iqm_spread_and_power():
    m = np.array([[0.6] * 10, [0.7] * 10, [0.8] * 10])
    e = st.seed_estimate({"a": m}, "a", null=0.5, n_boot=2000)
    assert e["per_seed"] == pytest.approx([0.6, 0.7, 0.8])
    assert e["mean"] == pytest.approx(0.7) and e["iqm"] == pytest.approx(0.7)
    assert e["seed_sd"] == pytest.approx(0.1)
    assert 0.6 <= e["ci_low"] < 0.7 < e["ci_high"] <= 0.8
    assert e["n_seeds"] == 3 and e["n_prompts"] == 10
    assert e["detectable"] == pytest.approx((e["ci_high"] - e["ci_low"]) / 2)


def test_power_hand_computed():
    # se^2 needed for effect 0.1 at 80% power: (0.1 / 2.8)^2 = 0.001276; variance 0.002 from
    # seeds, 0.0002 from prompts -> 3 * 0.002 / (0.001276 - 0.0002) = 5.6 -> 6 seeds
    p = st.power(0.1, 0.4, 0.6, n_seeds=3, n_prompts=100, var_seeds=0.002, var_prompts=0.0002)
    assert p["detectable"] == pytest.approx(0.1)
    assert p["seeds_needed"] == 6
    assert p["prompts_needed"] is None  # the seed variance alone exceeds se^2: prompts can't
    assert st.power(0.0, -0.1, 0.1, 3, 100, 0.001, 0.001)["seeds_needed"] is None
    assert st.power(0.1, 0.4, 0.6, 1, 100, 0.0, 0.0002)["seeds_needed"] is None  # 1 seed


def test_probability_of_improvement_hand_computed():
    x = np.array([[1.0, 0.0], [3.0, 0.0]])
    y = np.array([[2.0, 0.0], [2.0, 1.0]])
    # task 0: x beats y in 2 of 4 pairs -> 0.5; task 1: ties 2 (0.5 each), losses 2 -> 0.25
    assert st.probability_of_improvement(x, y) == pytest.approx((0.5 + 0.25) / 2)
    assert st.probability_of_improvement(x, x) == pytest.approx(0.5)


def test_poi_interval_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    x, y = rng.normal(0.3, 1, (3, 5)), rng.normal(0, 1, (4, 5))
    p, lo, hi = st.poi_interval(x, y, 2000, seed=0)
    assert lo <= p <= hi and (p, lo, hi) == st.poi_interval(x, y, 2000, seed=0)
    assert st.poi_interval(x + 100, y, 200)[1:] == (1.0, 1.0)  # always better: no spread


def test_task_scores_per_seed_and_category():
    df = pd.DataFrame(
        {
            "train_seed": [0, 0, 0, 1, 1, 1],
            "category": ["b", "a", "a", "b", "a", "a"],
            "score": [1.0, 2.0, 4.0, 0.0, 1.0, 1.0],
        }
    )
    np.testing.assert_array_equal(st.task_scores(df, "score"), [[3.0, 1.0], [1.0, 0.0]])


def test_against_rliable_on_fixed_inputs():
    # rliable's `library` (its bootstrap) cannot be imported beside pandas 3 (its pinned
    # arch<8 breaks), so diffpref bootstraps itself; the point metrics are rliable's own
    metrics = pytest.importorskip("rliable.metrics")
    rng = np.random.default_rng(42)
    for rx, ry, t in [(3, 3, 1), (3, 5, 4), (5, 2, 7)]:
        x = rng.normal(0.1, 1, (rx, t)).round(1)  # rounding makes ties
        y = rng.normal(0.0, 1, (ry, t)).round(1)
        assert st.probability_of_improvement(x, y) == pytest.approx(
            metrics.probability_of_improvement(x, y)
        )
        assert st.iqm(x) == pytest.approx(metrics.aggregate_iqm(x))
