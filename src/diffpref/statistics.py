"""Seed-aware statistics for comparing training algorithms over a few training seeds.

Every training seed of every objective is evaluated on the same held-out prompts with the same
sampling seeds, so an objective's results form a matrix M[seed, prompt] (the per-prompt value
averaged over sampling seeds): training seeds and prompts are *crossed* factors. Pure functions
on top of that: the crossed bootstrap, IQM and between-seed spread, rliable's probability of
improvement with a stratified bootstrap CI (Agarwal et al., NeurIPS 2021), and power.

Kept apart from :mod:`diffpref.evaluation` (the per-model numbers of the ``evaluate`` stage) so
that changing how the report compares models reruns only the report, not every evaluation.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def seed_matrix(df: pd.DataFrame, column: str, prompts: list[str]) -> np.ndarray:
    """``df[column]`` averaged per (train_seed, prompt_id) as a [seeds, prompts] matrix, seeds
    sorted, prompts in the order given (shared by every model so columns line up)."""
    m = df.groupby(["train_seed", "prompt_id"])[column].mean().unstack("prompt_id")
    missing = set(prompts) - set(m.columns)
    if missing or m.isna().to_numpy().any():
        raise ValueError(
            f"seed_matrix: every training seed needs every prompt ({len(missing)} prompts "
            "missing or a seed incomplete)"
        )
    return m.sort_index()[prompts].to_numpy(dtype=float)


def crossed_bootstrap(
    mats: dict[str, np.ndarray],
    n_boot: int,
    seed: int = 0,
    *,
    seeds: bool = True,
    prompts: bool = True,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of each model's grand mean (mean over its training seeds of the
    mean over prompts), for ``mats``: model -> M[seed, prompt] (same prompts, same order).

    The scheme is a two-level bootstrap for crossed factors (Owen's "pigeonhole" bootstrap):
    each replicate draws the prompts with replacement once, shared by every model and every
    training seed, and, independently per model, that model's training seeds with replacement;
    a replicate's mean weights each drawn (seed, prompt) cell by how often its seed and its
    prompt were drawn. Sharing the prompt draw is what a crossed design needs: every seed saw
    the same prompts, so a hard prompt is hard for all of them, and resampling prompts
    separately within each seed ("seeds, then prompts within each seed") would average that
    shared prompt effect away and give intervals too narrow. It also keeps differences between
    models paired on prompts. ``seeds=False`` / ``prompts=False`` hold one factor fixed, which
    splits the variance between the two sources (:func:`power`). Deterministic for ``seed``;
    models are drawn in the order of ``mats``.
    """
    rng = np.random.default_rng(seed)
    n_prompts = next(iter(mats.values())).shape[1]
    wp = _draw_counts(rng, n_prompts, n_boot) if prompts else np.ones((n_boot, n_prompts))
    out = {}
    for name, m in mats.items():
        if m.shape[1] != n_prompts:
            raise ValueError(f"crossed_bootstrap: {name} has {m.shape[1]} prompts, not {n_prompts}")
        r = m.shape[0]
        ws = _draw_counts(rng, r, n_boot) if seeds else np.ones((n_boot, r))
        out[name] = np.einsum("br,rp,bp->b", ws, m, wp) / (r * n_prompts)
    return out


def _draw_counts(rng: np.random.Generator, n: int, n_boot: int) -> np.ndarray:
    """How often each of ``n`` items is drawn in ``n`` draws with replacement, per replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(float)


def iqm(values: np.ndarray) -> float:
    """Interquartile mean (25% trimmed on each side), rliable's ``aggregate_iqm``."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=float), 0.25, axis=None))


def interval(boot: np.ndarray, alpha: float = 0.05) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def seed_estimate(
    mats: dict[str, np.ndarray], name: str, null: float, n_boot: int, seed: int = 0
) -> dict:
    """One model's seed-aware mean with its crossed-bootstrap CI, the per-seed means, their
    IQM and standard deviation, and what this run can detect against ``null`` (:func:`power`)."""
    m = mats[name]
    one = {name: m}
    boot = crossed_bootstrap(one, n_boot, seed)[name]
    lo, hi = interval(boot)
    per_seed = m.mean(1)
    var_s = float(crossed_bootstrap(one, n_boot, seed, prompts=False)[name].var())
    var_p = float(crossed_bootstrap(one, n_boot, seed, seeds=False)[name].var())
    mean = float(m.mean())
    return {
        "mean": mean,
        "ci_low": lo,
        "ci_high": hi,
        "per_seed": [float(v) for v in per_seed],
        "iqm": iqm(per_seed),
        "seed_sd": float(per_seed.std(ddof=1)) if len(per_seed) > 1 else float("nan"),
        "n_seeds": int(m.shape[0]),
        "n_prompts": int(m.shape[1]),
        **power(mean - null, lo, hi, m.shape[0], m.shape[1], var_s, var_p),
    }


