"""One module per stage: thin glue from validated params to library calls to artifacts.

What every stage computes with lives here too (the context it gets, its torch threads, the
record of the keys it reads), so that it is in each stage's import closure: a change to it
reruns every stage (:mod:`diffpref.config.dag`). How a stage is invoked and recorded in MLflow
(``diffpref.cli``, ``diffpref.tracking``) changes no output and reruns nothing.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffpref import settings
from diffpref.config.schema import Config, model_variant

STAGES = ["world", "prompts", "candidates", "rewards", "labels", "train", "evaluate", "report"]


@dataclass
class Ctx:
    """What a stage gets: the validated config, its objective and MLflow record."""

    cfg: Config
    objective: str | None
    run: Any  # tracking.StageRun
    threads: int
    seed: int | None = None  # the training replicate (train, evaluate of an objective)
    params_hash: str = ""  # of the job's resolved params (a checkpoint resumes only under it)
    rnd: int = 1  # the online round (1: the offline run)
    matched: bool = False  # the compute-matched offline control of round ``rnd``

    @property
    def data_round(self) -> int:
        """The round whose training data the job reads (a control: round 1's)."""
        return 1 if self.matched else self.rnd

    def data(self, kind: str) -> Path:
        """This job's ``candidates``, ``rewards`` or ``labels`` folder (its round's)."""
        return self.cfg.data_path(kind, self.objective, self.seed, self.data_round)

    @property
    def variant(self) -> str:
        """The model folder of a train/evaluate job: ``round<r>`` or ``matched<r>``."""
        return model_variant(self.rnd, self.matched)

    def model_dir(self, kind: str) -> Path:
        """This job's model folder of ``kind`` (adapters, eval, checkpoints)."""
        return self.cfg.model_dir(kind, str(self.objective), self.seed, self.variant)


def run(stage: str, ctx: Ctx, loaded: set[str]) -> tuple[dict[str, Any], list[str]]:
    """Run ``stage`` on ``ctx`` with ``ctx.threads`` torch threads. Returns the keys it read and
    the ``diffpref`` modules imported since ``loaded`` (``sys.modules`` before the stage
    module was first imported): what tests hold the computed dependencies to."""
    import torch

    torch.set_num_threads(ctx.threads)
    module = importlib.import_module(f"diffpref.stages.{stage}")
    with settings.recording() as reads:
        module.run(ctx)
    imported = sorted(m for m in set(sys.modules) - loaded if m.split(".")[0] == "diffpref")
    return reads, imported
