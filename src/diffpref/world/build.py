"""Build (pretrain) the embedded world, evaluate it, or install the packaged copy.

``build_world`` trains, in order: the fidelity cell classifier, the quality discriminator,
the independent judge, the VAE, then caches latents and caption states and trains the UNet;
finally it samples the base model on eval-style prompts and scores it with the label rewards.
Output layout::

    out/base/{vae,unet,scheduler}/  out/base/text_encoder.json
    out/rewards/{fidelity,quality,judge}/  out/metrics.json

``add_judge`` trains the judge alone into an existing world (how the shipped world got it).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from diffpref.world import train as T
from diffpref.world.base import WorldBase, save_base
from diffpref.world.constants import JUDGE_TRAIN_ITEMS
from diffpref.world.data import ItemBank
from diffpref.world.fidelity import FidelityReward
from diffpref.world.judge import JudgeReward
from diffpref.world.metrics import (
    classifier_accuracy,
    fidelity_canvas_metrics,
    quality_metrics,
    random_specs,
)
from diffpref.world.prompts import generate_prompts
from diffpref.world.quality import QualityReward
from diffpref.world.render import render_specs
from diffpref.world.settings import WorldParams
from diffpref.world.spec import CATEGORIES, Spec
from diffpref.world.text import MiniLMEncoder

PACKAGE_DATA = ("pretrained",)  # the shipped world: a dependency of the world stage
PACKAGED_DIR = Path(__file__).parent / PACKAGE_DATA[0]
JUDGE_SEED = 404  # offset of the judge's seeds from world.seed: its own random streams


def _setup(p: WorldParams) -> None:
    if p.threads:
        torch.set_num_threads(p.threads)


def build_world(params: WorldParams, out: str | Path) -> dict[str, float]:
    """Pretrain every part of the world into ``out`` and return its held-out metrics."""
    p = params
    out = Path(out)
    _setup(p)
    torch.manual_seed(p.seed)
    gen = torch.Generator().manual_seed(p.seed)
    rng = np.random.default_rng(p.seed)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()

    def tick(name: str, t0: float) -> None:
        timings[f"time_s/{name}"] = round(time.perf_counter() - t0, 2)
        tqdm.write(f"[world] {name}: {timings[f'time_s/{name}']:.1f}s")

    t0 = time.perf_counter()
    train_bank = ItemBank.load(p.fashion_mnist_dir, "train", p.item_size)
    test_bank = ItemBank.load(p.fashion_mnist_dir, "test", p.item_size)
    tick("data", t0)

    t0 = time.perf_counter()
    fidelity = T.train_fidelity(train_bank, p, gen)
    fidelity.save(out / "rewards" / "fidelity")
    tick("fidelity", t0)

    t0 = time.perf_counter()
    quality = T.train_quality(train_bank, p, gen)
    quality.save(out / "rewards" / "quality")
    tick("quality", t0)

    t0 = time.perf_counter()
    judge = train_judge(p, test_bank)
    judge.save(out / "rewards" / "judge")
    tick("judge", t0)

    # Training canvases: a pool of train-grammar captions, each canvas rendered for one.
    t0 = time.perf_counter()
    specs, captions = T.sample_caption_pool(p.n_captions, p.category_mix, rng)
    pick = rng.integers(len(specs), size=p.n_canvases)
    canvases, _ = render_specs([specs[int(i)] for i in pick], train_bank, rng, p.jitter)
    tick("render", t0)

    t0 = time.perf_counter()
    vae = T.build_vae(p)
    vae_losses = T.train_vae(vae, canvases, p, gen)
    lat_mean, lat_std = T.encode_canvases(vae, canvases, device=p.device)
    sampled = lat_mean + lat_std * torch.randn(lat_mean.shape, generator=gen)
    scaling = float(1.0 / sampled.std())
    vae.register_to_config(scaling_factor=scaling)
    tick("vae", t0)

    t0 = time.perf_counter()
    encoder = MiniLMEncoder(p.text_max_length, device=p.device)
    unique = sorted(set(captions))
    where = {c: i for i, c in enumerate(unique)}
    states = encoder.encode(unique).cpu().half()
    uncond = encoder.uncond().cpu()
    caption_index = torch.tensor([where[captions[int(i)]] for i in pick])
    tick("text", t0)

    t0 = time.perf_counter()
    unet = T.build_unet(p, latent_size=lat_mean.shape[-1], cross_attention_dim=states.shape[-1])
    scheduler = T.build_scheduler()
    unet_losses = T.train_unet(
        unet, scheduler, lat_mean, lat_std, caption_index, states, uncond, scaling, p, gen
    )
    save_base(out / "base", vae.eval(), unet.eval(), scheduler, p.text_max_length)
    tick("unet", t0)

    metrics: dict[str, float] = {
        "vae_params": float(sum(x.numel() for x in vae.parameters())),
        "unet_params": float(sum(x.numel() for x in unet.parameters())),
        "classifier_params": float(sum(x.numel() for x in fidelity.parameters())),
        "quality_params": float(sum(x.numel() for x in quality.parameters())),
        "judge_params": float(sum(x.numel() for x in judge.parameters())),
        "vae_scaling_factor": scaling,
        "vae_final_loss": float(np.mean(vae_losses[-20:])),
        "unet_final_loss": float(np.mean(unet_losses[-50:])),
        "n_train_captions": float(len(unique)),
    }
    t0 = time.perf_counter()
    metrics.update(_reward_metrics(fidelity, quality, test_bank, p))
    metrics.update(_judge_metrics(judge, test_bank, p))
    metrics.update(_vae_metrics(vae, fidelity, test_bank, p))
    tick("reward_metrics", t0)

    t0 = time.perf_counter()
    base = WorldBase(vae.eval(), unet.eval(), scheduler, encoder)
    metrics.update(_base_metrics(base, fidelity, quality, p, p.eval_prompts_per_category))
    tick("base_metrics", t0)
    timings["time_s/total"] = round(time.perf_counter() - t_all, 2)
    metrics.update(timings)
    _write_metrics(out, metrics)
    return metrics


def judge_items(test_bank: ItemBank) -> tuple[ItemBank, ItemBank]:
    """The judge's training items (test ``[0, JUDGE_TRAIN_ITEMS)``) and those held out from it
    (the rest); the label reward ``fidelity`` trains on the train split, so they share none."""
    return test_bank.select(0, JUDGE_TRAIN_ITEMS), test_bank.select(JUDGE_TRAIN_ITEMS)


def train_judge(p: WorldParams, test_bank: ItemBank) -> JudgeReward:
    """The judge, on :func:`judge_items`, with its own seeds: the other parts' random streams
    do not depend on it, and :func:`add_judge` trains the same judge as :func:`build_world`."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(p.seed + JUDGE_SEED)
        gen = torch.Generator().manual_seed(p.seed + JUDGE_SEED)
        return T.train_judge(judge_items(test_bank)[0], p, gen)


