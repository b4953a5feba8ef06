"""Simulations of the crossed training-seed x prompt model with known truth: how often each
interval of :mod:`diffpref.statistics` covers the truth, and how wide it is.

Used by ``tests/test_seed_statistics.py`` (the intervals the report prints, on the grid
R in {3, 5}, P in {32, 128}, seed share in {0, 0.5, 0.9}, and beyond it: shared seeds, a
variance ratio of 10, heavy-tailed and two-moded seed effects, R = 2) and by
``workflow/scripts/interval_calibration.py`` (every candidate: the table of
``docs/statistics.md``). Not imported by any stage.

The model, per objective, training seed r, prompt p and sampling seed k (latent scale):
``z = mu + seed_r + prompt_p + (seed x prompt)_rp + noise_rpk``. A win against the base is
``z - base_pk`` above the tie threshold (1), within it (0.5) or below (0); a reward score is
``z`` itself. Two objectives share part of their prompt effect (paired on prompts) and the base
samples, and their seed effects correlate ``Design.seed_corr`` (0: independent seeds; shared
training seeds make it large). The *seed share* is the seed part of the variance of a
grand mean: sigma_seed^2 / R over sigma_seed^2 / R + sigma_prompt^2 / P + sigma_rest^2 / (R P).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from diffpref import statistics as st
from diffpref.comparison import DIFFERENCE, RATE

PROMPT_VAR, INTERACTION_VAR, NOISE_VAR, BASE_VAR = 0.3, 0.2, 0.8, 0.8
SAMPLES = 2  # sampling seeds per prompt, as evaluate.seeds
TIE = 0.1  # latent tie threshold: ~8% of wins are ties
PROMPT_CORR = 0.7  # how much of the prompt effect two objectives share


SHAPES = ("normal", "t3", "two_modes")  # the law of a training seed's effect (unit variance)


@dataclass(frozen=True)
class Design:
    """A simulated design: R seeds, P prompts, the seed share of A's grand mean; the
    correlation of A's and B's seed effects (``seed_corr``: shared training seeds make it
    large, e.g. +0.94 for lair and dpo; the report then pairs them), B's seed variance over
    A's (``ratio``) and the law of a seed effect (``shape``: normal; t with 3 df, heavy tails;
    two_modes, a seed lands in one of two basins, +-1 sd)."""

    n_seeds: int
    n_prompts: int
    seed_share: float
    seed_corr: float = 0.0
    ratio: float = 3.0
    shape: str = "normal"

    def seed_var(self, scale: float = 1.0) -> float:
        """sigma_seed^2 giving ``seed_share`` of a grand mean's latent variance."""
        r, p = self.n_seeds, self.n_prompts
        rest = PROMPT_VAR / p + (INTERACTION_VAR + (NOISE_VAR + BASE_VAR) / SAMPLES) / (r * p)
        return scale * r * self.seed_share / (1 - self.seed_share) * rest


def _unit(rng: np.random.Generator, shape: str, size: tuple) -> np.ndarray:
    """Seed effects of law ``shape`` with mean 0 and variance 1."""
    if shape == "t3":
        return rng.standard_t(3, size) / np.sqrt(3.0)
    if shape == "two_modes":
        return rng.choice([-1.0, 1.0], size)
    return rng.standard_normal(size)


def _law(shape: str) -> tuple[np.ndarray, np.ndarray]:
    """Points and weights of the unit law ``shape``, for exact-enough expectations: Gauss-
    Hermite nodes (normal), 1000 quantile midpoints (t3), the two basins."""
    if shape == "t3":
        x = stats.t.ppf((np.arange(1000) + 0.5) / 1000, 3) / np.sqrt(3.0)
        return x, np.full(x.size, 1 / x.size)
    if shape == "two_modes":
        return np.array([-1.0, 1.0]), np.array([0.5, 0.5])
    x, w = np.polynomial.hermite_e.hermegauss(60)
    return x, w / w.sum()


def _win_rate(mu: float, sd: float, law: tuple[np.ndarray, np.ndarray]) -> float:
    """E[win] for seed effects ``sd`` x ``law``: given the seed, z - base is normal with every
    other variance part."""
    x, w = law
    rest = np.sqrt(PROMPT_VAR + INTERACTION_VAR + NOISE_VAR + BASE_VAR)
    m = mu + sd * x
    lo, hi = stats.norm.cdf((-TIE - m) / rest), stats.norm.cdf((TIE - m) / rest)
    return float((w * (1 - hi + 0.5 * (hi - lo))).sum())


def _latent(rng, n: int, d: Design, mu: float, prompt: np.ndarray, seed: np.ndarray):
    """[n, R, P, K] latent scores of one objective, given its [n, 1, P, 1] prompt effects and
    [n, R, 1, 1] seed effects."""
    r, p = d.n_seeds, d.n_prompts
    sp = np.sqrt(INTERACTION_VAR) * rng.standard_normal((n, r, p, 1), np.float32)
    e = np.sqrt(NOISE_VAR) * rng.standard_normal((n, r, p, SAMPLES), np.float32)
    return mu + seed + prompt + sp + e


