"""candidates: K images per training prompt from the base model, plus cached model inputs.

In a later online round (``--objective --seed --round r``) the images come from the round r-1
policy of that model (the base with its adapter), ``online.k`` per prompt, with sampling seeds
of their own; the prompts are round 1's or fresh ones (``online.prompts``).

Writes the images (uint8, for reward models and the report), their latents and the prompts'
text conditioning, so training never runs the VAE or a text encoder again. With
``candidates.source: pickapic`` the images are instead imported human preference pairs
(Pick-a-Pic format), written in the same layout plus ``preferences.parquet`` (the pairs, for
``labels.reward: human``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from diffpref import datasources
from diffpref.adapters import Adapted
from diffpref.backbones import load_backbone, resolve_device
from diffpref.config.schema import model_variant
from diffpref.generation import candidate_seed, generate
from diffpref.io import atomic_dir, read_table, write_json


@dataclass
class Candidates:
    prompts: pd.DataFrame  # prompt_id, prompt (row = prompt_row)
    table: pd.DataFrame  # prompt_id, prompt_row, cand_idx, seed, row
    images: torch.Tensor  # uint8 [N, C, H, W]
    latents: torch.Tensor  # [N, c, h, w]
    cond: dict[str, torch.Tensor]  # per prompt row
    preferences: pd.DataFrame | None = None  # imported human pairs


def sampled(cfg, backbone, rnd: int = 1, adapted: Adapted | None = None) -> Candidates:
    """K samples per training prompt; a later round's (``rnd``) from ``adapted``, with seeds
    that no other round uses."""
    prompts = train_prompts(cfg, rnd)
    k = cfg.candidates.k if rnd == 1 else cfg.online.k
    data_seed = cfg.seed if rnd == 1 else round_seed(cfg.seed, rnd)
    seeds = [[candidate_seed(data_seed, i, j, k) for j in range(k)] for i in range(len(prompts))]
    images, latents, cond = generate(
        backbone,
        prompts.prompt.tolist(),
        seeds,
        cfg.sampling,
        cfg.candidates.batch_size,
        desc="candidates" + ("" if rnd == 1 else f" round {rnd}"),
        adapt=adapted.cond if adapted is not None else lambda c: c,
    )
    table = pd.DataFrame(
        {
            "prompt_id": np.repeat(prompts.prompt_id.to_numpy(), k),
            "prompt_row": np.repeat(np.arange(len(prompts)), k),
            "cand_idx": np.tile(np.arange(k), len(prompts)),
            "seed": [s for row in seeds for s in row],
        }
    )
    table["row"] = np.arange(len(table))
    return Candidates(prompts, table, images, latents, cond)


def round_seed(seed: int, rnd: int) -> int:
    """The data seed of online round ``rnd`` (>= 2): distinct from every round's and from the
    data seeds a user picks (0, 1, ...), so no two rounds share a sampling seed."""
    return 7_919 * (seed + 1) + 104_729 * rnd


def held_out(cfg) -> set[str]:
    """The eval (test) and validation prompts: never trained on."""
    tables = (cfg.path("prompts", f"{s}.parquet") for s in ("eval", "val"))
    return set().union(*(read_table(t, ["prompt"]).prompt for t in tables))


def train_prompts(cfg, rnd: int) -> pd.DataFrame:
    """Round 1's training prompts, or with ``online.prompts: fresh`` a later round's own: as
    many new ones of the world's distribution, none of them an eval or validation prompt."""
    prompts = read_table(cfg.path("prompts", "train.parquet"), ["prompt_id", "prompt"])
    if rnd == 1 or cfg.online.prompts == "same":
        return prompts
    from diffpref.world.prompts import generate_prompts

    fresh = generate_prompts(cfg.prompts.n_train, 1, seed=round_seed(cfg.seed, rnd))
    fresh = fresh[(fresh.split == "train") & ~fresh.prompt.isin(held_out(cfg))]
    fresh = fresh.reset_index(drop=True)
    fresh["prompt_id"] = [f"round{rnd}-{i}" for i in fresh.prompt_id]
    return fresh[["prompt_id", "prompt"]]


def imported(cfg, backbone) -> Candidates:
    """Pick-a-Pic pairs resized to the backbone's image size, encoded once by its VAE."""
    c = cfg.candidates
    channels, size, _ = backbone.image_shape
    prefs = datasources.read_pickapic(c.preference_file, size, channels, held_out(cfg), c.max_pairs)
    images = torch.from_numpy(prefs.images)
    latents = torch.cat(
        [
            backbone.encode_images(images[s : s + c.batch_size].float() / 255).float().cpu()
            for s in tqdm(range(0, len(images), c.batch_size), desc="encode", unit="batch")
        ]
    )
    cond = {
        k: v.float().cpu() for k, v in backbone.encode_text(prefs.prompts.prompt.tolist()).items()
    }
    return Candidates(prefs.prompts, prefs.candidates, images, latents, cond, prefs.pairs)


INPUTS = ("prompts",)  # recorded in MLflow as datasets with their digests


def run(ctx) -> None:
    cfg = ctx.cfg
    pickapic = ctx.rnd == 1 and cfg.candidates.source == "pickapic"  # a later round samples
    if pickapic:  # a bad shard fails before a model is loaded
        datasources.check_pickapic(cfg.candidates.preference_file)
        datasources.warn_if_untracked("candidates", cfg.candidates.preference_file)
    backbone = load_backbone(cfg, resolve_device(cfg))
    start = time.perf_counter()
    if ctx.rnd > 1:  # the round before's policy: that model's adapter on the base
        policy = cfg.model_dir("adapters", ctx.objective, ctx.seed, model_variant(ctx.rnd - 1))
        cands = sampled(cfg, backbone, ctx.rnd, Adapted(backbone, policy))
    elif pickapic:
        cands = imported(cfg, backbone)
    else:
        cands = sampled(cfg, backbone)
    sampling_s = time.perf_counter() - start
    uncond = backbone.encode_text([""])
    with atomic_dir(ctx.data("candidates")) as tmp:
        cands.table.to_parquet(tmp / "candidates.parquet")
        cands.prompts.to_parquet(tmp / "prompts.parquet")
        np.save(tmp / "images.npy", cands.images.numpy())
        save_file({"latents": cands.latents.contiguous()}, tmp / "latents.safetensors")
        text = {k: v.contiguous() for k, v in cands.cond.items()}
        text.update({f"uncond.{k}": v.float().cpu().contiguous() for k, v in uncond.items()})
        save_file(text, tmp / "text.safetensors")
        if cands.preferences is not None:
            cands.preferences.to_parquet(tmp / "preferences.parquet")
        if ctx.rnd > 1:  # what an online round's samples cost, next to its gain (report);
            # round 1's candidates hold no wall time: their bytes stay the same run to run
            write_json(
                tmp / "sampling.json",
                {"round": ctx.rnd, "images": len(cands.table), "sampling_time_s": sampling_s},
            )
    metrics = {
        "n_candidates": len(cands.table),
        "n_prompts": len(cands.prompts),
        "sampling_time_s": sampling_s,
    }
    if cands.preferences is not None:
        metrics["n_pairs"] = len(cands.preferences)
    ctx.run.log_metrics(metrics)
