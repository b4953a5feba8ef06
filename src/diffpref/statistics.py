"""Seed-aware statistics for comparing training algorithms over a few training seeds.

Every training seed of every objective is evaluated on the same held-out prompts with the same
sampling seeds, so an objective's results form a matrix M[seed, prompt] (the per-prompt value
averaged over sampling seeds): training seeds and prompts are *crossed* random factors, and
M = mu + seed + prompt + seed x prompt (the interaction and the sampling noise, confounded).

**Which analysis: the design decides.** Objectives at training seed r share their random
streams (``train.seed_streams: shared``, the default: same adapter init, batches, timesteps and
noise), so their seed effects correlate (+0.94 for lair and dpo in a real run, -0.58 for
dpo_rethink, whose reference updates change the path). A difference of two such models is
therefore ONE matrix a - b over (seed, prompt), analysed as a single model
(:func:`design_squares`, :func:`seed_difference` with ``paired``); with independent streams it
is the unpaired contrast below. The choice follows the design, fixed before the data are
seen, never the narrower of the two: paired is 1.5-1.7x narrower at seed correlation 0.9-0.95
and 1.1-1.25x wider at 0 (``docs/statistics.md``).

**Which interval, and why.** Candidates, each for a model's grand mean and for a contrast of
models (paired on prompts, independent across training seeds), were compared on simulations of
this crossed model with known truth (:mod:`diffpref.calibration`; the table and the command in
``docs/statistics.md``; ``tests/test_seed_statistics.py`` holds the reported ones to it):

- the percentile crossed ("pigeonhole") bootstrap (:func:`crossed_bootstrap`), what the report
  printed before: 3 seeds give only 10 distinct seed resamples and shrink the seed variance by
  (R-1)/R; at seed share 0.9 it covers 0.80-0.85 at 3 seeds, 0.87-0.91 at 5;
- the two-way cluster-robust interval (:func:`cluster_robust_interval`, Cameron-Gelbach-
  Miller, t with min(R, P)-1 df): right when seeds dominate, up to 2x too wide when prompts do
  (t with 2 df at R = 3 whatever the seeds' share) and too narrow for differences when seeds
  add nothing;
- the variance-components interval with method-of-moments components and a t quantile with
  Satterthwaite df (:func:`satterthwaite_interval`): the right width on average, but its
  estimated df is too large exactly when the seed mean square comes out small, so at R = 3 and
  seed share 0.9 it covers 0.92-0.93 (Welch's liberal corner of the Behrens-Fisher problem);
- the same variance components with **generalized (fiducial) pivots** (:func:`fiducial_draws`,
  Weerahandi 1993, Hannig 2009): each part of the variance (prompts; seeds, one pivot with
  Welch's df for several models; residual) is replaced by its fiducial draw
  ``part * df / chi2(df)`` and the contrast by ``estimate - Z * sqrt(V*)``. For one model
  (and a paired difference) no df estimate is plugged in; an unpaired difference and P(A > B)
  pool the two models' seed parts into one pivot with an estimated (Welch) df. It does not
  under-cover on the grid (>= 0.944); it is cautious at R = 3 when seeds add little (up to
  0.985: 3 seeds cannot show that seeds do not matter) and covers 0.944-0.973 at R = 5.
  **This is the one the report prints**: a verdict should not claim more than its seeds
  support. Its p-value is Rao-Blackwellized (:func:`fiducial_p`).

No interval is exact here (a Behrens-Fisher-type problem has no exact similar solution), so the
choice is the least conservative candidate that keeps 95% everywhere on the grid.

**P(A > B)** is the probability of improvement of Agarwal et al. (NeurIPS 2021) for the
evaluated prompts: the chance that a random training seed of A scores a higher mean than a
random seed of B. rliable's estimate over 3 x 3 seed pairs takes 10 values and its stratified
bootstrap covers 0.15-0.85, so the report estimates it in the same normal seed model,
Phi(d / sqrt(s_A^2 + s_B^2)), with a fiducial interval whose spread pivot has Welch's df
(:func:`improvement`; 0.95-0.97 on the grid); P(B > A) is exactly its mirror image. When the
two share their training seeds the estimand is the chance that a seed of A beats the same seed
of B, Phi(mean(D) / sd(D)) of the per-seed differences (``paired``). The prompt
categories are not separate tasks: every category is scored by the same seeds, so they are not
independent.

**Power** (:func:`plan`, :func:`detectable_80`) projects the same variance components to more
seeds or prompts, with t quantiles at the planned design's Satterthwaite df; the report names
the 95% half-width (an effect that large is shown only about half the time) and the effect
detected with 80% power apart. **Multiplicity**: :func:`holm`.

Kept apart from :mod:`diffpref.evaluation` (the per-model numbers of the ``evaluate`` stage) so
that changing how the report compares models reruns only the report, not every evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import special, stats

CONFIDENCE = 0.95
POWER = 0.8
PLANNED_SEEDS = (3, 5, 10)  # seed counts the report projects "what could be shown" to


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


# -- mean squares of a contrast ----------------------------------------------------------------
@dataclass(frozen=True)
class ModelSquares:
    """One model's part of a contrast: its weight, seed count, the variance of its per-seed
    means (E = sigma_seed^2 + sigma_resid^2 / P) and its seed x prompt residual mean square
    (E = sigma_resid^2); both 0 with one seed (then its seed spread is not measured)."""

    weight: float
    n_seeds: int
    seed_ms: np.ndarray
    resid_ms: np.ndarray

    @property
    def seed_df(self) -> int:
        return self.n_seeds - 1


@dataclass(frozen=True)
class Squares:
    """Method-of-moments pieces of the contrast sum_m w_m * mean(M_m) of [..., seeds, prompts]
    matrices on the same prompts: its estimate, the variance over prompts of the per-prompt
    contrast of seed means (E = sigma_prompt^2 + sum_m w_m^2 sigma_resid,m^2 / R_m) and each
    model's squares. Leading batch dimensions are kept (simulations)."""

    estimate: np.ndarray
    prompt_ms: np.ndarray
    n_prompts: int
    models: tuple[ModelSquares, ...]

    def resid_df(self, m: ModelSquares) -> int:
        return m.seed_df * (self.n_prompts - 1)


