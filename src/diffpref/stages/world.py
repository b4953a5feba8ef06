"""world: build (or install the packaged copy of) the embedded world and score its rewards."""

from __future__ import annotations

from diffpref.io import atomic_dir, read_json, write_json


def run(ctx) -> None:
    from diffpref.world import build

    cfg = ctx.cfg
    out = cfg.path("world")
    with atomic_dir(out) as tmp:
        if cfg.world.source == "packaged":
            build.install_packaged_world(tmp)
            # pretraining-time metrics (base model per category) + reward metrics recomputed here
            metrics = {**read_json(tmp / "metrics.json"), **build.evaluate_world(tmp, cfg.world)}
        else:
            metrics = build.build_world(cfg.world, tmp)
        write_json(tmp / "metrics.json", metrics)
    ctx.run.log_metrics(metrics)
