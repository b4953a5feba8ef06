"""Sampling images from a backbone for many (prompt, seed) pairs: the candidates stage and
every evaluation generate through this one function, so they sample alike."""

from __future__ import annotations

import torch
from tqdm import tqdm


def candidate_seed(base_seed: int, prompt_row: int, k: int, n_cand: int) -> int:
    return base_seed * 1_000_003 + prompt_row * n_cand + k


def generate(
    backbone,
    prompts: list[str],
    seeds_per_prompt: list[list[int]],
    sampling,
    batch_size,
    desc: str,
    adapt=lambda c: c,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
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
            adapt({k: v[idx] for k, v in cond.items()}),
            uncond,
            [r[1] for r in chunk],
            sampling.steps,
            sampling.guidance,
            sampling.scheduler,
        )
        img = backbone.decode(lat)
        images.append((img * 255).round().to(torch.uint8).cpu())
        latents.append(lat.float().cpu())
    return torch.cat(images), torch.cat(latents), {k: v.float().cpu() for k, v in cond.items()}
