"""Backbones: the models objectives train, behind one interface (see ``base.Backbone``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

import torch

from diffpref import registry
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


def load_backbone(cfg: Config, device: torch.device) -> Backbone:
    dtype = getattr(torch, cfg.backbone.dtype)
    module, cls_name = registry.BACKBONES[cfg.backbone.kind]  # imported when asked for
    cls = getattr(importlib.import_module(module), cls_name)
    if cfg.backbone.kind == "embedded":
        return cls(cfg.path("world"), device, dtype)
    b = cfg.backbone
    return cls(b.pretrained, device, dtype, vae=b.vae, variant=b.variant, resolution=b.resolution)