def squares(mats: Sequence[np.ndarray], weights: Sequence[float]) -> Squares:
    """The mean squares of the contrast ``sum(w * mean(m))`` of ``mats`` ([..., R_m, P], the
    same prompts in the same order; training seeds independent between models)."""
    n_prompts = mats[0].shape[-1]
    if n_prompts < 2:
        raise ValueError("squares: needs at least two prompts")
    parts, per_prompt, estimate = [], 0.0, 0.0
    for m, w in zip(mats, weights, strict=True):
        if m.shape[-1] != n_prompts:
            raise ValueError(f"squares: {m.shape[-1]} prompts, not {n_prompts}")
        r = m.shape[-2]
        rows, cols, grand = m.mean(-1), m.mean(-2), m.mean((-2, -1))
        if r > 1:
            seed_ms = rows.var(-1, ddof=1)
            resid = m - rows[..., :, None] - cols[..., None, :] + grand[..., None, None]
            resid_ms = (resid**2).sum((-2, -1)) / ((r - 1) * (n_prompts - 1))
        else:
            seed_ms = resid_ms = np.zeros_like(grand)
        parts.append(ModelSquares(float(w), r, seed_ms, resid_ms))
        per_prompt = per_prompt + w * cols
        estimate = estimate + w * grand
    return Squares(np.asarray(estimate), per_prompt.var(-1, ddof=1), n_prompts, tuple(parts))


def components(sq: Squares) -> dict[str, np.ndarray | list[np.ndarray]]:
    """Variance components (method of moments, truncated at 0): per model the between-seed
    variance of its true per-seed means (evaluation noise removed) and its residual, and the
    prompt variance of the contrast."""
    p = sq.n_prompts
    seed = [np.maximum(0.0, m.seed_ms - m.resid_ms / p) for m in sq.models]
    resid_sum = sum(m.weight**2 * m.resid_ms / m.n_seeds for m in sq.models)
    return {
        "seed": seed,
        "resid": [m.resid_ms for m in sq.models],
        "prompt": np.maximum(0.0, sq.prompt_ms - resid_sum),
    }


