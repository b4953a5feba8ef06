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
# Fashion-MNIST test items [0, JUDGE_TRAIN_ITEMS) train the independent judge (it shares no
# training item with the label reward, trained on the train split); the rest are held out from
# every world model: the judge's own accuracy and the yardsticks' real canvases use them.
JUDGE_TRAIN_ITEMS = 8000
