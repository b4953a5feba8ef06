"""Real reward models on tiny random CLIPs: the official formulas, device-side preprocessing
equal to the CLIP processor's, configurable sources, and clear errors for optional extras."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tests.real.conftest import PROJECTION

from diffpref.config import RewardParams, RewardSource
from diffpref.rewards import load_reward
from diffpref.rewards.aesthetic import Aesthetic, AestheticHead
from diffpref.rewards.clipbase import ClipEncoder, Preprocess, unwrap

CPU = torch.device("cpu")
PROMPTS = ["a red cube", "two cats", "a red cube"]


class Cfg:
    """The two attributes the reward registry reads from a Config."""

    def __init__(self, **rewards):
        self.rewards = RewardParams(**{"models": ["pickscore"], "batch_size": 8, **rewards})


def images(n: int = 3, h: int = 40, w: int = 56) -> torch.Tensor:
    """Smooth random pictures (pixel noise would make any two resize filters disagree)."""
    coarse = torch.rand(n, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    return torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear")


def official(clip_dir, imgs: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """cos(image, text) the way the PickScore README computes it (processor on PIL images)."""
    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessorPil, CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    proc = CLIPImageProcessorPil.from_pretrained(clip_dir)
    tok = AutoTokenizer.from_pretrained(clip_dir)
    pil = [
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for x in imgs
    ]
    with torch.no_grad():
        img = unwrap(model.get_image_features(**proc(images=pil, return_tensors="pt")))
        txt = unwrap(model.get_text_features(**tok(prompts, padding=True, return_tensors="pt")))
        scale = model.logit_scale.exp()
    img, txt = img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)
    return (img * txt).sum(-1), scale


@pytest.mark.parametrize(("h", "w"), [(40, 56), (300, 200)])
def test_device_preprocessing_matches_the_clip_image_processor(models, h, w):
    from PIL import Image
    from transformers import CLIPImageProcessorPil

    x = (images(2, h, w) * 255).round() / 255
    pil = [Image.fromarray((i.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for i in x]
    want = CLIPImageProcessorPil.from_pretrained(models.clip)(
        images=pil, return_tensors="pt"
    ).pixel_values
    got = Preprocess.from_source(str(models.clip))(x)
    assert got.shape == want.shape == (2, 3, 32, 32)
    # PIL bicubic on uint8 vs torch antialiased bicubic on floats: ~1/4 of a uint8 step
    assert (got - want).abs().mean() < 0.01 and (got - want).abs().max() < 0.05


def test_pickscore_is_logit_scale_times_cosine_as_the_official_code(models):
    ps = load_reward("pickscore", Cfg(sources={"pickscore": str(models.clip)}), CPU)
    x = (images() * 255).round() / 255
    cos, scale = official(models.clip, x, PROMPTS)
    got = ps.score(x, PROMPTS)
    assert got.shape == (3,)
    assert torch.allclose(got, scale * cos, atol=0.05 * float(scale))
    assert torch.allclose(got / ps.clip.logit_scale, cos, atol=0.05)


def test_clip_score_is_100_times_clipped_cosine(models):
    cs = load_reward("clip_score", Cfg(sources={"clip_score": str(models.clip)}), CPU)
    enc = cs.clip
    x = images()
    cos = enc.cosine(x, PROMPTS)
    assert torch.allclose(cs.score(x, PROMPTS), 100 * cos.clamp(min=0))
    gray = cs.score(x[:, :1], PROMPTS)  # one-channel images (the embedded world) work too
    assert gray.shape == (3,) and torch.isfinite(gray).all()


def test_text_embeddings_of_repeated_prompts_are_computed_once(models):
    enc = ClipEncoder(RewardSource(model=str(models.clip)), CPU, torch.float32)
    emb = enc.text_embeds(PROMPTS)
    assert torch.allclose(emb[0], emb[2]) and torch.allclose(emb.norm(dim=-1), torch.ones(3))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_aesthetic_head_on_normalised_image_embeddings(models, tmp_path, suffix):
    head = AestheticHead(PROJECTION).eval()
    path = tmp_path / f"head{suffix}"
    if suffix == ".pth":
        torch.save(head.state_dict(), path)
    else:
        save_file(head.state_dict(), path)
    cfg = Cfg(sources={"aesthetic": {"model": str(models.clip), "head": str(path)}})
    aes = load_reward("aesthetic", cfg, CPU)
    x = images()
    with torch.no_grad():
        want = head(aes.clip.image_embeds(x)).squeeze(-1)
    assert torch.allclose(aes.score(x, PROMPTS), want, atol=1e-6)


def test_aesthetic_errors_name_the_missing_head_and_a_wrong_clip(models, tmp_path):
    with pytest.raises(ValueError, match=r"rewards\.sources\.aesthetic\.head"):
        load_reward("aesthetic", Cfg(sources={"aesthetic": str(models.clip)}), CPU)
    torch.save(AestheticHead(768).state_dict(), tmp_path / "l14.pth")
    cfg = Cfg(sources={"aesthetic": {"model": str(models.clip), "head": str(tmp_path / "l14.pth")}})
    with pytest.raises(ValueError, match="768"):
        load_reward("aesthetic", cfg, CPU)


def test_sources_default_to_the_official_hub_ids():
    cfg = Cfg(sources={"pickscore": {"model": "/local/pickscore"}}).rewards
    from diffpref.rewards.clip_score import ClipScore
    from diffpref.rewards.pickscore import PickScore

    ps = cfg.source("pickscore", PickScore.DEFAULT_SOURCE)
    assert ps.model == "/local/pickscore"
    assert ps.processor == "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
    assert (
        cfg.source("clip_score", ClipScore.DEFAULT_SOURCE).model == "openai/clip-vit-large-patch14"
    )
    assert Aesthetic.DEFAULT_SOURCE.head is None


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("hpsv2", "hpsv2", "hpsv2"),
        ("imagereward", "ImageReward", "imagereward"),
    ],
)
def test_optional_rewards_name_the_extra_to_install(monkeypatch, name, module, extra):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"diffpref\[{extra}\]"):
        load_reward(name, Cfg(), CPU)


def test_unwrap_accepts_transformers_4_tensors_and_5_outputs():
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    t = torch.ones(2, 3)
    assert unwrap(t) is t
    assert unwrap(BaseModelOutputWithPooling(pooler_output=t)) is t
