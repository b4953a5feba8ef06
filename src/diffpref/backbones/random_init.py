"""Randomly initialised Stable Diffusion pipelines and CLIP models, built offline from configs.

No machine here can download weights, so every real-model code path is exercised on a
directory that ``from_pretrained`` reads exactly like a downloaded one: tiny sizes for the
test suite, the real SD1.5 architecture (512 px, 77x768 context) for the GPU benchmark, where
speed and memory do not depend on the weights. The tokenizer is a byte-level CLIP BPE with no
merges (every character is a token): valid for the CLIP tokenizer, no vocabulary file needed.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

Size = Literal["tiny", "real"]


def _byte_chars() -> list[str]:
    """GPT-2/CLIP's printable stand-ins for the 256 byte values."""
    bs = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for _, c in sorted(zip(bs, cs))]


def write_clip_tokenizer(out: Path, max_length: int = 77):
    """A CLIP tokenizer over single characters; returns it (bos/eos ids for the text config)."""
    from transformers import CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    chars = _byte_chars()
    vocab = [*chars, *(c + "</w>" for c in chars), BOS, EOS]
    (out / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer.from_pretrained(out, model_max_length=max_length)
    tok.save_pretrained(out)
    return tok


def _text_config(tok, size: Size, hidden: int, projection: int):
    from transformers import CLIPTextConfig

    dims = (
        dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
        )
        if size == "real"
        else dict(
            hidden_size=hidden, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4
        )
    )
    return CLIPTextConfig(
        vocab_size=len(tok),
        max_position_embeddings=tok.model_max_length,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=projection,
        **dims,
    )


def _scheduler(kind: str, prediction_type: str):
    from diffusers import EulerDiscreteScheduler, PNDMScheduler

    cls = EulerDiscreteScheduler if kind == "sdxl" else PNDMScheduler
    extra = {"skip_prk_steps": True, "set_alpha_to_one": False} if kind == "sd15" else {}
    return cls(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        prediction_type=prediction_type,
        **extra,
    )


def _vae(size: Size) -> AutoencoderKL:
    if size == "real":  # SD1.5 / SDXL VAE: 8x downsampling
        return AutoencoderKL(
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            latent_channels=4,
            layers_per_block=2,
            sample_size=512,
            scaling_factor=0.18215,
        )
    return AutoencoderKL(  # 4x downsampling: 32 px images, 8x8 latents
        block_out_channels=(8, 16, 16),
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.5,
    )


def sd15_unet(size: Size, cross_attention_dim: int) -> UNet2DConditionModel:
    """The SD1.5 UNet (``real``: 859.52 M parameters, 64x64 latents) or a tiny one."""
    if size == "real":
        return UNet2DConditionModel(
            sample_size=64,
            layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=8,
        )
    return UNet2DConditionModel(
        sample_size=8,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_sd_pipeline(
    out: Path,
    kind: Literal["sd15", "sdxl"] = "sd15",
    size: Size = "tiny",
    prediction_type: str = "epsilon",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """``save_pretrained`` a random pipeline: unet, vae, text encoder(s), tokenizer(s),
    scheduler. ``size="real"`` is the SD1.5 architecture (SDXL only comes tiny); ``dtype``
    halves the files of the real size."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    if kind == "sdxl" and size == "real":
        raise ValueError("only a tiny random SDXL is provided")
    torch.manual_seed(seed)
    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        tok = write_clip_tokenizer(Path(tmp), 77 if size == "real" else 16)
    vae = _vae(size)
    scheduler = _scheduler(kind, prediction_type)
    if kind == "sd15":
        text = CLIPTextModel(_text_config(tok, size, 32, 32))
        ctx = text.config.hidden_size
        unet = sd15_unet(size, ctx)
        pipe = StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tok,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    else:
        text = CLIPTextModel(_text_config(tok, size, 32, 32))
        text_2 = CLIPTextModelWithProjection(_text_config(tok, size, 32, 32))
        time_dim = 8
        unet = UNet2DConditionModel(
            sample_size=8,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            norm_num_groups=8,
            projection_class_embeddings_input_dim=6 * time_dim + text_2.config.projection_dim,
            cross_attention_dim=text.config.hidden_size + text_2.config.hidden_size,
        )
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text,
            text_encoder_2=text_2,
            tokenizer=tok,
            tokenizer_2=tok,
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
        )
    pipe.to(dtype=dtype).save_pretrained(out)
    return out


def build_clip(out: Path, image_size: int = 32, projection_dim: int = 16, seed: int = 0) -> Path:
    """A tiny random ``CLIPModel`` with tokenizer and image-processor config: the layout of
    the PickScore / CLIP-L hub repositories, for the reward models."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    out = Path(out)
    tok = write_clip_tokenizer(out, 77)
    text = _text_config(tok, "tiny", 32, projection_dim).to_dict()
    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        image_size=image_size,
        patch_size=8,
        projection_dim=projection_dim,
    )
    model = CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)
    )
    model.save_pretrained(out)
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "CLIPImageProcessor",
                "do_resize": True,
                "size": {"shortest_edge": image_size},
                "do_center_crop": True,
                "crop_size": {"height": image_size, "width": image_size},
                "resample": 3,
                "do_rescale": True,
                "rescale_factor": 1 / 255,
                "do_normalize": True,
                "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD,
                "do_convert_rgb": True,
            },
            indent=2,
        )
    )
    return out