def _judge_metrics(judge: JudgeReward, test_bank: ItemBank, p: WorldParams) -> dict[str, float]:
    """The judge's accuracy and canvas metrics on the test items it was not trained on."""
    held_out = judge_items(test_bank)[1]
    gen = torch.Generator().manual_seed(p.seed + JUDGE_SEED + 1)
    rng = np.random.default_rng(p.seed + JUDGE_SEED + 1)
    out = classifier_accuracy(judge, held_out, gen, prefix="judge")
    out.update(fidelity_canvas_metrics(judge, held_out, p.eval_test_canvases_per_category, rng))
    return out


def add_judge(world: str | Path, params: WorldParams, dtype: torch.dtype = torch.float32) -> dict:
    """Train the judge into an existing ``world`` (its other parts untouched), stored in
    ``dtype``, and merge its metrics into ``world/metrics.json``: how the shipped world got its
    judge (``add_judge(PACKAGED_DIR, WorldParams(source="packaged"), torch.float16)``)."""
    p, world = params, Path(world)
    _setup(p)
    t0 = time.perf_counter()
    test_bank = ItemBank.load(p.fashion_mnist_dir, "test", p.item_size)
    train_judge(p, test_bank).save(world / "rewards" / "judge", dtype=dtype)
    judge = JudgeReward.load(world / "rewards" / "judge", p.device)  # as stored: fp16 if so
    metrics = json.loads((world / "metrics.json").read_text())
    metrics["judge_params"] = float(sum(x.numel() for x in judge.parameters()))
    metrics.update(_judge_metrics(judge, test_bank, p))
    metrics["time_s/judge"] = round(time.perf_counter() - t0, 2)
    _write_metrics(world, metrics)
    return metrics


def _reward_metrics(
    fidelity: FidelityReward, quality: QualityReward, test_bank: ItemBank, p: WorldParams
) -> dict[str, float]:
    gen = torch.Generator().manual_seed(p.seed + 101)
    rng = np.random.default_rng(p.seed + 101)
    items = test_bank if p.eval_test_items is None else test_bank.subset(p.eval_test_items)
    out = classifier_accuracy(fidelity, items, gen)
    out.update(fidelity_canvas_metrics(fidelity, test_bank, p.eval_test_canvases_per_category, rng))
    out.update(quality_metrics(quality, test_bank, 5 * p.eval_test_canvases_per_category, rng, gen))
    return out


