"""The many-seed check: train one objective on N >= 12 training seeds of the embedded world and
measure how often intervals from its 3- and 5-seed subsets cover the N-seed estimate
(docs/statistics.md).

    python3 workflow/scripts/many_seeds.py --run            # train + evaluate dpo on 12 seeds
    python3 workflow/scripts/many_seeds.py                  # only the analysis of those runs

``--run`` asks Snakemake for ``results/eval/<objective>/seed<i>`` for every training seed of the
profile ``manyseeds`` (params.yaml: seeds 0-11, nothing else changed), so only that objective's
jobs (and the shared upstream ones, which a default run has already made) run:

    snakemake --rerun-triggers mtime params input --cores all \
        results/eval/dpo/seed{0..11}/round1 --config profile=manyseeds

The default profile's dpo trains in ~40 s per seed on 2 free CPU cores (plus its evaluation,
~15 s).

The prompt part is handled as the comparison requires: every subset and the N-seed estimate
are evaluated on the same prompts, so the target (the N-seed mean win rate) carries the same
prompt effect as each subset, and only the seed part of an interval can be checked against
it. A subset's interval for the N-seed mean is therefore the seed part of the report's
interval (prompts held fixed: t with k - 1 df on the per-seed means), with the finite-
population factor sqrt(1 - k/N) (the subset is part of the N seeds; under the normal seed model
this interval covers the N-seed mean exactly 95% of the time). The same check is run for the
percentile bootstrap over the subset's seeds (the seed part of the interval the report used to
print) and for a z interval. The report's full interval (seeds and prompts) is also checked:
it must cover at least as often, having a prompt part the target does not vary by.
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from diffpref import evaluation
from diffpref import statistics as st
from diffpref.config import validate, with_profile


def run(root: Path, objective: str, seeds: list[int], profile: str, cores: str) -> None:
    targets = [f"results/eval/{objective}/seed{s}/round1" for s in seeds]
    # the profile changes every job's command line (--profile), which Snakemake's "code"
    # trigger would rerun; the jobs' sources, params and inputs are what decide. --config
    # takes every value after it: the targets go first
    triggers = ["--rerun-triggers", "mtime", "params", "input"]
    cmd = ["snakemake", *triggers, "--cores", cores, *targets, "--config", f"profile={profile}"]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=root, check=True)


def win_matrix(root: Path, objective: str, seeds: list[int], reward: str, tie: float):
    """[seeds, prompts] per-prompt win rates of ``objective`` vs the base (sampling seeds
    averaged), as the report computes them."""
    cols = ["prompt_id", "seed", "reward", "score"]
    base = pd.read_parquet(root / "results/eval/base/scores.parquet", columns=cols)
    base = base[base.reward == reward]
    frames = []
    for s in seeds:
        df = pd.read_parquet(
            root / f"results/eval/{objective}/seed{s}/round1/scores.parquet", columns=cols
        )
        frames.append(
            evaluation.win_values(df[df.reward == reward], base, tie).assign(train_seed=s)
        )
    prompts = sorted(set(base.prompt_id))
    return st.seed_matrix(pd.concat(frames), "win", prompts)


def subset_coverage(m: np.ndarray, k: int, n_boot: int, draws: int) -> dict[str, float]:
    """Over every k-seed subset of the rows of ``m``: how often each interval covers the
    N-seed mean win rate (see the module docstring), and the calibrated one's mean width."""
    n = m.shape[0]
    per_seed = m.mean(1)
    target = per_seed.mean()
    fpc = np.sqrt(1 - k / n)
    subsets = np.array(list(itertools.combinations(range(n), k)))
    x = per_seed[subsets]  # [subsets, k]
    mean, sd = x.mean(1), x.std(1, ddof=1)
    out = {"subsets": len(subsets)}
    half_t = stats.t.ppf(0.975, k - 1) * sd / np.sqrt(k) * fpc
    out["t (calibrated seed part)"] = float((np.abs(mean - target) <= half_t).mean())
    out["width"] = float(2 * half_t.mean())
    half_z = 1.96 * sd / np.sqrt(k) * fpc
    out["z"] = float((np.abs(mean - target) <= half_z).mean())
    rng = np.random.default_rng(0)
    w = rng.multinomial(k, np.full(k, 1 / k), size=(len(subsets), n_boot)) / k
    boot = np.einsum("sbk,sk->sb", w, x)
    lo, hi = np.quantile(boot, [0.025, 0.975], axis=1)
    lo, hi = mean + (lo - mean) * fpc, mean + (hi - mean) * fpc
    out["percentile bootstrap"] = float(((lo <= target) & (target <= hi)).mean())
    full = []
    for idx in subsets:
        sq = st.squares([m[idx]], [1.0])
        flo, fhi, _ = st.fiducial_interval(sq, draws, 0)
        full.append(flo <= target <= fhi)
    out["report's full interval"] = float(np.mean(full))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."), help="the project (default: .)")
    ap.add_argument("--objective", default="dpo")
    ap.add_argument("--profile", default="manyseeds", help="its train_seeds are the N seeds")
    ap.add_argument("--run", action="store_true", help="train and evaluate them first")
    ap.add_argument("--cores", default="all")
    ap.add_argument("--subsets", type=int, nargs="+", default=[3, 5])
    a = ap.parse_args()
    raw = yaml.safe_load((a.root / "params.yaml").read_text())
    cfg = validate(with_profile({**raw, "profile": a.profile}))
    seeds = list(cfg.train_seeds)
    if len(seeds) < 12:
        sys.exit(f"the many-seed check needs at least 12 seeds; profile {a.profile} has {seeds}")
    if a.run:
        run(a.root, a.objective, seeds, a.profile, a.cores)
    ev = cfg.evaluate
    m = win_matrix(a.root, a.objective, seeds, ev.judge, ev.tie_threshold)
    comp = st.components(st.squares([m], [1.0]))
    s2, q2, e2 = float(comp["seed"][0]), float(comp["prompt"]), float(comp["resid"][0])
    p = m.shape[1]
    share3 = s2 / 3 / (s2 / 3 + q2 / p + e2 / (3 * p))
    print(
        f"{a.objective}: {m.shape[0]} seeds x {p} prompts; win rate {m.mean():.3f}; per seed "
        f"{' '.join(f'{x:.3f}' for x in m.mean(1))}; between-seed sd {np.sqrt(s2):.4f} "
        f"(evaluation noise removed); seed share of a 3-seed mean's variance {share3:.2f}\n"
    )
    rows = [{"k": k, **subset_coverage(m, k, 2000, 4000)} for k in a.subsets]
    _print_table(rows)
    print(f"\nhow many seeds a question needs ({a.objective}'s components, {p} prompts)\n")
    _print_table(seeds_needed(m, 20000))  # the draws this table was made with


