"""Print the README's default-result table from a finished run's report files.

    dvc repro   # or: snakemake --cores all   (a fresh clone, default profile)
    python3 workflow/scripts/readme_results.py [--root .]

One row per objective, best win rate first: the win rate vs the base with its calibrated 95%
CI, the IQM over seeds x categories, the between-seed sd (evaluation noise removed), the mean
rewards, the verdict raw and Holm-adjusted over the family "beats the base" (with "not shown
on held-out wording" where the gain does not carry over), and the training cost. The verdict
text, the seed claims and the wording overlap are in ``results/report/report.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd


def verdict(row: pd.Series, held: pd.Series | None) -> str:
    raw, fam = row.beats_base, row.beats_base_holm
    out = raw if raw == fam else f"{raw} (Holm: {fam})"
    if raw == "yes" and held is not None and held.win_ci_low <= 0.5:
        out += " (not shown on held-out wording)"
    return out


def table(report: Path, reward: str = "fidelity") -> str:
    df = pd.read_csv(report / "comparison.csv")
    splits = pd.read_csv(report / "splits.csv") if (report / "splits.csv").exists() else None
    held = (
        splits[splits.split == "heldout_wording"].set_index("model")
        if splits is not None and not splits.empty
        else pd.DataFrame()
    )
    lines = [
        "| model | win vs base [95% CI] | IQM | seed sd | fidelity | quality | beats base? "
        "(raw; Holm over the family) | train time | pairs/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows = df[df.model != "base"].sort_values("win_vs_base", ascending=False)
    for _, r in rows.iterrows():
        h = held.loc[r.model] if r.model in held.index else None
        lines.append(
            f"| {r.model} | {r.win_vs_base:.3f} {r.win_vs_base_ci} | {r.win_iqm:.3f} | "
            f"{r.win_seed_sd:.3f} | {r[f'{reward}_mean']:.3f} | {r.quality_mean:.3f} | "
            f"{verdict(r, h)} | {r.train_time_s:.0f} s | {r.groups_per_s:.1f} |"
        )
    base = df[df.model == "base"].iloc[0]
    lines.append(
        f"\n(base: {reward} {base[f'{reward}_mean']:.3f}, quality {base.quality_mean:.3f})"
    )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--reward", default="fidelity")
    a = ap.parse_args()
    print(table(a.root / "results" / "report", a.reward))


if __name__ == "__main__":
    main()
