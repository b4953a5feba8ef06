"""Backbones: the models objectives train, behind one interface (see ``base.Backbone``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

from diffpref.backbones.base import Backbone, Cond

if TYPE_CHECKING:
    from diffpref.config import Config

__all__ = ["Backbone", "Cond", "load_backbone", "resolve_device"]


def resolve_device(cfg: Config) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("params.yaml: device: cuda requested but no GPU is visible")
    return torch.device(cfg.device)


# backbone.kind -> (module, class), imported when asked for: a job's code dependencies hold
# its own backbone's module only (:mod:`diffpref.config.dag`)
KINDS = {
    "embedded": ("diffpref.backbones.embedded", "EmbeddedBackbone"),
    "sd15": ("diffpref.backbones.sd", "SD15Backbone"),
    "sdxl": ("diffpref.backbones.sd", "SDXLBackbone"),
}


def load_backbone(cfg: Config, device: torch.device) -> Backbone:
    dtype = getattr(torch, cfg.backbone.dtype)
    module, cls_name = KINDS[cfg.backbone.kind]
    cls = getattr(importlib.import_module(module), cls_name)
    if cfg.backbone.kind == "embedded":
        return cls(cfg.path("world"), device, dtype)
    b = cfg.backbone
    return cls(b.pretrained, device, dtype, vae=b.vae, variant=b.variant, resolution=b.resolution)
