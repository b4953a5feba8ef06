"""Training routines of the embedded world: reward nets, VAE and UNet.

Kept separate from :mod:`diffpref.world.build` so each piece can be trained (and tested)
alone; every routine is deterministic for its seed on a given machine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import Tensor
from tqdm.auto import tqdm

from diffpref.world.data import NUM_CLASSES, ItemBank
from diffpref.world.degrade import clean_empty, degrade_items, dirty_empty, smooth_noise
from diffpref.world.fidelity import CanvasRuleReward, FidelityReward
from diffpref.world.judge import JudgeReward
from diffpref.world.prompts import sample_train_caption
from diffpref.world.quality import QualityReward
from diffpref.world.render import CANVAS, CELL
from diffpref.world.settings import WorldParams
from diffpref.world.spec import CATEGORIES, EMPTY, Spec

C = TypeVar("C", bound=CanvasRuleReward)


# -- cells ---------------------------------------------------------------------------------
def item_cells(
    bank: ItemBank,
    idx: Tensor,
    gen: torch.Generator,
    jitter: int = 2,
    intensity: tuple[float, float] = (0.3, 1.0),
) -> Tensor:
    """Items ``idx`` placed in 16x16 cells with random shift and intensity ``[n,1,16,16]``."""
    n, s = len(idx), bank.size
    m = jitter
    pad = torch.zeros(n, CELL + 2 * m, CELL + 2 * m)
    shift = torch.randint(-m, m + 1, (n, 2), generator=gen)
    base = (CELL - s) // 2 + m
    items = bank.items[idx]
    for i in range(n):
        r, c = base + int(shift[i, 0]), base + int(shift[i, 1])
        pad[i, r : r + s, c : c + s] = items[i]
    lo, hi = intensity
    scale = lo + (hi - lo) * torch.rand(n, 1, 1, generator=gen)
    return (pad[:, m : m + CELL, m : m + CELL] * scale)[:, None]


def empty_cells(n: int, gen: torch.Generator) -> Tensor:
    """Cells the classifier must call empty: black, faint noise or a faint smudge."""
    x = clean_empty(n, CELL, gen, max_sigma=0.04)
    smudge = torch.rand(n, generator=gen) < 0.3
    amp = 0.12 * torch.rand(n, 1, 1, 1, generator=gen)
    x = torch.where(
        smudge[:, None, None, None], x + amp * smooth_noise(n, CELL, 4.0, gen).clamp_min(0), x
    )
    return x.clamp(0, 1)


def _cosine_lr(
    opt: torch.optim.Optimizer, steps: int, warmup: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        prog = (step - warmup) / max(1, steps - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(prog, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(opt, f)


def _progress(steps: int, desc: str) -> tqdm:
    return tqdm(range(steps), desc=desc, mininterval=2.0, leave=False)


# -- cell classifiers (fidelity, judge) ----------------------------------------------------
def train_fidelity(bank: ItemBank, p: WorldParams, gen: torch.Generator) -> FidelityReward:
    """The label reward's classifier, on the items of ``bank`` (the train split)."""
    model = FidelityReward(width=p.classifier_width)
    return train_cell_classifier(
        model, bank, p.classifier_steps, p.classifier_batch, p.classifier_lr, p.device, gen
    )


def train_judge(bank: ItemBank, p: WorldParams, gen: torch.Generator) -> JudgeReward:
    """The independent judge's classifier, on ``bank`` (test items ``[0, JUDGE_TRAIN_ITEMS)``)."""
    model = JudgeReward(width=p.judge_width)
    return train_cell_classifier(
        model, bank, p.judge_steps, p.judge_batch, p.judge_lr, p.device, gen
    )


