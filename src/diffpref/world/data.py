"""Fashion-MNIST loading and the item bank the world renders from.

The world only ever reads the four idx files of Fashion-MNIST (the Debian package
``dataset-fashion-mnist`` installs them), so users elsewhere can point at any folder that
holds them.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffpref.world.constants import CLASS_NAMES, DEFAULT_FASHION_MNIST_DIR, NUM_CLASSES

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_FASHION_MNIST_DIR",
    "NUM_CLASSES",
    "ItemBank",
    "load_fashion_mnist",
    "resize_items",
]


Split = Literal["train", "test"]
_FILES = {"train": "train", "test": "t10k"}


class FashionMNISTNotFoundError(FileNotFoundError):
    """Raised with an actionable message when the dataset files are missing."""


def _read_idx(path: Path, offset: int) -> np.ndarray:
    if not path.is_file():
        raise FashionMNISTNotFoundError(
            f"Fashion-MNIST file not found: {path}. Install the dataset with "
            "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root), or set "
            "`world.fashion_mnist_dir` in params.yaml to a folder holding "
            "{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz."
        )
    with gzip.open(path, "rb") as fh:
        return np.frombuffer(fh.read(), np.uint8, offset=offset).copy()


@lru_cache(maxsize=4)
def load_fashion_mnist(
    directory: str | Path = DEFAULT_FASHION_MNIST_DIR, split: Split = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images uint8 [N,28,28], labels int64 [N])`` for ``split`` (cached)."""
    directory = Path(directory)
    stem = _FILES[split]
    images = _read_idx(directory / f"{stem}-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(directory / f"{stem}-labels-idx1-ubyte.gz", 8).astype(np.int64)
    if len(images) != len(labels):
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels")
    return images, labels


def resize_items(images: np.ndarray | Tensor, size: int, topk: int = 4) -> Tensor:
    """Resize 28x28 items to ``size`` and normalise them to *full intensity*.

    Full intensity means the mean of the ``topk`` brightest pixels is 1 (then clipped to
    [0,1]); this makes "bright" and "dim" items separable by the same statistic the fidelity
    reward measures, whatever the original exposure of the photo.
    """
    x = torch.as_tensor(images).float()
    if x.max() > 1.5:
        x = x / 255.0
    x = F.interpolate(x[:, None], size=(size, size), mode="bilinear", antialias=True)
    ref = x.flatten(1).topk(topk, dim=1).values.mean(1).clamp_min(1e-3)
    return (x / ref[:, None, None, None]).clamp(0.0, 1.0)[:, 0]


@dataclass
class ItemBank:
    """Pre-resized, intensity-normalised items per class, to render canvases quickly."""

    items: Tensor  # [N, s, s] float in [0,1]
    labels: Tensor  # [N] int64
    by_class: list[Tensor]  # indices of each class

    @classmethod
    def from_arrays(cls, images: np.ndarray, labels: np.ndarray, size: int) -> ItemBank:
        items = resize_items(images, size)
        lab = torch.as_tensor(labels, dtype=torch.int64)
        by_class = [torch.nonzero(lab == c).flatten() for c in range(NUM_CLASSES)]
        return cls(items=items, labels=lab, by_class=by_class)

    @classmethod
    def load(
        cls,
        directory: str | Path = DEFAULT_FASHION_MNIST_DIR,
        split: Split = "train",
        size: int = 14,
    ) -> ItemBank:
        images, labels = load_fashion_mnist(directory, split)
        return cls.from_arrays(images, labels, size)

    def subset(self, n: int) -> ItemBank:
        """The first ``n`` items (fast checks on a slice of the test set)."""
        return self.select(0, n)

    def select(self, start: int, stop: int | None = None) -> ItemBank:
        """Items ``[start, stop)``: the judge's training items, or those held out from it."""
        items, labels = self.items[start:stop], self.labels[start:stop]
        by_class = [torch.nonzero(labels == c).flatten() for c in range(NUM_CLASSES)]
        return ItemBank(items=items, labels=labels, by_class=by_class)

    @property
    def size(self) -> int:
        return int(self.items.shape[-1])

    def sample(self, cls_idx: int, gen: np.random.Generator) -> Tensor:
        """One random item of class ``cls_idx``."""
        pool = self.by_class[cls_idx]
        return self.items[pool[int(gen.integers(len(pool)))]]
