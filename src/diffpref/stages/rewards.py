"""rewards: every configured reward model scores every candidate (of round 1, or of a later
online round of one model)."""

from __future__ import annotations

from diffpref.backbones import resolve_device
from diffpref.io import atomic_dir, load_array, read_table
from diffpref.rewards import load_reward, score_table

INPUTS = ("candidates",)  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg = ctx.cfg
    device = resolve_device(cfg)
    folder = ctx.data("candidates")
    cands = read_table(folder / "candidates.parquet", ["prompt_id", "cand_idx"])
    prompts = read_table(folder / "prompts.parquet", ["prompt_id", "prompt"])
    text = cands.merge(prompts[["prompt_id", "prompt"]], on="prompt_id", how="left").prompt
    images = load_array(folder / "images.npy")
    models = {name: load_reward(name, cfg, device) for name in cfg.rewards.models}
    table = score_table(
        models,
        images,
        text.tolist(),
        cands[["prompt_id", "cand_idx"]],
        cfg.rewards.batch_size,
        device,
    )
    with atomic_dir(ctx.data("rewards")) as tmp:
        table.to_parquet(tmp / "rewards.parquet")
    for name, g in table.groupby("reward"):
        ctx.run.log_metric(f"mean_{name}", float(g.score.mean()))