@torch.no_grad()
def _vae_metrics(
    vae: AutoencoderKL, fidelity: FidelityReward, test_bank: ItemBank, p: WorldParams
) -> dict[str, float]:
    """Reconstruction error on test canvases and fidelity kept through the VAE."""
    rng = np.random.default_rng(p.seed + 202)
    n = max(1, p.eval_test_canvases_per_category // 2)
    specs = [s for cat in CATEGORIES for s in random_specs(n, rng, cat)]
    images, _ = render_specs(specs, test_bank, rng, p.jitter)
    x = images * 2 - 1
    rec = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    rec01 = (rec + 1) / 2
    return {
        "vae_recon_mse": float(((rec - x) ** 2).mean()),  # on [-1,1], like the prototype
        "vae_fidelity_correct_rate": float(fidelity.correct_specs(rec01, specs).float().mean()),
    }


@torch.no_grad()
def _base_metrics(
    base: WorldBase,
    fidelity: FidelityReward,
    quality: QualityReward,
    p: WorldParams,
    per_category: int,
) -> dict[str, float]:
    """Sample eval-style prompts (held-out combos/templates included) and score them."""
    mix = {c: 1.0 for c in CATEGORIES}
    df = generate_prompts(0, per_category * len(CATEGORIES), seed=p.seed + 303, category_mix=mix)
    prompts = df["prompt"].tolist()
    seeds = [p.seed * 100_003 + i for i in range(len(prompts))]
    images = base.generate(prompts, seeds, p.sample_steps, p.guidance_scale, p.sampler)
    specs = [Spec.from_json(s) for s in df["spec"]]
    fid = fidelity.score_specs(images, specs).cpu()
    ok = fidelity.correct_specs(images, specs).cpu().float()
    qual = quality.score(images).cpu()
    out: dict[str, float] = {}
    cats = df["category"].to_numpy()
    for cat in CATEGORIES:
        m = torch.as_tensor(cats == cat)
        if m.any():
            out[f"base_fidelity/{cat}"] = float(fid[m].mean())
            out[f"base_correct/{cat}"] = float(ok[m].mean())
            out[f"base_quality/{cat}"] = float(qual[m].mean())
    out["base_fidelity/all"] = float(fid.mean())
    out["base_correct/all"] = float(ok.mean())
    out["base_quality/all"] = float(qual.mean())
    out["base_guidance_scale"] = float(p.guidance_scale)
    return out


def _write_metrics(out: Path, metrics: dict[str, float]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def load_rewards(
    out: str | Path, device: str | torch.device = "cpu"
) -> tuple[FidelityReward, QualityReward, JudgeReward]:
    out = Path(out)
    return (
        FidelityReward.load(out / "rewards" / "fidelity", device),
        QualityReward.load(out / "rewards" / "quality", device),
        JudgeReward.load(out / "rewards" / "judge", device),
    )


def evaluate_world(
    out: str | Path, params: WorldParams, base_prompts_per_category: int = 2
) -> dict[str, float]:
    """Recompute the held-out reward metrics of a built or installed world (seconds), plus a
    small base-model sample as a smoke check (``base_prompts_per_category=0`` skips it)."""
    p = params
    _setup(p)
    out = Path(out)
    fidelity, quality, judge = load_rewards(out, p.device)
    test_bank = ItemBank.load(p.fashion_mnist_dir, "test", p.item_size)
    metrics = _reward_metrics(fidelity, quality, test_bank, p) | _judge_metrics(judge, test_bank, p)
    if base_prompts_per_category > 0:
        base = WorldBase.load(out / "base", p.device)
        base_m = _base_metrics(base, fidelity, quality, p, base_prompts_per_category)
        metrics.update({f"smoke_{k}": v for k, v in base_m.items() if k.endswith("/all")})
    return metrics


def install_packaged_world(out: str | Path, source: str | Path = PACKAGED_DIR) -> Path:
    """Copy the shipped (fp16) world into ``out``; loaders cast it back to fp32."""
    source, out = Path(source), Path(out)
    if not (source / "base" / "unet").is_dir():
        raise FileNotFoundError(
            f"no packaged world at {source}; build one with `world.source: train`"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in ("base", "rewards", "metrics.json"):
        src = source / name
        if src.is_dir():
            shutil.copytree(src, out / name, dirs_exist_ok=True)
        elif src.is_file():
            shutil.copy2(src, out / name)
    return out


def package_world(built: str | Path, dest: str | Path = PACKAGED_DIR) -> Path:
    """Store a built world in fp16 safetensors (how the shipped copy was made)."""
    built, dest = Path(built), Path(dest)
    base = WorldBase.load(built / "base")
    base.save(dest / "base", dtype=torch.float16)
    for reward in load_rewards(built):
        reward.save(dest / "rewards" / reward.name, dtype=torch.float16)
    shutil.copy2(built / "metrics.json", dest / "metrics.json")
    return dest
