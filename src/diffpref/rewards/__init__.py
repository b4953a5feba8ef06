"""Reward models behind one ``score(images, prompts)`` interface, loaded lazily by name.

The embedded world's rewards (``fidelity``, ``quality``) come from the ``world`` stage; the
real ones (``pickscore``, ``clip_score``, ``aesthetic``, ``hpsv2``, ``imagereward``) from
``rewards.sources`` (a local directory or hub id each; the official hub ids by default).
Nothing is imported before a reward is asked for, so optional extras stay optional.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

if TYPE_CHECKING:
    from diffpref.config import Config


def _world_reward(name: str) -> Callable[[Config, torch.device], object]:
    def load(cfg: Config, device: torch.device):
        if name == "fidelity":
            from diffpref.rewards.fidelity import FidelityReward as cls
        else:
            from diffpref.rewards.quality import QualityReward as cls
        return cls.load(Path(cfg.path("world", "rewards", name)), device)

    return load


def _real_reward(name: str, cls_name: str) -> Callable[[Config, torch.device], object]:
    """``cls_name`` of module ``diffpref.rewards.<name>``, imported only when asked for."""

    def load(cfg: Config, device: torch.device):
        cls = getattr(importlib.import_module(f"diffpref.rewards.{name}"), cls_name)
        source = cfg.rewards.source(name, cls.DEFAULT_SOURCE)
        return cls.load(source, device, getattr(torch, cfg.rewards.dtype))

    return load


REGISTRY: dict[str, Callable[[Config, torch.device], object]] = {
    "fidelity": _world_reward("fidelity"),
    "quality": _world_reward("quality"),
    "pickscore": _real_reward("pickscore", "PickScore"),
    "clip_score": _real_reward("clip_score", "ClipScore"),
    "aesthetic": _real_reward("aesthetic", "Aesthetic"),
    "hpsv2": _real_reward("hpsv2", "HPSv2"),
    "imagereward": _real_reward("imagereward", "ImageReward"),
}


def load_reward(name: str, cfg: Config, device: torch.device):
    if name not in REGISTRY:
        raise KeyError(f"unknown reward model {name!r} (known: {', '.join(REGISTRY)})")
    return REGISTRY[name](cfg, device)


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
