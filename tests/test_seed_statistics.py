"""Seed-aware statistics: the variance components and their intervals, the baseline crossed
bootstrap, IQM, P(X > Y), power and Holm, on hand-computed cases, against rliable's own metric
functions, and calibrated on simulations of the crossed model with known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from diffpref import calibration, evaluation
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
    d = st.seed_difference({"a": a, "b": b}, "a", "b", 500, paired=False)
    assert d["diff"] == pytest.approx(0.25) and d["ci_low"] < 0.25 < d["ci_high"]
    assert d["analysis"] == st.UNPAIRED


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


# -- the variance-components intervals ---------------------------------------------------------
def test_mean_squares_and_variance_hand_computed():
    # 2 seeds x 3 prompts: row means 2, 4; column means 2, 3, 4; grand mean 3
    m = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])
    sq = st.squares([m], [1.0])
    assert sq.estimate == pytest.approx(3.0)
    assert sq.models[0].seed_ms == pytest.approx(2.0)  # var(2, 4)
    assert sq.models[0].resid_ms == pytest.approx(0.0)  # additive: no interaction
    assert sq.prompt_ms == pytest.approx(1.0)  # var(2, 3, 4)
    # seed part 2/2 + prompt part 1/3 - residual 0
    assert st.variance(sq) == pytest.approx(1.0 + 1.0 / 3)
    # a difference of two models: paired prompts, seeds independent
    d = st.squares([m, m[:, ::-1]], [1.0, -1.0])
    assert d.estimate == pytest.approx(0.0)
    assert d.prompt_ms == pytest.approx(np.var([-2.0, 0.0, 2.0], ddof=1))
    assert st.variance(d) == pytest.approx(2 * 2.0 / 2 + 4.0 / 3)


def test_method_of_moments_variance_is_unbiased_for_the_crossed_model():
    # 20000 runs of seeds (var 0.04) x prompts (var 1) + residual (var 0.5): the estimated
    # variance of the grand mean averages to the true one, 0.04/3 + 1/16 + 0.5/48
    rng = np.random.default_rng(0)
    n, r, p = 20000, 3, 16
    m = (
        rng.normal(0, 0.2, (n, r, 1))
        + rng.normal(0, 1.0, (n, 1, p))
        + rng.normal(0, np.sqrt(0.5), (n, r, p))
    )
    truth = 0.04 / r + 1.0 / p + 0.5 / (r * p)
    assert st.variance(st.squares([m], [1.0])).mean() == pytest.approx(truth, rel=0.02)
    assert m.mean((1, 2)).var() == pytest.approx(truth, rel=0.03)


def test_seed_sd_excludes_evaluation_noise():
    # no seed effect at all, only per-(seed, prompt) noise: the per-seed means still differ
    # (by noise / sqrt(P)), but the between-seed sd of the true per-seed means is ~0
    rng = np.random.default_rng(1)
    m = rng.normal(0.5, 0.3, (3, 400))
    e = st.seed_estimate({"a": m}, "a", null=0.5, n_draws=2000)
    assert np.std(e["per_seed"], ddof=1) > 0.005
    assert e["seed_sd"] < 0.005


def test_seed_dominated_interval_is_the_t_interval_on_the_per_seed_means():
    # prompts identical, seeds differ: the fiducial interval is mean +- t(2) sd / sqrt(3)
    m = np.array([[0.6] * 10, [0.7] * 10, [0.8] * 10])
    e = st.seed_estimate({"a": m}, "a", null=0.5, n_draws=400_000)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # 4.30 x 0.058 = 0.248
    assert e["mean"] == pytest.approx(0.7) and e["seed_sd"] == pytest.approx(0.1)
    assert e["ci_low"] == pytest.approx(0.7 - half, abs=0.004)
    assert e["ci_high"] == pytest.approx(0.7 + half, abs=0.004)
    assert e["per_seed"] == pytest.approx([0.6, 0.7, 0.8])
    assert e["n_seeds"] == 3 and e["n_prompts"] == 10
    assert e["half_width"] == pytest.approx((e["ci_high"] - e["ci_low"]) / 2)
    assert e["seed_share"] == pytest.approx(1.0)
    # the two-sided p of 0.5: P(t2 > 0.2 / 0.0577) x 2
    assert e["p_value"] == pytest.approx(2 * stats.t.sf(0.2 / (0.1 / np.sqrt(3)), 2), abs=0.003)


def test_one_seed_gives_the_prompt_level_t_interval():
    rng = np.random.default_rng(2)
    m = rng.normal(0.6, 0.2, (1, 50))
    e = st.seed_estimate({"a": m}, "a", null=0.5, n_draws=400_000)
    half = stats.t.ppf(0.975, 49) * m.std(ddof=1) / np.sqrt(50)
    assert e["ci_high"] - e["ci_low"] == pytest.approx(2 * half, rel=0.01)
    assert np.isnan(e["seed_sd"]) and e["seeds_needed"] is None


def test_intervals_are_seeded():
    rng = np.random.default_rng(3)
    mats = {"a": rng.normal(size=(3, 20)), "b": rng.normal(size=(3, 20))}
    for paired in (False, True):
        one = st.seed_difference(mats, "a", "b", 1000, seed=4, paired=paired)
        assert one == st.seed_difference(mats, "a", "b", 1000, seed=4, paired=paired)
        two = st.seed_difference(mats, "a", "b", 1000, seed=5, paired=paired)
        assert one["ci_low"] != two["ci_low"]


def test_candidate_intervals_df():
    rng = np.random.default_rng(4)
    seeds_only = rng.normal(size=(3, 1)) + 0.001 * rng.normal(size=(3, 64))
    sq = st.squares([seeds_only], [1.0])
    assert st.satterthwaite(sq)[1] == pytest.approx(2.0, abs=0.05)  # all from 3 seeds
    prompts_only = rng.normal(size=(1, 64)) + 0.001 * rng.normal(size=(3, 64))
    assert st.satterthwaite(st.squares([prompts_only], [1.0]))[1] == pytest.approx(63, rel=0.05)
    # cluster-robust: t with min(R, P) - 1 = 2 df; right when seeds dominate, and twice as
    # wide as Satterthwaite's t(63) when they do not matter at all
    lo, hi = st.cluster_robust_interval([seeds_only], [1.0])
    v = seeds_only.mean(1).var(ddof=1) / 3
    assert (hi - lo) / 2 == pytest.approx(stats.t.ppf(0.975, 2) * np.sqrt(v), rel=0.01)
    lo, hi = st.cluster_robust_interval([prompts_only], [1.0])
    s_lo, s_hi = st.satterthwaite_interval(st.squares([prompts_only], [1.0]))
    assert (hi - lo) > 1.5 * (s_hi - s_lo)


def test_power_projects_the_variance_components_with_t():
    # seeds only (var 0.01 between true per-seed means): detecting 0.1 at 80% power needs the
    # smallest R with (t(.975, R-1) + t(.8, R-1)) * 0.1 / sqrt(R) <= 0.1
    rng = np.random.default_rng(5)
    s = rng.normal(size=(3, 1))
    s = (s - s.mean()) / s.std(ddof=1) * 0.1
    sq = st.squares([s + np.zeros((3, 32))], [1.0])
    want = next(
        r
        for r in range(3, 100)
        if (stats.t.ppf(0.975, r - 1) + stats.t.ppf(0.8, r - 1)) / np.sqrt(r) <= 1
    )
    plan = st.plan(sq, 0.1)
    assert plan["seeds_needed"] == want == 10
    assert plan["prompts_needed"] is None  # more prompts cannot remove seed variance
    assert st.plan(sq, 0.0)["seeds_needed"] is None
    assert st.plan(st.squares([s[:1] + np.zeros((1, 32))], [1.0]), 0.1)["seeds_needed"] is None


def test_holm_hand_computed():
    # sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    assert st.holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert st.holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])


def test_improvement_mirrors_and_handles_the_base():
    rng = np.random.default_rng(6)
    x, y = rng.normal(0.3, 1, 3), rng.normal(0, 0.5, 5)
    p, lo, hi = st.improvement(x, y, 5000, seed=1)
    q, qlo, qhi = st.improvement(y, x, 5000, seed=1)
    assert lo <= p <= hi
    assert q == pytest.approx(1 - p, abs=1e-12)
    assert (qlo, qhi) == pytest.approx((1 - hi, 1 - lo), abs=1e-12)
    # against one fixed run (the base): the chance a random seed beats it, Phi(d / s_x)
    base = np.array([0.1])
    p, lo, hi = st.improvement(x, base, 5000)
    assert p == pytest.approx(stats.norm.cdf((x.mean() - 0.1) / x.std(ddof=1)))
    assert lo < p < hi
    assert np.isnan(st.improvement(base, base, 100)[0])  # one run each: nothing measured
    assert st.improvement(np.array([1.0, 1.0]), base, 100) == (1.0, 1.0, 1.0)  # no spread


# -- calibration: every interval the report prints, on the grid ------------------------
GRID = [(r, p, share) for r in (3, 5) for p in (32, 128) for share in (0.0, 0.5, 0.9)]
RUNS, DRAWS = 2000, 500


@pytest.mark.parametrize(("n_seeds", "n_prompts", "share"), GRID)
def test_intervals_keep_95_percent_on_the_crossed_model(n_seeds, n_prompts, share):
    """Simulated runs with known truth (binary/tied wins, continuous scores; two objectives
    paired on prompts; the base): each interval covers the truth 95% of the time within Monte
    Carlo error (3 standard errors) and is not wildly conservative: at most 0.99 at 3 seeds
    (3 seeds cannot show that seeds add nothing, which costs a difference up to ~0.04 of
    extra coverage when they do not) and 0.975 at 5 seeds."""
    rng = np.random.default_rng(GRID.index((n_seeds, n_prompts, share)))
    d = calibration.Design(n_seeds, n_prompts, share)
    wins, scores, truth = calibration.simulate(rng, RUNS, d)
    cov = calibration.coverage(calibration.reported_intervals(wins, scores, DRAWS, 1), truth)
    assert set(cov) == set(calibration.REPORTED)
    low = 0.95 - 3 * np.sqrt(0.95 * 0.05 / RUNS)
    high = 0.99 if n_seeds == 3 else 0.975
    bad = {k: c for k, (c, _) in cov.items() if not low <= c <= high}
    assert not bad, f"coverage outside [{low:.3f}, {high:.3f}]: {bad}"


def test_detectable_at_projects_the_reported_interval_to_other_seed_counts():
    # at the run's own seed count the projection is the run's interval (same mean squares,
    # same draws, when no component is estimated negative); more seeds shrink it, one seed
    # leaves it unmeasured
    rng = np.random.default_rng(7)
    m = rng.normal(0, 0.2, (3, 1)) + rng.normal(0, 0.3, (1, 64)) + rng.normal(0, 0.3, (3, 64))
    assert st.components(st.squares([m], [1.0]))["seed"][0] > 0
    sq = st.squares([m], [1.0])
    lo, hi, _ = st.fiducial_interval(sq, 20000)
    at = {r: st.detectable_at(sq, r, 20000) for r in (3, 5, 10)}
    assert at[3] == pytest.approx((hi - lo) / 2)
    assert at[3] > at[5] > at[10]
    assert np.isnan(st.detectable_at(st.squares([m[:1]], [1.0]), 5, 20000))
    # the report's draws setting reaches the projection (its draws differ from 20 000's)
    e = st.seed_estimate({"a": m}, "a", 0.0, 1000)
    assert e["half_width_at"][3] == st.detectable_at(sq, 3, 1000) != at[3]