def train_cell_classifier(
    model: C, bank: ItemBank, steps: int, batch: int, lr: float, device: str, gen: torch.Generator
) -> C:
    """Train ``model``'s 11-way cell classifier (10 classes + empty) with shift/intensity
    jitter on the items of ``bank``."""
    model = model.to(device)
    net = model.classifier.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    sched = _cosine_lr(opt, steps, max(1, steps // 20))
    n_items = len(bank.labels)
    for _ in _progress(steps, f"{model.name} classifier"):
        n_empty = max(1, batch // (NUM_CLASSES + 1))
        idx = torch.randint(n_items, (batch - n_empty,), generator=gen)
        x = torch.cat([item_cells(bank, idx, gen), empty_cells(n_empty, gen)])
        x = x + 0.02 * torch.rand(1, generator=gen) * torch.randn(x.shape, generator=gen)
        y = torch.cat([bank.labels[idx], torch.full((n_empty,), EMPTY)])
        loss = F.cross_entropy(net(x.clamp(0, 1).to(device)), y.to(device), label_smoothing=0.05)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# -- quality discriminator -----------------------------------------------------------------
def quality_batch(bank: ItemBank, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """Half real (items, clean empties), half degraded (items, dirty empties); labels 1/0."""
    n_pos = n // 2
    n_neg = n - n_pos
    n_pos_empty, n_neg_empty = n_pos // 5, n_neg // 5
    idx = torch.randint(len(bank.labels), (n_pos - n_pos_empty,), generator=gen)
    pos = torch.cat([item_cells(bank, idx, gen, jitter=1), clean_empty(n_pos_empty, CELL, gen)])
    m = n_neg - n_neg_empty
    idx = torch.randint(len(bank.labels), (m,), generator=gen)
    idx2 = torch.randint(len(bank.labels), (m,), generator=gen)
    base = item_cells(bank, idx, gen, jitter=1)
    others = item_cells(bank, idx2, gen, jitter=1)
    neg = torch.cat([degrade_items(base, others, gen), dirty_empty(n_neg_empty, CELL, gen)])
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(n_pos), torch.zeros(n_neg)])
    return x, y


def train_quality(bank: ItemBank, p: WorldParams, gen: torch.Generator) -> QualityReward:
    """Train the real-vs-degraded cell discriminator."""
    model = QualityReward(width=p.quality_width).to(p.device)
    net = model.discriminator.train()
    opt = torch.optim.AdamW(net.parameters(), lr=p.quality_lr, weight_decay=1e-4)
    sched = _cosine_lr(opt, p.quality_steps, max(1, p.quality_steps // 20))
    for _ in _progress(p.quality_steps, "quality discriminator"):
        x, y = quality_batch(bank, p.quality_batch, gen)
        loss = F.binary_cross_entropy_with_logits(net(x.to(p.device))[:, 0], y.to(p.device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


# -- VAE -----------------------------------------------------------------------------------
def build_vae(p: WorldParams) -> AutoencoderKL:
    n = len(p.vae_channels)
    return AutoencoderKL(
        in_channels=1,
        out_channels=1,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(p.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(8, min(p.vae_channels)),
        sample_size=CANVAS,
    )


def train_vae(
    vae: AutoencoderKL, canvases: Tensor, p: WorldParams, gen: torch.Generator
) -> list[float]:
    """MSE + small KL on canvases mapped to [-1,1]; returns the loss curve."""
    vae.train().to(p.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=p.vae_lr, weight_decay=0.0)
    sched = _cosine_lr(opt, p.vae_steps, max(1, p.vae_steps // 20))
    losses = []
    for _ in _progress(p.vae_steps, "vae"):
        idx = torch.randint(len(canvases), (p.vae_batch,), generator=gen)
        x = canvases[idx].to(p.device) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen).to(p.device)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + p.vae_kl_weight * post.kl().mean() / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def encode_canvases(
    vae: AutoencoderKL, canvases: Tensor, batch: int = 512, device: str = "cpu"
) -> tuple[Tensor, Tensor]:
    """Posterior ``(mean, std)`` ``[N,4,8,8]`` of canvases (unscaled)."""
    vae.eval().to(device)
    means, stds = [], []
    for i in tqdm(range(0, len(canvases), batch), desc="encode", mininterval=2.0, leave=False):
        post = vae.encode(canvases[i : i + batch].to(device) * 2 - 1).latent_dist
        means.append(post.mean.cpu())
        stds.append(post.std.cpu())
    return torch.cat(means), torch.cat(stds)


# -- UNet ----------------------------------------------------------------------------------
def build_scheduler() -> DDPMScheduler:
    """Stable Diffusion's training schedule (1000 steps, scaled_linear, epsilon)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        clip_sample=False,
    )


def build_unet(p: WorldParams, latent_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    n = len(p.unet_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=tuple(p.unet_channels),
        layers_per_block=p.unet_layers_per_block,
        attention_head_dim=p.unet_heads,  # diffusers' legacy name: number of heads
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=min(32, min(p.unet_channels)),
    )


def train_unet(
    unet: UNet2DConditionModel,
    scheduler: DDPMScheduler,
    lat_mean: Tensor,
    lat_std: Tensor,
    caption_index: Tensor,
    caption_states: Tensor,
    uncond: Tensor,
    scaling: float,
    p: WorldParams,
    gen: torch.Generator,
    callback: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Epsilon-prediction training on cached latent posteriors and caption states, with
    caption dropout for classifier-free guidance. Returns the per-step loss."""
    unet.train().to(p.device)
    opt = torch.optim.AdamW(unet.parameters(), lr=p.unet_lr, weight_decay=1e-2)
    sched = _cosine_lr(opt, p.unet_steps, p.unet_warmup)
    ema = None
    if p.unet_ema_decay > 0:
        ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    alphas = scheduler.alphas_cumprod
    losses: list[float] = []
    for step in _progress(p.unet_steps, "unet"):
        idx = torch.randint(len(lat_mean), (p.unet_batch,), generator=gen)
        z0 = lat_mean[idx] + lat_std[idx] * torch.randn(lat_mean[idx].shape, generator=gen)
        z0 = z0 * scaling
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, len(alphas), (p.unet_batch,), generator=gen)
        zt = scheduler.add_noise(z0, noise, t)
        ctx = caption_states[caption_index[idx]].float()
        drop = torch.rand(p.unet_batch, generator=gen) < p.caption_dropout
        ctx = torch.where(drop[:, None, None], uncond.float().expand_as(ctx), ctx)
        pred = unet(zt.to(p.device), t.to(p.device), encoder_hidden_states=ctx.to(p.device)).sample
        per_sample = ((pred.float() - noise.to(p.device)) ** 2).mean((1, 2, 3))
        if p.unet_snr_gamma:  # Min-SNR weighting: faster convergence for short runs
            snr = alphas[t] / (1 - alphas[t])
            per_sample = per_sample * (snr.clamp(max=p.unet_snr_gamma) / snr).to(p.device)
        loss = per_sample.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        if ema is not None:
            d = min(p.unet_ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for k, v in unet.state_dict().items():
                    if v.is_floating_point():
                        ema[k].mul_(d).add_(v.detach(), alpha=1 - d)
        losses.append(loss.item())
        if callback is not None:
            callback(step, losses[-1])
    if ema is not None:
        unet.load_state_dict(ema)
    return losses


def sample_caption_pool(
    n: int, mix: dict[str, float], rng: np.random.Generator
) -> tuple[list[Spec], list[str]]:
    """``n`` (spec, caption) pairs from the train grammar, categories drawn by ``mix``."""
    w = np.array([max(mix.get(c, 0.0), 0.0) for c in CATEGORIES], dtype=float)
    cats = rng.choice(len(CATEGORIES), size=n, p=w / w.sum())
    specs, caps = [], []
    for c in cats:
        s, cap = sample_train_caption(rng, CATEGORIES[int(c)])
        specs.append(s)
        caps.append(cap)
    return specs, caps
