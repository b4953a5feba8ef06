"""SD1.5 / SDXL backbones on tiny random pipelines: the same conditioning as the stock
pipelines, LoRA files that load there exactly, v-prediction, and the GPU training options."""

from __future__ import annotations

import sys
import types

import pytest
import torch
from tests.conftest import train_params

from diffpref import adapters, training
from diffpref.backbones.sd import SD15Backbone, SDXLBackbone
from diffpref.config import TrainParams
from diffpref.config.schema import _objective

CPU = torch.device("cpu")


def backbone(models, kind: str, **kw):
    if kind == "sdxl":
        return SDXLBackbone(models.sdxl, CPU, **kw)
    return SD15Backbone(models.sd15_v if kind == "sd15_v" else models.sd15, CPU, **kw)


def pipeline(models, kind: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if kind == "sdxl":
        return StableDiffusionXLPipeline.from_pretrained(models.sdxl)
    return StableDiffusionPipeline.from_pretrained(models.sd15)


def toy_data(bb, n_prompts: int = 3) -> training.TrainData:
    torch.manual_seed(0)
    text = bb.encode_text([f"prompt {i}" for i in range(n_prompts)])
    return training.TrainData(
        latents=torch.randn(2 * n_prompts, *bb.latent_shape),
        text=text,
        uncond=bb.encode_text([""]),
        groups=torch.arange(2 * n_prompts).view(n_prompts, 2),
        prompt_rows=torch.arange(n_prompts),
    )


def tp(**kw) -> TrainParams:
    return train_params(
        **{
            "steps": 2,
            "batch_size": 2,
            "lr": 1e-2,
            "warmup_steps": 1,
            "lora_rank": 4,
            "log_every": 1,
            "checkpoint_every": 10,
            **kw,
        }
    )


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_text_conditioning_is_what_the_stock_pipeline_computes(models, kind):
    bb, pipe = backbone(models, kind), pipeline(models, kind)
    prompts = ["a red cube", "two cats"]
    cond, uncond = bb.encode_text(prompts), bb.encode_text([""])
    if kind == "sd15":
        emb, neg = pipe.encode_prompt(prompts, "cpu", 1, True)
        assert torch.allclose(cond["hidden"], emb, atol=1e-6)
        assert torch.allclose(uncond["hidden"], neg[:1], atol=1e-6)
        return
    emb, neg, pooled, neg_pooled = pipe.encode_prompt(prompts, device="cpu")
    assert torch.allclose(cond["hidden"], emb, atol=1e-6)
    assert torch.allclose(cond["pooled"], pooled, atol=1e-6)
    # force_zeros_for_empty_prompt: the unconditional branch is all zeros in SDXL base
    assert torch.equal(uncond["hidden"], neg[:1]) and torch.equal(uncond["pooled"], neg_pooled[:1])
    assert cond["time_ids"].tolist() == [[32, 32, 0, 0, 32, 32]] * 2


@pytest.mark.parametrize("kind", ["sd15", "sdxl"])
def test_trained_lora_loads_into_the_stock_pipeline_exactly(models, kind, tmp_path):
    bb = backbone(models, kind)
    res = training.train(
        bb,
        toy_data(bb),
        _objective("dpo", {"loss": "dpo", "beta": 2500}),
        tp(),
        0,
        tmp_path / "ck",
        "h",
    )
    res.method.save(tmp_path)
    pipe = pipeline(models, kind)
    pipe.load_lora_weights(str(tmp_path), weight_name=adapters.LORA_FILE)
    cond = bb.encode_text(["a red cube"])
    x, t = torch.randn(1, *bb.latent_shape), torch.tensor([500])
    with torch.no_grad():
        ours = bb.predict(x, t, cond)
        with adapters.adapters_disabled(bb.unet):
            base = bb.predict(x, t, cond)
        theirs = pipe.unet(x, t, **bb.unet_kwargs(cond)).sample
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-5)


def test_sdxl_resolution_sets_latents_and_micro_conditioning(models):
    bb = backbone(models, "sdxl", resolution=64)
    assert bb.latent_shape == (4, 16, 16) and bb.image_shape == (3, 64, 64)
    assert bb.encode_text(["x"])["time_ids"].tolist() == [[64, 64, 0, 0, 64, 64]]
    with pytest.raises(ValueError, match="multiple"):
        backbone(models, "sd15", resolution=30)


