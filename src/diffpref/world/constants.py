"""Constants of the embedded world, free of heavy imports (params validation reads them)."""

from __future__ import annotations

from pathlib import Path

DEFAULT_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)
CATEGORIES: tuple[str, ...] = ("single", "two_object", "counting", "position", "brightness")
