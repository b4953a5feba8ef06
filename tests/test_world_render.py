"""Rendering, rewards and their held-out behaviour on real Fashion-MNIST test items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffpref.world.data import (
    DEFAULT_FASHION_MNIST_DIR,
    FashionMNISTNotFoundError,
    ItemBank,
    load_fashion_mnist,
)
from diffpref.world.render import CELL, render_layout, split_cells
from diffpref.world.spec import CATEGORIES, NUM_CELLS, Spec

pytestmark = pytest.mark.skipif(
    not (DEFAULT_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(scope="module")
def test_bank() -> ItemBank:
    return ItemBank.load(split="test")


def test_missing_dataset_error_names_file_and_fix(tmp_path) -> None:
    with pytest.raises(FashionMNISTNotFoundError) as err:
        load_fashion_mnist(tmp_path, "test")
    msg = str(err.value)
    assert "t10k-images-idx3-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "fashion_mnist_dir" in msg


def test_items_normalised_to_full_intensity(test_bank: ItemBank) -> None:
    top = test_bank.items.flatten(1).topk(4, dim=1).values.mean(1)
    assert test_bank.items.shape[1:] == (14, 14)
    assert float(top.min()) > 0.75  # clipping at 1 costs a little
    assert float(test_bank.items.max()) <= 1.0


def test_render_places_items_in_their_cells(test_bank: ItemBank) -> None:
    rng = np.random.default_rng(0)
    layout = [(1, 3, "bright"), (2, 8, "dim")]
    img = render_layout(layout, test_bank, rng)
    assert img.shape == (1, 32, 32)
    cells = split_cells(img[None])[0]
    mass = cells.flatten(1).sum(1)
    assert mass[0] == 0 and mass[3] == 0
    assert mass[1] > 5 and mass[2] > 2
    assert 0.38 < float(cells[2].max()) <= 0.46  # dim item
    assert float(cells[1].max()) > 0.9
    # the item stays inside its cell: a 14 px item with <=1 px jitter in a 16 px cell
    assert cells.shape[-1] == CELL


def test_split_cells_is_row_major() -> None:
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 20, 3] = 1.0  # bottom-left
    cells = split_cells(img)
    assert cells.shape == (1, NUM_CELLS, 1, 16, 16)
    assert float(cells[0, 2].sum()) == 1.0


def test_sample_layout_satisfies_spec() -> None:
    rng = np.random.default_rng(1)
    spec = Spec("position", (4, 8), relation="above")
    for _ in range(20):
        layout = spec.sample_layout(rng)
        cell_of = {k: c for c, k, _ in layout}
        assert cell_of[4] // 2 < cell_of[8] // 2
    counting = Spec("counting", (5,), count=3)
    assert len(counting.sample_layout(rng)) == 3
    assert all(len(Spec(c, *_args(c)).assignments()) > 0 for c in CATEGORIES)


def _args(cat: str) -> tuple:
    return {
        "single": ((1,),),
        "two_object": ((1, 2),),
        "counting": ((1,), 2),
        "position": ((1, 2), 1, "left"),
        "brightness": ((1,), 1, None, "dim"),
    }[cat]
