"""Where one SD1.5 LoRA-DPO training step spends its time: the step `diffpref train` takes
(policy forward + backward on the winners and losers, reference forward with the adapter
disabled, AdamW on the LoRA, one host sync for the loss), timed under variants of precision and
memory layout. Random weights of the real SD1.5 UNet (docs/performance.md, "Where a step goes").

    python workflow/scripts/bench_step.py              # one CUDA GPU, 16 pairs per step
    python workflow/scripts/bench_step.py --compile    # also torch.compile (minutes to compile)
"""

from __future__ import annotations

import argparse
import time

import torch

from diffpref.adapters import adapters_disabled, add_lora
from diffpref.backbones.random_init import sd15_unet
from diffpref.objectives import dpo
from diffpref.objectives.base import Errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--size", choices=["real", "tiny"], default="real", help="tiny: CPU check")
    ap.add_argument("--pairs", type=int, default=16, help="pairs per step")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per variant")
    ap.add_argument("--compile", action="store_true")
    args = ap.parse_args()

    torch.manual_seed(0)
    dev = torch.device(args.device)
    with dev:
        unet = sd15_unet(args.size, 768)
    unet.to(torch.bfloat16).requires_grad_(False)
    params = add_lora(unet, 8, None)
    unet.train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    p = args.pairs
    side = unet.config.sample_size
    x = torch.randn(2 * p, 4, side, side, device=dev, dtype=torch.bfloat16)
    ctx = torch.randn(2 * p, 77, 768, device=dev, dtype=torch.bfloat16)
    noise = torch.randn_like(x).float()
    t = torch.randint(0, 1000, (p,), device=dev).repeat(2)
    objective = dpo.Params(beta=5000.0)  # the official launchers' value

    def errors(model, xi) -> torch.Tensor:  # [pairs, 2]: winners, losers
        err = (model(xi, t, ctx).sample.float() - noise).pow(2).mean((1, 2, 3))
        return torch.stack([err[:p], err[p:]], 1)

    def step(model, autocast: bool, channels_last: bool) -> float:
        xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        with torch.autocast(dev.type, torch.bfloat16, enabled=autocast):
            model_err = errors(model, xi)
            with torch.no_grad(), adapters_disabled(unet):
                ref_err = errors(model, xi)
        loss, _ = dpo.loss(Errors(model=model_err, ref=ref_err), objective)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return float(loss)  # the loop's per-step sync

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def bench(name: str, model=None, autocast: bool = True, channels_last: bool = False) -> None:
        model = unet if model is None else model
        if channels_last:
            unet.to(memory_format=torch.channels_last)
        t0 = time.perf_counter()
        for _ in range(args.warmup):
            step(model, autocast, channels_last)
        sync()
        warm = time.perf_counter() - t0
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(model, autocast, channels_last)
        sync()
        dt = (time.perf_counter() - t0) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else float("nan")
        print(
            f"{name:36s} {p / dt:7.1f} pairs/s {dt * 1e3:7.0f} ms/step "
            f"peak {peak:5.1f} GiB  warm-up {warm:5.1f} s",
            flush=True,
        )
        if channels_last:
            unet.to(memory_format=torch.contiguous_format)

    bench("autocast over bf16 (diffpref train)")
    bench("no autocast (pure bf16 base)", autocast=False)
    bench("autocast + channels_last", channels_last=True)
    bench("no autocast + channels_last", autocast=False, channels_last=True)
    torch.backends.cudnn.benchmark = True
    bench("autocast + cudnn.benchmark")
    bench("no autocast + cudnn.benchmark", autocast=False)
    if args.compile:
        bench("no autocast + torch.compile", model=torch.compile(unet), autocast=False)


if __name__ == "__main__":
    main()
