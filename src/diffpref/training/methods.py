"""How an objective turns a batch of training units into a loss: two methods cover every
objective.

- ``GroupMethod`` (LoRA): pairs, lists or single images share one timestep and one noise draw
  per group; the pure ``loss(Errors, params)`` of the objective does the math. Named hooks:
  Rethinking-DPO timestep sampling, reward scale λ(t) and moving reference; SmPO's ReNoise
  inversion. An online round (``previous``: the previous round's adapter folder) starts the
  LoRA from that adapter and, where the objective needs a reference, holds it as the frozen
  reference (:func:`online_error` says which objectives cannot).
- ``CaptionMethod`` (soft tokens, backbone frozen): every image of the batch against every
  caption of the batch (SoftREPA, AGSM), one timestep and one noise for the whole batch.

``step(idx, gen, share)`` gets the *global* batch ``idx`` and this process's ``share`` of it:
every random draw is made for the whole global batch and then cut, so N processes see exactly
the draws of one process (see :mod:`diffpref.distributed`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers import DDIMInverseScheduler
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from torch import Tensor

from diffpref import adapters, distributed
from diffpref.backbones.base import Backbone, Cond, cond_index
from diffpref.config.schema import online_error
from diffpref.objectives import rethinking
from diffpref.objectives.base import Errors, denoising_error, matched_mask
from diffpref.objectives.smpo import renoise_invert
from diffpref.training.data import TrainData

if TYPE_CHECKING:
    from diffpref.config import Objective, TrainParams

WHOLE = slice(0, None)  # the whole global batch: the share of a single process


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
    """LoRA on groups of images of one prompt (pairs, lists, single images). ``reference``:
    the frozen second adapter (Rethinking-DPO's moving one, or an online round's previous
    policy); None: the base model (adapters disabled) is the reference. Built through
    :func:`make_method`, which refuses ``previous`` for objectives that cannot use it."""

    def __init__(
        self,
        backbone: Backbone,
        objective: Objective,
        tp: TrainParams,
        data: TrainData,
        previous: Path | None = None,
        previous_reference: bool = True,
    ):
        self.backbone, self.data, self.tp = backbone, data, tp
        self.module, self.hp = objective.module, objective.params
        self.unet = backbone.unet
        rank, alpha = tp.lora_rank, tp.lora_alpha
        self.params = adapters.add_lora(self.unet, rank, alpha)
        if previous is not None:
            adapters.load_lora_into(self.unet, previous, "default", rank, alpha)
        self.rt: rethinking.Params | None = getattr(self.hp, "rethinking", None)
        self.reference = self.schedule = None
        fixed = previous is not None and previous_reference  # False: the base stays reference
        if self.module.NEEDS_REFERENCE and (self.rt is not None or fixed):
            self.reference = adapters.ReferenceAdapter(self.unet, rank, alpha)
        if fixed and self.reference is not None:
            self.reference.copy_policy()  # the previous round's policy, frozen
        if self.rt is not None and self.reference is not None:
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
        self,
        rows: Tensor,
        prompt_rows: Tensor,
        t: Tensor,
        gen: torch.Generator,
        share: slice = WHOLE,
    ) -> StepInputs:
        """Noised inputs and targets of the units ``rows[share]``; caption dropout and noise
        are drawn for all of ``rows`` first, so a share sees the draws of the whole batch."""
        bb, data, g = self.backbone, self.data, rows.shape[1]
        cond = drop_captions(
            cond_index(data.text, prompt_rows), data.uncond, self.tp.caption_dropout, gen
        )
        noise = torch.randn((len(rows), *data.latents.shape[1:]), generator=gen)
        rows, t = rows[share], t[share]
        x0 = data.latents[rows.flatten()].to(bb.dtype)
        cond = {k: v[share].repeat_interleave(g, 0).to(bb.dtype) for k, v in cond.items()}
        t_rep = t.repeat_interleave(g, 0).to(x0.device)
        # one noise draw per group, as in official DPO
        noise = noise[share].to(x0).repeat_interleave(g, 0)
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
        ctx = self.reference.active() if self.reference else adapters.adapters_disabled(self.unet)
        with torch.no_grad(), ctx:
            return self.errors(inp)

    def step(
        self, idx: Tensor, gen: torch.Generator, share: slice = WHOLE
    ) -> tuple[Tensor, dict[str, Any]]:
        t = self.sample_t(len(idx), gen)
        inp = self.inputs(self.data.groups[idx], self.data.prompt_rows[idx], t, gen, share)
        idx = idx[share]
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
        # every process computes it (the draws advance ``gen`` everywhere); rank 0's value
        # decides, so that no float difference can split the processes' copy/freeze decisions
        action = self.schedule.step(step, lambda: distributed.from_main(self.divergence(gen)))
        if action == "copy":
            self.reference.copy_policy()
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
        with self.reference.active():
            ref = self.errors(inp)
        with adapters.adapters_disabled(self.unet):
            init = self.errors(inp)
        return float(rethinking.divergence(ref[:, 0], init[:, 0], self.num_train_timesteps))

    def state(self) -> dict:
        """The trained adapter, and a moving reference with its schedule; an online round's
        fixed reference is not stored: it is reloaded from ``previous`` on resume."""
        s = {"lora": get_peft_model_state_dict(self.unet, adapter_name="default")}
        if self.schedule is not None:
            s.update(ref=self.reference.state(), schedule=self.schedule)
        return s

    def load_state(self, s: dict) -> None:
        set_peft_model_state_dict(self.unet, s["lora"], adapter_name="default")
        if self.schedule is not None:
            self.reference.load(s["ref"])
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

    def _pair_tokens(self, tokens: list[Tensor], matched: Tensor) -> Tensor:
        """[B_img*B_txt, n, D]: set 0 on the ``matched`` pairs, set 1 (if any) on the others."""
        pos = tokens[0].expand(matched.numel(), *tokens[0].shape)
        if len(tokens) == 1:
            return pos
        return torch.where(matched.view(-1, 1, 1), pos, tokens[1].expand_as(pos))

    def step(
        self, idx: Tensor, gen: torch.Generator, share: slice = WHOLE
    ) -> tuple[Tensor, dict[str, Any]]:
        """This process's images (``idx[share]``) against every caption of the global batch,
        so that the negatives span the global batch as in a single process."""
        bb, data = self.backbone, self.data
        b, mine = len(idx), idx[share]
        x0 = data.latents[data.groups[mine][:, 0]].to(bb.dtype)
        cond = cond_index(data.text, data.prompt_rows[idx])
        t = torch.randint(0, bb.noise_scheduler.config.num_train_timesteps, (1,), generator=gen)
        t = t.to(x0.device).expand(len(mine))
        noise = torch.randn((1, *x0.shape[1:]), generator=gen).to(x0).expand_as(x0)
        x_t = bb.noise_scheduler.add_noise(x0, noise, t)
        target = bb.target(x0, noise, t)  # [B_img, ...]
        x_pairs = x_t.repeat_interleave(b, 0)  # pair (i, j) at row i*B + j
        t_pairs = t[:1].expand(len(mine) * b)
        c_pairs = {k: v[torch.arange(b).repeat(len(mine))].to(bb.dtype) for k, v in cond.items()}
        matched = matched_mask(len(mine), b, share.start, x0.device).flatten()

        def predict(tokens: list[Tensor]) -> Tensor:
            c = self.sets[0].insert(c_pairs, self._pair_tokens(tokens, matched))
            return bb.predict(x_pairs, t_pairs, c).float().view(len(mine), b, *x0.shape[1:])

        pred = predict([s.tokens for s in self.sets])
        ema_pred = None
        if self.ema is not None:
            with torch.no_grad():
                ema_pred = predict(self.ema)
        target = target.float()[:, None]
        return self.module.caption_loss(pred, ema_pred, target, self.hp, share.start)

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


def make_method(
    backbone, objective, tp, data, previous: Path | None = None, previous_reference: bool = True
) -> GroupMethod | CaptionMethod:
    """``previous``: an online round's previous adapter folder (LoRA objectives only)."""
    if previous is not None and (why := online_error(objective)):
        raise ValueError(why)
    if objective.labels == "captions":
        return CaptionMethod(backbone, objective, tp, data)
    return GroupMethod(backbone, objective, tp, data, previous, previous_reference)