def variance(sq: Squares) -> np.ndarray:
    """The method-of-moments variance of the contrast's estimate: sum w^2 seed_ms / R +
    prompt_ms / P - sum w^2 resid_ms / (R P), the unbiased combination, floored at its
    residual part alone (which it always exceeds in expectation)."""
    p = sq.n_prompts
    v, floor = sq.prompt_ms / p, 0.0
    for m in sq.models:
        if m.n_seeds > 1:
            v = v + m.weight**2 * (m.seed_ms / m.n_seeds - m.resid_ms / (m.n_seeds * p))
            floor = floor + m.weight**2 * m.resid_ms / (m.n_seeds * p)
    return np.maximum(v, floor)


# -- intervals ---------------------------------------------------------------------------------
def _pivot(rng: np.random.Generator, ms: np.ndarray, df, shape: tuple) -> np.ndarray:
    """Fiducial draws of a mean square with ``df`` degrees of freedom: ms * df / chi2(df)."""
    if np.ndim(df) == 0:
        return ms[..., None] * df / rng.chisquare(df, shape)
    return ms[..., None] * df / (2 * rng.standard_gamma(np.broadcast_to(df / 2, shape)))


def _welch(parts: list[tuple[np.ndarray, int]]) -> tuple[np.ndarray, np.ndarray]:
    """A sum of independent scaled mean squares ``(c * ms, df)`` and its Welch-Satterthwaite
    df, so that one chi-square pivot stands for all of them."""
    if len(parts) == 1:  # one part: its own df (a scalar: the fast chi-square path)
        return parts[0]
    total = sum(t for t, _ in parts)
    den = sum(t**2 / df for t, df in parts)
    return total, np.where(den > 0, total**2 / np.where(den > 0, den, 1.0), 1.0)


def _last(df):
    """A per-run df array as a column against the draws; a scalar as it is."""
    return df[..., None] if np.ndim(df) else df


