"""The one training loop, for every objective in the registry.

Per step: draw a batch of training units, let the objective's *method* turn it into a loss
(errors of the trained model and, where needed, of the reference), step the optimiser, run the
method's after-step hook. Two methods cover every objective:

- ``GroupMethod`` (LoRA): pairs, lists or single images share one timestep and one noise draw
  per group; the pure ``loss(Errors, params)`` of the objective does the math. Named hooks:
  Rethinking-DPO timestep sampling, reward scale λ(t) and moving reference; SmPO's ReNoise
  inversion.
- ``CaptionMethod`` (soft tokens, backbone frozen): every image of the batch against every
  caption of the batch (SoftREPA, AGSM), one timestep and one noise for the whole batch.

Checkpoints (accelerate ``save_state`` of the trainable state only) are written atomically every
``checkpoint_every`` steps; an interrupted run resumes from the last one (same params hash) and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import resource
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import DDIMInverseScheduler
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from diffpref import adapters
from diffpref.backbones.base import Backbone, Cond, cond_index
from diffpref.io import read_table
from diffpref.objectives import rethinking
from diffpref.objectives.base import Errors, denoising_error
from diffpref.objectives.smpo import renoise_invert

if TYPE_CHECKING:
    from diffpref.config import Objective, TrainParams

log = logging.getLogger(__name__)


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
            self.latents.to(device),
            mv(self.text),
            mv(self.uncond),
            self.groups.to(device),
            self.prompt_rows.to(device),
            mv(self.extras),
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
        lists = list(df.sort_values(["prompt_id", "cand_idx"]).groupby("prompt_id", sort=True))
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
        latents=latents,
        text=text,
        uncond=uncond,
        groups=torch.tensor(groups, dtype=torch.long),
        prompt_rows=torch.tensor([int(prow[p]) for p in pids], dtype=torch.long),
        extras=extras,
    )


def batch_iterator(n: int, batch_size: int, gen: torch.Generator) -> Iterator[Tensor]:
    """Shuffled epochs without replacement; a batch never spans two permutations."""
    while True:
        perm = torch.randperm(n, generator=gen)
        if n < batch_size:
            perm = perm.repeat(math.ceil(batch_size / n))
        for s in range(0, len(perm) - batch_size + 1, batch_size):
            yield perm[s : s + batch_size]


def drop_captions(cond: Cond, uncond: Cond, p: float, gen: torch.Generator) -> Cond:
    """Replace a fraction ``p`` of the captions by the empty prompt (official DPO: 20%)."""
    if p <= 0:
        return cond
    b = next(iter(cond.values())).shape[0]
    drop = torch.rand(b, generator=gen) < p
    return {
        k: torch.where(drop.to(v.device).view(-1, *[1] * (v.dim() - 1)), uncond[k].to(v), v)
        for k, v in cond.items()
    }


def as_eps(backbone: Backbone, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """The model output as a noise prediction (v-prediction converted)."""
    if backbone.prediction_type == "epsilon":
        return out
    a = backbone.noise_scheduler.alphas_cumprod.to(x_t.device)[t].view(-1, 1, 1, 1).to(out)
    return a.sqrt() * out + (1 - a).sqrt() * x_t


@dataclass
class StepInputs:
    x_t: Tensor  # [B*G, C, H, W]
    target: Tensor  # [B*G, C, H, W]
    t: Tensor  # [B] shared within a group
    cond: Cond  # [B*G, ...]
    group: int  # G


class GroupMethod:
    """LoRA on groups of images of one prompt (pairs, lists, single images)."""

    def __init__(self, backbone: Backbone, objective: Objective, tp: TrainParams, data: TrainData):
        self.backbone, self.data, self.tp = backbone, data, tp
        self.module, self.hp = objective.module, objective.params
        self.unet = backbone.unet
        self.params = adapters.add_lora(self.unet, tp.lora_rank, tp.lora_alpha)
        self.rt: rethinking.Params | None = getattr(self.hp, "rethinking", None)
        self.moving_ref = self.schedule = None
        if self.rt is not None and self.module.NEEDS_REFERENCE:
            self.moving_ref = adapters.MovingReference(self.unet, tp.lora_rank, tp.lora_alpha)
            self.schedule = rethinking.ReferenceSchedule(self.rt.reference_every, self.rt.delta)
        self.grid = None
        if getattr(self.hp, "inversion_steps", 0):
            inv = DDIMInverseScheduler.from_config(backbone.noise_scheduler.config)
            inv.set_timesteps(self.hp.inversion_steps)
            self.grid = inv.timesteps.sort().values

    @property
    def num_train_timesteps(self) -> int:
        return self.backbone.noise_scheduler.config.num_train_timesteps

    def sample_t(self, n: int, gen: torch.Generator) -> Tensor:
        if self.rt is not None:
            return rethinking.sample_timesteps(
                n, self.num_train_timesteps, self.rt.timestep_bins, self.rt.timestep_gamma, gen
            )
        return torch.randint(0, self.num_train_timesteps, (n,), generator=gen)

    def inputs(
        self, rows: Tensor, prompt_rows: Tensor, t: Tensor, gen: torch.Generator
    ) -> StepInputs:
        bb, data, g = self.backbone, self.data, rows.shape[1]
        x0 = data.latents[rows.flatten()].to(bb.dtype)
        cond = drop_captions(
            cond_index(data.text, prompt_rows), data.uncond, self.tp.caption_dropout, gen
        )
        cond = {k: v.repeat_interleave(g, 0).to(bb.dtype) for k, v in cond.items()}
        t_rep = t.repeat_interleave(g, 0).to(x0.device)
        noise = torch.randn((len(rows), *x0.shape[1:]), generator=gen).to(x0)
        noise = noise.repeat_interleave(g, 0)  # one noise draw per group, as in official DPO
        if self.grid is None:
            x_t = bb.noise_scheduler.add_noise(x0, noise, t_rep)
        else:  # SmPO: the current model's ReNoise inversion gives input and implied noise

            def eps_fn(x: Tensor, tau: Tensor) -> Tensor:
                return as_eps(bb, bb.predict(x, tau, cond), x, tau)

            x_t, noise = renoise_invert(
                eps_fn, x0, t_rep, bb.noise_scheduler.alphas_cumprod, self.grid.to(x0.device)
            )
            x_t, noise = x_t.to(x0), noise.to(x0)
        return StepInputs(x_t, bb.target(x0, noise, t_rep), t.to(x0.device), cond, g)

    def errors(self, inp: StepInputs) -> Tensor:
        t_rep = inp.t.repeat_interleave(inp.group, 0)
        pred = self.backbone.predict(inp.x_t, t_rep, inp.cond)
        return denoising_error(pred.float(), inp.target.float()).view(-1, inp.group)

    def reference_errors(self, inp: StepInputs) -> Tensor:
        ctx = self.moving_ref.active() if self.moving_ref else adapters.adapters_disabled(self.unet)
        with torch.no_grad(), ctx:
            return self.errors(inp)

    def step(self, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        t = self.sample_t(len(idx), gen)
        inp = self.inputs(self.data.groups[idx], self.data.prompt_rows[idx], t, gen)
        ref = self.reference_errors(inp) if self.module.NEEDS_REFERENCE else None
        model = self.errors(inp)
        extra = lambda k: self.data.extras[k][idx] if k in self.data.extras else None  # noqa: E731
        scale = None
        if self.rt is not None and self.rt.reward_scale:
            acp = self.backbone.noise_scheduler.alphas_cumprod
            scale = rethinking.reward_scale(acp, inp.t.cpu()).to(model.device, model.dtype)
        errs = Errors(
            model=model,
            ref=ref,
            t=inp.t,
            beta_scale=scale,
            prob=extra("prob"),
            advantage=extra("advantage"),
            desirable=extra("desirable"),
        )
        return self.module.loss(errs, self.hp)

    def after_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        if self.schedule is None:
            return {}
        action = self.schedule.step(step, lambda: self.divergence(gen))
        if action == "copy":
            self.moving_ref.copy_policy()
        if action is None:
            return {}
        return {
            "ref_divergence": self.schedule.last_divergence,
            "ref_frozen": float(self.schedule.frozen),
        }

    @torch.no_grad()
    def divergence(self, gen: torch.Generator) -> float:
        """D(reference, initial model) on a few winner latents with shared (t, noise)."""
        n = min(self.rt.divergence_images, len(self.data.groups))
        idx = torch.randperm(len(self.data.groups), generator=gen)[:n].to(self.data.groups.device)
        t = torch.randint(0, self.num_train_timesteps, (n,), generator=gen)
        inp = self.inputs(self.data.groups[idx][:, :1], self.data.prompt_rows[idx], t, gen)
        with self.moving_ref.active():
            ref = self.errors(inp)
        with adapters.adapters_disabled(self.unet):
            init = self.errors(inp)
        return float(rethinking.divergence(ref[:, 0], init[:, 0], self.num_train_timesteps))

    def state(self) -> dict:
        s = {"lora": get_peft_model_state_dict(self.unet, adapter_name="default")}
        if self.moving_ref:
            s.update(ref=self.moving_ref.state(), schedule=self.schedule)
        return s

    def load_state(self, s: dict) -> None:
        set_peft_model_state_dict(self.unet, s["lora"], adapter_name="default")
        if self.moving_ref:
            self.moving_ref.load(s["ref"])
            self.schedule = s["schedule"]

    def save(self, out: Path) -> None:
        adapters.save_lora(
            self.unet, out, self.tp.lora_rank, self.tp.lora_alpha, self.backbone.lora_pipeline
        )


class CaptionMethod:
    """Soft tokens against a frozen backbone: every image of a batch with every caption."""

    def __init__(self, backbone: Backbone, objective: Objective, tp: TrainParams, data: TrainData):
        self.backbone, self.data, self.tp = backbone, data, tp
        self.module, self.hp = objective.module, objective.params
        dim = data.text["hidden"].shape[-1]
        init = data.uncond["hidden"][0, 0]  # SD1.5 recipe: the empty prompt's first token
        dev = backbone.device
        self.sets = [
            adapters.SoftTokens(self.hp.n_tokens, dim, init).to(dev)
            for _ in range(self.module.TOKEN_SETS)
        ]
        self.params = [s.tokens for s in self.sets]
        self.ema = [s.tokens.detach().clone() for s in self.sets] if len(self.sets) > 1 else None

    def _pair_tokens(self, tokens: list[Tensor], b: int) -> Tensor:
        """[B*B, n, D]: set 0 on matched pairs (i == j), set 1 (if any) on the others."""
        pos = tokens[0].expand(b * b, *tokens[0].shape)
        if len(tokens) == 1:
            return pos
        matched = torch.eye(b, dtype=torch.bool, device=pos.device).flatten()
        return torch.where(matched.view(-1, 1, 1), pos, tokens[1].expand_as(pos))

    def step(self, idx: Tensor, gen: torch.Generator) -> tuple[Tensor, dict[str, Any]]:
        bb, data = self.backbone, self.data
        b = len(idx)
        x0 = data.latents[data.groups[idx][:, 0]].to(bb.dtype)
        cond = cond_index(data.text, data.prompt_rows[idx])
        t = torch.randint(0, bb.noise_scheduler.config.num_train_timesteps, (1,), generator=gen)
        t = t.to(x0.device).expand(b)
        noise = torch.randn((1, *x0.shape[1:]), generator=gen).to(x0).expand_as(x0)
        x_t = bb.noise_scheduler.add_noise(x0, noise, t)
        target = bb.target(x0, noise, t)  # [B_img, ...]
        x_pairs = x_t.repeat_interleave(b, 0)  # pair (i, j) at row i*B + j
        t_pairs = t[:1].expand(b * b)
        c_pairs = {k: v[torch.arange(b).repeat(b)].to(bb.dtype) for k, v in cond.items()}

        def predict(tokens: list[Tensor]) -> Tensor:
            c = self.sets[0].insert(c_pairs, self._pair_tokens(tokens, b))
            return bb.predict(x_pairs, t_pairs, c).float().view(b, b, *x0.shape[1:])

        pred = predict([s.tokens for s in self.sets])
        ema_pred = None
        if self.ema is not None:
            with torch.no_grad():
                ema_pred = predict(self.ema)
        return self.module.caption_loss(pred, ema_pred, target.float()[:, None], self.hp)

    def after_step(self, step: int, gen: torch.Generator) -> dict[str, float]:
        if self.ema is not None:
            self.module.ema_update(
                self.ema, [s.tokens.detach() for s in self.sets], self.hp.ema_decay
            )
        return {}

    def state(self) -> dict:
        return {"tokens": [s.tokens.detach().clone() for s in self.sets], "ema": self.ema}

    def load_state(self, s: dict) -> None:
        for p, v in zip(self.params, s["tokens"]):
            p.data.copy_(v)
        self.ema = s["ema"]

    def save(self, out: Path) -> None:
        named = {"tokens": self.sets[0].tokens}
        if len(self.sets) > 1:
            named.update(
                negative=self.sets[1].tokens, tokens_ema=self.ema[0], negative_ema=self.ema[1]
            )
        adapters.save_tokens(out, named)


def make_method(backbone, objective, tp, data) -> GroupMethod | CaptionMethod:
    cls = CaptionMethod if objective.labels == "captions" else GroupMethod
    return cls(backbone, objective, tp, data)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


@dataclass
class TrainResult:
    history: list[dict[str, float]]
    summary: dict[str, float]
    method: GroupMethod | CaptionMethod


def train(
    backbone: Backbone,
    data: TrainData,
    objective: Objective,
    tp: TrainParams,
    seed: int,
    checkpoint: Path,
    params_hash: str,
) -> TrainResult:
    device = backbone.device
    torch.manual_seed(seed)
    data = data.to(device)
    method = make_method(backbone, objective, tp, data)
    backbone.unet.train()
    if tp.gradient_checkpointing:
        backbone.unet.enable_gradient_checkpointing()
    acc = make_accelerator(tp, device)
    opt = make_optimizer(method.params, tp)
    warm = max(tp.warmup_steps, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    opt, sched = acc.prepare(opt, sched)
    loop = LoopState(method, torch.Generator().manual_seed(seed))
    acc.register_for_checkpointing(loop)
    resume(acc, checkpoint, params_hash)
    gen, start_step = loop.gen, loop.step
    # the batch order has its own generator: replaying it on resume reproduces the same batches
    batches = batch_iterator(
        len(data.groups), tp.batch_size, torch.Generator().manual_seed(seed + 1)
    )
    for _ in range(start_step):
        next(batches)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    running: dict[str, list[float]] = {}
    start = time.perf_counter()
    bar = tqdm(total=tp.steps, initial=start_step, desc=f"train {objective.name}", unit="step")
    while loop.step < tp.steps:
        idx = next(batches).to(device)
        with acc.autocast():
            loss, metrics = method.step(idx, gen)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        grad_norm = acc.clip_grad_norm_(method.params, tp.max_grad_norm)
        opt.step()
        sched.step()
        loop.step += 1
        step = loop.step
        metrics = {**metrics, **method.after_step(step, gen)}
        bar.update(1)
        for k, v in {"loss": loss, "grad_norm": grad_norm, **metrics}.items():
            running.setdefault(k, []).append(float(v.detach() if torch.is_tensor(v) else v))
        if step % tp.log_every == 0 or step == tp.steps:
            row = {k: float(np.mean(v)) for k, v in running.items()}
            row.update(step=step, lr=sched.get_last_lr()[0])
            loop.history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            running = {}
        if step % tp.checkpoint_every == 0 and step < tp.steps:
            save_checkpoint(acc, checkpoint, params_hash)
    bar.close()
    elapsed = time.perf_counter() - start
    step, history = loop.step, loop.history
    done = step - start_step
    per_unit = data.groups.shape[1] if isinstance(method, GroupMethod) else tp.batch_size
    summary = {
        "steps": step,
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
    return TrainResult(history, summary, method)


class LoopState:
    """What accelerate's ``save_state`` does not hold itself: the method's trainable state
    (LoRA or soft tokens, moving reference), the step generator, the step and the history.
    No model is ``prepare``d, so checkpoints never contain the frozen UNet."""

    def __init__(self, method: GroupMethod | CaptionMethod, gen: torch.Generator):
        self.method, self.gen = method, gen
        self.step = 0
        self.history: list[dict[str, float]] = []

    def state_dict(self) -> dict:
        return {
            "method": copy.deepcopy(self.method.state()),
            "gen": self.gen.get_state(),
            "step": self.step,
            "history": list(self.history),
        }

    def load_state_dict(self, s: dict) -> None:
        self.method.load_state(s["method"])
        self.gen.set_state(s["gen"])
        self.step, self.history = s["step"], s["history"]


def make_accelerator(tp: TrainParams, device: torch.device) -> Accelerator:
    """Mixed precision (autocast, fp16 loss scaling) and checkpoints through accelerate. The
    shared state is reset first: a stage trains once per process, but tests and notebooks
    train several times with different settings in one."""
    AcceleratorState._reset_state(reset_partial_state=True)
    precision = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[tp.mixed_precision]
    return Accelerator(mixed_precision=precision, cpu=device.type == "cpu")


STATE_DIR, HASH_FILE = "state", "params_hash.txt"


def save_checkpoint(acc: Accelerator, checkpoint: Path, params_hash: str) -> None:
    """``accelerate.save_state`` into a fresh folder, then swapped in: a crash mid-save leaves
    the previous checkpoint intact."""
    tmp, final, old = (checkpoint / f"{STATE_DIR}{s}" for s in (".tmp", "", ".old"))
    shutil.rmtree(tmp, ignore_errors=True)
    acc.save_state(str(tmp))
    (tmp / HASH_FILE).write_text(params_hash)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.replace(old)
    tmp.replace(final)
    shutil.rmtree(old, ignore_errors=True)


def resume(acc: Accelerator, checkpoint: Path, params_hash: str) -> None:
    state = checkpoint / STATE_DIR
    if not state.is_dir() and (checkpoint / f"{STATE_DIR}.old").is_dir():
        state = checkpoint / f"{STATE_DIR}.old"  # crashed between the two renames
    hash_file = state / HASH_FILE
    if hash_file.is_file() and hash_file.read_text() == params_hash:
        acc.load_state(str(state))
        log.info("resumed from %s", state)


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
