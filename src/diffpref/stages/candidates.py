"""candidates: K images per training prompt from the base model, plus cached model inputs.

Writes the images (uint8, for reward models and the report), their latents and the prompts'
text conditioning, so training never runs the VAE or a text encoder again.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from diffpref.backbones import load_backbone, resolve_device
from diffpref.io import atomic_dir, read_table


def candidate_seed(base_seed: int, prompt_row: int, k: int, n_cand: int) -> int:
    return base_seed * 1_000_003 + prompt_row * n_cand + k


def generate(backbone, prompts: list[str], seeds_per_prompt: list[list[int]], sampling, batch_size,
             desc: str, adapt=lambda c: c) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Images (uint8 [N,C,H,W]) and latents for every (prompt, seed), prompt-major order.

    ``adapt`` transforms the text conditioning of both CFG branches (soft tokens).
    """
    cond = backbone.encode_text(prompts)
    uncond = adapt(backbone.encode_text([""]))
    rows = [(i, s) for i, seeds in enumerate(seeds_per_prompt) for s in seeds]
    images, latents = [], []
    for start in tqdm(range(0, len(rows), batch_size), desc=desc, unit="batch"):
        chunk = rows[start : start + batch_size]
        idx = torch.tensor([r[0] for r in chunk])
        lat = backbone.sample_latents(
            adapt({k: v[idx] for k, v in cond.items()}), uncond, [r[1] for r in chunk],
            sampling.steps, sampling.guidance, sampling.scheduler,
        )
        img = backbone.decode(lat)
        images.append((img * 255).round().to(torch.uint8).cpu())
        latents.append(lat.float().cpu())
    return torch.cat(images), torch.cat(latents), {k: v.float().cpu() for k, v in cond.items()}


def run(ctx) -> None:
    cfg = ctx.cfg
    prompts = read_table(cfg.path("prompts", "train.parquet"), ["prompt_id", "prompt"])
    backbone = load_backbone(cfg, resolve_device(cfg))
    k = cfg.candidates.k
    seeds = [[candidate_seed(cfg.seed, i, j, k) for j in range(k)] for i in range(len(prompts))]
    images, latents, cond = generate(
        backbone, prompts.prompt.tolist(), seeds, cfg.sampling, cfg.candidates.batch_size,
        desc="candidates",
    )
    uncond = backbone.encode_text([""])
    table = pd.DataFrame(
        {
            "prompt_id": np.repeat(prompts.prompt_id.to_numpy(), k),
            "prompt_row": np.repeat(np.arange(len(prompts)), k),
            "cand_idx": np.tile(np.arange(k), len(prompts)),
            "seed": [s for row in seeds for s in row],
        }
    )
    table["row"] = np.arange(len(table))
    with atomic_dir(cfg.path("candidates")) as tmp:
        table.to_parquet(tmp / "candidates.parquet")
        prompts.to_parquet(tmp / "prompts.parquet")
        np.save(tmp / "images.npy", images.numpy())
        save_file({"latents": latents.contiguous()}, tmp / "latents.safetensors")
        text = {k: v.contiguous() for k, v in cond.items()}
        text.update({f"uncond.{k}": v.float().cpu().contiguous() for k, v in uncond.items()})
        save_file(text, tmp / "text.safetensors")
    ctx.run.log_metrics({"n_candidates": len(table), "n_prompts": len(prompts)})
