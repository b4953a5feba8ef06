"""Yardsticks of the base model's evaluation: where a trained model could have got to.

Each is scored on the same eval prompts and sampling seeds as every model, one row per
(prompt, eval seed) and reward, so the report can place a model between the base and them:

- ``best_of_k``: the best of K base samples by the label reward, the first of them the base's
  own sample: what offline preference data (ranked by that reward) can at most teach;
- ``vae_ceiling``: real canvases of the prompt's spec through the world's VAE (encode, decode):
  the best any model of this latent space can draw;
- ``real``: the same canvases, not through the VAE.

The last two need the embedded world's specs; real canvases are rendered from Fashion-MNIST
test items no world model trained on (``[JUDGE_TRAIN_ITEMS, end)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from diffpref.generation import generate
from diffpref.rewards import score_table
from diffpref.world.constants import JUDGE_TRAIN_ITEMS
from diffpref.world.data import ItemBank
from diffpref.world.render import render_layout
from diffpref.world.spec import Spec

if TYPE_CHECKING:
    from diffpref.backbones.base import Backbone
    from diffpref.config import Config

BEST_OF_K, VAE_CEILING, REAL = "best_of_k", "vae_ceiling", "real"
YARDSTICKS = (BEST_OF_K, VAE_CEILING, REAL)
COLUMNS = ["yardstick", "prompt_id", "seed", "reward", "score", "correct"]
SEED_STRIDE = 1_000_003  # > any eval seed in practice, so no two eval seeds share a candidate
NO_SPECS = "the eval prompts have no world specs (real-model backbone or a prompt file)"


def best_of_k_seeds(eval_seed: int, k: int) -> list[int]:
    """The K sampling seeds of one (prompt, eval seed): the eval seed itself first, so the
    best-of-K set holds the base's own sample, then fixed strides above it."""
    return [eval_seed + j * SEED_STRIDE for j in range(k)]


def pick_best(candidates: pd.DataFrame, label_reward: str) -> pd.DataFrame:
    """Every reward's row of the candidate (``cand`` column) that scores highest on
    ``label_reward`` per (prompt_id, seed); ties go to the lowest ``cand`` (the base's own)."""
    label = candidates[candidates.reward == label_reward]
    order = label.sort_values(["prompt_id", "seed", "score", "cand"], ascending=[1, 1, 0, 1])
    best = order.drop_duplicates(["prompt_id", "seed"])[["prompt_id", "seed", "cand"]]
    return candidates.merge(best, on=["prompt_id", "seed", "cand"]).drop(columns="cand")


def best_of_k(
    backbone: Backbone,
    prompts: pd.DataFrame,
    base_scores: pd.DataFrame,
    k: int,
    seeds: list[int],
    label_reward: str,
    models: dict[str, object],
    cfg: Config,
    device: torch.device,
) -> pd.DataFrame:
    """Best-of-``k`` base samples per (prompt, eval seed): samples only the ``k - 1`` extra
    seeds and reuses the base's scored sample as candidate 0."""
    extra = [[s for e in seeds for s in best_of_k_seeds(e, k)[1:]] for _ in range(len(prompts))]
    keys = pd.DataFrame(
        {
            "prompt_id": np.repeat(prompts.prompt_id.to_numpy(), len(seeds) * (k - 1)),
            "seed": np.tile(np.repeat(seeds, k - 1), len(prompts)),
            "cand": np.tile(np.arange(1, k), len(prompts) * len(seeds)),
        }
    )
    cand = [base_scores.assign(cand=0)[[*keys.columns, "reward", "score", "correct"]]]
    if k > 1:
        ev = cfg.evaluate
        images, _, _ = generate(
            backbone, prompts.prompt.tolist(), extra, cfg.sampling, ev.batch_size, "best-of-K"
        )
        text = np.repeat(prompts.prompt.to_numpy(), len(seeds) * (k - 1)).tolist()
        cand.append(score_table(models, images.numpy(), text, keys, ev.batch_size, device))
    return pick_best(pd.concat(cand, ignore_index=True), label_reward)


def real_canvases(specs: list[Spec], seeds: list[int], bank: ItemBank, jitter: int) -> torch.Tensor:
    """One real canvas ``[N,1,32,32]`` in [0,1] per (spec, eval seed), prompt-major: a random
    correct layout of items from ``bank``, drawn from its own generator seeded with (eval seed,
    prompt row), so a canvas does not depend on the others."""
    out = []
    for i, spec in enumerate(specs):
        for s in seeds:
            rng = np.random.default_rng([s, i])
            out.append(render_layout(spec.sample_layout(rng), bank, rng, jitter))
    return torch.stack(out)


@torch.no_grad()
def through_vae(backbone: Backbone, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """``images`` in [0,1] encoded (the latent mean) and decoded by the backbone's VAE."""
    chunks = [
        backbone.decode(backbone.encode_images(images[i : i + batch_size])).cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(chunks)


def _uint8(images: torch.Tensor) -> np.ndarray:
    return (images * 255).round().to(torch.uint8).numpy()


def compute(
    cfg: Config,
    backbone: Backbone,
    prompts: pd.DataFrame,
    base_scores: pd.DataFrame,
    models: dict[str, object],
    device: torch.device,
) -> tuple[pd.DataFrame, dict]:
    """Every yardstick's scores (:data:`COLUMNS`), and what the report says of them: K, the
    label reward and, for each yardstick skipped, why (``skipped``)."""
    ev, seeds = cfg.evaluate, list(cfg.evaluate.seeds)
    label, k = cfg.labels.reward, None  # candidates.k: a param of this job only with best-of-K
    frames, skipped = [], {}
    if label in models:  # labels from a reward model, not imported human preferences
        k = cfg.candidates.k
        best = best_of_k(backbone, prompts, base_scores, k, seeds, label, models, cfg, device)
        frames.append(best.assign(yardstick=BEST_OF_K))
    else:
        skipped[BEST_OF_K] = f"the label reward {label!r} is not a reward model"
    if "spec" in prompts:
        w = cfg.world
        bank = ItemBank.load(w.fashion_mnist_dir, "test", w.item_size).select(JUDGE_TRAIN_ITEMS)
        specs = [Spec.from_json(s) for s in prompts.spec]
        real = real_canvases(specs, seeds, bank, w.jitter)
        keys = pd.DataFrame(
            {
                "prompt_id": np.repeat(prompts.prompt_id.to_numpy(), len(seeds)),
                "seed": np.tile(seeds, len(prompts)),
            }
        )
        text = np.repeat(prompts.prompt.to_numpy(), len(seeds)).tolist()
        vae = through_vae(backbone, real, ev.batch_size)
        for name, images in ((REAL, real), (VAE_CEILING, vae)):
            scores = score_table(models, _uint8(images), text, keys, ev.batch_size, device)
            frames.append(scores.assign(yardstick=name))
    else:
        skipped[VAE_CEILING] = skipped[REAL] = NO_SPECS
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    return table[COLUMNS], {"k": k, "label_reward": label, "skipped": skipped}
