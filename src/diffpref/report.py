"""The comparison report: one table objective x metric, plots and a same-seed image grid."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from diffpref import evaluation
from diffpref.io import read_json


def load_scores(results: Path, names: list[str]) -> dict[str, pd.DataFrame]:
    """Every model's held-out per-sample scores (``evaluate``'s ``scores.parquet``)."""
    return {n: pd.read_parquet(results / "eval" / n / "scores.parquet") for n in names}


def comparison_table(
    results: Path,
    scores: dict[str, pd.DataFrame],
    versus: str | None,
    win_reward: str,
    n_boot: int,
    tie: float = 0.0,
) -> pd.DataFrame:
    """One row per model (base first, the order of ``scores``): rewards, win rates with CIs,
    accuracy, cost."""
    rows = []
    for n in scores:
        m = read_json(results / "eval" / n / "metrics.json")
        row: dict = {"model": n}
        for reward, r in m["reward"].items():
            row[f"{reward}_mean"] = r["mean"]
            row[f"{reward}_ci"] = f"[{r['ci_low']:.3f}, {r['ci_high']:.3f}]"
        if n != "base":
            w = m["win_vs_base"][win_reward]
            row["win_vs_base"] = w["win_rate"]
            row["win_vs_base_ci"] = f"[{w['ci_low']:.3f}, {w['ci_high']:.3f}]"
            row["win_vs_base_ci_low"], row["win_vs_base_ci_high"] = w["ci_low"], w["ci_high"]
        if versus and versus in scores and n not in ("base", versus):
            w = evaluation.win_rate(
                _reward(scores[n], win_reward), _reward(scores[versus], win_reward), n_boot, tie=tie
            )
            row[f"win_vs_{versus}"] = w["win_rate"]
            row[f"win_vs_{versus}_ci"] = f"[{w['ci_low']:.3f}, {w['ci_high']:.3f}]"
        for cat, acc in m["accuracy"].get(win_reward, {}).items():
            row[f"acc_{cat}"] = acc
        row["diversity"] = m["diversity"]
        tm = results / "adapters" / n / "train_metrics.json"
        if tm.is_file():
            t = read_json(tm)
            s = t["summary"]
            row.update(
                **dict(zip(("train_fit_metric", "train_fit"), training_fit(t["history"]))),
                train_time_s=s["train_time_s"],
                groups_per_s=s["groups_per_s"],
                peak_memory_mb=s["peak_memory_mb"],
                trainable_params=s["trainable_params"],
            )
        rows.append(row)
    return pd.DataFrame(rows)


FIT_METRICS = ("implicit_acc", "contrastive_acc", "pl_acc")


def training_fit(history: list[dict[str, float]]) -> tuple[str, float]:
    """How well an objective fits its own training groups: (metric, its mean over the last
    quarter of training); ``("", nan)`` for objectives that log no accuracy (SFT)."""
    tail = history[-max(1, len(history) // 4) :]
    for key in FIT_METRICS:
        vals = [h[key] for h in tail if key in h]
        if vals:
            return key, float(np.mean(vals))
    return "", float("nan")


def beats_base(table: pd.DataFrame, reward: str) -> list[str]:
    """Per objective: does it beat the base on held-out prompts, and if not, what the run shows
    about why (fit on its training groups vs. transfer to held-out prompts, side effects)."""
    base = table[table.model == "base"].iloc[0]
    out = []
    for r in table.to_dict("records"):
        if r["model"] == "base":
            continue
        lo, hi = r["win_vs_base_ci_low"], r["win_vs_base_ci_high"]
        if lo > 0.5:
            verdict = "**yes**: the win-rate CI excludes 0.5"
        elif hi < 0.5:
            verdict = "**no, worse**: the win-rate CI is below 0.5"
        else:
            verdict = "**not shown**: the win-rate CI includes 0.5"
        facts = [f"mean {reward} {r[f'{reward}_mean'] - base[f'{reward}_mean']:+.3f} vs base"]
        for other in [
            c[: -len("_mean")]
            for c in table.columns
            if c.endswith("_mean") and c != f"{reward}_mean"
        ]:
            facts.append(f"{other} {r[f'{other}_mean'] - base[f'{other}_mean']:+.3f}")
        facts.append(f"diversity x{r['diversity'] / base['diversity']:.2f}")
        fit = r.get("train_fit", float("nan"))
        why = ""
        if lo <= 0.5 and np.isfinite(fit):
            if r.get("train_fit_metric") != "implicit_acc":  # caption matching: chance 1/batch
                why = f"; its training caption-matching accuracy is {fit:.2f}"
            elif fit < 0.6:
                why = (
                    f"; it barely separates its own training pairs (training accuracy "
                    f"{fit:.2f}, chance 0.50): under-trained at these settings"
                )
            else:
                why = (
                    f"; it fits its training groups (training accuracy {fit:.2f}) but that "
                    "does not carry over to held-out prompts"
                )
        out.append(
            f"- {r['model']}: win rate {r['win_vs_base']:.3f} {r['win_vs_base_ci']} — "
            f"{verdict} ({', '.join(facts)}){why}"
        )
    return out


def _reward(df: pd.DataFrame, reward: str) -> pd.DataFrame:
    return df[df.reward == reward][["prompt_id", "seed", "score"]]


def plot_rewards(results: Path, names: list[str], out: Path) -> None:
    metrics = {n: read_json(results / "eval" / n / "metrics.json") for n in names}
    rewards = list(metrics[names[0]]["reward"])
    fig, axes = plt.subplots(1, len(rewards), figsize=(4 * len(rewards), 3.2), squeeze=False)
    for ax, r in zip(axes[0], rewards):
        mean = [metrics[n]["reward"][r]["mean"] for n in names]
        lo = [mean[i] - metrics[n]["reward"][r]["ci_low"] for i, n in enumerate(names)]
        hi = [metrics[n]["reward"][r]["ci_high"] - mean[i] for i, n in enumerate(names)]
        ax.bar(names, mean, yerr=[lo, hi], capsize=3, color="#4c72b0")
        ax.set_title(f"held-out {r} (95% CI)")
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_training(results: Path, names: list[str], out: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for n in names:
        tm = results / "adapters" / n / "train_metrics.json"
        if tm.is_file():
            h = read_json(tm)["history"]
            ax.plot([r["step"] for r in h], [r["loss"] for r in h], label=n)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def image_grid(results: Path, names: list[str], n_prompts: int, out: Path) -> None:
    """Rows: models; columns: the same (prompt, seed) samples, so differences are the method's."""
    keys = pd.read_parquet(results / "eval" / names[0] / "samples.parquet")
    prompts = pd.read_parquet(results / "prompts" / "eval.parquet")
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
        imgs = np.load(results / "eval" / n / "samples.npy", mmap_mode="r")
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


