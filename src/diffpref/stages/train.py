"""train@<objective>/seed<N>: one adapter per (objective, training seed) from the cached
candidates and the objective's labels.

The training seed drives everything random in training (adapter init, batch order, timesteps,
noise); the data (prompts, candidates, labels) is shared by every seed, so the spread between
seeds is the training algorithm's own variance.

With ``train.num_processes: N`` this runs in each of N processes (``diffpref train`` launched
them, :mod:`diffpref.launch`): all train, rank 0 alone writes the adapter and the record.
"""

from __future__ import annotations

from diffpref import launch, training
from diffpref.backbones import load_backbone, resolve_device
from diffpref.distributed import process_device
from diffpref.io import atomic_dir, check_replaceable, write_json
from diffpref.training.checkpoint import discard

INPUTS = ("candidates", "labels")  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg, name = ctx.cfg, ctx.objective
    objective = cfg.objectives[name]
    tp = cfg.train_for(name)
    ckpt = cfg.model_dir("checkpoints", name, ctx.seed)
    check_replaceable(ckpt)  # a user's folder there: said before any training
    device = process_device(resolve_device(cfg))
    backbone = load_backbone(cfg, device)
    data = training.load_train_data(cfg.path(), objective.labels)
    result = training.train(backbone, data, objective, tp, ctx.seed, ckpt, ctx.params_hash)
    if not launch.is_main():
        return
    with atomic_dir(cfg.model_dir("adapters", name, ctx.seed)) as tmp:
        result.method.save(tmp)
        write_json(
            tmp / "train_metrics.json",
            {
                "summary": result.summary,
                "history": result.history,
                "objective": objective.loss,
                "train_seed": ctx.seed,
                "n_examples": int(data.groups.shape[0]),
                # where an interrupted run picked up (summary: the step and the steps run)
                "resumed_from": result.resumed_from and str(result.resumed_from),
            },
        )
    discard(ckpt)  # finished: nothing left to resume
    ctx.run.log_artifact(cfg.model_dir("adapters", name, ctx.seed), "adapter")
    ctx.run.log_figure(
        "loss_curve.png",
        "diffpref.plots:plot_training",
        lambda: ({name: [{"history": result.history}]},),
    )
    for row in result.history:
        ctx.run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
    ctx.run.log_metrics(result.summary)
