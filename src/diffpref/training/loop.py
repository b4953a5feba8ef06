"""The one training loop, for every objective in the registry.

Per step: draw a global batch of training units, let the objective's *method* turn this
process's share of it into a loss (errors of the trained model and, where needed, of the
reference), average the trainable gradients over the processes, step the optimiser, run the
method's after-step hook. One process is the special case N = 1 of ``train.num_processes``
(:mod:`diffpref.distributed`). Checkpoints every ``checkpoint_every`` steps
(:mod:`~diffpref.training.checkpoint`).
"""

from __future__ import annotations

import hashlib
import logging
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DataLoaderConfiguration
from tqdm import tqdm

from diffpref import distributed
from diffpref.backbones.base import Backbone
from diffpref.training.checkpoint import LoopState, resume, save_checkpoint
from diffpref.training.data import TrainData, batch_iterator
from diffpref.training.methods import CaptionMethod, GroupMethod, make_method

if TYPE_CHECKING:
    from diffpref.config import Objective, TrainParams

log = logging.getLogger(__name__)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class TrainResult:
    """``resumed_from``: the checkpoint folder this run started from (None: from step 0);
    ``summary`` says from which step (``resumed_from_step``) and how many steps this run
    executed itself (``steps_run``), so an interrupted run's record shows its resume."""

    history: list[dict[str, float]]
    summary: dict[str, float]
    method: GroupMethod | CaptionMethod
    resumed_from: Path | None = None


def stream_seed(seed: int, objective: str, streams: str) -> int:
    """The seed of a run's random streams (adapter init, timesteps and noise, and the batch
    order from ``+ 1``): the training seed itself when ``train.seed_streams`` is shared, so
    every objective at seed r sees the same draws (common random numbers: the report pairs
    their comparisons by seed); independent: offset by a stable hash of the objective's name
    (the same in every process, run and round, unlike Python's ``hash``)."""
    if streams == "shared":
        return seed
    digest = hashlib.sha256(objective.encode()).digest()
    return seed + 2 * int.from_bytes(digest[:4], "little")


def train(
    backbone: Backbone,
    data: TrainData,
    objective: Objective,
    tp: TrainParams,
    seed: int,
    checkpoint: Path,
    params_hash: str,
    previous: Path | None = None,
    previous_reference: bool = True,
) -> TrainResult:
    """Train ``objective``'s adapter; every process of a launched group calls this with the
    same arguments and ends with the same weights (rank 0 writes the checkpoints).
    ``previous``: an online round's previous adapter folder, which the LoRA starts from and,
    for objectives with a reference, is the frozen reference (None: the offline run);
    ``previous_reference=False`` keeps the base model as the reference (an offline run that
    continues ``previous``: the compute-matched control)."""
    device = backbone.device
    acc = make_accelerator(tp, device)
    if acc.num_processes != tp.num_processes:
        raise RuntimeError(
            f"train.num_processes is {tp.num_processes} but {acc.num_processes} processes "
            "were launched; run `diffpref train`, which launches them itself"
        )
    per = tp.batch_size // acc.num_processes  # config validation: batch_size % N == 0
    share = slice(acc.process_index * per, (acc.process_index + 1) * per)
    seed = stream_seed(seed, objective.name, tp.seed_streams)
    torch.manual_seed(seed)  # the same adapter init on every process
    data = data.to(device)
    method = make_method(backbone, objective, tp, data, previous, previous_reference)
    backbone.unet.train()
    if tp.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    opt = make_optimizer(method.params, tp)
    warm = max(tp.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    opt, sched = acc.prepare(opt, sched)
    loop = LoopState(method, torch.Generator().manual_seed(seed))
    acc.register_for_checkpointing(loop)
    resumed_from = resume(acc, checkpoint, params_hash)
    gen, start_step = loop.gen, loop.step
    if resumed_from is not None:
        log.info("resumed from %s at step %d of %d", resumed_from, start_step, tp.steps)
    # the batch order has its own generator: replaying it on resume reproduces the same batches
    batches = batch_iterator(
        len(data.groups), tp.batch_size, torch.Generator().manual_seed(seed + 1)
    )
    for _ in range(start_step):
        next(batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    bar = tqdm(
        total=tp.steps,
        initial=start_step,
        desc=f"train {objective.name}",
        unit="step",
        disable=not acc.is_main_process,
    )
    while loop.step < tp.steps:
        idx = next(batches).to(device)
        with acc.autocast():
            loss, metrics = method.step(idx, gen, share)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        distributed.average_gradients(method.params)
        grad_norm = acc.clip_grad_norm_(method.params, tp.max_grad_norm)
        opt.step()
        sched.step()
        loop.step += 1
        step = loop.step
        metrics = distributed.process_mean({"loss": loss, **metrics})
        metrics |= {"grad_norm": grad_norm, **method.after_step(step, gen)}
        bar.update(1)
        for k, v in metrics.items():
            loop.running.setdefault(k, []).append(float(v.detach() if torch.is_tensor(v) else v))
        if step % tp.log_every == 0 or step == tp.steps:
            row = {k: float(np.mean(v)) for k, v in loop.running.items()}
            row.update(step=step, lr=sched.get_last_lr()[0])
            loop.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            loop.running = {}
        if step % tp.checkpoint_every == 0 and step < tp.steps and acc.is_main_process:
            save_checkpoint(acc, checkpoint, params_hash)
    bar.close()
    elapsed = time.perf_counter() - start
    step, history = loop.step, loop.history
    done = step - start_step
    per_unit = data.groups.shape[1] if isinstance(method, GroupMethod) else tp.batch_size
    summary = {
        "steps": step,
        "resumed_from_step": start_step,
        "steps_run": done,
        "num_processes": acc.num_processes,
        "train_time_s": elapsed,
        "groups_per_s": done * tp.batch_size / elapsed if elapsed > 0 else 0.0,
        "images_per_s": done * tp.batch_size * per_unit / elapsed if elapsed > 0 else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        "trainable_params": sum(p.numel() for p in method.params),
        "final_loss": history[-1]["loss"] if history else float("nan"),
    }
    backbone.unet.eval()
    if tp.gradient_checkpointing:
        backbone.unet.disable_gradient_checkpointing()
    return TrainResult(history, summary, method, resumed_from)


def make_accelerator(tp: TrainParams, device: torch.device) -> Accelerator:
    """Mixed precision (autocast, fp16 loss scaling), checkpoints and, under a launcher, the
    process group through accelerate. The shared state is reset first: a stage trains once
    per process, but tests and notebooks train several times with different settings in one."""
    AcceleratorState._reset_state(reset_partial_state=True)
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[tp.mixed_precision]
    # split_batches: a step is one global batch split over the processes, so the LR schedule
    # steps once per step (else accelerate steps it N times, for N batches per step)
    return Accelerator(
        mixed_precision=precision,
        cpu=device.type == "cpu",
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )


def make_optimizer(params: list[torch.nn.Parameter], tp: TrainParams) -> torch.optim.Optimizer:
    """AdamW, or bitsandbytes' 8-bit AdamW (the diffusers scripts' ``--use_8bit_adam``): it
    matters for full fine-tuning; for LoRA the optimizer state is a few MB either way."""
    if tp.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise ImportError(
                "train.optimizer: adamw8bit needs bitsandbytes (pip install 'diffpref[gpu]' "
                "or pip install bitsandbytes); use train.optimizer: adamw otherwise"
            ) from None
        return bnb.optim.AdamW8bit(params, lr=tp.lr, weight_decay=tp.weight_decay)
    return torch.optim.AdamW(params, lr=tp.lr, weight_decay=tp.weight_decay)
