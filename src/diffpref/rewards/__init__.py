"""Reward models behind one ``score(images, prompts)`` interface, loaded lazily by name.

The embedded world's rewards (``fidelity``, ``quality``) come from the ``world`` stage; the
real ones (``pickscore``, ``clip_score``, ``aesthetic``, ``hpsv2``, ``imagereward``) from
``rewards.sources`` (a local directory or hub id each; the official hub ids by default).
Nothing is imported before a reward is asked for, so optional extras stay optional.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from diffpref import registry

if TYPE_CHECKING:
    from diffpref.config import Config


REGISTRY, WORLD = registry.REWARDS, registry.WORLD_REWARDS  # name -> (module, class)


def load_reward(name: str, cfg: Config, device: torch.device):
    if name not in REGISTRY:
        raise KeyError(f"unknown reward model {name!r} (known: {', '.join(REGISTRY)})")
    module, cls_name = REGISTRY[name]
    cls = getattr(importlib.import_module(module), cls_name)
    if name in WORLD:  # trained by the world stage
        return cls.load(Path(cfg.path("world", "rewards", name)), device)
    source = cfg.rewards.source(name, cls.DEFAULT_SOURCE)
    return cls.load(source, device, getattr(torch, cfg.rewards.dtype))


@torch.no_grad()
def score_table(
    models: dict[str, object],
    images: np.ndarray,
    prompts: list[str],
    keys: pd.DataFrame,
    batch_size: int,
    device: torch.device,
) -> pd.DataFrame:
    """Long table ``keys + reward, score[, correct]`` for every model and image.

    ``images`` is uint8 [N,C,H,W]; ``keys`` holds the identifying columns of each image row.
    """
    out = []
    for name, model in models.items():
        scores, correct = [], []
        for s in tqdm(range(0, len(images), batch_size), desc=f"reward {name}", unit="batch"):
            x = torch.from_numpy(images[s : s + batch_size]).to(device).float() / 255
            p = prompts[s : s + batch_size]
            scores.append(model.score(x, p).float().cpu())
            if hasattr(model, "correct"):
                correct.append(model.correct(x, p).cpu())
        df = keys.copy()
        df["reward"] = name
        df["score"] = torch.cat(scores).numpy()
        df["correct"] = torch.cat(correct).numpy().astype(float) if correct else np.nan
        out.append(df)
    return pd.concat(out, ignore_index=True)
