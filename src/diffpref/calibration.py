"""Simulations of the crossed training-seed x prompt model with known truth: how often each
interval of :mod:`diffpref.statistics` covers the truth, and how wide it is.

Used by ``tests/test_interval_calibration.py`` (the intervals the report prints, on the grid
R in {3, 5}, P in {32, 128}, seed share in {0, 0.5, 0.9}) and by
``workflow/scripts/interval_calibration.py`` (every candidate: the table of
``docs/statistics.md``). Not imported by any stage.

The model, per objective, training seed r, prompt p and sampling seed k (latent scale):
``z = mu + seed_r + prompt_p + (seed x prompt)_rp + noise_rpk``. A win against the base is
``z - base_pk`` above the tie threshold (1), within it (0.5) or below (0); a reward score is
``z`` itself. Two objectives share part of their prompt effect (paired on prompts) and the base
samples, never their training seeds. The *seed share* is the seed part of the variance of a
grand mean: sigma_seed^2 / R over sigma_seed^2 / R + sigma_prompt^2 / P + sigma_rest^2 / (R P).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from diffpref import statistics as st

PROMPT_VAR, INTERACTION_VAR, NOISE_VAR, BASE_VAR = 0.3, 0.2, 0.8, 0.8
SAMPLES = 2  # sampling seeds per prompt, as evaluate.seeds
TIE = 0.1  # latent tie threshold: ~8% of wins are ties
PROMPT_CORR = 0.7  # how much of the prompt effect two objectives share


@dataclass(frozen=True)
class Design:
    n_seeds: int
    n_prompts: int
    seed_share: float

    def seed_var(self, scale: float = 1.0) -> float:
        """sigma_seed^2 giving ``seed_share`` of a grand mean's latent variance."""
        r, p = self.n_seeds, self.n_prompts
        rest = PROMPT_VAR / p + (INTERACTION_VAR + (NOISE_VAR + BASE_VAR) / SAMPLES) / (r * p)
        return scale * r * self.seed_share / (1 - self.seed_share) * rest


def _latent(rng, n: int, d: Design, mu: float, prompt: np.ndarray, seed_var: float):
    """[n, R, P, K] latent scores of one objective, given its [n, 1, P, 1] prompt effects."""
    r, p = d.n_seeds, d.n_prompts
    s = np.sqrt(seed_var) * rng.standard_normal((n, r, 1, 1), np.float32)
    sp = np.sqrt(INTERACTION_VAR) * rng.standard_normal((n, r, p, 1), np.float32)
    e = np.sqrt(NOISE_VAR) * rng.standard_normal((n, r, p, SAMPLES), np.float32)
    return mu + s + prompt + sp + e


def _win(z: np.ndarray) -> np.ndarray:
    return (z > TIE) + 0.5 * (np.abs(z) <= TIE)


def _win_rate(mu: float, seed_var: float) -> float:
    """E[win]: z - base is normal with every variance part added."""
    sd = np.sqrt(seed_var + PROMPT_VAR + INTERACTION_VAR + NOISE_VAR + BASE_VAR)
    lo, hi = stats.norm.cdf([(-TIE - mu) / sd, (TIE - mu) / sd])
    return float(1 - hi + 0.5 * (hi - lo))


def simulate(rng: np.random.Generator, n: int, d: Design, mus=(0.3, 0.1), ratio: float = 3.0):
    """``n`` simulated runs of two objectives A and B (B's seed variance ``ratio`` x A's) and
    the base: their win matrices [n, R, P] (means over sampling seeds), score matrices, the
    base's scores [n, 1, P], and the truths."""
    p = d.n_prompts
    q = rng.normal(0, np.sqrt(PROMPT_VAR), (n, 1, p, 1))
    q_b = PROMPT_CORR * q + np.sqrt(1 - PROMPT_CORR**2) * rng.normal(
        0, np.sqrt(PROMPT_VAR), q.shape
    )
    base = rng.normal(0, np.sqrt(BASE_VAR), (n, 1, p, SAMPLES))
    va, vb = d.seed_var(), d.seed_var(ratio)
    za, zb = _latent(rng, n, d, mus[0], q, va), _latent(rng, n, d, mus[1], q_b, vb)
    wins = {"a": _win(za - base).mean(-1), "b": _win(zb - base).mean(-1)}
    scores = {k: v.mean(-1, dtype=float) for k, v in (("a", za), ("b", zb), ("base", base))}
    # a random seed's mean over these prompts, given the prompts (P(A > B)'s estimand)
    rest = (INTERACTION_VAR + NOISE_VAR / SAMPLES) / p
    cond = {"a": mus[0] + q.mean((1, 2, 3)), "b": mus[1] + q_b.mean((1, 2, 3))}
    spread = {"a": va + rest, "b": vb + rest}
    truth = {
        "win_a": _win_rate(mus[0], va),
        "win_diff": _win_rate(mus[0], va) - _win_rate(mus[1], vb),
        "score_a": mus[0],
        "poi_ab": stats.norm.cdf((cond["a"] - cond["b"]) / np.sqrt(spread["a"] + spread["b"])),
        "poi_a_base": stats.norm.cdf(
            (cond["a"] - scores["base"].mean((1, 2))) / np.sqrt(spread["a"])
        ),
    }
    return wins, scores, truth


REPORTED = ("win rate", "mean score", "win-rate difference", "P(A > B)", "P(A > base)")


def reported_intervals(wins, scores, n_draws: int, seed: int = 0) -> dict[str, tuple]:
    """The report's intervals (fiducial variance components; P(A > B) fiducial Welch) for
    every simulated run, keyed like :data:`REPORTED`."""
    ints = {}
    for name, mats, w in (
        ("win rate", [wins["a"]], [1.0]),
        ("mean score", [scores["a"]], [1.0]),
        ("win-rate difference", [wins["a"], wins["b"]], [1.0, -1.0]),
    ):
        lo, hi, _ = st.fiducial_interval(st.squares(mats, w), n_draws, seed)
        ints[name] = (lo, hi)
    xa, xb = scores["a"].mean(-1), scores["b"].mean(-1)
    ints["P(A > B)"] = st.improvement(xa, xb, n_draws, seed)[1:]
    ints["P(A > base)"] = st.improvement(xa, scores["base"].mean(-1), n_draws, seed)[1:]
    return ints


TRUTH_OF = {
    "win rate": "win_a",
    "mean score": "score_a",
    "win-rate difference": "win_diff",
    "P(A > B)": "poi_ab",
    "P(A > base)": "poi_a_base",
}


def coverage(ints: dict[str, tuple], truth: dict) -> dict[str, tuple[float, float]]:
    """(share of runs whose interval covers the truth, mean width) per interval."""
    out = {}
    for name, (lo, hi) in ints.items():
        t = truth[TRUTH_OF[name.split(" [")[0]]]
        out[name] = (float(((lo <= t) & (t <= hi)).mean()), float((hi - lo).mean()))
    return out