def seeds_needed(m: np.ndarray, draws: int, effects=(0.02, 0.03, 0.05, 0.1)) -> list[dict]:
    """From this objective's variance components: whether a win-rate gain over the base of
    each size can be shown at 3, 5, 10 seeds (and the smallest that can), and the seeds per
    objective (at these prompts) that a difference between two objectives this noisy needs at
    80% power (two halves of the seeds stand for the two: same spread, shared prompts)."""
    one = st.squares([m], [1.0])
    half = m.shape[0] // 2
    two = st.squares([m[:half], m[half:]], [1.0, -1.0])
    shown = {r: st.detectable_at(one, r, draws) for r in st.PLANNED_SEEDS}
    rows = []
    for e in effects:
        row: dict = {"effect": e}
        row |= {f"vs base at {r} seeds": "shown" if h <= e else "-" for r, h in shown.items()}
        need = st.plan(two, e)["seeds_needed"]
        row["A vs B: seeds each"] = need if need is not None else f"> {st.MAX_SEEDS}"
        rows.append(row)
    smallest = {f"vs base at {r} seeds": f"±{h:.3f}" for r, h in shown.items()}
    rows.append({"effect": "smallest shown", **smallest, "A vs B: seeds each": ""})
    return rows


def _print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        cells = [f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
