"""Held-out comparison statistics: win rates with bootstrap CIs, per-category accuracy, diversity.

Bootstraps resample *prompts* (all seeds of a prompt together), because samples of one prompt
are correlated and the question is how a method does on new prompts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def bootstrap_ci(
    values: np.ndarray, clusters: np.ndarray, n_boot: int, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile CI under a cluster bootstrap over ``clusters``."""
    values = np.asarray(values, dtype=float)
    _, inv = np.unique(clusters, return_inverse=True)
    n_c = inv.max() + 1
    sums = np.bincount(inv, weights=values, minlength=n_c)
    counts = np.bincount(inv, minlength=n_c).astype(float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_c, size=(n_boot, n_c))
    boot = sums[draws].sum(1) / counts[draws].sum(1)
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(values.mean()), float(lo), float(hi)


def win_values(ours: pd.DataFrame, theirs: pd.DataFrame, tie: float = 0.0) -> pd.DataFrame:
    """``ours`` matched with ``theirs`` (``prompt_id, seed, score``; one model, e.g. the base)
    on (prompt_id, seed), i.e. the same prompt from the same starting noise, with column
    ``win``: 1 if ours scores higher, 0.5 for a tie, 0 else. Score differences of at most
    ``tie`` are ties: on a continuous reward, an adapter that barely moved the model otherwise
    "wins" or "loses" every sample by noise-level margins."""
    m = ours.merge(
        theirs[["prompt_id", "seed", "score"]], on=["prompt_id", "seed"], suffixes=("", "_other")
    )
    if m.empty:
        raise ValueError("win_values: no matching (prompt_id, seed) samples")
    diff = m.score - m.score_other
    return m.assign(win=(diff > tie).astype(float) + 0.5 * (diff.abs() <= tie))


def win_rate(
    ours: pd.DataFrame, theirs: pd.DataFrame, n_boot: int, seed: int = 0, tie: float = 0.0
) -> dict[str, float]:
    """Fraction of matched (prompt, seed) samples where ours scores higher (:func:`win_values`)
    with its CI over prompts."""
    m = win_values(ours, theirs, tie)
    mean, lo, hi = bootstrap_ci(m.win.to_numpy(), m.prompt_id.to_numpy(), n_boot, seed)
    return {"win_rate": mean, "ci_low": lo, "ci_high": hi, "n": len(m)}


def mean_ci(df: pd.DataFrame, column: str, n_boot: int, seed: int = 0) -> dict[str, float]:
    mean, lo, hi = bootstrap_ci(df[column].to_numpy(), df.prompt_id.to_numpy(), n_boot, seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi}


def per_category(df: pd.DataFrame) -> dict[str, float]:
    """Accuracy (mean of ``correct``) per prompt category and overall."""
    out = {str(c): float(g.correct.mean()) for c, g in df.groupby("category")}
    out["overall"] = float(df.correct.mean())
    return out


def diversity(features: np.ndarray, prompt_ids: np.ndarray) -> float:
    """Mean pairwise L2 distance between samples of the same prompt (mode collapse -> 0)."""
    feats = features.reshape(len(features), -1).astype(np.float64)
    dists = []
    for pid in np.unique(prompt_ids):
        f = feats[prompt_ids == pid]
        if len(f) < 2:
            continue
        d = np.sqrt(((f[:, None] - f[None]) ** 2).sum(-1))
        dists.append(d[np.triu_indices(len(f), 1)].mean())
    return float(np.mean(dists)) if dists else float("nan")
