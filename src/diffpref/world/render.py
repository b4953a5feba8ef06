"""Rendering canvases: Fashion-MNIST items placed in the cells of a 2x2 grid."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from diffpref.world.data import ItemBank
from diffpref.world.spec import GRID, NUM_CELLS, Spec

CANVAS = 32
CELL = CANVAS // GRID
DIM_FACTOR = 0.45  # "dim" items: full intensity x this; the fidelity reward splits at ~0.68

Layout = list[tuple[int, int, str]]  # (cell, class, "bright"|"dim")


def place(canvas: Tensor, cell: int, item: Tensor, jitter: tuple[int, int] = (0, 0)) -> None:
    """Paste ``item`` [s,s] into ``cell`` of ``canvas`` [H,W], centred plus ``jitter`` px."""
    s = item.shape[-1]
    base = (CELL - s) // 2
    r0 = (cell // GRID) * CELL + base + jitter[0]
    c0 = (cell % GRID) * CELL + base + jitter[1]
    canvas[r0 : r0 + s, c0 : c0 + s] = torch.maximum(canvas[r0 : r0 + s, c0 : c0 + s], item)


def render_layout(
    layout: Layout,
    bank: ItemBank,
    rng: np.random.Generator,
    jitter: int = 1,
    dim_factor: float = DIM_FACTOR,
) -> Tensor:
    """Render one canvas ``[1,32,32]`` in [0,1]; empty cells stay black."""
    canvas = torch.zeros(CANVAS, CANVAS)
    max_jit = min(jitter, (CELL - bank.size) // 2)
    for cell, cls, light in layout:
        item = bank.sample(cls, rng)
        if light == "dim":
            item = item * dim_factor
        jit = tuple(int(v) for v in rng.integers(-max_jit, max_jit + 1, size=2))
        place(canvas, cell, item, jit)  # type: ignore[arg-type]
    return canvas[None]


def render_specs(
    specs: list[Spec], bank: ItemBank, rng: np.random.Generator, jitter: int = 1
) -> tuple[Tensor, list[Layout]]:
    """Render a random correct canvas for every spec: ``([N,1,32,32], layouts)``."""
    layouts = [spec.sample_layout(rng) for spec in specs]
    images = torch.stack([render_layout(lay, bank, rng, jitter) for lay in layouts])
    return images, layouts


def split_cells(images: Tensor) -> Tensor:
    """``[B,C,32,32]`` -> ``[B,4,C,16,16]`` in cell order (row-major)."""
    b, c, h, w = images.shape
    g = GRID
    x = images.reshape(b, c, g, h // g, g, w // g).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, NUM_CELLS, c, h // g, w // g)