def test_training_scheduler_never_clips_latents(models):
    # the saved PNDM/Euler configs have no clip_sample; DDPM's default (True) would clip x0
    for kind in ("sd15", "sdxl"):
        cfg = backbone(models, kind).noise_scheduler.config
        assert not cfg.clip_sample and not cfg.thresholding


def test_v_prediction_target_converts_back_to_the_noise(models):
    bb = backbone(models, "sd15_v")
    assert bb.prediction_type == "v_prediction"
    x0, noise = torch.randn(2, *bb.latent_shape), torch.randn(2, *bb.latent_shape)
    t = torch.tensor([10, 900])
    x_t = bb.noise_scheduler.add_noise(x0, noise, t)
    v = bb.target(x0, noise, t)
    assert not torch.allclose(v, noise)
    assert torch.allclose(training.as_eps(bb, v, x_t, t), noise, atol=1e-4)


def test_replacement_vae_is_read_from_its_own_directory_and_upcast_for_fp16(models, tmp_path):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(models.sd15, subfolder="vae")
    vae.register_to_config(force_upcast=True)
    vae.save_pretrained(tmp_path / "vae_fix")
    bb = SD15Backbone(models.sd15, CPU, torch.float16, vae=str(tmp_path / "vae_fix"))
    assert bb.unet.dtype == torch.float16 and bb.vae.dtype == torch.float32


def _grads(bb, checkpointing: bool) -> dict[str, torch.Tensor]:
    data = toy_data(bb)
    method = training.make_method(bb, _objective("dpo", {"loss": "dpo", "beta": 2500}), tp(), data)
    with torch.no_grad():
        for p in method.params:
            p.normal_(0, 0.1)  # lora_B starts at 0: give every LoRA weight a gradient
    if checkpointing:
        bb.unet.enable_gradient_checkpointing()
    bb.unet.train()
    loss, _ = method.step(torch.tensor([0, 1]), torch.Generator().manual_seed(0))
    loss.backward()
    return {n: p.grad.clone() for n, p in bb.unet.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_the_same_lora_gradients(models):
    plain = _grads(backbone(models, "sd15"), False)
    ckpt = _grads(backbone(models, "sd15"), True)
    assert plain and plain.keys() == ckpt.keys()
    for k in plain:
        assert torch.allclose(plain[k], ckpt[k], atol=1e-5), k


def test_adamw8bit_uses_bitsandbytes_and_names_it_when_missing(monkeypatch):
    param = [torch.nn.Parameter(torch.zeros(2))]
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match="bitsandbytes"):
        training.make_optimizer(param, tp(optimizer="adamw8bit"))
    fake = types.SimpleNamespace(optim=types.SimpleNamespace(AdamW8bit=torch.optim.SGD))
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    assert isinstance(
        training.make_optimizer(param, tp(optimizer="adamw8bit", lr=0.1)), torch.optim.SGD
    )
    assert isinstance(training.make_optimizer(param, tp()), torch.optim.AdamW)


def test_online_round_reference_is_the_previous_round_without_a_unet_copy(models, tmp_path):
    """On SD1.5: round 2's reference and starting policy are round 1's model as evaluation
    loads it, held as a second adapter (no UNet copy); after training, the reference still is."""
    from tests.test_training_online import check_online_start, evaluated, predict, previous_adapter

    make = lambda: backbone(models, "sd15")  # noqa: E731
    prev = previous_adapter(make(), tmp_path / "round1")
    dpo = _objective("dpo", {"loss": "dpo", "beta": 2500})
    check_online_start(make, prev, dpo, tp())
    bb = make()
    res = training.train(bb, toy_data(bb), dpo, tp(), 0, tmp_path / "ck", "h", previous=prev)
    want = evaluated(make, prev)
    assert not torch.allclose(predict(bb), want, atol=1e-5)  # the policy moved
    with res.method.reference.active():
        torch.testing.assert_close(predict(bb), want, atol=1e-5, rtol=1e-5)