def _win(z: np.ndarray) -> np.ndarray:
    return (z > TIE) + 0.5 * (np.abs(z) <= TIE)


def simulate(rng: np.random.Generator, n: int, d: Design, mus=(0.3, 0.1)):
    """``n`` simulated runs of two objectives A and B (B's seed variance ``d.ratio`` x A's,
    their seed effects correlated ``d.seed_corr``) and the base: their win matrices [n, R, P]
    (means over sampling seeds), score matrices, the base's scores [n, 1, P], and the truths
    (P(A > B) unpaired and paired: normal seed effects only, the estimand's model)."""
    p = d.n_prompts
    q = rng.normal(0, np.sqrt(PROMPT_VAR), (n, 1, p, 1))
    q_b = PROMPT_CORR * q + np.sqrt(1 - PROMPT_CORR**2) * rng.normal(
        0, np.sqrt(PROMPT_VAR), q.shape
    )
    base = rng.normal(0, np.sqrt(BASE_VAR), (n, 1, p, SAMPLES))
    va, vb, c = d.seed_var(), d.seed_var(d.ratio), d.seed_corr
    size = (n, d.n_seeds, 1, 1)
    ea = _unit(rng, d.shape, size)
    eb = c * ea + np.sqrt(1 - c**2) * _unit(rng, d.shape, size)
    za = _latent(rng, n, d, mus[0], q, (np.sqrt(va) * ea).astype(np.float32))
    zb = _latent(rng, n, d, mus[1], q_b, (np.sqrt(vb) * eb).astype(np.float32))
    wins = {"a": _win(za - base).mean(-1), "b": _win(zb - base).mean(-1)}
    scores = {k: v.mean(-1, dtype=float) for k, v in (("a", za), ("b", zb), ("base", base))}
    # B's seed law: c x A's + sqrt(1 - c^2) x an independent one (the product of two laws)
    x, w = _law(d.shape)
    law_b = ((c * x[:, None] + np.sqrt(1 - c**2) * x[None, :]).ravel(), np.outer(w, w).ravel())
    win_a = _win_rate(mus[0], np.sqrt(va), (x, w))
    # a random seed's mean over these prompts, given the prompts (P(A > B)'s estimand)
    rest = (INTERACTION_VAR + NOISE_VAR / SAMPLES) / p
    cond = mus[0] + q.mean((1, 2, 3)) - mus[1] - q_b.mean((1, 2, 3))
    spread_a = va + rest
    truth = {
        "win_a": win_a,
        "win_diff": win_a - _win_rate(mus[1], np.sqrt(vb), law_b),
        "score_a": mus[0],
        "poi_ab": stats.norm.cdf(cond / np.sqrt(spread_a + vb + rest)),
        "poi_ab_paired": stats.norm.cdf(
            cond / np.sqrt(va + vb - 2 * c * np.sqrt(va * vb) + 2 * rest)
        ),
        "poi_a_base": stats.norm.cdf(
            (mus[0] + q.mean((1, 2, 3)) - scores["base"].mean((1, 2))) / np.sqrt(spread_a)
        ),
    }
    return wins, scores, truth


REPORTED = ("win rate", "mean score", "win-rate difference", "P(A > B)", "P(A > base)")


def reported_intervals(
    wins, scores, n_draws: int, seed: int = 0, *, paired: bool = False
) -> dict[str, tuple]:
    """The report's intervals for every simulated run, keyed like :data:`REPORTED`, through
    the functions the report's numbers come from (:func:`statistics.design_squares` and
    :func:`statistics.interval` under ``seed_estimate`` / ``seed_difference``;
    :func:`statistics.improvement`), A vs B paired by training seed when ``paired`` (the
    design shares the seeds)."""
    ints = {}
    for name, a, b, bounds in (
        ("win rate", wins["a"], None, RATE),
        ("mean score", scores["a"], None, None),
        ("win-rate difference", wins["a"], wins["b"], DIFFERENCE),
    ):
        sq = st.design_squares(a, b, paired=paired)
        ints[name] = st.interval(sq, n_draws, seed, bounds=bounds)[:2]
    xa, xb = scores["a"].mean(-1), scores["b"].mean(-1)
    ints["P(A > B)"] = st.improvement(xa, xb, n_draws, seed, paired=paired)[1:]
    ints["P(A > base)"] = st.improvement(xa, scores["base"].mean(-1), n_draws, seed)[1:]
    return ints


TRUTH_OF = {
    "win rate": "win_a",
    "mean score": "score_a",
    "win-rate difference": "win_diff",
    "P(A > B)": "poi_ab",
    "P(A > base)": "poi_a_base",
}


def coverage(
    ints: dict[str, tuple], truth: dict, *, paired: bool = False
) -> dict[str, tuple[float, float]]:
    """(share of runs whose interval covers the truth, mean width) per interval (P(A > B):
    the paired estimand when ``paired``)."""
    out = {}
    for name, (lo, hi) in ints.items():
        key = TRUTH_OF[name.split(" [")[0]]
        t = truth[f"{key}_paired" if paired and key == "poi_ab" else key]
        out[name] = (float(((lo <= t) & (t <= hi)).mean()), float((hi - lo).mean()))
    return out