def to_markdown(df: pd.DataFrame) -> str:
    cols = list(df.columns)
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        lines.append("| " + " | ".join("" if pd.isna(r[c]) else fmt(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def to_html(title: str, sections: list[tuple[str, str]], images: list[Path]) -> str:
    body = [f"<h1>{html.escape(title)}</h1>"]
    for head, md in sections:
        body.append(f"<h2>{html.escape(head)}</h2>")
        body.append(_md_block_to_html(md))
    for img in images:
        data = base64.b64encode(img.read_bytes()).decode()
        body.append(f'<h3>{html.escape(img.stem)}</h3><img src="data:image/png;base64,{data}">')
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:auto}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


def _md_block_to_html(md: str) -> str:
    """Markdown tables become HTML tables; other lines become paragraphs."""
    out, rows = [], []
    for line in [*md.splitlines(), ""]:
        if line.startswith("|"):
            if not set(line.replace("|", "").strip()) <= set("-: "):
                rows.append([html.escape(c.strip()) for c in line.strip("|").split("|")])
            continue
        if rows:
            head, *rest = rows
            out.append(
                "<table><tr>"
                + "".join(f"<th>{c}</th>" for c in head)
                + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rest)
                + "</table>"
            )
            rows = []
        if line.strip():
            out.append(f"<p>{html.escape(line.lstrip('- '))}</p>")
    return "\n".join(out)


def _verdict(lo: float, hi: float, null: float) -> str:
    if lo > null:
        return "supported"
    if hi < null:
        return "contradicted"
    return "inconclusive (CI includes no difference)"


def seed_claims(
    scores: dict[str, pd.DataFrame],
    table: pd.DataFrame,
    reward: str,
    n_boot: int,
    tie: float = 0.0,
) -> list[str]:
    """The seed papers' claims, each checked against this run's numbers (honest either way)."""
    row = {r["model"]: r for r in table.to_dict("records")}
    lines = []

    def versus(a: str, b: str, claim: str) -> None:
        if a not in scores or b not in scores:
            lines.append(f"- {claim}: not run (needs objectives `{a}` and `{b}`)")
            return
        w = evaluation.win_rate(
            _reward(scores[a], reward), _reward(scores[b], reward), n_boot, tie=tie
        )
        ma, mb = row[a][f"{reward}_mean"], row[b][f"{reward}_mean"]
        lines.append(
            f"- {claim}: **{_verdict(w['ci_low'], w['ci_high'], 0.5)}** — {a} wins "
            f"{w['win_rate']:.3f} [{w['ci_low']:.3f}, {w['ci_high']:.3f}] of matched held-out "
            f"samples against {b} on {reward}; mean {reward} {ma:.3f} vs {mb:.3f}"
        )

    if "mapo" in row and "dpo" in row and "groups_per_s" in row["mapo"]:
        m, d = row["mapo"], row["dpo"]
        faster = m["groups_per_s"] > d["groups_per_s"]
        lighter = m["peak_memory_mb"] <= d["peak_memory_mb"]
        verdict = (
            "supported"
            if faster and lighter
            else ("partly supported" if faster or lighter else "contradicted")
        )
        lines.append(
            f"- MaPO is faster and lighter than DPO (no reference forward): **{verdict}** — "
            f"{m['groups_per_s']:.1f} vs {d['groups_per_s']:.1f} pairs/s "
            f"({m['groups_per_s'] / d['groups_per_s']:.2f}x), peak memory "
            f"{m['peak_memory_mb']:.0f} vs {d['peak_memory_mb']:.0f} MB"
        )
    else:
        lines.append("- MaPO is faster and lighter than DPO: not run (needs `mapo` and `dpo`)")
    versus("smpo", "dpo", "SmPO is above DPO")
    versus("lair", "dpo", "Listwise LAIR is above pairwise DPO")
    versus("dpo_rethink", "dpo", "Reference updates + timestep-aware training are above plain DPO")
    if "agsm" in scores and "softrepa" in scores:
        a, s = scores["agsm"], scores["softrepa"]
        m = a[(a.reward == reward)].merge(
            s[s.reward == reward], on=["prompt_id", "seed", "category"], suffixes=("", "_s")
        )
        m = m[m.category == "counting"]
        if len(m):
            diff = (m.correct - m.correct_s).to_numpy()
            mean, lo, hi = evaluation.bootstrap_ci(diff, m.prompt_id.to_numpy(), n_boot)
            base = row["base"].get("acc_counting", float("nan"))
            lines.append(
                f"- AGSM avoids SoftREPA's counting collapse: **{_verdict(lo, hi, 0.0)}** — "
                f"counting accuracy AGSM {m.correct.mean():.3f}, SoftREPA "
                f"{m.correct_s.mean():.3f}, base {base:.3f}; difference {mean:+.3f} "
                f"[{lo:+.3f}, {hi:+.3f}]"
            )
    else:
        lines.append(
            "- AGSM avoids SoftREPA's counting collapse: not run (needs `agsm`, `softrepa`)"
        )
    return lines
