"""The report's per-objective verdicts and the training-fit diagnostic behind them."""

from __future__ import annotations

import math

import pandas as pd

from diffpref import report


def test_training_fit_averages_the_last_quarter_of_the_first_accuracy_metric():
    hist = [{"loss": 1.0, "implicit_acc": a} for a in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9)]
    assert report.training_fit(hist) == ("implicit_acc", (0.7 + 0.9) / 2)
    assert report.training_fit([{"loss": 1.0, "pl_acc": 0.75}]) == ("pl_acc", 0.75)
    metric, fit = report.training_fit([{"loss": 1.0}])  # SFT logs no accuracy
    assert metric == "" and math.isnan(fit)


def _row(model, win, lo, hi, fit, fid, qual=0.5, div=10.0, metric="implicit_acc"):
    return {
        "model": model,
        "fidelity_mean": fid,
        "quality_mean": qual,
        "diversity": div,
        "win_vs_base": win,
        "win_vs_base_ci": f"[{lo:.3f}, {hi:.3f}]",
        "win_vs_base_ci_low": lo,
        "win_vs_base_ci_high": hi,
        "train_fit": fit,
        "train_fit_metric": metric,
    }


def test_beats_base_verdicts_and_reasons():
    table = pd.DataFrame(
        [
            {"model": "base", "fidelity_mean": 0.40, "quality_mean": 0.50, "diversity": 10.0},
            _row("good", 0.70, 0.60, 0.80, 0.9, 0.50),
            _row("flat", 0.52, 0.45, 0.60, 0.55, 0.41, qual=0.4, div=5.0),
            _row("overfit", 0.40, 0.30, 0.48, 0.95, 0.35),
            _row("tokens", 0.52, 0.45, 0.60, 0.40, 0.41, metric="contrastive_acc"),
        ]
    )
    good, flat, overfit, tokens = report.beats_base(table, "fidelity")
    assert "**yes**" in good and "+0.100 vs base" in good and "training accuracy" not in good
    assert "**not shown**" in flat and "under-trained" in flat and "0.55" in flat
    assert "quality -0.100" in flat and "diversity x0.50" in flat
    assert "**no, worse**" in overfit and "does not carry over" in overfit
    # caption matching has chance 1/batch, so no "chance 0.50" judgement
    assert "caption-matching accuracy is 0.40" in tokens and "under-trained" not in tokens
