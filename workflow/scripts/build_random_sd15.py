"""Random weights of the real SD1.5 architecture, for the GPU throughput benchmark.

Speed and memory do not depend on the weights, so a randomly initialised SD1.5 (UNet 860M,
64x64x4 latents = 512 px, 77x768 text context) measures what real SD1.5 LoRA-DPO costs
without any download. Writes ``<out>/sd15-random`` (a diffusers pipeline directory, fp16) and
``<out>/clip-random`` (a tiny random CLIP standing in for PickScore, to label the pairs).

    python workflow/scripts/build_random_sd15.py --out results/bench/models

then run the ``sd15-bench`` profile (docs/performance.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from diffpref.backbones.random_init import build_clip, build_sd_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("results/bench/models"))
    args = ap.parse_args()
    build_sd_pipeline(args.out / "sd15-random", "sd15", size="real", dtype=torch.float16)
    build_clip(args.out / "clip-random", image_size=224, projection_dim=64)
    print(f"wrote {args.out / 'sd15-random'} and {args.out / 'clip-random'}")


if __name__ == "__main__":
    main()
