"""evaluate@<objective>/seed<N> / evaluate_base: held-out generation with shared seeds, then
scores.

Every model (each training seed of each objective, and the base) samples the same held-out
prompts from the same per-sample sampling seeds (``evaluate.seeds``), so win rates compare like
with like. Scored by ``rewards.models`` and the judge (``evaluate.judge``), which need not be
one of them. ``evaluate.export_geneval`` also writes the
samples in GenEval's folder layout, for its (separately installed) object-detection scorer.
The base model's evaluation also scores the yardsticks (:mod:`diffpref.yardsticks`) on the same
prompts and seeds: ``yardsticks.parquet``, and in ``metrics.json`` K, the label reward and
why any was skipped.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from diffpref import evaluation, yardsticks
from diffpref.adapters import Adapted
from diffpref.backbones import load_backbone, resolve_device
from diffpref.datasources import export_geneval
from diffpref.generation import generate
from diffpref.io import atomic_dir, read_table, write_json
from diffpref.rewards import load_reward, score_table

INPUTS = ("prompts",)  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg, name = ctx.cfg, ctx.objective
    ev = cfg.evaluate
    device = resolve_device(cfg)
    prompts = read_table(cfg.eval_prompts(), ["prompt_id", "prompt"])
    base_scores = None
    if name != "base":
        base_scores = read_table(
            cfg.path("eval", "base", "scores.parquet"), ["prompt_id", "seed", "reward", "score"]
        )
    backbone = load_backbone(cfg, device)
    adapter = None if name == "base" else ctx.model_dir("adapters")
    adapted = Adapted(backbone, adapter)
    seeds = [list(ev.seeds) for _ in range(len(prompts))]
    images, latents, _ = generate(
        backbone,
        prompts.prompt.tolist(),
        seeds,
        cfg.sampling,
        ev.batch_size,
        desc=f"eval {name}" + ("" if ctx.seed is None else f" seed {ctx.seed} {ctx.variant}"),
        adapt=adapted.cond,
    )
    keys = pd.DataFrame(
        {
            "prompt_id": np.repeat(prompts.prompt_id.to_numpy(), len(ev.seeds)),
            "seed": np.tile(np.asarray(ev.seeds), len(prompts)),
        }
    )
    text = np.repeat(prompts.prompt.to_numpy(), len(ev.seeds)).tolist()
    models = {r: load_reward(r, cfg, device) for r in cfg.eval_rewards}
    scores = score_table(models, images.numpy(), text, keys, ev.batch_size, device)
    if "category" in prompts:
        scores = scores.merge(prompts[["prompt_id", "category"]], on="prompt_id", how="left")
    metrics = summarize(scores, base_scores, latents.numpy(), keys, ev)
    metrics["objective"] = name
    metrics["train_seed"] = ctx.seed
    metrics["model"] = None if name == "base" else ctx.variant
    yard = None
    if name == "base":
        yard, metrics["yardsticks"] = yardsticks.compute(
            cfg, backbone, prompts, scores, models, device
        )
    out = ctx.model_dir("eval")  # the base model: results/eval/base
    with atomic_dir(out) as tmp:
        scores.to_parquet(tmp / "scores.parquet")
        np.save(tmp / "samples.npy", images.numpy())
        keys.to_parquet(tmp / "samples.parquet")
        write_json(tmp / "metrics.json", metrics)
        if yard is not None:
            yard.to_parquet(tmp / "yardsticks.parquet")
        if ev.export_geneval:
            export_geneval(tmp / "geneval", prompts, images.numpy(), len(ev.seeds))
    ctx.run.log_artifact(out / "scores.parquet")
    ctx.run.log_artifact(out / "metrics.json")
    if yard is not None:
        ctx.run.log_artifact(out / "yardsticks.parquet")
    ctx.run.log_figure(
        "samples.png",
        "diffpref.plots:image_grid",
        lambda: (cfg.eval_prompts(), {name: out}, cfg.report.grid_prompts),
    )
    ctx.run.log_metrics(flat_numbers(metrics))


def summarize(
    scores: pd.DataFrame, base: pd.DataFrame | None, latents: np.ndarray, keys: pd.DataFrame, ev
) -> dict:
    out: dict = {"reward": {}, "win_vs_base": {}, "accuracy": {}}
    for reward, g in scores.groupby("reward"):
        out["reward"][reward] = evaluation.mean_ci(g, "score", ev.bootstrap)
        if base is not None:
            b = base[base.reward == reward]
            out["win_vs_base"][reward] = evaluation.win_rate(
                g, b, ev.bootstrap, tie=ev.tie_threshold
            )
        if g.correct.notna().all() and "category" in g:
            out["accuracy"][reward] = evaluation.per_category(g)
    out["diversity"] = evaluation.diversity(latents, keys.prompt_id.to_numpy())
    out["n_samples"] = len(keys)
    return out


def flat_numbers(d: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat_numbers(v, f"{prefix}{k}."))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
    return out
