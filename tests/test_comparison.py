"""The report's seed-aware comparison: table, verdicts with power, the seen/unseen split and the
seed claims, on a synthetic run whose answers are known by construction."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from diffpref import comparison

N = 40  # prompts: the first half in training wording, the second half in held-out wording
SEEDS = [0, 1, 2]


def _scores(fid: np.ndarray, train_seed: int) -> pd.DataFrame:
    rows = []
    for i in range(N):
        for s in (0, 1):
            for reward, score in (("fidelity", fid[i]), ("quality", 0.3)):
                rows.append(
                    {
                        "prompt_id": f"p{i:02d}",
                        "seed": s,
                        "reward": reward,
                        "score": float(score),
                        "correct": float(score > 0.6),
                        "category": "counting" if i % 2 else "single",
                        "train_seed": train_seed,
                    }
                )
    return pd.DataFrame(rows)


def _eval_metrics() -> dict:
    acc = {"counting": 0.5, "single": 0.5, "overall": 0.5}
    return {
        "reward": {"fidelity": {}, "quality": {}},
        "accuracy": {"fidelity": acc},
        "diversity": 10.0,
    }


def _train_metrics(acc: float, speed: float) -> dict:
    hist = [{"step": s, "loss": 1.0 / s, "implicit_acc": acc} for s in range(1, 9)]
    summary = {
        "train_time_s": 10.0,
        "groups_per_s": speed,
        "peak_memory_mb": 500.0,
        "trainable_params": 1000.0,
    }
    return {"history": hist, "summary": summary}


def synthetic() -> comparison.Results:
    rng = np.random.default_rng(0)
    base = np.full(N, 0.5)
    good = np.where(np.arange(N) < N // 2, 0.7, 0.5)  # wins on seen wording only
    noise = rng.normal(0, 0.05, N)  # smpo: prompt-level noise, the same on every seed
    scores = {
        "base": _scores(base, -1),
        "dpo": pd.concat([_scores(good, s) for s in SEEDS]),
        "smpo": pd.concat([_scores(base + noise, s) for s in SEEDS]),
    }
    prompts = pd.DataFrame(
        {
            "prompt_id": [f"p{i:02d}" for i in range(N)],
            "category": ["counting" if i % 2 else "single" for i in range(N)],
            "heldout_template": np.arange(N) >= N // 2,
            "heldout_combo": False,
        }
    )
    evm = {n: [_eval_metrics()] * (1 if n == "base" else 3) for n in scores}
    trm = {"dpo": [_train_metrics(0.9, 40.0)] * 3, "smpo": [_train_metrics(0.55, 45.0)] * 3}
    train = ["a photo of a bag", "two coats", "a coat left of a bag"]
    return comparison.Results(scores, prompts, evm, trm, SEEDS, train)


def test_training_fit_averages_the_last_quarter_of_the_first_accuracy_metric():
    hist = [{"loss": 1.0, "implicit_acc": a} for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9)]
    assert comparison.training_fit(hist) == ("implicit_acc", (0.7 + 0.9) / 2)
    assert comparison.training_fit([{"loss": 1.0, "pl_acc": 0.75}]) == ("pl_acc", 0.75)
    metric, fit = comparison.training_fit([{"loss": 1.0}])  # SFT logs no accuracy
    assert metric == "" and math.isnan(fit)


def test_table_is_seed_aware_and_reproducible():
    res = synthetic()
    one = comparison.comparison_table(
        comparison.Comparison(res, "fidelity", 300, 0.01), ["fidelity", "quality"]
    )
    two = comparison.comparison_table(
        comparison.Comparison(res, "fidelity", 300, 0.01), ["fidelity", "quality"]
    )
    pd.testing.assert_frame_equal(one, two)
    assert list(one.model) == ["base", "dpo", "smpo"]
    dpo = one.set_index("model").loc["dpo"]
    assert dpo.win_vs_base == 0.75 and dpo.n_seeds == 3 and dpo.win_seed_sd == 0.0
    assert dpo.win_per_seed == "0.750 0.750 0.750" and dpo.win_iqm == 0.75
    assert dpo.win_vs_base_ci_low > 0.5 and dpo.groups_per_s == 40.0
    assert dpo.beats_base == "yes" and dpo.beats_base_holm == "yes"
    smpo = one.set_index("model").loc["smpo"]
    assert smpo.beats_base == "not shown" and smpo.win_p_holm >= smpo.win_p_value


def test_verdicts_say_what_the_run_could_detect_and_whether_gains_carry_over():
    res = synthetic()
    cmp = comparison.Comparison(res, "fidelity", 300, 0.01)
    table = comparison.comparison_table(cmp, ["fidelity", "quality"])
    splits = comparison.split_table(cmp)
    s = splits.set_index(["model", "split"])
    assert s.loc[("dpo", "seen"), "win_vs_base"] == 1.0
    assert s.loc[("dpo", "heldout_wording"), "win_vs_base"] == 0.5  # ties within 0.01
    assert ("dpo", "heldout_combo") not in s.index  # no prompt has a held-out combination
    verdicts = comparison.beats_base(cmp, table, splits)
    dpo, smpo = (v.note for v in verdicts)
    rows = comparison.verdict_table(verdicts, "model", "win vs base").set_index("model")
    assert list(rows.columns) == [
        "win vs base", "95% CI", "p", "verdict", "Holm", "shown beyond ±", "80% power at ±",
        "note",
    ]  # fmt: skip
    assert rows.loc["dpo", "verdict"] == "yes" and rows.loc["dpo", "Holm"].startswith("yes (")
    assert rows.loc["smpo", "verdict"] == rows.loc["smpo", "Holm"].split(" (")[0] == "not shown"
    assert list(rows.note) == ["[1]", "[2]"]
    # the 80%-power effect is larger than the half-width: an effect that large is shown 4 in 5
    assert rows.loc["smpo", "80% power at ±"] > rows.loc["smpo", "shown beyond ±"] > 0
    assert "3 seeds × 40 prompts" in dpo and "IQM over seeds × categories 0.750" in dpo
    assert "**not shown to carry over** to held-out wording (0.500 [0.500, 0.500])" in dpo
    assert "shows a win-rate difference from 0.5 beyond ±" in smpo
    assert "(95% CI half-width) and detects one of ±" in smpo and "with 80% power" in smpo
    # identical seeds: the method-of-moments seed sd is 0, printed as its upper bound
    assert "between-seed sd < 0.000 (95% upper bound; the estimate is 0)" in dpo
    assert "under-trained" in smpo  # its training accuracy 0.55 is near chance
    notes = comparison.verdict_notes(verdicts).splitlines()
    assert notes[0].startswith("1. **dpo**: 3 seeds") and notes[1].startswith("2. **smpo**:")


def test_seed_claims_are_decided_on_seed_aware_intervals():
    res = synthetic()
    cmp = comparison.Comparison(res, "fidelity", 300, 0.01)
    table = comparison.comparison_table(cmp, ["fidelity", "quality"])
    poi = cmp.poi_matrix()
    p = poi.set_index(["model", "versus"]).p
    assert p[("dpo", "smpo")] + p[("smpo", "dpo")] == 1.0
    assert p[("dpo", "base")] > 0.5
    verdicts, lines = comparison.seed_claims(cmp, table, poi)
    (smpo,) = verdicts  # the one statistical claim that ran
    assert smpo.subject == "SmPO is above DPO" and "P(smpo > dpo)" in smpo.note
    assert smpo.raw == smpo.holm == "contradicted" and smpo.p_holm == smpo.p_value
    assert smpo.ci_high < 0 and smpo.estimate < 0
    assert any("MaPO" in line and "not run" in line for line in lines)
    # P(A > B) and P(B > A) are one computation, mirrored
    q = poi.set_index(["model", "versus"])
    for a, b in [("dpo", "smpo"), ("base", "dpo")]:
        assert q.p[(a, b)] == 1 - q.p[(b, a)]
        assert (q.ci_low[(a, b)], q.ci_high[(a, b)]) == (
            1 - q.ci_high[(b, a)],
            1 - q.ci_low[(b, a)],
        )


def test_power_note_gives_what_would_decide_and_caps_useless_advice():
    e = {
        "half_width": 0.06,
        "detectable_80": 0.081,
        "seeds_needed": None,
        "prompts_needed": 300,
        "scale_both": None,
        "effect": 0.05,
    }
    assert comparison.power_note(e, "difference", 3, 128) == (
        "this run shows a difference beyond ±0.060 (95% CI half-width) and detects one of "
        "±0.081 with 80% power; detecting the observed difference (80% power) would take "
        "~300 prompts at 3 seeds"
    )
    e |= {"prompts_needed": None, "scale_both": 4.0}
    assert "~12 seeds and ~512 prompts together" in comparison.power_note(e, "d", 3, 128)
    e |= {"scale_both": 500.0, "effect": -0.001}
    note = comparison.power_note(e, "d", 3, 128)
    assert "more than 20x as many seeds and prompts" in note and "(-0.001)" in note


def test_what_seeds_decide_says_what_three_seeds_cannot():
    res = synthetic()
    text = comparison.what_seeds_decide(comparison.Comparison(res, "fidelity", 2000, 0.01))
    assert text.startswith("What 3 training seeds can decide here")
    assert "t = 4.30" in text and "2 degrees of freedom" in text
    assert "at 5 seeds" in text and "at 10 seeds" in text
    assert '"beats the base" (2 comparisons, one per objective)' in text
    assert "shown with 80% power from about ±" in text
    assert "between-seed sd < 0.000 (95% upper bound; the estimate is 0)" in text
    assert "compared paired by training seed" in text and comparison.TWO_MODES in text
    res.shared_seeds = False
    text = comparison.what_seeds_decide(comparison.Comparison(res, "fidelity", 2000, 0.01))
    assert "compared unpaired (train.seed_streams independent)" in text


def test_wording_overlap_counts_shared_word_ngrams():
    assert comparison.ngrams("A coat, left of a bag", 2) == {
        ("a", "coat"),
        ("coat", "left"),
        ("left", "of"),
        ("of", "a"),
        ("a", "bag"),
    }
    train = ["a photo of a bag"]
    assert comparison.ngram_overlap(train, ["show me the tote"], 1) == 0.0
    assert comparison.ngram_overlap(train, ["a photo of a coat"], 1) == 0.75  # coat is new
    assert comparison.ngram_overlap(train, ["a photo of a coat"], 3) == 2 / 3
    res = synthetic()
    res.prompts["prompt"] = ["a photo of a bag" if i < N // 2 else "the tote" for i in range(N)]
    table = comparison.wording_overlap(res).set_index("prompts")
    assert table.loc["heldout_wording", "1-grams"] == 0.0
    assert table.loc["training wording (eval prompts)", "3-grams"] == 1.0


def test_wording_summary_tests_the_held_out_leader_as_its_own_contrast():
    # dpo wins every seen prompt (0.75 overall, 0.5 on held-out wording); smpo ties on seen
    # wording and wins 3 of 4 held-out-wording prompts (0.6875 overall, 0.875 there): smpo's
    # lead over dpo on held-out wording is 0.375 on every seed, a contrast shown as such
    res = synthetic()
    lift = np.where((np.arange(N) >= N // 2) & (np.arange(N) % 4 != 0), 0.2, 0.0)
    res.scores["smpo"] = pd.concat([_scores(np.full(N, 0.5) + lift, s) for s in SEEDS])
    cmp = comparison.Comparison(res, "fidelity", 2000, 0.01)
    table = comparison.comparison_table(cmp, ["fidelity"])
    line = comparison.wording_summary(cmp, table, comparison.split_table(cmp))
    assert line.startswith("Best on all held-out prompts: dpo (0.750)")
    assert "while smpo leads there with 0.875" in line
    assert (
        "its lead over dpo on the 20 held-out-wording prompts, tested as its own contrast" in line
    )
    assert "difference +0.375 [" in line and "(paired by training seed" in line
    assert line.endswith("**shown**: the overall winner's lead does not carry over to new wording.")
    # the same leader on both: nothing to contrast
    res = synthetic()
    cmp = comparison.Comparison(res, "fidelity", 300, 0.01)
    table = comparison.comparison_table(cmp, ["fidelity"])
    splits = comparison.split_table(cmp)
    held = splits[splits.split == "heldout_wording"].set_index("model").win_vs_base
    line = comparison.wording_summary(cmp, table, splits)
    assert ("while" in line) == (held.idxmax() != "dpo")


def test_shared_seeds_pair_objective_comparisons_and_the_report_says_so():
    # dpo and smpo share a large per-seed effect on the score (common random numbers), so
    # smpo's mean is below dpo's by the same 0.12 on every seed: paired by training seed,
    # every seed of smpo is below the same seed of dpo (no spread: certain); unpaired, the
    # seed effect swamps it; the base is never paired. The seed claim names its analysis.
    res = synthetic()
    shift = {0: -0.3, 1: 0.0, 2: 0.3}
    for n, gap in (("dpo", 0.0), ("smpo", -0.02)):
        df = res.scores[n]
        res.scores[n] = df.assign(score=df.score + df.train_seed.map(shift) + gap)
    out = {}
    for shared in (True, False):
        res.shared_seeds = shared
        cmp = comparison.Comparison(res, "fidelity", 2000, 0.01)
        poi = cmp.poi_matrix().set_index(["model", "versus"])
        assert poi.analysis[("dpo", "base")] == "unpaired"
        assert poi.analysis[("smpo", "dpo")] == (
            "paired by training seed" if shared else "unpaired"
        )
        table = comparison.comparison_table(cmp, ["fidelity"])
        verdicts, _ = comparison.seed_claims(cmp, table, poi.reset_index())
        out[shared] = (poi, next(v.note for v in verdicts if v.subject.startswith("SmPO")))
    poi, line = out[True]
    assert "(paired by training seed, per seed" in line
    assert "a seed of each against the same seed (0.00 of the same-seed pairs)" in line
    assert poi.p[("smpo", "dpo")] == poi.ci_high[("smpo", "dpo")] == 0.0
    assert poi.seed_pairs[("smpo", "dpo")] == 0.0  # no seed of smpo beats dpo's same seed
    poi, line = out[False]
    assert "(unpaired)" in line and "a random training seed of each" in line
    x = {
        n: res.scores[n].query("reward == 'fidelity'").groupby("train_seed").score.mean()
        for n in ("smpo", "dpo")
    }
    want = stats.norm.cdf(
        (x["smpo"].mean() - x["dpo"].mean()) / np.sqrt(x["smpo"].var() + x["dpo"].var())
    )
    assert poi.p[("smpo", "dpo")] == pytest.approx(want)  # a random pair of seeds: 0.39
    assert poi.ci_low[("smpo", "dpo")] < 0.1 and poi.ci_high[("smpo", "dpo")] > 0.8


def test_widely_spread_seeds_are_marked_outside_the_calibration():
    res = synthetic()
    cmp = comparison.Comparison(res, "fidelity", 300, 0.01)
    table = comparison.comparison_table(cmp, ["fidelity"])
    assert "outside what was calibrated" not in " ".join(
        v.note for v in comparison.beats_base(cmp, table, comparison.split_table(cmp))
    )
    # dpo's seed 0 loses every prompt and seed 2 wins every one: per-seed win rates 0, 0.75, 1
    df = res.scores["dpo"]
    res.scores["dpo"] = df.assign(score=df.score + df.train_seed.map({0: -1.0, 1: 0.0, 2: 1.0}))
    cmp = comparison.Comparison(res, "fidelity", 300, 0.01)
    table = comparison.comparison_table(cmp, ["fidelity"])
    dpo, smpo = (v.note for v in comparison.beats_base(cmp, table, comparison.split_table(cmp)))
    assert "**outside what was calibrated**: per-seed win rates spread with sd 0.5" in dpo
    assert "outside what was calibrated" not in smpo
    verdicts, _ = comparison.seed_claims(cmp, table, cmp.poi_matrix())
    assert "outside what was calibrated" in next(v.note for v in verdicts if "SmPO" in v.subject)


def test_label_win_rates_show_gain_only_the_label_model_sees():
    """dpo gains on fidelity (the label model here) and not at all on quality (the judge
    here): its win rate vs base is 0.75 on the label model, 0.5 on the judge, and the
    difference, over-optimisation of the label model, has an interval above 0."""
    cmp = comparison.Comparison(synthetic(), "quality", 300, 0.01)
    over = comparison.label_win_rates(cmp, "fidelity").set_index("model")
    assert list(over.index) == ["dpo", "smpo"]
    dpo = over.loc["dpo"]
    assert dpo.label_win_vs_base == 0.75 and cmp.win_vs_base()["dpo"]["mean"] == 0.5
    assert dpo.label_minus_judge == 0.25
    low = float(dpo.label_minus_judge_ci.strip("[]").split(",")[0])
    assert low > 0
