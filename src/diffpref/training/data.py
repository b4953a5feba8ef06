"""The training units: cached candidate latents and text, indexed by an objective's labels,
and the shuffled batch order over them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from diffpref.backbones.base import Cond
from diffpref.io import load_tensors, read_table


@dataclass
class TrainData:
    """Everything a step indexes into, on the training device; built once from the artifacts."""

    latents: Tensor  # [N, C, H, W] cached candidate latents
    text: Cond  # per prompt row
    uncond: Cond  # [1, ...]
    groups: Tensor  # [M, G] latent rows of each training unit (pair: winner, loser)
    prompt_rows: Tensor  # [M]
    extras: dict[str, Tensor] = field(default_factory=dict)  # prob / advantage / desirable

    def to(self, device: torch.device) -> TrainData:
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return TrainData(
            self.latents.to(device),
            mv(self.text),
            mv(self.uncond),
            self.groups.to(device),
            self.prompt_rows.to(device),
            mv(self.extras),
        )


def load_train_data(cdir: Path, ldir: Path, labels: str) -> TrainData:
    """Index the cached latents/text of the candidates folder ``cdir`` by the objective's label
    file in ``ldir`` (round 1's, or a later online round's own)."""
    cands = read_table(cdir / "candidates.parquet", ["prompt_id", "cand_idx", "row", "prompt_row"])
    row = {(p, int(c)): int(r) for p, c, r in zip(cands.prompt_id, cands.cand_idx, cands.row)}
    prow = dict(zip(cands.prompt_id, cands.prompt_row))
    text_all = load_tensors(cdir / "text.safetensors")
    text = {k: v for k, v in text_all.items() if not k.startswith("uncond.")}
    uncond = {k.removeprefix("uncond."): v for k, v in text_all.items() if k.startswith("uncond.")}
    latents = load_tensors(cdir / "latents.safetensors")["latents"]
    extras: dict[str, Tensor] = {}
    if labels in ("pairwise", "smoothed"):
        df = read_table(ldir / f"{labels}.parquet", ["prompt_id", "winner", "loser"])
        groups = [[row[p, w], row[p, lo]] for p, w, lo in zip(df.prompt_id, df.winner, df.loser)]
        pids = df.prompt_id
        if labels == "smoothed":
            extras["prob"] = torch.tensor(df.prob.to_numpy(), dtype=torch.float32)
    elif labels == "listwise":
        df = read_table(ldir / "listwise.parquet", ["prompt_id", "cand_idx", "advantage"])
        lists = list(df.sort_values(["prompt_id", "cand_idx"]).groupby("prompt_id", sort=True))
        groups = [[row[p, int(c)] for c in g.cand_idx] for p, g in lists]
        pids = pd.Series([p for p, _ in lists])
        extras["advantage"] = torch.tensor(
            np.stack([g.advantage.to_numpy() for _, g in lists]), dtype=torch.float32
        )
    elif labels == "pointwise":
        df = read_table(ldir / "pointwise.parquet", ["prompt_id", "cand_idx", "desirable"])
        groups = [[row[p, int(c)]] for p, c in zip(df.prompt_id, df.cand_idx)]
        pids = df.prompt_id
        extras["desirable"] = torch.tensor(df.desirable.to_numpy(), dtype=torch.bool)
    elif labels in ("winners", "captions"):
        df = read_table(ldir / "pairwise.parquet", ["prompt_id", "winner", "score_w"])
        if labels == "captions":  # one image per caption: the prompt's best candidate
            df = df.sort_values("score_w", ascending=False).drop_duplicates("prompt_id")
        df = df.drop_duplicates(["prompt_id", "winner"]).sort_values(["prompt_id", "winner"])
        groups = [[row[p, int(w)]] for p, w in zip(df.prompt_id, df.winner)]
        pids = df.prompt_id
    else:
        raise ValueError(f"unknown label kind {labels!r}")
    if not groups:
        raise ValueError(f"{ldir / labels}.parquet: no training examples")
    return TrainData(
        latents=latents,
        text=text,
        uncond=uncond,
        groups=torch.tensor(groups, dtype=torch.long),
        prompt_rows=torch.tensor([int(prow[p]) for p in pids], dtype=torch.long),
        extras=extras,
    )


def batch_iterator(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Shuffled epochs without replacement; a batch never spans two permutations."""
    while True:
        perm = torch.randperm(n, generator=gen)
        if n < batch_size:
            perm = perm.repeat(math.ceil(batch_size / n))
        for s in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[s : s + batch_size]
