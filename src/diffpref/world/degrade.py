"""Cell degradations: the negatives of the quality reward.

They mimic how a small diffusion model fails: blur, noise, ghosted blends of two items,
scrambled parts, and textured blobs (the base model's most common failure); empty cells go
wrong as noise, speckles and faint smudges.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

ITEM_DEGRADATIONS: tuple[str, ...] = (
    "blur",
    "noise",
    "blend",
    "shuffle",
    "blob",
    "texture_fill",
    "lowres",
    "smear",
)
EMPTY_DEGRADATIONS: tuple[str, ...] = ("noise", "speckle", "smudge")


def _gaussian_kernel(sigma: Tensor, size: int = 7) -> Tensor:
    """Per-sample normalised 2-D Gaussian kernels ``[N,1,size,size]``."""
    r = torch.arange(size, dtype=torch.float32, device=sigma.device) - size // 2
    g = torch.exp(-(r[None] ** 2) / (2 * sigma[:, None] ** 2))
    g = g / g.sum(1, keepdim=True)
    return (g[:, :, None] * g[:, None, :])[:, None]


def blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Blur each cell ``[N,1,h,w]`` with its own ``sigma`` [N]."""
    n = x.shape[0]
    k = _gaussian_kernel(sigma)
    out = F.conv2d(x.reshape(1, n, *x.shape[2:]), k, padding=k.shape[-1] // 2, groups=n)
    return out.reshape_as(x)


def smooth_noise(n: int, size: int, scale: float, gen: torch.Generator) -> Tensor:
    """Low-frequency noise ``[n,1,size,size]`` in ~[-1,1]: bilinear upsampling of a coarse grid."""
    coarse = max(2, round(size / scale))
    z = torch.randn(n, 1, coarse, coarse, generator=gen)
    z = F.interpolate(z, size=(size, size), mode="bicubic", align_corners=False)
    return z / z.flatten(1).abs().amax(1).clamp_min(1e-6)[:, None, None, None]


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def degrade_items(
    x: Tensor, others: Tensor, gen: torch.Generator, kinds: tuple[str, ...] = ITEM_DEGRADATIONS
) -> Tensor:
    """Degrade item cells ``x`` [N,1,h,w]; ``others`` are different item cells for blends."""
    n, _, h, w = x.shape
    which = torch.randint(len(kinds), (n,), generator=gen)
    peak = x.flatten(1).amax(1).clamp_min(0.2)[:, None, None, None]  # keep the exposure
    out = x.clone()
    for i, kind in enumerate(kinds):
        idx = torch.nonzero(which == i).flatten()
        if len(idx) == 0:
            continue
        m = len(idx)
        xi, pk = x[idx], peak[idx]
        if kind == "blur":
            y = blur(xi, _uniform(m, 0.9, 1.8, gen))
        elif kind == "noise":
            y = xi + _uniform(m, 0.1, 0.3, gen)[:, None, None, None] * torch.randn(
                xi.shape, generator=gen
            )
        elif kind == "blend":
            a = _uniform(m, 0.35, 0.65, gen)[:, None, None, None]
            y = a * xi + (1 - a) * others[idx]
        elif kind == "shuffle":
            p = 4
            patches = xi.reshape(m, 1, h // p, p, w // p, p).permute(0, 1, 2, 4, 3, 5)
            patches = patches.reshape(m, (h // p) * (w // p), p, p)
            perm = torch.argsort(torch.rand(m, patches.shape[1], generator=gen), 1)
            patches = patches.gather(1, perm[:, :, None, None].expand_as(patches))
            y = patches.reshape(m, 1, h // p, w // p, p, p).permute(0, 1, 2, 4, 3, 5)
            y = y.reshape(m, 1, h, w)
        elif kind == "blob":
            mask = torch.sigmoid(6 * (smooth_noise(m, h, 5.0, gen) + 0.2))
            centre = _centre_window(h, w)
            tex = 0.5 + 0.5 * torch.rand(xi.shape, generator=gen)
            y = pk * mask * centre * tex
        elif kind == "texture_fill":
            mask = (xi > 0.1 * pk).float()
            tex = 0.5 + 0.5 * smooth_noise(m, h, 2.0, gen)
            y = pk * mask * tex.clamp(0, 1)
        elif kind == "lowres":
            y = F.interpolate(
                F.interpolate(xi, size=(4, 4), mode="area"),
                size=(h, w),
                mode="bilinear",
                align_corners=False,
            )
        else:  # smear: random directional motion blur of the item
            shift = torch.randint(1, 3, (1,), generator=gen).item()
            dims = (2,) if torch.rand(1, generator=gen).item() < 0.5 else (3,)
            y = (xi + torch.roll(xi, shift, dims) + torch.roll(xi, -shift, dims)) / 3
            y = y + 0.1 * torch.randn(y.shape, generator=gen) * (y > 0.05)
        out[idx] = y.clamp(0, 1)
    return out


def _centre_window(h: int, w: int) -> Tensor:
    r = torch.linspace(-1, 1, h)
    c = torch.linspace(-1, 1, w)
    d = (r[:, None] ** 2 + c[None] ** 2).sqrt()
    return torch.sigmoid((0.85 - d) * 8)[None, None]


def dirty_empty(
    n: int, size: int, gen: torch.Generator, kinds: tuple[str, ...] = EMPTY_DEGRADATIONS
) -> Tensor:
    """Empty cells that are not clean: faint noise, speckles or smudges ``[n,1,s,s]``."""
    which = torch.randint(len(kinds), (n,), generator=gen)
    out = torch.zeros(n, 1, size, size)
    for i, kind in enumerate(kinds):
        idx = torch.nonzero(which == i).flatten()
        m = len(idx)
        if m == 0:
            continue
        if kind == "noise":
            y = (
                _uniform(m, 0.06, 0.2, gen)[:, None, None, None]
                * torch.randn(m, 1, size, size, generator=gen).abs()
            )
        elif kind == "speckle":
            y = (torch.rand(m, 1, size, size, generator=gen) < 0.05).float()
            y = y * _uniform(m, 0.3, 1.0, gen)[:, None, None, None]
        else:
            amp = _uniform(m, 0.15, 0.45, gen)[:, None, None, None]
            y = amp * smooth_noise(m, size, 4.0, gen).clamp_min(0)
        out[idx] = y.clamp(0, 1)
    return out


def clean_empty(n: int, size: int, gen: torch.Generator, max_sigma: float = 0.015) -> Tensor:
    """Nearly black cells (what a clean generator leaves in empty cells)."""
    sig = max_sigma * torch.rand(n, 1, 1, 1, generator=gen)
    return (sig * torch.randn(n, 1, size, size, generator=gen)).abs().clamp(0, 1)