def _fiducial(sq: Squares, n_draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """[..., n_draws] fiducial draws of the contrast, estimate - Z sqrt(V*), and the V* each
    was drawn with."""
    rng = np.random.default_rng(seed)
    shape = (*np.shape(sq.estimate), n_draws)
    p = sq.n_prompts
    trained = [m for m in sq.models if m.n_seeds > 1]
    seed_part, seed_df = _welch([(m.weight**2 * m.seed_ms / m.n_seeds, m.seed_df) for m in trained])
    resid_part, resid_df = _welch(
        [(m.weight**2 * m.resid_ms / (m.n_seeds * p), sq.resid_df(m)) for m in trained]
    )
    v = _pivot(rng, np.asarray(sq.prompt_ms / p), p - 1, shape)
    if trained:
        seed_star = _pivot(rng, np.asarray(seed_part), _last(seed_df), shape)
        resid_star = _pivot(rng, np.asarray(resid_part), _last(resid_df), shape)
        v = np.maximum(v + seed_star - resid_star, resid_star)
    return sq.estimate[..., None] - rng.standard_normal(shape) * np.sqrt(v), v


def fiducial_draws(sq: Squares, n_draws: int, seed: int = 0) -> np.ndarray:
    """[..., n_draws] fiducial draws of the contrast: estimate - Z sqrt(V*), V* the variance
    with its prompt, seed and residual parts replaced by fiducial draws ``part * df /
    chi2(df)`` (independent: in a balanced crossed design the seed, prompt and residual mean
    squares are). The seed parts of several models share one pivot with Welch's df: separate
    pivots (a Behrens-Fisher fiducial) cover 0.98-0.99 for a difference at 3 seeds."""
    return _fiducial(sq, n_draws, seed)[0]


def fiducial_p(estimate: np.ndarray, v: np.ndarray, null: float) -> np.ndarray:
    """Two-sided fiducial p-value against ``null``, Rao-Blackwellized: given V* a draw lies
    below ``null`` with probability Phi((null - estimate) / sqrt(V*)) exactly, so averaging
    that over the V* draws replaces counting draws (the same expectation, far less Monte
    Carlo noise, so Holm's decisions near a threshold do not hinge on the draws)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (np.asarray(estimate)[..., None] - null) / np.sqrt(v)
    z = np.where(np.isnan(z), 0.0, z)  # no spread and the estimate on the null: p = 1
    above, below = special.ndtr(z).mean(-1), special.ndtr(-z).mean(-1)
    return np.minimum(1.0, 2 * np.minimum(above, below))


def fiducial_interval(
    sq: Squares, n_draws: int, seed: int = 0, null: float = 0.0, conf: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, two-sided p against ``null``) of the fiducial variance-components interval
    (the report's: see the module docstring); the p-value is :func:`fiducial_p`."""
    d, v = _fiducial(sq, n_draws, seed)
    lo, hi = np.quantile(d, [(1 - conf) / 2, (1 + conf) / 2], axis=-1)
    return lo, hi, fiducial_p(sq.estimate, v, null)


def satterthwaite(sq: Squares) -> tuple[np.ndarray, np.ndarray]:
    """The variance from the method-of-moments components truncated at 0 (a component
    estimated negative drops its mean squares) and Satterthwaite's df for it."""
    p = sq.n_prompts
    resid_sum = sum(m.weight**2 * m.resid_ms / m.n_seeds for m in sq.models if m.n_seeds > 1)
    keep_q = sq.prompt_ms - resid_sum > 0
    terms = [(np.where(keep_q, sq.prompt_ms / p, 0.0), p - 1)]
    for m in sq.models:
        if m.n_seeds > 1:
            r, w2 = m.n_seeds, m.weight**2
            keep_s = m.seed_ms - m.resid_ms / p > 0
            terms.append((np.where(keep_s, w2 * m.seed_ms / r, 0.0), m.seed_df))
            coef = w2 / (r * p) * (1 - keep_s - keep_q)
            terms.append((coef * m.resid_ms, sq.resid_df(m)))
    v = sum(t for t, _ in terms)
    den = sum(t**2 / df for t, df in terms)
    return v, np.where(den > 0, v**2 / np.where(den > 0, den, 1.0), float(p - 1))


def satterthwaite_interval(sq: Squares, conf: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Candidate: estimate +- t(Satterthwaite df) sqrt(method-of-moments variance)."""
    v, df = satterthwaite(sq)
    h = stats.t.ppf((1 + conf) / 2, df) * np.sqrt(v)
    return sq.estimate - h, sq.estimate + h


def cluster_robust_interval(
    mats: Sequence[np.ndarray], weights: Sequence[float], conf: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """Candidate: two-way cluster-robust variance (Cameron, Gelbach & Miller 2011; clusters
    training seeds and prompts, each with its G/(G-1) correction, minus the cell term), t with
    min(R, P) - 1 df."""
    sq = squares(mats, weights)
    p = sq.n_prompts
    v_prompt = sq.prompt_ms / p
    v_seed, v_cell, r_min = 0.0, 0.0, p
    for m, mat in zip(sq.models, mats, strict=True):
        if m.n_seeds > 1:
            r = m.n_seeds
            v_seed = v_seed + m.weight**2 * m.seed_ms / r
            dev = mat - mat.mean((-2, -1))[..., None, None]
            v_cell = v_cell + m.weight**2 * (dev**2).sum((-2, -1)) / (r * p * (r * p - 1))
            r_min = min(r_min, r)
    v = v_seed + v_prompt - v_cell
    v = np.where(v > 0, v, np.maximum(v_seed, v_prompt))
    h = stats.t.ppf((1 + conf) / 2, min(r_min, p) - 1) * np.sqrt(v)
    return sq.estimate - h, sq.estimate + h


def crossed_bootstrap(
    mats: dict[str, np.ndarray],
    n_boot: int,
    seed: int = 0,
    *,
    seeds: bool = True,
    prompts: bool = True,
) -> dict[str, np.ndarray]:
    """Baseline (no longer what the report prints): bootstrap replicates [..., n_boot] of each
    model's grand mean, for ``mats``: model -> M[..., seed, prompt] (same prompts).

    Owen's "pigeonhole" bootstrap for crossed factors: each replicate draws the prompts with
    replacement once, shared by every model and seed, and, independently per model, its
    training seeds; a replicate's mean weights each (seed, prompt) cell by how often both were
    drawn. ``seeds=False`` / ``prompts=False`` hold one factor fixed. Deterministic for
    ``seed``; models are drawn in the order of ``mats``.
    """
    rng = np.random.default_rng(seed)
    first = next(iter(mats.values()))
    batch, n_prompts = first.shape[:-2], first.shape[-1]
    wp = _draw_counts(rng, n_prompts, (*batch, n_boot)) if prompts else 1.0
    out = {}
    for name, m in mats.items():
        if m.shape[-1] != n_prompts:
            raise ValueError(
                f"crossed_bootstrap: {name} has {m.shape[-1]} prompts, not {n_prompts}"
            )
        r = m.shape[-2]
        ws = _draw_counts(rng, r, (*batch, n_boot)) if seeds else 1.0
        wp_, ws_ = (
            np.broadcast_to(wp, (*batch, n_boot, n_prompts)),
            np.broadcast_to(ws, (*batch, n_boot, r)),
        )
        out[name] = np.einsum("...br,...rp,...bp->...b", ws_, m, wp_) / (r * n_prompts)
    return out


def _draw_counts(rng: np.random.Generator, n: int, size: tuple) -> np.ndarray:
    """How often each of ``n`` items is drawn in ``n`` draws with replacement, per replicate."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(float)


def percentile(boot: np.ndarray, conf: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    lo, hi = np.quantile(boot, [(1 - conf) / 2, (1 + conf) / 2], axis=-1)
    return lo, hi


# -- what the report asks ---------------------------------------------------------------------
def task_scores(df: pd.DataFrame, column: str) -> np.ndarray:
    """``df[column]`` averaged per (train_seed, category) as a [seeds, tasks] matrix: the
    prompt categories are rliable's "tasks" (one task when there is no category)."""
    key = df.category.fillna("all") if "category" in df else pd.Series("all", index=df.index)
    m = df.assign(_task=key).groupby(["train_seed", "_task"])[column].mean().unstack("_task")
    return m.sort_index().sort_index(axis=1).to_numpy(dtype=float)


def iqm(values: np.ndarray) -> float:
    """Interquartile mean (25% trimmed on each side) of all values pooled: rliable's
    ``aggregate_iqm`` over runs x tasks (3 per-seed values alone trim nothing)."""
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(values, dtype=float), 0.25, axis=None))


PAIRED, UNPAIRED = "paired by training seed", "unpaired"


def design_squares(a: np.ndarray, b: np.ndarray | None = None, *, paired: bool = False) -> Squares:
    """The mean squares of the analysis a quantity gets, fixed by the design: one model's mean
    (``b`` None); a difference of two models that share their training seeds (``paired``: the
    same seed list and the same random streams, seed r against seed r) as ONE matrix ``a - b``
    over (seed, prompt), a single model's crossed design, so a seed effect they share cancels;
    or an unpaired contrast (seeds independent: each model's seed part, one Welch pivot)."""
    if b is None:
        return squares([a], [1.0])
    if paired:
        if a.shape != b.shape:
            raise ValueError(f"design_squares: paired matrices differ: {a.shape} vs {b.shape}")
        return squares([a - b], [1.0])
    return squares([a, b], [1.0, -1.0])


def interval(
    sq: Squares,
    n_draws: int,
    seed: int = 0,
    null: float = 0.0,
    bounds: tuple[float, float] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The report's (low, high, p, half-width) for ``sq``, batched (the simulations call it
    as the report does): the fiducial interval clipped to ``bounds`` (the values the quantity
    can take: a win rate's [0, 1]) and the unclipped half-width."""
    lo, hi, pv = fiducial_interval(sq, n_draws, seed, null)
    half = (hi - lo) / 2
    if bounds:
        lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
    return lo, hi, pv, half


def estimate(
    sq: Squares,
    null: float,
    n_draws: int,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> dict:
    """The contrast of ``sq`` with its :func:`interval` and p-value against ``null``, its
    variance components, and two named sizes of what this run can decide: ``half_width``, the
    95% half-width (an estimate that large is just shown: a true effect that large is shown
    only about half the time), and ``detectable_80``, the effect shown with 80% power
    (:func:`detectable_80`); ``half_width_at``: the half-width at other seed counts;
    :func:`plan` for the observed effect."""
    lo, hi, pv, half = interval(sq, n_draws, seed, null, bounds)
    est = float(sq.estimate)
    comp = components(sq)
    v = float(variance(sq))
    seed_part = sum(
        m.weight**2 * float(s) / m.n_seeds
        for m, s in zip(sq.models, comp["seed"], strict=True)
        if m.n_seeds > 1
    )
    n_seeds = min(m.n_seeds for m in sq.models if m.weight) if sq.models else 0
    return {
        "mean": est,
        "ci_low": float(lo),
        "ci_high": float(hi),
        "p_value": float(pv),
        "n_seeds": int(n_seeds),
        "n_prompts": sq.n_prompts,
        "seed_share": seed_part / v if v > 0 else float("nan"),
        "half_width": float(half),
        "detectable_80": detectable_80(sq),
        "half_width_at": {r: detectable_at(sq, r, n_draws, seed) for r in PLANNED_SEEDS},
        **plan(sq, est - null),
    }


def seed_estimate(
    mats: dict[str, np.ndarray],
    name: str,
    null: float,
    n_draws: int,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
) -> dict:
    """One model's seed-aware mean with its interval, its per-seed means, the between-seed sd
    of its true per-seed means (evaluation noise removed; NaN with one seed) with its
    one-sided 95% upper bound (:func:`seed_sd_upper`: the estimate truncates at 0 whenever
    the seeds differ less than evaluation noise alone would make them), and power."""
    m = mats[name]
    sq = design_squares(m)
    out = estimate(sq, null, n_draws, seed, bounds)
    out["per_seed"] = [float(v) for v in m.mean(1)]
    one = m.shape[0] < 2
    out["seed_sd"] = float("nan") if one else float(np.sqrt(components(sq)["seed"][0]))
    out["seed_sd_upper"] = float("nan") if one else float(seed_sd_upper(sq, n_draws, seed))
    return out


def seed_difference(
    mats: dict[str, np.ndarray],
    a: str,
    b: str,
    n_draws: int,
    seed: int = 0,
    bounds: tuple[float, float] | None = None,
    *,
    paired: bool,
) -> dict:
    """Seed-aware ``mean(a) - mean(b)``, paired on prompts, and by training seed when the
    design shares the seeds (``paired``, fixed before the data are seen: never the narrower
    of the two): :func:`design_squares`. Its interval, p-value against 0, what it could
    detect, ``analysis`` (:data:`PAIRED` or :data:`UNPAIRED`) and, paired, the per-seed
    differences."""
    sq = design_squares(mats[a], mats[b], paired=paired)
    out = estimate(sq, 0.0, n_draws, seed, bounds)
    out["diff"] = out.pop("mean")
    out["analysis"] = PAIRED if paired else UNPAIRED
    if paired:
        out["per_seed"] = [float(v) for v in (mats[a] - mats[b]).mean(1)]
    return out


def seed_sd_upper(sq: Squares, n_draws: int, seed: int = 0, conf: float = CONFIDENCE) -> np.ndarray:
    """One-sided ``conf`` upper bound on one model's between-seed sd (evaluation noise
    removed; batched): the ``conf`` quantile of its fiducial draws sqrt(max(0, seed_ms* -
    resid_ms* / P)), the seed and residual mean squares replaced by their pivots. Printed where
    the method-of-moments estimate truncates to 0, which says "small", not "none"."""
    (m,) = sq.models
    rng = np.random.default_rng(seed)
    shape = (*np.shape(m.seed_ms), n_draws)
    seed_star = _pivot(rng, np.asarray(m.seed_ms), m.seed_df, shape)
    resid_star = _pivot(rng, np.asarray(m.resid_ms), sq.resid_df(m), shape)
    var = np.maximum(0.0, seed_star - resid_star / sq.n_prompts)
    return np.sqrt(np.quantile(var, conf, axis=-1))


# -- planning ----------------------------------------------------------------------------------
MAX_SEEDS, MAX_PROMPTS, MAX_SCALE = 1000, 1_000_000, 1000.0


def _projected(sq: Squares, comp: dict, r: np.ndarray, p: np.ndarray):
    """Var and Satterthwaite df of the contrast at ``r`` seeds per model (a model with one
    seed, the base, stays one) and ``p`` prompts, from the variance components."""
    v = comp["prompt"] / p
    prompt_ms = comp["prompt"]
    terms = []
    for m, s, e in zip(sq.models, comp["seed"], comp["resid"], strict=True):
        rm = r if m.n_seeds > 1 else np.ones_like(r)
        w2 = m.weight**2
        v = v + w2 * (s / rm + e / (rm * p))
        prompt_ms = prompt_ms + w2 * e / rm
        if m.n_seeds > 1:
            terms.append((w2 * (s + e / p) / rm, rm - 1))
            terms.append((-w2 * e / (rm * p), (rm - 1) * (p - 1)))
    terms.append((prompt_ms / p, p - 1))
    den = sum(t**2 / np.maximum(df, 1) for t, df in terms)
    df = np.where(den > 0, v**2 / np.where(den > 0, den, 1.0), p - 1.0)
    return v, df


def detectable_at(sq: Squares, n_seeds: int, n_draws: int, seed: int = 0) -> float:
    """The half-width the report's interval would have at ``n_seeds`` seeds per trained model
    and the same prompts if the variance components were as estimated here: the fiducial
    interval of a design whose mean squares take their expected values, with the report's
    ``n_draws`` (one draws setting everywhere). A difference smaller than it cannot be shown
    at that seed count. NaN with one training seed (seed variance unmeasured)."""
    if not any(m.n_seeds > 1 for m in sq.models):
        return float("nan")
    comp, p = components(sq), sq.n_prompts
    prompt_ms, models = comp["prompt"], []
    for m, s, e in zip(sq.models, comp["seed"], comp["resid"], strict=True):
        if m.n_seeds > 1:
            models.append(ModelSquares(m.weight, n_seeds, np.asarray(s + e / p), np.asarray(e)))
            prompt_ms = prompt_ms + m.weight**2 * e / n_seeds
        else:  # the base: one fixed model, its prompt part is already in the components
            models.append(m)
    planned = Squares(np.asarray(0.0), np.asarray(prompt_ms), p, tuple(models))
    lo, hi, _ = fiducial_interval(planned, n_draws, seed)
    return float((hi - lo) / 2)


def _power_size(v, df) -> np.ndarray:
    """The effect detected with 80% power at 95%: (t_.975 + t_.8) sqrt(V), t at ``df``."""
    return (stats.t.ppf((1 + CONFIDENCE) / 2, df) + stats.t.ppf(POWER, df)) * np.sqrt(v)


def _detects(v, df, effect: float) -> np.ndarray:
    return _power_size(v, df) <= abs(effect)


def detectable_80(sq: Squares) -> float:
    """The smallest effect this design detects with 80% power at 95% (two-sided), from its
    variance components with t at their Satterthwaite df: 1.25x (t with 2 df) to 1.43x (z)
    the 95% half-width. The same projection as :func:`plan`, so an observed effect at least
    this large is one whose ``seeds_needed`` is within the run's seeds."""
    r = np.asarray([float(min((m.n_seeds for m in sq.models if m.n_seeds > 1), default=1))])
    v, df = _projected(sq, components(sq), r, np.asarray([float(sq.n_prompts)]))
    return float(_power_size(v, df)[0])


def plan(sq: Squares, effect: float) -> dict:
    """What it would take to detect ``effect`` with 80% power at 95%: the seeds (at these
    prompts), the prompts (at these seeds) or the common factor by which both must grow, from
    the variance components and t quantiles at the planned design's Satterthwaite df; None
    where that is not reachable (one factor alone cannot get there, the effect is 0, or one
    training seed leaves the seed variance unmeasured)."""
    out: dict = {"effect": float(effect), "seeds_needed": None, "prompts_needed": None}
    out["scale_both"] = None
    trained = [m.n_seeds for m in sq.models if m.n_seeds > 1]
    if effect == 0 or not trained:
        return out
    comp, r0, p0 = components(sq), min(trained), sq.n_prompts

    def first(ok: np.ndarray, values: np.ndarray):
        return values[np.argmax(ok)].item() if ok.any() else None

    rs = np.arange(r0, MAX_SEEDS + 1, dtype=float)
    out["seeds_needed"] = first(
        _detects(*_projected(sq, comp, rs, np.full_like(rs, p0)), effect), rs
    )
    ps = np.unique(np.geomspace(p0, MAX_PROMPTS, 4000).round())
    out["prompts_needed"] = first(
        _detects(*_projected(sq, comp, np.full_like(ps, r0), ps), effect), ps
    )
    if out["seeds_needed"] is None and out["prompts_needed"] is None:
        ks = np.geomspace(1.0, MAX_SCALE, 4000)
        out["scale_both"] = first(
            _detects(*_projected(sq, comp, np.ceil(ks * r0), np.ceil(ks * p0)), effect), ks
        )
        if out["scale_both"] is None:
            out["scale_both"] = float("inf")
    for k in ("seeds_needed", "prompts_needed"):
        if out[k] is not None:
            out[k] = int(out[k])
    return out


# -- multiplicity ------------------------------------------------------------------------------
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence):
    sorted ascending, p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    m = len(p)
    adj = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return [float(v) for v in out]


# -- P(A > B) ----------------------------------------------------------------------------------
def probability_of_improvement(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) of Agarwal et al. (2021), rliable's definition: for each task, the share of
    (run of X, run of Y) pairs where X scores above Y (ties count one half, the Mann-Whitney U
    statistic), averaged over tasks. ``x``: [runs_x, tasks], ``y``: [runs_y, tasks]."""
    d = x[:, None, :] - y[None, :, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean((0, 1)).mean())


def improvement(
    x: np.ndarray,
    y: np.ndarray,
    n_draws: int,
    seed: int = 0,
    conf: float = CONFIDENCE,
    *,
    paired: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(X > Y) from per-seed scores ``x`` [..., R_x] and ``y`` [..., R_y] (means over the
    same prompts) in the normal seed model. Unpaired (seeds independent): for a random
    training seed of each, Phi(d / sqrt(s_x^2 + s_y^2)); its fiducial interval draws the scale
    with Welch's df (one pivot for both variances) and the mean difference given that scale;
    a model with one run (the base) has no seed spread. ``paired`` (the two share their
    training seeds): the chance that a seed of X beats the same seed of Y, Phi(mean(D) /
    sd(D)) of the per-seed differences D = x - y, the one-sample case of the same interval
    (a shared seed effect cancels in D, as in the paired difference). (estimate, low, high);
    NaN where nothing has two runs. Swapping ``x`` and ``y`` gives exactly 1 - estimate and
    [1 - high, 1 - low] (the draws are antithetic)."""
    if paired:
        x, y = x - y, np.zeros((*np.shape(x)[:-1], 1))
    d = x.mean(-1) - y.mean(-1)
    runs = [(r.var(-1, ddof=1), r.shape[-1]) for r in (x, y) if r.shape[-1] > 1]
    if not runs:
        nan = np.full_like(d, np.nan)
        return nan, nan, nan
    u = sum(s for s, _ in runs)
    v, df = _welch([(s / n, n - 1) for s, n in runs])
    rng = np.random.default_rng(seed)
    shape = (*np.shape(d), n_draws)
    c = _pivot(rng, np.ones_like(d), _last(df), shape)
    z = rng.standard_normal(shape)
    z = np.concatenate([z, -z], -1)  # antithetic: the draws of P(Y > X) mirror these exactly
    c = np.concatenate([c, c], -1)
    safe_u = np.where(u > 0, u, 1.0)[..., None]
    draws = special.ndtr((d[..., None] - z * np.sqrt(c * v[..., None])) / np.sqrt(c * safe_u))
    lo, hi = np.quantile(draws, [(1 - conf) / 2, (1 + conf) / 2], axis=-1)
    est = special.ndtr(d / np.sqrt(safe_u[..., 0]))
    step = np.where(d > 0, 1.0, np.where(d < 0, 0.0, 0.5))  # no spread at all: certain
    flat = u <= 0
    return (np.where(flat, step, est), np.where(flat, step, lo), np.where(flat, step, hi))
