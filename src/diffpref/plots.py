"""The figures: the win-rate forest plot, reward and loss plots, the category and P(A > B) heat
maps and a same-seed image grid. Used by the report and, for single runs, by the MLflow record
(train's loss curve, evaluate's sample grid)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd


def plot_forest(table: pd.DataFrame, reward: str, out: Path) -> None:
    """The headline: each objective's seed-aware win rate vs base with its 95% CI, sorted by
    effect, on one axis with the no-difference line at 0.5 (rliable's interval plots)."""
    t = table[table.model != "base"].sort_values("win_vs_base")
    fig, ax = plt.subplots(figsize=(5.5, 0.32 * len(t) + 1.1))
    y = np.arange(len(t))
    colors = [
        "#2a7" if lo > 0.5 else "#c44" if hi < 0.5 else "#888"
        for lo, hi in zip(t.win_vs_base_ci_low, t.win_vs_base_ci_high)
    ]
    ax.hlines(y, t.win_vs_base_ci_low, t.win_vs_base_ci_high, colors=colors, lw=2.5)
    ax.scatter(t.win_vs_base, y, color="black", zorder=3, s=14)
    ax.axvline(0.5, color="#555", ls="--", lw=1)
    ax.set_yticks(y, t.model, fontsize=8)
    ax.set_xlabel(
        f"win rate vs base on {reward} (95% CI over training seeds x prompts)", fontsize=8
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_rewards(table: pd.DataFrame, rewards: list[str], out: Path) -> None:
    """Seed-aware mean of each reward per model with its 95% CI."""
    names = list(table.model)
    fig, axes = plt.subplots(1, len(rewards), figsize=(4 * len(rewards), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rewards):
        mean = table[f"{r}_mean"].to_numpy()
        err = [mean - table[f"{r}_ci_low"].to_numpy(), table[f"{r}_ci_high"].to_numpy() - mean]
        ax.bar(names, mean, yerr=err, capsize=3, color="#4c72b0")
        ax.set_title(f"held-out {r} (95% CI, seeds x prompts)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_training(train_metrics: dict[str, list[dict]], out: Path) -> None:
    """Every objective's loss curve, one line per training seed in the objective's colour."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for i, (n, runs) in enumerate(train_metrics.items()):
        for k, t in enumerate(runs):
            h = t["history"]
            ax.plot(
                [r["step"] for r in h],
                [r["loss"] for r in h],
                color=f"C{i % 10}",
                lw=1,
                alpha=0.8,
                label=n if k == 0 else None,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_categories(table: pd.DataFrame, out: Path) -> None:
    """Held-out accuracy per prompt category as a heat map, model x category."""
    cols = [c for c in table.columns if c.startswith("acc_") and c != "acc_overall"]
    m = table.set_index("model")[cols].astype(float)
    fig, ax = plt.subplots(figsize=(0.9 * len(cols) + 2.5, 0.32 * len(m) + 1.2))
    im = ax.imshow(m.to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(cols)), [c.removeprefix("acc_") for c in cols], fontsize=7)
    ax.set_yticks(range(len(m)), m.index, fontsize=7)
    for i in range(len(m)):
        for j in range(len(cols)):
            v = m.iat[i, j]
            ax.text(
                j,
                i,
                f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if v < 0.5 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_poi(poi: pd.DataFrame, out: Path) -> None:
    """P(row > column) heat map: 0.5 is no difference; red cells: the row model is better."""
    names = list(dict.fromkeys(poi.model))
    m = poi.pivot(index="model", columns="versus", values="p").reindex(index=names, columns=names)
    fig, ax = plt.subplots(figsize=(0.55 * len(names) + 2, 0.5 * len(names) + 1.2))
    im = ax.imshow(m.to_numpy(dtype=float), cmap="RdBu_r", vmin=0, vmax=1)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j:
                ax.text(j, i, f"{m.iat[i, j]:.2f}", ha="center", va="center", fontsize=5.5)
    ax.set_title("P(row > column) over training seeds", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def image_grid(prompt_table: Path, models: dict[str, Path], n_prompts: int, out: Path) -> None:
    """Rows: models (``models``: name -> its eval folder); columns: the same (prompt, seed)
    samples of the evaluated prompts (``prompt_table``), so differences are the method's."""
    names = list(models)
    keys = pd.read_parquet(models[names[0]] / "samples.parquet")
    prompts = pd.read_parquet(prompt_table)
    if "category" in prompts:  # round-robin over categories so every kind of prompt shows
        prompts = prompts.assign(_r=prompts.groupby("category").cumcount()).sort_values(
            ["_r", "category"], kind="stable"
        )
    chosen = list(prompts.prompt_id[:n_prompts])
    firsts = keys.reset_index().drop_duplicates("prompt_id").set_index("prompt_id")["index"]
    first = firsts.loc[chosen].to_numpy()
    text = dict(zip(prompts.prompt_id, prompts.prompt))
    fig, axes = plt.subplots(
        len(names), len(first), figsize=(1.3 * len(first), 1.4 * len(names) + 0.8), squeeze=False
    )
    for i, n in enumerate(names):
        imgs = np.load(models[n] / "samples.npy", mmap_mode="r")
        for j, k in enumerate(first):
            img = np.asarray(imgs[k]).transpose(1, 2, 0)
            ax = axes[i][j]
            ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(n, fontsize=8)
            if i == 0:
                ax.set_title(_wrap(text[keys.prompt_id[k]]), fontsize=6)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def _wrap(s: str, width: int = 22) -> str:
    words, lines, cur = s.split(), [], ""
    for w in words:
        if len(cur) + len(w) + 1 > width and cur:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join([*lines, cur])


def plot_rounds(table: pd.DataFrame, reward: str, out: Path) -> None:
    """Win rate vs base and mean ``reward`` by online round with 95% CIs: one line per online
    objective (:func:`diffpref.rounds.round_table`), its compute-matched control at each round
    r >= 2 as a hollow square beside it (objectives side by side, so intervals do not hide
    one another); the dashed lines are the base model."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), layout="constrained")
    panels = (
        ("win_vs_base", f"win rate vs base on {reward}", 0.5),
        (f"{reward}_mean", f"mean {reward}", float(table[f"base_{reward}"].iloc[0])),
    )
    groups = list(table.groupby("model", sort=False))
    for ax, (col, label, base) in zip(axes, panels, strict=True):
        for i, (name, t) in enumerate(groups):
            at = (i - (len(groups) - 1) / 2) * 0.14  # this objective's place beside the round
            for arm, shift, face in (("online", -0.03, f"C{i % 10}"), ("matched", 0.03, "white")):
                a = t[t.arm == arm].sort_values("round")
                if a.empty:
                    continue
                y, stem = a[col].to_numpy(), col.removesuffix("_mean")
                err = [y - a[f"{stem}_ci_low"], a[f"{stem}_ci_high"] - y]
                ax.errorbar(
                    a["round"] + at + shift,
                    y,
                    yerr=err,
                    color=f"C{i % 10}",
                    mfc=face,
                    marker="o" if arm == "online" else "s",
                    ls="-" if arm == "online" else "none",
                    capsize=3,
                    lw=1.5,
                    label=name if arm == "online" else f"{name}: compute-matched control",
                )
        ax.axhline(base, color="#555", ls="--", lw=1)
        ax.set_xticks(sorted(set(table["round"])))
        ax.set_xlabel("round (1: offline)")
        ax.set_ylabel(f"{label} (95% CI)", fontsize=8)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=7)
    fig.savefig(out, dpi=110)
    plt.close(fig)