def seed_difference(
    mats: dict[str, np.ndarray], a: str, b: str, n_boot: int, seed: int = 0
) -> dict:
    """Seed-aware ``mean(a) - mean(b)`` with its CI: seeds drawn independently per model,
    prompts shared (paired), as in :func:`crossed_bootstrap`; plus what it can detect."""
    pair = {a: mats[a], b: mats[b]}
    boot = crossed_bootstrap(pair, n_boot, seed)
    lo, hi = interval(boot[a] - boot[b])
    s = crossed_bootstrap(pair, n_boot, seed, prompts=False)
    p = crossed_bootstrap(pair, n_boot, seed, seeds=False)
    diff = float(mats[a].mean() - mats[b].mean())
    n_seeds = min(mats[a].shape[0], mats[b].shape[0])
    out = {"diff": diff, "ci_low": lo, "ci_high": hi, "n_seeds": n_seeds}
    out.update(
        power(
            diff,
            lo,
            hi,
            n_seeds,
            mats[a].shape[1],
            float((s[a] - s[b]).var()),
            float((p[a] - p[b]).var()),
        )
    )
    return out


def power(
    effect: float,
    lo: float,
    hi: float,
    n_seeds: int,
    n_prompts: int,
    var_seeds: float,
    var_prompts: float,
    z: float = 1.96 + 0.84,
) -> dict:
    """What this run could detect, and roughly what it would take to detect ``effect``.

    ``detectable`` is the CI half-width: a true difference smaller than it can hide in the
    interval. The estimate's variance splits into a training-seed part (``var_seeds``, from the
    bootstrap with prompts held fixed, ~σ²_seed/R) and a prompt part (``var_prompts``, seeds
    held fixed, ~σ²_prompt/P). To detect ``effect`` with ~80% power the standard error must
    fall to |effect|/z, z = 1.96 + 0.84; holding prompts fixed that takes
    R·var_seeds/(se² - var_prompts) seeds, holding seeds fixed P·var_prompts/(se² - var_seeds)
    prompts; ``None`` when one factor alone cannot get there (the other's variance already
    exceeds se²) or the effect is 0, and then ``scale_both`` is the factor by which seeds and
    prompts together must grow. With one training seed the seed part is unmeasured (0), so no
    seed count is given.
    """
    se2 = (abs(effect) / z) ** 2

    def needed(n: int, own: float, other: float) -> int | None:
        if se2 <= other or effect == 0:
            return None
        return max(n, int(np.ceil(n * own / (se2 - other))))

    seeds = needed(n_seeds, var_seeds, var_prompts) if n_seeds > 1 else None
    prompts = needed(n_prompts, var_prompts, var_seeds)
    total = var_seeds + var_prompts
    return {
        "effect": float(effect),
        "detectable": float((hi - lo) / 2),
        "seeds_needed": seeds,
        "prompts_needed": prompts,
        # neither factor alone suffices: growing both by this factor shrinks both variances
        "scale_both": float(total / se2)
        if seeds is None and prompts is None and effect != 0 and total > se2 and n_seeds > 1
        else None,
    }


def task_scores(df: pd.DataFrame, column: str) -> np.ndarray:
    """``df[column]`` averaged per (train_seed, category) as a [seeds, tasks] matrix: the
    prompt categories are rliable's "tasks" (one task when there is no category)."""
    key = df.category.fillna("all") if "category" in df else pd.Series("all", index=df.index)
    m = df.assign(_task=key).groupby(["train_seed", "_task"])[column].mean().unstack("_task")
    return m.sort_index().sort_index(axis=1).to_numpy(dtype=float)


def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) of Agarwal et al. (2021), rliable's definition: for each task, the probability
    that a random run of X scores above a random run of Y (ties count one half, the
    Mann-Whitney U statistic over runs_x * runs_y), averaged over tasks. ``x``: [runs_x,
    tasks], ``y``: [runs_y, tasks]."""
    return float(_compare(x, y).mean((0, 1)).mean())


def _compare(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """[runs_x, runs_y, tasks]: 1 where x beats y, 0.5 on ties, 0 else."""
    d = x[:, None, :] - y[None, :, :]
    return (d > 0) + 0.5 * (d == 0)


def poi_interval(
    x: np.ndarray, y: np.ndarray, n_boot: int, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """P(X > Y) and its percentile CI under rliable's stratified independent bootstrap: in
    every replicate and every task, X's runs and Y's runs are redrawn with replacement,
    independently. Seeded (rliable itself draws from numpy's global generator)."""
    rng = np.random.default_rng(seed)
    c = _compare(x, y)  # [rx, ry, t]
    rx, ry, t = c.shape
    wx = rng.multinomial(rx, np.full(rx, 1 / rx), size=(n_boot, t)).astype(float)
    wy = rng.multinomial(ry, np.full(ry, 1 / ry), size=(n_boot, t)).astype(float)
    boot = np.einsum("bti,ijt,btj->bt", wx, c, wy).mean(1) / (rx * ry)
    lo, hi = interval(boot, alpha)
    return float(c.mean((0, 1)).mean()), lo, hi
