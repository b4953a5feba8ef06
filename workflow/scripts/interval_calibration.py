"""Coverage and width of every candidate interval on simulated crossed seed x prompt runs with
known truth: the simulation table of docs/statistics.md.

    python3 workflow/scripts/interval_calibration.py            # the grid, 4000 runs a cell
    python3 workflow/scripts/interval_calibration.py --runs 1000 --seeds 3 5 10

Seeded: two calls with the same arguments print the same table. The model and the grid are
those of ``diffpref.calibration`` (and of ``tests/test_seed_statistics.py``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from diffpref import calibration as cal
from diffpref import statistics as st

METHODS = {
    "fiducial VC (reported)": "fiducial",
    "Satterthwaite t": "satterthwaite",
    "cluster-robust t": "cluster",
    "percentile bootstrap": "bootstrap",
}


def intervals(wins, scores, draws: int, boot: int, seed: int) -> dict[str, tuple]:
    """(low, high) per (quantity, method) for every simulated run."""
    out = {}
    for q, mats, w in (
        ("win rate", [wins["a"]], [1.0]),
        ("mean score", [scores["a"]], [1.0]),
        ("win-rate difference", [wins["a"], wins["b"]], [1.0, -1.0]),
    ):
        sq = st.squares(mats, w)
        out[q, "fiducial"] = st.fiducial_interval(sq, draws, seed)[:2]
        out[q, "satterthwaite"] = st.satterthwaite_interval(sq)
        out[q, "cluster"] = st.cluster_robust_interval(mats, w)
        reps = st.crossed_bootstrap(dict(zip("ab", mats, strict=False)), boot, seed)
        rep = sum(wi * reps[k] for wi, k in zip(w, "ab", strict=False))
        out[q, "bootstrap"] = st.percentile(rep)
    xa, xb = scores["a"].mean(-1), scores["b"].mean(-1)
    out["P(A > B)", "fiducial"] = st.improvement(xa, xb, draws, seed)[1:]
    out["P(A > B)", "bootstrap"] = _rliable_bootstrap(xa, xb, boot, seed)
    return out


def _rliable_bootstrap(xa, xb, boot: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """rliable's percentile bootstrap of P(X > Y): each model's runs redrawn independently."""
    rng = np.random.default_rng(seed)
    c = (xa[:, :, None] > xb[:, None, :]) + 0.5 * (xa[:, :, None] == xb[:, None, :])
    n, rx, ry = c.shape
    wx = rng.multinomial(rx, np.full(rx, 1 / rx), size=(n, boot)).astype(float)
    wy = rng.multinomial(ry, np.full(ry, 1 / ry), size=(n, boot)).astype(float)
    return st.percentile(np.einsum("nbi,nij,nbj->nb", wx, c, wy) / (rx * ry))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=4000, help="simulated runs per grid cell")
    ap.add_argument("--draws", type=int, default=2000, help="fiducial draws per interval")
    ap.add_argument("--boot", type=int, default=500, help="bootstrap resamples per interval")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 5])
    ap.add_argument("--prompts", type=int, nargs="+", default=[32, 128])
    ap.add_argument("--shares", type=float, nargs="+", default=[0.0, 0.5, 0.9])
    a = ap.parse_args()
    print(f"coverage of the truth / mean width, {a.runs} simulated runs per cell\n")
    print("| R | P | seed share | quantity | " + " | ".join(METHODS) + " |")
    print("|---" * (4 + len(METHODS)) + "|")
    cell = 0
    t0 = time.time()
    for r in a.seeds:
        for p in a.prompts:
            for share in a.shares:
                rng = np.random.default_rng(cell)
                wins, scores, truth = cal.simulate(rng, a.runs, cal.Design(r, p, share))
                ints = intervals(wins, scores, a.draws, a.boot, cell)
                cell += 1
                quantities = dict.fromkeys(q for q, _ in ints)
                for q in quantities:
                    t = truth[cal.TRUTH_OF[q]]
                    row = []
                    for method in METHODS.values():
                        if (q, method) not in ints:
                            row.append("—")
                            continue
                        lo, hi = ints[q, method]
                        cov = ((lo <= t) & (t <= hi)).mean()
                        row.append(f"{cov:.3f} / {(hi - lo).mean():.3f}")
                    print(f"| {r} | {p} | {share:g} | {q} | " + " | ".join(row) + " |")
    print(
        f"\n(Monte Carlo standard error of a coverage near 0.95: "
        f"{np.sqrt(0.95 * 0.05 / a.runs):.4f}; {time.time() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
