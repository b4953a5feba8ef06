"""Rewards -> labels: ties dropped, SmPO probabilities from the data range, LAIR weights."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from diffpref import labels


@pytest.fixture
def scores():
    rewards = pd.DataFrame(
        {
            "prompt_id": ["a"] * 3 + ["b"] * 3,
            "cand_idx": [0, 1, 2] * 2,
            "reward": "fidelity",
            "score": [0.9, 0.1, 0.88, 0.5, 0.5, 0.2],
        }
    )
    return labels.score_matrix(rewards, "fidelity")


def test_pairwise_drops_ties_and_orients_winner(scores):
    p = labels.pairwise(scores, tie_threshold=0.05)
    got = set(zip(p.prompt_id, p.winner, p.loser))
    # a: 0>1, 2>1 (0 vs 2 is a tie: 0.02); b: 0>2, 1>2 (0 vs 1 equal)
    assert got == {("a", 0, 1), ("a", 2, 1), ("b", 0, 2), ("b", 1, 2)}
    assert (p.margin > 0.05).all()


def test_best_worst_keeps_one_pair_per_prompt(scores):
    p = labels.pairwise(scores, 0.05, mode="best_worst")
    assert set(zip(p.prompt_id, p.winner, p.loser)) == {("a", 0, 1), ("b", 0, 2)}


def test_smoothed_probability_uses_data_min_max(scores):
    p = labels.smoothed(labels.pairwise(scores, 0.05), scores)
    lo, hi = 0.1, 0.9
    row = p[(p.prompt_id == "a") & (p.winner == 0)].iloc[0]
    n = lambda s: (s - lo) / (hi - lo)  # noqa: E731
    expect = 1 / (1 + math.exp(-(n(0.9) - n(0.1))))
    assert row.prob == pytest.approx(expect, rel=1e-6)
    assert (p.prob >= 0.5).all()


def test_listwise_advantages_are_centred(scores):
    lw = labels.listwise(scores, tau=0.1, standardize=False)
    sums = lw.groupby("prompt_id").advantage.sum()
    assert sums.abs().max() < 1e-6
    a = lw[lw.prompt_id == "a"].set_index("cand_idx").advantage
    assert a[0] > a[2] > a[1]


def test_pointwise_median_split(scores):
    pw = labels.pointwise(scores, None)
    des = set(zip(pw.prompt_id[pw.desirable], pw.cand_idx[pw.desirable]))
    # a: median 0.88 -> only 0.9 is above; b: median 0.5 -> nothing strictly above
    assert des == {("a", 0)}


def test_unknown_reward_is_clear():
    df = pd.DataFrame({"prompt_id": ["a"], "cand_idx": [0], "reward": ["q"], "score": [1.0]})
    with pytest.raises(ValueError, match=r"labels\.reward"):
        labels.score_matrix(df, "fidelity")


def test_a_candidate_without_a_score_gets_no_label_of_any_kind():
    """A prompt scored on 2 of its 3 candidates: pairs among the two, no listwise list (LAIR
    needs all K), and no pointwise label for the unscored one (it was "undesirable", with a
    NaN score, before)."""
    rewards = pd.DataFrame(
        {
            "prompt_id": ["a"] * 3 + ["b"] * 2,
            "cand_idx": [0, 1, 2, 0, 2],
            "reward": "fidelity",
            "score": [0.9, 0.1, 0.5, 0.8, 0.2],
        }
    )
    scores = labels.score_matrix(rewards, "fidelity")
    pairs = labels.pairwise(scores, 0.05)
    tables = {
        "pairwise": pairs,
        "smoothed": labels.smoothed(pairs, scores),
        "listwise": labels.listwise(scores, 0.5, True),
        "pointwise": labels.pointwise(scores, None),
        "pointwise_threshold": labels.pointwise(scores, 0.3),
    }
    for name, df in tables.items():
        assert not df.isna().any().any(), name
    assert set(zip(pairs.prompt_id, pairs.winner, pairs.loser)) >= {("b", 0, 2)}
    assert set(tables["listwise"].prompt_id) == {"a"}
    for name in ("pointwise", "pointwise_threshold"):
        assert set(zip(tables[name].prompt_id, tables[name].cand_idx)) == {
            ("a", 0),
            ("a", 1),
            ("a", 2),
            ("b", 0),
            ("b", 2),
        }, name
