"""train@<objective>: one adapter per objective from the cached candidates and its labels."""

from __future__ import annotations

import shutil

from diffpref import training
from diffpref.backbones import load_backbone, resolve_device
from diffpref.config import params_hash
from diffpref.io import atomic_dir, write_json


def run(ctx) -> None:
    cfg, name = ctx.cfg, ctx.objective
    objective = cfg.objectives[name]
    tp = cfg.train_for(name)
    device = resolve_device(cfg)
    backbone = load_backbone(cfg, device)
    data = training.load_train_data(cfg.path(), objective.labels)
    ckpt = cfg.path("checkpoints", name)
    result = training.train(
        backbone, data, objective, tp, cfg.seed, ckpt, params_hash(ctx.raw, "train", name)
    )
    with atomic_dir(cfg.path("adapters", name)) as tmp:
        result.method.save(tmp)
        write_json(
            tmp / "train_metrics.json",
            {
                "summary": result.summary,
                "history": result.history,
                "objective": objective.loss,
                "n_examples": int(data.groups.shape[0]),
            },
        )
    shutil.rmtree(ckpt, ignore_errors=True)  # finished: nothing left to resume
    for row in result.history:
        ctx.run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
    ctx.run.log_metrics(result.summary)
