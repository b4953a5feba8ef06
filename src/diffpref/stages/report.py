"""report: one comparison table with plots and a same-seed image grid, plus DVC metrics."""

from __future__ import annotations

from diffpref import report
from diffpref.io import atomic_dir, read_json, write_json_atomic


def run(ctx) -> None:
    cfg = ctx.cfg
    res = cfg.path()
    names = ["base", *cfg.objectives]
    versus = "dpo" if "dpo" in cfg.objectives else None
    ev = cfg.evaluate
    scores = report.load_scores(res, names)
    table = report.comparison_table(
        res, scores, versus, ev.win_reward, ev.bootstrap, ev.tie_threshold
    )
    world = read_json(res / "world" / "metrics.json")
    with atomic_dir(cfg.path("report")) as tmp:
        table.to_csv(tmp / "comparison.csv", index=False)
        report.plot_rewards(res, names, tmp / "rewards.png")
        report.plot_training(res, list(cfg.objectives), tmp / "training_loss.png")
        report.image_grid(res, names, cfg.report.grid_prompts, tmp / "image_grid.png")
        shown = [c for c in table.columns if not c.endswith(("_ci_low", "_ci_high", "_metric"))]
        sections = [
            ("Comparison (held-out prompts)", report.to_markdown(table[shown])),
            (
                "Notes",
                "\n".join(
                    [
                        f"- win rates use the {ev.win_reward} reward on matched (prompt, seed) "
                        f"samples; differences up to {ev.tie_threshold} are ties and count one "
                        f"half; 95% CIs bootstrap prompts ({ev.bootstrap} resamples)",
                        "- train_fit: an objective's own accuracy on its training groups over "
                        "the last quarter of training: implicit-reward accuracy on pairs "
                        "(chance 0.5) or, for soft tokens, caption matching (chance 1/batch)",
                        f"- profile: {cfg.profile}; seeds {list(ev.seeds)}",
                    ]
                ),
            ),
            (
                "Does each objective beat the base?",
                "\n".join(report.beats_base(table, ev.win_reward)),
            ),
            (
                "Seed claims",
                "\n".join(
                    report.seed_claims(scores, table, ev.win_reward, ev.bootstrap, ev.tie_threshold)
                ),
            ),
            ("World reward models (held-out)", report.to_markdown(_world_rows(world))),
        ]
        md = "# diffpref report\n\n" + "\n\n".join(f"## {h}\n\n{b}" for h, b in sections)
        md += "\n\n![rewards](rewards.png)\n\n![training](training_loss.png)\n\n"
        md += "![grid](image_grid.png)\n"
        (tmp / "report.md").write_text(md)
        (tmp / "report.html").write_text(
            report.to_html(
                "diffpref report",
                sections,
                [tmp / "rewards.png", tmp / "training_loss.png", tmp / "image_grid.png"],
            )
        )
    # small uncached copies for `dvc metrics show/diff` and `dvc plots`
    write_json_atomic(res / "metrics.json", _dvc_metrics(table))
    plots = res / "plots"
    plots.mkdir(exist_ok=True)
    table.to_csv(plots / "comparison.csv.tmp", index=False)
    (plots / "comparison.csv.tmp").replace(plots / "comparison.csv")
    ctx.run.log_metrics(
        {
            f"{r['model']}.{k}": v
            for r in table.to_dict("records")
            for k, v in r.items()
            if isinstance(v, int | float)
        }
    )


def _world_rows(world: dict):
    import pandas as pd

    return pd.DataFrame(
        [{"metric": k, "value": v} for k, v in sorted(world.items()) if isinstance(v, int | float)]
    )


def _dvc_metrics(table) -> dict:
    """Nested {model: {metric: value}} so `dvc metrics show/diff` compare models side by side."""
    out = {}
    for r in table.to_dict("records"):
        out[r["model"]] = {
            k: v for k, v in r.items() if isinstance(v, int | float) and k != "model"
        }
    return out
