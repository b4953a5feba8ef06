"""What an objective trains, how it is saved, and how evaluation puts it back.

Two kinds, both small next to the frozen backbone:
- **LoRA** on the UNet's attention projections (peft), saved in diffusers format so stock
  pipelines load it with ``load_lora_weights``. The untouched base is the reference (adapters
  disabled); Rethinking-DPO's moving reference and an online round's previous policy are a
  second, frozen adapter, ``ref`` (:class:`ReferenceAdapter`).
- **Soft tokens** (SoftREPA / AGSM): learned vectors inserted right after the first (BOS/CLS)
  token of the cross-attention context, saved as ``soft_tokens.safetensors``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from torch import Tensor, nn

from diffpref.backbones.base import Cond
from diffpref.io import decoding, load_tensors

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_FILE = "pytorch_lora_weights.safetensors"
TOKENS_FILE = "soft_tokens.safetensors"


def lora_config(rank: int, alpha: float | None) -> LoraConfig:
    return LoraConfig(
        r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS
    )


def add_lora(unet, rank: int, alpha: float | None) -> list[nn.Parameter]:
    """Attach the trainable ``default`` adapter; its weights stay fp32 under bf16/fp16 bases."""
    unet.add_adapter(lora_config(rank, alpha))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


@contextmanager
def adapters_disabled(unet) -> Iterator[None]:
    """The base model (the DPO reference); adapters are re-enabled even if the forward raises."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


class ReferenceAdapter:
    """A second, frozen LoRA adapter ``ref`` beside the trained ``default`` (same shape), that
    holds a copy of the policy: Rethinking-DPO's moving reference (copied every τ steps), or an
    online round's previous policy (copied once, at step 0, after :func:`load_lora_into`). It
    costs one more adapter's parameters, never a copy of the UNet."""

    def __init__(self, unet, rank: int, alpha: float | None):
        self.unet = unet
        unet.add_adapter(lora_config(rank, alpha), adapter_name="ref")
        unet.set_adapter("default")
        self.pairs = [
            (m.lora_A["ref"].weight, m.lora_A["default"].weight) for m in self._lora_modules()
        ] + [(m.lora_B["ref"].weight, m.lora_B["default"].weight) for m in self._lora_modules()]
        for ref, _ in self.pairs:  # gaussian init leaves B = 0: the reference starts as the base
            ref.requires_grad_(False)
            ref.data = ref.data.float()

    def _lora_modules(self) -> list[nn.Module]:
        return [m for m in self.unet.modules() if hasattr(m, "lora_A") and "ref" in m.lora_A]

    @torch.no_grad()
    def copy_policy(self) -> None:
        for ref, pol in self.pairs:
            ref.copy_(pol)

    @contextmanager
    def active(self) -> Iterator[None]:
        self.unet.set_adapter("ref")
        try:
            yield
        finally:
            self.unet.set_adapter("default")

    def state(self) -> list[Tensor]:
        return [r.detach().clone() for r, _ in self.pairs]

    @torch.no_grad()
    def load(self, state: list[Tensor]) -> None:
        for (ref, _), s in zip(self.pairs, state):
            ref.copy_(s)


def read_lora(folder: Path) -> tuple[dict[str, Tensor], int, float]:
    """A saved UNet LoRA (:func:`save_lora`'s file in ``folder``) as a peft state dict (keys
    without adapter name), its rank (from the weights' shapes) and alpha (from the file's
    metadata; the rank where absent, as diffusers' loader assumes)."""
    from diffusers.utils import convert_unet_state_dict_to_peft
    from safetensors import safe_open

    path = folder / LORA_FILE
    tensors = load_tensors(path)
    with decoding(path, "LoRA safetensors"), safe_open(path, "pt") as f:
        meta = json.loads((f.metadata() or {}).get("lora_adapter_metadata", "{}"))
    unet = {k.removeprefix("unet."): v for k, v in tensors.items() if k.startswith("unet.")}
    if not unet:
        raise ValueError(f"{path}: no UNet LoRA weights (keys starting with 'unet.')")
    state = unet if any("lora_A" in k for k in unet) else convert_unet_state_dict_to_peft(unet)
    ranks = {v.shape[0] for k, v in state.items() if "lora_A" in k}
    if len(ranks) != 1:
        raise ValueError(f"{path}: LoRA layers of several ranks {sorted(ranks)}")
    rank = ranks.pop()
    return state, rank, float(meta.get("unet.lora_alpha", rank))


