"""The independent judge of the embedded world: prompt fidelity by the same canvas rules as
the label reward ``fidelity``, read by a classifier that shares no weights, no architecture and
no training item with it.

Labels rank candidates by ``fidelity``; an objective can learn that model's quirks, so verdicts
(``evaluate.judge``) use this judge: a :class:`~diffpref.world.nets.CellLeNet` trained on
Fashion-MNIST *test* items ``[0, JUDGE_TRAIN_ITEMS)`` (``fidelity`` trains on the train split),
with its accuracy measured on the test items after them.
"""

from __future__ import annotations

from diffpref.world.data import NUM_CLASSES
from diffpref.world.fidelity import CanvasRuleReward
from diffpref.world.nets import CellLeNet


class JudgeReward(CanvasRuleReward):
    """``score(images, prompts) -> [B]`` in [0,1], like ``fidelity``, from a LeNet cell reader."""

    name = "judge"

    def __init__(self, width: int = 32) -> None:
        super().__init__(CellLeNet(NUM_CLASSES + 1, width=width), width)
