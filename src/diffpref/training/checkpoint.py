"""Checkpoints: accelerate ``save_state`` of the trainable state only, swapped in atomically.

An interrupted run resumes from the last checkpoint (same params hash) and ends with the same
weights as an uninterrupted run. With several processes rank 0 writes it (the trainable
state, optimizer and generators are identical on every process) and every process loads it:
nothing in it depends on the number of processes. (accelerate's global RNG states in it are
rank 0's alone: the global RNG only seeds the adapter's init; the steps draw from their own
generators.)
"""

from __future__ import annotations

import copy
import logging
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from diffpref.io import check_replaceable, is_own, load_weights, mark
from diffpref.objectives.rethinking import ReferenceSchedule
from diffpref.training.methods import CaptionMethod, GroupMethod

log = logging.getLogger(__name__)

STATE_DIR, HASH_FILE = "state", "params_hash.txt"


class LoopState:
    """What accelerate's ``save_state`` does not hold itself: the method's trainable state
    (LoRA or soft tokens, moving reference), the step generator, the step and the history,
    with the metrics of the steps since its last row (a resume logs the same means). No model
    is ``prepare``d, so checkpoints never contain the frozen UNet."""

    def __init__(self, method: GroupMethod | CaptionMethod, gen: torch.Generator):
        self.method, self.gen = method, gen
        self.step = 0
        self.history: list[dict[str, float]] = []
        self.running: dict[str, list[float]] = {}

    def state_dict(self) -> dict:
        return {
            "method": copy.deepcopy(self.method.state()),
            "gen": self.gen.get_state(),
            "step": self.step,
            "history": list(self.history),
            "running": copy.deepcopy(self.running),
        }

    def load_state_dict(self, s: dict) -> None:
        self.method.load_state(s["method"])
        self.gen.set_state(s["gen"])
        self.step, self.history = s["step"], s["history"]
        self.running = s.get("running", {})  # absent from checkpoints of older versions


def save_checkpoint(acc: Accelerator, checkpoint: Path, params_hash: str) -> None:
    """``accelerate.save_state`` into a fresh folder, then swapped in: a crash mid-save leaves
    the previous checkpoint intact. Rank 0 only (``save_state`` has no collective here: no
    model is prepared). The checkpoint folder is marked as diffpref's (:data:`diffpref.io.MARKER`):
    only such a folder is written into, and removed once training is done (:func:`discard`)."""
    check_replaceable(checkpoint)
    checkpoint.mkdir(parents=True, exist_ok=True)
    if not is_own(checkpoint):
        mark(checkpoint)
    tmp, final, old = (checkpoint / f"{STATE_DIR}{s}" for s in (".tmp", "", ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    acc.save_state(str(tmp))
    (tmp / HASH_FILE).write_text(params_hash)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def discard(checkpoint: Path) -> None:
    """Remove a finished run's checkpoint folder, if diffpref wrote it (never a user's)."""
    if is_own(checkpoint):
        shutil.rmtree(checkpoint)


def complete_checkpoints(checkpoint: Path, params_hash: str) -> list[Path]:
    """The folders of ``checkpoint`` a run with ``params_hash`` may resume from, newest first:
    ``state``, then ``state.old`` (the previous one, left by a crash between the two renames
    of :func:`save_checkpoint`). A folder counts only if its params hash file, written last,
    matches: one without it (damaged, or never finished) is passed over for the older one."""
    found = []
    for state in (checkpoint / STATE_DIR, checkpoint / f"{STATE_DIR}.old"):
        hash_file = state / HASH_FILE
        if hash_file.is_file() and hash_file.read_text() == params_hash:
            found.append(state)
        elif state.is_dir():
            log.warning("not resuming from %s: incomplete or of other params", state)
    return found


def resume(acc: Accelerator, checkpoint: Path, params_hash: str) -> Path | None:
    """Load the newest complete checkpoint of these params into ``acc``'s registered state;
    the folder loaded, or None (nothing to resume: the run starts at step 0)."""
    found = complete_checkpoints(checkpoint, params_hash)
    if not found:
        return None
    state = found[0]
    for custom in sorted(state.glob("custom_checkpoint_*.pkl")):
        # accelerate unpickles these in full: first prove they hold tensors and our state
        load_weights(custom, "checkpoint", allow=[ReferenceSchedule])
    acc.load_state(str(state))
    return state