@torch.no_grad()
def load_lora_into(unet, folder: Path, adapter: str, rank: int, alpha: float | None) -> None:
    """Set the existing ``adapter`` (of ``rank``/``alpha``) to the LoRA saved in ``folder``,
    in place: an online round's policy starts as the previous round's. Its rank and alpha
    must be the saved ones (else the same weights would be another model), and every LoRA
    weight of the adapter must be in the file."""
    from peft.utils import set_peft_model_state_dict

    state, saved_rank, saved_alpha = read_lora(folder)
    alpha = float(alpha or rank)
    if (saved_rank, saved_alpha) != (rank, alpha):
        raise ValueError(
            f"{folder / LORA_FILE}: the previous round's LoRA has rank {saved_rank} and alpha "
            f"{saved_alpha:g}, but this training's train.lora_rank is {rank} and its alpha "
            f"{alpha:g}: an online round continues the previous adapter at the same rank and alpha"
        )
    result = set_peft_model_state_dict(unet, state, adapter_name=adapter)
    missing = [k for k in result.missing_keys if "lora_" in k and f".{adapter}." in k]
    if result.unexpected_keys or missing:
        raise ValueError(
            f"{folder / LORA_FILE}: does not fit this UNet's LoRA layers "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def save_lora(
    unet, out: Path, rank: int, alpha: float | None, pipeline: str = "StableDiffusionPipeline"
) -> None:
    """diffusers-format LoRA (``pytorch_lora_weights.safetensors``), written by ``pipeline``'s
    own ``save_lora_weights`` so that the same pipeline class loads it back."""
    import diffusers
    from diffusers.utils import convert_state_dict_to_diffusers

    state = get_peft_model_state_dict(unet, adapter_name="default")
    layers = convert_state_dict_to_diffusers(state)
    getattr(diffusers, pipeline).save_lora_weights(
        out,
        unet_lora_layers=layers,
        safe_serialization=True,
        unet_lora_adapter_metadata={
            "r": rank,
            "lora_alpha": alpha or rank,
            "target_modules": LORA_TARGETS,
        },
    )
    _sort_metadata(out / LORA_FILE)


def _sort_metadata(path: Path) -> None:
    """safetensors writes the header's metadata from a Rust ``HashMap``, in an order that
    changes from process to process; sorted, equal adapters are equal files (DVC hashes them,
    and the determinism test compares bytes). Same keys and values: the header keeps its
    length, so only its bytes are rewritten in place."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        assert len(text) <= size, "a sorted safetensors header cannot grow"
        f.seek(8)
        f.write(text.ljust(size))  # safetensors pads its header with spaces


class SoftTokens(nn.Module):
    """``n`` learned context vectors inserted after the first token of every text context."""

    def __init__(self, n: int, dim: int, init: Tensor | None = None, std: float = 0.02):
        super().__init__()
        if init is not None:  # SD1.5 recipe: start from the empty prompt's first token state
            tokens = init.detach().reshape(1, dim).repeat(n, 1).clone()
        else:
            tokens = torch.randn(n, dim) * std
        self.tokens = nn.Parameter(tokens.float())

    def insert(self, cond: Cond, tokens: Tensor | None = None) -> Cond:
        """``tokens`` may be per sample ``[B, n, D]`` (AGSM: ψ+ or ψ− per pair)."""
        h = cond["hidden"]
        tok = self.tokens if tokens is None else tokens
        tok = tok.to(h.dtype).expand(h.shape[0], *tok.shape[-2:])
        return {**cond, "hidden": torch.cat([h[:, :1], tok, h[:, 1:]], dim=1)}


def save_tokens(out: Path, tokens: dict[str, Tensor]) -> None:
    save_file(
        {k: v.detach().float().cpu().contiguous() for k, v in tokens.items()}, out / TOKENS_FILE
    )


class Adapted:
    """A trained adapter put back on a backbone for evaluation (or nothing, for the base)."""

    def __init__(self, backbone, adapter_dir: Path | None):
        self.tokens: SoftTokens | None = None
        if adapter_dir is None:
            return
        if (adapter_dir / LORA_FILE).is_file():
            with decoding(adapter_dir / LORA_FILE, "LoRA safetensors"):
                backbone.unet.load_lora_adapter(str(adapter_dir / LORA_FILE), prefix="unet")
        elif (adapter_dir / TOKENS_FILE).is_file():
            tok = load_tensors(adapter_dir / TOKENS_FILE)["tokens"]  # ψ+ for AGSM
            self.tokens = SoftTokens(tok.shape[0], tok.shape[1])
            self.tokens.tokens.data = tok.to(backbone.device)
        else:
            raise FileNotFoundError(f"{adapter_dir}: neither {LORA_FILE} nor {TOKENS_FILE}")

    def cond(self, cond: Cond) -> Cond:
        """Soft tokens go into both CFG branches (SoftREPA and AGSM inference)."""
        return self.tokens.insert(cond) if self.tokens is not None else cond
