"""Print the README's default-result table from a finished run's report files.

    dvc repro   # or: snakemake --cores all   (a fresh clone, default profile)
    python3 workflow/scripts/readme_results.py [--root .]

One row per objective, best win rate first: the win rate vs the base on the judge with its
calibrated 95% CI, on training wording (the `seen` prompts, where preference data can act),
the win rate on the label reward and the difference (over-optimisation of the label model),
the gap closed toward the base's best-of-K on training wording, the verdict raw and
Holm-adjusted over the family "beats the base", the between-seed sd and the training cost.
The verdict notes, the seed claims and the other yardsticks are in
``results/report/report.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def verdict(row: pd.Series) -> str:
    raw, fam = row.beats_base, row.beats_base_holm
    return raw if raw == fam else f"{raw} (Holm: {fam})"


def table(report: Path) -> str:
    df = pd.read_csv(report / "comparison.csv")
    splits = pd.read_csv(report / "splits.csv").set_index(["model", "split"])
    gaps = pd.read_csv(report / "gap_closed.csv")
    best = gaps[(gaps.split == "seen") & (gaps.yardstick == gaps.yardstick.iloc[0])]
    gap = best.set_index("model")
    lines = [
        "| model | win vs base (judge) [95% CI] | on training wording | on the label reward "
        "| label − judge | gap closed to best-of-K, training wording | beats base? (raw; Holm) "
        "| seed sd | train time | pairs/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in df[df.model != "base"].sort_values("win_vs_base", ascending=False).iterrows():
        seen = splits.loc[(r.model, "seen")]
        g = gap.loc[r.model]
        closed = (
            "undefined"
            if g.gap_closed_ci == "undefined"
            else f"{g.gap_closed:.2f} {g.gap_closed_ci}"
        )
        lines.append(
            f"| {r.model} | {r.win_vs_base:.3f} {r.win_vs_base_ci} | {seen.win_vs_base:.3f} "
            f"{seen.win_vs_base_ci} | {r.label_win_vs_base:.3f} | {r.label_minus_judge:+.3f} "
            f"{r.label_minus_judge_ci} | {closed} | {verdict(r)} | {r.win_seed_sd:.3f} | "
            f"{r.train_time_s:.0f} s | "
            f"{r.groups_per_s:.1f} |"
        )
    base = df[df.model == "base"].iloc[0]
    means = ", ".join(f"{c.removesuffix('_mean')} {base[c]:.3f}" for c in df if c.endswith("_mean"))
    n_seen = int(best.n_prompts.iloc[0])
    return "\n".join(lines) + f"\n\n(base: {means}; {n_seen} prompts in training wording)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    a = ap.parse_args()
    print(table(a.root / "results" / "report"))


if __name__ == "__main__":
    main()
