"""Held-out metrics of the world's reward models and base model (Fashion-MNIST *test* items)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffpref.world.data import NUM_CLASSES, ItemBank
from diffpref.world.degrade import degrade_items, dirty_empty
from diffpref.world.fidelity import CanvasRuleReward
from diffpref.world.prompts import all_specs
from diffpref.world.quality import QualityReward
from diffpref.world.render import CELL, Layout, render_layout, split_cells
from diffpref.world.spec import (
    CATEGORIES,
    COUNTS,
    EMPTY,
    NUM_CELLS,
    Spec,
    satisfies_relation,
)


def auc(pos: Tensor, neg: Tensor) -> float:
    """ROC AUC of scores (positives should be higher), ties counted half."""
    pos, neg = pos.flatten().double(), neg.flatten().double()
    greater = (pos[:, None] > neg[None]).double().mean()
    ties = (pos[:, None] == neg[None]).double().mean()
    return float(greater + 0.5 * ties)


@torch.no_grad()
def classifier_accuracy(
    fid: CanvasRuleReward,
    bank: ItemBank,
    gen: torch.Generator,
    batch: int = 2048,
    prefix: str = "classifier",
) -> dict[str, float]:
    """Accuracy on every item of ``bank`` in a cell (bright and dim), and on empty cells, as
    ``<prefix>_acc``, ``<prefix>_acc_dim`` and ``<prefix>_acc_empty``."""
    from diffpref.world.render import DIM_FACTOR
    from diffpref.world.train import empty_cells, item_cells

    hits = {"bright": 0, "dim": 0}
    n = len(bank.labels)
    for i in range(0, n, batch):
        idx = torch.arange(i, min(n, i + batch))
        for light, k in (("bright", 1.0), ("dim", DIM_FACTOR)):
            x = item_cells(bank, idx, gen, jitter=1, intensity=(k, k))
            pred = fid.classify_cells(x).argmax(-1).cpu()
            hits[light] += int((pred == bank.labels[idx]).sum())
    empties = empty_cells(1000, gen)
    empty_acc = float((fid.classify_cells(empties).argmax(-1).cpu() == EMPTY).float().mean())
    return {
        f"{prefix}_acc": hits["bright"] / n,
        f"{prefix}_acc_dim": hits["dim"] / n,
        f"{prefix}_acc_empty": empty_acc,
    }


def wrong_layout(spec: Spec, rng: np.random.Generator) -> Layout:
    """A canvas that violates ``spec`` in the way its category tests: another class, another
    count, swapped positions, or the other brightness."""
    layout = spec.sample_layout(rng)
    if spec.category in ("single", "two_object"):
        j = int(rng.integers(len(layout)))
        cell, _, light = layout[j]
        others = [k for k in range(NUM_CLASSES) if k not in spec.classes]
        layout[j] = (cell, int(rng.choice(others)), light)
    elif spec.category == "counting":
        options = [n for n in (spec.count - 1, spec.count + 1) if 1 <= n <= max(COUNTS)]
        n = int(rng.choice(options))
        cells = rng.permutation(NUM_CELLS)[:n]
        layout = [(int(c), spec.classes[0], "bright") for c in cells]
    elif spec.category == "position":
        (ca, ka, la), (cb, kb, lb) = sorted(layout, key=lambda e: e[1] != spec.classes[0])
        layout = [(cb, ka, la), (ca, kb, lb)]
        assert not satisfies_relation(cb, ca, spec.relation)
    else:
        flip = {"bright": "dim", "dim": "bright"}
        layout = [(c, k, flip[light]) for c, k, light in layout]
    return layout


def random_specs(n: int, rng: np.random.Generator, category: str) -> list[Spec]:
    pool = all_specs(category)
    return [pool[int(i)] for i in rng.integers(len(pool), size=n)]


@torch.no_grad()
def fidelity_canvas_metrics(
    fid: CanvasRuleReward, bank: ItemBank, n_per_category: int, rng: np.random.Generator
) -> dict[str, float]:
    """Per category: ``correct`` rate and mean score on correct test canvases, and how often
    wrong canvases are accepted (should be ~0) with their mean score; keys start with the
    reward's name (``fidelity_``, ``judge_``)."""
    r = fid.name
    out: dict[str, float] = {}
    for cat in CATEGORIES:
        specs = random_specs(n_per_category, rng, cat)
        good = torch.stack([render_layout(s.sample_layout(rng), bank, rng) for s in specs])
        bad = torch.stack([render_layout(wrong_layout(s, rng), bank, rng) for s in specs])
        out[f"{r}_correct_rate/{cat}"] = float(fid.correct_specs(good, specs).float().mean())
        out[f"{r}_score/{cat}"] = float(fid.score_specs(good, specs).mean())
        out[f"{r}_wrong_accept/{cat}"] = float(fid.correct_specs(bad, specs).float().mean())
        out[f"{r}_wrong_score/{cat}"] = float(fid.score_specs(bad, specs).mean())
    return out


def degrade_canvases(images: Tensor, bank: ItemBank, gen: torch.Generator) -> Tensor:
    """Degrade every occupied cell of canvases and dirty some empty ones."""
    cells = split_cells(images).clone()  # [B,4,1,16,16]
    b = cells.shape[0]
    flat = cells.reshape(b * NUM_CELLS, 1, CELL, CELL)
    occupied = flat.flatten(1).amax(1) > 0.05
    idx = torch.nonzero(occupied).flatten()
    from diffpref.world.train import item_cells

    others = item_cells(bank, torch.randint(len(bank.labels), (len(idx),), generator=gen), gen)
    flat[idx] = degrade_items(flat[idx], others, gen)
    empty = torch.nonzero(~occupied).flatten()
    dirty = empty[torch.rand(len(empty), generator=gen) < 0.3]
    flat[dirty] = dirty_empty(len(dirty), CELL, gen)
    g = 2
    x = flat.reshape(b, g, g, 1, CELL, CELL).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, 1, g * CELL, g * CELL)


@torch.no_grad()
def quality_metrics(
    qual: QualityReward, bank: ItemBank, n: int, rng: np.random.Generator, gen: torch.Generator
) -> dict[str, float]:
    """AUC of real test canvases vs degraded copies, and at cell level."""
    from diffpref.world.train import quality_batch

    specs = [s for cat in CATEGORIES for s in random_specs(max(1, n // len(CATEGORIES)), rng, cat)]
    real = torch.stack([render_layout(s.sample_layout(rng), bank, rng) for s in specs])
    fake = degrade_canvases(real, bank, gen)
    s_real, s_fake = qual.score(real).cpu(), qual.score(fake).cpu()
    x, y = quality_batch(bank, 2 * n, gen)
    logits = qual.cell_logits(x.to(next(qual.parameters()).device)).cpu()
    return {
        "quality_auc": auc(s_real, s_fake),
        "quality_auc_cells": auc(logits[y == 1], logits[y == 0]),
        "quality_real_mean": float(s_real.mean()),
        "quality_degraded_mean": float(s_fake.mean()),
    }
