"""The one training loop: LoRA on the backbone's UNet, any objective from the registry.

Per step: draw a batch of groups (pairs, lists or single images), share one timestep and one
noise draw within each group, compute per-sample denoising errors of the trained model (and of
the reference, adapters disabled, when the objective needs one), hand them to the objective's
pure ``loss`` and step the optimiser. Checkpoints are written atomically so an interrupted run
resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from diffpref.backbones.base import Backbone, Cond, cond_index
from diffpref.io import read_table
from diffpref.objectives.base import Errors, denoising_error

if TYPE_CHECKING:
    from diffpref.config import Objective, TrainParams

log = logging.getLogger(__name__)

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@dataclass
class TrainData:
    """Everything a step indexes into, on the training device; built once from the artifacts."""

    latents: Tensor  # [N, C, H, W] cached candidate latents
    text: Cond  # per prompt row
    uncond: Cond  # [1, ...]
    groups: Tensor  # [M, G] latent rows of each training unit (pair: winner, loser)
    prompt_rows: Tensor  # [M]
    extras: dict[str, Tensor] = field(default_factory=dict)  # prob / advantage / desirable

    def to(self, device: torch.device) -> TrainData:
        mv = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
        return TrainData(
            self.latents.to(device), mv(self.text), mv(self.uncond), self.groups.to(device),
            self.prompt_rows.to(device), mv(self.extras),
        )


def load_train_data(results: Path, labels: str) -> TrainData:
    """Index the cached latents/text by the objective's label file."""
    cdir = results / "candidates"
    cands = read_table(cdir / "candidates.parquet", ["prompt_id", "cand_idx", "row", "prompt_row"])
    row = {(p, int(c)): int(r) for p, c, r in zip(cands.prompt_id, cands.cand_idx, cands.row)}
    prow = dict(zip(cands.prompt_id, cands.prompt_row))
    text_all = load_file(cdir / "text.safetensors")
    text = {k: v for k, v in text_all.items() if not k.startswith("uncond.")}
    uncond = {k.removeprefix("uncond."): v for k, v in text_all.items() if k.startswith("uncond.")}
    latents = load_file(cdir / "latents.safetensors")["latents"]
    ldir = results / "labels"
    extras: dict[str, Tensor] = {}
    if labels in ("pairwise", "smoothed"):
        df = read_table(ldir / f"{labels}.parquet", ["prompt_id", "winner", "loser"])
        groups = [[row[p, w], row[p, lo]] for p, w, lo in zip(df.prompt_id, df.winner, df.loser)]
        pids = df.prompt_id
        if labels == "smoothed":
            extras["prob"] = torch.tensor(df.prob.to_numpy(), dtype=torch.float32)
    elif labels == "listwise":
        df = read_table(ldir / "listwise.parquet", ["prompt_id", "cand_idx", "advantage"])
        df = df.sort_values(["prompt_id", "cand_idx"])
        lists = list(df.groupby("prompt_id", sort=True))
        groups = [[row[p, int(c)] for c in g.cand_idx] for p, g in lists]
        pids = pd.Series([p for p, _ in lists])
        extras["advantage"] = torch.tensor(
            np.stack([g.advantage.to_numpy() for _, g in lists]), dtype=torch.float32
        )
    elif labels == "pointwise":
        df = read_table(ldir / "pointwise.parquet", ["prompt_id", "cand_idx", "desirable"])
        groups = [[row[p, int(c)]] for p, c in zip(df.prompt_id, df.cand_idx)]
        pids = df.prompt_id
        extras["desirable"] = torch.tensor(df.desirable.to_numpy(), dtype=torch.bool)
    elif labels in ("winners", "captions"):
        df = read_table(ldir / "pairwise.parquet", ["prompt_id", "winner", "score_w"])
        if labels == "captions":  # one image per caption: the prompt's best candidate
            df = df.sort_values("score_w", ascending=False).drop_duplicates("prompt_id")
        df = df.drop_duplicates(["prompt_id", "winner"]).sort_values(["prompt_id", "winner"])
        groups = [[row[p, int(w)]] for p, w in zip(df.prompt_id, df.winner)]
        pids = df.prompt_id
    else:
        raise ValueError(f"unknown label kind {labels!r}")
    if not groups:
        raise ValueError(f"{ldir / labels}.parquet: no training examples")
    return TrainData(
        latents=latents, text=text, uncond=uncond,
        groups=torch.tensor(groups, dtype=torch.long),
        prompt_rows=torch.tensor([int(prow[p]) for p in pids], dtype=torch.long),
        extras=extras,
    )


@contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """The base model as reference; adapters are re-enabled even if the forward raises."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def add_lora(unet, rank: int, alpha: float | None) -> list[torch.nn.Parameter]:
    config = LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
    )
    unet.add_adapter(config)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # trainable LoRA weights in fp32 even when the base runs in bf16/fp16
        p.data = p.data.float()
    return params


def batch_iterator(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Shuffled epochs without replacement; a batch never spans two permutations."""
    while True:
        perm = torch.randperm(n, generator=gen)
        if n < batch_size:
            perm = perm.repeat(math.ceil(batch_size / n))
        for s in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[s : s + batch_size]


@dataclass
class StepInputs:
    x_t: Tensor  # [B*G, C, H, W]
    target: Tensor  # [B*G, C, H, W]
    t: Tensor  # [B] shared within a group
    cond: Cond  # [B*G, ...]


def make_inputs(
    backbone: Backbone, data: TrainData, idx: Tensor, t: Tensor, gen: torch.Generator,
    caption_dropout: float,
) -> StepInputs:
    rows = data.groups[idx]  # [B, G]
    b, g = rows.shape
    x0 = data.latents[rows.flatten()].to(backbone.dtype)
    cond = cond_index(data.text, data.prompt_rows[idx])
    if caption_dropout > 0:
        drop = torch.rand(b, generator=gen).to(x0.device) < caption_dropout
        cond = {
            k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), data.uncond[k].to(v), v)
            for k, v in cond.items()
        }
    noise = torch.randn((b, *x0.shape[1:]), generator=gen).to(x0)
    noise = noise.repeat_interleave(g, 0)  # one noise draw per group, as in official DPO
    t_rep = t.repeat_interleave(g, 0)
    x_t = backbone.noise_scheduler.add_noise(x0, noise, t_rep)
    return StepInputs(
        x_t=x_t, target=backbone.target(x0, noise, t_rep), t=t,
        cond={k: v.repeat_interleave(g, 0).to(backbone.dtype) for k, v in cond.items()},
    )


def errors_of(backbone: Backbone, inp: StepInputs, g: int) -> Tensor:
    t_rep = inp.t.repeat_interleave(g, 0)
    pred = backbone.predict(inp.x_t, t_rep, inp.cond)
    return denoising_error(pred.float(), inp.target.float()).view(-1, g)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    summary: dict[str, float]


