"""train@<objective>/seed<N>: one adapter per (objective, training seed) from the cached
candidates and the objective's labels.

The training seed drives everything random in training (adapter init, batch order, timesteps,
noise); the data (prompts, candidates, labels) is shared by every seed, so the spread between
seeds is the training algorithm's own variance.

A later online round (``--round r``) trains on that model's own round-r samples, starting
from its round r-1 adapter, which is also the frozen reference. The compute-matched control
(``--matched``) continues the round-1 adapter on round 1's data, the base model still its
reference, for (r-1) x ``train.steps``: r x ``train.steps`` in all, as many optimizer steps
as round r has taken, each continuation from a fresh optimizer like each online round.

With ``train.num_processes: N`` this runs in each of N processes (``diffpref train`` launched
them, :mod:`diffpref.launch`): all train, rank 0 alone writes the adapter and the record.
"""

from __future__ import annotations

from diffpref import launch, training
from diffpref.backbones import load_backbone, resolve_device
from diffpref.config.schema import model_variant
from diffpref.distributed import process_device
from diffpref.io import atomic_dir, check_replaceable, read_json, write_json
from diffpref.training.checkpoint import discard

INPUTS = ("candidates", "labels")  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg, name = ctx.cfg, ctx.objective
    objective = cfg.objectives[name]
    tp = cfg.train_for(name)
    per_round = tp.steps
    if ctx.matched:  # round 1's steps and these: as many as rounds 1..r together
        tp = tp.model_copy(update={"steps": tp.steps * (ctx.rnd - 1)})
    ckpt = ctx.model_dir("checkpoints")
    check_replaceable(ckpt)  # a user's folder there: said before any training
    device = process_device(resolve_device(cfg))
    backbone = load_backbone(cfg, device)
    data = training.load_train_data(ctx.data("candidates"), ctx.data("labels"), objective.labels)
    online = ctx.rnd > 1 and not ctx.matched
    start = ctx.rnd - 1 if online else 1  # a control continues round 1
    previous = (
        cfg.model_dir("adapters", name, ctx.seed, model_variant(start)) if ctx.rnd > 1 else None
    )
    result = training.train(
        backbone,
        data,
        objective,
        tp,
        ctx.seed,
        ckpt,
        ctx.params_hash,
        previous=previous,
        previous_reference=online,
    )
    if not launch.is_main():
        return
    out = ctx.model_dir("adapters")
    sampling = read_json(ctx.data("candidates") / "sampling.json") if online else None
    with atomic_dir(out) as tmp:
        result.method.save(tmp)
        write_json(
            tmp / "train_metrics.json",
            {
                "summary": result.summary,
                "history": result.history,
                "objective": objective.loss,
                "train_seed": ctx.seed,
                "round": ctx.rnd,
                "matched": ctx.matched,  # the compute-matched offline control of the round
                "started_from": str(previous) if previous else None,
                "reference": str(previous) if online else "base",
                "total_steps": ctx.rnd * per_round,  # optimizer steps since the base model
                "sampling": sampling,  # an online round's own samples: images, time
                "n_examples": int(data.groups.shape[0]),
                # where an interrupted run picked up (summary: the step and the steps run)
                "resumed_from": result.resumed_from and str(result.resumed_from),
            },
        )
    discard(ckpt)  # finished: nothing left to resume
    ctx.run.log_artifact(out, "adapter")
    ctx.run.log_figure(
        "loss_curve.png",
        "diffpref.plots:plot_training",
        lambda: ({name: [{"history": result.history}]},),
    )
    for row in result.history:
        ctx.run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=int(row["step"]))
    ctx.run.log_metrics(result.summary)
