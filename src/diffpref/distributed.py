"""Data parallelism across training processes (``train.num_processes``): the collectives.

A step trains on one *global* batch of B units; process r of N takes its rows
``[r·B/N, (r+1)·B/N)``. Every process draws the same batch order, timesteps and noise from the
same seeded generators, for the whole global batch, and then cuts its share, so N processes
reproduce one process up to float summation order. The gradients of the trainable parameters
are averaged with one all-reduce per dtype; no DDP wrapper, so the frozen base is never
wrapped, bucketed or copied into optimizer state. The shares are equal, so the average of the
per-process means is the global-batch mean. A loss that reduces across the batch gathers what
it needs (:func:`global_mean`) and says so in its docstring.

Every function is the identity in a single process (no process group).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from diffpref import env


def world_size() -> int:
    """Processes in the group; 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _device() -> torch.device:
    """Where the backend's tensors live: NCCL needs this process's GPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def process_device(device: torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under a multi-process launch (one GPU
    per process), else ``device``."""
    local = env.local_rank()
    if device.type != "cuda" or local is None:
        return device
    visible = torch.cuda.device_count()
    if local >= visible:
        raise RuntimeError(
            f"train.num_processes: process {local} has no GPU of its own ({visible} visible); "
            "use at most one process per GPU"
        )
    return torch.device("cuda", local)


def global_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over the global batch (every process's share), detached: for batch
    statistics such as KTO's reference point, which must not depend on the split."""
    if world_size() == 1:
        return x.detach().mean()
    s = torch.stack([x.detach().sum(), x.new_tensor(float(x.numel()))])
    dist.all_reduce(s)
    return s[0] / s[1]


def average_gradients(params: list[Tensor]) -> None:
    """Average the gradients of ``params`` over the processes, in place (one flat all-reduce
    per dtype, in the parameters' order, which every process shares)."""
    n = world_size()
    if n == 1:
        return
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for p in params:
        if p.grad is not None:
            by_dtype.setdefault(p.grad.dtype, []).append(p.grad)
    for grads in by_dtype.values():
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= n
        for g, v in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(v.view_as(g))


def process_mean(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Scalars (loss, metrics) that are means over each process's share, as means over the
    global batch: their average over the processes."""
    n = world_size()
    if n == 1 or not values:
        return values
    flat = torch.stack([v.detach().float().reshape(()).to(_device()) for v in values.values()])
    dist.all_reduce(flat)
    return dict(zip(values, flat / n))


def from_main(x: float) -> float:
    """Rank 0's ``x``, on every process: decisions taken on a float stay identical."""
    if world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64, device=_device())
    dist.broadcast(t, 0)
    return float(t)
