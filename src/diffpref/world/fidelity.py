"""Prompt-fidelity reward of the embedded world: a cell classifier plus the canvas rules.

GenEval judges an image by detecting objects and checking them against the prompt's
metadata; here an 11-way classifier (10 Fashion-MNIST classes + empty) reads each cell of the
2x2 canvas, and the score is the best agreement with any layout the prompt's spec allows:
``max over valid assignments of the geometric mean over cells of p(assigned content)``,
with brightness checked softly from the cell's intensity. It is continuous in [0,1] (a useful
reward for preference labels) and ~1 on correct clean canvases.

The canvas rules live in :class:`CanvasRuleReward`, which takes the per-cell classifier: the
label reward ``fidelity`` (a :class:`CellCNN`) and the independent ``judge``
(:mod:`diffpref.world.judge`, another net trained on other items) score by the same rules.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor, nn

from diffpref.world.captions import parse_prompt
from diffpref.world.data import NUM_CLASSES
from diffpref.world.nets import CellCNN, load_config, load_state, save_module
from diffpref.world.render import split_cells
from diffpref.world.spec import BRIGHT, DIM, NUM_CELLS, Spec, assignment_arrays

BRIGHT_THRESHOLD = 0.68  # bright items read ~0.95, dim ones ~0.43 (render.DIM_FACTOR=0.45)
BRIGHT_TEMPERATURE = 0.05
BRIGHT_TOPK = 4
R = TypeVar("R", bound="CanvasRuleReward")


def cell_brightness(cells: Tensor, topk: int = BRIGHT_TOPK) -> Tensor:
    """Mean of the ``topk`` brightest pixels per cell: ``[B,4,1,h,w] -> [B,4]``."""
    return cells.flatten(2).topk(topk, dim=2).values.mean(2)


class CanvasRuleReward(torch.nn.Module):
    """``score(images, prompts) -> [B]`` prompt fidelity in [0,1] from an 11-way cell
    ``classifier`` and the canvas rules; ``correct`` is its hard (argmax) version used for
    per-category accuracy. Subclasses pick the classifier (``name``: the reward's name)."""

    name: str

    def __init__(self, classifier: nn.Module, width: int) -> None:
        super().__init__()
        self.width = width
        self.classifier = classifier
        self.eval()

    # -- per-cell evidence ----------------------------------------------------------------
    def cell_log_probs(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(log p(content) [B,4,11], log p(bright|dim) [B,4,2])`` for ``[B,1,32,32]``."""
        cells = split_cells(images.float().clamp(0, 1))
        b = cells.shape[0]
        logits = self.classifier(cells.reshape(b * NUM_CELLS, *cells.shape[2:]))
        logp = logits.log_softmax(-1).reshape(b, NUM_CELLS, -1)
        z = (cell_brightness(cells) - BRIGHT_THRESHOLD) / BRIGHT_TEMPERATURE
        logb = torch.stack(
            [torch.nn.functional.logsigmoid(z), torch.nn.functional.logsigmoid(-z)], -1
        )
        return logp, logb

    def _assignment_terms(self, images: Tensor, specs: list[Spec]) -> tuple[Tensor, ...]:
        content, bright, valid = (
            torch.as_tensor(a, device=images.device) for a in assignment_arrays(specs)
        )
        return content, bright, valid

    @torch.no_grad()
    def score_specs(self, images: Tensor, specs: list[Spec]) -> Tensor:
        """Fidelity for structured specs (``score`` parses prompts, then calls this)."""
        images = self._to_device(images)
        logp, logb = self.cell_log_probs(images)
        content, bright, valid = self._assignment_terms(images, specs)
        a = content.shape[1]
        lp = logp[:, None].expand(-1, a, -1, -1).gather(3, content[..., None])[..., 0]
        lb_all = logb[:, None].expand(-1, a, -1, -1)  # [B,A,4,2]
        lb = torch.where(
            bright == BRIGHT,
            lb_all[..., 0],
            torch.where(bright == DIM, lb_all[..., 1], torch.zeros_like(lp)),
        )
        per_assignment = ((lp + lb).mean(-1)).masked_fill(~valid, -torch.inf)
        return per_assignment.max(1).values.exp()

    @torch.no_grad()
    def correct_specs(self, images: Tensor, specs: list[Spec]) -> Tensor:
        """Whether the argmax reading of each canvas satisfies its spec (bool ``[B]``)."""
        images = self._to_device(images)
        logp, logb = self.cell_log_probs(images)
        pred = logp.argmax(-1)  # [B,4]
        is_bright = logb[..., 0] > logb[..., 1]  # [B,4]
        content, bright, valid = self._assignment_terms(images, specs)
        ok_content = (pred[:, None] == content).all(-1)
        ok_bright = ((bright == 0) | ((bright == BRIGHT) == is_bright[:, None])).all(-1)
        return (ok_content & ok_bright & valid).any(1)

    # -- RewardModel interface -------------------------------------------------------------
    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.score_specs(images, [parse_prompt(p) for p in prompts])

    def correct(self, images: Tensor, prompts: list[str]) -> Tensor:
        return self.correct_specs(images, [parse_prompt(p) for p in prompts])

    @torch.no_grad()
    def classify_cells(self, cells: Tensor) -> Tensor:
        """Logits ``[N,11]`` for cells ``[N,1,16,16]`` (class 10 = empty)."""
        return self.classifier(self._to_device(cells).float())

    def _to_device(self, x: Tensor) -> Tensor:
        return x.to(next(self.parameters()).device)

    # -- persistence ---------------------------------------------------------------------
    def save(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> None:
        config = {
            "kind": self.name,
            "width": self.width,
            "num_classes": NUM_CLASSES + 1,
            "bright_threshold": BRIGHT_THRESHOLD,
        }
        save_module(self, Path(directory), config, dtype)

    @classmethod
    def load(cls: type[R], directory: str | Path, device: str | torch.device = "cpu") -> R:
        cfg = load_config(Path(directory))
        if cfg.get("kind") != cls.name:  # e.g. the judge's folder given for the label reward
            raise ValueError(
                f"{Path(directory) / 'config.json'}: kind: {cfg.get('kind')!r} is not a "
                f"{cls.name!r} reward"
            )
        model = cls(width=int(cfg["width"]))
        load_state(model, Path(directory))
        return model.to(device).eval()


class FidelityReward(CanvasRuleReward):
    """The label reward of the embedded world: a :class:`CellCNN` on Fashion-MNIST's train
    split."""

    name = "fidelity"

    def __init__(self, width: int = 32) -> None:
        super().__init__(CellCNN(NUM_CLASSES + 1, width=width), width)