def train(
    backbone: Backbone, data: TrainData, objective: Objective, tp: TrainParams, seed: int,
    checkpoint: Path, params_hash: str,
) -> TrainResult:
    device = backbone.device
    module, hp = objective.module, objective.params
    unet = backbone.unet
    torch.manual_seed(seed)
    params = add_lora(unet, tp.lora_rank, tp.lora_alpha)
    unet.train()
    opt = torch.optim.AdamW(params, lr=tp.lr, weight_decay=tp.weight_decay)
    warm = max(tp.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    gen = torch.Generator().manual_seed(seed)
    data = data.to(device)
    n_groups, g = data.groups.shape
    history: list[dict[str, float]] = []
    step = 0
    state_file = checkpoint / "state.pt"
    if state_file.is_file():
        state = torch.load(state_file, map_location=device, weights_only=False)
        if state["params_hash"] == params_hash:
            set_peft_model_state_dict(unet, state["lora"])
            opt.load_state_dict(state["opt"])
            sched.load_state_dict(state["sched"])
            gen.set_state(state["gen"])
            step, history = state["step"], state["history"]
            log.info("resumed from %s at step %d", state_file, step)
    # the batch order has its own generator: replaying it on resume reproduces the same batches
    batches = batch_iterator(n_groups, tp.batch_size, torch.Generator().manual_seed(seed + 1))
    for _ in range(step):
        next(batches)
    needs_ref = module.NEEDS_REFERENCE
    autocast = torch.autocast(
        device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}.get(tp.mixed_precision),
        enabled=tp.mixed_precision != "no",
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    n_trainable = sum(p.numel() for p in params)
    running: dict[str, list[float]] = {}
    start, start_step = time.perf_counter(), step
    bar = tqdm(total=tp.steps, initial=step, desc=f"train {objective.name}", unit="step")
    while step < tp.steps:
        idx = next(batches).to(device)
        t = torch.randint(
            0, backbone.noise_scheduler.config.num_train_timesteps, (len(idx),), generator=gen
        ).to(device)
        inp = make_inputs(backbone, data, idx, t, gen, tp.caption_dropout)
        with autocast:
            ref = None
            if needs_ref:
                with torch.no_grad(), adapters_disabled(unet):
                    ref = errors_of(backbone, inp, g)
            model = errors_of(backbone, inp, g)
        errs = Errors(
            model=model, ref=ref, t=t,
            prob=data.extras["prob"][idx] if "prob" in data.extras else None,
            advantage=data.extras["advantage"][idx] if "advantage" in data.extras else None,
            desirable=data.extras["desirable"][idx] if "desirable" in data.extras else None,
        )
        loss, metrics = module.loss(errs, hp)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, tp.max_grad_norm)
        opt.step()
        sched.step()
        step += 1
        bar.update(1)
        for k, v in {"loss": loss, "grad_norm": grad_norm, **metrics}.items():
            running.setdefault(k, []).append(float(v.detach() if torch.is_tensor(v) else v))
        if step % tp.log_every == 0 or step == tp.steps:
            row = {k: float(np.mean(v)) for k, v in running.items()}
            row.update(step=step, lr=sched.get_last_lr()[0])
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            running = {}
        if step % tp.checkpoint_every == 0 and step < tp.steps:
            _save_checkpoint(state_file, unet, opt, sched, gen, step, history, params_hash)
    bar.close()
    elapsed = time.perf_counter() - start
    done = step - start_step
    summary = {
        "steps": step,
        "train_time_s": elapsed,
        "groups_per_s": done * tp.batch_size / elapsed if elapsed > 0 else 0.0,
        "images_per_s": done * tp.batch_size * g / elapsed if elapsed > 0 else 0.0,
        "peak_memory_mb": peak_memory_mb(device),
        "trainable_params": n_trainable,
        "final_loss": history[-1]["loss"] if history else float("nan"),
    }
    unet.eval()
    return TrainResult(history, summary)


def _save_checkpoint(path, unet, opt, sched, gen, step, history, params_hash) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "lora": get_peft_model_state_dict(unet), "opt": opt.state_dict(),
            "sched": sched.state_dict(), "gen": gen.get_state(), "step": step,
            "history": history, "params_hash": params_hash,
        },
        tmp,
    )
    tmp.replace(path)


def save_lora(unet, out: Path, rank: int, alpha: float | None) -> None:
    """diffusers-format LoRA (``pytorch_lora_weights.safetensors``), loadable by pipelines."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers

    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    StableDiffusionPipeline.save_lora_weights(
        out, unet_lora_layers=layers, safe_serialization=True,
        unet_lora_adapter_metadata={"r": rank, "lora_alpha": alpha or rank,
                                    "target_modules": LORA_TARGETS},
    )


def load_lora(unet, adapter_dir: Path) -> None:
    unet.load_lora_adapter(str(adapter_dir / "pytorch_lora_weights.safetensors"), prefix="unet")
